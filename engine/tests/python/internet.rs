//! Outbound connections (`content.environment.internet`), through the library (`Executor`) with
//! the node's network options, against servers on the loopback interface
//! (`tests/common/loopback.rs`: HTTP, HTTPS with a CA of the test's own, TCP echo).
//!
//! The app (`tests/python/internet/main.py`) fetches a target named in the query string with one
//! unmodified client per route — `urllib.request`, `http.client`, `requests`, `httpx` (sync and
//! async), `aiohttp`, `asyncio.open_connection`, `socket.create_connection` — and answers JSON:
//! what it fetched, or the exception it got with every exception it wraps (`chain`,
//! `messages`), since libraries wrap the socket's error in their own. The libraries come from
//! the package registry as pure-Python wheels (pinned, downloaded once per target directory);
//! HTTPS uses each library's defaults: the host does the TLS and trusts the test CA because the
//! node was told to, not because the app names it.
//!
//! What is proved:
//!
//! - with the flag (and loopback allowed by the node), every client reaches the servers, over
//!   HTTP and HTTPS, and a server whose CA the node does not trust is refused;
//! - without the flag, every client gets a `PermissionError` naming
//!   `content.environment.internet is false`, and nothing reaches the servers;
//! - loopback is forbidden unless the node allows it (`--allow-net`), names included, and so is
//!   a redirect from an allowed server to a forbidden address;
//! - fetches overlap: two inside one request, and two requests on one instance;
//! - a response over `--net-max-bytes` ends with a clear error, soon, with the host not
//!   draining the server, and the instance goes on.
//!
//! Every test boots one warm instance and sends it many requests.

use super::*;
use crate::common::loopback::{self, Loopback};
use aleph_wasm::host::net::NetOptions;
use aleph_wasm::host::policy::AddressPolicy;
use std::net::Ipv4Addr;
use std::sync::Arc;

/// The app (without its packages).
const INTERNET_APP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/internet");

/// The clients and what they need, pinned: pure-Python wheels only (aiohttp, multidict, yarl,
/// frozenlist, propcache and charset_normalizer also publish compiled wheels; their pure ones
/// run the same code those fall back to without their extensions).
const INTERNET_WHEELS: [&str; 19] = [
    // requests
    "requests==2.34.2",
    "urllib3==2.8.0",
    "idna==3.20",
    "charset_normalizer==3.5.3",
    "certifi==2026.10.19.post1",
    // httpx
    "httpx==0.29.0",
    "httpcore==1.0.9",
    "h11==0.16.0",
    "anyio==4.16.0",
    "sniffio==1.3.1",
    "typing_extensions==4.16.0",
    // aiohttp
    "aiohttp==3.14.5",
    "aiohappyeyeballs==2.7.1",
    "aiosignal==1.4.0",
    "attrs==26.1.0",
    "frozenlist==1.8.0",
    "multidict==7.2.1",
    "yarl==1.25.1",
    "propcache==0.5.4",
];

/// What the node allows the tests' programs to reach: the loopback servers.
const LOOPBACK: [&str; 2] = ["127.0.0.0/8", "::1/128"];
/// The routes that fetch a URL.
const URL_CLIENTS: [&str; 5] = ["urllib", "requests", "httpx_sync", "httpx_async", "aiohttp"];
/// The message of a call without `environment.internet`.
const NO_INTERNET: &str = "content.environment.internet is false";

// --- The node's options ------------------------------------------------------------------------

/// The node's network options: the address ranges it allows besides public addresses, the CA
/// file it trusts besides its usual roots, the bytes one connection may receive.
/// The node's options for outbound connections in these tests: `allow` ranges, the test CA,
/// a byte limit.
fn net_options(allow: &[&str], ca_pem: Option<&Path>, max_bytes: Option<u64>) -> NetOptions {
    let mut options = NetOptions::default();
    options.policy = AddressPolicy::parse(allow).expect("the test's ranges are valid");
    if let Some(ca) = ca_pem {
        options.add_ca_file(ca).expect("the test CA loads");
    }
    if let Some(max) = max_bytes {
        options.max_bytes = max;
    }
    options
}

