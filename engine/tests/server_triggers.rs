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

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aleph_wasm::message::{self, Message, MessageType};
use aleph_wasm::server::triggers::{BackoffPolicy, ManualClock, TriggerConfig};
use aleph_wasm::server::{self, Server, ServerConfig};
use aleph_wasm::store::UnsignedMessages;
use aleph_wasm::{Store, runtime};
use common::TestDir;
use serde_json::{Value, json};

/// What the suites keep between runs: the interpreter copy and compiled modules.
const CACHE: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/aleph-wasm-test-cache");
/// The python-3.12 runtime's source manifest (for the interpreter's sha256).
/// The owner of the messages the tests write (the address of [`OWNER_KEY`]).
const OWNER: &str = "0x2c7536E3605D9C16a7a3D7b1898e529396a65c23";
/// A well-known test key (web3.js's documentation).
const OWNER_KEY: &str = "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318";
/// Another account's key (Hardhat's first test account).
const MALLORY_KEY: &str = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
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
        {sleep}))
    (call $exit (i32.const {code}))))"#,
        file_lit = wat_str(file),
        file_len = file.len(),
        line_lit = wat_str(line),
        line_len = line.len(),
        copy = i32::from(copy_stdin),
        ns = sleep_ms * 1_000_000,
        sleep = common::wasi_sleep(sleep_ms),
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

fn owner() -> message::Signer {
    message::Signer::parse(OWNER_KEY.as_bytes()).unwrap()
}

fn mallory() -> message::Signer {
    message::Signer::parse(MALLORY_KEY.as_bytes()).unwrap()
}

/// `msg` signed by the owner (the node takes only signed messages).
fn signed(mut msg: Message) -> Message {
    owner().sign(&mut msg).unwrap();
    msg
}

/// Validates and stores a PROGRAM message with `content`.
fn put_program(store: &Store, content: Value) -> Message {
    let draft = signed(message::build_inline(
        MessageType::Program,
        "ETH",
        OWNER,
        2.0,
        content,
    ));
    let msg = message::parse(&serde_json::to_vec(&draft.to_json()).unwrap())
        .unwrap_or_else(|e| panic!("the test's program message is invalid: {e}"));
    store.put_message(&msg).unwrap();
    msg
}

/// Stores `bytes` and a STORE message for them; returns the message's item hash.
fn put_code(store: &Store, bytes: &[u8]) -> String {
    let hash = store.put_object(bytes).unwrap();
    store
        .add_store_message(&hash, bytes.len() as u64, OWNER, 1.0, Some(&owner()))
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
    signed(message::build_inline(
        MessageType::Post,
        "ETH",
        OWNER,
        10.0 + f64::from(n),
        json!({"type": kind, "address": OWNER, "time": 10.0 + f64::from(n), "content": {"n": n}}),
    ))
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
/// restart backoff, control routes enabled, and `tune` applied; its store takes only signed
/// messages, as `serve`'s does.
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
    let store = Store::open(dir.store())
        .unwrap()
        .with_unsigned(UnsignedMessages::Refuse);
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

    // Forged amends of the code are refused with the reason, and the program keeps its code.
    let evil = wat::parse_str(appender("versions", "evil\n", false, 60_000, 0)).unwrap();
    let evil_hash = store.put_object(&evil).unwrap();
    let amend_by = |sender: &str, time: f64, hash: &str, size: usize| {
        message::build_inline(
            MessageType::Store,
            "ETH",
            sender,
            time,
            json!({"address": OWNER, "time": time, "item_type": "storage", "item_hash": hash,
                   "size": size, "ref": code_ref}),
        )
    };
    let mut by_mallory = amend_by(mallory().address(), 4.0, &evil_hash, evil.len());
    mallory().sign(&mut by_mallory).unwrap();
    let mut claimed = amend_by(OWNER, 4.1, &evil_hash, evil.len());
    claimed.signature = Some(
        mallory()
            .sign_hex(message::verification_buffer(&claimed).as_bytes())
            .unwrap(),
    );
    let unsigned = amend_by(OWNER, 4.2, &evil_hash, evil.len());
    for (forged, reason) in [
        (&by_mallory, "is not the sender"),
        (&claimed, "not by the sender"),
        (&unsigned, "has no signature"),
    ] {
        let (status, body) = post(&node, "/api/v0/messages", &forged.to_json(), false).await;
        assert_eq!(status, 400, "{reason}: {body}");
        assert!(body.contains(reason), "{reason}: {body}");
        assert!(!store.has_message(&forged.item_hash), "{reason}: stored");
    }
    let exact = message::ObjectRef {
        reference: code_ref.clone(),
        use_latest: true,
    };
    assert_eq!(
        store.resolve(&exact).unwrap().message_hash,
        code_ref,
        "use_latest still resolves to the owner's code"
    );

    // A STORE amend of the code (use_latest) by its owner: the instance is replaced at once.
    let v2 = wat::parse_str(appender("versions", "v2\n", false, 60_000, 0)).unwrap();
    let v2_hash = store.put_object(&v2).unwrap();
    let amend = signed(amend_by(OWNER, 5.0, &v2_hash, v2.len()));
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
    // Signed by someone else, the replacement is refused and the program keeps running.
    let mut forged = draft.clone();
    forged.signature = Some(
        mallory()
            .sign_hex(message::verification_buffer(&forged).as_bytes())
            .unwrap(),
    );
    let (status, body) = post(&node, "/api/v0/messages", &forged.to_json(), false).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("not by the sender"), "{body}");
    let draft = signed(draft);
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

