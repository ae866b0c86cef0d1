//! The python-3.12 runtime end to end: ASGI apps on CPython compiled to WASI, driven through the
//! engine with real requests.
//!
//! Most tests use the library (`Executor`) and the probe app in `tests/python/probe/app.py`,
//! whose routes each exercise one thing (the scope, request bodies, streaming, disconnect,
//! asyncio, the environment, file access, warm-instance state, timeouts, memory, crashes). The
//! examples in `examples/python-*` are run the way their README shows, through the command
//! line. A Starlette app (the framework downloaded with pip once per target directory) runs
//! unchanged from a code archive.
//!
//! The whole suite fetches the 26 MB interpreter once (a verified copy is kept in
//! `target/tmp/aleph-wasm-test-cache/`, or in `$ALEPH_WASM_TEST_CACHE`) and compiles it once
//! (every executor and every command shares `target/tmp/aleph-wasm-test-cache/modules`). Each
//! test has its own store.

use crate::common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aleph_wasm::message::{self, Message, MessageType};
use aleph_wasm::volumes::archive::{self, ArchiveFormat, PackFormat, UnpackLimits};
use aleph_wasm::{
    Executor, ExecutorConfig, HttpRequest, Isolation, Outcome, OutcomeKind, Store, Trigger,
};
use aleph_wasm::{cli, runtime};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The binary under test (for the command-line tests).
const BIN: &str = env!("CARGO_BIN_EXE_aleph-wasm");
/// The repository root: the command-line tests run there, as the examples' README does.
const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
/// What the suite keeps between runs: the interpreter copy, compiled modules, wheels.
const CACHE: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/aleph-wasm-test-cache");
/// The probe app.
const PROBE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/probe");
/// The Starlette app (without its packages).
const STARLETTE_APP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/starlette");
/// The seed's draft with inline code that sends a message which is not ASGI.
const SEED_INLINE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/fixtures/seed-draft-inline-code.json"
);
/// The runtime's source manifest (for the interpreter's sha256).
const RUNTIME_JSON: &str = include_str!("../../runtimes/python-3.12/runtime.json");
/// The owner of the messages the library tests write.
const OWNER: &str = "0x00000000000000000000000000000000000000b1";
/// Starlette and what it needs, pinned.
const STARLETTE_WHEELS: [&str; 4] = [
    "starlette==0.37.2",
    "anyio==4.4.0",
    "sniffio==1.3.1",
    "idna==3.7",
];
/// The longest any single execution may take before the test calls it a hang (the first one
/// that prepares the interpreter for snapshots takes minutes on a loaded 2-core machine).
const HANG: Duration = Duration::from_secs(600);

// --- Set-up: one interpreter fetch and one compile for the whole suite ----------------------

fn cache_dir() -> PathBuf {
    let dir = PathBuf::from(CACHE);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn module_cache() -> PathBuf {
    cache_dir().join("modules")
}

/// Where the verified interpreter copy is kept (the layout of `runtime::fetch_cached`).
fn interpreter_cache() -> PathBuf {
    match std::env::var_os(runtime::TEST_CACHE_ENV).filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => cache_dir(),
    }
}

fn interpreter_sha256() -> String {
    let manifest: Value = serde_json::from_str(RUNTIME_JSON).unwrap();
    manifest["interpreter"]["sha256"]
        .as_str()
        .expect("runtimes/python-3.12/runtime.json has no interpreter.sha256")
        .to_string()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Stores the python-3.12 runtime and its interpreter in `store`, and makes sure the compiled
/// interpreter is in the shared module cache; returns the runtime's ref.
///
/// The first call of the process does the slow parts (fetching, compiling) while the others
/// wait, so parallel tests never fetch or compile the interpreter twice.
fn python_runtime(store: &Store) -> String {
    static FIRST: Mutex<bool> = Mutex::new(false);
    let mut compiled = lock(&FIRST);
    let sha = interpreter_sha256();
    let cached = interpreter_cache().join(&sha);
    let user_file = cached.is_file().then_some(cached.as_path());
    let reference = runtime::fetch(store, "python-3.12", user_file, false)
        .unwrap_or_else(|e| panic!("cannot obtain the python-3.12 interpreter: {e}"));
    let object = store.verify_object(&sha).unwrap();
    if !cached.is_file() {
        keep_copy(&object, &cached);
    }
    if !*compiled {
        let started = Instant::now();
        let executor = Executor::new(store.clone(), config(false)).unwrap();
        let loaded = executor
            .sandbox()
            .module(&sha, || Ok(std::fs::read(&object)?))
            .unwrap_or_else(|e| panic!("cannot compile the interpreter: {e:#}"));
        if !loaded.from_cache {
            eprintln!(
                "compiled the python-3.12 interpreter in {:?} (cached for later runs)",
                started.elapsed()
            );
        }
        *compiled = true;
    }
    reference
}

/// Hard-links (or copies) `from` to `to` through a temporary name.
fn keep_copy(from: &Path, to: &Path) {
    let dir = to.parent().unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let tmp = dir.join(format!(".partial-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    if std::fs::hard_link(from, &tmp).is_err() {
        std::fs::copy(from, &tmp).unwrap();
    }
    std::fs::rename(&tmp, to).unwrap();
}

/// Instances start cold (snapshots have their own tests, in `snapshot`).
fn config(keep_warm: bool) -> ExecutorConfig {
    let mut config = ExecutorConfig {
        module_cache: Some(module_cache()),
        isolation: if keep_warm {
            Isolation::Warm
        } else {
            Isolation::PerRequest
        },
        ..ExecutorConfig::default()
    };
    config.sandbox.snapshot.enabled = false;
    config
}

/// One test's store, with the python-3.12 runtime in it.
struct Py {
    dir: tempfile::TempDir,
    store: Store,
    runtime: String,
}

impl Py {
    fn new() -> Py {
        Py::with_runtime(python_runtime)
    }

    /// A test's store with the runtime `stored` puts in it (and returns the ref of).
    fn with_runtime(stored: fn(&Store) -> String) -> Py {
        let dir = tempfile::Builder::new()
            .prefix("aleph-wasm-python-")
            .tempdir()
            .unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let runtime = stored(&store);
        Py {
            dir,
            store,
            runtime,
        }
    }

    fn executor(&self, config: ExecutorConfig) -> Executor {
        Executor::new(self.store.clone(), config).unwrap()
    }

    /// Packs `dir` as a zip archive and stores it (with a STORE message); returns the ref.
    fn code(&self, dir: &Path) -> String {
        static N: AtomicUsize = AtomicUsize::new(0);
        let zip = self
            .dir
            .path()
            .join(format!("code-{}.zip", N.fetch_add(1, Ordering::Relaxed)));
        archive::pack(dir, PackFormat::Zip, &zip).unwrap();
        self.store
            .add_file(&zip, OWNER, 1.0, None)
            .unwrap()
            .item_hash
    }

    /// An ASGI program on python-3.12 for the code archive `code_ref`; the top-level fields of
    /// `extra` replace the defaults (1 vcpu, 128 MiB, 10 s, no variables, no volumes).
    fn program(&self, code_ref: &str, entrypoint: &str, extra: Value) -> Message {
        let mut content = json!({
            "type": "vm-function",
            "address": OWNER,
            "time": 2.0,
            "allow_amend": false,
            "code": {
                "encoding": "zip",
                "entrypoint": entrypoint,
                "ref": code_ref,
                "interface": "asgi",
                "args": [],
                "use_latest": false,
            },
            "runtime": {"ref": self.runtime, "use_latest": false, "comment": "python-3.12"},
            "on": {"http": true, "persistent": false},
            "environment": {
                "reproducible": false,
                "internet": false,
                "aleph_api": false,
                "shared_cache": false,
            },
            "resources": {"vcpus": 1, "memory": 128, "seconds": 10},
            "variables": {},
            "volumes": [],
        });
        for (k, v) in extra.as_object().unwrap() {
            content[k] = v.clone();
        }
        let draft = message::build_inline(MessageType::Program, "ETH", OWNER, 2.0, content);
        let msg = message::parse(&serde_json::to_vec(&draft.to_json()).unwrap())
            .unwrap_or_else(|e| panic!("the test's program message is invalid: {e}"));
        self.store.put_message(&msg).unwrap();
        msg
    }

    /// The probe app as a program.
    fn probe(&self, extra: Value) -> Message {
        let code = self.code(Path::new(PROBE));
        self.program(&code, "app:app", extra)
    }

    /// The host directory of the persistent volume `name` of the library tests' owner.
    fn volume(&self, name: &str) -> PathBuf {
        self.store.volume_dir(OWNER, name).unwrap()
    }

    /// `aleph-wasm --store <this store> --module-cache <shared> <args>`, run in the repository.
    fn cli(&self, args: &[&str]) -> CliOut {
        let mut cmd = Command::new(BIN);
        cmd.current_dir(REPO)
            .arg("--store")
            .arg(self.store.root())
            .arg("--module-cache")
            .arg(module_cache())
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove("ALEPH_WASM_STORE")
            .env_remove("ALEPH_WASM_MODULE_CACHE")
            .env_remove("ALEPH_WASM_OWNER")
            // Snapshots have their own tests (`snapshot`); here every program starts cold.
            .env_remove("ALEPH_WASM_SNAPSHOTS");
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
        CliOut {
            line: format!("aleph-wasm {}", args.join(" ")),
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// A finished command.
struct CliOut {
    line: String,
    code: i32,
    stdout: String,
    stderr: String,
}

impl CliOut {
    fn ok(self) -> CliOut {
        assert_eq!(self.code, 0, "{self}");
        self
    }

    fn last_line(&self) -> String {
        self.stdout
            .lines()
            .last()
            .unwrap_or_else(|| panic!("no output\n{self}"))
            .trim()
            .to_string()
    }

    fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not JSON: {e}\n{self}"))
    }
}

impl std::fmt::Display for CliOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "command: {}\nexit code: {}\n--- stdout ---\n{}\n--- stderr ---\n{}\n---",
            self.line,
            self.code,
            shorten(&self.stdout),
            shorten(&self.stderr)
        )
    }
}

fn shorten(s: &str) -> String {
    const MAX: usize = 6000;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} more bytes)", &s[..end], s.len() - end)
}

