//! Host capabilities of a reproducible execution: content-addressed reads through the guest
//! API, answered so that what the guest reads depends on nothing but what it asked, and
//! recorded for the receipt.
//!
//! A reproducible program with `environment.aleph_api` reaches the guest API as any program
//! does (`net.connect` to [`API_SOCKET`] or `localhost:80`, then HTTP/1.1), with the same call
//! ABI (`docs/host.md`), but [`RecordedCalls`] serves it instead of the node's live API:
//!
//! - only reads of content named by its hash are answered: `GET` (or `HEAD`)
//!   `/api/v0/messages/{item_hash}` and `/api/v0/storage/raw/{sha256}`, from the node's store and
//!   nothing else. Any other route is a 403 naming what a reproducible program may read; there
//!   is no upstream API, no cache, no signing, no internet.
//! - a request's whole answer is made before its first byte is released, so every `net.recv`
//!   returns `min(max, what is left)` bytes; a `recv` with nothing to read waits (forever) for the
//!   answer a later `send` completes, or fails at once with `timeout` when it has a timeout.
//! - the calls are [`OrderedCalls`]: taken one at a time in the guest's order, their replies
//!   written in the order they become due, so two runs see the same bytes at the same points.
//! - each distinct read (and whether the store had it) goes into a [`ReadLog`], which becomes
//!   the receipt's `inputs.reads`. A store that fails to read (an I/O error, a corrupt object)
//!   is the host's fault: it is logged, and the execution is inconclusive.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use super::net::{
    API_SOCKET, ConnectArgs, MAX_RECV, NO_API, NO_INTERNET, ResolveArgs, WAIT_FOREVER, handle_arg,
    json_args, loopback_host, only_handle, u32_at,
};
use super::{failure, kind};
use crate::channel::calls::unknown;
use crate::channel::{CallResult, OrderedCalls, Replies};
use crate::message::{is_item_hash, is_sha256};
use crate::store::{Store, StoreError};

/// The longest request head the recorded API reads.
const MAX_HEAD: usize = 64 * 1024;

/// The longest request body it reads (its routes take none).
const MAX_BODY: usize = 1 << 20;

/// One content-addressed read: what was asked for and whether the store had it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    /// `"message"` (by item hash) or `"object"` (by sha256).
    pub kind: &'static str,
    /// The hash read.
    pub hash: String,
    /// Whether the store had it (a miss answers 404).
    pub found: bool,
}

impl Read {
    /// The read as the receipt's `inputs.reads` holds it.
    pub fn to_json(&self) -> Value {
        json!({"kind": self.kind, "hash": self.hash, "found": self.found})
    }
}

#[derive(Debug, Default)]
struct LogInner {
    reads: Vec<Read>,
    fault: Option<String>,
}

/// The reads of one execution, in the order first made (each once), and the host's fault if
/// the store failed. Cheap to clone; clones share the log.
#[derive(Debug, Clone, Default)]
pub struct ReadLog(Arc<Mutex<LogInner>>);

impl ReadLog {
    fn lock(&self) -> std::sync::MutexGuard<'_, LogInner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, read: Read) {
        let mut log = self.lock();
        if !log
            .reads
            .iter()
            .any(|r| r.kind == read.kind && r.hash == read.hash)
        {
            log.reads.push(read);
        }
    }

    fn fault(&self, why: String) {
        tracing::error!("reproducible guest API: {why}");
        self.lock().fault.get_or_insert(why);
    }

    /// The reads so far.
    pub fn reads(&self) -> Vec<Read> {
        self.lock().reads.clone()
    }

    /// Why the store could not answer a read, if it could not.
    pub fn host_fault(&self) -> Option<String> {
        self.lock().fault.clone()
    }
}

/// One connection to the recorded guest API.
#[derive(Debug, Default)]
struct Exchange {
    /// Request bytes not yet answered.
    request: Vec<u8>,
    /// Answer bytes not yet received by the guest.
    answer: Vec<u8>,
    /// How much of `answer` the guest has received.
    taken: usize,
    /// A `recv` waiting for bytes: its call id and maximum.
    waiting: Option<(u32, u32)>,
    /// The guest shut its write side.
    write_closed: bool,
    /// The last answer ends the connection (`Connection: close`, or a request it could not read).
    ends: bool,
    /// Bytes received by the guest in all.
    received: u64,
}

