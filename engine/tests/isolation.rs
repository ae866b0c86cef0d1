//! Node policies over a real server on a loopback port: instance isolation (`warm` against
//! `per-request`) and the engine's instance pool (`--pooling`), sized small enough here to be
//! filled.
//!
//! The Python app keeps a module-level counter and writes a file to an ephemeral volume; it
//! runs on the python-3.12 runtime, sharing the interpreter copy and compiled-module cache of
//! the other suites (`target/tmp/aleph-wasm-test-cache/`). The binary programs are small WAT
//! guests. Each test has its own store.

use crate::common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aleph_wasm::message::{self, Message, MessageType};
use aleph_wasm::sandbox::PoolingLimits;
use aleph_wasm::sandbox::snapshot::{SnapshotBuild, SnapshotEvent};
use aleph_wasm::volumes::archive::{self, PackFormat};
use aleph_wasm::{Isolation, Store, runtime};
use common::http::get;
use common::node::{Node, wait_running};
use common::serve::ServeProcess;
use serde_json::{Value, json};

/// The binary under test (for the `serve` command).
const BIN: &str = env!("CARGO_BIN_EXE_aleph-wasm");
/// What the suites keep between runs: the interpreter copy and compiled modules.
const CACHE: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/aleph-wasm-test-cache");
/// The owner of the messages the tests write.
const OWNER: &str = "0x00000000000000000000000000000000000000d7";

/// Counts the requests its instance has served, and says whether the scratch file a request
/// writes was already there (when it has a scratch volume).
const COUNTER_APP: &str = r#"
import os

served = 0

async def app(scope, receive, send):
    global served
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"].endswith("shutdown"):
                return
    served += 1
    seen = os.path.exists("/scratch/note")
    if os.path.isdir("/scratch"):
        with open("/scratch/note", "a") as f:
            f.write("x")
    body = '{"served": %d, "seen": %s}' % (served, "true" if seen else "false")
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body.encode()})
"#;

/// Answers "awake" at once.
const HELLO: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "Content-Type: text/plain\0d\0a\0d\0aawake\0a")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 34))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;

/// Sleeps `ms` milliseconds in the host (a WASI clock subscription), then answers "rested".
fn sleeper(ms: u64) -> String {
    format!(
        r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 1024) "Content-Type: text/plain\0d\0a\0d\0arested\0a")
  (func (export "_start")
    {sleep}
    (i32.store (i32.const 0) (i32.const 1024))
    (i32.store (i32.const 4) (i32.const 35))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#,
        sleep = common::wasi_sleep(ms)
    )
}

// --- Programs --------------------------------------------------------------------------------

/// Validates and stores a PROGRAM message with `content`.
fn put_program(store: &Store, content: Value) -> Message {
    let draft = message::build_inline(MessageType::Program, "ETH", OWNER, 2.0, content);
    let msg = message::parse(&serde_json::to_vec(&draft.to_json()).unwrap())
        .unwrap_or_else(|e| panic!("the test's program message is invalid: {e}"));
    store.put_message(&msg).unwrap();
    msg
}

/// A binary (CGI) program running the compiled `wat`.
fn binary_program(store: &Store, wat: &str) -> Message {
    let wasm = wat::parse_str(wat).unwrap_or_else(|e| panic!("guest does not compile: {e}"));
    let code_hash = store.put_object(&wasm).unwrap();
    let code = store
        .add_store_message(&code_hash, wasm.len() as u64, OWNER, 1.0, None)
        .unwrap();
    let runtime_ref = runtime::add_builtin(store, "wasi").unwrap();
    put_program(
        store,
        json!({
            "type": "vm-function", "address": OWNER, "time": 2.0, "allow_amend": false,
            "code": {"encoding": "plain", "entrypoint": "main.wasm", "ref": code.item_hash,
                     "interface": "binary", "use_latest": false},
            "runtime": {"ref": runtime_ref, "use_latest": false, "comment": "wasi"},
            "on": {"http": true, "persistent": false},
            "environment": {},
            "resources": {"vcpus": 1, "memory": 16, "seconds": 10},
            "variables": {}, "volumes": [],
        }),
    )
}

