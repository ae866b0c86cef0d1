//! Outbound connections for a sandboxed guest: the host resolves names, opens TCP connections,
//! does TLS (rustls, ring) and moves the bytes; the guest holds handles. One [`NetSession`] per
//! instance holds its open connections, which close with it.
//!
//! # The call ABI (`net.*` functions)
//!
//! JSON is UTF-8; the integers of binary arguments and results are u32 little-endian. A failure
//! carries one of the kinds of [`super::kind`], or [`INTERRUPTED`].
//!
//! | function | arguments | result |
//! | --- | --- | --- |
//! | `resolve` | JSON `{"host": str, "port"?: int}` | JSON `{"addresses": [str, …]}` |
//! | `connect` | JSON `{"host": str, "port": int, "timeout_ms"?: int}` or `{"unix": path}` | JSON `{"handle": int, "peer": [ip, port], "local": [ip, port]}` |
//! | `tls` | JSON `{"handle": int, "server_name": str, "alpn"?: [str], "verify"?: bool}` | JSON `{"alpn": str or null, "version": "TLSv1_3", "cipher": str}` |
//! | `send` | handle, then the bytes | u32: the bytes written (all of them) |
//! | `recv` | handle, max, timeout_ms | the bytes read: at least one, at most `max`; empty at end of stream |
//! | `shutdown` | handle | empty: the write side is closed (TLS: `close_notify` first) |
//! | `close` | handle | empty |
//!
//! - `resolve` needs `internet`, except that with `aleph_api` a loopback name (`localhost`) or
//!   address resolves to itself (`127.0.0.1`) without it. An IP literal answers itself. A name
//!   that does not resolve fails with `dns`.
//! - `connect`, in this order: `{"unix": "/tmp/socat-socket"}` ([`API_SOCKET`]) is the guest
//!   API (`permission` without `aleph_api`); any other unix path fails with `refused` (the
//!   sandbox has no other socket). A loopback name or address on port 80, with `aleph_api`, is
//!   the guest API too (the program's own `localhost` serves it, as on Aleph's VMs); its peer is
//!   `["127.0.0.1", 80]`, a unix one's is the path. Anything else needs `internet` (`permission`,
//!   `content.environment.internet is false`); the name is resolved, every address is checked
//!   against the node's [`AddressPolicy`] (`forbidden` when none is allowed), and the allowed
//!   ones are tried in order within the timeout (`timeout_ms`, at most
//!   [`NetOptions::connect_timeout`], resolution included). At most
//!   [`NetOptions::max_connections`] connections are open at once (`limit`). Failures name the
//!   destination: `refused`, `reset`, `timeout`, `io`.
//! - `tls` upgrades a TCP connection in place to a TLS client. `server_name` is checked against
//!   the certificate, which must chain to Mozilla's roots (webpki-roots) or to
//!   [`NetOptions::extra_roots`]; `verify: false` accepts any certificate (the guest's explicit
//!   choice, as `ssl.CERT_NONE`). The handshake's failures have the kind `tls` and rustls's text;
//!   after one, the connection is closed. A `recv` waiting on the connection is interrupted
//!   (kind [`INTERRUPTED`]: read again, now through TLS — how asyncio's `start_tls` upgrades a
//!   connection its transport reads); a `send` in flight makes the upgrade fail (`bad_args`), as
//!   does a connection that is already TLS or is the guest API.
//! - `recv`: `max` is capped at [`MAX_RECV`]; `timeout_ms` [`WAIT_FOREVER`] (`0xFFFFFFFF`)
//!   waits as long as it takes, 0 only takes what is ready (`timeout` otherwise). A connection
//!   that has received more than [`NetOptions::max_bytes`] fails with `limit` and is closed.
//! - A `recv` and a `send` on one connection may be in flight at once, and calls on different
//!   connections run concurrently. `close` ends what is in flight on the connection (`bad_handle`).
//!
//! Traffic on the network (not the guest API's) is counted per program in [`NetCounters`]:
//! bytes received and sent (TLS: the application's bytes) and connections opened.

