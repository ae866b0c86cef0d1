//! One warm instance serving many requests at once, through the node service: a real
//! `aleph-wasm serve` process (instances start cold, no snapshots) on a loopback port, asked
//! over real HTTP by a real client. What is proved:
//!
//! - requests interleave at their awaits on one instance (`vcpus: 1`), as on one uvicorn worker,
//!   and every answer is its own request's;
//! - request and response bodies are byte-exact: 10 MiB each way, every byte value, a response
//!   streamed in parts;
//! - a request past its deadline gets a 504 without taking down the others: a request that
//!   spins (the instance has to go) leaves the others a clear answer, a request cancelled at an
//!   await leaves them their normal answers and its instance serving;
//! - the seed's inline example (not ASGI) is a clear 5xx;
//! - fuel is per request: reading a large body in many chunks does not refill it (through the
//!   `Executor`, since the node has no setting for the fuel rate).
//!
//! Every HTTP exchange is bounded ([`ANSWER`], or [`BOOT`] when it may boot an instance): a
//! hang fails the test with the request that hung. Nothing here asserts how fast anything is.
//! The apps are in `tests/python/<name>/main.py`.

use super::*;
use crate::common::exchange::{self, Reply};
use crate::common::serve::{self, ServeProcess};

/// Counts the handlers in flight.
const INFLIGHT_APP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/inflight");
/// Echoes, generates and streams binary bodies.
const BODIES_APP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/bodies");
/// Sleeps, spins, and waits past its deadline.
const DEADLINE_APP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/deadline");
/// Reads a body doing fixed work per 64 KiB.
const FUEL_APP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/fuel");

/// The bound on an exchange with a booted instance.
const ANSWER: Duration = Duration::from_secs(60);
/// The bound on an exchange that may boot an instance first (a cold start on a loaded machine).
const BOOT: Duration = Duration::from_secs(180);
/// 10 MiB.
const TEN_MIB: usize = 10 << 20;

// --- The node --------------------------------------------------------------------------------

/// A `serve` process over the test's store.
struct Node {
    serve: ServeProcess,
    client: reqwest::Client,
}

impl Node {
    /// Starts `aleph-wasm serve` on `py`'s store and the shared module cache, with warm
    /// instances, no memory budget and instances that start cold.
    async fn start(py: &Py) -> Node {
        let cmd = serve::cold_command(
            py.store.root(),
            &module_cache(),
            &["--isolation", "warm", "--memory-budget", "0"],
        );
        Node {
            serve: ServeProcess::start(cmd).await,
            client: exchange::client(),
        }
    }

    /// The URL of `path` (with its query) in `msg`'s program.
    fn url(&self, msg: &Message, path: &str) -> String {
        format!("{}/vm/{}{path}", self.serve.base, msg.item_hash)
    }

    async fn get(&self, msg: &Message, path: &str, limit: Duration) -> Reply {
        exchange::send(self.client.get(self.url(msg, path)), limit).await
    }

    async fn post(&self, msg: &Message, path: &str, body: Vec<u8>, limit: Duration) -> Reply {
        exchange::send(self.client.post(self.url(msg, path)).body(body), limit).await
    }

    /// `GET path` on a task of its own.
    fn spawn_get(&self, msg: &Message, path: &str) -> tokio::task::JoinHandle<Reply> {
        let request = self.client.get(self.url(msg, path));
        tokio::spawn(exchange::send(request, ANSWER))
    }

    /// Stops the node with SIGTERM; it must exit cleanly.
    async fn stop(self) {
        let out = self.serve.stop().await;
        assert_eq!(
            out.status.code(),
            Some(0),
            "`serve` did not stop cleanly\n--- stderr ---\n{}",
            shorten(&String::from_utf8_lossy(&out.stderr))
        );
    }
}

/// The reply of a spawned exchange (a panic in it is the test's).
async fn joined(handle: tokio::task::JoinHandle<Reply>) -> Reply {
    handle
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
}

