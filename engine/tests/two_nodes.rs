//! Two nodes: node B, started with node A's API, serves programs that only A's store holds —
//! fetching the messages, amends and objects on first use and verifying every hash before
//! storing anything. Real servers on loopback ports (port 0); a fake node in the test serves
//! real messages with altered bytes. Also the `/api/v0` routes alone, through the router.
//!
//! The programs are binary (CGI) WebAssembly-text guests compiled here with `wat`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aleph_wasm::message::{self, Message, MessageType};
use aleph_wasm::server::{self, Server, ServerConfig};
use aleph_wasm::{Store, runtime};
use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// What the suites keep between runs: compiled modules.
const CACHE: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/aleph-wasm-test-cache");
/// The CGI hello example.
const CGI_HELLO: &str = include_str!("../../examples/cgi-hello/hello.wat");
/// The owner of the programs and code.
const OWNER: &str = "0x00000000000000000000000000000000000000a1";
/// Someone else.
const MALLORY: &str = "0x00000000000000000000000000000000000000e7";

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
    let msg = message::build_inline(MessageType::Store, "ETH", owner, time, content);
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
    let draft = message::build_inline(MessageType::Program, "ETH", OWNER, 5.0, content);
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
    // The first object fetched is the runtime's manifest; the refusal names its hash.
    assert!(
        body.contains(&runtime.file_hash) || body.contains(&code_file),
        "the refused hash is named: {body}"
    );
    assert!(b.objects().is_empty(), "stored: {:?}", b.objects());
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
    use std::io::BufRead as _;
    let a = Node::new();
    let (msg, _) = hello(&a.store);
    let a = a.start(None).await;
    let b = Node::new();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_aleph-wasm"))
        .arg("--store")
        .arg(b.store.root())
        .arg("--module-cache")
        .arg(Path::new(CACHE).join("modules"))
        .args(["serve", "--listen", "127.0.0.1:0", "--api", &a.url()])
        .env_remove("RUST_LOG")
        .env_remove("ALEPH_WASM_STORE")
        .env_remove("ALEPH_WASM_API")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        line
    });
    let line = tokio::time::timeout(Duration::from_secs(60), line)
        .await
        .expect("`serve` printed no address")
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .map(str::to_string);
    let answer = match &base {
        Some(base) => Some(get(&format!("{base}/vm/{}/cli", msg.item_hash)).await),
        None => None,
    };
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;
    let (status, body) = answer.unwrap_or_else(|| panic!("unexpected first line {line:?}"));
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
