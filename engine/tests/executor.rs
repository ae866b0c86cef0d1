//! Library-level tests of the executor: concurrency limits (`vcpus`, one execution at a time
//! on a persistent volume) and deadlines that fire while the guest is blocked in a host call.

use crate::common;

use aleph_wasm::message::{self, MessageType};
use aleph_wasm::{Executor, ExecutorConfig, OutcomeKind, Store, Trigger, runtime};

/// A guest that creates `/state/busy` exclusively, sleeps for `ms` milliseconds, removes the
/// file and exits 0; it exits 7 when the file already exists, i.e. when another execution of
/// the same program is running at the same time.
fn exclusive_sleeper(ms: u64) -> String {
    format!(
        r#"(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_unlink_file"
    (func $unlink (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $close (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "busy")
  (func (export "_start")
    ;; O_CREAT | O_EXCL on fd 3 (/state)
    (if (call $path_open (i32.const 3) (i32.const 0) (i32.const 16) (i32.const 4)
          (i32.const 5) (i64.const 64) (i64.const 0) (i32.const 0) (i32.const 8))
      (then (call $exit (i32.const 7))))
    (drop (call $close (i32.load (i32.const 8))))
    {sleep}
    (drop (call $unlink (i32.const 3) (i32.const 16) (i32.const 4)))))"#,
        sleep = common::wasi_sleep(ms)
    )
}

/// A guest that sleeps for `ms` milliseconds and exits 0.
fn sleeper(ms: u64) -> String {
    format!(
        r#"(module
  (import "wasi_snapshot_preview1" "poll_oneoff"
    (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    {sleep}))"#,
        sleep = common::wasi_sleep(ms)
    )
}

/// The persistent volume the exclusive sleeper uses.
fn lock_volume() -> serde_json::Value {
    serde_json::json!([{"name": "lock", "mount": "/state", "persistence": "host", "size_mib": 1}])
}

/// Stores `code` (WebAssembly text as plain code) as a binary program with `volumes` and
/// returns its message.
fn program(
    store: &Store,
    code: &str,
    vcpus: u32,
    seconds: u64,
    volumes: serde_json::Value,
) -> message::Message {
    let code_hash = store.put_object(code.as_bytes()).unwrap();
    let owner = "0x00000000000000000000000000000000000000aa";
    let code_msg = store
        .add_store_message(&code_hash, code.len() as u64, owner, 1.0, None)
        .unwrap();
    let runtime_ref = runtime::add_builtin(store, "wasi").unwrap();
    let content = serde_json::json!({
        "type": "vm-function",
        "address": owner,
        "time": 2.0,
        "allow_amend": false,
        "code": {"encoding": "plain", "entrypoint": "main", "ref": code_msg.item_hash},
        "runtime": {"ref": runtime_ref, "use_latest": false, "comment": "wasi"},
        "on": {"http": false},
        "environment": {},
        "resources": {"vcpus": vcpus, "memory": 16, "seconds": seconds},
        "volumes": volumes,
    });
    let msg = message::build_inline(MessageType::Program, "ETH", owner, 2.0, content);
    store.put_message(&msg).unwrap();
    msg
}

/// Two executions of one program at once: `code` with `volumes` on `vcpus`.
async fn run_pair(
    code: &str,
    vcpus: u32,
    volumes: serde_json::Value,
) -> (aleph_wasm::Outcome, aleph_wasm::Outcome) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let msg = program(&store, code, vcpus, 5, volumes);
    let executor = Executor::new(store, ExecutorConfig::default()).unwrap();
    tokio::join!(
        executor.execute(&msg, &Trigger::Job),
        executor.execute(&msg, &Trigger::Job)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_vcpu_runs_executions_of_a_program_one_at_a_time() {
    let started = std::time::Instant::now();
    let (a, b) = run_pair(&sleeper(1500), 1, serde_json::json!([])).await;
    assert_eq!(a.kind, OutcomeKind::Ok, "{:?}", a.error);
    assert_eq!(b.kind, OutcomeKind::Ok, "{:?}", b.error);
    // One after the other: at least two sleeps.
    assert!(
        started.elapsed().as_millis() >= 3000,
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_vcpus_let_executions_overlap() {
    // The same pair with two slots overlaps: both sleeps end before two sleeps' time.
    let started = std::time::Instant::now();
    let (a, b) = run_pair(&sleeper(1500), 2, serde_json::json!([])).await;
    assert_eq!(a.kind, OutcomeKind::Ok, "{:?}", a.error);
    assert_eq!(b.kind, OutcomeKind::Ok, "{:?}", b.error);
    assert!(
        started.elapsed().as_millis() < 2900,
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executions_sharing_a_persistent_volume_never_overlap_whatever_the_vcpus() {
    // The guest exits 7 when it finds the other execution's mark in the volume.
    for vcpus in [1, 2] {
        let (a, b) = run_pair(&exclusive_sleeper(1000), vcpus, lock_volume()).await;
        assert_eq!(a.kind, OutcomeKind::Ok, "vcpus {vcpus}: {:?}", a.error);
        assert_eq!(b.kind, OutcomeKind::Ok, "vcpus {vcpus}: {:?}", b.error);
        assert_eq!(
            [a.exit_code, b.exit_code],
            [Some(0), Some(0)],
            "vcpus {vcpus}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_fires_while_the_guest_sleeps_in_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let msg = program(&store, &exclusive_sleeper(60_000), 1, 1, lock_volume());
    let executor = Executor::new(store, ExecutorConfig::default()).unwrap();
    let outcome = executor.execute(&msg, &Trigger::Job).await;
    assert_eq!(outcome.kind, OutcomeKind::Timeout, "{:?}", outcome.error);
    assert!(outcome.elapsed_ms < 30_000, "{}", outcome.elapsed_ms);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_a_persistent_volume_holds_none_of_the_node_memory() {
    // A node with room for two 16 MiB instances. A holds the owner's volume; B, another program
    // of the same owner, waits for it. C, a third program, must still find room: a boot takes
    // its memory only once it holds its volumes.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let a = program(&store, &exclusive_sleeper(3000), 1, 10, lock_volume());
    let b = program(&store, &exclusive_sleeper(100), 1, 10, lock_volume());
    let c = program(&store, &sleeper(100), 1, 10, serde_json::json!([]));
    let config = ExecutorConfig {
        memory_budget_mib: Some(32),
        ..ExecutorConfig::default()
    };
    let executor = std::sync::Arc::new(Executor::new(store, config).unwrap());
    let started = std::time::Instant::now();
    let first = tokio::spawn({
        let executor = executor.clone();
        async move { executor.execute(&a, &Trigger::Job).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let second = tokio::spawn({
        let executor = executor.clone();
        async move { executor.execute(&b, &Trigger::Job).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let third = executor.execute(&c, &Trigger::Job).await;
    assert_eq!(
        (third.kind, third.refused.is_some()),
        (OutcomeKind::Ok, false),
        "{:?}",
        third.error
    );
    assert!(
        started.elapsed().as_millis() < 3000,
        "the third program waited for the volume's holder: {:?}",
        started.elapsed()
    );
    for outcome in [first.await.unwrap(), second.await.unwrap()] {
        assert_eq!(outcome.kind, OutcomeKind::Ok, "{:?}", outcome.error);
        assert_eq!(outcome.exit_code, Some(0));
    }
}