// --- The scheduler's allocations -------------------------------------------------------------

/// The scheduler's key in these tests (Hardhat's second test account).
const SCHEDULER_KEY: &str = "59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";

fn scheduler() -> message::Signer {
    message::Signer::parse(SCHEDULER_KEY.as_bytes()).unwrap()
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// `Authorization: Aleph-EIP191-V1 …` for `POST /control/allocations` with `body`, by `signer`.
fn allocation_auth(signer: &message::Signer, body: &[u8], iat: i64) -> String {
    use sha2::Digest as _;
    let payload = json!({
        "body_sha256": hex::encode(sha2::Sha256::digest(body)),
        "iat": iat,
        "method": "POST",
        "path": "/control/allocations",
    });
    let bytes = serde_json::to_vec(&payload).unwrap();
    let sig = signer.sign_text(&bytes).unwrap();
    format!(
        "Aleph-EIP191-V1 sig=0x{},payload={}",
        hex::encode(sig),
        hex::encode(&bytes)
    )
}

/// Pushes an allocation `body` with the header `auth`; the status and the body.
async fn push(node: &Server, auth: Option<&str>, body: &[u8]) -> (u16, String) {
    let mut request = client()
        .post(url(node, "/control/allocations"))
        .header("content-type", "application/json")
        .body(body.to_vec());
    if let Some(auth) = auth {
        request = request.header("authorization", auth);
    }
    let r = request.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schedulers_allocations_start_and_stop_persistent_programs() {
    // Node A holds the programs (an API node); node B is the compute node the scheduler pushes.
    let a_dir = TestDir::new();
    let a_store = Store::open(a_dir.store()).unwrap();
    let guest = appender("boots", "up\n", false, 60_000, 0);
    let on = json!({"http": false, "persistent": false});
    let mut content = binary_content(&a_store, &guest, on, "allocated", false);
    content["on"]["persistent"] = json!(true);
    let program = put_program(&a_store, content.clone());
    content["on"]["persistent"] = json!(false);
    content["on"]["http"] = json!(true);
    content["time"] = json!(3.0);
    let on_demand = put_program(&a_store, content);
    let clock = ManualClock::new(T0);
    let a = start(&a_dir, &clock, |_| {}).await;
    let api = url(&a, "");
    let b_dir = TestDir::new();
    let b = start(&b_dir, &clock, |c| {
        c.api = Some(api);
        c.schedulers = vec![scheduler().address().to_string()];
    })
    .await;
    let b_store = Store::open(b_dir.store()).unwrap();
    assert!(!b_store.has_message(&program.item_hash));

    // No authentication, a stranger's signature, a body other than the one signed: refused.
    let body = serde_json::to_vec(&json!({"persistent_vms": [program.item_hash]})).unwrap();
    let (status, text) = push(&b, None, &body).await;
    assert_eq!(status, 401, "{text}");
    let iat = unix_now();
    let by_mallory = allocation_auth(&mallory(), &body, iat);
    let (status, text) = push(&b, Some(&by_mallory), &body).await;
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("is not a scheduler of this node"), "{text}");
    let other_body = br#"{"persistent_vms": []}"#;
    let (status, text) = push(
        &b,
        Some(&allocation_auth(&scheduler(), other_body, iat)),
        &body,
    )
    .await;
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("body_sha256"), "{text}");
    let stale = allocation_auth(&scheduler(), &body, iat - 3600);
    let (status, text) = push(&b, Some(&stale), &body).await;
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("from the node's clock"), "{text}");
    assert!(
        !b_store.has_message(&program.item_hash),
        "nothing fetched for a refused push"
    );

    // The scheduler's push: B fetches the program from A and keeps it running.
    let signed = allocation_auth(&scheduler(), &body, iat);
    let (status, text) = push(&b, Some(&signed), &body).await;
    assert_eq!(status, 200, "{text}");
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["success"], true, "{answer}");
    assert_eq!(answer["successful"], json!([program.item_hash]), "{answer}");
    eventually("the allocated program runs on B", async || {
        let entry = about(&b, &program.item_hash).await;
        let lines = volume_lines(&b_store, "allocated", "boots");
        check(
            entry["persistent"]["state"] == "running" && lines == ["up"],
            (entry, lines),
        )
    })
    .await;
    // The same request again is a replay.
    let (status, text) = push(&b, Some(&signed), &body).await;
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("replayed"), "{text}");

    // With the node's token: a program that is not persistent and an instance are refused
    // with their reasons, the rest stands (207).
    let mixed = serde_json::to_vec(&json!({
        "persistent_vms": [program.item_hash, on_demand.item_hash],
        "instances": ["b".repeat(64)],
        "on_demand_vms": [], "jobs": [],
    }))
    .unwrap();
    let (status, text) = push(&b, Some(&format!("Bearer {TOKEN}")), &mixed).await;
    assert_eq!(status, 207, "{text}");
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["successful"], json!([program.item_hash]), "{answer}");
    let errors = &answer["errors"];
    assert!(
        errors[&on_demand.item_hash]
            .as_str()
            .unwrap()
            .contains("on.persistent is false"),
        "{answer}"
    );
    assert!(
        errors["b".repeat(64)]
            .as_str()
            .unwrap()
            .contains("runs Wasm programs only"),
        "{answer}"
    );
    assert_eq!(
        volume_lines(&b_store, "allocated", "boots"),
        ["up"],
        "not started twice"
    );

    // No longer listed: stopped.
    let empty = br#"{"persistent_vms": []}"#;
    let (status, text) = push(
        &b,
        Some(&allocation_auth(&scheduler(), empty, iat + 1)),
        empty,
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["stopped"], json!([program.item_hash]), "{answer}");
    eventually("the program stopped on B", async || {
        let entry = about(&b, &program.item_hash).await;
        check(entry["persistent"]["state"] != "running", entry)
    })
    .await;
    // Malformed: the reason is named.
    let (status, text) = push(&b, Some(&format!("Bearer {TOKEN}")), b"{\"instances\": []}").await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("persistent_vms"), "{text}");
    stop(b).await;
    stop(a).await;
}