use std::collections::HashMap;
use std::fmt;
use std::future::{Future, poll_fn};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use tokio::io::{
    AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf, ReadHalf, WriteHalf,
};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, Notify};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::{CryptoProvider, ring};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{
    self, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use super::policy::AddressPolicy;
use super::{Grants, failure, kind};
use crate::channel::{CallFailure, CallResult};

/// The unix socket path of the guest API, as on Aleph's VMs (`ALEPH_API_UNIX_SOCKET`).
pub const API_SOCKET: &str = "/tmp/socat-socket";

/// The most bytes one `recv` returns (1 MiB).
pub const MAX_RECV: u32 = 1 << 20;

/// The `timeout_ms` of a `recv` that waits as long as it takes.
pub const WAIT_FOREVER: u32 = u32::MAX;

/// The failure kind of a `recv` that a TLS upgrade of its connection interrupted: read again.
pub const INTERRUPTED: &str = "interrupted";

/// The message of a call that needs `environment.internet`.
pub(crate) const NO_INTERNET: &str = "content.environment.internet is false";
/// The message of a call that needs `environment.aleph_api`.
pub(crate) const NO_API: &str = "content.environment.aleph_api is false";

// --- Options -----------------------------------------------------------------------------------

/// The node's options for outbound connections (`run` and `serve`, `docs/host.md`).
pub struct NetOptions {
    /// Which addresses programs may connect to (`--allow-net`).
    pub policy: AddressPolicy,
    /// Root certificates trusted besides Mozilla's (webpki-roots) (`--ca-file`). The TLS
    /// configuration is built from them at the first handshake: set them before the options
    /// are shared (or with [`NetOptions::add_ca_file`]).
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// Connections one instance may have open at once (`--net-max-connections`, default 64).
    pub max_connections: usize,
    /// Bytes one connection may receive (`--net-max-bytes`, default 1 GiB).
    pub max_bytes: u64,
    /// The longest a connect (resolution included) or a TLS handshake may take (default 10 s).
    pub connect_timeout: Duration,
    /// The TLS client configurations, built once.
    tls: OnceLock<Result<TlsConfigs, String>>,
}

impl Default for NetOptions {
    fn default() -> Self {
        Self {
            policy: AddressPolicy::default(),
            extra_roots: Vec::new(),
            max_connections: 64,
            max_bytes: 1 << 30,
            connect_timeout: Duration::from_secs(10),
            tls: OnceLock::new(),
        }
    }
}

impl fmt::Debug for NetOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NetOptions")
            .field("policy", &self.policy)
            .field("extra_roots", &self.extra_roots.len())
            .field("max_connections", &self.max_connections)
            .field("max_bytes", &self.max_bytes)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl NetOptions {
    /// Trusts the root certificates of the PEM file at `path` besides the others (`--ca-file`);
    /// the error names the file and says what is wrong with it.
    pub fn add_ca_file(&mut self, path: &Path) -> Result<(), String> {
        let pem = std::fs::read(path)
            .map_err(|e| format!("--ca-file {}: cannot read it: {e}", path.display()))?;
        let roots = parse_ca_pem(&pem).map_err(|e| format!("--ca-file {}: {e}", path.display()))?;
        self.extra_roots.extend(roots);
        self.tls = OnceLock::new();
        Ok(())
    }

    /// The TLS client configurations (built at the first call).
    fn tls_configs(&self) -> Result<&TlsConfigs, CallFailure> {
        self.tls
            .get_or_init(|| TlsConfigs::build(&self.extra_roots))
            .as_ref()
            .map_err(|e| failure(kind::TLS, format!("the node's TLS configuration: {e}")))
    }
}

/// The certificates of a PEM file of CA certificates, each checked to be a usable root.
fn parse_ca_pem(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut roots = Vec::new();
    let mut check = RootCertStore::empty();
    for (i, cert) in CertificateDer::pem_slice_iter(pem).enumerate() {
        let cert = cert.map_err(|e| format!("not a PEM file of certificates: {e}"))?;
        check
            .add(cert.clone())
            .map_err(|e| format!("certificate {} is not a usable root: {e}", i + 1))?;
        roots.push(cert);
    }
    if roots.is_empty() {
        return Err("no certificate in it (a PEM file of CERTIFICATE blocks)".into());
    }
    Ok(roots)
}

/// The TLS client configurations of a node: verifying, and not (`verify: false`). ALPN is set
/// per connection on a copy.
struct TlsConfigs {
    verified: Arc<ClientConfig>,
    unverified: Arc<ClientConfig>,
}

impl TlsConfigs {
    fn build(extra_roots: &[CertificateDer<'static>]) -> Result<Self, String> {
        let provider = Arc::new(ring::default_provider());
        let mut roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        for (i, cert) in extra_roots.iter().enumerate() {
            roots
                .add(cert.clone())
                .map_err(|e| format!("extra root certificate {}: {e}", i + 1))?;
        }
        let verified = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let unverified = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth();
        Ok(Self {
            verified: Arc::new(verified),
            unverified: Arc::new(unverified),
        })
    }
}

/// The verifier of `verify: false`: any certificate for any name (the handshake's signatures
/// are still checked with the certificate's key, as OpenSSL does under `CERT_NONE`).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

// --- Counters and the guest API ----------------------------------------------------------------

/// A program's traffic on the network (its instances' connections, not the guest API's),
/// shared by its sessions so a node can report it.
#[derive(Debug, Default)]
pub struct NetCounters {
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    connections: AtomicU64,
}

impl NetCounters {
    /// Bytes received (TLS: decrypted), so far.
    pub fn bytes_in(&self) -> u64 {
        self.bytes_in.load(Ordering::Relaxed)
    }

    /// Bytes sent (TLS: before encryption), so far.
    pub fn bytes_out(&self) -> u64 {
        self.bytes_out.load(Ordering::Relaxed)
    }

    /// Connections opened, so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
}

/// The guest API as a program reaches it in-process: each call is a new connection, whose
/// other end an HTTP server serves.
pub trait ApiConnector: Send + Sync + 'static {
    /// A new connection to the guest API.
    fn connect(&self) -> DuplexStream;
}

// --- Connections -------------------------------------------------------------------------------

/// What a connection runs on.
enum Stream {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Api(DuplexStream),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
            Stream::Api(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
            Stream::Api(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
            Stream::Api(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
            Stream::Api(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// One open connection: its halves, each behind its own lock so a `recv` and a `send` can be in
/// flight together. A half is `None` once the stream is gone (a failed TLS upgrade).
struct Conn {
    /// `host:port`, for messages.
    dest: String,
    /// The guest API's stream (not counted as traffic, no TLS).
    api: bool,
    /// The peer's address (the server name of a TLS upgrade without one).
    peer_ip: Option<IpAddr>,
    reader: Mutex<Option<ReadHalf<Stream>>>,
    writer: Mutex<Option<WriteHalf<Stream>>>,
    /// Bytes received so far.
    received: AtomicU64,
    /// A TLS upgrade is under way: a waiting `recv` gives way.
    upgrading: AtomicBool,
    /// Closed: whatever is in flight ends.
    closed: AtomicBool,
    /// Wakes what is in flight when `upgrading` or `closed` is set.
    wake: Notify,
}

impl Conn {
    fn new(dest: String, api: bool, peer_ip: Option<IpAddr>, stream: Stream) -> Self {
        let (reader, writer) = tokio::io::split(stream);
        Self {
            dest,
            api,
            peer_ip,
            reader: Mutex::new(Some(reader)),
            writer: Mutex::new(Some(writer)),
            received: AtomicU64::new(0),
            upgrading: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }

    /// Ends what is in flight on the connection; the stream closes when the last call lets go.
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.wake.notify_waiters();
    }

    fn closed_failure(&self) -> CallFailure {
        failure(
            kind::BAD_HANDLE,
            format!("the connection to {} was closed", self.dest),
        )
    }

    /// Why a call in flight must stop now, if it must: the connection was closed, or (for a
    /// read, `by_upgrade`) a TLS upgrade wants it.
    fn interruption(&self, by_upgrade: bool) -> Option<CallFailure> {
        if self.closed.load(Ordering::SeqCst) {
            Some(self.closed_failure())
        } else if by_upgrade && self.upgrading.load(Ordering::SeqCst) {
            Some(failure(
                INTERRUPTED,
                format!(
                    "a TLS upgrade of the connection to {} interrupted this read: read again",
                    self.dest
                ),
            ))
        } else {
            None
        }
    }

    /// Resolves when a call in flight must stop (see [`Conn::interruption`]).
    async fn interrupted(&self, by_upgrade: bool) -> CallFailure {
        loop {
            let mut notified = pin!(self.wake.notified());
            // Registered before the flags are read: a wake between the two is not lost.
            notified.as_mut().enable();
            if let Some(why) = self.interruption(by_upgrade) {
                return why;
            }
            notified.await;
        }
    }

    /// Runs `work` unless the connection is interrupted first.
    async fn unless_interrupted<T>(
        &self,
        by_upgrade: bool,
        work: impl Future<Output = T>,
    ) -> Result<T, CallFailure> {
        tokio::select! {
            biased;
            why = self.interrupted(by_upgrade) => Err(why),
            done = work => Ok(done),
        }
    }
}

/// Resets a connection's `upgrading` flag when the upgrade ends, however it ends.
struct Upgrading<'a>(&'a Conn);

impl Drop for Upgrading<'_> {
    fn drop(&mut self) {
        self.0.upgrading.store(false, Ordering::SeqCst);
    }
}

/// An instance's open connections.
struct Table {
    open: HashMap<u32, Arc<Conn>>,
    /// Connections being opened (counted against the limit).
    pending: usize,
    next: u32,
}

/// A place for a connection being opened; given back if it is not used.
struct Slot<'a> {
    session: &'a NetSession,
    held: bool,
}

impl Slot<'_> {
    /// Opens `conn` in the place: its handle.
    fn open(mut self, conn: Conn) -> u32 {
        let mut table = self.session.table();
        table.pending = table.pending.saturating_sub(1);
        self.held = false;
        let mut handle = table.next;
        while handle == 0 || table.open.contains_key(&handle) {
            handle = handle.wrapping_add(1);
        }
        table.next = handle.wrapping_add(1);
        table.open.insert(handle, Arc::new(conn));
        handle
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if self.held {
            let mut table = self.session.table();
            table.pending = table.pending.saturating_sub(1);
        }
    }
}

// --- The session -------------------------------------------------------------------------------

/// One instance's outbound connections, under its program's grants: the `net.*` functions.
/// Dropping it closes every connection.
pub struct NetSession {
    grants: Grants,
    options: Arc<NetOptions>,
    api: Option<Arc<dyn ApiConnector>>,
    counters: Arc<NetCounters>,
    table: std::sync::Mutex<Table>,
}

#[derive(Deserialize)]
pub(crate) struct ResolveArgs {
    pub(crate) host: String,
    #[serde(default)]
    port: u16,
}

#[derive(Deserialize)]
pub(crate) struct ConnectArgs {
    pub(crate) host: Option<String>,
    pub(crate) port: Option<u16>,
    timeout_ms: Option<u64>,
    pub(crate) unix: Option<String>,
}

#[derive(Deserialize)]
struct TlsArgs {
    handle: u32,
    #[serde(default)]
    server_name: String,
    #[serde(default)]
    alpn: Vec<String>,
    #[serde(default = "yes")]
    verify: bool,
}

fn yes() -> bool {
    true
}

impl NetSession {
    /// The session of an instance of a program granted `grants`, on a node with `options`;
    /// `api` reaches the guest API (when the program has it), `counters` count the program's
    /// traffic.
    pub fn new(
        grants: Grants,
        options: Arc<NetOptions>,
        api: Option<Arc<dyn ApiConnector>>,
        counters: Arc<NetCounters>,
    ) -> Self {
        Self {
            grants,
            options,
            api,
            counters,
            table: std::sync::Mutex::new(Table {
                open: HashMap::new(),
                pending: 0,
                next: 1,
            }),
        }
    }

    /// Runs the function `function` (the name after `net.`) with `args` (the module's ABI).
    pub async fn call(&self, function: &str, args: Vec<u8>) -> CallResult {
        match function {
            "resolve" => self.resolve(&args).await,
            "connect" => self.connect(&args).await,
            "tls" => self.tls(&args).await,
            "send" => self.send(&args).await,
            "recv" => self.recv(&args).await,
            "shutdown" => self.shutdown(&args).await,
            "close" => self.close(&args),
            other => Err(crate::channel::calls::unknown(&format!("net.{other}"))),
        }
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.table().open.len()
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn get(&self, handle: u32) -> Result<Arc<Conn>, CallFailure> {
        self.table()
            .open
            .get(&handle)
            .cloned()
            .ok_or_else(|| failure(kind::BAD_HANDLE, format!("no connection {handle} is open")))
    }

    /// Closes `conn` (open as `handle`) and forgets it.
    fn discard(&self, handle: u32, conn: &Arc<Conn>) {
        let mut table = self.table();
        if table
            .open
            .get(&handle)
            .is_some_and(|c| Arc::ptr_eq(c, conn))
        {
            table.open.remove(&handle);
        }
        drop(table);
        conn.close();
    }

    /// A place for one more connection, if the limit allows it.
    fn reserve(&self) -> Result<Slot<'_>, CallFailure> {
        let mut table = self.table();
        let max = self.options.max_connections;
        if table.open.len() + table.pending >= max {
            return Err(failure(
                kind::LIMIT,
                format!(
                    "an instance may have at most {max} connections open at once (node option \
                     --net-max-connections)"
                ),
            ));
        }
        table.pending += 1;
        Ok(Slot {
            session: self,
            held: true,
        })
    }

    // --- resolve ---

    async fn resolve(&self, args: &[u8]) -> CallResult {
        let args: ResolveArgs = json_args("net.resolve", args)?;
        let addresses = if self.grants.internet {
            let deadline = Instant::now() + self.options.connect_timeout;
            lookup(&args.host, args.port, deadline).await?
        } else if self.grants.aleph_api
            && let Some(ip) = loopback_host(&args.host)
        {
            vec![ip]
        } else {
            return Err(failure(kind::PERMISSION, NO_INTERNET));
        };
        let addresses: Vec<String> = addresses.iter().map(IpAddr::to_string).collect();
        Ok(json!({ "addresses": addresses }).to_string().into_bytes())
    }

    // --- connect ---

    async fn connect(&self, args: &[u8]) -> CallResult {
        let args: ConnectArgs = json_args("net.connect", args)?;
        match (args.unix, args.host) {
            (Some(path), None) => self.connect_unix(&path),
            (None, Some(host)) => {
                let port = args.port.ok_or_else(|| {
                    failure(kind::BAD_ARGS, "net.connect: a \"host\" needs a \"port\"")
                })?;
                self.connect_host(&host, port, args.timeout_ms).await
            }
            _ => Err(failure(
                kind::BAD_ARGS,
                "net.connect takes {\"host\", \"port\"} or {\"unix\"}",
            )),
        }
    }

    fn connect_unix(&self, path: &str) -> CallResult {
        if path != API_SOCKET {
            return Err(failure(
                kind::REFUSED,
                format!(
                    "no unix socket at {path} (the sandbox has only the guest API's, {API_SOCKET})"
                ),
            ));
        }
        if !self.grants.aleph_api {
            return Err(failure(kind::PERMISSION, NO_API));
        }
        let Some(api) = &self.api else {
            return Err(failure(
                kind::REFUSED,
                format!("no unix socket at {path} (this node serves no guest API)"),
            ));
        };
        let slot = self.reserve()?;
        let stream = Stream::Api(api.connect());
        let handle = slot.open(Conn::new("the guest API".into(), true, None, stream));
        let result = json!({ "handle": handle, "peer": API_SOCKET, "local": "" });
        Ok(result.to_string().into_bytes())
    }

    async fn connect_host(&self, host: &str, port: u16, timeout_ms: Option<u64>) -> CallResult {
        let dest = destination(host, port);
        if port == 80
            && self.grants.aleph_api
            && loopback_host(host).is_some()
            && let Some(api) = &self.api
        {
            let slot = self.reserve()?;
            let stream = Stream::Api(api.connect());
            let handle = slot.open(Conn::new("the guest API".into(), true, None, stream));
            let result =
                json!({ "handle": handle, "peer": ["127.0.0.1", 80], "local": ["127.0.0.1", 0] });
            return Ok(result.to_string().into_bytes());
        }
        if !self.grants.internet {
            return Err(failure(kind::PERMISSION, NO_INTERNET));
        }
        let slot = self.reserve()?;
        let limit = timeout_ms
            .map(Duration::from_millis)
            .map_or(self.options.connect_timeout, |t| {
                t.min(self.options.connect_timeout)
            });
        let deadline = Instant::now() + limit;
        let literal = host.parse::<IpAddr>().ok();
        let addresses = match literal {
            Some(ip) => vec![ip],
            None => lookup(host, port, deadline).await?,
        };
        let mut forbidden = None;
        let allowed: Vec<IpAddr> = addresses
            .into_iter()
            .filter(|ip| match self.options.policy.check(*ip) {
                Ok(()) => true,
                Err(why) => {
                    forbidden.get_or_insert(why);
                    false
                }
            })
            .collect();
        if allowed.is_empty() {
            let why = forbidden.unwrap_or_else(|| "no address".into());
            let message = match literal {
                Some(_) => why,
                None => format!("{host} resolves to no address the node allows: {why}"),
            };
            return Err(failure(kind::FORBIDDEN, message));
        }
        let mut last = None;
        for ip in allowed {
            let target = SocketAddr::new(ip, port);
            let at = match literal {
                Some(_) => dest.clone(),
                None => format!("{dest} ({ip})"),
            };
            match tokio::time::timeout_at(deadline, TcpStream::connect(target)).await {
                Err(_) => {
                    return Err(failure(
                        kind::TIMEOUT,
                        format!(
                            "the connection to {at} timed out after {} ms",
                            limit.as_millis()
                        ),
                    ));
                }
                Ok(Err(e)) => last = Some(io_failure(&e, &at)),
                Ok(Ok(tcp)) => {
                    let _ = tcp.set_nodelay(true);
                    let peer = tcp.peer_addr().unwrap_or(target);
                    let local = tcp
                        .local_addr()
                        .unwrap_or_else(|_| SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0));
                    let handle = slot.open(Conn::new(dest, false, Some(ip), Stream::Tcp(tcp)));
                    self.counters.connections.fetch_add(1, Ordering::Relaxed);
                    let result = json!({
                        "handle": handle,
                        "peer": [peer.ip().to_string(), peer.port()],
                        "local": [local.ip().to_string(), local.port()],
                    });
                    return Ok(result.to_string().into_bytes());
                }
            }
        }
        Err(last.unwrap_or_else(|| failure(kind::IO, format!("cannot connect to {dest}"))))
    }

    // --- tls ---

    async fn tls(&self, args: &[u8]) -> CallResult {
        let args: TlsArgs = json_args("net.tls", args)?;
        let handle = args.handle;
        let conn = self.get(handle)?;
        if conn.api {
            return Err(failure(
                kind::BAD_ARGS,
                "the guest API's connection has no TLS",
            ));
        }
        let name = self.server_name(&args, &conn)?;
        let mut config = if args.verify {
            self.options.tls_configs()?.verified.clone()
        } else {
            self.options.tls_configs()?.unverified.clone()
        };
        if !args.alpn.is_empty() {
            let mut protocols = Vec::with_capacity(args.alpn.len());
            for p in &args.alpn {
                if p.is_empty() || p.len() > 255 {
                    return Err(failure(
                        kind::BAD_ARGS,
                        format!("net.tls: {p:?} is not an ALPN protocol name"),
                    ));
                }
                protocols.push(p.as_bytes().to_vec());
            }
            let mut with_alpn = (*config).clone();
            with_alpn.alpn_protocols = protocols;
            config = Arc::new(with_alpn);
        }

        // Take the connection: no send may be in flight; a waiting recv gives way.
        if conn.upgrading.load(Ordering::SeqCst) {
            return Err(failure(
                kind::BAD_ARGS,
                format!(
                    "the connection to {} is already being upgraded to TLS",
                    conn.dest
                ),
            ));
        }
        let Ok(mut writer) = conn.writer.try_lock() else {
            return Err(failure(
                kind::BAD_ARGS,
                format!(
                    "a send is in flight on the connection to {}: TLS can start only between sends",
                    conn.dest
                ),
            ));
        };
        if conn
            .upgrading
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return Err(failure(
                kind::BAD_ARGS,
                format!(
                    "the connection to {} is already being upgraded to TLS",
                    conn.dest
                ),
            ));
        }
        let upgrading = Upgrading(&conn);
        conn.wake.notify_waiters();
        let mut reader = conn.reader.lock().await;
        if let Some(why) = conn.interruption(false) {
            return Err(why);
        }
        let (Some(read_half), Some(write_half)) = (reader.take(), writer.take()) else {
            return Err(conn.closed_failure());
        };
        let tcp = match read_half.unsplit(write_half) {
            Stream::Tcp(tcp) => tcp,
            other => {
                let (r, w) = tokio::io::split(other);
                *reader = Some(r);
                *writer = Some(w);
                return Err(failure(
                    kind::BAD_ARGS,
                    format!("the connection to {} is already TLS", conn.dest),
                ));
            }
        };
        let connector = TlsConnector::from(config);
        let handshake =
            tokio::time::timeout(self.options.connect_timeout, connector.connect(name, tcp)).await;
        let tls = match handshake {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                drop((reader, writer, upgrading));
                self.discard(handle, &conn);
                return Err(tls_failure(&e, &conn.dest));
            }
            Err(_) => {
                drop((reader, writer, upgrading));
                self.discard(handle, &conn);
                return Err(failure(
                    kind::TIMEOUT,
                    format!(
                        "the TLS handshake with {} took longer than {} ms",
                        conn.dest,
                        self.options.connect_timeout.as_millis()
                    ),
                ));
            }
        };
        let session = tls.get_ref().1;
        let alpn = session
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        let version = session
            .protocol_version()
            .map(|v| format!("{v:?}"))
            .unwrap_or_default();
        let cipher = session
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))
            .unwrap_or_default();
        let (r, w) = tokio::io::split(Stream::Tls(Box::new(tls)));
        *reader = Some(r);
        *writer = Some(w);
        drop(upgrading);
        let result = json!({ "alpn": alpn, "version": version, "cipher": cipher });
        Ok(result.to_string().into_bytes())
    }

    /// The name a TLS upgrade checks: `server_name`, or the peer's address without one (or,
    /// unverified, when it is not a valid name).
    fn server_name(&self, args: &TlsArgs, conn: &Conn) -> Result<ServerName<'static>, CallFailure> {
        let given = args.server_name.trim();
        if !given.is_empty() {
            match ServerName::try_from(given.to_string()) {
                Ok(name) => return Ok(name),
                Err(_) if args.verify => {
                    return Err(failure(
                        kind::BAD_ARGS,
                        format!("net.tls: {given:?} is not a server name"),
                    ));
                }
                Err(_) => {}
            }
        }
        match conn.peer_ip {
            Some(ip) => Ok(ServerName::IpAddress(ip.into())),
            None => Err(failure(
                kind::BAD_ARGS,
                "net.tls needs a server_name for this connection",
            )),
        }
    }

    // --- send, recv, shutdown, close ---

    async fn send(&self, args: &[u8]) -> CallResult {
        let (handle, data) = handle_arg("net.send", args)?;
        let conn = self.get(handle)?;
        let mut writer = conn.writer.lock().await;
        if let Some(why) = conn.interruption(false) {
            return Err(why);
        }
        let Some(w) = writer.as_mut() else {
            return Err(conn.closed_failure());
        };
        let written = conn
            .unless_interrupted(false, async {
                w.write_all(data).await?;
                w.flush().await
            })
            .await?;
        written.map_err(|e| io_failure(&e, &conn.dest))?;
        if !conn.api {
            self.counters
                .bytes_out
                .fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        let count = u32::try_from(data.len()).unwrap_or(u32::MAX);
        Ok(count.to_le_bytes().to_vec())
    }

    async fn recv(&self, args: &[u8]) -> CallResult {
        let (handle, rest) = handle_arg("net.recv", args)?;
        let (Some(max), Some(timeout_ms), true) =
            (u32_at(rest, 0), u32_at(rest, 4), rest.len() == 8)
        else {
            return Err(failure(
                kind::BAD_ARGS,
                "net.recv takes a handle, a maximum and a timeout (u32 LE each)",
            ));
        };
        if max == 0 {
            return Err(failure(
                kind::BAD_ARGS,
                "net.recv: the maximum must be at least 1",
            ));
        }
        let conn = self.get(handle)?;
        let mut reader = conn.reader.lock().await;
        if let Some(why) = conn.interruption(true) {
            return Err(why);
        }
        let Some(r) = reader.as_mut() else {
            return Err(conn.closed_failure());
        };
        let mut buf = vec![0u8; max.min(MAX_RECV) as usize];
        let read = match timeout_ms {
            0 => {
                let mut read = pin!(r.read(&mut buf));
                match poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await {
                    Poll::Ready(result) => Some(result),
                    Poll::Pending => None,
                }
            }
            WAIT_FOREVER => Some(conn.unless_interrupted(true, r.read(&mut buf)).await?),
            ms => {
                let limit = Duration::from_millis(u64::from(ms));
                conn.unless_interrupted(true, tokio::time::timeout(limit, r.read(&mut buf)))
                    .await?
                    .ok()
            }
        };
        let Some(read) = read else {
            return Err(failure(
                kind::TIMEOUT,
                format!(
                    "nothing was received from {} within {timeout_ms} ms",
                    conn.dest
                ),
            ));
        };
        let n = read.map_err(|e| io_failure(&e, &conn.dest))?;
        if n == 0 {
            return Ok(Vec::new());
        }
        if !conn.api {
            self.counters
                .bytes_in
                .fetch_add(n as u64, Ordering::Relaxed);
        }
        let total = conn.received.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        let limit = self.options.max_bytes;
        if total > limit {
            drop(reader);
            self.discard(handle, &conn);
            return Err(failure(
                kind::LIMIT,
                format!(
                    "the connection to {} received more than {limit} bytes (node option \
                     --net-max-bytes)",
                    conn.dest
                ),
            ));
        }
        buf.truncate(n);
        Ok(buf)
    }

    async fn shutdown(&self, args: &[u8]) -> CallResult {
        let handle = only_handle("net.shutdown", args)?;
        let conn = self.get(handle)?;
        let mut writer = conn.writer.lock().await;
        if let Some(why) = conn.interruption(false) {
            return Err(why);
        }
        let Some(w) = writer.as_mut() else {
            return Err(conn.closed_failure());
        };
        conn.unless_interrupted(false, w.shutdown())
            .await?
            .map_err(|e| io_failure(&e, &conn.dest))?;
        Ok(Vec::new())
    }

    fn close(&self, args: &[u8]) -> CallResult {
        let handle = only_handle("net.close", args)?;
        let conn =
            self.table().open.remove(&handle).ok_or_else(|| {
                failure(kind::BAD_HANDLE, format!("no connection {handle} is open"))
            })?;
        conn.close();
        Ok(Vec::new())
    }
}

