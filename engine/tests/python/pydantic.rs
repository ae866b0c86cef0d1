//! The python-3.11-pydantic runtime: an interpreter with pydantic-core compiled in, built from
//! registry sources by `runtimes/build/python-3.11-pydantic/build.sh` the first time the suite
//! needs it (then kept, by hash, in the suite's cache) and accepted only if its sha256 is the one
//! the runtime's manifest pins. It runs the FastAPI example (`examples/python-fastapi`: FastAPI
//! with pydantic v2 and `aleph-message`, vendored by pip at test time, under `AlephApp`)
//! unchanged, cold and restored from a snapshot.

use super::*;
use aleph_wasm::sandbox::snapshot::SnapshotEvent;

/// The runtime's source manifest (for the interpreter's sha256).
const PYDANTIC_RUNTIME_JSON: &str =
    include_str!("../../../runtimes/python-3.11-pydantic/runtime.json");
/// The script that builds the interpreter from registry sources.
const BUILD_SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../runtimes/build/python-3.11-pydantic/build.sh"
);
/// The FastAPI example, without its packages.
const FASTAPI_EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/python-fastapi");
/// FastAPI and what it needs besides pydantic, pinned (the example's requirements.txt).
const FASTAPI_WHEELS: [&str; 6] = [
    "fastapi==0.125.0",
    "starlette==0.50.0",
    "anyio==4.16.0",
    "idna==3.21",
    "annotated-doc==0.0.7",
    "aleph-message==1.7.0",
];

/// Stores python-3.11-pydantic in `store`, building its interpreter once per cache; returns
/// the runtime's ref.
pub(super) fn pydantic_runtime(store: &Store) -> String {
    static ONCE: Mutex<()> = Mutex::new(());
    let _once = lock(&ONCE);
    let manifest: Value = serde_json::from_str(PYDANTIC_RUNTIME_JSON).unwrap();
    let sha = manifest["interpreter"]["sha256"]
        .as_str()
        .unwrap()
        .to_string();
    let cached = interpreter_cache().join(&sha);
    let work = cache_dir().join("build-python-3.11-pydantic");
    let built = work.join("out").join("python.wasm");
    // A build kept from an earlier pin (the build script changed since) is built again; it is
    // read only when no copy by hash is kept.
    let built_is_pinned = || {
        std::fs::read(&built)
            .map(|bytes| hex::encode(Sha256::digest(&bytes)) == sha)
            .unwrap_or(false)
    };
    if !cached.is_file() && !built_is_pinned() {
        let log = cache_dir().join("build-python-3.11-pydantic.log");
        let started = Instant::now();
        let status = Command::new("bash")
            .arg(BUILD_SCRIPT)
            .env("WORK", &work)
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(log.with_extension("err")).unwrap())
            .status()
            .unwrap_or_else(|e| panic!("cannot run {BUILD_SCRIPT}: {e}"));
        let tail = |path: &Path| {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(30)..].join("\n")
        };
        assert!(
            status.success(),
            "building the interpreter failed ({status})\n--- stdout ---\n{}\n--- stderr ---\n{}",
            tail(&log),
            tail(&log.with_extension("err"))
        );
        eprintln!(
            "built the python-3.11-pydantic interpreter in {:?}",
            started.elapsed()
        );
    }
    let file = if cached.is_file() { &cached } else { &built };
    // Accepted only with the pinned hash: a build that is not reproducible fails here.
    let reference = runtime::fetch(store, "python-3.11-pydantic", Some(file), false)
        .unwrap_or_else(|e| panic!("cannot obtain the python-3.11-pydantic interpreter: {e}"));
    if !cached.is_file() {
        keep_copy(&store.verify_object(&sha).unwrap(), &cached);
    }
    reference
}