/// The counter app on python-3.12, with a 1 MiB ephemeral volume at `/scratch`.
fn counter_program(store: &Store, dir: &Path) -> Message {
    counter_program_with(
        store,
        dir,
        json!([{"ephemeral": true, "mount": "/scratch", "size_mib": 1}]),
    )
}

/// The counter app on python-3.12 with `volumes`.
fn counter_program_with(store: &Store, dir: &Path, volumes: Value) -> Message {
    counter_program_version(store, dir, volumes, json!({}))
}

/// The counter app on python-3.12 with `volumes` and `variables`.
fn counter_program_version(store: &Store, dir: &Path, volumes: Value, variables: Value) -> Message {
    let runtime_ref = common::python::python_runtime(store, Path::new(CACHE));
    let code_dir = dir.join("counter");
    std::fs::create_dir_all(&code_dir).unwrap();
    std::fs::write(code_dir.join("main.py"), COUNTER_APP).unwrap();
    let zip = dir.join("counter.zip");
    archive::pack(&code_dir, PackFormat::Zip, &zip).unwrap();
    let code = store.add_file(&zip, OWNER, 1.0, None).unwrap();
    put_program(
        store,
        json!({
            "type": "vm-function", "address": OWNER, "time": 2.0, "allow_amend": false,
            "code": {"encoding": "zip", "entrypoint": "main:app", "ref": code.item_hash,
                     "interface": "asgi", "use_latest": false},
            "runtime": {"ref": runtime_ref, "use_latest": false, "comment": "python-3.12"},
            "on": {"http": true, "persistent": false},
            "environment": {},
            "resources": {"vcpus": 1, "memory": 128, "seconds": 10},
            "variables": variables,
            "volumes": volumes,
        }),
    )
}

// --- Servers and requests --------------------------------------------------------------------

