//! Two nodes: node B, started with node A's API, serves programs that only A's store holds —
//! fetching the messages, amends and objects on first use and verifying every hash before
//! storing anything. Real servers on loopback ports (port 0); a fake node in the test serves
//! real messages with altered bytes. The message feed: node A's `/api/ws0/messages` read by a
//! websocket client, node B following it and delivering to a subscribed program, a fake feed
//! sending tampered frames. Also the `/api/v0` routes alone, through the router.
//!
//! The programs are binary WebAssembly-text guests compiled here with `wat`: CGI ones for
//! requests, a job recording the messages it is given for subscriptions.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aleph_wasm::message::{self, Message, MessageType};
use aleph_wasm::server::{self, Server, ServerConfig};
use aleph_wasm::{Store, runtime};
use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use common::serve::ServeProcess;
use serde_json::{Value, json};

/// What the suites keep between runs: compiled modules.
const CACHE: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/aleph-wasm-test-cache");
/// The CGI hello example.
const CGI_HELLO: &str = include_str!("../../examples/cgi-hello/hello.wat");
/// The owner of the programs and code (the address of [`OWNER_KEY`]).
const OWNER: &str = "0x2c7536E3605D9C16a7a3D7b1898e529396a65c23";
/// A well-known test key (web3.js's documentation).
const OWNER_KEY: &str = "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318";
/// Someone else (the address of [`MALLORY_KEY`]).
const MALLORY: &str = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266";
/// Another well-known test key (Hardhat's first account).
const MALLORY_KEY: &str = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

/// `msg` signed by its sender (one of the two accounts above), as the network needs it.
fn sealed(mut msg: Message) -> Message {
    let key = match msg.sender.as_str() {
        OWNER => OWNER_KEY,
        MALLORY => MALLORY_KEY,
        other => panic!("no key for {other}"),
    };
    let signer = message::Signer::parse(key.as_bytes()).unwrap();
    assert_eq!(signer.address(), msg.sender);
    signer.sign(&mut msg).unwrap();
    msg
}

// --- Programs --------------------------------------------------------------------------------

/// A CGI guest that answers `text`.
fn says(text: &str) -> Vec<u8> {
    let response = format!("Content-Type: text/plain\r\n\r\n{text}\n");
    let escaped: String = response.bytes().map(|b| format!("\\{b:02x}")).collect();
    let wat = format!(
        r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "{escaped}")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const {len}))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#,
        len = response.len()
    );
    wat::parse_str(&wat).unwrap()
}

/// Stores `wasm` with a STORE message by `owner` at `time` (amending `amends` if given).
fn store_code(store: &Store, wasm: &[u8], owner: &str, time: f64, amends: Option<&str>) -> Message {
    let hash = store.put_object(wasm).unwrap();
    let mut content = json!({
        "address": owner, "time": time, "item_type": "storage",
        "item_hash": hash, "size": wasm.len(),
    });
    if let Some(original) = amends {
        content["ref"] = original.into();
    }
    let msg = sealed(message::build_inline(
        MessageType::Store,
        "ETH",
        owner,
        time,
        content,
    ));
    store.put_message(&msg).unwrap();
    msg
}

/// A binary program running the code of STORE message `code_ref`.
fn program(store: &Store, code_ref: &str, use_latest: bool) -> Message {
    let runtime_ref = runtime::add_builtin(store, "wasi").unwrap();
    let content = json!({
        "type": "vm-function", "address": OWNER, "time": 5.0, "allow_amend": false,
        "code": {"encoding": "plain", "entrypoint": "main.wasm", "ref": code_ref,
                 "interface": "binary", "use_latest": use_latest},
        "runtime": {"ref": runtime_ref, "use_latest": true, "comment": "wasi"},
        "on": {"http": true}, "environment": {},
        "resources": {"vcpus": 1, "memory": 16, "seconds": 5},
    });
    let draft = sealed(message::build_inline(
        MessageType::Program,
        "ETH",
        OWNER,
        5.0,
        content,
    ));
    let msg = message::parse(&serde_json::to_vec(&draft.to_json()).unwrap()).unwrap();
    store.put_message(&msg).unwrap();
    msg
}

/// The CGI hello program; returns it and its code's file hash.
fn hello(store: &Store) -> (Message, String) {
    let wasm = wat::parse_str(CGI_HELLO).unwrap();
    let code = store_code(store, &wasm, OWNER, 1.0, None);
    let file = code.store().unwrap().item_hash.clone();
    (program(store, &code.item_hash, false), file)
}

// --- Nodes -----------------------------------------------------------------------------------

/// One node: a store and, once started, a server.
struct Node {
    dir: tempfile::TempDir,
    store: Store,
    server: Option<Server>,
}

impl Node {
    fn new() -> Node {
        let dir = tempfile::Builder::new()
            .prefix("aleph-wasm-two-nodes-")
            .tempdir()
            .unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        Node {
            dir,
            store,
            server: None,
        }
    }

