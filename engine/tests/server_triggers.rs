//! The node's triggers end to end, on real servers on loopback ports (port 0) with a real HTTP
//! client: persistent programs (started with the node, restarted with backoff, replaced on an
//! amend, stopped by the operator), cron schedules driven by a manual clock, and message
//! subscriptions (messages posted to the node, stored by another process, or stored while the
//! node was down).
//!
//! Binary programs are WebAssembly-text guests that append what they were given (a line, or
//! the message on their stdin) to a file in a persistent host volume; the tests read those
//! files in the store's volume directory. One Python app covers the ASGI side (a pinned
//! instance, `aleph.cron` and `aleph.message` events, a crash), sharing the interpreter copy
//! and compiled-module cache of the other suites (`target/tmp/aleph-wasm-test-cache/`).

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aleph_wasm::message::{self, Message, MessageType};
use aleph_wasm::server::triggers::{BackoffPolicy, ManualClock, TriggerConfig};
use aleph_wasm::server::{self, Server, ServerConfig};
use aleph_wasm::{Store, runtime};
use common::TestDir;
use serde_json::{Value, json};

/// What the suites keep between runs: the interpreter copy and compiled modules.
const CACHE: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/aleph-wasm-test-cache");
/// The python-3.12 runtime's source manifest (for the interpreter's sha256).
/// The owner of the messages the tests write.
const OWNER: &str = "0x00000000000000000000000000000000000000c7";
/// The control token.
const TOKEN: &str = "trigger-token";
/// 2030-01-01T00:00:30Z: half a minute before a whole minute.
const T0: f64 = 1_893_456_030.0;
/// How long any awaited effect may take.
const PATIENCE: Duration = Duration::from_secs(60);

// --- Guests ----------------------------------------------------------------------------------

/// A WAT string literal for `text`.
fn wat_str(text: &str) -> String {
    text.bytes().map(|b| format!("\\{b:02x}")).collect()
}

/// A WASI job that appends, to `file` in the volume mounted first (fd 3): its stdin (when
/// `copy_stdin`), then `line`; then sleeps `sleep_ms` and exits with `code`.
fn appender(file: &str, line: &str, copy_stdin: bool, sleep_ms: u64, code: i32) -> String {
    format!(
        r#"(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $fd_close (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 2)
  (data (i32.const 1024) "{file_lit}")
  (data (i32.const 2048) "{line_lit}")
  (func $write (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "_start")
    (local $fd i32) (local $n i32)
    ;; O_CREAT, FDFLAGS_APPEND, fd_read + fd_write rights
    (if (call $path_open (i32.const 3) (i32.const 1) (i32.const 1024) (i32.const {file_len})
          (i32.const 1) (i64.const 66) (i64.const 66) (i32.const 1) (i32.const 12))
      (then (call $exit (i32.const 90))))
    (local.set $fd (i32.load (i32.const 12)))
    (if (i32.const {copy})
      (then
        (block $done
          (loop $more
            (i32.store (i32.const 16) (i32.const 4096))
            (i32.store (i32.const 20) (i32.const 60000))
            (br_if $done (call $fd_read (i32.const 0) (i32.const 16) (i32.const 1) (i32.const 24)))
            (local.set $n (i32.load (i32.const 24)))
            (br_if $done (i32.eqz (local.get $n)))
            (call $write (local.get $fd) (i32.const 4096) (local.get $n))
            (br $more)))))
    (call $write (local.get $fd) (i32.const 2048) (i32.const {line_len}))
    (drop (call $fd_close (local.get $fd)))
    (if (i64.ne (i64.const {ns}) (i64.const 0))
      (then
        (i64.store (i32.const 64) (i64.const 0))
        (i32.store8 (i32.const 72) (i32.const 0))
        (i32.store (i32.const 80) (i32.const 1))
        (i64.store (i32.const 88) (i64.const {ns}))
        (i64.store (i32.const 96) (i64.const 0))
        (i32.store16 (i32.const 104) (i32.const 0))
        (drop (call $poll (i32.const 64) (i32.const 256) (i32.const 1) (i32.const 512)))))
    (call $exit (i32.const {code}))))"#,
        file_lit = wat_str(file),
        file_len = file.len(),
        line_lit = wat_str(line),
        line_len = line.len(),
        copy = i32::from(copy_stdin),
        ns = sleep_ms * 1_000_000,
    )
}