impl Drop for NetSession {
    fn drop(&mut self) {
        for (_, conn) in self.table().open.drain() {
            conn.close();
        }
    }
}

// --- Helpers -----------------------------------------------------------------------------------

/// `host:port` (`[::1]:443` for an IPv6 address).
fn destination(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The loopback address a loopback name or address stands for (`localhost` → 127.0.0.1).
pub(crate) fn loopback_host(host: &str) -> Option<IpAddr> {
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.eq_ignore_ascii_case("localhost") {
        return Some(Ipv4Addr::LOCALHOST.into());
    }
    let ip = host.parse::<IpAddr>().ok()?;
    let loopback = match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    };
    loopback.then_some(ip)
}

/// The addresses of `host` (itself if it is an address), in the resolver's order, each once.
async fn lookup(host: &str, port: u16, deadline: Instant) -> Result<Vec<IpAddr>, CallFailure> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    if host.is_empty() {
        return Err(failure(kind::DNS, "an empty name does not resolve"));
    }
    let found = tokio::time::timeout_at(deadline, tokio::net::lookup_host((host, port)))
        .await
        .map_err(|_| failure(kind::TIMEOUT, format!("resolving {host} took too long")))?
        .map_err(|e| failure(kind::DNS, format!("{host} does not resolve: {e}")))?;
    let mut addresses: Vec<IpAddr> = Vec::new();
    for address in found {
        if !addresses.contains(&address.ip()) {
            addresses.push(address.ip());
        }
    }
    if addresses.is_empty() {
        return Err(failure(kind::DNS, format!("{host} has no address")));
    }
    Ok(addresses)
}