    fn config(api: Option<String>) -> ServerConfig {
        ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            module_cache: Some(PathBuf::from(CACHE).join("modules")),
            api,
            ..ServerConfig::default()
        }
    }

    /// Starts the server; with `api`, missing content is fetched from there.
    async fn start(mut self, api: Option<String>) -> Node {
        let server = server::start(Node::config(api), self.store.clone())
            .await
            .unwrap_or_else(|e| panic!("the server does not start: {e:#}"));
        self.server = Some(server);
        self
    }

    fn url(&self) -> String {
        let server = self.server.as_ref().expect("not started");
        format!("http://{}", server.local_addr())
    }

    async fn get(&self, path: &str) -> (u16, String) {
        get(&format!("{}{path}", self.url())).await
    }

    /// The sha256 of every object in the store.
    fn objects(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let root = self.store.root().join("objects/sha256");
        for prefix in std::fs::read_dir(root).unwrap().flatten() {
            for object in std::fs::read_dir(prefix.path()).unwrap().flatten() {
                out.insert(object.file_name().to_string_lossy().into_owned());
            }
        }
        out
    }

    /// Asserts that no temporary file was left behind (nothing half fetched).
    fn assert_no_leftovers(&self) {
        let left: Vec<PathBuf> = std::fs::read_dir(self.store.tmp_dir())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "left in tmp/: {left:?}");
    }

    async fn shutdown(mut self) {
        if let Some(server) = self.server.take() {
            tokio::time::timeout(Duration::from_secs(60), server.shutdown())
                .await
                .expect("the shutdown hangs")
                .unwrap();
        }
        drop(self.dir);
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

async fn get(url: &str) -> (u16, String) {
    let response = client()
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// A fake node in front of `upstream`: it forwards every request and lets `alter` change the
/// answer (path and query, body) before it is sent back.
async fn fake_node(
    upstream: String,
    alter: fn(&str, Vec<u8>) -> Vec<u8>,
) -> (String, tokio::task::JoinHandle<()>) {
    let app = axum::Router::new().fallback(move |request: Request| {
        let upstream = upstream.clone();
        async move {
            let target = request
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_default();
            let response = client()
                .get(format!("{upstream}{target}"))
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let body = response.bytes().await.unwrap().to_vec();
            let mut answer = Response::new(Body::from(alter(&target, body)));
            *answer.status_mut() = axum::http::StatusCode::from_u16(status).unwrap();
            answer.into_response()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let serving = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (format!("http://{addr}"), serving)
}

// --- Fetching from another node --------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_b_fetches_verifies_and_serves_a_program_only_node_a_holds() {
    let a = Node::new();
    let (msg, code_file) = hello(&a.store);
    let a = a.start(None).await;
    let b = Node::new().start(Some(a.url())).await;
    assert!(!b.store.has_message(&msg.item_hash));

    let (status, body) = b.get(&format!("/vm/{}/greet?name=b", msg.item_hash)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Hello from aleph-wasm!"), "{body}");
    assert!(body.contains("QUERY_STRING=name=b"), "{body}");

    // B now holds the program, its code and its runtime, each verified.
    assert!(b.store.has_message(&msg.item_hash));
    b.store.verify_object(&code_file).unwrap();
    let runtime_ref = &msg.program().unwrap().runtime.reference;
    let runtime = b.store.resolve(runtime_ref).unwrap();
    b.store.verify_object(&runtime.file_hash).unwrap();
    assert!(
        b.objects().is_subset(&a.objects()),
        "B has objects A never had"
    );
    b.assert_no_leftovers();

    // Later requests are served from B's own store.
    let a_addr = a.url();
    a.shutdown().await;
    let (status, body) = b.get(&format!("/vm/{}/again", msg.item_hash)).await;
    assert_eq!(status, 200, "after {a_addr} stopped: {body}");
    assert!(body.contains("PATH_INFO=/again"), "{body}");
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_on_neither_node_is_404_and_an_unreachable_api_is_502() {
    let a = Node::new().start(None).await;
    let b = Node::new().start(Some(a.url())).await;
    let unknown = "ab".repeat(32);
    let (status, body) = b.get(&format!("/vm/{unknown}/")).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = b.get("/vm/not-a-hash/").await;
    assert_eq!(status, 404, "{body}");

    let gone = a.url();
    a.shutdown().await;
    let (status, body) = b.get(&format!("/vm/{unknown}/")).await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains(&unknown) && body.contains("cannot connect"),
        "{body}"
    );
    assert!(body.contains(&gone), "the API is named: {body}");
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_altered_in_transit_is_refused_and_never_stored() {
    let a = Node::new();
    let (msg, code_file) = hello(&a.store);
    let a = a.start(None).await;
    // The fake node serves A's real messages, but flips a byte of every raw object.
    let (fake, serving) = fake_node(a.url(), |target, mut body| {
        if target.starts_with("/api/v0/storage/raw/")
            && let Some(last) = body.last_mut()
        {
            *last ^= 0x01;
        }
        body
    })
    .await;
    let b = Node::new().start(Some(fake)).await;

    let (status, body) = b.get(&format!("/vm/{}/", msg.item_hash)).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("hash mismatch"), "{body}");
    let runtime = a
        .store
        .resolve(&msg.program().unwrap().runtime.reference)
        .unwrap();
    // The runtime is one B ships, stored from its own copy: the first object fetched is the
    // code, and the refusal names its hash.
    assert!(
        body.contains(&code_file),
        "the refused hash is named: {body}"
    );
    let mut objects = b.objects();
    assert!(
        objects.remove(&runtime.file_hash),
        "B's own runtime: {objects:?}"
    );
    assert!(objects.is_empty(), "stored: {objects:?}");
    assert!(!b.store.has_object(&code_file));
    b.assert_no_leftovers();

    // The messages themselves were genuine: they may be stored, but nothing else is.
    let (status, _) = b.get(&format!("/vm/{}/", msg.item_hash)).await;
    assert_eq!(status, 502, "a refusal is not remembered as a success");
    serving.abort();
    b.shutdown().await;
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_altered_in_transit_is_refused_by_its_hash() {
    let a = Node::new();
    let (msg, code_file) = hello(&a.store);
    let a = a.start(None).await;
    // B first gets the runtime honestly, then the code through a node that alters it.
    let mut honest = Node::new().start(Some(a.url())).await;
    let runtime_only = program(&a.store, &say_store(&a.store, "rt"), false);
    let (status, body) = honest
        .get(&format!("/vm/{}/", runtime_only.item_hash))
        .await;
    assert_eq!(status, 200, "{body}");
    let b_store = honest.store.clone();
    let first = honest.server.take().unwrap();
    first.shutdown().await.unwrap();

    let (fake, serving) = fake_node(a.url(), |target, mut body| {
        if target.starts_with("/api/v0/storage/raw/")
            && let Some(last) = body.last_mut()
        {
            *last ^= 0x01;
        }
        body
    })
    .await;
    let b = server::start(Node::config(Some(fake)), b_store.clone())
        .await
        .unwrap();
    let (status, body) = get(&format!("http://{}/vm/{}/", b.local_addr(), msg.item_hash)).await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains(&code_file)
            && body.contains("hash mismatch")
            && body.contains("content.code"),
        "the refusal names the code's hash: {body}"
    );
    assert!(!b_store.has_object(&code_file));
    let mut altered = wat::parse_str(CGI_HELLO).unwrap();
    if let Some(last) = altered.last_mut() {
        *last ^= 0x01;
    }
    assert!(
        !b_store.has_object(&message::sha256_hex(&altered)),
        "the altered bytes are not kept"
    );
    serving.abort();
    b.shutdown().await.unwrap();
    honest.shutdown().await;
    a.shutdown().await;
}

/// Stores a guest saying `text` and returns its STORE message's item hash.
fn say_store(store: &Store, text: &str) -> String {
    store_code(store, &says(text), OWNER, 1.0, None).item_hash
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_altered_in_transit_is_refused_and_never_stored() {
    let a = Node::new();
    let (msg, _) = hello(&a.store);
    let a = a.start(None).await;
    // The fake node raises the program's memory in item_content, keeping its item_hash.
    let (fake, serving) = fake_node(a.url(), |target, body| {
        if !target.starts_with("/api/v0/messages.json") {
            return body;
        }
        let mut listing: Value = serde_json::from_slice(&body).unwrap();
        for m in listing["messages"].as_array_mut().unwrap() {
            if m["type"] == "PROGRAM" {
                let text = m["item_content"]
                    .as_str()
                    .unwrap()
                    .replace("\"memory\":16", "\"memory\":2048");
                m["content"] = serde_json::from_str(&text).unwrap();
                m["item_content"] = text.into();
            }
        }
        serde_json::to_vec(&listing).unwrap()
    })
    .await;
    let b = Node::new().start(Some(fake)).await;
    let (status, body) = b.get(&format!("/vm/{}/", msg.item_hash)).await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains(&format!("message {}", msg.item_hash)) && body.contains("hash mismatch"),
        "{body}"
    );
    assert!(!b.store.has_message(&msg.item_hash));
    assert!(b.store.message_hashes().unwrap().is_empty());
    serving.abort();
    b.shutdown().await;
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn use_latest_code_follows_the_owners_newest_amend_on_node_a() {
    let a = Node::new();
    let v1 = store_code(&a.store, &says("one"), OWNER, 1.0, None);
    let v2 = store_code(&a.store, &says("two"), OWNER, 2.0, Some(&v1.item_hash));
    let v3 = store_code(&a.store, &says("three"), MALLORY, 3.0, Some(&v1.item_hash));
    let msg = program(&a.store, &v1.item_hash, true);
    let a = a.start(None).await;
    let b = Node::new().start(Some(a.url())).await;

    let (status, body) = b.get(&format!("/vm/{}/", msg.item_hash)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "two\n", "the owner's newest amend, not anyone else's");
    assert!(b.store.has_message(&v2.item_hash));
    assert!(
        !b.store.has_message(&v3.item_hash),
        "another owner's amend is not stored"
    );
    assert!(b.store.has_object(&v2.store().unwrap().item_hash));
    assert!(
        !b.store.has_object(&v1.store().unwrap().item_hash),
        "only what is used is fetched"
    );
    assert!(!b.store.has_object(&v3.store().unwrap().item_hash));
    b.shutdown().await;
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_api_fetches_from_another_node() {
    let a = Node::new();
    let (msg, _) = hello(&a.store);
    let a = a.start(None).await;
    let b = Node::new();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_aleph-wasm"));
    cmd.arg("--store")
        .arg(b.store.root())
        .arg("--module-cache")
        .arg(Path::new(CACHE).join("modules"))
        .args(["serve", "--listen", "127.0.0.1:0", "--api", &a.url()])
        // Snapshots have their own tests; no background builds compete with this one.
        .env("ALEPH_WASM_SNAPSHOTS", "off")
        .env_remove("ALEPH_WASM_STORE")
        .env_remove("ALEPH_WASM_API");
    let serve = ServeProcess::start(cmd).await;
    let (status, body) = get(&format!("{}/vm/{}/cli", serve.base, msg.item_hash)).await;
    serve.stop().await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("PATH_INFO=/cli"), "{body}");
    assert!(b.store.has_message(&msg.item_hash));
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_api_fetches_a_program_from_another_node_and_runs_it_once() {
    let a = Node::new();
    let (msg, _) = hello(&a.store);
    let a = a.start(None).await;
    let b = Node::new();
    let url = a.url();
    let store = b.store.root().to_path_buf();
    let hash = msg.item_hash.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_aleph-wasm"))
            .arg("--store")
            .arg(&store)
            .arg("--module-cache")
            .arg(Path::new(CACHE).join("modules"))
            .args(["run", &hash, "--request", "GET /once", "--api", &url])
            .env_remove("RUST_LOG")
            .env_remove("ALEPH_WASM_STORE")
            .env_remove("ALEPH_WASM_API")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("PATH_INFO=/once"), "{stdout}");
    assert!(b.store.has_message(&msg.item_hash));
    a.shutdown().await;
}

// --- The network message feed ----------------------------------------------------------------

/// A WASI job that appends its stdin (the message's JSON) and a newline to `got` in the
/// volume mounted first (fd 3).
const RECORDER: &str = r#"(module
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $fd_close (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 2)
  (data (i32.const 1024) "got")
  (data (i32.const 2048) "\0a")
  (func $write (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "_start")
    (local $fd i32) (local $n i32)
    ;; O_CREAT, FDFLAGS_APPEND, fd_read + fd_write rights
    (if (call $path_open (i32.const 3) (i32.const 1) (i32.const 1024) (i32.const 3)
          (i32.const 1) (i64.const 66) (i64.const 66) (i32.const 1) (i32.const 12))
      (then (call $exit (i32.const 90))))
    (local.set $fd (i32.load (i32.const 12)))
    (block $done
      (loop $more
        (i32.store (i32.const 16) (i32.const 4096))
        (i32.store (i32.const 20) (i32.const 60000))
        (br_if $done (call $fd_read (i32.const 0) (i32.const 16) (i32.const 1) (i32.const 24)))
        (local.set $n (i32.load (i32.const 24)))
        (br_if $done (i32.eqz (local.get $n)))
        (call $write (local.get $fd) (i32.const 4096) (local.get $n))
        (br $more)))
    (call $write (local.get $fd) (i32.const 2048) (i32.const 1))
    (drop (call $fd_close (local.get $fd)))))"#;

/// How long a message may take to cross the feed and be delivered.
const PATIENCE: Duration = Duration::from_secs(60);

/// A binary program subscribed to POST messages whose `content.type` is `feed-test`; it
/// records each message it gets in its volume `feed`.
fn subscriber(store: &Store) -> Message {
    let wasm = wat::parse_str(RECORDER).unwrap();
    let code = store_code(store, &wasm, OWNER, 1.0, None);
    let runtime_ref = runtime::add_builtin(store, "wasi").unwrap();
    let content = json!({
        "type": "vm-function", "address": OWNER, "time": 5.0, "allow_amend": false,
        "code": {"encoding": "plain", "entrypoint": "main.wasm", "ref": code.item_hash,
                 "interface": "binary", "use_latest": false},
        "runtime": {"ref": runtime_ref, "use_latest": false, "comment": "wasi"},
        "on": {"http": false, "message": [{"type": "POST", "content": {"type": "feed-test"}}]},
        "environment": {}, "variables": {},
        "resources": {"vcpus": 1, "memory": 16, "seconds": 10},
        "volumes": [{"name": "feed", "mount": "/data", "persistence": "host", "size_mib": 1}],
    });
    let draft = sealed(message::build_inline(
        MessageType::Program,
        "ETH",
        OWNER,
        5.0,
        content,
    ));
    let msg = message::parse(&serde_json::to_vec(&draft.to_json()).unwrap()).unwrap();
    store.put_message(&msg).unwrap();
    msg
}

/// The item hashes of the messages the subscriber recorded, in order.
fn recorded(store: &Store) -> Vec<String> {
    let path = store.volume_dir(OWNER, "feed").unwrap().join("got");
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("a recorded line is not JSON ({e}): {line}"));
            v["item_hash"].as_str().unwrap().to_string()
        })
        .collect()
}

/// A POST message from `sender` whose `content.type` is `kind`, unique by `n`.
fn post_of(sender: &str, kind: &str, n: u32) -> Message {
    let time = 100.0 + f64::from(n);
    sealed(message::build_inline(
        MessageType::Post,
        "ETH",
        sender,
        time,
        json!({"type": kind, "address": sender, "time": time, "content": {"n": n}}),
    ))
}

/// Posts `msg` to the node at `base`, expecting it to be taken.
async fn post_to(base: &str, msg: &Message) {
    let response = client()
        .post(format!("{base}/api/v0/messages"))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&msg.to_json()).unwrap())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.text().await.unwrap_or_default();
    assert_eq!(status, 200, "posting {}: {body}", msg.item_hash);
}

