//! Requests to programs: `ANY /vm/{ref}/{path…}` (and `/vm/{ref}`, path `/`), and host-based
//! routing, where `Host: <label>.<domain>` names the program by its item hash in lowercase
//! unpadded base32 and the whole path goes to it.
//!
//! A request becomes a [`Trigger::Http`] for the shared executor; the execution runs in its own
//! task holding one of the node's execution slots, so it finishes (and frees its slot and its
//! warm instance) even if the client goes away. When every slot is taken the request waits in
//! the node's bounded queue first ([`super::queue`]): 503 with `Retry-After: 1` when the queue
//! is full or the wait outlasts its time bound; a client that goes away while it waits leaves
//! the queue. The outcome becomes the response: the app's
//! own for `ok` (and for an app exception, which the runtime answers 500), 504 when
//! `resources.seconds` ran out, 502 with a short reason otherwise. Every response of a known
//! program carries `Aleph-Program-ItemHash` and `Aleph-Program-Code-Ref`. Hop-by-hop headers
//! are not forwarded in either direction.
//!
//! On a node with another node's API configured, the program and what it needs are fetched
//! first where missing ([`crate::store::prefetch`]); when that fails (unreachable, or a hash
//! mismatch) the answer is 502 with the reason, which names the hash.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;

use super::AppState;
use super::error::ServiceError;
use super::queue::Refusal;
use crate::interface::{HttpRequest, Trigger};
use crate::message::{CodeSource, Message};
use crate::outcome::{Outcome, OutcomeKind};
use crate::store::StoreError;
use crate::store::prefetch::Prefetcher;

/// The response header naming the program's item hash.
pub const ITEM_HASH_HEADER: &str = "aleph-program-itemhash";
/// The response header naming the program's code ref (absent for inline code).
pub const CODE_REF_HEADER: &str = "aleph-program-code-ref";

/// Headers that belong to one connection, never forwarded (RFC 9110 §7.6.1), plus the
/// non-standard `proxy-connection`.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// `ANY /vm/{ref}`, `/vm/{ref}/`, `/vm/{ref}/{path…}`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/vm/{ref}", any(by_path))
        .route("/vm/{ref}/", any(by_path))
        .route("/vm/{ref}/{*path}", any(by_path))
}

pub use crate::message::{host_label, item_hash_of_label};

/// The host a request is addressed to (`Host`, else the URI's authority), without the port.
fn request_host<'a>(headers: &'a HeaderMap, uri: &'a axum::http::Uri) -> Option<&'a str> {
    let authority = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))?;
    Some(split_host_port(authority).0)
}

/// `host[:port]` or `[v6]:port` into the host and the port, if any.
fn split_host_port(authority: &str) -> (&str, Option<u16>) {
    if let Some(rest) = authority.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((host, tail)) => (host, tail.strip_prefix(':').and_then(|p| p.parse().ok())),
            None => (authority, None),
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => (host, port.parse().ok()),
        _ => (authority, None),
    }
}

/// With a routing domain set: `Some(Ok(item hash))` when the request's host is
/// `<label>.<domain>` with a valid label, `Some(Err(..))` when it is below the domain but the
/// label names no program, `None` when the host is not below the domain (the node's own
/// routes answer).
pub fn program_of_host(
    state: &AppState,
    request: &Request,
) -> Option<Result<String, ServiceError>> {
    let domain = state.domain()?;
    let host = request_host(request.headers(), request.uri())?;
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let label = host.strip_suffix(domain)?.strip_suffix('.')?;
    if label.is_empty() {
        return None;
    }
    Some(match item_hash_of_label(label) {
        Some(hash) if !label.contains('.') => Ok(hash),
        _ => {
            state.metrics().refused("unknown_host");
            Err(ServiceError::UnknownHost(short(&host)))
        }
    })
}

async fn by_path(State(state): State<AppState>, request: Request) -> Response {
    let rest = request
        .uri()
        .path()
        .strip_prefix("/vm/")
        .unwrap_or_default();
    let (reference, path) = match rest.find('/') {
        Some(i) => (rest[..i].to_string(), rest[i..].to_string()),
        None => (rest.to_string(), "/".to_string()),
    };
    serve_program(state, reference, path, request).await
}

/// Serves a request routed by host: the whole path goes to the program `item_hash`.
pub async fn serve_host(state: AppState, item_hash: String, request: Request) -> Response {
    let path = request.uri().path().to_string();
    serve_program(state, item_hash, path, request).await
}

