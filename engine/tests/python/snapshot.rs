//! Snapshots (`sandbox::snapshot`): instances restored from a program's snapshot answer like
//! cold ones, get their own randomness, never see the monotonic clock go backwards; a new
//! variable or code is a new snapshot; without `wasm-opt` instances start cold, with a reason.
//!
//! The tests take turns (one lock): the first one prepares the interpreter (rewrite, stack
//! discovery, Asyncify) into the shared module cache, the others reuse it.

use super::*;
use aleph_wasm::sandbox::snapshot::SnapshotEvent;

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
    let mut randoms = BTreeSet::new();
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
    }
    assert_eq!(restored(&ex), 3, "{:?}", events(&ex));
    assert_eq!(
        randoms.len(),
        3,
        "restored instances share random state: {randoms:?}"
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_wasm_opt_instances_start_cold_with_a_reason() {
    let py = Py::new();
    let mut config = snapshot_config();
    config.sandbox.snapshot.wasm_opt = Some(py.dir.path().join("no-such-wasm-opt"));
    let ex = py.executor(config);
    let msg = py.program(
        &py.code(&Path::new(REPO).join("examples/python-hello")),
        "main:app",
        json!({}),
    );
    let o = run(&ex, &msg, http("GET /?name=cold")).await;
    assert_eq!(o.kind, OutcomeKind::Ok, "{}", show(&o));
    assert_eq!(body(&o), "Hello, cold!\n", "{}", show(&o));
    let reasons = fallbacks(&ex);
    assert!(
        reasons.len() == 1
            && reasons[0].contains("wasm-opt")
            && reasons[0].contains("no-such-wasm-opt"),
        "{reasons:?}"
    );
    assert_eq!(restored(&ex), 0);
}