/// The example with its wheels unpacked into `packages/`, as a stored code archive.
fn fastapi_code(py: &Py) -> String {
    let code = py.dir.path().join("fastapi-code");
    std::fs::create_dir_all(&code).unwrap();
    std::fs::copy(
        Path::new(FASTAPI_EXAMPLE).join("main.py"),
        code.join("main.py"),
    )
    .unwrap();
    let requirements =
        std::fs::read_to_string(Path::new(FASTAPI_EXAMPLE).join("requirements.txt")).unwrap();
    let pinned: Vec<&str> = requirements
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(pinned, FASTAPI_WHEELS, "the example's requirements.txt");
    for wheel in pure_wheels("fastapi-pydantic2", &FASTAPI_WHEELS) {
        let file = std::fs::File::open(&wheel).unwrap();
        zip::ZipArchive::new(file)
            .and_then(|mut z| z.extract(code.join("packages")))
            .unwrap_or_else(|e| panic!("{}: {e}", wheel.display()));
    }
    py.code(&code)
}

fn post_json(line: &str, body: &Value) -> Trigger {
    let mut req = request(line);
    req.headers = vec![("Content-Type".into(), "application/json".into())];
    req.body = serde_json::to_vec(body).unwrap();
    Trigger::Http(req)
}

/// An inline Aleph POST message as the API serves it: `content`, and `item_content` whose sha256
/// is the `item_hash`.
fn aleph_post(text: &str) -> Value {
    let content = json!({
        "address": OWNER, "time": 1.0, "type": "note", "content": {"text": text},
    });
    let item_content = content.to_string();
    json!({
        "chain": "ETH", "sender": OWNER, "type": "POST", "channel": "TEST",
        "item_type": "inline", "item_hash": hex::encode(Sha256::digest(item_content.as_bytes())),
        "item_content": item_content, "content": content, "time": 1.0, "signature": "0x00",
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fastapi_with_pydantic_v2_validates_and_serves_unchanged() {
    let py = Py::with_runtime(pydantic_runtime);
    let code = fastapi_code(&py);
    let msg = py.program(&code, "main:app", json!({"resources": {"memory": 256}}));
    let ex = py.executor(config(true));

    // pydantic 2 on its compiled core, in CPython 3.11.
    let v = ok_json(&run(&ex, &msg, http("GET /versions")).await);
    assert_eq!(
        v,
        json!({"python": "3.11.2", "pydantic": "2.14.4", "pydantic_core": "2.50.5"})
    );

    // An `async def` endpoint: the body validated (and tidied by a field validator).
    let item = json!({"name": "  pear   williams ", "price": 1.25, "tags": ["fruit"]});
    let created = json_with(&run(&ex, &msg, post_json("POST /items", &item)).await, 201);
    assert_eq!(
        created,
        json!({"name": "pear williams", "price": 1.25, "tags": ["fruit"], "id": 2})
    );

    // A bad body: 422, with pydantic-core's error types and locations.
    let bad = json!({"name": "", "price": -1, "tags": "x"});
    let errors = json_with(&run(&ex, &msg, post_json("POST /items", &bad)).await, 422);
    let mut found: Vec<(String, Value)> = errors["detail"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["type"].as_str().unwrap().to_string(), e["loc"].clone()))
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        found,
        vec![
            ("greater_than".to_string(), json!(["body", "price"])),
            ("list_type".to_string(), json!(["body", "tags"])),
            ("string_too_short".to_string(), json!(["body", "name"])),
        ]
    );

    // `def` endpoints: path and query parameters validated; the warm instance kept the item.
    assert_eq!(
        ok_json(&run(&ex, &msg, http("GET /items/2")).await)["name"],
        "pear williams"
    );
    let o = run(&ex, &msg, http("GET /items/nine")).await;
    assert_eq!(o.status, Some(422), "{}", show(&o));
    let o = run(&ex, &msg, http("GET /items/99")).await;
    assert_eq!(o.status, Some(404), "{}", show(&o));
    let tagged = ok_json(&run(&ex, &msg, http("GET /items?tag=fruit")).await);
    assert_eq!(tagged.as_array().unwrap().len(), 2, "{tagged}");

    // The OpenAPI schema, generated from the models by pydantic's JSON schema.
    let schema = ok_json(&run(&ex, &msg, http("GET /openapi.json")).await);
    assert_eq!(
        schema["components"]["schemas"]["ItemIn"]["properties"]["price"]["exclusiveMinimum"],
        json!(0.0)
    );

    // aleph-message's models (pydantic v2) check an Aleph message and its item hash.
    let message = aleph_post("hello");
    let v = ok_json(&run(&ex, &msg, post_json("POST /messages", &message)).await);
    assert_eq!(v["type"], "POST");
    assert_eq!(v["class"], "PostMessage");
    assert_eq!(v["item_hash"], message["item_hash"]);
    let mut forged = message.clone();
    forged["item_content"] = json!(
        message["item_content"]
            .as_str()
            .unwrap()
            .replace("hello", "HELLO")
    );
    let o = run(&ex, &msg, post_json("POST /messages", &forged)).await;
    assert_eq!(o.status, Some(422), "{}", show(&o));

    // The app is an `AlephApp`: a message event reaches its handler, which parses it too.
    let event = aleph_post("an event");
    let o = run(&ex, &msg, Trigger::Message(Box::new(event.clone()))).await;
    assert_eq!(o.kind, OutcomeKind::Ok, "{}", show(&o));
    assert_eq!(
        ok_json(&run(&ex, &msg, http("GET /events")).await),
        json!([{"item_hash": event["item_hash"], "type": "POST"}])
    );
    ex.shutdown().await;
}

/// The interpreter prepares for snapshots like python-3.12's (its pause in the read of stdin is
/// more than wasmtime's default 20 frames deep), and restored instances serve the FastAPI app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fastapi_on_pydantic_v2_restores_from_a_snapshot() {
    let py = Py::with_runtime(pydantic_runtime);
    let code = fastapi_code(&py);
    let msg = py.program(&code, "main:app", json!({"resources": {"memory": 256}}));
    let mut snapshots = config(false);
    snapshots.sandbox.snapshot.enabled = true;
    let ex = py.executor(snapshots);
    let item = json!({"name": "plum", "price": 2.0});
    for _ in 0..2 {
        let created = json_with(&run(&ex, &msg, post_json("POST /items", &item)).await, 201);
        // Each instance starts from the snapshot's state: the same next id.
        assert_eq!(created["id"], 2, "{created}");
    }
    let events = ex.sandbox().snapshots().events();
    let restored = events
        .iter()
        .filter(|e| matches!(e, SnapshotEvent::Restored { .. }))
        .count();
    assert_eq!(restored, 2, "{events:?}");
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, SnapshotEvent::Fallback { .. })),
        "{events:?}"
    );
}