/// The app in `dir` as an ASGI program (`main:app`); `extra` as for [`Py::program`].
fn app_program(py: &Py, dir: &str, extra: Value) -> Message {
    let code = py.code(Path::new(dir));
    py.program(&code, "main:app", extra)
}

// --- Bytes -----------------------------------------------------------------------------------

/// `n` bytes of xorshift64* from `seed`.
fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(n);
    out
}

/// The bodies app's `pattern(seed, size)`: a block of 65521 bytes of sha256 output (of
/// `"<seed>:<i>"`) repeated, each byte of the k-th repeat plus k (mod 256).
fn pattern(seed: u64, size: usize) -> Vec<u8> {
    const BLOCK: usize = 65521;
    let mut block = Vec::with_capacity(BLOCK + 32);
    for i in 0..=BLOCK / 32 {
        block.extend_from_slice(&Sha256::digest(format!("{seed}:{i}")));
    }
    block.truncate(BLOCK);
    (0..size)
        .map(|pos| block[pos % BLOCK].wrapping_add((pos / BLOCK) as u8))
        .collect()
}

/// `bytes(range(256)) * repeat`.
fn all_bytes(repeat: usize) -> Vec<u8> {
    (0..=255u8).cycle().take(256 * repeat).collect()
}

/// Asserts that the body of `reply` is exactly `want`; on a difference, says where.
fn assert_bytes(reply: &Reply, want: &[u8]) {
    if reply.body == want {
        return;
    }
    let first = reply
        .body
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(reply.body.len().min(want.len()));
    panic!(
        "the body differs from what was expected, first at byte {first}: {} bytes (sha256 {}) \
         instead of {} (sha256 {})\n{reply}",
        reply.body.len(),
        hex::encode(Sha256::digest(&reply.body)),
        want.len(),
        hex::encode(Sha256::digest(want)),
    );
}

// --- Requests in flight together ---------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_instance_interleaves_fifty_concurrent_requests_at_their_awaits() {
    let py = Py::new();
    let msg = app_program(&py, INFLIGHT_APP, json!({}));
    let node = Node::start(&py).await;
    // The instance boots on the first request.
    let warm_up = node.get(&msg, "/?id=warm-up", BOOT).await.status(200);
    assert_eq!(warm_up.json()["id"], "warm-up", "{warm_up}");

    let requests: Vec<_> = (0..50)
        .map(|i| node.spawn_get(&msg, &format!("/?id={i}")))
        .collect();
    let mut max = 0;
    let mut instances = BTreeSet::new();
    for (i, request) in requests.into_iter().enumerate() {
        let reply = joined(request).await.status(200);
        let v = reply.json();
        assert_eq!(v["id"], i.to_string(), "another request's answer\n{reply}");
        max = max.max(v["max"].as_u64().unwrap_or_else(|| panic!("{reply}")));
        instances.insert(v["instance"].as_str().unwrap().to_string());
    }
    assert!(
        max > 1,
        "no instance ever had more than one handler in flight (max {max}; instances {instances:?}): \
         the requests were served one after another"
    );
    node.stop().await;
}

