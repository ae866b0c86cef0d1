//! Servers on the loopback interface for the tests of outbound connections, each on an ephemeral
//! port of one address (127.0.0.1 unless asked otherwise, IPv6's ::1 included):
//!
//! - an HTTP/1.1 server (axum): `GET /hello` → `hello from loopback`; `GET /slow?ms=N` → waits N
//!   ms, then `slow N`; `GET /big?bytes=N` → N bytes `x`, streamed 64 KiB at a time with a
//!   `Content-Length` (what it has handed to the connection so far is counted:
//!   [`Loopback::big_bytes_sent`]); `GET /redirect?to=URL` → `302` to `URL`; `POST /echo` → the
//!   request body;
//! - the same app over HTTPS (rustls), with a certificate for `localhost` and the server's
//!   address issued by a CA made for this server alone ([`TestCa`]): its PEM file is what the
//!   node trusts besides its usual roots;
//! - a TCP echo server: every connection gets back what it sends, until it shuts down its side.
//!
//! The servers run on a thread and a runtime of their own, so they answer whatever the test's
//! runtime is busy with (a guest blocked on a socket, say), and [`Loopback::start`] is a plain
//! function: the ports are bound before it returns. Dropping the [`Loopback`] stops everything
//! (listeners and open connections).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The text of `GET /hello`.
pub const HELLO: &str = "hello from loopback";
/// How many bytes `/big` hands to its connection at a time.
pub const BIG_CHUNK: usize = 64 * 1024;
/// How long a TLS handshake may take before the server gives up on the connection.
const HANDSHAKE: Duration = Duration::from_secs(30);

static FILL: [u8; BIG_CHUNK] = [b'x'; BIG_CHUNK];

// --- The test CA -------------------------------------------------------------------------------

/// A CA made for one test server, and the server's certificate, issued by it.
pub struct TestCa {
    dir: tempfile::TempDir,
    ca_pem: String,
    chain: Vec<CertificateDer<'static>>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl TestCa {
    /// A new CA, and a server certificate for `names` (DNS names or IP addresses).
    pub fn new(names: &[String]) -> TestCa {
        use rcgen::{
            BasicConstraints, CertificateParams, DistinguishedName, DnType,
            ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        };
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name = DistinguishedName::new();
        // A name of its own: another test's CA is another issuer, not a bad signature.
        static N: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "aleph-wasm loopback test CA {}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        ca.distinguished_name.push(DnType::CommonName, name);
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);

        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(names.to_vec()).unwrap();
        leaf.distinguished_name = DistinguishedName::new();
        leaf.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        leaf.is_ca = IsCa::ExplicitNoCa;
        leaf.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf.use_authority_key_identifier_extension = true;
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();

        let dir = tempfile::Builder::new()
            .prefix("aleph-wasm-test-ca-")
            .tempdir()
            .unwrap();
        let ca_pem = ca_cert.pem();
        std::fs::write(dir.path().join("ca.pem"), &ca_pem).unwrap();
        TestCa {
            dir,
            ca_pem,
            chain: vec![leaf_cert.der().clone(), ca_cert.der().clone()],
            key: PrivatePkcs8KeyDer::from(leaf_key.serialize_der()),
        }
    }

    /// The CA's certificate as a PEM file (what a node adds to its roots).
    pub fn pem_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The CA's certificate, PEM.
    pub fn pem(&self) -> &str {
        &self.ca_pem
    }

    /// A rustls server configuration presenting the server certificate (and the CA's), with
    /// ALPN `http/1.1`.
    fn server_config(&self) -> rustls::ServerConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                self.chain.clone(),
                PrivateKeyDer::Pkcs8(self.key.clone_key()),
            )
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config
    }
}

// --- The servers -------------------------------------------------------------------------------

/// What the servers have done, for the tests to check.
#[derive(Debug, Default)]
struct Counters {
    /// Bytes `/big` has handed to its connections (each chunk counted as it is produced).
    big_bytes_sent: AtomicU64,
    /// Connections the TCP echo server accepted.
    echo_connections: AtomicU64,
    /// HTTP requests served, both servers.
    requests: AtomicU64,
}