/// The app that stats paths under no preopen and keeps notes in a SQLite file database.
const PATHS_APP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/paths");

/// A path under no preopen is missing (`FileNotFoundError`, ENOENT) on both runtimes, as in
/// later wasi-libc; python-3.11-pydantic's wasi-libc said "capabilities insufficient"
/// (`PermissionError`) until its build rebuilt the path functions. So `pathlib`'s `exists()`
/// answers instead of raising, and SQLite (which `lstat()`s every parent of a database's path,
/// and `/var` of `/var/lib/notes` is under no preopen) opens a file database in a volume: the
/// notes persist across instances, in the volume's host directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_under_no_preopen_are_missing_and_sqlite_keeps_a_file_database_in_a_volume() {
    for (name, py) in [
        ("python-3.11-pydantic", Py::with_runtime(pydantic_runtime)),
        ("python-3.12", Py::new()),
    ] {
        let code = py.code(Path::new(PATHS_APP));
        let msg = py.program(&code, "app:app", json!({"volumes": state_volume()}));
        let mut notes = Vec::new();
        for note in ["first", "second"] {
            // A new executor each time: the second note is read by another instance.
            let ex = py.executor(config(false));
            let v = ok_json(&run(&ex, &msg, http(&format!("GET /?{note}"))).await);
            ex.shutdown().await;
            notes.push(note);
            assert_eq!(
                v,
                json!({
                    "/var": "FileNotFoundError",
                    "/etc/hosts": "FileNotFoundError",
                    "/state/missing": "FileNotFoundError",
                    "exists": [false, true],
                    "notes": notes,
                }),
                "{name}"
            );
        }
        let db = std::fs::read(py.volume("state").join("notes.db")).unwrap();
        assert!(db.starts_with(b"SQLite format 3\0"), "{name}: notes.db");
    }
}