async fn serve_program(
    state: AppState,
    reference: String,
    path: String,
    request: Request,
) -> Response {
    let (msg, result) = match load_program(&state, &reference).await {
        Ok(msg) => {
            let result = execute(&state, &msg, path, request).await;
            (Some(msg), result)
        }
        Err(e) => (None, Err(e)),
    };
    let mut response = result.unwrap_or_else(IntoResponse::into_response);
    state.metrics().response(response.status().as_u16());
    if let Some(msg) = msg {
        add_program_headers(response.headers_mut(), &msg);
    }
    response
}

/// At most 128 characters of something the client sent, for an error message.
fn short(s: &str) -> String {
    match s.char_indices().nth(128) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

async fn load_program(state: &AppState, reference: &str) -> Result<Arc<Message>, ServiceError> {
    if let Some(prefetcher) = state.prefetcher() {
        return fetch_program(state, prefetcher, reference).await;
    }
    match state.executor().store().message(reference) {
        Ok(msg) if msg.program().is_some() => Ok(msg),
        Ok(_) | Err(StoreError::NotFound { .. }) | Err(StoreError::BadHash(_)) => {
            state.metrics().refused("unknown_program");
            Err(ServiceError::UnknownProgram(short(reference)))
        }
        Err(e) => Err(ServiceError::Internal(
            anyhow::Error::new(e).context(format!("reading program {reference}")),
        )),
    }
}

/// The program from the store, with what it needs; what is missing is fetched from the
/// node's API first.
async fn fetch_program(
    state: &AppState,
    prefetcher: &Prefetcher,
    reference: &str,
) -> Result<Arc<Message>, ServiceError> {
    let store = state.executor().store();
    match prefetcher.program(store, reference).await {
        Ok(msg) if msg.program().is_some() => Ok(msg),
        Err(e) if !e.is_unknown_program() => {
            tracing::warn!(program = %short(reference), "cannot serve: {e}");
            state.metrics().refused("unobtainable");
            Err(ServiceError::Unobtainable(format!(
                "program {}: {e}",
                short(reference)
            )))
        }
        Ok(_) | Err(_) => {
            state.metrics().refused("unknown_program");
            Err(ServiceError::UnknownProgram(short(reference)))
        }
    }
}

async fn execute(
    state: &AppState,
    msg: &Arc<Message>,
    path: String,
    request: Request,
) -> Result<Response, ServiceError> {
    let Some(program) = msg.program() else {
        return Err(ServiceError::UnknownProgram(msg.item_hash.clone()));
    };
    if !program.on.http {
        state.metrics().refused("http_disabled");
        return Err(ServiceError::HttpDisabled(msg.item_hash.clone()));
    }
    let slot = match state.execution_slots().acquire().await {
        Ok(slot) => slot,
        Err(Refusal::Full { limit }) => {
            state.metrics().refused("queue_full");
            return Err(ServiceError::QueueFull { limit });
        }
        Err(Refusal::TimedOut { waited }) => {
            state.metrics().refused("queue_timeout");
            return Err(ServiceError::QueueTimeout {
                seconds: waited.as_secs_f64(),
            });
        }
        Err(Refusal::Closed) => {
            return Err(anyhow::anyhow!("the node's execution slots are closed").into());
        }
    };
    if let Err(refused) = state.executor().admit(msg).await {
        state.metrics().refused(refused.cause.as_str());
        return Err(refused.into());
    }
    let (parts, body) = request.into_parts();
    let body = read_body(state, body).await?;
    let is_head = parts.method == Method::HEAD;
    let trigger = Trigger::Http(http_request(state, &parts, path, body));

    let task = {
        let state = state.clone();
        let msg = msg.clone();
        tokio::spawn(async move {
            let _slot = slot;
            state.execution_started(&msg.item_hash);
            let started = Instant::now();
            let outcome = state.executor().execute(&msg, &trigger).await;
            if outcome.refused.is_none() {
                state
                    .metrics()
                    .execution(&outcome, started.elapsed().as_secs_f64());
            }
            state.execution_ended(&msg.item_hash, outcome.kind.as_str());
            outcome
        })
    };
    let outcome = task
        .await
        .map_err(|e| anyhow::anyhow!("the execution task of {} failed: {e}", msg.item_hash))?;
    if let Some(cause) = outcome.refused {
        // Admitted, but another execution took the room meanwhile.
        state.metrics().refused(cause.as_str());
        let message = outcome.error.clone().unwrap_or_default();
        return Err(crate::executor::memory::Refused { cause, message }.into());
    }
    if !outcome.is_ok() {
        tracing::warn!(
            program = %msg.item_hash,
            outcome = outcome.kind.as_str(),
            status = ?outcome.status,
            error = outcome.error.as_deref().unwrap_or(""),
            stderr = %String::from_utf8_lossy(tail(&outcome.stderr.bytes, 2048)),
            "execution did not end ok"
        );
    }
    respond(&outcome, program.resources.seconds, is_head)
}

fn tail(bytes: &[u8], n: usize) -> &[u8] {
    &bytes[bytes.len().saturating_sub(n)..]
}

async fn read_body(state: &AppState, body: Body) -> Result<Vec<u8>, ServiceError> {
    use http_body_util::BodyExt as _;
    let limit = state.config().max_body_bytes;
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes().to_vec()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            state.metrics().refused("body_too_large");
            Err(ServiceError::BodyTooLarge { limit })
        }
        Err(e) => {
            tracing::debug!("cannot read a request body: {e}");
            state.metrics().refused("bad_request");
            Err(ServiceError::BadRequest(
                "the request body could not be read".into(),
            ))
        }
    }
}