impl Exchange {
    fn pending(&self) -> &[u8] {
        &self.answer[self.taken..]
    }

    /// No more bytes will come: the answers are taken and no request can follow.
    fn finished(&self) -> bool {
        self.pending().is_empty() && (self.ends || self.write_closed)
    }
}

/// A request read off an exchange.
struct Request {
    method: String,
    path: String,
    close: bool,
}

/// What the exchange's buffered bytes hold.
enum Parsed {
    /// A whole request, `used` bytes long.
    Whole(Request, usize),
    /// Not yet a whole request.
    Partial,
    /// Bytes that are not one: the status and why.
    Bad(u16, String),
}

fn parse(bytes: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let head = match req.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if bytes.len() > MAX_HEAD => {
            return Parsed::Bad(431, format!("the request head is over {MAX_HEAD} bytes"));
        }
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(e) => return Parsed::Bad(400, format!("the request is not HTTP/1.1: {e}")),
    };
    let mut length = 0usize;
    let mut close = req.version == Some(0);
    for h in req.headers.iter() {
        let value = String::from_utf8_lossy(h.value);
        if h.name.eq_ignore_ascii_case("content-length") {
            match value.trim().parse::<usize>() {
                Ok(n) if n <= MAX_BODY => length = n,
                Ok(_) => {
                    return Parsed::Bad(413, format!("a request body is at most {MAX_BODY} bytes"));
                }
                Err(_) => return Parsed::Bad(400, format!("Content-Length {value:?}")),
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Parsed::Bad(
                400,
                "a chunked request body is not read here (send a Content-Length)".into(),
            );
        } else if h.name.eq_ignore_ascii_case("connection") {
            let tokens = value.to_ascii_lowercase();
            if tokens.split(',').any(|t| t.trim() == "close") {
                close = true;
            } else if tokens.split(',').any(|t| t.trim() == "keep-alive") {
                close = false;
            }
        }
    }
    let Some(used) = head.checked_add(length).filter(|n| *n <= bytes.len()) else {
        return Parsed::Partial;
    };
    Parsed::Whole(
        Request {
            method: req.method.unwrap_or("GET").to_string(),
            path: req.path.unwrap_or("/").to_string(),
            close,
        },
        used,
    )
}

/// An answer: status, content type, body.
struct Answer {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
}

impl Answer {
    fn json(status: u16, value: &Value) -> Self {
        Answer {
            status,
            content_type: "application/json",
            body: value.to_string().into_bytes(),
        }
    }

    fn error(status: u16, message: String) -> Self {
        Self::json(status, &json!({ "error": message }))
    }