/// The Python app of the ASGI test: counts its boots (lifespan startup), records cron times
/// and message item hashes in its volume, reports the counts at any path, and dies at /crash.
const PYTHON_APP: &str = r#"
import json
import os

DATA = "/data"


def _append(name, line):
    with open(os.path.join(DATA, name), "a") as f:
        f.write(line + "\n")


def _lines(name):
    try:
        with open(os.path.join(DATA, name)) as f:
            return f.read().split()
    except FileNotFoundError:
        return []


async def app(scope, receive, send):
    kind = scope["type"]
    if kind == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                _append("boots", "boot")
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    elif kind == "aleph.cron":
        _append("cron", repr(scope["time"]))
    elif kind == "aleph.message":
        _append("messages", scope["body"]["item_hash"])
    elif kind == "http":
        if scope["path"] == "/crash":
            os._exit(3)
        body = json.dumps({n: _lines(n) for n in ("boots", "cron", "messages")}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})
"#;

// --- Messages --------------------------------------------------------------------------------

/// Validates and stores a PROGRAM message with `content`.
fn put_program(store: &Store, content: Value) -> Message {
    let draft = message::build_inline(MessageType::Program, "ETH", OWNER, 2.0, content);
    let msg = message::parse(&serde_json::to_vec(&draft.to_json()).unwrap())
        .unwrap_or_else(|e| panic!("the test's program message is invalid: {e}"));
    store.put_message(&msg).unwrap();
    msg
}

/// Stores `bytes` and a STORE message for them; returns the message's item hash.
fn put_code(store: &Store, bytes: &[u8]) -> String {
    let hash = store.put_object(bytes).unwrap();
    store
        .add_store_message(&hash, bytes.len() as u64, OWNER, 1.0)
        .unwrap()
        .item_hash
}

/// The content of a binary program running the compiled `wat`, with the triggers `on` and a
/// persistent host volume `volume` at `/data`.
fn binary_content(store: &Store, wat: &str, on: Value, volume: &str, use_latest: bool) -> Value {
    let wasm = wat::parse_str(wat).unwrap_or_else(|e| panic!("guest does not compile: {e}"));
    let code = put_code(store, &wasm);
    let runtime_ref = runtime::add_builtin(store, "wasi").unwrap();
    json!({
        "type": "vm-function",
        "address": OWNER,
        "time": 2.0,
        "allow_amend": true,
        "code": {"encoding": "plain", "entrypoint": "main.wasm", "ref": code,
                 "interface": "binary", "use_latest": use_latest},
        "runtime": {"ref": runtime_ref, "use_latest": false, "comment": "wasi"},
        "on": on,
        "environment": {},
        "resources": {"vcpus": 1, "memory": 16, "seconds": 10},
        "variables": {},
        "volumes": [{"name": volume, "mount": "/data", "persistence": "host", "size_mib": 1}],
    })
}

/// A POST message of `kind` (its `content.type`) with a unique `n`.
fn post_message(kind: &str, n: u32) -> Message {
    message::build_inline(
        MessageType::Post,
        "ETH",
        OWNER,
        10.0 + f64::from(n),
        json!({"type": kind, "address": OWNER, "time": 10.0 + f64::from(n), "content": {"n": n}}),
    )
}

/// The lines of `file` in the persistent volume `volume` (none when it does not exist).
fn volume_lines(store: &Store, volume: &str, file: &str) -> Vec<String> {
    let path = store.volume_dir(OWNER, volume).unwrap().join(file);
    match std::fs::read_to_string(&path) {
        Ok(text) => text.lines().map(str::to_string).collect(),
        Err(_) => Vec::new(),
    }
}

/// The item hashes of the messages a copying appender wrote (one JSON message a line).
fn delivered(store: &Store, volume: &str) -> Vec<String> {
    volume_lines(store, volume, "got")
        .iter()
        .map(|line| {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("a delivered line is not JSON ({e}): {line}"));
            v["item_hash"].as_str().unwrap().to_string()
        })
        .collect()
}

// --- The node --------------------------------------------------------------------------------