/// A server on `ip` (any port) answering every connection `204 No Content`, on a thread of its
/// own; returns its address.
fn answering_server(ip: std::net::IpAddr) -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(
                b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_answers_the_networks_status_checks() {
    let dir = TestDir::new();
    let clock = ManualClock::new(T0);
    // The connectivity probes go to servers on the loopback interface, one per family.
    let v4 = answering_server(std::net::Ipv4Addr::LOCALHOST.into());
    let v6 = answering_server(std::net::Ipv6Addr::LOCALHOST.into());
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let node = start(&dir, &clock, |c| {
        c.domain = Some("localhost".into());
        c.connectivity = aleph_wasm::server::connectivity::ConnectivityConfig {
            ipv4_url: format!("http://{v4}/"),
            ipv6_url: format!("http://{v6}/"),
            dns_host: "localhost".into(),
            // The first does not answer (its port is closed): the next one does.
            http_urls: vec![
                format!("http://{closed}/"),
                format!("http://{v4}/"),
                format!("http://{v6}/"),
            ],
            timeout: Duration::from_secs(5),
        };
    })
    .await;
    let (status, text) = get(&node, "/status/check/version?reference=0.0.1").await;
    assert_eq!(status, 200, "{text}");
    assert!(text.starts_with("Up-to-date: version"), "{text}");
    let (status, text) = get(&node, "/status/check/version?reference=999.0.0").await;
    assert_eq!(status, 403, "{text}");
    assert!(text.starts_with("Outdated: version"), "{text}");
    let (status, text) = get(&node, "/status/check/version").await;
    assert_eq!(status, 400, "{text}");
    let (status, text) = get(&node, "/status/check/version?reference=latest").await;
    assert_eq!(status, 400, "{text}");

    // The node's own checks: connectivity per family as today's nodes probe it, its store
    // takes writes, its runtimes (wasi needs nothing).
    let (status, text) = get(&node, "/status/check/host").await;
    let host: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        host["ipv4"],
        json!({"egress": true, "dns": true, "domain": true, "http": true}),
        "{host}"
    );
    assert_eq!(host["ipv6"]["egress"], true, "{host}");
    assert_eq!(host["ipv6"]["http"], true, "{host}");
    // Whether `localhost` has an IPv6 address depends on the machine's /etc/hosts; the status
    // says whether every required check passed (`http` is advisory).
    let required = ["egress", "dns", "domain"]
        .iter()
        .all(|k| host["ipv4"][k] == true && host["ipv6"][k] == true);
    assert_eq!(status, if required { 200 } else { 503 }, "{text}");
    assert_eq!(host["store_writable"], true, "{host}");
    assert_eq!(host["runtimes_present"]["wasi"], true, "{host}");
    assert!(
        host["runtimes_present"]["python-3.12"].is_boolean(),
        "{host}"
    );

    let (status, text) = get(&node, "/about/capability").await;
    assert_eq!(status, 200, "{text}");
    let capability: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(capability["engine"], "wasm");
    assert_eq!(capability["message_types"]["instance"], false);
    assert!(
        capability["runtimes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "wasi" && r["kind"] == "wasi"),
        "{capability}"
    );
    let (status, text) = get(&node, "/status/config").await;
    assert_eq!(status, 200, "{text}");
    let config: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        config["computing"]["ENABLE_QEMU_SUPPORT"], false,
        "{config}"
    );
    assert_eq!(
        config["security"]["UNSIGNED_MESSAGES"], "refuse",
        "{config}"
    );
    stop(node).await;
}