    /// The answer as HTTP/1.1 bytes (no body for `HEAD`).
    fn to_bytes(&self, head_only: bool, close: bool) -> Vec<u8> {
        let reason = axum::http::StatusCode::from_u16(self.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\ncontent-type: {}\r\ncontent-length: {}\r\n",
            self.status,
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

/// What a reproducible program may ask of the guest API.
const ALLOWED: &str = "content.environment.reproducible is true: the guest API answers only \
                       reads of content named by its hash (GET /api/v0/messages/{item_hash}, \
                       GET /api/v0/storage/raw/{sha256}), from the node's store";

/// The reproducible host functions of one instance (see the module docs).
pub struct RecordedCalls {
    store: Store,
    aleph_api: bool,
    max_connections: usize,
    max_bytes: u64,
    open: BTreeMap<u32, Exchange>,
    next_handle: u32,
    log: ReadLog,
}

impl RecordedCalls {
    /// The calls of an instance of a program that has (or lacks) `aleph_api`, reading `store`,
    /// with at most `max_connections` open and `max_bytes` received on each, recording in `log`.
    pub fn new(
        store: Store,
        aleph_api: bool,
        max_connections: usize,
        max_bytes: u64,
        log: ReadLog,
    ) -> Self {
        Self {
            store,
            aleph_api,
            max_connections,
            max_bytes,
            open: BTreeMap::new(),
            next_handle: 1,
            log,
        }
    }

    fn resolve(&self, args: &[u8]) -> CallResult {
        let args: ResolveArgs = json_args("net.resolve", args)?;
        match loopback_host(&args.host) {
            Some(ip) if self.aleph_api => Ok(json!({"addresses": [ip.to_string()]})
                .to_string()
                .into_bytes()),
            _ => Err(failure(kind::PERMISSION, NO_INTERNET)),
        }
    }

    fn connect(&mut self, args: &[u8]) -> CallResult {
        let args: ConnectArgs = json_args("net.connect", args)?;
        let peer = match (args.unix, args.host) {
            (Some(path), None) if path == API_SOCKET => json!(API_SOCKET),
            (Some(path), None) => {
                return Err(failure(
                    kind::REFUSED,
                    format!(
                        "no unix socket at {path} (the sandbox has only the guest API's, \
                         {API_SOCKET})"
                    ),
                ));
            }
            (None, Some(host)) if args.port == Some(80) && loopback_host(&host).is_some() => {
                json!(["127.0.0.1", 80])
            }
            (None, Some(_)) => return Err(failure(kind::PERMISSION, NO_INTERNET)),
            _ => {
                return Err(failure(
                    kind::BAD_ARGS,
                    "net.connect takes {\"host\", \"port\"} or {\"unix\"}",
                ));
            }
        };
        if !self.aleph_api {
            return Err(failure(kind::PERMISSION, NO_API));
        }
        if self.open.len() >= self.max_connections {
            let max = self.max_connections;
            return Err(failure(
                kind::LIMIT,
                format!(
                    "an instance may have at most {max} connections open at once (node option \
                     --net-max-connections)"
                ),
            ));
        }
        let handle = self.next_handle;
        self.next_handle = self.next_handle.wrapping_add(1).max(1);
        self.open.insert(handle, Exchange::default());
        let local = if peer.is_string() {
            json!("")
        } else {
            json!(["127.0.0.1", 0])
        };
        Ok(json!({"handle": handle, "peer": peer, "local": local})
            .to_string()
            .into_bytes())
    }

    fn exchange(&mut self, handle: u32) -> Result<&mut Exchange, crate::channel::CallFailure> {
        self.open
            .get_mut(&handle)
            .ok_or_else(|| failure(kind::BAD_HANDLE, format!("no connection {handle} is open")))
    }

    /// Answers the whole requests buffered on `handle`, in order.
    async fn serve(&mut self, handle: u32) {
        loop {
            let Some(ex) = self.open.get_mut(&handle) else {
                return;
            };
            if ex.ends {
                ex.request.clear();
                return;
            }
            let (bytes, close) = match parse(&ex.request) {
                Parsed::Partial if ex.write_closed && !ex.request.is_empty() => {
                    ex.request.clear();
                    let answer = Answer::error(400, "the request ended before it was whole".into());
                    (answer.to_bytes(false, true), true)
                }
                Parsed::Partial => return,
                Parsed::Bad(status, why) => {
                    ex.request.clear();
                    (Answer::error(status, why).to_bytes(false, true), true)
                }
                Parsed::Whole(request, used) => {
                    ex.request.drain(..used);
                    let answer = self.answer(&request).await;
                    (
                        answer.to_bytes(request.method == "HEAD", request.close),
                        request.close,
                    )
                }
            };
            let Some(ex) = self.open.get_mut(&handle) else {
                return;
            };
            ex.answer.drain(..ex.taken);
            ex.taken = 0;
            ex.answer.extend_from_slice(&bytes);
            ex.ends = close;
        }
    }

    /// The answer to one request.
    async fn answer(&self, request: &Request) -> Answer {
        let path = request.path.split(['?', '#']).next().unwrap_or("");
        let (what, hash) = match (request.method.as_str(), path.rsplit_once('/')) {
            ("GET" | "HEAD", Some(("/api/v0/messages", hash))) => ("message", hash),
            ("GET" | "HEAD", Some(("/api/v0/storage/raw", hash))) => ("object", hash),
            _ => {
                return Answer::error(403, format!("{} {path}: {ALLOWED}", request.method));
            }
        };
        let hash = hash.to_string();
        let valid = if what == "message" {
            is_item_hash(&hash)
        } else {
            is_sha256(&hash)
        };
        if !valid {
            return Answer::error(400, format!("{hash:?} is not the hash of a {what}"));
        }
        let store = self.store.clone();
        let key = hash.clone();
        let read = tokio::task::spawn_blocking(move || {
            if what == "message" {
                store
                    .get_message(&key)
                    .map(|m| Answer::json(200, &super::api::proxy::message_answer(&m)))
            } else {
                store.read_object(&key).map(|body| Answer {
                    status: 200,
                    content_type: "application/octet-stream",
                    body,
                })
            }
        })
        .await;
        match read {
            Ok(Ok(answer)) => {
                self.log.record(Read {
                    kind: what,
                    hash,
                    found: true,
                });
                answer
            }
            Ok(Err(StoreError::NotFound { .. })) => {
                self.log.record(Read {
                    kind: what,
                    hash: hash.clone(),
                    found: false,
                });
                Answer::error(
                    404,
                    format!(
                        "{what} {hash} is not on this node (a reproducible execution reads only \
                         the node's store)"
                    ),
                )
            }
            Ok(Err(e)) => {
                self.log.fault(format!("reading {what} {hash}: {e}"));
                Answer::error(500, "internal error of the node (see its log)".into())
            }
            Err(e) => {
                self.log
                    .fault(format!("the read of {what} {hash} failed: {e}"));
                Answer::error(500, "internal error of the node (see its log)".into())
            }
        }
    }

    /// Up to `max` pending bytes of `handle`, or the end (empty), if either is there.
    fn take(&mut self, handle: u32, max: u32) -> Option<CallResult> {
        let max_bytes = self.max_bytes;
        let ex = self.open.get_mut(&handle)?;
        if ex.pending().is_empty() {
            return ex.finished().then(|| Ok(Vec::new()));
        }
        let n = ex.pending().len().min(max.min(MAX_RECV) as usize);
        let bytes = ex.pending()[..n].to_vec();
        ex.taken += n;
        ex.received += n as u64;
        if ex.received > max_bytes {
            self.open.remove(&handle);
            return Some(Err(failure(
                kind::LIMIT,
                format!(
                    "the connection to the guest API received more than {max_bytes} bytes (node \
                     option --net-max-bytes)"
                ),
            )));
        }
        Some(Ok(bytes))
    }

    /// The reply of the `recv` waiting on `handle`, if it can be answered now.
    fn settle(&mut self, handle: u32) -> Option<(u32, CallResult)> {
        let (id, max) = self.open.get(&handle)?.waiting?;
        let result = self.take(handle, max)?;
        if let Some(ex) = self.open.get_mut(&handle) {
            ex.waiting = None;
        }
        Some((id, result))
    }

    async fn send(&mut self, id: u32, args: &[u8]) -> Replies {
        let (handle, data) = match handle_arg("net.send", args) {
            Ok(parsed) => parsed,
            Err(e) => return vec![(id, Err(e))],
        };
        let ex = match self.exchange(handle) {
            Ok(ex) => ex,
            Err(e) => return vec![(id, Err(e))],
        };
        if ex.write_closed {
            return vec![(
                id,
                Err(failure(
                    kind::RESET,
                    "the connection to the guest API is shut for writing",
                )),
            )];
        }
        ex.request.extend_from_slice(data);
        let count = u32::try_from(data.len()).unwrap_or(u32::MAX);
        self.serve(handle).await;
        let mut replies = vec![(id, Ok(count.to_le_bytes().to_vec()))];
        replies.extend(self.settle(handle));
        replies
    }

    fn recv(&mut self, id: u32, args: &[u8]) -> Replies {
        let parsed = handle_arg("net.recv", args).and_then(|(handle, rest)| {
            match (u32_at(rest, 0), u32_at(rest, 4), rest.len() == 8) {
                (Some(max), Some(timeout), true) if max > 0 => Ok((handle, max, timeout)),
                (Some(0), _, true) => Err(failure(
                    kind::BAD_ARGS,
                    "net.recv: the maximum must be at least 1",
                )),
                _ => Err(failure(
                    kind::BAD_ARGS,
                    "net.recv takes a handle, a maximum and a timeout (u32 LE each)",
                )),
            }
        });
        let (handle, max, timeout) = match parsed {
            Ok(p) => p,
            Err(e) => return vec![(id, Err(e))],
        };
        match self.exchange(handle) {
            Ok(ex) if ex.waiting.is_some() => {
                return vec![(
                    id,
                    Err(failure(
                        kind::BAD_ARGS,
                        "a recv already waits on this connection",
                    )),
                )];
            }
            Ok(_) => {}
            Err(e) => return vec![(id, Err(e))],
        }
        if let Some(result) = self.take(handle, max) {
            return vec![(id, result)];
        }
        if timeout != WAIT_FOREVER {
            return vec![(
                id,
                Err(failure(
                    kind::TIMEOUT,
                    format!(
                        "nothing was received from the guest API within {timeout} ms (it \
                         answers whole requests only)"
                    ),
                )),
            )];
        }
        if let Some(ex) = self.open.get_mut(&handle) {
            ex.waiting = Some((id, max));
        }
        Vec::new()
    }

    async fn shutdown(&mut self, id: u32, args: &[u8]) -> Replies {
        let handle = match only_handle("net.shutdown", args) {
            Ok(h) => h,
            Err(e) => return vec![(id, Err(e))],
        };
        match self.exchange(handle) {
            Ok(ex) => ex.write_closed = true,
            Err(e) => return vec![(id, Err(e))],
        }
        self.serve(handle).await;
        let mut replies = vec![(id, Ok(Vec::new()))];
        replies.extend(self.settle(handle));
        replies
    }

    fn close(&mut self, id: u32, args: &[u8]) -> Replies {
        let handle = match only_handle("net.close", args) {
            Ok(h) => h,
            Err(e) => return vec![(id, Err(e))],
        };
        let Some(ex) = self.open.remove(&handle) else {
            return vec![(
                id,
                Err(failure(
                    kind::BAD_HANDLE,
                    format!("no connection {handle} is open"),
                )),
            )];
        };
        let mut replies = Vec::new();
        if let Some((waiting, _)) = ex.waiting {
            replies.push((
                waiting,
                Err(failure(
                    kind::BAD_HANDLE,
                    format!("connection {handle} was closed"),
                )),
            ));
        }
        replies.push((id, Ok(Vec::new())));
        replies
    }
}

impl OrderedCalls for RecordedCalls {
    fn call<'a>(
        &'a mut self,
        id: u32,
        name: &'a str,
        args: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = Replies> + Send + 'a>> {
        Box::pin(async move {
            match name {
                "ping" => vec![(id, Ok(args))],
                "net.resolve" => vec![(id, self.resolve(&args))],
                "net.connect" => vec![(id, self.connect(&args))],
                "net.tls" => {
                    #[derive(serde::Deserialize)]
                    struct Handle {
                        handle: u32,
                    }
                    let result = json_args::<Handle>("net.tls", &args).and_then(|a| {
                        self.exchange(a.handle)?;
                        Err(failure(
                            kind::BAD_ARGS,
                            "the guest API's connection has no TLS",
                        ))
                    });
                    vec![(id, result)]
                }
                "net.send" => self.send(id, &args).await,
                "net.recv" => self.recv(id, &args),
                "net.shutdown" => self.shutdown(id, &args).await,
                "net.close" => self.close(id, &args),
                other => vec![(id, Err(unknown(other)))],
            }
        })
    }
}

#[cfg(test)]
mod tests;