/// An HTTP server, an HTTPS server and a TCP echo server on one loopback address; stopped on
/// drop.
pub struct Loopback {
    ip: IpAddr,
    http: SocketAddr,
    https: SocketAddr,
    echo: SocketAddr,
    ca: TestCa,
    counters: Arc<Counters>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Loopback {
    /// The three servers on 127.0.0.1.
    pub fn start() -> Loopback {
        Loopback::start_on(Ipv4Addr::LOCALHOST)
    }

    /// The three servers on `ip` (a loopback address: 127.0.0.1, 127.0.0.2, …, ::1).
    pub fn start_on(ip: impl Into<IpAddr>) -> Loopback {
        let ip = ip.into();
        let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        if ip != IpAddr::V4(Ipv4Addr::LOCALHOST) {
            names.push(ip.to_string());
        }
        let ca = TestCa::new(&names);
        let bind = || {
            let listener = std::net::TcpListener::bind(SocketAddr::new(ip, 0))
                .unwrap_or_else(|e| panic!("cannot listen on {ip}: {e}"));
            listener.set_nonblocking(true).unwrap();
            listener
        };
        let (http, https, echo) = (bind(), bind(), bind());
        let addrs = (
            http.local_addr().unwrap(),
            https.local_addr().unwrap(),
            echo.local_addr().unwrap(),
        );
        let counters = Arc::new(Counters::default());
        let acceptor = TlsAcceptor::from(Arc::new(ca.server_config()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = {
            let counters = counters.clone();
            std::thread::Builder::new()
                .name(format!("loopback-{ip}"))
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .thread_name("loopback-server")
                        .enable_all()
                        .build()
                        .unwrap();
                    rt.block_on(async move {
                        let http = TcpListener::from_std(http).unwrap();
                        let https = TcpListener::from_std(https).unwrap();
                        let echo = TcpListener::from_std(echo).unwrap();
                        let plain = app(counters.clone());
                        tokio::spawn(async move {
                            let _ = axum::serve(http, plain).await;
                        });
                        let secure = app(counters.clone());
                        let tls = TlsListener::spawn(https, acceptor);
                        tokio::spawn(async move {
                            let _ = axum::serve(tls, secure).await;
                        });
                        tokio::spawn(echo_server(echo, counters));
                        let _ = stopped.await;
                    });
                    // Dropping the runtime cancels every task: listeners and connections.
                    rt.shutdown_timeout(Duration::from_secs(1));
                })
                .unwrap()
        };
        Loopback {
            ip,
            http: addrs.0,
            https: addrs.1,
            echo: addrs.2,
            ca,
            counters,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The servers' address.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// `http://IP:PORT` of the HTTP server.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// `https://IP:PORT` of the HTTPS server (its certificate names the IP).
    pub fn https_base_url(&self) -> String {
        format!("https://{}", self.https)
    }

    /// `https://localhost:PORT` of the HTTPS server (its certificate names `localhost`).
    pub fn https_localhost_url(&self) -> String {
        format!("https://localhost:{}", self.https.port())
    }

    /// The HTTP server's address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http
    }

    /// The HTTPS server's address.
    pub fn https_addr(&self) -> SocketAddr {
        self.https
    }

    /// The TCP echo server's address.
    pub fn echo_addr(&self) -> SocketAddr {
        self.echo
    }

    /// The CA that issued the HTTPS server's certificate.
    pub fn ca(&self) -> &TestCa {
        &self.ca
    }

    /// The CA's PEM file.
    pub fn ca_pem_path(&self) -> PathBuf {
        self.ca.pem_path()
    }

    /// Bytes `/big` has produced so far (both servers): at most one chunk ahead of what its
    /// connections took.
    pub fn big_bytes_sent(&self) -> u64 {
        self.counters.big_bytes_sent.load(Ordering::Relaxed)
    }

    /// Connections the echo server has accepted.
    pub fn echo_connections(&self) -> u64 {
        self.counters.echo_connections.load(Ordering::Relaxed)
    }

    /// HTTP requests the two HTTP servers have served (or started to serve).
    pub fn requests(&self) -> u64 {
        self.counters.requests.load(Ordering::Relaxed)
    }
}

impl Drop for Loopback {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for Loopback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loopback")
            .field("http", &self.http)
            .field("https", &self.https)
            .field("echo", &self.echo)
            .finish()
    }
}

// --- The HTTP app ------------------------------------------------------------------------------

type Params = Query<HashMap<String, String>>;

fn app(counters: Arc<Counters>) -> Router {
    Router::new()
        .route("/hello", get(|| async { HELLO }))
        .route("/slow", get(slow))
        .route("/big", get(big))
        .route("/redirect", get(redirect))
        .route("/echo", post(|body: Bytes| async move { body }))
        .layer(axum::extract::DefaultBodyLimit::max(64 << 20))
        .layer(axum::middleware::from_fn_with_state(
            counters.clone(),
            count_requests,
        ))
        .with_state(counters)
}

async fn count_requests(
    State(counters): State<Arc<Counters>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    counters.requests.fetch_add(1, Ordering::Relaxed);
    next.run(request).await
}

fn bad_request(what: &str) -> Response {
    (StatusCode::BAD_REQUEST, format!("{what}\n")).into_response()
}

/// The number in `?name=`.
fn number(q: &HashMap<String, String>, name: &str) -> Option<u64> {
    q.get(name).and_then(|v| v.parse().ok())
}

async fn slow(Query(q): Params) -> Response {
    let Some(ms) = number(&q, "ms") else {
        return bad_request("?ms=<number> is required");
    };
    tokio::time::sleep(Duration::from_millis(ms)).await;
    format!("slow {ms}").into_response()
}

async fn big(State(counters): State<Arc<Counters>>, Query(q): Params) -> Response {
    let Some(total) = number(&q, "bytes") else {
        return bad_request("?bytes=<number> is required");
    };
    let chunks = futures_util::stream::unfold(total, move |left| {
        let counters = counters.clone();
        async move {
            if left == 0 {
                return None;
            }
            let n = left.min(BIG_CHUNK as u64) as usize;
            counters
                .big_bytes_sent
                .fetch_add(n as u64, Ordering::Relaxed);
            Some((
                Ok::<_, std::io::Error>(Bytes::from_static(&FILL[..n])),
                left - n as u64,
            ))
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, total)
        .body(Body::from_stream(chunks))
        .unwrap()
}

async fn redirect(Query(q): Params) -> Response {
    match q.get("to") {
        Some(to) => (StatusCode::FOUND, [(header::LOCATION, to.clone())]).into_response(),
        None => bad_request("?to=<url> is required"),
    }
}

// --- HTTPS: TLS connections handed to axum -----------------------------------------------------

/// A listener whose connections have completed their TLS handshake: handshakes run on tasks of
/// their own, so a slow or failed one holds up no other connection.
struct TlsListener {
    local: SocketAddr,
    ready: tokio::sync::mpsc::Receiver<(tokio_rustls::server::TlsStream<TcpStream>, SocketAddr)>,
}

impl TlsListener {
    fn spawn(listener: TcpListener, acceptor: TlsAcceptor) -> TlsListener {
        let local = listener.local_addr().unwrap();
        let (tx, ready) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let Ok((tcp, peer)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    // A failed handshake (the client did not trust the CA, say) just ends.
                    if let Ok(Ok(tls)) = tokio::time::timeout(HANDSHAKE, acceptor.accept(tcp)).await
                    {
                        let _ = tx.send((tls, peer)).await;
                    }
                });
            }
        });
        TlsListener { local, ready }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

// --- TCP echo ----------------------------------------------------------------------------------

async fn echo_server(listener: TcpListener, counters: Arc<Counters>) {
    loop {
        let Ok((mut tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        counters.echo_connections.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let (mut r, mut w) = tcp.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut w).await;
        });
    }
}