/// Polls `cond` until it holds, failing with `what` and the last observation after
/// [`PATIENCE`].
async fn until<T: std::fmt::Debug>(what: &str, mut probe: impl FnMut() -> (bool, T)) {
    let started = std::time::Instant::now();
    loop {
        let (done, seen) = probe();
        if done {
            return;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "never {what}; last seen: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens the message feed of the node at `base` with `query`.
async fn feed(base: &str, query: &str) -> Socket {
    let url = format!("{}/api/ws0/messages{query}", base.replacen("http", "ws", 1));
    let (socket, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    socket
}

/// The next message of a feed (its JSON), failing after [`PATIENCE`].
async fn next_message(socket: &mut Socket) -> Value {
    use futures_util::StreamExt as _;
    use tokio_tungstenite::tungstenite::Message as Frame;
    loop {
        let frame = tokio::time::timeout(PATIENCE, socket.next())
            .await
            .expect("no frame in time")
            .expect("the feed ended")
            .expect("the feed failed");
        match frame {
            Frame::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
            Frame::Ping(_) | Frame::Pong(_) => {}
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_messages_sends_each_message_the_node_takes_in() {
    let a = Node::new().start(None).await;
    let base = a.url();
    // A bad filter is refused before the upgrade.
    let refused = tokio_tungstenite::connect_async(format!(
        "{}/api/ws0/messages?history=many",
        base.replacen("http", "ws", 1)
    ))
    .await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 422)
        }
        other => panic!("a bad history was not refused: {:?}", other.map(|_| ())),
    }

    let mut owners = feed(&base, &format!("?msgType=POST&addresses={OWNER}")).await;
    let from_mallory = post_of(MALLORY, "chat", 1);
    let from_owner = post_of(OWNER, "chat", 2);
    post_to(&base, &from_mallory).await;
    post_to(&base, &from_owner).await;
    // The filter passed over Mallory's message: the first frame is the owner's.
    assert_eq!(next_message(&mut owners).await, from_owner.to_json());

    // `history` replays the last messages first, oldest first, then the live ones follow.
    let mut everything = feed(&base, "?history=2").await;
    let later = post_of(OWNER, "chat", 3);
    post_to(&base, &later).await;
    for expected in [&from_mallory, &from_owner, &later] {
        assert_eq!(
            next_message(&mut everything).await["item_hash"],
            expected.item_hash.as_str()
        );
    }
    assert_eq!(
        next_message(&mut owners).await["item_hash"],
        later.item_hash.as_str()
    );

    // A message another process stores is sent as well (found by the store watcher).
    let stored = post_of(OWNER, "chat", 4);
    a.store.put_message(&stored).unwrap();
    assert_eq!(next_message(&mut everything).await, stored.to_json());

    // The node's shutdown closes the feed (and is not held up by it).
    a.shutdown().await;
    use futures_util::StreamExt as _;
    let end = tokio::time::timeout(PATIENCE, everything.next())
        .await
        .expect("the feed stayed open after the shutdown");
    assert!(
        matches!(
            end,
            None | Some(Err(_)) | Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_)))
        ),
        "{end:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_b_follows_node_a_feed_and_delivers_to_its_subscribers() {
    let a = Node::new().start(None).await;
    let b = Node::new();
    let program = subscriber(&b.store);
    let b = b.start(Some(a.url())).await;

    // Once a message posted to A reaches B's store, B follows A's feed (until then, posts
    // may precede B's subscription and are not caught up).
    let mut n = 0;
    let probe = loop {
        n += 1;
        let probe = post_of(OWNER, "other", n);
        post_to(&a.url(), &probe).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while !b.store.has_message(&probe.item_hash) && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        if b.store.has_message(&probe.item_hash) {
            break probe;
        }
        assert!(n < 30, "B never followed A's feed");
    };

    // A matching message posted to A reaches B's store and B's subscribed program.
    let wanted = post_of(OWNER, "feed-test", 100);
    post_to(&a.url(), &wanted).await;
    until("the message reached B's program", || {
        let got = recorded(&b.store);
        (got == [wanted.item_hash.as_str()], got)
    })
    .await;
    assert!(b.store.has_message(&wanted.item_hash));
    assert_eq!(
        b.store.get_message(&wanted.item_hash).unwrap().to_json(),
        wanted.to_json()
    );
    // The non-matching one is in B's store but was not delivered (it came before `wanted`).
    assert!(b.store.has_message(&probe.item_hash));
    assert!(!recorded(&b.store).contains(&probe.item_hash));
    let (status, body) = b.get("/about/executions/list").await;
    assert_eq!(status, 200, "{body}");
    let list: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list[&program.item_hash]["requests"], 1, "{list}");

    b.shutdown().await;
    a.shutdown().await;
}

/// A fake node whose feed sends, on the first connection, a frame that is not JSON, a message
/// whose `item_content` was altered (its item hash no longer matches) and one whose item hash
/// is not a sha256, then drops the connection; on every later connection, `good`. Counts the
/// connections.
async fn fake_feed(
    tampered: Value,
    good: Value,
) -> (
    String,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    tokio::task::JoinHandle<()>,
) {
    use axum::extract::ws::{Message as Frame, WebSocketUpgrade};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let connections = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    let app = axum::Router::new().route(
        "/api/ws0/messages",
        axum::routing::get(move |upgrade: WebSocketUpgrade| {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            let (tampered, good) = (tampered.clone(), good.clone());
            async move {
                upgrade.on_upgrade(move |mut socket| async move {
                    if n == 0 {
                        let mut bad_hash = good.clone();
                        bad_hash["item_hash"] = json!("../../not-a-hash");
                        for text in [
                            "this is not JSON".to_string(),
                            tampered.to_string(),
                            bad_hash.to_string(),
                        ] {
                            let _ = socket.send(Frame::Text(text.into())).await;
                        }
                        return;
                    }
                    let _ = socket.send(Frame::Text(good.to_string().into())).await;
                    while let Some(Ok(_)) = socket.recv().await {}
                })
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let serving = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (format!("http://{addr}"), connections, serving)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_feed_message_is_refused_and_the_feed_reconnects() {
    // A real message, with its content changed after it was hashed.
    let original = post_of(OWNER, "feed-test", 7);
    let mut tampered = original.to_json();
    let mut content: Value =
        serde_json::from_str(tampered["item_content"].as_str().unwrap()).unwrap();
    content["content"]["n"] = json!(8);
    tampered["item_content"] = json!(content.to_string());
    tampered["content"] = content;
    let good = post_of(OWNER, "feed-test", 9);
    let (api, connections, fake) = fake_feed(tampered, good.to_json()).await;

    let b = Node::new();
    subscriber(&b.store);
    let b = b.start(Some(api)).await;
    until("the good message reached B's program", || {
        let got = recorded(&b.store);
        (got == [good.item_hash.as_str()], got)
    })
    .await;
    // The bad frames came first, on a connection that dropped: refused, skipped, reconnected.
    assert!(connections.load(std::sync::atomic::Ordering::SeqCst) >= 2);
    assert!(!b.store.has_message(&original.item_hash));
    let listed = b
        .get(&format!(
            "/api/v0/messages.json?hashes={}",
            original.item_hash
        ))
        .await;
    assert_eq!(listed.0, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&listed.1).unwrap()["messages"],
        json!([]),
        "the tampered message was stored"
    );
    assert_eq!(recorded(&b.store), [good.item_hash.as_str()]);
    b.shutdown().await;
    fake.abort();
}

// --- The /api/v0 routes ----------------------------------------------------------------------

/// The router of a node over `store` (no socket).
fn router(store: &Store) -> axum::Router {
    let state = server::AppState::new(Node::config(None), store.clone()).unwrap();
    server::router(state)
}

async fn call(app: &axum::Router, uri: &str) -> (u16, Vec<u8>) {
    use tower::ServiceExt as _;
    let request = axum::http::Request::get(uri)
        .header("host", "localhost")
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let body = axum::body::to_bytes(response.into_body(), 16 << 20)
        .await
        .map(|b| b.to_vec())
        .unwrap_or_else(|e| format!("(cut off: {e})").into_bytes());
    (status, body)
}

async fn listing(app: &axum::Router, query: &str) -> Value {
    let (status, body) = call(app, &format!("/api/v0/messages.json?{query}")).await;
    assert_eq!(status, 200, "{query}: {}", String::from_utf8_lossy(&body));
    serde_json::from_slice(&body).unwrap()
}

fn hashes_of(listing: &Value) -> Vec<String> {
    listing["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["item_hash"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_json_filters_by_hashes_refs_owners_and_type() {
    let node = Node::new();
    let s = &node.store;
    let v1 = store_code(s, &says("one"), OWNER, 1.0, None);
    let v2 = store_code(s, &says("two"), OWNER, 2.0, Some(&v1.item_hash));
    let v3 = store_code(s, &says("three"), MALLORY, 3.0, Some(&v1.item_hash));
    let prog = program(s, &v1.item_hash, true);
    let app = router(s);

    // By hash: the message in its final form, verifiable by its item hash.
    let got = listing(
        &app,
        &format!("hashes={},{}", prog.item_hash, "cd".repeat(32)),
    )
    .await;
    assert_eq!(hashes_of(&got), [prog.item_hash.as_str()]);
    assert_eq!(got["pagination_total"], 1);
    assert_eq!(got["pagination_item"], "messages");
    let listed = message::parse_value(&got["messages"][0]).unwrap();
    assert!(listed.hash_verified);
    assert_eq!(listed, prog);

    // Amends by ref and owner, newest first (what a fetching node asks for).
    let q = format!(
        "msgType=STORE&refs={}&owners={OWNER}&sort_order=-1",
        v1.item_hash
    );
    assert_eq!(hashes_of(&listing(&app, &q).await), [v2.item_hash.as_str()]);
    let q = format!("msgType=STORE&refs={}", v1.item_hash);
    assert_eq!(
        hashes_of(&listing(&app, &q).await),
        [v3.item_hash.as_str(), v2.item_hash.as_str()]
    );
    let q = format!("refs={}&sort_order=1", v1.item_hash);
    assert_eq!(
        hashes_of(&listing(&app, &q).await),
        [v2.item_hash.as_str(), v3.item_hash.as_str()]
    );

    // By type and by sender.
    assert_eq!(
        hashes_of(&listing(&app, "msgType=PROGRAM").await),
        [prog.item_hash.as_str()]
    );
    let by_mallory = listing(&app, &format!("addresses={MALLORY}")).await;
    assert_eq!(hashes_of(&by_mallory), [v3.item_hash.as_str()]);
    assert!(hashes_of(&listing(&app, "owners=0xnobody").await).is_empty());
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_json_sorts_and_paginates_like_aleph() {
    let node = Node::new();
    let s = &node.store;
    let all: Vec<String> = (0..5)
        .map(|i| store_code(s, &says(&format!("v{i}")), OWNER, 10.0 + i as f64, None).item_hash)
        .collect();
    let app = router(s);
    let newest_first: Vec<String> = all.iter().rev().cloned().collect();
    assert_eq!(
        hashes_of(&listing(&app, "msgType=STORE").await),
        newest_first
    );

    let page = listing(&app, "msgType=STORE&pagination=2&page=2").await;
    assert_eq!(hashes_of(&page), newest_first[2..4]);
    assert_eq!(page["pagination_page"], 2);
    assert_eq!(page["pagination_per_page"], 2);
    assert_eq!(page["pagination_total"], 5);
    let last = listing(&app, "msgType=STORE&pagination=2&page=3&sort_order=1").await;
    assert_eq!(hashes_of(&last), [all[4].as_str()]);
    let beyond = listing(&app, "msgType=STORE&pagination=2&page=9").await;
    assert!(hashes_of(&beyond).is_empty());
    let everything = listing(&app, "pagination=0").await;
    assert_eq!(everything["pagination_total"], 5);
    assert_eq!(hashes_of(&everything).len(), 5);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_json_refuses_bad_parameters_with_422() {
    let node = Node::new();
    let app = router(&node.store);
    for query in ["sort_order=2", "msgType=BOGUS", "page=0", "pagination=many"] {
        let (status, body) = call(&app, &format!("/api/v0/messages.json?{query}")).await;
        assert_eq!(status, 422, "{query}");
        let error: Value = serde_json::from_slice(&body).unwrap();
        let name = query.split('=').next().unwrap();
        assert!(
            error["error"].as_str().unwrap().starts_with(name),
            "{error}"
        );
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_raw_serves_objects_and_404s_absent_ones() {
    let node = Node::new();
    let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let hash = node.store.put_object(&bytes).unwrap();
    let app = router(&node.store);

    let (status, body) = call(&app, &format!("/api/v0/storage/raw/{hash}")).await;
    assert_eq!(status, 200);
    assert_eq!(body, bytes);
    let (status, body) = call(&app, &format!("/api/v0/storage/raw/{}", "0".repeat(64))).await;
    assert_eq!(status, 404, "{}", String::from_utf8_lossy(&body));
    let (status, _) = call(&app, "/api/v0/storage/raw/..%2F..%2Fetc%2Fpasswd").await;
    assert_eq!(status, 400);
    let (status, _) = call(&app, "/api/v0/storage/raw/ABC").await;
    assert_eq!(status, 400);

    // A stored object that no longer matches its hash is never served whole.
    let path = node.store.object_path(&hash).unwrap();
    let mut corrupt = bytes.clone();
    corrupt[100_000] ^= 0xff;
    std::fs::write(&path, &corrupt).unwrap();
    let (status, body) = call(&app, &format!("/api/v0/storage/raw/{hash}")).await;
    assert!(
        status != 200 || body != corrupt,
        "a corrupt object was served whole"
    );
    node.shutdown().await;
}

// --- An API node of the network --------------------------------------------------------------

/// A POST message as an API node of the network lists it (`/api/v0/messages.json`): the
/// envelope with the node's bookkeeping (`_id`, `confirmed`, `confirmations`, `size`) and the
/// parsed `content` beside `item_content`. Signed on Ethereum; from the public record.
fn recorded_eth_post() -> Value {
    let item_content = r#"{"address":"0xA07B1214bAe0D5ccAA25449C3149c0aC83658874","time":1730410918.0924816,"content":{"type":"polygon","address":"0xA07B1214bAe0D5ccAA25449C3149c0aC83658874","content":{"body":"This message was posted from the typescript-SDK test suite"},"time":1689163528.372},"type":"test"}"#;
    json!({
        "_id": {"$oid": "6724a9a6c7e1b4a9e1c3f0a1"},
        "chain": "ETH",
        "item_hash": "f524a258d87f1771e8538fd4fd91acdcc527c3b7f138fafd6ff89a5fcf97c3b7",
        "sender": "0xA07B1214bAe0D5ccAA25449C3149c0aC83658874",
        "type": "POST",
        "channel": "ALEPH-CLOUDSOLUTIONS",
        "confirmed": true,
        "content": serde_json::from_str::<Value>(item_content).unwrap(),
        "item_content": item_content,
        "item_type": "inline",
        "signature": "0x99efc66c781c889e1f21c680869c832141dcee90189e75e85f570b8b49e72dee0338d77c214ae55bfcb886bbd7bac6dc4dcfda4eb0d2c47ed93d51b36b7259b01c",
        "size": item_content.len(),
        "time": 1730410918.092607,
        "confirmations": [{"chain": "ETH", "height": 21093424, "hash": "0x5e1c0c7f9b8a3d2e4f6a7b8c9d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f7a8b9c0"}],
    })
}

/// [`recorded_eth_post`] "sent" by someone else: its content names another address and its
/// item hash is consistent again, but the signature does not hold.
fn forged_eth_post() -> Value {
    let mut forged = recorded_eth_post();
    let other = "0x2c7536E3605D9C16a7a3D7b1898e529396a65c23";
    let item_content = forged["item_content"]
        .as_str()
        .unwrap()
        .replace("0xA07B1214bAe0D5ccAA25449C3149c0aC83658874", other);
    forged["item_hash"] = json!(message::sha256_hex(item_content.as_bytes()));
    forged["content"] = serde_json::from_str(&item_content).unwrap();
    forged["item_content"] = json!(item_content);
    forged["sender"] = json!(other);
    forged
}

/// An API node serving `messages` in the network's listing shape (`?hashes=` filters them).
async fn api_node(messages: Vec<Value>) -> (String, tokio::task::JoinHandle<()>) {
    let app = axum::Router::new().route(
        "/api/v0/messages.json",
        axum::routing::get(
            move |query: axum::extract::Query<BTreeMap<String, String>>| {
                let messages = messages.clone();
                async move {
                    let wanted: Vec<&str> = query
                        .get("hashes")
                        .map(|h| h.split(',').collect())
                        .unwrap_or_default();
                    let listed: Vec<Value> = messages
                        .into_iter()
                        .filter(|m| {
                            wanted.is_empty() || wanted.contains(&m["item_hash"].as_str().unwrap())
                        })
                        .collect();
                    axum::Json(json!({
                        "messages": listed,
                        "pagination_page": 1,
                        "pagination_total": listed.len(),
                        "pagination_per_page": 20,
                        "pagination_item": "messages",
                    }))
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let serving = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (format!("http://{addr}"), serving)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_from_an_api_node_in_the_networks_shape_are_verified_before_they_are_stored() {
    let genuine = recorded_eth_post();
    let forged = forged_eth_post();
    let (api, serving) = api_node(vec![genuine.clone(), forged.clone()]).await;
    let node = Node::new();
    let store = node
        .store
        .clone()
        .with_unsigned(aleph_wasm::store::UnsignedMessages::Refuse);
    let remote = aleph_wasm::store::remote::Remote::new(&api).unwrap();

    let hash = genuine["item_hash"].as_str().unwrap();
    let msg = remote.fetch_message(&store, hash).await.unwrap();
    assert_eq!(msg.sender, "0xA07B1214bAe0D5ccAA25449C3149c0aC83658874");
    assert!(store.has_message(hash));

    let forged_hash = forged["item_hash"].as_str().unwrap();
    let err = remote.fetch_message(&store, forged_hash).await.unwrap_err();
    assert!(err.is_refused_message(), "{err}");
    assert!(err.to_string().contains("not by the sender"), "{err}");
    assert!(
        !store.has_message(forged_hash),
        "a forged message was stored"
    );
    serving.abort();
}

/// A key the owner delegates to (Hardhat's second test account).
const DELEGATE_KEY: &str = "59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delegates_amend_is_followed_once_the_owners_delegation_is_fetched() {
    let a = Node::new();
    let v1 = store_code(&a.store, &says("one"), OWNER, 1.0, None);
    let delegate = message::Signer::parse(DELEGATE_KEY.as_bytes()).unwrap();
    // The owner lets the delegate post STORE messages for it.
    let security = json!({
        "address": OWNER, "key": "security", "time": 1.5,
        "content": {"authorizations": [{"address": delegate.address(), "types": ["STORE"]}]},
    });
    let security = sealed(message::build_inline(
        MessageType::Aggregate,
        "ETH",
        OWNER,
        1.5,
        security,
    ));
    a.store.put_message(&security).unwrap();
    let two = says("two");
    let file = a.store.put_object(&two).unwrap();
    let content = json!({
        "address": OWNER, "time": 2.0, "item_type": "storage", "item_hash": file,
        "size": two.len(), "ref": v1.item_hash,
    });
    let mut amend =
        message::build_inline(MessageType::Store, "ETH", delegate.address(), 2.0, content);
    delegate.sign(&mut amend).unwrap();
    a.store.put_message(&amend).unwrap();
    let msg = program(&a.store, &v1.item_hash, true);
    let a = a.start(None).await;
    // B takes only signed messages, as `serve` does.
    let mut b = Node::new();
    b.store = b
        .store
        .clone()
        .with_unsigned(aleph_wasm::store::UnsignedMessages::Refuse);
    let b = b.start(Some(a.url())).await;

    let (status, body) = b.get(&format!("/vm/{}/", msg.item_hash)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body, "two\n",
        "the delegate's amend, authorised by the owner"
    );
    assert!(b.store.has_message(&security.item_hash));
    assert!(b.store.has_message(&amend.item_hash));
    b.shutdown().await;
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_nodes_feed_frames_are_verified_before_they_are_stored() {
    // The feed of an API node of the network sends messages in its listing shape (`_id`,
    // `confirmed`, `confirmations`, `size`, the parsed `content` beside `item_content`). A frame
    // whose sender was changed (content and item hash made consistent again) is refused; the
    // genuine frame, on the next connection, is verified and stored.
    let genuine = recorded_eth_post();
    let forged = forged_eth_post();
    let (api, connections, fake) = fake_feed(forged.clone(), genuine.clone()).await;

    let b = Node::new();
    let store = b.store.clone();
    let b = b.start(Some(api)).await;
    let hash = genuine["item_hash"].as_str().unwrap().to_string();
    until("the genuine frame was stored", || {
        (store.has_message(&hash), store.has_message(&hash))
    })
    .await;
    assert!(connections.load(std::sync::atomic::Ordering::SeqCst) >= 2);
    let forged_hash = forged["item_hash"].as_str().unwrap();
    assert!(
        !store.has_message(forged_hash),
        "the forged frame was stored"
    );
    let stored = store.get_message(&hash).unwrap();
    assert_eq!(stored.sender, "0xA07B1214bAe0D5ccAA25449C3149c0aC83658874");
    b.shutdown().await;
    fake.abort();
}