// --- Set-up ------------------------------------------------------------------------------------

/// The clients' wheels.
pub(crate) fn internet_wheels() -> Vec<PathBuf> {
    pure_wheels("internet", &INTERNET_WHEELS)
}

/// The app with the clients in `packages/`.
fn internet_code(py: &Py) -> PathBuf {
    code_with_wheels(py, INTERNET_APP, "internet-code", &internet_wheels())
}

/// The app on one warm instance (`vcpus: 1`) of an executor with the given network options.
struct Internet {
    py: Py,
    msg: Message,
    ex: Executor,
}

impl Internet {
    fn start(internet: bool, net: NetOptions) -> Internet {
        Internet::start_with(internet, net, 30)
    }

    /// The same, with `resources.seconds` = `seconds`.
    fn start_with(internet: bool, net: NetOptions, seconds: u64) -> Internet {
        let py = Py::new();
        let code = internet_code(&py);
        let code_ref = py.code(&code);
        let msg = py.program(
            &code_ref,
            "main:app",
            json!({
                "environment": {
                    "reproducible": false,
                    "internet": internet,
                    "aleph_api": false,
                    "shared_cache": false,
                },
                "resources": {"vcpus": 1, "memory": 256, "seconds": seconds},
            }),
        );
        let mut config = config(true);
        config.host.net = Arc::new(net);
        let ex = py.executor(config);
        Internet { py, msg, ex }
    }

    /// `GET /<route>?<params>`: the app's JSON answer (always a 200).
    async fn get(&self, route: &str, params: &[(&str, &str)]) -> Fetch {
        let line = format!("GET /{route}?{}", query(params));
        let o = run(&self.ex, &self.msg, http(&line)).await;
        let reply = ok_json(&o);
        Fetch { line, reply }
    }

    /// Fetches `url` with `client` (a route of [`URL_CLIENTS`]).
    async fn fetch(&self, client: &str, url: &str) -> Fetch {
        self.get(client, &[("url", url)]).await
    }

    async fn shutdown(self) {
        self.ex.shutdown().await;
        drop(self.py);
    }
}

/// One answer of the app, and the request that got it (for failure messages).
struct Fetch {
    line: String,
    reply: Value,
}

impl Fetch {
    fn ok(&self) -> bool {
        self.reply["ok"] == json!(true)
    }

    /// Asserts a successful fetch with `status` and `body`.
    fn expect(&self, status: u16, body: &str) -> &Self {
        assert!(self.ok(), "{self}");
        assert_eq!(self.reply["status"], json!(status), "{self}");
        assert_eq!(self.reply["body"], json!(body), "{self}");
        self
    }

    /// Asserts a successful exchange with the echo server that got `body` back.
    fn expect_echo(&self, body: &str) -> &Self {
        assert!(self.ok(), "{self}");
        assert_eq!(self.reply["body"], json!(body), "{self}");
        self
    }

    /// The exception's chain: type names, outermost first.
    fn chain(&self) -> Vec<String> {
        self.reply["chain"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every message in the exception's chain, joined.
    fn messages(&self) -> String {
        self.reply["messages"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str())
                    .collect::<Vec<_>>()
                    .join(" | ")
            })
            .unwrap_or_default()
    }

    /// Asserts a failure whose chain holds a `PermissionError` and whose messages say all of
    /// `needles`.
    fn expect_permission_error(&self, needles: &[&str]) -> &Self {
        self.expect_error("PermissionError", needles)
    }

    /// Asserts a failure whose chain holds `exception` and whose messages say all of `needles`.
    fn expect_error(&self, exception: &str, needles: &[&str]) -> &Self {
        assert!(!self.ok(), "expected a failure\n{self}");
        assert!(
            self.chain().iter().any(|t| t == exception),
            "expected {exception} in the exception's chain\n{self}"
        );
        let messages = self.messages();
        for needle in needles {
            assert!(messages.contains(needle), "expected {needle:?}\n{self}");
        }
        self
    }