/// The header names listed in `Connection` (lower case): hop-by-hop for this message.
fn connection_tokens<'a>(headers: impl Iterator<Item = (&'a str, &'a [u8])>) -> Vec<String> {
    headers
        .filter(|(name, _)| name.eq_ignore_ascii_case("connection"))
        .flat_map(|(_, value)| {
            String::from_utf8_lossy(value)
                .split(',')
                .map(|t| t.trim().to_ascii_lowercase())
                .filter(|t| !t.is_empty())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn is_hop_by_hop(name: &str, tokens: &[String]) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
        || tokens.iter().any(|t| name.eq_ignore_ascii_case(t))
}

/// The request as the interface sees it: method, path below the program, query, end-to-end
/// headers, body, the client's address and the host and port it was addressed to.
fn http_request(state: &AppState, parts: &Parts, path: String, body: Vec<u8>) -> HttpRequest {
    let tokens = connection_tokens(
        parts
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_bytes())),
    );
    let headers = parts
        .headers
        .iter()
        .filter(|(name, _)| !is_hop_by_hop(name.as_str(), &tokens))
        .map(|(name, value)| {
            (
                name.as_str().to_string(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    let local = state.local_addr();
    let authority = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()));
    let (server_name, server_port) = match authority.map(split_host_port) {
        Some((host, port)) if !host.is_empty() => (
            host.to_string(),
            port.or(local.map(|a| a.port())).unwrap_or(80),
        ),
        _ => (
            local.map_or_else(|| "localhost".to_string(), |a| a.ip().to_string()),
            local.map_or(80, |a| a.port()),
        ),
    };
    HttpRequest {
        method: parts.method.as_str().to_ascii_uppercase(),
        path,
        query: parts.uri.query().unwrap_or_default().to_string(),
        headers,
        body,
        remote_addr: parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.to_string()),
        server_name,
        server_port,
    }
}

/// The response for an outcome: the app's (for `ok`, and for an app exception answered with a
/// 5xx status), or the error that says why there is none.
fn respond(outcome: &Outcome, seconds: u64, is_head: bool) -> Result<Response, ServiceError> {
    match (outcome.kind, outcome.status) {
        (OutcomeKind::Ok, Some(status)) => app_response(outcome, status, is_head),
        // The runtime answers an exception raised before the response started with a 500 of
        // its own. A non-5xx status on an error outcome is a response that went wrong (cut at
        // the output cap, …): it must not reach the client as a success.
        (OutcomeKind::Error, Some(status)) if status >= 500 => {
            app_response(outcome, status, is_head)
        }
        // A reproducible program's safety net: the host could not finish it in time.
        (OutcomeKind::Timeout | OutcomeKind::Inconclusive, _) => {
            Err(ServiceError::Timeout { seconds })
        }
        (OutcomeKind::Exit, _) => Err(ServiceError::ProgramFailed(match outcome.exit_code {
            Some(code) => format!("the program exited with code {code} without answering"),
            None => "the program exited without answering".into(),
        })),
        (OutcomeKind::Trap, _) => Err(ServiceError::ProgramFailed(
            "the program trapped without answering".into(),
        )),
        (OutcomeKind::StackOverflow, _) => Err(ServiceError::ProgramFailed(
            "the program exhausted its stack without answering".into(),
        )),
        (OutcomeKind::OutOfMemory, _) => Err(ServiceError::ProgramFailed(
            "the program ran out of memory (resources.memory)".into(),
        )),
        (OutcomeKind::Ok | OutcomeKind::Error, _) => {
            Err(ServiceError::ProgramFailed(
                match outcome.error.as_deref() {
                    // What went wrong, in one sentence of the engine's (a protocol error, the
                    // instance discarded under the request, …), never a backtrace.
                    Some(why) if !why.is_empty() => format!(
                        "the program did not produce a valid HTTP response: {}",
                        first_line(why, 400)
                    ),
                    _ => "the program did not produce a valid HTTP response".into(),
                },
            ))
        }
    }
}