/// The failure of an I/O error on the connection to `dest`.
fn io_failure(e: &io::Error, dest: &str) -> CallFailure {
    use io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => failure(
            kind::REFUSED,
            format!("the connection to {dest} was refused"),
        ),
        K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => failure(
            kind::RESET,
            format!("the connection to {dest} was reset: {e}"),
        ),
        K::TimedOut => failure(kind::TIMEOUT, format!("the connection to {dest} timed out")),
        _ => failure(kind::IO, format!("the connection to {dest}: {e}")),
    }
}

/// The failure of a TLS handshake with `dest`.
fn tls_failure(e: &io::Error, dest: &str) -> CallFailure {
    let is_rustls = e
        .get_ref()
        .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some());
    match e.kind() {
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe if !is_rustls => {
            io_failure(e, dest)
        }
        io::ErrorKind::UnexpectedEof if !is_rustls => failure(
            kind::TLS,
            format!("the TLS handshake with {dest} failed: the server closed the connection"),
        ),
        _ => failure(
            kind::TLS,
            format!("the TLS handshake with {dest} failed: {e}"),
        ),
    }
}

/// The JSON arguments of `function`.
pub(crate) fn json_args<'a, T: Deserialize<'a>>(
    function: &str,
    args: &'a [u8],
) -> Result<T, CallFailure> {
    serde_json::from_slice(args)
        .map_err(|e| failure(kind::BAD_ARGS, format!("{function}: bad arguments: {e}")))
}