    fn f64(&self, key: &str) -> f64 {
        self.reply[key]
            .as_f64()
            .unwrap_or_else(|| panic!("no number {key:?}\n{self}"))
    }
}

impl std::fmt::Display for Fetch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "request: {}\nanswer: {}",
            self.line,
            serde_json::to_string_pretty(&self.reply).unwrap()
        )
    }
}

/// A query string: every byte but the unreserved ones percent-encoded.
fn query(params: &[(&str, &str)]) -> String {
    fn encode(s: &str) -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    }
    params
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// `host` and `port` parameters for a route that takes an address.
fn address(addr: std::net::SocketAddr) -> (String, String) {
    (addr.ip().to_string(), addr.port().to_string())
}

/// Every client of the app once against `lb` (HTTP and HTTPS for the URL clients, both echo
/// routes, `http.client` both ways); each answer goes to `check` with a label.
async fn every_client(t: &Internet, lb: &Loopback, check: impl Fn(&str, &Fetch)) {
    for client in URL_CLIENTS {
        for base in [lb.base_url(), lb.https_base_url()] {
            let f = t.fetch(client, &format!("{base}/hello")).await;
            check(&format!("{client} {base}"), &f);
        }
    }
    for (tls, addr) in [("0", lb.http_addr()), ("1", lb.https_addr())] {
        let (host, port) = address(addr);
        let f = t
            .get(
                "http_client",
                &[
                    ("host", &host),
                    ("port", &port),
                    ("path", "/hello"),
                    ("tls", tls),
                ],
            )
            .await;
        check(&format!("http_client tls={tls}"), &f);
    }
    let (host, port) = address(lb.echo_addr());
    for route in ["asyncio_echo", "socket_echo"] {
        let f = t
            .get(route, &[("host", &host), ("port", &port), ("msg", "ping")])
            .await;
        check(route, &f);
    }
}

/// What every client gets from the loopback servers when it may reach them: `/hello`'s text,
/// or the echo of `ping`.
fn expect_hello_or_echo(what: &str, f: &Fetch) {
    if what.ends_with("_echo") {
        f.expect_echo("ping");
    } else {
        f.expect(200, loopback::HELLO);
    }
}