/// The first line of `text`, at most `max` characters.
fn first_line(text: &str, max: usize) -> String {
    text.lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(max)
        .collect()
}

fn app_response(outcome: &Outcome, status: u16, is_head: bool) -> Result<Response, ServiceError> {
    let status = StatusCode::from_u16(status)
        .ok()
        .filter(|s| !s.is_informational())
        .ok_or_else(|| {
            ServiceError::ProgramFailed(format!("the program answered with status {status}"))
        })?;
    let tokens = connection_tokens(
        outcome
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_bytes())),
    );
    let mut headers = HeaderMap::new();
    for (name, value) in &outcome.headers {
        // The server frames the body itself; a HEAD response keeps the app's length.
        if is_hop_by_hop(name, &tokens) || (name.eq_ignore_ascii_case("content-length") && !is_head)
        {
            continue;
        }
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value.as_bytes()),
        ) {
            (Ok(name), Ok(value)) => {
                headers.append(name, value);
            }
            _ => tracing::debug!("dropping an invalid response header {name:?}"),
        }
    }
    let body = if is_head {
        Body::empty()
    } else {
        Body::from(outcome.body.clone())
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok(response)
}

/// Sets `Aleph-Program-ItemHash` and `Aleph-Program-Code-Ref` (replacing any the app set).
fn add_program_headers(headers: &mut HeaderMap, msg: &Message) {
    headers.remove(ITEM_HASH_HEADER);
    headers.remove(CODE_REF_HEADER);
    if let Ok(v) = HeaderValue::from_str(&msg.item_hash) {
        headers.insert(ITEM_HASH_HEADER, v);
    }
    if let Some(program) = msg.program()
        && let CodeSource::Ref(r) = &program.code.source
        && let Ok(v) = HeaderValue::from_str(&r.reference)
    {
        headers.insert(CODE_REF_HEADER, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_labels_round_trip() {
        let hash = "c3ab8ff13720e8ad9047dd39466b3c8974e592c2fa383d4a3960714caef0c4f2";
        let label = host_label(hash).unwrap();
        assert_eq!(label.len(), 52);
        assert_eq!(label, label.to_ascii_lowercase());
        assert_eq!(item_hash_of_label(&label).as_deref(), Some(hash));
        assert_eq!(
            item_hash_of_label(&label.to_ascii_uppercase()).as_deref(),
            Some(hash)
        );
        assert_eq!(item_hash_of_label(&label[..51]), None);
        assert_eq!(item_hash_of_label("www"), None);
        assert_eq!(host_label("not hex"), None);
    }

    #[test]
    fn authorities_split_into_host_and_port() {
        assert_eq!(split_host_port("a.b:8080"), ("a.b", Some(8080)));
        assert_eq!(split_host_port("a.b"), ("a.b", None));
        assert_eq!(split_host_port("[::1]:4020"), ("::1", Some(4020)));
        assert_eq!(split_host_port("[::1]"), ("::1", None));
    }

    #[test]
    fn connection_listed_headers_are_hop_by_hop() {
        let headers = [("Connection", b"close, X-Secret".as_slice())];
        let tokens = connection_tokens(headers.into_iter());
        assert!(is_hop_by_hop("x-secret", &tokens));
        assert!(is_hop_by_hop("Transfer-Encoding", &tokens));
        assert!(!is_hop_by_hop("x-other", &tokens));
    }
}