// --- Requests and outcomes -------------------------------------------------------------------

fn request(line: &str) -> HttpRequest {
    HttpRequest::from_line(line).unwrap()
}

fn http(line: &str) -> Trigger {
    Trigger::Http(request(line))
}

/// Executes, failing the test if the engine does not answer within [`HANG`].
async fn run(executor: &Executor, msg: &Message, trigger: Trigger) -> Outcome {
    match tokio::time::timeout(HANG, executor.execute(msg, &trigger)).await {
        Ok(outcome) => outcome,
        Err(_) => panic!("no outcome within {HANG:?}: the execution hangs"),
    }
}

/// The receipt of a reproducible execution: `o`, an execution of `msg` by `ex` on `trigger`.
fn reproducible_receipt(ex: &Executor, msg: &Message, trigger: &Trigger, o: &Outcome) -> Value {
    aleph_wasm::receipt::build(
        ex.sandbox().config(),
        &aleph_wasm::receipt::Execution {
            message: &msg.item_hash,
            reproducible: true,
            trigger,
            outcome: o,
        },
    )
}

fn show(o: &Outcome) -> String {
    format!(
        "outcome {} status {:?} exit {:?}\nerror: {}\n--- body ---\n{}\n--- stdout ---\n{}\n\
         --- stderr ---\n{}\n---",
        o.kind.as_str(),
        o.status,
        o.exit_code,
        o.error.as_deref().unwrap_or("-"),
        shorten(&String::from_utf8_lossy(&o.body)),
        shorten(&String::from_utf8_lossy(&o.stdout.bytes)),
        shorten(&String::from_utf8_lossy(&o.stderr.bytes)),
    )
}

fn stdout(o: &Outcome) -> String {
    String::from_utf8_lossy(&o.stdout.bytes).into_owned()
}

fn stderr(o: &Outcome) -> String {
    String::from_utf8_lossy(&o.stderr.bytes).into_owned()
}

fn body(o: &Outcome) -> String {
    String::from_utf8_lossy(&o.body).into_owned()
}

/// Asserts an `ok` outcome with `status` and returns the body parsed as JSON.
fn json_with(o: &Outcome, status: u16) -> Value {
    assert_eq!(o.kind, OutcomeKind::Ok, "{}", show(o));
    assert_eq!(o.status, Some(status), "{}", show(o));
    serde_json::from_slice(&o.body)
        .unwrap_or_else(|e| panic!("the body is not JSON: {e}\n{}", show(o)))
}

fn ok_json(o: &Outcome) -> Value {
    json_with(o, 200)
}

fn header<'a>(o: &'a Outcome, name: &str) -> Option<&'a str> {
    o.headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// `(instance, count)` from the probe's `/count` or `/sleep`.
fn counted(o: &Outcome) -> (String, i64) {
    let v = ok_json(o);
    (
        v["instance"].as_str().unwrap().to_string(),
        v["count"].as_i64().unwrap(),
    )
}