// --- The tests ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_internet_every_client_reaches_the_loopback_servers_over_http_and_https() {
    let lb = Loopback::start();
    let t = Internet::start(true, net_options(&LOOPBACK, Some(&lb.ca_pem_path()), None));

    // GET over HTTP and HTTPS (library defaults: the node's roots plus its CA file), both
    // ways of http.client, both echo routes.
    every_client(&t, &lb, expect_hello_or_echo).await;

    // 20 MiB uploads (more than one call carries) through a blocking socket and through the
    // loop's transport come back whole: the echo's length is counted by the app.
    for client in ["urllib", "aiohttp"] {
        let size = (20 << 20).to_string();
        let f = t
            .get(
                client,
                &[
                    ("url", &format!("{}/echo", lb.base_url())),
                    ("data_bytes", &size),
                ],
            )
            .await;
        assert!(f.ok(), "{f}");
        assert_eq!(f.reply["len"], json!(20 << 20), "{f}");
    }

    for client in URL_CLIENTS {
        // A POST body goes out and comes back.
        let sent = format!("posted through {client}: {}", "é ".repeat(100));
        t.get(
            client,
            &[("url", &format!("{}/echo", lb.base_url())), ("data", &sent)],
        )
        .await
        .expect(200, &sent);
        // A redirect between allowed addresses is followed.
        let to = format!("{}/hello", lb.https_base_url());
        t.fetch(
            client,
            &format!("{}/redirect?{}", lb.base_url(), query(&[("to", &to)])),
        )
        .await
        .expect(200, loopback::HELLO);
        // A body of several reads (and several host calls) arrives whole.
        let f = t
            .fetch(
                client,
                &format!("{}/big?bytes=3000000", lb.https_base_url()),
            )
            .await;
        assert!(f.ok(), "{f}");
        assert_eq!(f.reply["len"], json!(3_000_000), "{f}");
    }

    // A name: resolved by the host, and the one the certificate is checked against.
    t.fetch("urllib", &format!("{}/hello", lb.https_localhost_url()))
        .await
        .expect(200, loopback::HELLO);
    let port = lb.https_addr().port().to_string();
    t.get(
        "http_client",
        &[
            ("host", "localhost"),
            ("port", &port),
            ("path", "/hello"),
            ("tls", "1"),
        ],
    )
    .await
    .expect(200, loopback::HELLO);

    // Longer messages through both echo routes.
    let (host, port) = address(lb.echo_addr());
    let long = "0123456789".repeat(5000);
    for route in ["asyncio_echo", "socket_echo"] {
        t.get(route, &[("host", &host), ("port", &port), ("msg", &long)])
            .await
            .expect_echo(&long);
    }
    assert!(lb.echo_connections() >= 4, "{lb:?}");

    // A server whose certificate comes from a CA the node was not told about is refused
    // before any request reaches it.
    let stranger = Loopback::start();
    for client in ["urllib", "requests", "httpx_async", "aiohttp"] {
        let f = t
            .fetch(client, &format!("{}/hello", stranger.https_base_url()))
            .await;
        assert!(!f.ok(), "{f}");
        assert!(
            f.chain().iter().any(|t| t.contains("SSL")),
            "expected a TLS verification error\n{f}"
        );
    }
    let (host, port) = address(stranger.https_addr());
    t.get(
        "http_client",
        &[
            ("host", &host),
            ("port", &port),
            ("path", "/hello"),
            ("tls", "1"),
        ],
    )
    .await
    .expect_error("SSLCertVerificationError", &[]);
    assert_eq!(
        stranger.requests(),
        0,
        "a request got past an untrusted TLS handshake"
    );

    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_internet_every_client_reaches_a_server_over_ipv6() {
    // The same servers on IPv6's loopback address, reached by its literal (`http://[::1]:…`):
    // the guest's sockets are AF_INET6, the host connects over IPv6, TLS names the address.
    let lb = Loopback::start_on(std::net::Ipv6Addr::LOCALHOST);
    assert!(
        lb.base_url().starts_with("http://[::1]:"),
        "{}",
        lb.base_url()
    );
    let t = Internet::start(true, net_options(&LOOPBACK, Some(&lb.ca_pem_path()), None));
    every_client(&t, &lb, expect_hello_or_echo).await;
    // Only ::1 is allowed besides 127.0.0.0/8: the same server is refused without it.
    let t4 = Internet::start(
        true,
        net_options(&LOOPBACK[..1], Some(&lb.ca_pem_path()), None),
    );
    t4.fetch("urllib", &format!("{}/hello", lb.base_url()))
        .await
        .expect_permission_error(&["loopback", "--allow-net"]);
    t4.shutdown().await;
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_internet_every_client_gets_a_permission_error_naming_the_flag() {
    let lb = Loopback::start();
    // The node allows loopback: only the program's flag stands in the way.
    let t = Internet::start(false, net_options(&LOOPBACK, Some(&lb.ca_pem_path()), None));

    every_client(&t, &lb, |_, f| {
        f.expect_permission_error(&[NO_INTERNET]);
    })
    .await;
    // Resolving a name is refused the same way.
    t.fetch("urllib", &format!("{}/hello", lb.https_localhost_url()))
        .await
        .expect_permission_error(&[NO_INTERNET]);
    let url = format!("{}/hello", lb.base_url());
    let f = t
        .get(
            "gather_slow",
            &[("url1", &url), ("url2", &url), ("lib", "aiohttp")],
        )
        .await;
    f.expect_permission_error(&[NO_INTERNET]);

    assert_eq!(lb.requests(), 0, "an HTTP request reached the server");
    assert_eq!(
        lb.echo_connections(),
        0,
        "a connection reached the echo server"
    );
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_is_forbidden_unless_the_node_allows_it() {
    let lb = Loopback::start();
    // The flag is set, the node allows nothing beyond public addresses.
    let t = Internet::start(true, net_options(&[], Some(&lb.ca_pem_path()), None));

    every_client(&t, &lb, |_, f| {
        f.expect_permission_error(&["loopback", "--allow-net"]);
    })
    .await;
    // A name that resolves to loopback addresses only is refused as well.
    t.fetch("urllib", &format!("{}/hello", lb.https_localhost_url()))
        .await
        .expect_permission_error(&["loopback", "--allow-net"]);

    assert_eq!(lb.requests(), 0, "an HTTP request reached the server");
    assert_eq!(
        lb.echo_connections(),
        0,
        "a connection reached the echo server"
    );
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_from_an_allowed_server_to_a_forbidden_address_is_refused() {
    let allowed = Loopback::start();
    let forbidden = Loopback::start_on(Ipv4Addr::new(127, 0, 0, 2));
    // Only the allowed server's own address.
    let t = Internet::start(
        true,
        net_options(&["127.0.0.1/32"], Some(&allowed.ca_pem_path()), None),
    );

    // The allowed server answers, its redirects to itself are followed.
    let to = format!("{}/hello", allowed.base_url());
    let hop = format!("{}/redirect?{}", allowed.base_url(), query(&[("to", &to)]));
    for client in URL_CLIENTS {
        t.fetch(client, &hop).await.expect(200, loopback::HELLO);
    }
    let before = allowed.requests();

    // The redirect to 127.0.0.2 (a live server) is refused by every client.
    let to = format!("{}/hello", forbidden.base_url());
    let hop = format!("{}/redirect?{}", allowed.base_url(), query(&[("to", &to)]));
    for client in URL_CLIENTS {
        t.fetch(client, &hop)
            .await
            .expect_permission_error(&["--allow-net"]);
    }
    assert!(
        allowed.requests() >= before + URL_CLIENTS.len() as u64,
        "the allowed server did not see the redirecting requests"
    );
    // So is going there directly.
    t.fetch("urllib", &to)
        .await
        .expect_permission_error(&["--allow-net"]);
    let (host, port) = address(forbidden.echo_addr());
    t.get("socket_echo", &[("host", &host), ("port", &port)])
        .await
        .expect_permission_error(&["--allow-net"]);

    assert_eq!(forbidden.requests(), 0, "a request reached 127.0.0.2");
    assert_eq!(
        forbidden.echo_connections(),
        0,
        "a connection reached 127.0.0.2"
    );
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_fetches_overlap_inside_a_request_and_across_requests() {
    let lb = Loopback::start();
    let t = Internet::start(true, net_options(&LOOPBACK, Some(&lb.ca_pem_path()), None));
    // Boot the instance and import both async clients outside the timings.
    for client in ["aiohttp", "httpx_async"] {
        t.fetch(client, &format!("{}/hello", lb.base_url()))
            .await
            .expect(200, loopback::HELLO);
    }

    // Two fetches of 500 ms gathered in one request (one HTTP, one HTTPS): together in
    // less than 900 ms.
    let slow_http = format!("{}/slow?ms=500", lb.base_url());
    let slow_https = format!("{}/slow?ms=500", lb.https_base_url());
    for lib in ["aiohttp", "httpx"] {
        let f = t
            .get(
                "gather_slow",
                &[("url1", &slow_http), ("url2", &slow_https), ("lib", lib)],
            )
            .await;
        assert!(f.ok(), "{f}");
        assert_eq!(f.reply["bodies"], json!(["slow 500", "slow 500"]), "{f}");
        let elapsed = f.reply["elapsed_ms"].as_u64().unwrap();
        assert!(
            (500..900).contains(&elapsed),
            "two 500 ms fetches took {elapsed} ms: they did not overlap\n{f}"
        );
    }

    // Two requests, each waiting 500 ms on a fetch, on the one instance (vcpus: 1) at once.
    let (a, b) = tokio::join!(
        t.fetch("aiohttp", &slow_http),
        t.fetch("httpx_async", &slow_https)
    );
    a.expect(200, "slow 500");
    b.expect(200, "slow 500");
    assert_eq!(a.reply["instance"], b.reply["instance"], "{a}\n{b}");
    let (a0, a1, b0, b1) = (
        a.f64("started"),
        a.f64("ended"),
        b.f64("started"),
        b.f64("ended"),
    );
    assert!(
        a0.max(b0) < a1.min(b1),
        "the two requests did not overlap on the instance\n{a}\n{b}"
    );
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_over_the_byte_limit_ends_with_a_clear_error_soon_and_the_instance_goes_on() {
    const LIMIT: u64 = 1 << 20;
    // Larger than the limit, small enough that CPython 3.12.0 can allocate a buffer for the
    // whole body (its http.client reads a Content-Length body in one read).
    const HUGE: u64 = 48 << 20;
    let lb = Loopback::start();
    let t = Internet::start(
        true,
        net_options(&LOOPBACK, Some(&lb.ca_pem_path()), Some(LIMIT)),
    );
    // Boot the instance and import the clients outside the timing.
    for client in ["urllib", "requests", "aiohttp"] {
        t.fetch(client, &format!("{}/hello", lb.base_url()))
            .await
            .expect(200, loopback::HELLO);
    }

    // A body under the limit arrives whole.
    let f = t
        .fetch(
            "urllib",
            &format!("{}/big?bytes={}", lb.base_url(), LIMIT / 2),
        )
        .await;
    assert!(f.ok(), "{f}");
    assert_eq!(f.reply["len"], json!(LIMIT / 2), "{f}");

    // 48 MiB against a limit of 1 MiB: the read fails with an OSError naming the option, over
    // HTTP and HTTPS, raw (urllib) and through requests; aiohttp wraps it in a
    // ClientPayloadError that says it.
    let started = Instant::now();
    let huge = |base: String| format!("{base}/big?bytes={HUGE}");
    for (client, base) in [
        ("urllib", lb.base_url()),
        ("urllib", lb.https_base_url()),
        ("requests", lb.base_url()),
        ("aiohttp", lb.https_base_url()),
    ] {
        let f = t.fetch(client, &huge(base)).await;
        assert!(!f.ok(), "{f}");
        assert!(
            f.messages().contains("--net-max-bytes"),
            "expected the option's name\n{f}"
        );
        if client != "aiohttp" {
            assert_eq!(f.reply["oserror"], json!(true), "expected an OSError\n{f}");
        }
        if client == "urllib" {
            // Nothing wraps a failed read in urllib: the exception is the OSError itself.
            assert_eq!(f.reply["oserrors"][0], json!(true), "{f}");
        }
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_secs(60),
        "four fetches over the limit took {elapsed:?}"
    );
    // The host stopped reading: for each connection the server produced the limit plus what
    // socket buffers hold, not the 48 MiB it was asked for.
    let produced = lb.big_bytes_sent();
    assert!(
        produced < LIMIT / 2 + 4 * (32 << 20),
        "the servers produced {produced} bytes for four connections limited to {LIMIT}"
    );

    // The limit ended those connections, not the instance.
    t.fetch("requests", &format!("{}/hello", lb.https_base_url()))
        .await
        .expect(200, loopback::HELLO);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_fetch_past_the_deadline_ends_with_its_request_and_the_instance_goes_on() {
    let lb = Loopback::start();
    let t = Internet::start_with(true, net_options(&LOOPBACK, None, None), 3);
    let hello = format!("{}/hello", lb.base_url());
    let before = t.fetch("urllib", &hello).await;
    before.expect(200, loopback::HELLO);

    // urllib waits (blocking the instance) for an answer 20 s away; the request's 3 s deadline
    // cancels it: the blocked call fails at once instead of holding the instance until the
    // host gives up on it and takes the instance down.
    let slow = format!("{}/slow?ms=20000", lb.base_url());
    let line = format!("GET /urllib?{}", query(&[("url", &slow)]));
    let started = Instant::now();
    let o = run(&t.ex, &t.msg, http(&line)).await;
    assert_eq!(o.kind, OutcomeKind::Timeout, "{}", show(&o));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    let after = t.fetch("urllib", &hello).await;
    after.expect(200, loopback::HELLO);
    assert_eq!(
        after.reply["instance"], before.reply["instance"],
        "the instance did not survive the cancelled call\n{before}\n{after}"
    );
    t.shutdown().await;
}