// --- Bodies ------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_mebibyte_request_and_response_bodies_are_byte_exact() {
    let py = Py::new();
    let msg = app_program(&py, BODIES_APP, json!({}));
    let node = Node::start(&py).await;

    let sent = random_bytes(0x5eed, TEN_MIB);
    let echoed = node
        .post(&msg, "/echo", sent.clone(), BOOT)
        .await
        .status(200);
    assert_bytes(&echoed, &sent);

    let generated = node
        .get(&msg, &format!("/pattern?seed=7&size={TEN_MIB}"), ANSWER)
        .await
        .status(200);
    assert_bytes(&generated, &pattern(7, TEN_MIB));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_byte_value_round_trips_in_request_and_response_bodies() {
    let py = Py::new();
    let msg = app_program(&py, BODIES_APP, json!({}));
    let node = Node::start(&py).await;
    node.get(&msg, "/all-bytes?repeat=1", BOOT)
        .await
        .status(200);
    // One of each; past a 64 KiB chunk; past 1 MiB (a response frame's largest part).
    for repeat in [1, 257, 4097] {
        let bytes = all_bytes(repeat);
        let echoed = node
            .post(&msg, "/echo", bytes.clone(), ANSWER)
            .await
            .status(200);
        assert_bytes(&echoed, &bytes);
        let generated = node
            .get(&msg, &format!("/all-bytes?repeat={repeat}"), ANSWER)
            .await
            .status(200);
        assert_bytes(&generated, &bytes);
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_streamed_in_parts_arrives_whole_with_its_start_message() {
    let py = Py::new();
    let msg = app_program(&py, BODIES_APP, json!({}));
    let node = Node::start(&py).await;
    let reply = node.get(&msg, "/stream", BOOT).await;
    assert_eq!(reply.status, 203, "{reply}");
    assert_eq!(
        reply.header_values("content-type"),
        ["application/octet-stream"],
        "{reply}"
    );
    assert_eq!(reply.header_values("x-stream"), ["parts"], "{reply}");
    assert_eq!(reply.header_values("x-repeat"), ["one", "two"], "{reply}");
    // The app's PARTS, then "end\n".
    let mut want = b"part 0\n".to_vec();
    want.extend_from_slice(&[b'x'; 150_000]);
    want.push(b'\n');
    want.extend(0..=255u8);
    want.extend_from_slice(b"part 4\nend\n");
    assert_bytes(&reply, &want);
    node.stop().await;
}

// --- Deadlines ---------------------------------------------------------------------------------

/// What a request that lost its answer to another request's end must be told, in part: why
/// (one of these words). The node's generic "the program did not produce a valid HTTP
/// response" is not clear: this request's handler did nothing wrong.
const CLEAR_REASONS: [&str; 5] = [
    "instance",
    "time limit",
    "deadline",
    "another request",
    "cancel",
];

/// Asserts that `reply` to `/sleep?id=<id>` is either that request's own answer or a clear
/// 5xx: 502, 503 or 504 with a body that says why there is no answer.
fn own_answer_or_clear_failure(reply: &Reply, id: &str) {
    if reply.status == 200 {
        assert_eq!(reply.json()["id"], id, "another request's answer\n{reply}");
        return;
    }
    assert!(
        [502, 503, 504].contains(&reply.status),
        "neither its answer nor a clear failure\n{reply}"
    );
    let text = reply.text().to_lowercase();
    assert!(
        CLEAR_REASONS.iter().any(|r| text.contains(r)),
        "the failure does not say what happened (none of {CLEAR_REASONS:?})\n{reply}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spinning_request_times_out_and_the_requests_beside_it_get_a_clear_answer() {
    let py = Py::new();
    let msg = app_program(
        &py,
        DEADLINE_APP,
        json!({"resources": {"vcpus": 1, "memory": 128, "seconds": 2}}),
    );
    let node = Node::start(&py).await;
    node.get(&msg, "/sleep?id=warm-up", BOOT).await.status(200);

    let sleeps: Vec<_> = (0..4)
        .map(|i| node.spawn_get(&msg, &format!("/sleep?id={i}&s=0.5")))
        .collect();
    let spin = joined(node.spawn_get(&msg, "/spin")).await;
    assert_eq!(spin.status, 504, "{spin}");
    assert!(!spin.text().trim().is_empty(), "{spin}");
    for (i, sleep) in sleeps.into_iter().enumerate() {
        own_answer_or_clear_failure(&joined(sleep).await, &i.to_string());
    }

    let after = node.get(&msg, "/sleep?id=after", BOOT).await.status(200);
    assert_eq!(after.json()["id"], "after", "{after}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_cancelled_at_an_await_does_not_disturb_the_others() {
    let py = Py::new();
    let msg = app_program(
        &py,
        DEADLINE_APP,
        json!({"resources": {"vcpus": 1, "memory": 128, "seconds": 2}}),
    );
    let node = Node::start(&py).await;
    node.get(&msg, "/sleep?id=warm-up", BOOT).await.status(200);

    // Requests of 0.5 s keep arriving while the slow one waits for its deadline (2 s) and
    // after it: some are in flight when it is cancelled.
    let slow = node.spawn_get(&msg, "/slow?id=slow");
    let mut sleeps = Vec::new();
    for i in 0..12 {
        sleeps.push(node.spawn_get(&msg, &format!("/sleep?id={i}&s=0.5")));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let slow = joined(slow).await;
    assert_eq!(slow.status, 504, "{slow}");
    assert!(!slow.text().trim().is_empty(), "{slow}");
    for (i, sleep) in sleeps.into_iter().enumerate() {
        let reply = joined(sleep).await;
        assert_eq!(reply.status, 200, "{reply}");
        assert_eq!(reply.json()["id"], i.to_string(), "{reply}");
    }

    let after = node.get(&msg, "/sleep?id=after", BOOT).await.status(200);
    assert_eq!(after.json()["id"], "after", "{after}");
    node.stop().await;
}

/// `docs/channel.md`: at its deadline the host sends `CANCEL`, the guest cancels the request's
/// task (the app sees `CancelledError` at its await) and the instance goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_cancelled_at_an_await_leaves_its_instance_serving() {
    let py = Py::new();
    let msg = app_program(
        &py,
        DEADLINE_APP,
        json!({"resources": {"vcpus": 1, "memory": 128, "seconds": 2}}),
    );
    let node = Node::start(&py).await;
    let before = node.get(&msg, "/stats", BOOT).await.status(200).json();
    assert_eq!(before["cancelled"], json!([]), "{before}");

    let slow = node.get(&msg, "/slow?id=c1", ANSWER).await;
    assert_eq!(slow.status, 504, "{slow}");
    // The cancellation may reach the app just after the 504: ask again for a while.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = node.get(&msg, "/stats", BOOT).await.status(200).json();
        assert_eq!(
            stats["instance"], before["instance"],
            "the instance was replaced after a request cancelled at an await: {stats}"
        );
        if stats["cancelled"] == json!(["c1"]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the app never saw its request cancelled: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    node.stop().await;
}

// --- Not ASGI ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seeds_inline_example_is_a_clear_asgi_error_over_http() {
    let py = Py::new();
    let mut draft: Value = serde_json::from_slice(&std::fs::read(SEED_INLINE).unwrap()).unwrap();
    draft["content"]["runtime"]["ref"] = py.runtime.clone().into();
    let msg = message::parse(&serde_json::to_vec(&draft).unwrap())
        .unwrap_or_else(|e| panic!("the seed fixture does not parse: {e}"));
    py.store.put_message(&msg).unwrap();
    let node = Node::start(&py).await;
    // The program is reproducible: every request boots an instance. The app's first send is
    // `{'output': 'hola!'}`: the answer must say that the app broke ASGI, not only that there
    // is no valid response.
    let reply = node.get(&msg, "/", ANSWER).await;
    assert!((500..600).contains(&reply.status), "{reply}");
    assert!(
        reply.text().contains("ASGI"),
        "the body does not name the ASGI problem\n{reply}"
    );
    node.stop().await;
}

// --- Fuel --------------------------------------------------------------------------------------

/// Fuel granted per second of `resources.seconds` in [`fuel_is_per_request_not_per_chunk_read`].
const FUEL_PER_SECOND: u64 = 100_000_000;
/// The loop iterations of the calibration request.
const CALIBRATION: u64 = 500_000;

fn work(body: &[u8], iterations: u64) -> Trigger {
    let mut req = request(&format!("POST /work?iterations={iterations}"));
    req.headers = vec![("Content-Type".into(), "application/octet-stream".into())];
    req.body = body.to_vec();
    Trigger::Http(req)
}

/// A request's budget is `seconds × fuel_per_second`, granted once, and reading its body
/// (many chunks from stdin) must not add to it. The app does a fixed amount of work per
/// 64 KiB of body as the chunks arrive, sized so that one unit is a 40th of the budget: the
/// 160 units of a 10 MiB body are four budgets, while reading 10 MiB without the work fits. So
/// a 10 MiB body with the work runs out of fuel, unless reads of stdin refill the tank (one
/// chunk's work is well within a budget), in which case it is answered 200.
///
/// Through the `Executor`, not `serve`: neither `serve` nor `ServerConfig` has a setting for
/// the fuel rate, and at the published rate a budget small enough to run out is a
/// `resources.seconds` so short that the wall-clock deadline would decide first. Here the
/// deadline is 30 s and the budget 3 s worth of fuel at the published rate, so fuel decides;
/// the outcome's error must say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuel_is_per_request_not_per_chunk_read() {
    let py = Py::new();
    let seconds = 30;
    let msg = app_program(
        &py,
        FUEL_APP,
        json!({"resources": {"vcpus": 1, "memory": 128, "seconds": seconds}}),
    );
    let mut cfg = config(true);
    cfg.sandbox.fuel_per_second = FUEL_PER_SECOND;
    // The boot's fuel is `boot_timeout × fuel_per_second`: 60 G, plenty to start CPython.
    cfg.boot_timeout = HANG;
    let ex = py.executor(cfg);
    let budget = seconds * FUEL_PER_SECOND;

    // Calibration: the fuel of CALIBRATION iterations (the loop's cost is the interpreter's,
    // not the engine's: measured rather than assumed). Outside reproducible mode a request's
    // fuel is read as of the guest's latest epoch tick or read of stdin, so one count can carry
    // a neighbour's tail: each figure is the median of three requests, after a warm-up.
    let small = vec![b's'; 1024];
    let median_fuel = async |iterations: u64| {
        let mut counts = Vec::new();
        for _ in 0..3 {
            let o = run(&ex, &msg, work(&small, iterations)).await;
            assert_eq!(ok_json(&o)["units"], 1, "{}", show(&o));
            counts.push(o.fuel_consumed);
        }
        counts.sort_unstable();
        counts[1]
    };
    median_fuel(0).await;
    let base = median_fuel(0).await;
    let calibrated = median_fuel(CALIBRATION).await;
    let loop_fuel = calibrated.saturating_sub(base);
    assert!(
        loop_fuel > 0,
        "the fuel of a request is not measured ({base} then {calibrated})"
    );
    // One unit of work: a 40th of the budget.
    let iterations = (CALIBRATION as u128 * budget as u128 / 40 / loop_fuel as u128) as u64 + 1;

    // A small body with the work: one unit, well within the budget.
    let one = median_fuel(iterations).await;
    let unit = one.saturating_sub(base);
    // (Fuel counts can be off by an epoch tick's worth: the checks leave room for that.)
    assert!(
        160 * unit > budget * 5 / 4 && one < budget / 4,
        "calibration off: a unit of work takes {unit} fuel, the small request {one} (budget \
         {budget}; {CALIBRATION} iterations took {loop_fuel})"
    );

    // 10 MiB without the work: reading it fits in the budget.
    let big = random_bytes(8, TEN_MIB);
    let read = run(&ex, &msg, work(&big, 0)).await;
    let v = ok_json(&read);
    assert_eq!(v["bytes"], TEN_MIB, "{}", show(&read));
    assert_eq!(v["units"], 160, "{}", show(&read));

    // 10 MiB with the work: 160 units, four budgets: out of fuel.
    let o = run(&ex, &msg, work(&big, iterations)).await;
    eprintln!(
        "fuel: budget {budget}; {iterations} iterations a unit; one unit {unit}; reading 10 MiB \
         {}; 10 MiB with the work {} ({})",
        read.fuel_consumed,
        o.fuel_consumed,
        o.kind.as_str()
    );
    assert_eq!(
        o.kind,
        OutcomeKind::Timeout,
        "160 units of {unit} fuel on a budget of {budget} (reading alone took {})\n{}",
        read.fuel_consumed,
        show(&o)
    );
    assert!(
        o.error.as_deref().unwrap_or("").contains("fuel"),
        "the fuel budget, not the {seconds} s deadline, must end it\n{}",
        show(&o)
    );

    // The program still serves.
    let after = run(&ex, &msg, work(&small, 0)).await;
    assert_eq!(ok_json(&after)["units"], 1, "{}", show(&after));
    ex.shutdown().await;
}