/// The u32 LE at `at` in `bytes`.
pub(crate) fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let chunk = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(chunk.try_into().ok()?))
}

/// The handle that starts binary arguments, and the rest.
pub(crate) fn handle_arg<'a>(
    function: &str,
    args: &'a [u8],
) -> Result<(u32, &'a [u8]), CallFailure> {
    match (u32_at(args, 0), args.get(4..)) {
        (Some(handle), Some(rest)) => Ok((handle, rest)),
        _ => Err(failure(
            kind::BAD_ARGS,
            format!("{function} takes a handle (u32 LE) first"),
        )),
    }
}

/// Arguments that are a handle and nothing else.
pub(crate) fn only_handle(function: &str, args: &[u8]) -> Result<u32, CallFailure> {
    match handle_arg(function, args)? {
        (handle, []) => Ok(handle),
        _ => Err(failure(
            kind::BAD_ARGS,
            format!("{function} takes a handle (u32 LE) only"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use tokio::io::DuplexStream;
    use tokio::net::TcpListener;
    use tokio_rustls::TlsAcceptor;
    use tokio_rustls::rustls::ServerConfig;
    use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

    const LOOPBACK: [&str; 2] = ["127.0.0.0/8", "::1/128"];
    /// How long a test waits for something that should happen at once.
    const SOON: Duration = Duration::from_secs(10);

    fn options(allow: &[&str]) -> NetOptions {
        NetOptions {
            policy: AddressPolicy::parse(allow).unwrap(),
            ..NetOptions::default()
        }
    }

    fn session(grants: Grants, options: NetOptions) -> NetSession {
        NetSession::new(grants, Arc::new(options), None, Arc::default())
    }

    fn internet() -> Grants {
        Grants {
            internet: true,
            aleph_api: false,
        }
    }

    async fn call_json(s: &NetSession, function: &str, args: Value) -> Result<Value, CallFailure> {
        let out = s.call(function, args.to_string().into_bytes()).await?;
        Ok(serde_json::from_slice(&out).expect("a JSON result"))
    }

    async fn connect(s: &NetSession, host: &str, port: u16) -> Result<u32, CallFailure> {
        let result = call_json(s, "connect", json!({ "host": host, "port": port })).await?;
        Ok(result["handle"].as_u64().expect("a handle") as u32)
    }

    async fn send(s: &NetSession, handle: u32, data: &[u8]) -> CallResult {
        let mut args = handle.to_le_bytes().to_vec();
        args.extend_from_slice(data);
        s.call("send", args).await
    }

    async fn recv(s: &NetSession, handle: u32, max: u32, timeout_ms: u32) -> CallResult {
        let mut args = handle.to_le_bytes().to_vec();
        args.extend_from_slice(&max.to_le_bytes());
        args.extend_from_slice(&timeout_ms.to_le_bytes());
        s.call("recv", args).await
    }

    /// Reads until `want` bytes came (or the end of the stream).
    async fn recv_exactly(s: &NetSession, handle: u32, want: usize) -> Vec<u8> {
        let mut got = Vec::new();
        while got.len() < want {
            let chunk = recv(s, handle, 1 << 16, 10_000).await.expect("recv");
            if chunk.is_empty() {
                break;
            }
            got.extend_from_slice(&chunk);
        }
        got
    }

    fn kind_of<T: fmt::Debug>(result: Result<T, CallFailure>) -> (String, String) {
        let f = result.expect_err("a failure");
        (f.kind, f.message)
    }

    /// A TCP echo server on 127.0.0.1: each connection gets back what it sends, then its
    /// server side shuts down when the client does.
    async fn echo_server() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = tcp.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        port
    }

    /// A server on 127.0.0.1 that hands each connection to `serve`.
    async fn server<F, Fut>(serve: F) -> u16
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(serve(tcp));
            }
        });
        port
    }

    /// A CA, and a TLS echo server on 127.0.0.1 with a certificate for `localhost` issued by
    /// it (ALPN `http/1.1`): the CA's certificate and the server's port.
    async fn tls_echo_server() -> (CertificateDer<'static>, u16) {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        };
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name
            .push(DnType::CommonName, "aleph-wasm host::net test CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
        let provider = Arc::new(ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf_cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
            )
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let port = server(move |tcp| {
            let acceptor = acceptor.clone();
            async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    let (mut r, mut w) = tokio::io::split(tls);
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                }
            }
        })
        .await;
        (ca_cert.der().clone(), port)
    }

    #[tokio::test]
    async fn tcp_echo_round_trip() {
        let port = echo_server().await;
        let counters = Arc::new(NetCounters::default());
        let s = NetSession::new(
            internet(),
            Arc::new(options(&LOOPBACK)),
            None,
            counters.clone(),
        );
        let result = call_json(&s, "connect", json!({"host": "127.0.0.1", "port": port}))
            .await
            .unwrap();
        assert_eq!(result["handle"], 1);
        assert_eq!(result["peer"], json!(["127.0.0.1", port]));
        assert_eq!(result["local"][0], "127.0.0.1");
        assert_eq!(send(&s, 1, b"hello").await.unwrap(), 5u32.to_le_bytes());
        assert_eq!(recv_exactly(&s, 1, 5).await, b"hello");
        // Our side shuts down, the echo server follows: end of stream.
        s.call("shutdown", 1u32.to_le_bytes().to_vec())
            .await
            .unwrap();
        assert_eq!(recv(&s, 1, 100, 10_000).await.unwrap(), b"");
        assert_eq!(
            s.call("close", 1u32.to_le_bytes().to_vec()).await.unwrap(),
            b""
        );
        let (kind, message) = kind_of(s.call("close", 1u32.to_le_bytes().to_vec()).await);
        assert_eq!(kind, "bad_handle", "{message}");
        assert_eq!(
            (
                counters.bytes_in(),
                counters.bytes_out(),
                counters.connections()
            ),
            (5, 5, 1)
        );
        // Handles are not reused: the next connection is 2.
        let next = connect(&s, "127.0.0.1", port).await.unwrap();
        assert_eq!(next, 2);
        assert_eq!(s.open_connections(), 1);
    }

    #[tokio::test]
    async fn resolves_names_and_literals() {
        let s = session(internet(), NetOptions::default());
        let result = call_json(&s, "resolve", json!({"host": "localhost", "port": 443}))
            .await
            .unwrap();
        let addresses = result["addresses"].as_array().unwrap();
        assert!(
            addresses.iter().any(|a| a == "127.0.0.1" || a == "::1"),
            "{addresses:?}"
        );
        let result = call_json(&s, "resolve", json!({"host": "93.184.216.34"}))
            .await
            .unwrap();
        assert_eq!(result, json!({"addresses": ["93.184.216.34"]}));
        let (kind, message) = kind_of(
            call_json(
                &s,
                "resolve",
                json!({"host": "nowhere.invalid", "port": 80}),
            )
            .await,
        );
        assert!(kind == "dns" || kind == "timeout", "{kind}: {message}");
        assert!(message.contains("nowhere.invalid"), "{message}");
    }

    #[tokio::test]
    async fn tls_verified_by_the_extra_roots() {
        let (ca, port) = tls_echo_server().await;
        let mut opts = options(&LOOPBACK);
        opts.extra_roots.push(ca);
        let s = session(internet(), opts);
        let h = connect(&s, "127.0.0.1", port).await.unwrap();
        let args = json!({"handle": h, "server_name": "localhost", "alpn": ["h2", "http/1.1"], "verify": true});
        let result = call_json(&s, "tls", args).await.unwrap();
        assert_eq!(result["alpn"], "http/1.1");
        assert_eq!(result["version"], "TLSv1_3");
        assert!(
            result["cipher"].as_str().unwrap().starts_with("TLS13_"),
            "{result}"
        );
        assert_eq!(send(&s, h, b"over tls").await.unwrap(), 8u32.to_le_bytes());
        assert_eq!(recv_exactly(&s, h, 8).await, b"over tls");
        // Once only; with close_notify on shutdown.
        let (kind, _) =
            kind_of(call_json(&s, "tls", json!({"handle": h, "server_name": "localhost"})).await);
        assert_eq!(kind, "bad_args");
        s.call("shutdown", h.to_le_bytes().to_vec()).await.unwrap();
        assert_eq!(recv(&s, h, 100, 10_000).await.unwrap(), b"");

        // The wrong name.
        let h = connect(&s, "127.0.0.1", port).await.unwrap();
        let (kind, message) = kind_of(
            call_json(
                &s,
                "tls",
                json!({"handle": h, "server_name": "example.org"}),
            )
            .await,
        );
        assert_eq!(kind, "tls", "{message}");
        assert!(message.contains("not valid for name"), "{message}");
        assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
        // The connection is gone with the handshake.
        assert_eq!(kind_of(send(&s, h, b"x").await).0, "bad_handle");
    }

    #[tokio::test]
    async fn tls_without_the_root_fails_unless_unverified() {
        let (_ca, port) = tls_echo_server().await;
        let s = session(internet(), options(&LOOPBACK));
        let h = connect(&s, "127.0.0.1", port).await.unwrap();
        let (kind, message) = kind_of(
            call_json(
                &s,
                "tls",
                json!({"handle": h, "server_name": "localhost", "verify": true}),
            )
            .await,
        );
        assert_eq!(kind, "tls", "{message}");
        assert!(message.contains("certificate"), "{message}");
        assert!(message.contains("UnknownIssuer"), "{message}");

        let h = connect(&s, "127.0.0.1", port).await.unwrap();
        let result = call_json(
            &s,
            "tls",
            json!({"handle": h, "server_name": "not the name", "verify": false}),
        )
        .await
        .unwrap();
        assert_eq!(result["alpn"], Value::Null);
        send(&s, h, b"anyway").await.unwrap();
        assert_eq!(recv_exactly(&s, h, 6).await, b"anyway");
    }

    #[test]
    fn ca_files_are_read_or_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap();
        let good = dir.path().join("ca.pem");
        std::fs::write(&good, ca.pem()).unwrap();
        let mut opts = NetOptions::default();
        opts.add_ca_file(&good).unwrap();
        assert_eq!(opts.extra_roots, vec![ca.der().clone()]);
        assert!(opts.tls_configs().is_ok());

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "nothing here\n").unwrap();
        let why = opts.add_ca_file(&empty).unwrap_err();
        assert!(
            why.contains("empty.pem") && why.contains("no certificate"),
            "{why}"
        );
        let why = opts
            .add_ca_file(&dir.path().join("missing.pem"))
            .unwrap_err();
        assert!(
            why.contains("--ca-file") && why.contains("missing.pem"),
            "{why}"
        );
        assert_eq!(opts.extra_roots.len(), 1);
    }

    #[tokio::test]
    async fn without_grants_only_permission_errors() {
        let s = session(Grants::default(), options(&LOOPBACK));
        for args in [
            json!({"host": "example.org", "port": 443}),
            json!({"host": "127.0.0.1", "port": 80}),
            json!({"host": "localhost", "port": 80}),
        ] {
            let (kind, message) = kind_of(call_json(&s, "connect", args).await);
            assert_eq!(
                (kind.as_str(), message.as_str()),
                ("permission", NO_INTERNET)
            );
        }
        let (kind, message) =
            kind_of(call_json(&s, "resolve", json!({"host": "localhost", "port": 80})).await);
        assert_eq!(
            (kind.as_str(), message.as_str()),
            ("permission", NO_INTERNET)
        );
        let (kind, message) = kind_of(call_json(&s, "connect", json!({"unix": API_SOCKET})).await);
        assert_eq!(
            (kind.as_str(), message.as_str()),
            ("permission", "content.environment.aleph_api is false")
        );
        let (kind, message) =
            kind_of(call_json(&s, "connect", json!({"unix": "/var/run/docker.sock"})).await);
        assert_eq!(kind, "refused");
        assert_eq!(
            message,
            "no unix socket at /var/run/docker.sock (the sandbox has only the guest API's, \
             /tmp/socat-socket)"
        );
    }

    #[tokio::test]
    async fn loopback_is_forbidden_unless_allowed() {
        let port = echo_server().await;
        let s = session(internet(), NetOptions::default());
        let (kind, message) = kind_of(connect(&s, "127.0.0.1", port).await);
        assert_eq!(kind, "forbidden");
        assert_eq!(
            message,
            "127.0.0.1 is a loopback address; the node allows it only with --allow-net"
        );
        let (kind, message) = kind_of(connect(&s, "::ffff:127.0.0.1", port).await);
        assert_eq!(kind, "forbidden", "{message}");
        // A name is checked by what it resolves to.
        let (kind, message) = kind_of(connect(&s, "localhost", port).await);
        assert_eq!(kind, "forbidden", "{message}");
        assert!(
            message.starts_with("localhost resolves to no address the node allows")
                && message.contains("loopback")
                && message.contains("--allow-net"),
            "{message}"
        );
        assert_eq!(s.open_connections(), 0);

        let s = session(internet(), options(&["127.0.0.0/8"]));
        connect(&s, "127.0.0.1", port).await.unwrap();
        // localhost may resolve to ::1 first, which is not allowed here: 127.0.0.1 is tried.
        connect(&s, "localhost", port).await.unwrap();
    }

    #[tokio::test]
    async fn connect_failures_name_the_destination() {
        let free = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let s = session(internet(), options(&LOOPBACK));
        let (kind, message) = kind_of(connect(&s, "127.0.0.1", free).await);
        assert_eq!(kind, "refused");
        assert_eq!(
            message,
            format!("the connection to 127.0.0.1:{free} was refused")
        );
        for args in [
            json!({"host": "127.0.0.1"}),
            json!({"host": "127.0.0.1", "port": 70000}),
            json!({"unix": API_SOCKET, "host": "x", "port": 1}),
            json!({}),
        ] {
            assert_eq!(kind_of(call_json(&s, "connect", args).await).0, "bad_args");
        }
        assert_eq!(
            kind_of(s.call("connect", b"not json".to_vec()).await).0,
            "bad_args"
        );
        assert_eq!(
            kind_of(s.call("listen", Vec::new()).await).0,
            "unknown_call"
        );
        assert_eq!(s.open_connections(), 0);
    }

    #[tokio::test]
    async fn the_byte_limit_closes_the_connection() {
        let port = server(|mut tcp| async move {
            let _ = tcp.write_all(&[7u8; 40]).await;
            tokio::time::sleep(SOON).await;
        })
        .await;
        let mut opts = options(&LOOPBACK);
        opts.max_bytes = 10;
        let s = session(internet(), opts);
        let h = connect(&s, "127.0.0.1", port).await.unwrap();
        let mut got = 0;
        let why = loop {
            match recv(&s, h, 4, 10_000).await {
                Ok(chunk) => {
                    assert!(!chunk.is_empty() && chunk.len() <= 4);
                    got += chunk.len();
                }
                Err(why) => break why,
            }
        };
        assert_eq!(got, 8, "10 bytes are allowed, read 4 at a time");
        assert_eq!(why.kind, "limit");
        assert_eq!(
            why.message,
            format!(
                "the connection to 127.0.0.1:{port} received more than 10 bytes (node option \
                 --net-max-bytes)"
            )
        );
        assert_eq!(kind_of(recv(&s, h, 4, 0).await).0, "bad_handle");
        assert_eq!(s.open_connections(), 0);
    }

    #[tokio::test]
    async fn at_most_max_connections_at_once() {
        let port = echo_server().await;
        let mut opts = options(&LOOPBACK);
        opts.max_connections = 2;
        let s = session(internet(), opts);
        let a = connect(&s, "127.0.0.1", port).await.unwrap();
        connect(&s, "127.0.0.1", port).await.unwrap();
        let (kind, message) = kind_of(connect(&s, "127.0.0.1", port).await);
        assert_eq!(kind, "limit");
        assert_eq!(
            message,
            "an instance may have at most 2 connections open at once (node option \
             --net-max-connections)"
        );
        s.call("close", a.to_le_bytes().to_vec()).await.unwrap();
        connect(&s, "127.0.0.1", port).await.unwrap();
        // A failed connect gives its place back.
        s.call("close", a.wrapping_add(1).to_le_bytes().to_vec())
            .await
            .unwrap();
        let _ = connect(&s, "192.168.0.1", 1).await.unwrap_err();
        connect(&s, "127.0.0.1", port).await.unwrap();
    }

    #[tokio::test]
    async fn recv_times_out_or_polls() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let tx = Arc::new(std::sync::Mutex::new(Some(tx)));
        let port = server(move |mut tcp| {
            let tx = tx.lock().unwrap().take();
            async move {
                // Sends "x" once the test closes its receiver of `tx`.
                if let Some(tx) = tx {
                    tx.closed().await;
                }
                let _ = tcp.write_all(b"x").await;
                tokio::time::sleep(SOON).await;
            }
        })
        .await;
        let s = session(internet(), options(&LOOPBACK));
        let h = connect(&s, "127.0.0.1", port).await.unwrap();
        let started = std::time::Instant::now();
        let (kind, message) = kind_of(recv(&s, h, 10, 50).await);
        assert_eq!(kind, "timeout", "{message}");
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(kind_of(recv(&s, h, 10, 0).await).0, "timeout");
        rx.close();
        // The byte is on its way: a finite wait takes it.
        assert_eq!(recv(&s, h, 10, 10_000).await.unwrap(), b"x");
        assert_eq!(kind_of(recv(&s, h, 10, 0).await).0, "timeout");
        // Bad encodings.
        assert_eq!(kind_of(recv(&s, h, 0, 0).await).0, "bad_args");
        assert_eq!(kind_of(s.call("recv", vec![1, 0, 0]).await).0, "bad_args");
        assert_eq!(
            kind_of(s.call("recv", h.to_le_bytes().to_vec()).await).0,
            "bad_args"
        );
        assert_eq!(kind_of(recv(&s, 99, 10, 0).await).0, "bad_handle");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn recv_and_send_at_once_on_one_connection() {
        // Answers "pong" only once it got "ping": the recv must wait while the send goes.
        let port = server(|mut tcp| async move {
            let mut ping = [0u8; 4];
            if tcp.read_exact(&mut ping).await.is_ok() && &ping == b"ping" {
                let _ = tcp.write_all(b"pong").await;
            }
            tokio::time::sleep(SOON).await;
        })
        .await;
        let s = Arc::new(session(internet(), options(&LOOPBACK)));
        let h = connect(&s, "127.0.0.1", port).await.unwrap();
        let reader = {
            let s = s.clone();
            tokio::spawn(async move { recv(&s, h, 4, WAIT_FOREVER).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        send(&s, h, b"ping").await.unwrap();
        let got = tokio::time::timeout(SOON, reader)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(got, b"pong");
    }

    #[tokio::test]
    async fn close_ends_a_waiting_recv() {
        let port = echo_server().await;
        let s = Arc::new(session(internet(), options(&LOOPBACK)));
        let h = connect(&s, "127.0.0.1", port).await.unwrap();
        let reader = {
            let s = s.clone();
            tokio::spawn(async move { recv(&s, h, 4, WAIT_FOREVER).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        s.call("close", h.to_le_bytes().to_vec()).await.unwrap();
        let (kind, message) = kind_of(tokio::time::timeout(SOON, reader).await.unwrap().unwrap());
        assert_eq!(kind, "bad_handle", "{message}");
        assert_eq!(kind_of(send(&s, h, b"x").await).0, "bad_handle");
    }

    #[tokio::test]
    async fn tls_interrupts_a_waiting_recv() {
        let (ca, port) = tls_echo_server().await;
        let mut opts = options(&LOOPBACK);
        opts.extra_roots.push(ca);
        let s = Arc::new(session(internet(), opts));
        let h = connect(&s, "127.0.0.1", port).await.unwrap();
        let reader = {
            let s = s.clone();
            tokio::spawn(async move { recv(&s, h, 4, WAIT_FOREVER).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        call_json(&s, "tls", json!({"handle": h, "server_name": "localhost"}))
            .await
            .unwrap();
        let (kind, _) = kind_of(tokio::time::timeout(SOON, reader).await.unwrap().unwrap());
        assert_eq!(kind, INTERRUPTED);
        // Read again: through TLS now.
        send(&s, h, b"again").await.unwrap();
        assert_eq!(recv_exactly(&s, h, 5).await, b"again");
    }

    /// A guest API whose connections' far ends go to the test.
    struct FakeApi(tokio::sync::mpsc::UnboundedSender<DuplexStream>);

    impl ApiConnector for FakeApi {
        fn connect(&self) -> DuplexStream {
            let (near, far) = tokio::io::duplex(1024);
            let _ = self.0.send(far);
            near
        }
    }

    #[tokio::test]
    async fn the_guest_api_by_its_socket_or_localhost() {
        let (tx, mut far_ends) = tokio::sync::mpsc::unbounded_channel();
        let counters = Arc::new(NetCounters::default());
        let grants = Grants {
            internet: false,
            aleph_api: true,
        };
        let s = NetSession::new(
            grants,
            Arc::new(NetOptions::default()),
            Some(Arc::new(FakeApi(tx))),
            counters.clone(),
        );
        let result = call_json(&s, "connect", json!({"unix": API_SOCKET}))
            .await
            .unwrap();
        assert_eq!(
            result,
            json!({"handle": 1, "peer": API_SOCKET, "local": ""})
        );
        let mut far = far_ends.recv().await.unwrap();
        send(&s, 1, b"GET /properties HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 28];
        far.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"GET /properties HTTP/1.1\r\n\r\n");
        far.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        assert_eq!(recv_exactly(&s, 1, 19).await, b"HTTP/1.1 200 OK\r\n\r\n");
        // No TLS on it.
        let (kind, _) =
            kind_of(call_json(&s, "tls", json!({"handle": 1, "server_name": "localhost"})).await);
        assert_eq!(kind, "bad_args");
        // The end of the API's stream is the end of the guest's.
        drop(far);
        assert_eq!(recv(&s, 1, 10, 10_000).await.unwrap(), b"");

        // localhost:80 is the API too; resolving localhost needs no internet.
        let result = call_json(&s, "resolve", json!({"host": "localhost", "port": 80}))
            .await
            .unwrap();
        assert_eq!(result, json!({"addresses": ["127.0.0.1"]}));
        for host in ["localhost", "127.0.0.1", "::1"] {
            let result = call_json(&s, "connect", json!({"host": host, "port": 80}))
                .await
                .unwrap();
            assert_eq!(result["peer"], json!(["127.0.0.1", 80]));
            assert_eq!(result["local"], json!(["127.0.0.1", 0]));
            let h = result["handle"].as_u64().unwrap() as u32;
            let mut far = far_ends.recv().await.unwrap();
            far.write_all(b"hi").await.unwrap();
            assert_eq!(recv_exactly(&s, h, 2).await, b"hi");
        }
        // Any other port is the internet.
        let (kind, message) = kind_of(connect(&s, "localhost", 8080).await);
        assert_eq!(
            (kind.as_str(), message.as_str()),
            ("permission", NO_INTERNET)
        );
        let (kind, _) = kind_of(call_json(&s, "resolve", json!({"host": "example.org"})).await);
        assert_eq!(kind, "permission");
        // The API is not traffic.
        assert_eq!(
            (
                counters.bytes_in(),
                counters.bytes_out(),
                counters.connections()
            ),
            (0, 0, 0)
        );
    }

    #[tokio::test]
    async fn dropping_the_session_closes_its_connections() {
        let port = echo_server().await;
        let s = session(internet(), options(&LOOPBACK));
        let h = connect(&s, "127.0.0.1", port).await.unwrap();
        send(&s, h, b"x").await.unwrap();
        assert_eq!(recv_exactly(&s, h, 1).await, b"x");
        drop(s);
    }
}