/// Starts a node on `dir`'s store with a manual clock at [`T0`], fast store polling and
/// restart backoff, control routes enabled, and `tune` applied.
async fn start(dir: &TestDir, clock: &ManualClock, tune: impl FnOnce(&mut ServerConfig)) -> Server {
    let token = dir.write("token", TOKEN);
    let mut config = ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        module_cache: Some(PathBuf::from(CACHE).join("modules")),
        token_file: Some(token),
        triggers: TriggerConfig {
            clock: Arc::new(clock.clone()),
            store_poll: Duration::from_millis(50),
            backoff: BackoffPolicy {
                initial: Duration::from_millis(100),
                max: Duration::from_millis(400),
                stable: Duration::from_secs(60),
            },
            delivery_attempts: 3,
            retry_delay: Duration::from_millis(50),
        },
        ..ServerConfig::default()
    };
    tune(&mut config);
    let store = Store::open(dir.store()).unwrap();
    server::start(config, store)
        .await
        .unwrap_or_else(|e| panic!("the server does not start: {e:#}"))
}

async fn stop(server: Server) {
    tokio::time::timeout(PATIENCE, server.shutdown())
        .await
        .expect("the shutdown hangs")
        .unwrap();
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(PATIENCE)
        .build()
        .unwrap()
}

fn url(server: &Server, path: &str) -> String {
    format!("http://{}{path}", server.local_addr())
}

/// GET `path`; the status and the body.
async fn get(server: &Server, path: &str) -> (u16, String) {
    let r = client().get(url(server, path)).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// POST `body` (JSON) to `path`; the status and the body.
async fn post(server: &Server, path: &str, body: &Value, token: bool) -> (u16, String) {
    let mut request = client()
        .post(url(server, path))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(body).unwrap());
    if token {
        request = request.bearer_auth(TOKEN);
    }
    let r = request.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Posts a message to the node, expecting it to be taken.
async fn post_msg(server: &Server, msg: &Message) {
    let (status, body) = post(server, "/api/v0/messages", &msg.to_json(), false).await;
    assert_eq!(status, 200, "posting {}: {body}", msg.item_hash);
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["item_hash"], msg.item_hash.as_str(), "{answer}");
}

/// `/about/executions/list` entry of `hash` (`null` when absent).
async fn about(server: &Server, hash: &str) -> Value {
    let (status, body) = get(server, "/about/executions/list").await;
    assert_eq!(status, 200, "{body}");
    let list: Value = serde_json::from_str(&body).unwrap();
    list[hash].clone()
}