/// The value of the metric sample `name{labels}` in a Prometheus text exposition.
fn metric(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// The counter app's answer to three requests in a row, as (served, seen) pairs.
async fn three_requests(node: &Node, msg: &Message) -> Vec<(u64, bool)> {
    let mut answers = Vec::new();
    for _ in 0..3 {
        let v = node.json(&format!("/vm/{}/", msg.item_hash)).await;
        answers.push((
            v["served"].as_u64().unwrap_or_else(|| panic!("{v}")),
            v["seen"].as_bool().unwrap_or_else(|| panic!("{v}")),
        ));
    }
    answers
}

// --- Isolation -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_request_isolation_gives_every_request_a_fresh_instance() {
    let node = Node::new();
    let msg = counter_program(&node.store, node.dir.path());
    let node = node.start(|c, _| c.isolation = Isolation::PerRequest).await;
    // No request sees the counter or the scratch file of the one before.
    assert_eq!(
        three_requests(&node, &msg).await,
        vec![(1, false), (1, false), (1, false)]
    );
    let list = node.json("/about/executions/list").await;
    assert_eq!(list[&msg.item_hash]["requests"], 3, "{list}");
    assert_eq!(list[&msg.item_hash]["idle_instances"], 0, "{list}");
    let metrics = node.get("/metrics").await.status(200).body;
    assert_eq!(
        metric(&metrics, "aleph_wasm_cold_starts_total"),
        Some(3.0),
        "{metrics}"
    );
    let config = node.json("/about/config").await;
    assert_eq!(config["isolation"], "per-request", "{config}");
    assert_eq!(config["pooling"], Value::Null, "{config}");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_isolation_lets_requests_share_an_instance() {
    let node = Node::new();
    let msg = counter_program(&node.store, node.dir.path());
    let node = node.start(|c, _| c.isolation = Isolation::Warm).await;
    assert_eq!(
        three_requests(&node, &msg).await,
        vec![(1, false), (2, true), (3, true)]
    );
    let list = node.json("/about/executions/list").await;
    assert_eq!(list[&msg.item_hash]["idle_instances"], 1, "{list}");
    let config = node.json("/about/config").await;
    assert_eq!(config["isolation"], "warm", "{config}");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_request_instances_are_restored_from_the_snapshot_in_pool_slots() {
    let node = Node::new();
    // No writable mount: the program can be snapshotted.
    let msg = counter_program_with(&node.store, node.dir.path(), json!([]));
    let node = node
        .start(|c, _| {
            c.isolation = Isolation::PerRequest;
            c.snapshot.enabled = true;
            c.pooling = Some(PoolingLimits::new(4, 256));
        })
        .await;
    // Each restored instance starts from the snapshot taken at boot, not from the memory of
    // the instance before it in the slot.
    assert_eq!(
        three_requests(&node, &msg).await,
        vec![(1, false), (1, false), (1, false)]
    );
    let events = node
        .server
        .as_ref()
        .unwrap()
        .state()
        .executor()
        .sandbox()
        .snapshots()
        .events();
    let restored = events
        .iter()
        .filter(|e| matches!(e, SnapshotEvent::Restored { .. }))
        .count();
    assert_eq!(restored, 3, "{events:?}");
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, SnapshotEvent::Fallback { .. })),
        "{events:?}"
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_builds_snapshots_in_the_background_while_requests_start_cold() {
    let node = Node::new();
    // A version of the program no earlier run snapshotted (the module cache is shared).
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        .to_string();
    let msg = counter_program_version(
        &node.store,
        node.dir.path(),
        json!([{"ephemeral": true, "mount": "/scratch", "size_mib": 1}]),
        json!({"NONCE": nonce}),
    );
    let node = node
        .start(|c, _| {
            c.isolation = Isolation::PerRequest;
            c.snapshot.enabled = true;
            c.snapshot.build = SnapshotBuild::Background;
        })
        .await;
    let path = format!("/vm/{}/", msg.item_hash);
    // The first request does not wait for the build: it starts cold.
    let v = node.json(&path).await;
    assert_eq!(v["served"], 1, "{v}");
    let restored = |text: &str| metric(text, "aleph_wasm_restored_starts_total").unwrap_or(0.0);
    let metrics = node.get("/metrics").await.status(200).body;
    assert_eq!(restored(&metrics), 0.0, "{metrics}");
    // Later requests are restored once the snapshot is built.
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let v = node.json(&path).await;
        assert_eq!(v["served"], 1, "{v}");
        let metrics = node.get("/metrics").await.status(200).body;
        if restored(&metrics) >= 1.0 {
            break;
        }
        if Instant::now() >= deadline {
            let events = node
                .server
                .as_ref()
                .unwrap()
                .state()
                .executor()
                .sandbox()
                .snapshots()
                .events();
            panic!("no request was restored from a snapshot: {events:?}\n{metrics}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    node.shutdown().await;
}

// --- The instance pool -----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_instances_serve_python_and_binary_programs() {
    let node = Node::new();
    let counter = counter_program(&node.store, node.dir.path());
    let hello = binary_program(&node.store, HELLO);
    let node = node
        .start(|c, _| {
            c.isolation = Isolation::PerRequest;
            c.pooling = Some(PoolingLimits::new(6, 256));
        })
        .await;
    assert_eq!(
        three_requests(&node, &counter).await,
        vec![(1, false), (1, false), (1, false)]
    );
    for _ in 0..5 {
        node.get(&format!("/vm/{}/", hello.item_hash))
            .await
            .status(200)
            .has("awake");
    }
    // Each instance is retired after its answer; its slot comes back once it has ended.
    let started = Instant::now();
    loop {
        let usage = node.json("/about/usage/system").await;
        if usage["instance_pool"] == json!({"slots": 4, "held": 0}) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the instances were never retired: {usage}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let config = node.json("/about/config").await;
    assert_eq!(config["pooling"]["instances"], 6, "{config}");
    assert_eq!(
        config["pooling"]["max_memory_bytes"],
        256u64 << 20,
        "{config}"
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_instance_pool_answers_503_naming_the_pool() {
    let node = Node::new();
    let slow = binary_program(&node.store, &sleeper(3000));
    let fast = binary_program(&node.store, HELLO);
    // Three slots: one for executions, the rest kept for snapshot builds.
    let node = node
        .start(|c, _| c.pooling = Some(PoolingLimits::new(3, 64)))
        .await;
    let slow_url = node.url(&format!("/vm/{}/", slow.item_hash));
    let first = tokio::spawn(async move { get(&slow_url).await });
    wait_running(&node, 1).await;
    // The execution counts as running from its start; its instance takes the slot once its
    // module is loaded (compiled first, on a fresh module cache).
    let started = Instant::now();
    loop {
        let usage = node.json("/about/usage/system").await;
        if usage["instance_pool"] == json!({"slots": 1, "held": 1}) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the running execution never held the pool's slot: {usage}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let full = node
        .get(&format!("/vm/{}/", fast.item_hash))
        .await
        .status(503)
        .has("instance pool is full");
    assert_eq!(full.header("retry-after"), Some("1"), "{full}");
    let metrics = node.get("/metrics").await.status(200).body;
    assert_eq!(
        metric(&metrics, "aleph_wasm_instance_pool_held"),
        Some(1.0),
        "{metrics}"
    );
    first.await.unwrap().status(200).has("rested");
    // The slot came back with the instance.
    node.get(&format!("/vm/{}/", fast.item_hash))
        .await
        .status(200)
        .has("awake");
    let metrics = node.get("/metrics").await.status(200).body;
    assert_eq!(
        metric(
            &metrics,
            "aleph_wasm_refused_requests_total{reason=\"instance_pool\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_warm_instance_gives_its_pool_slot_to_another_program() {
    let node = Node::new();
    let counter = counter_program(&node.store, node.dir.path());
    let hello = binary_program(&node.store, HELLO);
    let node = node
        .start(|c, _| c.pooling = Some(PoolingLimits::new(3, 256)))
        .await;
    node.get(&format!("/vm/{}/", counter.item_hash))
        .await
        .status(200);
    let list = node.json("/about/executions/list").await;
    assert_eq!(list[&counter.item_hash]["idle_instances"], 1, "{list}");
    // The idle instance holds the only slot: it is retired to make room.
    node.get(&format!("/vm/{}/", hello.item_hash))
        .await
        .status(200)
        .has("awake");
    let list = node.json("/about/executions/list").await;
    assert_eq!(list[&counter.item_hash]["idle_instances"], 0, "{list}");
    node.shutdown().await;
}

// --- The command line ------------------------------------------------------------------------

#[test]
fn serve_refuses_an_unknown_isolation() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(BIN)
        .arg("--store")
        .arg(dir.path().join("store"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--isolation",
            "sometimes",
        ])
        .env_remove("ALEPH_WASM_ISOLATION")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("per-request"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_takes_isolation_and_pooling_from_its_options() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(BIN);
    cmd.arg("--store")
        .arg(dir.path().join("store"))
        .arg("--module-cache")
        .arg(PathBuf::from(CACHE).join("modules"))
        .args(["serve", "--listen", "127.0.0.1:0", "--max-concurrent", "5"])
        .args(["--memory-budget", "512", "--pooling"])
        .env("ALEPH_WASM_ISOLATION", "per-request");
    let serve = ServeProcess::start(cmd).await;
    let config = get(&format!("{}/about/config", serve.base))
        .await
        .status(200)
        .json();
    let out = serve.stop().await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(config["isolation"], "per-request", "{config}");
    // One slot per concurrent execution, as many for idle instances, two for snapshot builds;
    // memories as large as the memory budget.
    assert_eq!(config["pooling"]["instances"], 12, "{config}");
    assert_eq!(
        config["pooling"]["max_memory_bytes"],
        512u64 << 20,
        "{config}"
    );
}
