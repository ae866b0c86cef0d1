//! The node service end to end: real servers on loopback ports (port 0) driven by a real HTTP
//! client (reqwest), plus the router without a socket and the `serve` command under SIGTERM.
//!
//! Binary programs are WebAssembly-text guests compiled here with `wat` (the CGI hello
//! example, and small guests that loop, sleep or exit). The Python hello example runs on the
//! python-3.12 runtime, sharing the interpreter copy and compiled-module cache of
//! `tests/python.rs` (`target/tmp/aleph-wasm-test-cache/`). Each test has its own store.

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aleph_wasm::message::{self, Message, MessageType};
use aleph_wasm::server::{self, ServerConfig};
use aleph_wasm::volumes::archive::{self, PackFormat};
use aleph_wasm::{Store, runtime};
use common::http::{Answer, client};
use common::node::{Node, wait_running, wait_usage};
use common::serve::ServeProcess;
use serde_json::{Value, json};

/// The binary under test (for the `serve` command).
const BIN: &str = env!("CARGO_BIN_EXE_aleph-wasm");
/// What the suites keep between runs: the interpreter copy and compiled modules.
const CACHE: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/aleph-wasm-test-cache");
/// The CGI hello example.
const CGI_HELLO: &str = include_str!("../../examples/cgi-hello/hello.wat");
/// The Python hello example.
const PYTHON_HELLO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/python-hello");
/// The python-3.12 runtime's source manifest (for the interpreter's sha256).
/// The owner of the messages the tests write.
const OWNER: &str = "0x00000000000000000000000000000000000000c5";
/// The routing domain of the host-based tests.
const DOMAIN: &str = "node.test";
/// The control token of the tests that enable control routes.
const TOKEN: &str = "s3cret-token";

// --- Guests ----------------------------------------------------------------------------------

/// A WAT data segment at `at` holding the CGI response `Content-Type: text/plain` + `body`,
/// and its length.
fn cgi_response(at: u32, body: &str) -> (String, usize) {
    let text = format!("Content-Type: text/plain\r\n\r\n{body}");
    let escaped: String = text.bytes().map(|b| format!("\\{b:02x}")).collect();
    (format!("(data (i32.const {at}) \"{escaped}\")"), text.len())
}

const WRITE_FN: &str = r#"
  (func $write (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))"#;

/// Answers "awake" — unless the request has a body: then it spins forever.
fn spinner() -> String {
    let (data, len) = cgi_response(256, "awake\n");
    format!(
        r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  {data}
  {WRITE_FN}
  (func (export "_start")
    (i32.store (i32.const 16) (i32.const 1024))
    (i32.store (i32.const 20) (i32.const 64))
    (drop (call $fd_read (i32.const 0) (i32.const 16) (i32.const 1) (i32.const 24)))
    (if (i32.load (i32.const 24)) (then (loop $spin (br $spin))))
    (call $write (i32.const 256) (i32.const {len}))))"#
    )
}

/// Sleeps `ms` milliseconds in the host (a WASI clock subscription), then answers "rested".
fn sleeper(ms: u64) -> String {
    let (data, len) = cgi_response(1024, "rested\n");
    format!(
        r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  {data}
  {WRITE_FN}
  (func (export "_start")
    {sleep}
    (call $write (i32.const 1024) (i32.const {len}))))"#,
        sleep = common::wasi_sleep(ms)
    )
}

/// Answers "rested" — after sleeping `ms` milliseconds in the host when the request has a
/// body, at once otherwise: a POST holds an execution slot, a GET to the same program is
/// quick.
fn napper(ms: u64) -> String {
    let (data, len) = cgi_response(2048, "rested\n");
    format!(
        r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  {data}
  {WRITE_FN}
  (func (export "_start")
    (i32.store (i32.const 16) (i32.const 4096))
    (i32.store (i32.const 20) (i32.const 64))
    (drop (call $fd_read (i32.const 0) (i32.const 16) (i32.const 1) (i32.const 24)))
    (if (i32.load (i32.const 24)) (then
      {sleep}))
    (call $write (i32.const 2048) (i32.const {len}))))"#,
        sleep = common::wasi_sleep(ms)
    )
}

/// Exits with code 3 without writing anything.
const EXIT_3: &str = r#"(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (call $exit (i32.const 3))))"#;

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
fn binary_program(store: &Store, wat: &str, seconds: u64, http: bool) -> Message {
    let wasm = wat::parse_str(wat).unwrap_or_else(|e| panic!("guest does not compile: {e}"));
    let code_hash = store.put_object(&wasm).unwrap();
    let code = store
        .add_store_message(&code_hash, wasm.len() as u64, OWNER, 1.0, None)
        .unwrap();
    let runtime_ref = runtime::add_builtin(store, "wasi").unwrap();
    put_program(
        store,
        json!({
            "type": "vm-function",
            "address": OWNER,
            "time": 2.0,
            "allow_amend": false,
            "code": {"encoding": "plain", "entrypoint": "main.wasm", "ref": code.item_hash,
                     "interface": "binary", "use_latest": false},
            "runtime": {"ref": runtime_ref, "use_latest": false, "comment": "wasi"},
            "on": {"http": http, "persistent": false},
            "environment": {},
            "resources": {"vcpus": 1, "memory": 16, "seconds": seconds},
            "variables": {},
            "volumes": [],
        }),
    )
}

/// The code ref of a program.
fn code_ref(msg: &Message) -> String {
    match &msg.program().unwrap().code.source {
        message::CodeSource::Ref(r) => r.reference.clone(),
        message::CodeSource::Inline(_) => panic!("inline code has no ref"),
    }
}