/// The value of the sample `series` (`name{labels}` exactly as exposed), 0 when absent.
async fn metric(server: &Server, series: &str) -> f64 {
    let (status, text) = get(server, "/metrics").await;
    assert_eq!(status, 200, "{text}");
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// Polls `probe` until it returns `Some`, failing after [`PATIENCE`] with `what` and the last
/// observation.
async fn eventually<T>(what: &str, mut probe: impl AsyncFnMut() -> Result<T, String>) -> T {
    let started = Instant::now();
    loop {
        match probe().await {
            Ok(v) => return v,
            Err(seen) if started.elapsed() > PATIENCE => {
                panic!("never {what}; last seen: {seen}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    }
}

/// `Ok(())` when `cond` holds, else the observation.
fn check(cond: bool, seen: impl std::fmt::Debug) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(format!("{seen:?}"))
    }
}

// --- Persistent programs ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_job_starts_with_the_node_comes_back_after_it_dies_and_stops_on_control() {
    let dir = TestDir::new();
    let store = Store::open(dir.store()).unwrap();
    // Each run records a start, lives 300 ms, then dies with exit code 1.
    let guest = appender("starts", "start\n", false, 300, 1);
    let on = json!({"http": false, "persistent": true});
    let msg = put_program(&store, binary_content(&store, &guest, on, "crashy", false));
    let hash = msg.item_hash.clone();
    let clock = ManualClock::new(T0);
    let node = start(&dir, &clock, |_| {}).await;

    // Started without any request, and started again each time it died.
    eventually("the job restarted twice", async || {
        let starts = volume_lines(&store, "crashy", "starts").len();
        let entry = about(&node, &hash).await;
        check(
            starts >= 3 && entry["persistent"]["restarts"].as_u64() >= Some(2),
            (starts, &entry),
        )
    })
    .await;
    let entry = about(&node, &hash).await;
    let last_end = entry["persistent"]["last_end"].as_str().unwrap_or_default();
    assert!(last_end.contains("Exited(1)"), "{entry}");
    assert_eq!(entry["requests"], 0, "no request was needed: {entry}");
    let restarts = metric(
        &node,
        "aleph_wasm_persistent_restarts_total{reason=\"ended\"}",
    )
    .await;
    assert!(restarts >= 2.0, "restarts counted: {restarts}");

    // The operator stops it: it is not started again.
    let (status, body) = post(
        &node,
        &format!("/control/machine/{hash}/stop"),
        &json!({}),
        true,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["persistent"],
        true,
        "{body}"
    );
    assert_eq!(about(&node, &hash).await["persistent"]["state"], "stopped");
    let starts = volume_lines(&store, "crashy", "starts").len();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        volume_lines(&store, "crashy", "starts").len(),
        starts,
        "a stopped persistent program was started again"
    );
    stop(node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amends_replace_a_persistent_instance_with_the_new_version() {
    let dir = TestDir::new();
    let store = Store::open(dir.store()).unwrap();
    // Version 1 records "v1" and then stays up (a minute: longer than the test).
    let v1 = appender("versions", "v1\n", false, 60_000, 0);
    let on = json!({"http": false, "persistent": true});
    let content = binary_content(&store, &v1, on, "amended", true);
    let code_ref = content["code"]["ref"].as_str().unwrap().to_string();
    let program = put_program(&store, content.clone());
    let clock = ManualClock::new(T0);
    let node = start(&dir, &clock, |_| {}).await;
    eventually("version 1 runs", async || {
        let lines = volume_lines(&store, "amended", "versions");
        let entry = about(&node, &program.item_hash).await;
        check(
            lines == ["v1"] && entry["persistent"]["state"] == "running",
            (lines, entry),
        )
    })
    .await;

    // A STORE amend of the code (use_latest) by its owner: the instance is replaced at once.
    let v2 = wat::parse_str(appender("versions", "v2\n", false, 60_000, 0)).unwrap();
    let v2_hash = store.put_object(&v2).unwrap();
    let amend = message::build_inline(
        MessageType::Store,
        "ETH",
        OWNER,
        5.0,
        json!({"address": OWNER, "time": 5.0, "item_type": "storage", "item_hash": v2_hash,
               "size": v2.len(), "ref": code_ref}),
    );
    post_msg(&node, &amend).await;
    eventually("version 2 replaced version 1", async || {
        let lines = volume_lines(&store, "amended", "versions");
        check(lines == ["v1", "v2"], lines)
    })
    .await;
    let amended = metric(
        &node,
        "aleph_wasm_persistent_restarts_total{reason=\"amended\"}",
    )
    .await;
    assert_eq!(amended, 1.0);

    // A PROGRAM message that replaces it: the old program stops, the new one starts.
    let v3 = appender("versions", "v3\n", false, 60_000, 0);
    let mut replacement = binary_content(
        &store,
        &v3,
        json!({"http": false, "persistent": true}),
        "amended",
        false,
    );
    replacement["replaces"] = json!(program.item_hash);
    replacement["time"] = json!(6.0);
    let draft = message::build_inline(MessageType::Program, "ETH", OWNER, 6.0, replacement);
    post_msg(&node, &draft).await;
    eventually(
        "the replacement runs and the old program stopped",
        async || {
            let lines = volume_lines(&store, "amended", "versions");
            let old = about(&node, &program.item_hash).await;
            let new = about(&node, &draft.item_hash).await;
            check(
                lines == ["v1", "v2", "v3"]
                    && old["persistent"]["state"] == "stopped"
                    && new["persistent"]["state"] == "running",
                (lines, old, new),
            )
        },
    )
    .await;
    stop(node).await;
}

// --- Cron ------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_ticks_follow_the_clock_and_a_tick_during_a_running_one_is_skipped() {
    let dir = TestDir::new();
    let store = Store::open(dir.store()).unwrap();
    // Each tick records itself, then takes 3 s.
    let guest = appender("ticks", "tick\n", false, 3_000, 0);
    let on = json!({"http": false, "cron": "* * * * *"});
    let msg = put_program(&store, binary_content(&store, &guest, on, "cron", false));
    let hash = msg.item_hash.clone();
    let clock = ManualClock::new(T0);
    let node = start(&dir, &clock, |_| {}).await;
    let ran = "aleph_wasm_cron_ticks_total{result=\"run\"}";
    let skipped = "aleph_wasm_cron_ticks_total{result=\"skipped\"}";

    // The real clock does not drive the schedule; before its minute nothing runs.
    tokio::time::sleep(Duration::from_millis(300)).await;
    clock.set(T0 + 29.0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(volume_lines(&store, "cron", "ticks").is_empty());
    assert_eq!(metric(&node, ran).await, 0.0);

    // 00:01:00: the first tick.
    clock.set(T0 + 30.0);
    eventually("the first tick ran", async || {
        let ticks = volume_lines(&store, "cron", "ticks");
        check(ticks.len() == 1, ticks)
    })
    .await;
    assert_eq!(metric(&node, ran).await, 1.0);

    // 00:02:00 while the first tick still runs: skipped, and counted.
    clock.set(T0 + 90.0);
    eventually("the overlapping tick was skipped", async || {
        let n = metric(&node, skipped).await;
        check(n == 1.0, n)
    })
    .await;
    assert_eq!(volume_lines(&store, "cron", "ticks").len(), 1);

    // Once the first tick is over, 00:03:00 runs again.
    eventually("the first tick ended", async || {
        let entry = about(&node, &hash).await;
        check(entry["running"] == 0 && entry["requests"] == 1, entry)
    })
    .await;
    assert_eq!(about(&node, &hash).await["last_outcome"], "ok");
    clock.set(T0 + 150.0);
    eventually("the third minute's tick ran", async || {
        let ticks = volume_lines(&store, "cron", "ticks");
        check(ticks.len() == 2, ticks)
    })
    .await;
    assert_eq!(metric(&node, ran).await, 2.0);
    assert_eq!(metric(&node, skipped).await, 1.0);
    stop(node).await;
}

// --- Message subscriptions -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_reach_subscribed_programs_in_arrival_order_and_none_is_lost_across_a_restart() {
    let dir = TestDir::new();
    let store = Store::open(dir.store()).unwrap();
    let copier = appender("got", "\n", true, 0, 0);
    let subscribe = |kind: &str| json!({"http": false, "message": [{"type": "POST", "content": {"type": kind}}]});
    let wanted = put_program(
        &store,
        binary_content(&store, &copier, subscribe("wanted"), "wanted", false),
    );
    let other = put_program(
        &store,
        binary_content(&store, &copier, subscribe("other"), "other", false),
    );
    let clock = ManualClock::new(T0);
    let node = start(&dir, &clock, |_| {}).await;

    // Posted to the node.
    let m1 = post_message("wanted", 1);
    post_msg(&node, &m1).await;
    // Stored by another process while the node runs.
    let m2 = post_message("wanted", 2);
    let file = dir.write("m2.json", serde_json::to_vec(&m2.to_json()).unwrap());
    dir.cmd()
        .args(["store", "add-message"])
        .arg(&file)
        .assert_ok();
    // For the other program only.
    let m3 = post_message("other", 3);
    post_msg(&node, &m3).await;

    eventually("every message was delivered", async || {
        let got = (delivered(&store, "wanted"), delivered(&store, "other"));
        check(got.0.len() >= 2 && !got.1.is_empty(), got)
    })
    .await;
    // Give a stray delivery the chance to show.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        delivered(&store, "wanted"),
        [m1.item_hash.as_str(), m2.item_hash.as_str()]
    );
    assert_eq!(delivered(&store, "other"), [m3.item_hash.as_str()]);
    let ok = "aleph_wasm_message_deliveries_total{result=\"delivered\"}";
    assert_eq!(metric(&node, ok).await, 3.0);
    assert_eq!(about(&node, &wanted.item_hash).await["requests"], 2);
    stop(node).await;

    // Stored while the node is down: delivered at the next start, and nothing twice.
    let m4 = post_message("wanted", 4);
    store.put_message(&m4).unwrap();
    let node = start(&dir, &clock, |_| {}).await;
    eventually("the message stored while down was delivered", async || {
        let got = delivered(&store, "wanted");
        check(got.len() >= 3, got)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        delivered(&store, "wanted"),
        [
            m1.item_hash.as_str(),
            m2.item_hash.as_str(),
            m4.item_hash.as_str()
        ]
    );
    assert_eq!(delivered(&store, "other"), [m3.item_hash.as_str()]);
    assert_eq!(
        about(&node, &other.item_hash).await["requests"],
        json!(null)
    );
    stop(node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_message_is_refused_with_the_path_of_the_problem() {
    let dir = TestDir::new();
    let clock = ManualClock::new(T0);
    let node = start(&dir, &clock, |_| {}).await;
    let mut bad = post_message("x", 1).to_json();
    bad["item_hash"] = json!("0".repeat(64));
    let (status, body) = post(&node, "/api/v0/messages", &bad, false).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("item_hash"), "{body}");
    let (status, body) = post(&node, "/api/v0/messages", &json!({"message": 1}), false).await;
    assert_eq!(status, 400, "{body}");
    // The wrapped form Aleph's API takes.
    let good = post_message("x", 2);
    let (status, body) = post(
        &node,
        "/api/v0/messages",
        &json!({"sync": true, "message": good.to_json()}),
        false,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let store = Store::open(dir.store()).unwrap();
    assert_eq!(store.get_message(&good.item_hash).unwrap(), good);
    stop(node).await;
}

// --- Python (ASGI) ---------------------------------------------------------------------------

fn python_runtime(store: &Store) -> String {
    common::python::python_runtime(store, Path::new(CACHE))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_python_app_runs_from_the_start_takes_events_and_comes_back_after_a_crash() {
    let dir = TestDir::new();
    let store = Store::open(dir.store()).unwrap();
    let runtime_ref = python_runtime(&store);
    let code = put_code(&store, PYTHON_APP.as_bytes());
    let msg = put_program(
        &store,
        json!({
            "type": "vm-function",
            "address": OWNER,
            "time": 2.0,
            "allow_amend": false,
            "code": {"encoding": "plain", "entrypoint": "main:app", "ref": code,
                     "interface": "asgi", "use_latest": false},
            "runtime": {"ref": runtime_ref, "use_latest": false, "comment": "python-3.12"},
            "on": {"http": true, "persistent": true, "cron": "* * * * *",
                   "message": [{"type": "POST", "content": {"type": "py"}}]},
            "environment": {},
            "resources": {"vcpus": 1, "memory": 128, "seconds": 10},
            "variables": {},
            "volumes": [{"name": "py", "mount": "/data", "persistence": "host", "size_mib": 1}],
        }),
    );
    let hash = msg.item_hash.clone();
    let clock = ManualClock::new(T0);
    let node = start(&dir, &clock, |_| {}).await;

    // Booted with the node: a pinned warm instance, before any request.
    eventually("the instance runs", async || {
        let entry = about(&node, &hash).await;
        check(
            entry["persistent"]["state"] == "running" && entry["idle_instances"] == 1,
            entry,
        )
    })
    .await;
    assert_eq!(volume_lines(&store, "py", "boots"), ["boot"]);

    // A cron tick and a message reach it as aleph.cron and aleph.message events.
    clock.set(T0 + 30.0);
    let m = post_message("py", 1);
    post_msg(&node, &m).await;
    post_msg(&node, &post_message("not-py", 2)).await;
    eventually("the events were handled", async || {
        let seen = (
            volume_lines(&store, "py", "cron"),
            volume_lines(&store, "py", "messages"),
        );
        check(!seen.0.is_empty() && !seen.1.is_empty(), seen)
    })
    .await;
    assert_eq!(
        volume_lines(&store, "py", "cron"),
        [format!("{:.1}", T0 + 30.0)]
    );
    assert_eq!(
        volume_lines(&store, "py", "messages"),
        [m.item_hash.as_str()]
    );
    // Served by the persistent instance: no other boot.
    let (status, body) = get(&node, &format!("/vm/{hash}/state")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["boots"],
        json!(["boot"])
    );

    // The instance dies in a request; the supervisor boots another.
    let (status, body) = get(&node, &format!("/vm/{hash}/crash")).await;
    assert_eq!(status, 502, "{body}");
    eventually("the instance came back", async || {
        let entry = about(&node, &hash).await;
        check(
            entry["persistent"]["state"] == "running"
                && entry["persistent"]["restarts"] == 1
                && entry["idle_instances"] == 1,
            entry,
        )
    })
    .await;
    assert_eq!(volume_lines(&store, "py", "boots"), ["boot", "boot"]);
    let ended = metric(
        &node,
        "aleph_wasm_persistent_restarts_total{reason=\"ended\"}",
    )
    .await;
    assert_eq!(ended, 1.0);
    let running = metric(&node, "aleph_wasm_persistent_instances").await;
    assert_eq!(running, 1.0);

    // Stopped by the operator: retired (lifespan shutdown), not booted again.
    let (status, body) = post(
        &node,
        &format!("/control/machine/{hash}/stop"),
        &json!({}),
        true,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let entry = about(&node, &hash).await;
    assert_eq!(entry["persistent"]["state"], "stopped", "{entry}");
    assert_eq!(entry["idle_instances"], 0, "{entry}");
    stop(node).await;
    assert_eq!(volume_lines(&store, "py", "boots"), ["boot", "boot"]);
}