/// The lines of the probe's lifespan log in a persistent volume.
fn lifespan_log(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("lifespan.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn state_volume() -> Value {
    json!([{"name": "state", "mount": "/state", "persistence": "host", "size_mib": 1}])
}

fn bytes_field(v: &Value) -> &str {
    v["bytes"]
        .as_str()
        .unwrap_or_else(|| panic!("expected a bytes value, got {v}"))
}

// --- ASGI scope and the http exchange --------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_scope_is_complete() {
    let py = Py::new();
    let msg = py.probe(json!({}));
    let ex = py.executor(config(true));
    let mut req = request("GET /sc%6Fpe?a=1&b=x%20y");
    req.headers = vec![
        ("X-Mixed-Case".into(), "Value One".into()),
        ("Accept".into(), "text/plain".into()),
        ("x-mixed-case".into(), "two".into()),
    ];
    req.remote_addr = Some("203.0.113.7:4242".into());
    req.server_name = "example.org".into();
    req.server_port = 8080;
    let o = run(&ex, &msg, Trigger::Http(req)).await;
    let scope = ok_json(&o);

    assert_eq!(scope["type"], "http", "{scope}");
    assert_eq!(scope["asgi"]["version"], "3.0", "{scope}");
    assert!(scope["asgi"]["spec_version"].is_string(), "{scope}");
    assert_eq!(scope["http_version"], "1.1", "{scope}");
    assert_eq!(scope["method"], "GET", "{scope}");
    assert_eq!(scope["scheme"], "http", "{scope}");
    // `path` is percent-decoded; `raw_path` is the bytes as they came.
    assert_eq!(scope["path"], "/scope", "{scope}");
    assert_eq!(bytes_field(&scope["raw_path"]), "/sc%6Fpe", "{scope}");
    assert_eq!(
        bytes_field(&scope["query_string"]),
        "a=1&b=x%20y",
        "{scope}"
    );
    assert_eq!(scope["root_path"], "", "{scope}");
    // Byte pairs, names lower-cased, values untouched, order and repeats kept.
    let headers: Vec<(String, String)> = scope["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (bytes_field(&h[0]).into(), bytes_field(&h[1]).into()))
        .collect();
    let want = [
        ("x-mixed-case", "Value One"),
        ("accept", "text/plain"),
        ("x-mixed-case", "two"),
    ];
    assert_eq!(
        headers,
        want.map(|(k, v)| (k.to_string(), v.to_string())),
        "{scope}"
    );
    assert_eq!(scope["headers_are_tuples"], true, "{scope}");
    assert_eq!(scope["client"], json!(["203.0.113.7", 4242]), "{scope}");
    assert_eq!(scope["server"], json!(["example.org", 8080]), "{scope}");
    // Lifespan startup ran before this first request, and its state reached the scope.
    assert_eq!(scope["started"], true, "{scope}");
    assert_eq!(
        scope["state"],
        json!({"greeting": "from lifespan"}),
        "{scope}"
    );
    ex.shutdown().await;
}

/// A runtime stored by another version, whose bootstrap speaks another channel protocol, is
/// refused with both protocols named, instead of being sent frames it would misread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bootstrap_of_another_channel_protocol_is_refused_naming_both() {
    let py = Py::new();
    let src = Path::new(REPO).join("runtimes/python-3.12");
    let dir = py.dir.path().join("python-aw1");
    std::fs::create_dir_all(dir.join("licences")).unwrap();
    for entry in std::fs::read_dir(src.join("licences")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join("licences").join(path.file_name().unwrap())).unwrap();
    }
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
    }
    let boot = std::fs::read_to_string(dir.join("boot.py")).unwrap();
    let current = format!("PROTOCOL = \"{}\"", aleph_wasm::channel::PROTOCOL);
    assert!(boot.contains(&current), "boot.py names no {current}");
    std::fs::write(
        dir.join("boot.py"),
        boot.replace(&current, "PROTOCOL = \"AW1\""),
    )
    .unwrap();
    let reference = runtime::add_dir(&py.store, &dir).unwrap();
    let msg =
        py.probe(json!({"runtime": {"ref": reference, "use_latest": false, "comment": "AW1"}}));
    let ex = py.executor(config(true));

    let o = run(&ex, &msg, http("GET /scope")).await;
    let error = o.error.as_deref().unwrap_or_default();
    assert!(
        error.contains("speaks channel protocol AW1")
            && error.contains(&format!(
                "this engine speaks {}",
                aleph_wasm::channel::PROTOCOL
            )),
        "{}",
        show(&o)
    );
    ex.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_request_body_arrives_in_several_http_request_events() {
    let py = Py::new();
    let msg = py.probe(json!({"resources": {"vcpus": 1, "memory": 128, "seconds": 30}}));
    let ex = py.executor(config(true));
    let payload: Vec<u8> = (0..140_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut req = request("POST /body");
    req.headers = vec![("Content-Type".into(), "application/octet-stream".into())];
    req.body = payload.clone();
    let o = run(&ex, &msg, Trigger::Http(req)).await;
    let v = ok_json(&o);
    assert_eq!(
        v["events"],
        json!([
            {"type": "http.request", "size": 65536, "more_body": true},
            {"type": "http.request", "size": 65536, "more_body": true},
            {"type": "http.request", "size": 140_000 - 2 * 65536, "more_body": false},
        ]),
        "{v}"
    );
    assert_eq!(v["total"], 140_000, "{v}");
    assert_eq!(v["sha256"], hex::encode(Sha256::digest(&payload)), "{v}");

    // A large body is still handed to the app in 64 KiB events.
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i * 13 % 251) as u8).collect();
    let mut req = request("POST /body");
    req.body = big.clone();
    let o = run(&ex, &msg, Trigger::Http(req)).await;
    let v = ok_json(&o);
    let events = v["events"].as_array().expect("events");
    assert_eq!(events.len(), big.len().div_ceil(65536), "{v}");
    assert!(
        events[..events.len() - 1]
            .iter()
            .all(|e| e["size"] == 65536 && e["more_body"] == true),
        "{v}"
    );
    assert_eq!(events.last().unwrap()["more_body"], false, "{v}");
    assert_eq!(v["total"], big.len(), "{v}");
    assert_eq!(v["sha256"], hex::encode(Sha256::digest(&big)), "{v}");

    // No body: one event, empty, last.
    let o = run(&ex, &msg, http("POST /body")).await;
    let v = ok_json(&o);
    assert_eq!(
        v["events"],
        json!([{"type": "http.request", "size": 0, "more_body": false}]),
        "{v}"
    );
    ex.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_response_is_delivered_whole() {
    let py = Py::new();
    let msg = py.probe(json!({}));
    let ex = py.executor(config(true));
    let o = run(&ex, &msg, http("GET /stream")).await;
    assert_eq!(o.kind, OutcomeKind::Ok, "{}", show(&o));
    assert_eq!(o.status, Some(200), "{}", show(&o));
    assert_eq!(
        header(&o, "content-type"),
        Some("text/plain"),
        "{}",
        show(&o)
    );
    assert_eq!(
        body(&o),
        "part 0\npart 1\npart 2\npart 3\npart 4\nend\n",
        "{}",
        show(&o)
    );
    ex.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_disconnect_comes_once_the_response_is_complete() {
    let py = Py::new();
    let msg = py.probe(json!({}));
    let ex = py.executor(config(true));
    let o = run(&ex, &msg, http("GET /disconnect")).await;
    assert_eq!(o.kind, OutcomeKind::Ok, "{}", show(&o));
    assert_eq!(body(&o), "ab", "{}", show(&o));
    // A receive() pending during the response is not answered until the last body part;
    // then it and every later receive() get http.disconnect.
    assert!(
        stdout(&o)
            .contains("first=http.request early=False late=http.disconnect again=http.disconnect"),
        "{}",
        show(&o)
    );
    ex.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifespan_startup_precedes_the_first_request_and_shutdown_runs_at_retirement() {
    let py = Py::new();
    let msg = py.probe(json!({"volumes": state_volume()}));
    let volume = py.volume("state");

    // A warm instance: startup at boot, shutdown only when the executor retires it.
    let ex = py.executor(config(true));
    let o = run(&ex, &msg, http("GET /count")).await;
    let v = ok_json(&o);
    let id = v["instance"].as_str().unwrap().to_string();
    assert_eq!(v["started"], true, "{v}");
    assert!(
        stdout(&o).contains(&format!("lifespan startup {id}")),
        "the boot's log belongs to the first request\n{}",
        show(&o)
    );
    assert_eq!(lifespan_log(&volume), [format!("startup {id}")]);
    let o = run(&ex, &msg, http("GET /count")).await;
    assert_eq!(counted(&o), (id.clone(), 2), "{}", show(&o));
    assert_eq!(lifespan_log(&volume), [format!("startup {id}")]);
    ex.shutdown().await;
    assert_eq!(
        lifespan_log(&volume),
        [format!("startup {id}"), format!("shutdown {id}")]
    );

    // One instance per execution: shutdown right after the request.
    let ex = py.executor(config(false));
    let o = run(&ex, &msg, http("GET /count")).await;
    let (other, count) = counted(&o);
    assert_eq!(count, 1, "{}", show(&o));
    assert_ne!(other, id);
    assert!(
        stderr(&o).contains(&format!("lifespan shutdown {other}")),
        "{}",
        show(&o)
    );
    assert_eq!(
        lifespan_log(&volume)[2..],
        [format!("startup {other}"), format!("shutdown {other}")]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_exception_is_a_500_with_the_traceback_in_the_log_only() {
    let py = Py::new();
    let msg = py.probe(json!({}));
    let ex = py.executor(config(true));
    let o = run(&ex, &msg, http("GET /raise")).await;
    assert_eq!(o.kind, OutcomeKind::Error, "{}", show(&o));
    assert_eq!(o.status, Some(500), "{}", show(&o));
    assert_eq!(body(&o), "Internal Server Error", "{}", show(&o));
    for needle in [
        "Traceback (most recent call last)",
        "app.py",
        "raise_route",
        "ValueError: probe failure: secret-detail-42",
    ] {
        assert!(stderr(&o).contains(needle), "{needle:?}\n{}", show(&o));
    }
    assert!(stdout(&o).contains("about to fail"), "{}", show(&o));
    assert!(
        o.error.as_deref().unwrap_or("").contains("ValueError"),
        "{}",
        show(&o)
    );
    // The instance is still usable.
    let o = run(&ex, &msg, http("GET /count")).await;
    assert_eq!(o.kind, OutcomeKind::Ok, "{}", show(&o));
    ex.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_asgi_send_from_the_seed_fixture_is_a_clear_error_not_a_hang() {
    let py = Py::new();
    let mut draft: Value = serde_json::from_slice(&std::fs::read(SEED_INLINE).unwrap()).unwrap();
    draft["content"]["runtime"]["ref"] = py.runtime.clone().into();
    let msg = message::parse(&serde_json::to_vec(&draft).unwrap())
        .unwrap_or_else(|e| panic!("the seed fixture does not parse: {e}"));
    let ex = py.executor(config(false));
    let started = Instant::now();
    let o = run(&ex, &msg, http("GET /")).await;
    assert_eq!(o.kind, OutcomeKind::Error, "{}", show(&o));
    assert_ne!(o.status, Some(200), "{}", show(&o));
    let error = o.error.clone().unwrap_or_default();
    assert!(
        error.contains("{'output': 'hola!'}"),
        "the error names the offending message\n{}",
        show(&o)
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_asgi_send_during_a_request_is_a_protocol_error() {
    // The seed's send, from an app that handles lifespan: the error comes from the request.
    let py = Py::new();
    let msg = py.probe(json!({}));
    let ex = py.executor(config(true));
    let o = run(&ex, &msg, http("GET /bad-send")).await;
    assert_eq!(o.kind, OutcomeKind::Error, "{}", show(&o));
    assert_ne!(o.status, Some(200), "{}", show(&o));
    let error = o.error.clone().unwrap_or_default();
    assert!(
        error.contains("ASGI") && error.contains("{'output': 'hola!'}"),
        "{}",
        show(&o)
    );
    // The instance still serves.
    let o = run(&ex, &msg, http("GET /count")).await;
    assert_eq!(o.kind, OutcomeKind::Ok, "{}", show(&o));
    ex.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncio_sleep_tasks_gather_and_timeouts_work_in_a_handler() {
    let py = Py::new();
    let msg = py.probe(json!({}));
    let ex = py.executor(config(true));
    let o = run(&ex, &msg, http("GET /asyncio")).await;
    let v = ok_json(&o);
    assert!(v["slept"].as_f64().unwrap() >= 0.045, "{v}");
    assert_eq!(v["gather"], json!([1, 4, 9]), "{v}");
    assert_eq!(v["task"], 16, "{v}");
    assert_eq!(v["wait_for"], "TimeoutError", "{v}");
    assert_eq!(v["timeout_cm"], "TimeoutError", "{v}");
    assert_eq!(v["wait_for_ok"], 25, "{v}");
    assert_eq!(v["taskgroup"], json!([36, 49]), "{v}");
    assert_eq!(v["queue"], json!([0, 1, 2]), "{v}");
    assert_eq!(v["cancelled"], true, "{v}");
    assert_eq!(v["to_thread"], "inline", "{v}");
    // The timeouts fired at their time, not at the 10 s sleeps they cut short.
    assert!(v["elapsed"].as_f64().unwrap() < 5.0, "{v}");
    ex.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variables_are_the_environment_and_engine_settings_are_not_visible() {
    let py = Py::new();
    let variables = json!({
        "GREETING": "hello",
        "EMPTY": "",
        "WITH_EQUALS": "a=b=c",
        "UNICODE": "héllo wörld",
    });
    let msg = py.probe(json!({"variables": variables}));
    let ex = py.executor(config(true));
    let o = run(&ex, &msg, http("GET /env")).await;
    let env = ok_json(&o);
    for (k, v) in variables.as_object().unwrap() {
        assert_eq!(&env[k], v, "{k}: {env}");
    }
    for key in env.as_object().unwrap().keys() {
        assert!(!key.starts_with("ALEPH_WASM"), "{key} is visible: {env}");
    }
    for host in ["PATH", "HOME", "CARGO_MANIFEST_DIR", "CARGO_TARGET_TMPDIR"] {
        assert!(env.get(host).is_none(), "the host's {host} leaked: {env}");
    }
    ex.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guest_cannot_reach_host_files() {
    let py = Py::new();
    let msg = py.probe(json!({}));
    let ex = py.executor(config(true));
    let o = run(&ex, &msg, http("GET /files")).await;
    let v = ok_json(&o);
    let denied = ["FileNotFoundError", "PermissionError"];
    for key in [
        "/etc/passwd",
        "../../../../etc/passwd",
        "/opt/code/../../etc/passwd",
        "/proc/self/environ",
        "listdir /etc",
    ] {
        let got = v[key].as_str().unwrap();
        assert!(denied.contains(&got), "{key}: {got}\n{v}");
    }
    // The code is read-only, there is no /tmp, and the app's own files are readable.
    for key in ["write /opt/code/x", "write /tmp/x"] {
        let got = v[key].as_str().unwrap();
        assert!(!got.starts_with("ok"), "{key}: {got}\n{v}");
    }
    assert!(v["own code"].as_str().unwrap().starts_with("ok"), "{v}");
    assert_eq!(v["cwd"], "/opt/code", "{v}");
    ex.shutdown().await;
}

// --- Warm instances --------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_requests_are_served_by_one_warm_instance() {
    let py = Py::new();
    let msg = py.probe(json!({}));
    let ex = py.executor(config(true));
    let mut seen = Vec::new();
    let mut cold = Vec::new();
    for _ in 0..3 {
        let o = run(&ex, &msg, http("GET /count")).await;
        seen.push(counted(&o));
        cold.push(o.cold_start);
    }
    let id = seen[0].0.clone();
    assert_eq!(seen, [(id.clone(), 1), (id.clone(), 2), (id, 3)]);
    assert_eq!(cold, [true, false, false], "only the first request boots");
    // The idle instance is listed with what it has done.
    let details = ex.instance_details();
    let instances = &details[&msg.item_hash];
    assert_eq!(instances.len(), 1, "{details:?}");
    assert_eq!(instances[0].requests_served, 3, "{details:?}");
    assert!(instances[0].peak_memory_bytes > 1 << 20, "{details:?}");
    assert!(instances[0].fuel_consumed > 0, "{details:?}");
    ex.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_instance_is_retired_to_make_room_in_the_memory_budget() {
    let py = Py::new();
    let a = py.probe(json!({"variables": {"WHICH": "a"}}));
    let b = py.probe(json!({"variables": {"WHICH": "b"}}));
    // Each program declares 128 MiB; the budget holds one instance.
    let ex = py.executor(ExecutorConfig {
        memory_budget_mib: Some(200),
        ..config(true)
    });
    ok_json(&run(&ex, &a, http("GET /count")).await);
    assert_eq!(ex.memory_use().unwrap().reserved_mib, 128);
    assert_eq!(ex.idle_instances().get(&a.item_hash), Some(&1));
    // b does not fit beside a's idle instance: a's is retired, b's boots.
    ok_json(&run(&ex, &b, http("GET /count")).await);
    assert_eq!(ex.idle_instances().get(&a.item_hash), None);
    assert_eq!(ex.idle_instances().get(&b.item_hash), Some(&1));
    assert_eq!(ex.memory_use().unwrap().reserved_mib, 128);
    ex.shutdown().await;
    assert_eq!(ex.memory_use().unwrap().reserved_mib, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infinite_loop_times_out_and_the_next_request_gets_a_fresh_instance() {
    let py = Py::new();
    let msg = py.probe(json!({"resources": {"vcpus": 1, "memory": 128, "seconds": 2}}));
    let ex = py.executor(config(true));
    let (first, _) = counted(&run(&ex, &msg, http("GET /count")).await);
    let started = Instant::now();
    let o = run(&ex, &msg, http("GET /loop")).await;
    assert_eq!(o.kind, OutcomeKind::Timeout, "{}", show(&o));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    let o = run(&ex, &msg, http("GET /count")).await;
    let (second, count) = counted(&o);
    assert_ne!(second, first, "the looping instance was reused");
    assert_eq!(count, 1);
    ex.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_bomb_is_out_of_memory_and_the_next_request_gets_a_fresh_instance() {
    let py = Py::new();
    let msg = py.probe(json!({"resources": {"vcpus": 1, "memory": 64, "seconds": 10}}));
    let ex = py.executor(config(true));
    let (first, _) = counted(&run(&ex, &msg, http("GET /count")).await);
    let o = run(&ex, &msg, http("GET /bomb")).await;
    assert_eq!(o.kind, OutcomeKind::OutOfMemory, "{}", show(&o));
    let (second, count) = counted(&run(&ex, &msg, http("GET /count")).await);
    assert_ne!(
        second, first,
        "the instance that ran out of memory was reused"
    );
    assert_eq!(count, 1);
    ex.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_instance_is_replaced_by_a_fresh_one() {
    let py = Py::new();
    let msg = py.probe(json!({}));
    let ex = py.executor(config(true));
    let (a, _) = counted(&run(&ex, &msg, http("GET /count")).await);

    // os._exit(3) in a handler.
    let o = run(&ex, &msg, http("GET /exit")).await;
    assert_eq!(o.kind, OutcomeKind::Exit, "{}", show(&o));
    assert_eq!(o.exit_code, Some(3), "{}", show(&o));
    let (b, count) = counted(&run(&ex, &msg, http("GET /count")).await);
    assert_ne!(b, a);
    assert_eq!(count, 1);

    // os.abort(): a trap, told in one sentence (the wasm backtrace goes to the log).
    let o = run(&ex, &msg, http("GET /abort")).await;
    assert_eq!(o.kind, OutcomeKind::Trap, "{}", show(&o));
    let error = o.error.as_deref().unwrap_or_default();
    assert!(
        error.starts_with("the guest crashed (wasm trap: ")
            && error.ends_with(") while serving the request")
            && !error.contains('\n'),
        "{}",
        show(&o)
    );
    let (c, count) = counted(&run(&ex, &msg, http("GET /count")).await);
    assert!(c != a && c != b);
    assert_eq!(count, 1);
    ex.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_while_the_app_loads_is_one_sentence_naming_the_stage() {
    let py = Py::new();
    let msg = py.probe(json!({"variables": {"PROBE_ABORT_AT_IMPORT": "1"}}));
    let ex = py.executor(config(true));
    let o = run(&ex, &msg, http("GET /count")).await;
    assert_eq!(o.kind, OutcomeKind::Error, "{}", show(&o));
    let error = o.error.as_deref().unwrap_or_default();
    assert!(
        error.starts_with("loading the app (the interpreter's start and the app's import): ")
            && error.contains("the guest crashed (wasm trap: ")
            && !error.contains('\n'),
        "{}",
        show(&o)
    );
    ex.shutdown().await;
}

/// A code directory whose `main.py` imports `m0`, which imports `m1`, … down to `m{depth - 1}`.
fn import_chain(py: &Py, depth: usize) -> PathBuf {
    let code = py.dir.path().join(format!("chain-{depth}"));
    std::fs::create_dir_all(&code).unwrap();
    for i in 0..depth {
        let next = if i + 1 < depth {
            format!("import m{}\n", i + 1)
        } else {
            String::new()
        };
        std::fs::write(code.join(format!("m{i}.py")), next).unwrap();
    }
    std::fs::copy(Path::new(PROBE).join("app.py"), code.join("probe_app.py")).unwrap();
    std::fs::write(
        code.join("main.py"),
        "import m0\nfrom probe_app import app\n",
    )
    .unwrap();
    code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_nested_deep_load_until_pythons_own_recursion_limit() {
    let py = Py::new();
    let ex = py.executor(config(true));
    // Nested imports cost the interpreter's C stack about 18 KiB a level: as linked (512 KiB)
    // it overflowed at about 28; relocated (8 MiB), 80 levels load and Python's own recursion
    // limit ends deeper chains, as it does natively.
    let deep = py.program(&py.code(&import_chain(&py, 80)), "main:app", json!({}));
    let o = run(&ex, &deep, http("GET /count")).await;
    assert_eq!(o.status, Some(200), "{}", show(&o));
    let deeper = py.program(&py.code(&import_chain(&py, 300)), "main:app", json!({}));
    let o = run(&ex, &deeper, http("GET /count")).await;
    assert_eq!(o.kind, OutcomeKind::Error, "{}", show(&o));
    let error = o.error.as_deref().unwrap_or_default();
    assert!(
        error.contains("RecursionError") && !error.contains("crashed"),
        "{}",
        show(&o)
    );
    ex.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_instances_retire_after_the_idle_timeout_with_lifespan_shutdown() {
    let py = Py::new();
    let msg = py.probe(json!({"volumes": state_volume()}));
    let volume = py.volume("state");
    let idle = Duration::from_secs(1);
    let ex = py.executor(ExecutorConfig {
        idle_timeout: idle,
        ..config(true)
    });
    let (a, _) = counted(&run(&ex, &msg, http("GET /count")).await);
    // Not idle long enough: kept.
    ex.retire_idle(idle).await;
    assert_eq!(lifespan_log(&volume), [format!("startup {a}")]);
    tokio::time::sleep(idle + Duration::from_millis(300)).await;
    ex.retire_idle(idle).await;
    assert_eq!(
        lifespan_log(&volume),
        [format!("startup {a}"), format!("shutdown {a}")]
    );
    let (b, count) = counted(&run(&ex, &msg, http("GET /count")).await);
    assert_ne!(b, a);
    assert_eq!(count, 1);

    // The executor also retires stale instances by itself when the next request comes.
    tokio::time::sleep(idle + Duration::from_millis(300)).await;
    let (c, count) = counted(&run(&ex, &msg, http("GET /count")).await);
    assert_ne!(c, b);
    assert_eq!(count, 1);
    assert_eq!(
        lifespan_log(&volume)[2..],
        [
            format!("startup {b}"),
            format!("shutdown {b}"),
            format!("startup {c}")
        ]
    );
    ex.shutdown().await;
    assert_eq!(lifespan_log(&volume).last(), Some(&format!("shutdown {c}")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_vcpus_instances_serve_concurrent_requests() {
    let py = Py::new();
    let msg = py.probe(json!({"resources": {"vcpus": 2, "memory": 128, "seconds": 10}}));
    let ex = py.executor(config(true));
    let started = Instant::now();
    let outcomes = tokio::join!(
        run(&ex, &msg, http("GET /sleep?0.5")),
        run(&ex, &msg, http("GET /sleep?0.5")),
        run(&ex, &msg, http("GET /sleep?0.5")),
        run(&ex, &msg, http("GET /sleep?0.5")),
    );
    let elapsed = started.elapsed();
    let outcomes = [outcomes.0, outcomes.1, outcomes.2, outcomes.3];
    let results: Vec<(String, i64)> = outcomes.iter().map(counted).collect();
    let instances: BTreeSet<&str> = results.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(instances.len(), 2, "{results:?}");
    // Two rounds of two: never more than two requests at once.
    assert!(elapsed >= Duration::from_millis(1000), "{elapsed:?}");
    // Each instance booted once: its lifespan startup is in the logs of its first request.
    let startups = outcomes
        .iter()
        .map(|o| stdout(o).matches("lifespan startup").count())
        .sum::<usize>();
    assert_eq!(startups, 2, "{results:?}");
    ex.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_instance_at_a_time_mounts_a_persistent_volume_whatever_the_vcpus() {
    let py = Py::new();
    let msg = py.probe(json!({
        "resources": {"vcpus": 2, "memory": 128, "seconds": 10},
        "volumes": state_volume(),
    }));
    let volume = py.volume("state");
    let ex = std::sync::Arc::new(py.executor(config(true)));
    // Concurrent read-modify-writes of one file: two instances would interleave them and
    // lose updates (WASI has no file locks), one serves them in turn.
    let tasks: Vec<_> = (0..24)
        .map(|_| {
            let (ex, msg) = (ex.clone(), msg.clone());
            tokio::spawn(async move { run(&ex, &msg, http("GET /tally")).await })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(counted(&task.await.unwrap()));
    }
    let instances: BTreeSet<&str> = results.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(instances.len(), 1, "{results:?}");
    let counts: BTreeSet<i64> = results.iter().map(|(_, n)| *n).collect();
    assert_eq!(counts, (1..=24).collect(), "{results:?}");
    assert_eq!(std::fs::read_to_string(volume.join("tally")).unwrap(), "24");
    let first = results[0].0.clone();

    // Another program of the same owner mounts the same volume: the idle instance that holds
    // it is retired (lifespan shutdown) before the new one boots, and the count goes on.
    let other = py.probe(json!({
        "resources": {"vcpus": 2, "memory": 128, "seconds": 10},
        "volumes": state_volume(),
        "variables": {"PROBE_PROGRAM": "other"},
    }));
    assert_ne!(other.item_hash, msg.item_hash);
    let (second, count) = counted(&run(&ex, &other, http("GET /tally")).await);
    assert_eq!(count, 25);
    assert_eq!(
        lifespan_log(&volume),
        [
            format!("startup {first}"),
            format!("shutdown {first}"),
            format!("startup {second}")
        ]
    );
    ex.shutdown().await;
}

// --- A real framework ------------------------------------------------------------------------

/// Pure-Python wheels of `specs` (exact `name==version` pins) from PyPI, downloaded once into
/// the shared cache under `name`.
fn pure_wheels(name: &str, specs: &[&str]) -> Vec<PathBuf> {
    let wheels = wheels_of(
        name,
        specs,
        &[
            "--platform",
            "any",
            "--implementation",
            "py",
            "--abi",
            "none",
        ],
    );
    for wheel in &wheels {
        let file = wheel.file_name().unwrap().to_string_lossy();
        assert!(
            file.ends_with("-none-any.whl"),
            "not a pure-Python wheel: {file}"
        );
    }
    wheels
}

/// CPython 3.12 x86-64 Linux wheels of `specs`, for packages that publish no pure-Python wheel
/// but fall back to Python code when their compiled module cannot be loaded (as on WASI).
fn linux_wheels(name: &str, specs: &[&str]) -> Vec<PathBuf> {
    let platform = [
        "--platform",
        "manylinux2014_x86_64",
        "--implementation",
        "cp",
        "--abi",
        "cp312",
    ];
    wheels_of(name, specs, &platform)
}

/// Wheels of `specs` for the pip platform selection `platform`, downloaded once into the
/// shared cache under `name`.
fn wheels_of(name: &str, specs: &[&str], platform: &[&str]) -> Vec<PathBuf> {
    static ONCE: Mutex<()> = Mutex::new(());
    let _once = lock(&ONCE);
    let key = hex::encode(&Sha256::digest([specs, platform].concat().join("\n").as_bytes())[..6]);
    let dir = cache_dir().join(format!("wheels-{name}-{key}"));
    if !dir.join(".complete").is_file() {
        let partial = cache_dir().join(format!("wheels-partial-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&partial);
        std::fs::create_dir_all(&partial).unwrap();
        let python = std::env::var_os(runtime::PYTHON_ENV)
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| "python3".into());
        let out = Command::new(&python)
            .args(["-m", "pip", "download", "--disable-pip-version-check"])
            .args([
                "--no-deps",
                "--only-binary=:all:",
                "--python-version",
                "3.12",
            ])
            .args(platform)
            .args(specs)
            .arg("-d")
            .arg(&partial)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {python:?} -m pip: {e}"));
        assert!(
            out.status.success(),
            "pip download failed\n--- stdout ---\n{}\n--- stderr ---\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(partial.join(".complete"), b"").unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&partial, &dir).unwrap();
    }
    let mut wheels: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "whl"))
        .collect();
    wheels.sort();
    assert_eq!(wheels.len(), specs.len(), "{wheels:?}");
    wheels
}

/// `app`'s `main.py` with `wheels` unpacked into `packages/`, as the directory `name` in `py`'s
/// directory. Compiled modules (`*.so`) cannot load under WASI; were any in a wheel, they are
/// deleted, so what runs is what a test claims runs: the pure-Python code.
fn code_with_wheels(py: &Py, app: &str, name: &str, wheels: &[PathBuf]) -> PathBuf {
    let code = py.dir.path().join(name);
    let packages = code.join("packages");
    std::fs::create_dir_all(&packages).unwrap();
    std::fs::copy(Path::new(app).join("main.py"), code.join("main.py")).unwrap();
    for wheel in wheels {
        let file = std::fs::File::open(wheel).unwrap();
        zip::ZipArchive::new(file)
            .and_then(|mut z| z.extract(&packages))
            .unwrap_or_else(|e| panic!("{}: {e}", wheel.display()));
    }
    let mut dirs = vec![packages];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "so" || e == "pyd") {
                std::fs::remove_file(&path).unwrap();
            }
        }
    }
    code
}

/// The Starlette app with its packages.
fn starlette_code(py: &Py) -> PathBuf {
    code_with_wheels(
        py,
        STARLETTE_APP,
        "starlette-code",
        &pure_wheels("starlette", &STARLETTE_WHEELS),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starlette_app_runs_unchanged_from_a_code_archive() {
    let py = Py::new();
    let code = starlette_code(&py);
    let code_ref = py.code(&code);
    let msg = py.program(&code_ref, "main:app", json!({}));
    let ex = py.executor(config(true));

    let o = run(&ex, &msg, http("GET /")).await;
    assert_eq!(o.kind, OutcomeKind::Ok, "{}", show(&o));
    assert_eq!(body(&o), "starlette on aleph-wasm", "{}", show(&o));
    assert!(
        header(&o, "content-type").is_some_and(|v| v.starts_with("text/plain")),
        "{}",
        show(&o)
    );

    let o = run(&ex, &msg, http("GET /items/2?q=search")).await;
    let v = ok_json(&o);
    assert_eq!(
        v,
        json!({"id": 2, "id_type": "int", "q": "search", "name": "two", "lifespan": ["startup"]})
    );

    let mut req = request("POST /echo");
    req.headers = vec![("Content-Type".into(), "application/json".into())];
    req.body = br#"{"a": [1, 2, {"b": null}]}"#.to_vec();
    let o = run(&ex, &msg, Trigger::Http(req)).await;
    let v = json_with(&o, 201);
    assert_eq!(
        v,
        json!({"echo": {"a": [1, 2, {"b": null}]}, "content_type": "application/json"})
    );

    let o = run(&ex, &msg, http("GET /api/count/4")).await;
    assert_eq!(o.kind, OutcomeKind::Ok, "{}", show(&o));
    assert_eq!(body(&o), "1\n2\n3\n4\n", "{}", show(&o));

    // Starlette's own answers: no route (its handler is sync: run inline, no threads), the
    // path convertor refusing a non-integer, a method not allowed.
    for (line, status) in [
        ("GET /nowhere", 404),
        ("GET /items/abc", 404),
        ("DELETE /echo", 405),
    ] {
        let o = run(&ex, &msg, http(line)).await;
        assert_eq!(o.kind, OutcomeKind::Ok, "{line}\n{}", show(&o));
        assert_eq!(o.status, Some(status), "{line}\n{}", show(&o));
    }
    ex.shutdown().await;
}

// --- The examples, as their README runs them --------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hello_example_answers_through_the_command_line() {
    let py = Py::new();
    let cached = interpreter_cache().join(interpreter_sha256());
    let fetched = py
        .cli(&[
            "runtime",
            "fetch",
            "python-3.12",
            "--file",
            cached.to_str().unwrap(),
        ])
        .ok();
    assert_eq!(fetched.last_line(), py.runtime, "{fetched}");
    let created = py
        .cli(&[
            "program",
            "create",
            "examples/python-hello",
            "--entrypoint",
            "main:app",
        ])
        .ok();
    let program = created.last_line();

    let out = py.cli(&["run", &program, "--request", "GET /"]).ok();
    assert!(out.stdout.starts_with("HTTP/1.1 200\r\n"), "{out}");
    assert!(
        out.stdout
            .contains("content-type: text/plain; charset=utf-8\r\n"),
        "{out}"
    );
    assert!(out.stdout.ends_with("\r\n\r\nHello, world!\n"), "{out}");

    let out = py
        .cli(&["run", &program, "--request", "GET /?name=aleph", "--json"])
        .ok();
    let v = out.json();
    assert_eq!(v["outcome"], "ok", "{out}");
    assert_eq!(v["status"], 200, "{out}");
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD
        .decode(v["body_base64"].as_str().unwrap())
        .unwrap();
    assert_eq!(body, b"Hello, aleph!\n", "{out}");
    let logged = v["stdout"].as_str().unwrap();
    assert!(
        logged.contains("hello: starting") && logged.contains("hello: greeting 'aleph'"),
        "{out}"
    );

    let out = py.cli(&["run", &program, "--request", "GET /missing"]);
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.starts_with("HTTP/1.1 404\r\n"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_api_example_keeps_its_database_on_a_persistent_volume() {
    let py = Py::new();
    let created = py
        .cli(&[
            "program",
            "create",
            "examples/python-json-api",
            "--entrypoint",
            "app:app",
            "--volume",
            "persistent:api-db:/var/lib/api:16",
            "--seconds",
            "5",
        ])
        .ok();
    let program = created.last_line();
    let msg = py.store.get_message(&program).unwrap();
    let ex = py.executor(config(true));
    let post = |path: &str, body: &str| {
        let mut req = request(path);
        req.headers = vec![("Content-Type".into(), "application/json".into())];
        req.body = body.as_bytes().to_vec();
        Trigger::Http(req)
    };

    let v = ok_json(&run(&ex, &msg, http("GET /")).await);
    assert_eq!(v["service"], "json-api", "{v}");
    assert_eq!(v["items"], 0, "{v}");
    let o = run(
        &ex,
        &msg,
        post("POST /items", r#"{"name": "apple", "qty": 3}"#),
    )
    .await;
    assert_eq!(
        json_with(&o, 201),
        json!({"id": 1, "name": "apple", "qty": 3})
    );
    let o = run(&ex, &msg, post("POST /items", r#"{"name": "pear"}"#)).await;
    assert_eq!(
        json_with(&o, 201),
        json!({"id": 2, "name": "pear", "qty": 0})
    );
    let o = run(
        &ex,
        &msg,
        post("POST /items", r#"{"name": "fig", "qty": 12}"#),
    )
    .await;
    assert_eq!(json_with(&o, 201)["id"], 3);

    // Query parameters.
    let v = ok_json(&run(&ex, &msg, http("GET /items?min_qty=3")).await);
    let names: Vec<&str> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["apple", "fig"], "{v}");
    let v = ok_json(&run(&ex, &msg, http("GET /items?limit=1")).await);
    assert_eq!(v["items"].as_array().unwrap().len(), 1, "{v}");

    // Path parameters, updates, deletes.
    let o = run(&ex, &msg, http("GET /items/2")).await;
    assert_eq!(ok_json(&o), json!({"id": 2, "name": "pear", "qty": 0}));
    let o = run(&ex, &msg, post("PATCH /items/2", r#"{"qty": 9}"#)).await;
    assert_eq!(ok_json(&o), json!({"id": 2, "name": "pear", "qty": 9}));
    let o = run(&ex, &msg, http("DELETE /items/1")).await;
    assert_eq!(o.kind, OutcomeKind::Ok, "{}", show(&o));
    assert_eq!(o.status, Some(204), "{}", show(&o));
    assert!(o.body.is_empty(), "{}", show(&o));

    // Errors are JSON with the right status.
    for (trigger, status) in [
        (http("GET /items/1"), 404),
        (http("GET /nowhere"), 404),
        (http("PUT /items/2"), 405),
        (http("GET /items?min_qty=many"), 400),
        (post("POST /items", "not json"), 400),
        (post("POST /items", r#"{"name": "x", "qty": -1}"#), 400),
        (
            post("POST /items", r#"{"name": "x", "colour": "red"}"#),
            400,
        ),
    ] {
        let o = run(&ex, &msg, trigger).await;
        let v = json_with(&o, status);
        assert!(v["error"].is_string(), "{v}");
    }
    ex.shutdown().await;

    // The database is on the volume: another process, another instance, sees it.
    let volume = py.store.volume_dir(cli::DEFAULT_OWNER, "api-db").unwrap();
    assert!(volume.join("api.sqlite3").is_file());
    let out = py.cli(&["run", &program, "--request", "GET /items"]).ok();
    let json_start = out.stdout.find("\r\n\r\n").map(|i| i + 4).unwrap_or(0);
    let v: Value =
        serde_json::from_str(&out.stdout[json_start..]).unwrap_or_else(|e| panic!("{e}\n{out}"));
    assert_eq!(
        v,
        json!({"items": [
            {"id": 2, "name": "pear", "qty": 9},
            {"id": 3, "name": "fig", "qty": 12},
        ]}),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_job_example_exports_its_report() {
    let py = Py::new();
    let created = py
        .cli(&[
            "program",
            "create",
            "examples/python-report-job",
            "--entrypoint",
            "job:app",
            "--data",
            "examples/python-report-job/data",
            "--export-mount",
            "/out",
            "--seconds",
            "5",
        ])
        .ok();
    let program = created.last_line();
    let run_once = || {
        let out = py
            .cli(&["run", &program, "--request", "POST /run", "--json"])
            .ok();
        let v = out.json();
        assert_eq!(v["outcome"], "ok", "{out}");
        assert_eq!(v["status"], 200, "{out}");
        let export = v["export"]["file_hash"]
            .as_str()
            .unwrap_or_else(|| panic!("no export\n{out}"))
            .to_string();
        assert!(
            v["stdout"]
                .as_str()
                .unwrap()
                .contains("report-job: 13 rows from 2 files, total 517.40"),
            "{out}"
        );
        export
    };
    let export = run_once();

    // The export is a tar.gz in the store holding the two report files.
    let archive_path = py.store.verify_object(&export).unwrap();
    let unpacked = py.dir.path().join("export");
    std::fs::create_dir(&unpacked).unwrap();
    archive::unpack(
        &archive_path,
        ArchiveFormat::TarGz,
        &unpacked,
        "export",
        &UnpackLimits::default(),
    )
    .unwrap();
    let mut names: Vec<String> = std::fs::read_dir(&unpacked)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["report.json", "report.md"]);
    let report: Value =
        serde_json::from_slice(&std::fs::read(unpacked.join("report.json")).unwrap()).unwrap();
    assert_eq!(
        report,
        json!({
            "sources": ["sales-q1.csv", "sales-q2.csv"],
            "rows": 13,
            "units": 114,
            "amount": "517.40",
            "by_region": {
                "east": {"units": 53, "amount": "154.49"},
                "north": {"units": 33, "amount": "224.68"},
                "south": {"units": 28, "amount": "138.23"},
            },
            "by_product": {
                "gadget": {"units": 10, "amount": "195.90"},
                "gizmo": {"units": 14, "amount": "101.50"},
                "widget": {"units": 90, "amount": "220.00"},
            },
        })
    );
    let md = std::fs::read_to_string(unpacked.join("report.md")).unwrap();
    assert!(md.starts_with("# Sales report\n"), "{md}");
    assert!(md.contains("| north | 33 | 224.68 |\n"), "{md}");
    assert!(md.contains("| widget | 90 | 220.00 |\n"), "{md}");

    // Nothing in the report depends on the run: the same data gives the same archive.
    assert_eq!(run_once(), export);
}

mod aleph_sdk;
mod concurrency;
mod django;
mod guest_api;
mod internet;
mod pydantic;
mod reads;
mod reproducible;
mod snapshot;
mod threads;
mod wsgi;