// --- Servers and requests --------------------------------------------------------------------

fn test_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("aleph-wasm-server-")
        .tempdir()
        .unwrap()
}

/// `http://<label of item_hash>.<DOMAIN>:<port><path>`: the host-based route to a program.
fn host_url(node: &Node, item_hash: &str, path: &str) -> String {
    let label = server::vm::host_label(item_hash).unwrap();
    format!("http://{label}.{DOMAIN}:{}{path}", node.addr().port())
}

// --- Prometheus text -------------------------------------------------------------------------

/// One sample of a metrics exposition.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Parses the text format strictly: every line is a `# HELP|TYPE|UNIT|EOF` comment or
/// `name{label="value",…} value`; every sample belongs to a family declared by `# TYPE`.
fn parse_metrics(text: &str) -> Result<Vec<Sample>, String> {
    let mut families: Vec<String> = Vec::new();
    let mut samples = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let bad = |why: &str| format!("line {}: {why}: {line:?}", n + 1);
        if line.is_empty() {
            return Err(bad("empty line"));
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.split_whitespace();
            match words.next() {
                Some("TYPE") => {
                    let name = words.next().ok_or_else(|| bad("TYPE without a name"))?;
                    let kind = words.next().ok_or_else(|| bad("TYPE without a type"))?;
                    if !is_metric_name(name) {
                        return Err(bad("bad metric name"));
                    }
                    if ![
                        "counter",
                        "gauge",
                        "histogram",
                        "summary",
                        "unknown",
                        "info",
                    ]
                    .contains(&kind)
                    {
                        return Err(bad("unknown type"));
                    }
                    families.push(name.to_string());
                }
                Some("HELP" | "UNIT" | "EOF") => {}
                _ => return Err(bad("unknown comment")),
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').ok_or_else(|| bad("no value"))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().map_err(|_| bad("value is not a number"))?,
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((name, rest)) => {
                let inner = rest
                    .strip_suffix('}')
                    .ok_or_else(|| bad("unclosed labels"))?;
                (name, parse_labels(inner).map_err(|e| bad(&e))?)
            }
        };
        if !is_metric_name(name) {
            return Err(bad("bad metric name"));
        }
        if !families.iter().any(|f| name.starts_with(f.as_str())) {
            return Err(bad("sample of an undeclared family"));
        }
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    Ok(samples)
}

fn parse_labels(mut s: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    while !s.is_empty() {
        let (key, rest) = s.split_once("=\"").ok_or("a label without =\"")?;
        if !is_metric_name(key) || key.contains(':') {
            return Err(format!("bad label name {key:?}"));
        }
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    _ => return Err("bad escape".into()),
                },
                Some((_, c)) => value.push(c),
                None => return Err("unterminated label value".into()),
            }
        };
        labels.insert(key.to_string(), value);
        s = &rest[end + 1..];
        s = s.strip_prefix(',').unwrap_or(s);
    }
    Ok(labels)
}

fn sample<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Option<&'a Sample> {
    samples.iter().find(|s| {
        s.name == name
            && labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
    })
}

// --- Tests: binary programs ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_unknown_refs() {
    let node = Node::new();
    let file = node.store.put_object(b"not a program").unwrap();
    let store_msg = node
        .store
        .add_store_message(&file, 13, OWNER, 1.0, None)
        .unwrap();
    let node = node.start(|_, _| {}).await;
    let ok = node.get("/healthz").await.status(200);
    assert_eq!(ok.body.trim(), "ok", "{ok}");
    node.get("/no/such/route").await.status(404);
    node.get(&format!("/vm/{}/", "0".repeat(64)))
        .await
        .status(404)
        .has("no program");
    node.get("/vm/../../etc/passwd").await.status(404);
    // A STORE message is not a program.
    node.get(&format!("/vm/{}/", store_msg.item_hash))
        .await
        .status(404)
        .has("no program");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cgi_program_answers_through_vm_paths() {
    let node = Node::new();
    let msg = binary_program(&node.store, CGI_HELLO, 5, true);
    let node = node.start(|_, _| {}).await;
    let hash = &msg.item_hash;

    let a = Answer::of(
        node.client
            .get(node.url(&format!("/vm/{hash}/hello/world?name=aleph")))
            .header("X-Custom", "yes")
            .header("Keep-Alive", "timeout=5")
            .header("Connection", "keep-alive, X-Secret")
            .header("X-Secret", "hop"),
    )
    .await
    .status(200)
    .has("Hello from aleph-wasm!")
    .has("REQUEST_METHOD=GET")
    .has("PATH_INFO=/hello/world")
    .has("QUERY_STRING=name=aleph")
    .has("HTTP_X_CUSTOM=yes")
    .has("REMOTE_ADDR=127.0.0.1")
    .lacks("HTTP_KEEP_ALIVE")
    .lacks("HTTP_X_SECRET")
    .lacks("HTTP_CONNECTION");
    assert_eq!(
        a.header("aleph-program-itemhash"),
        Some(hash.as_str()),
        "{a}"
    );
    assert_eq!(
        a.header("aleph-program-code-ref"),
        Some(code_ref(&msg).as_str()),
        "{a}"
    );
    assert_eq!(a.header("content-type"), Some("text/plain"), "{a}");

    // `/vm/{ref}` and `/vm/{ref}/` reach the program's root.
    node.get(&format!("/vm/{hash}"))
        .await
        .status(200)
        .has("PATH_INFO=/\n");
    node.get(&format!("/vm/{hash}/"))
        .await
        .status(200)
        .has("PATH_INFO=/\n");
    // Methods and bodies go through.
    node.post(&format!("/vm/{hash}/submit"), "hello")
        .await
        .status(200)
        .has("REQUEST_METHOD=POST")
        .has("CONTENT_LENGTH=5");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_based_routing_reaches_the_program_named_by_the_label() {
    let node = Node::new();
    let msg = binary_program(&node.store, CGI_HELLO, 5, true);
    let bogus = format!("{}.{DOMAIN}", "a".repeat(52));
    let node = node.start(|c, _| c.domain = Some(DOMAIN.to_string())).await;

    let a = Answer::of(
        node.client
            .get(host_url(&node, &msg.item_hash, "/deep/path?x=1"))
            .header("X-Via", "host"),
    )
    .await
    .status(200)
    .has("PATH_INFO=/deep/path")
    .has("QUERY_STRING=x=1")
    .has("HTTP_X_VIA=host")
    .has(&format!(
        "SERVER_NAME={}.{DOMAIN}\n",
        server::vm::host_label(&msg.item_hash).unwrap()
    ));
    assert_eq!(
        a.header("aleph-program-itemhash"),
        Some(msg.item_hash.as_str()),
        "{a}"
    );
    // Node routes below the program's host are the program's, not the node's.
    node.get("/healthz").await.status(200);
    Answer::of(node.client.get(host_url(&node, &msg.item_hash, "/healthz")))
        .await
        .status(200)
        .has("PATH_INFO=/healthz");
    // A label that decodes to no stored program, and one that is not base32.
    Answer::of(
        node.client
            .get(format!("http://{bogus}:{}/", node.addr().port())),
    )
    .await
    .status(404)
    .has("no program");
    Answer::of(node.client.get(format!(
        "http://www.{DOMAIN}:{}/healthz",
        node.addr().port()
    )))
    .await
    .status(404)
    .has("does not name a program");
    // The domain itself serves the node's routes.
    Answer::of(
        node.client
            .get(format!("http://{DOMAIN}:{}/healthz", node.addr().port())),
    )
    .await
    .status(200);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_without_on_http_is_not_reachable() {
    let node = Node::new();
    let msg = binary_program(&node.store, CGI_HELLO, 5, false);
    let node = node.start(|_, _| {}).await;
    let a = node
        .get(&format!("/vm/{}/", msg.item_hash))
        .await
        .status(404)
        .has("does not accept HTTP requests")
        .lacks("Hello from aleph-wasm");
    assert_eq!(
        a.header("aleph-program-itemhash"),
        Some(msg.item_hash.as_str())
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_its_seconds_a_program_gets_504_and_the_next_request_succeeds() {
    let node = Node::new();
    let msg = binary_program(&node.store, &spinner(), 1, true);
    let node = node.start(|_, _| {}).await;
    let path = format!("/vm/{}/", msg.item_hash);
    let started = Instant::now();
    let a = node
        .post(&path, "spin")
        .await
        .status(504)
        .has("time limit (1 s)");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        a.header("aleph-program-itemhash"),
        Some(msg.item_hash.as_str())
    );
    node.get(&path).await.status(200).has("awake");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_that_exits_without_answering_gets_502_with_a_short_reason() {
    let node = Node::new();
    let msg = binary_program(&node.store, EXIT_3, 5, true);
    let node = node.start(|_, _| {}).await;
    let store_root = node.store.root().to_string_lossy().into_owned();
    node.get(&format!("/vm/{}/", msg.item_hash))
        .await
        .status(502)
        .has("exited with code 3")
        .lacks(&store_root)
        .lacks("/tmp");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_node_without_a_queue_answers_503_with_retry_after() {
    let node = Node::new();
    let slow = binary_program(&node.store, &sleeper(1500), 10, true);
    let fast = binary_program(&node.store, CGI_HELLO, 5, true);
    let node = node
        .start(|c, _| {
            c.max_concurrent = 1;
            c.queue_limit = 0;
        })
        .await;
    let slow_url = node.url(&format!("/vm/{}/", slow.item_hash));
    let first = tokio::spawn(Answer::of(node.client.get(slow_url)));
    wait_running(&node, 1).await;
    let full = node
        .get(&format!("/vm/{}/", fast.item_hash))
        .await
        .status(503)
        .has("request queue is full");
    assert_eq!(full.header("retry-after"), Some("1"), "{full}");
    first.await.unwrap().status(200).has("rested");
    node.get(&format!("/vm/{}/", fast.item_hash))
        .await
        .status(200);
    node.shutdown().await;
}

/// Waits until the node reports `n` requests waiting for an execution slot.
async fn wait_queued(node: &Node, n: u64) {
    wait_usage(node, &format!("{n} requests queued"), |u| {
        u["executions"]["queued"].as_u64() == Some(n)
    })
    .await;
}

/// The node's metrics, parsed.
async fn metrics(node: &Node) -> (Vec<Sample>, String) {
    let m = node.get("/metrics").await.status(200);
    let samples = parse_metrics(&m.body).unwrap_or_else(|e| panic!("{e}\n{m}"));
    (samples, m.body)
}

/// How long the program holding the only execution slot sleeps in the queue tests: far longer
/// than the few requests each test sends meanwhile take, even on a loaded machine.
const HOLD_MS: u64 = 4000;

/// Starts a POST to `program` (a [`napper`]) that holds the node's only execution slot for
/// [`HOLD_MS`]; returns once it runs.
async fn hold_the_slot(node: &Node, program: &Message) -> tokio::task::JoinHandle<Answer> {
    let url = node.url(&format!("/vm/{}/", program.item_hash));
    let holder = tokio::spawn(Answer::of(node.client.post(url).body("nap")));
    wait_running(node, 1).await;
    holder
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_execution_slot_concurrent_requests_queue_and_all_succeed() {
    const N: u64 = 8;
    let node = Node::new();
    let program = binary_program(&node.store, &napper(HOLD_MS), 10, true);
    let node = node.start(|c, _| c.max_concurrent = 1).await;
    let holder = hold_the_slot(&node, &program).await;
    let url = node.url(&format!("/vm/{}/", program.item_hash));
    let waiting: Vec<_> = (0..N)
        .map(|_| tokio::spawn(Answer::of(node.client.get(&url))))
        .collect();
    // All of them wait in line while the slot is held; none is refused.
    wait_queued(&node, N).await;
    let (samples, body) = metrics(&node).await;
    let queued = sample(&samples, "aleph_wasm_queued_requests", &[]);
    assert_eq!(queued.map(|s| s.value), Some(N as f64), "{body}");
    holder.await.unwrap().status(200).has("rested");
    for answer in waiting {
        answer.await.unwrap().status(200).has("rested");
    }

    let (samples, body) = metrics(&node).await;
    let value =
        |name: &str, labels: &[(&str, &str)]| sample(&samples, name, labels).map(|s| s.value);
    assert_eq!(
        value("aleph_wasm_queued_requests", &[]),
        Some(0.0),
        "{body}"
    );
    assert_eq!(
        value("aleph_wasm_executions_total", &[("outcome", "ok")]),
        Some((N + 1) as f64),
        "{body}"
    );
    assert_eq!(
        value("aleph_wasm_program_responses_total", &[("code", "503")]),
        None,
        "{body}"
    );
    assert_eq!(
        value(
            "aleph_wasm_refused_requests_total",
            &[("reason", "queue_full")]
        ),
        None,
        "{body}"
    );
    let usage = node.json("/about/usage/system").await;
    assert_eq!(usage["executions"]["queued"], 0, "{usage}");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_503_naming_the_queue() {
    const BURST: usize = 5;
    let node = Node::new();
    let program = binary_program(&node.store, &napper(HOLD_MS), 10, true);
    let node = node
        .start(|c, _| {
            c.max_concurrent = 1;
            c.queue_limit = 1;
        })
        .await;
    let holder = hold_the_slot(&node, &program).await;
    let url = node.url(&format!("/vm/{}/", program.item_hash));
    let queued = tokio::spawn(Answer::of(node.client.get(&url)));
    wait_queued(&node, 1).await;
    // The slot is held and the queue's one place taken: a burst is refused at once.
    let burst: Vec<_> = (0..BURST)
        .map(|_| tokio::spawn(Answer::of(node.client.get(&url))))
        .collect();
    for answer in burst {
        let refused = answer
            .await
            .unwrap()
            .status(503)
            .has("request queue is full")
            .has("1 requests (the queue's bound)");
        assert_eq!(refused.header("retry-after"), Some("1"), "{refused}");
        assert_eq!(
            refused.header("aleph-program-itemhash"),
            Some(program.item_hash.as_str()),
            "{refused}"
        );
    }
    holder.await.unwrap().status(200).has("rested");
    queued.await.unwrap().status(200).has("rested");

    let (samples, body) = metrics(&node).await;
    let value =
        |name: &str, labels: &[(&str, &str)]| sample(&samples, name, labels).map(|s| s.value);
    assert_eq!(
        value(
            "aleph_wasm_refused_requests_total",
            &[("reason", "queue_full")]
        ),
        Some(BURST as f64),
        "{body}"
    );
    assert_eq!(
        value("aleph_wasm_program_responses_total", &[("code", "503")]),
        Some(BURST as f64),
        "{body}"
    );
    assert_eq!(
        value("aleph_wasm_executions_total", &[("outcome", "ok")]),
        Some(2.0),
        "{body}"
    );
    assert_eq!(
        value("aleph_wasm_queued_requests", &[]),
        Some(0.0),
        "{body}"
    );
    let usage = node.json("/about/usage/system").await;
    assert_eq!(usage["executions"]["queued"], 0, "{usage}");
    assert_eq!(usage["executions"]["queue_limit"], 1, "{usage}");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_while_queued_leaves_the_queue() {
    let node = Node::new();
    let program = binary_program(&node.store, &napper(HOLD_MS), 10, true);
    let node = node
        .start(|c, _| {
            c.max_concurrent = 1;
            c.queue_limit = 1;
        })
        .await;
    let holder = hold_the_slot(&node, &program).await;
    let url = node.url(&format!("/vm/{}/", program.item_hash));
    let leaving = tokio::spawn(Answer::of(node.client.get(&url)));
    wait_queued(&node, 1).await;
    // The client disconnects: its place is given back while the slot is still held, so the
    // next request finds room in the queue rather than a 503.
    leaving.abort();
    let _ = leaving.await;
    wait_queued(&node, 0).await;
    let next = tokio::spawn(Answer::of(node.client.get(&url)));
    holder.await.unwrap().status(200).has("rested");
    next.await.unwrap().status(200).has("rested");
    // The request that left never ran.
    let list = node.json("/about/executions/list").await;
    assert_eq!(list[&program.item_hash]["requests"], 2, "{list}");
    let (samples, body) = metrics(&node).await;
    let queued = sample(&samples, "aleph_wasm_queued_requests", &[]);
    assert_eq!(queued.map(|s| s.value), Some(0.0), "{body}");
    assert!(
        sample(
            &samples,
            "aleph_wasm_refused_requests_total",
            &[("reason", "queue_full")]
        )
        .is_none(),
        "{body}"
    );
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_queued_past_the_queue_timeout_gets_503() {
    let node = Node::new();
    let program = binary_program(&node.store, &napper(HOLD_MS), 10, true);
    let bound = Duration::from_millis(300);
    let node = node
        .start(|c, _| {
            c.max_concurrent = 1;
            c.queue_timeout = Some(bound);
        })
        .await;
    let holder = hold_the_slot(&node, &program).await;
    let started = Instant::now();
    let late = node
        .get(&format!("/vm/{}/", program.item_hash))
        .await
        .status(503)
        .has("no execution slot freed")
        .has("0.3 s");
    assert!(started.elapsed() >= bound, "{:?}", started.elapsed());
    assert_eq!(late.header("retry-after"), Some("1"), "{late}");
    holder.await.unwrap().status(200).has("rested");
    let (samples, body) = metrics(&node).await;
    let timed_out = sample(
        &samples,
        "aleph_wasm_refused_requests_total",
        &[("reason", "queue_timeout")],
    );
    assert_eq!(timed_out.map(|s| s.value), Some(1.0), "{body}");
    let queued = sample(&samples, "aleph_wasm_queued_requests", &[]);
    assert_eq!(queued.map(|s| s.value), Some(0.0), "{body}");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_beyond_the_memory_budget_gets_503_until_memory_is_free() {
    let node = Node::new();
    let slow = binary_program(&node.store, &sleeper(1500), 10, true);
    let fast = binary_program(&node.store, CGI_HELLO, 5, true);
    // Each program declares 16 MiB; the budget holds one of them.
    let node = node.start(|c, _| c.memory_budget_mib = Some(24)).await;
    let slow_url = node.url(&format!("/vm/{}/", slow.item_hash));
    let first = tokio::spawn(Answer::of(node.client.get(slow_url)));
    wait_running(&node, 1).await;
    // The execution takes its memory once its code and volumes are ready: wait for that.
    let usage = wait_usage(&node, "memory reserved", |u| {
        u["memory_budget"]["reserved_mib"] != 0
    })
    .await;
    assert_eq!(usage["memory_budget"]["total_mib"], 24, "{usage}");
    assert_eq!(usage["memory_budget"]["reserved_mib"], 16, "{usage}");
    let full = node
        .get(&format!("/vm/{}/", fast.item_hash))
        .await
        .status(503)
        .has("memory budget");
    assert_eq!(full.header("retry-after"), Some("1"), "{full}");
    first.await.unwrap().status(200).has("rested");
    node.get(&format!("/vm/{}/", fast.item_hash))
        .await
        .status(200);
    let metrics = node.get("/metrics").await.status(200);
    let samples = parse_metrics(&metrics.body).unwrap();
    let refused = sample(
        &samples,
        "aleph_wasm_refused_requests_total",
        &[("reason", "memory_budget")],
    );
    assert_eq!(refused.map(|s| s.value), Some(1.0), "{}", metrics.body);
    let cold = sample(&samples, "aleph_wasm_cold_starts_total", &[]);
    assert_eq!(cold.map(|s| s.value), Some(2.0), "{}", metrics.body);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_cap_gets_413() {
    let node = Node::new();
    let msg = binary_program(&node.store, CGI_HELLO, 5, true);
    let node = node.start(|c, _| c.max_body_bytes = 1024).await;
    let path = format!("/vm/{}/", msg.item_hash);
    node.post(&path, vec![b'x'; 4096]).await.status(413);
    node.post(&path, vec![b'x'; 1000])
        .await
        .status(200)
        .has("CONTENT_LENGTH=1000");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_routes_need_the_bearer_token() {
    let node = Node::new();
    let msg = binary_program(&node.store, CGI_HELLO, 5, true);
    let node = node
        .start(|c, dir| {
            let file = dir.join("token");
            std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
            c.token_file = Some(file);
        })
        .await;
    let stop = node.url(&format!("/control/machine/{}/stop", msg.item_hash));
    let missing = Answer::of(node.client.post(&stop)).await.status(401);
    assert_eq!(
        missing.header("www-authenticate"),
        Some("Bearer"),
        "{missing}"
    );
    Answer::of(node.client.post(&stop).bearer_auth("wrong"))
        .await
        .status(401);
    Answer::of(node.client.post(&stop).header("Authorization", TOKEN))
        .await
        .status(401);
    let done = Answer::of(node.client.post(&stop).bearer_auth(TOKEN))
        .await
        .status(200);
    assert_eq!(done.json()["program"], msg.item_hash.as_str(), "{done}");
    let expire = node.url(&format!("/control/machine/{}/expire", msg.item_hash));
    let later = Answer::of(
        node.client
            .post(&expire)
            .bearer_auth(TOKEN)
            .body(r#"{"timeout": 30}"#),
    )
    .await
    .status(200);
    assert_eq!(later.json()["expires_in"], 30.0, "{later}");
    Answer::of(
        node.client
            .post(&expire)
            .bearer_auth(TOKEN)
            .body("{\"timeout\": -1}"),
    )
    .await
    .status(400);
    // With the token, an unknown program is 404; without it, nothing is told.
    let unknown = node.url(&format!("/control/machine/{}/stop", "0".repeat(64)));
    Answer::of(node.client.post(&unknown).bearer_auth(TOKEN))
        .await
        .status(404);
    Answer::of(node.client.post(&unknown)).await.status(401);
    // GET is not a control method.
    node.get(&format!("/control/machine/{}/stop", msg.item_hash))
        .await
        .status(405);
    node.shutdown().await;

    // A node without a token has its control routes disabled.
    let plain = Node::new();
    let msg = binary_program(&plain.store, CGI_HELLO, 5, true);
    let plain = plain.start(|_, _| {}).await;
    let stop = plain.url(&format!("/control/machine/{}/stop", msg.item_hash));
    Answer::of(plain.client.post(&stop).bearer_auth(TOKEN))
        .await
        .status(403)
        .has("control routes disabled");
    plain.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_count_outcomes() {
    let node = Node::new();
    let hello = binary_program(&node.store, CGI_HELLO, 5, true);
    let exit = binary_program(&node.store, EXIT_3, 5, true);
    // The store's own module cache, so that each module is compiled once here.
    let node = node.start(|c, _| c.module_cache = None).await;
    for _ in 0..2 {
        node.get(&format!("/vm/{}/", hello.item_hash))
            .await
            .status(200);
    }
    node.get(&format!("/vm/{}/", exit.item_hash))
        .await
        .status(502);
    node.get(&format!("/vm/{}/", "0".repeat(64)))
        .await
        .status(404);

    let m = node.get("/metrics").await.status(200);
    assert!(
        m.header("content-type")
            .is_some_and(|c| c.starts_with("application/openmetrics-text")),
        "{m}"
    );
    let samples = parse_metrics(&m.body).unwrap_or_else(|e| panic!("{e}\n{m}"));
    let value = |name: &str, labels: &[(&str, &str)]| {
        sample(&samples, name, labels)
            .unwrap_or_else(|| panic!("no sample {name} {labels:?}\n{m}"))
            .value
    };
    assert_eq!(
        value("aleph_wasm_executions_total", &[("outcome", "ok")]),
        2.0
    );
    assert_eq!(
        value("aleph_wasm_executions_total", &[("outcome", "exit")]),
        1.0
    );
    assert_eq!(
        value(
            "aleph_wasm_refused_requests_total",
            &[("reason", "unknown_program")]
        ),
        1.0
    );
    assert_eq!(
        value("aleph_wasm_program_responses_total", &[("code", "200")]),
        2.0
    );
    assert_eq!(
        value("aleph_wasm_program_responses_total", &[("code", "502")]),
        1.0
    );
    assert_eq!(
        value("aleph_wasm_execution_duration_seconds_count", &[]),
        3.0
    );
    assert_eq!(
        value(
            "aleph_wasm_execution_duration_seconds_bucket",
            &[("le", "+Inf")]
        ),
        3.0
    );
    // Each module was compiled once (cold start), then loaded from the cache.
    assert_eq!(value("aleph_wasm_module_compiles_total", &[]), 2.0);
    assert!(value("aleph_wasm_fuel_consumed_total", &[]) > 0.0);
    assert_eq!(value("aleph_wasm_executions_in_flight", &[]), 0.0);
    assert_eq!(value("aleph_wasm_queued_requests", &[]), 0.0);
    node.shutdown().await;
}

#[test]
fn the_metrics_parser_refuses_malformed_lines() {
    assert!(parse_metrics("# TYPE a counter\na_total 1\n# EOF").is_ok());
    assert!(parse_metrics("a_total 1").is_err(), "undeclared family");
    assert!(
        parse_metrics("# TYPE a counter\na_total").is_err(),
        "no value"
    );
    assert!(parse_metrics("# TYPE a counter\na_total{x=\"1} 1").is_err());
    assert!(parse_metrics("# TYPE a counter\na_total{x=1} 1").is_err());
    assert!(parse_metrics("# TYPE a counter\na_total one").is_err());
    assert!(parse_metrics("# TYPE a counter\n\na_total 1").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn about_routes_describe_the_node_and_its_executions() {
    let node = Node::new();
    let msg = binary_program(&node.store, CGI_HELLO, 5, true);
    let node = node
        .start(|c, _| {
            c.domain = Some("Node.Test.".into());
            c.max_concurrent = 7;
            c.queue_limit = 9;
        })
        .await;
    let config = node.json("/about/config").await;
    assert_eq!(config["bound"], node.addr().to_string(), "{config}");
    assert_eq!(config["domain"], "node.test", "{config}");
    assert_eq!(config["limits"]["max_concurrent_executions"], 7, "{config}");
    assert_eq!(config["limits"]["queue_limit"], 9, "{config}");
    assert_eq!(
        config["limits"]["queue_timeout_seconds"],
        server::DEFAULT_QUEUE_TIMEOUT.as_secs_f64(),
        "{config}"
    );
    assert_eq!(config["control_routes"], false, "{config}");
    // Snapshots off (the test nodes' default): no wasm-opt is looked for.
    assert_eq!(
        config["snapshots"],
        json!({"mode": "off", "wasm_opt": null}),
        "{config}"
    );

    let usage = node.json("/about/usage/system").await;
    assert!(usage["cpu"]["count"].as_u64().unwrap() >= 1, "{usage}");
    assert!(usage["mem"]["total_kB"].as_u64().unwrap() > 0, "{usage}");
    assert!(usage["uptime_seconds"].as_f64().unwrap() >= 0.0, "{usage}");
    assert_eq!(usage["executions"]["queued"], 0, "{usage}");
    assert_eq!(usage["executions"]["queue_limit"], 9, "{usage}");
    // Today's nodes' fields (aleph-vm's MachineUsage): disk of the store's file system, the
    // current minute as the period, the CPU's properties, no GPUs, active.
    let disk = &usage["disk"];
    let (total, available) = (
        disk["total_kB"].as_u64().unwrap(),
        disk["available_kB"].as_u64().unwrap(),
    );
    assert!(total > 0 && available <= total, "{usage}");
    let start = usage["period"]["start_timestamp"].as_str().unwrap();
    assert!(start.ends_with(":00Z") && start.len() == 20, "{usage}");
    assert_eq!(usage["period"]["duration_seconds"], 60, "{usage}");
    assert_eq!(
        usage["properties"]["cpu"]["architecture"],
        match std::env::consts::ARCH {
            "aarch64" => "arm64",
            other => other,
        },
        "{usage}"
    );
    assert_eq!(
        usage["gpu"],
        json!({"devices": [], "available_devices": []})
    );
    assert_eq!(usage["active"], true, "{usage}");

    let before = node.json("/about/executions/list").await;
    assert_eq!(before, json!({}));
    node.get(&format!("/vm/{}/", msg.item_hash))
        .await
        .status(200);
    let list = node.json("/about/executions/list").await;
    let entry = &list[&msg.item_hash];
    assert_eq!(entry["requests"], 1, "{list}");
    assert_eq!(entry["running"], 0, "{list}");
    assert_eq!(entry["last_outcome"], "ok", "{list}");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_requests_in_progress_finish() {
    let node = Node::new();
    let slow = binary_program(&node.store, &sleeper(1500), 10, true);
    let node = node.start(|_, _| {}).await;
    let addr = node.addr();
    let request = tokio::spawn(Answer::of(
        node.client
            .get(node.url(&format!("/vm/{}/", slow.item_hash))),
    ));
    wait_running(&node, 1).await;
    node.shutdown().await;
    request.await.unwrap().status(200).has("rested");
    let refused = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("http://{addr}/healthz"))
        .send()
        .await;
    assert!(
        refused.is_err(),
        "still serving after shutdown: {refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_answers_without_a_socket() {
    use tower::ServiceExt as _;
    let dir = test_dir();
    let store = Store::open(dir.path().join("store")).unwrap();
    let msg = binary_program(&store, CGI_HELLO, 5, true);
    let config = ServerConfig {
        module_cache: Some(PathBuf::from(CACHE).join("modules")),
        ..ServerConfig::default()
    };
    let state = server::AppState::new(config, store).unwrap();
    let app = server::router(state);
    let request = |uri: String| {
        axum::http::Request::get(uri)
            .header("host", "localhost")
            .body(axum::body::Body::empty())
            .unwrap()
    };
    let health = app
        .clone()
        .oneshot(request("/healthz".into()))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let answer = app
        .clone()
        .oneshot(request(format!("/vm/{}/x?y=1", msg.item_hash)))
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let body = axum::body::to_bytes(answer.into_body(), 1 << 20)
        .await
        .unwrap();
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("PATH_INFO=/x"), "{body}");
    assert!(
        !body.contains("REMOTE_ADDR"),
        "no client address without a socket: {body}"
    );
}

// --- The command line ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_prints_its_address_and_stops_on_sigterm() {
    let dir = test_dir();
    let store = Store::open(dir.path().join("store")).unwrap();
    let msg = binary_program(&store, CGI_HELLO, 5, true);
    let mut cmd = std::process::Command::new(BIN);
    cmd.arg("--store")
        .arg(store.root())
        .arg("--module-cache")
        .arg(PathBuf::from(CACHE).join("modules"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_remove("ALEPH_WASM_STORE");
    let serve = ServeProcess::start(cmd).await;
    let client = client();
    let answer = Answer::of(client.get(format!("{}/vm/{}/cli", serve.base, msg.item_hash)))
        .await
        .status(200)
        .has("PATH_INFO=/cli");
    drop(answer);
    // A node of the network: unsigned messages are refused, and /about/config says so.
    let unsigned = unsigned_post(7);
    Answer::of(
        client
            .post(format!("{}/api/v0/messages", serve.base))
            .header("content-type", "application/json")
            .body(unsigned.to_json().to_string()),
    )
    .await
    .status(400)
    .has("has no signature");
    assert!(!store.has_message(&unsigned.item_hash));
    let config = Answer::of(client.get(format!("{}/about/config", serve.base)))
        .await
        .status(200)
        .json();
    assert_eq!(config["messages"]["unsigned"], "refuse", "{config}");
    assert_eq!(
        config["messages"]["delegations"], "security aggregate",
        "{config}"
    );
    let out = serve.stop().await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // `--unsigned trust`, for local development, takes them.
    let mut cmd = std::process::Command::new(BIN);
    cmd.arg("--store")
        .arg(store.root())
        .args(["--unsigned", "trust", "serve", "--listen", "127.0.0.1:0"])
        .env_remove("ALEPH_WASM_STORE");
    let serve = ServeProcess::start(cmd).await;
    Answer::of(
        client
            .post(format!("{}/api/v0/messages", serve.base))
            .header("content-type", "application/json")
            .body(unsigned.to_json().to_string()),
    )
    .await
    .status(200);
    assert!(store.has_message(&unsigned.item_hash));
    let config = Answer::of(client.get(format!("{}/about/config", serve.base)))
        .await
        .json();
    assert_eq!(config["messages"]["unsigned"], "trust", "{config}");
    serve.stop().await;
}

/// An unsigned POST message from [`OWNER`], unique by `n`.
fn unsigned_post(n: u32) -> Message {
    let time = 100.0 + f64::from(n);
    message::build_inline(
        MessageType::Post,
        "ETH",
        OWNER,
        time,
        json!({"type": "note", "address": OWNER, "time": time, "content": {"n": n}}),
    )
}

// --- Python ----------------------------------------------------------------------------------

fn python_runtime(store: &Store) -> String {
    common::python::python_runtime(store, Path::new(CACHE))
}

/// The Python hello example as a program of `node`'s store; returns it and its code ref.
fn python_hello(node: &Node) -> (Message, String) {
    let runtime_ref = python_runtime(&node.store);
    let zip = node.dir.path().join("hello.zip");
    archive::pack(Path::new(PYTHON_HELLO), PackFormat::Zip, &zip).unwrap();
    let code = node.store.add_file(&zip, OWNER, 1.0, None).unwrap();
    let msg = put_program(
        &node.store,
        json!({
            "type": "vm-function",
            "address": OWNER,
            "time": 2.0,
            "allow_amend": false,
            "code": {"encoding": "zip", "entrypoint": "main:app", "ref": code.item_hash,
                     "interface": "asgi", "use_latest": false},
            "runtime": {"ref": runtime_ref, "use_latest": false, "comment": "python-3.12"},
            "on": {"http": true, "persistent": false},
            "environment": {},
            "resources": {"vcpus": 1, "memory": 128, "seconds": 10},
            "variables": {},
            "volumes": [],
        }),
    );
    (msg, code.item_hash)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_hello_app_over_http_by_path_and_by_host() {
    let node = Node::new();
    let (msg, code_ref) = python_hello(&node);
    let node = node
        .start(|c, dir| {
            c.domain = Some(DOMAIN.into());
            let file = dir.join("token");
            std::fs::write(&file, TOKEN).unwrap();
            c.token_file = Some(file);
        })
        .await;
    let hash = &msg.item_hash;

    let a = node
        .get(&format!("/vm/{hash}/?name=aleph"))
        .await
        .status(200);
    assert_eq!(a.body, "Hello, aleph!\n", "{a}");
    assert_eq!(
        a.header("aleph-program-itemhash"),
        Some(hash.as_str()),
        "{a}"
    );
    assert_eq!(
        a.header("aleph-program-code-ref"),
        Some(code_ref.as_str()),
        "{a}"
    );
    assert_eq!(
        a.header("content-type"),
        Some("text/plain; charset=utf-8"),
        "{a}"
    );
    // The warm instance serves the host-routed request too.
    let b = Answer::of(node.client.get(host_url(&node, hash, "/?name=host")))
        .await
        .status(200);
    assert_eq!(b.body, "Hello, host!\n", "{b}");
    Answer::of(node.client.get(host_url(&node, hash, "/missing")))
        .await
        .status(404)
        .has("Not found");
    let list = node.json("/about/executions/list").await;
    assert_eq!(list[hash]["idle_instances"], 1, "{list}");
    assert_eq!(list[hash]["requests"], 3, "{list}");

    // stop with the token: the warm instance is gone; the next request boots another.
    let stop = node.url(&format!("/control/machine/{hash}/stop"));
    Answer::of(node.client.post(&stop)).await.status(401);
    let stopped = Answer::of(node.client.post(&stop).bearer_auth(TOKEN))
        .await
        .status(200);
    assert_eq!(stopped.json()["retired_instances"], 1, "{stopped}");
    let list = node.json("/about/executions/list").await;
    assert_eq!(list[hash]["idle_instances"], 0, "{list}");
    node.get(&format!("/vm/{hash}/"))
        .await
        .status(200)
        .has("Hello, world!");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_python_instances_retire_after_the_idle_timeout() {
    let node = Node::new();
    let (msg, _) = python_hello(&node);
    let node = node
        .start(|c, _| c.idle_timeout = Duration::from_secs(1))
        .await;
    let hash = &msg.item_hash;
    node.get(&format!("/vm/{hash}/?name=idle"))
        .await
        .status(200)
        .has("Hello, idle!");
    let started = Instant::now();
    loop {
        let list = node.json("/about/executions/list").await;
        if list[hash]["idle_instances"] == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the idle instance was never retired: {list}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_traffic_is_counted_per_program_in_metrics() {
    let echo = common::loopback::Loopback::start();
    let node = Node::new();
    let wat = common::echo_client_guest(echo.echo_addr().port(), "Content-Type: text/plain\n\n");
    let mut msg = binary_program(&node.store, &wat, 5, true);
    // The same program, granted the internet.
    let mut content = msg.to_json()["content"].clone();
    if content.is_null() {
        content = serde_json::from_str(msg.to_json()["item_content"].as_str().unwrap()).unwrap();
    }
    content["environment"] = json!({"internet": true});
    msg = put_program(&node.store, content);
    let node = node
        .start(|config, _| {
            let mut net = aleph_wasm::host::net::NetOptions::default();
            net.policy = aleph_wasm::host::policy::AddressPolicy::parse(&["127.0.0.0/8"]).unwrap();
            config.host.net = std::sync::Arc::new(net);
        })
        .await;
    let hash = &msg.item_hash;
    for _ in 0..2 {
        node.get(&format!("/vm/{hash}"))
            .await
            .status(200)
            .has("ping");
    }
    let (samples, body) = metrics(&node).await;
    for (name, want) in [
        ("aleph_wasm_program_net_sent_bytes_total", 8.0),
        ("aleph_wasm_program_net_received_bytes_total", 8.0),
        ("aleph_wasm_program_net_connections_total", 2.0),
    ] {
        let got = sample(&samples, name, &[("program", hash)]).map(|s| s.value);
        assert_eq!(got, Some(want), "{name}\n{body}");
    }
    // The node's host options are shown with its configuration.
    let config = node.json("/about/config").await;
    assert_eq!(
        config["host"]["allow_net"],
        json!(["127.0.0.0/8"]),
        "{config}"
    );
    assert_eq!(config["host"]["cache"], json!("embedded"), "{config}");
    node.shutdown().await;
}
