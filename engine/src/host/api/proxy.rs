//! The Aleph API as a program sees it through the guest API: what the node's own store holds is
//! answered here, everything else goes to the upstream Aleph API (`serve --api URL`) when the
//! node has one.
//!
//! - `GET /api/v0/messages.json`: the store's messages, in the shape and with the filters of
//!   [`crate::server::api`] ([`MessageQuery`]). A listing that finds nothing here, or that
//!   names `hashes` some of which are not here, or whose parameters this node does not read,
//!   is asked of the upstream API instead.
//! - `GET /api/v0/messages/{item_hash}`: one stored message as pyaleph answers it,
//!   `{"status": "processed", "item_hash", "reception_time", "message"}` (this node does not
//!   record when a message arrived: `reception_time` is the message's own `time`, in ISO 8601).
//! - `GET /api/v0/storage/raw/{sha256}`: a stored object's bytes, hashed again as they are read
//!   (a corrupt object is never served; it counts as missing).
//! - any other `GET`, `HEAD` or `OPTIONS`, and every miss of the above: the same method, path
//!   and query sent to the upstream API; its status, `Content-Type` and body come back, the
//!   body streamed. Without an upstream API, a 404 whose JSON error names what was not found.
//! - `POST /api/v0/ipfs/pubsub/pub`, `POST /api/v0/p2p/pubsub/pub`: the body forwarded as it
//!   is to the upstream API; without one, a 503.
//!
//! No request header goes upstream (as on aleph-vm): the guest's own headers stay on the node.

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::Guest;
use super::routes::error;
use crate::message::{Message, is_item_hash, is_sha256};
use crate::store::StoreError;
use crate::store::query::MessageQuery;

/// Why a request the node cannot answer itself gets no answer without an upstream API.
pub const NO_UPSTREAM: &str = "this node has no upstream Aleph API (node option --api)";

/// `GET /api/v0/messages.json`.
pub(super) async fn messages(
    State(guest): State<Guest>,
    method: Method,
    uri: Uri,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    let query = match MessageQuery::parse(&pairs) {
        Ok(q) => q,
        Err(e) if guest.api.upstream.is_none() => {
            return error(StatusCode::UNPROCESSABLE_ENTITY, e);
        }
        Err(_) => return forward(&guest, method, &uri, None).await,
    };
    let store = guest.api.store.clone();
    let listed = {
        let query = query.clone();
        tokio::task::spawn_blocking(move || query.run(&store)).await
    };
    let (page, total) = match listed {
        Ok(Ok(found)) => found,
        Ok(Err(e)) => return internal(format!("listing messages: {e}")),
        Err(e) => return internal(format!("the listing task failed: {e}")),
    };
    let mut wanted: Vec<&String> = query.hashes.iter().collect();
    wanted.sort();
    wanted.dedup();
    let missed = total == 0 || total < wanted.len();
    if missed && guest.api.upstream.is_some() {
        return forward(&guest, method, &uri, None).await;
    }
    axum::Json(json!({
        "messages": page.iter().map(Message::to_json).collect::<Vec<_>>(),
        "pagination_page": query.page,
        "pagination_total": total,
        "pagination_per_page": query.per_page,
        "pagination_item": "messages",
    }))
    .into_response()
}

/// `GET /api/v0/messages/{item_hash}`.
pub(super) async fn message(
    State(guest): State<Guest>,
    method: Method,
    uri: Uri,
    Path(item_hash): Path<String>,
) -> Response {
    if !is_item_hash(&item_hash) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("Invalid message hash: {item_hash}"),
        );
    }
    let store = guest.api.store.clone();
    let read = {
        let hash = item_hash.clone();
        tokio::task::spawn_blocking(move || store.get_message(&hash)).await
    };
    match read {
        Ok(Ok(msg)) => axum::Json(message_answer(&msg)).into_response(),
        Ok(Err(StoreError::NotFound { .. })) => {
            miss(&guest, method, &uri, format!("message {item_hash}")).await
        }
        Ok(Err(e @ (StoreError::BadMessage { .. } | StoreError::Corrupt { .. }))) => {
            tracing::error!("guest API: not serving stored message {item_hash}: {e}");
            miss(&guest, method, &uri, format!("message {item_hash}")).await
        }
        Ok(Err(e)) => internal(format!("reading message {item_hash}: {e}")),
        Err(e) => internal(format!("the message task failed: {e}")),
    }
}

/// The answer to `GET /api/v0/messages/{item_hash}` for a stored message, as pyaleph gives it.
pub(crate) fn message_answer(msg: &Message) -> serde_json::Value {
    json!({
        "status": "processed",
        "item_hash": msg.item_hash,
        "reception_time": iso_time(msg.time),
        "message": msg.to_json(),
    })
}

/// `GET /api/v0/storage/raw/{sha256}`.
pub(super) async fn raw(
    State(guest): State<Guest>,
    method: Method,
    uri: Uri,
    Path(hash): Path<String>,
) -> Response {
    if !is_sha256(&hash) {
        // Perhaps a CID, which the upstream API may know.
        if guest.api.upstream.is_some() {
            return forward(&guest, method, &uri, None).await;
        }
        return error(
            StatusCode::BAD_REQUEST,
            format!("{hash:?} is not a sha256 hash (64 lowercase hex characters)"),
        );
    }
    let store = guest.api.store.clone();
    let read = {
        let hash = hash.clone();
        tokio::task::spawn_blocking(move || store.read_object(&hash)).await
    };
    match read {
        Ok(Ok(bytes)) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            )],
            bytes,
        )
            .into_response(),
        Ok(Err(StoreError::NotFound { .. })) => {
            miss(&guest, method, &uri, format!("object {hash}")).await
        }
        Ok(Err(e @ StoreError::Corrupt { .. })) => {
            tracing::error!("guest API: not serving object {hash}: {e}");
            miss(&guest, method, &uri, format!("object {hash}")).await
        }
        Ok(Err(e)) => internal(format!("reading object {hash}: {e}")),
        Err(e) => internal(format!("the object task failed: {e}")),
    }
}

/// Any `GET`, `HEAD` or `OPTIONS` not answered above; any other method is not allowed.
pub(super) async fn fallback(State(guest): State<Guest>, method: Method, uri: Uri) -> Response {
    if matches!(method, Method::GET | Method::HEAD | Method::OPTIONS) {
        let what = format!("{method} {}", uri.path());
        miss(&guest, method, &uri, what).await
    } else {
        error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!(
                "{method} {}: the guest API does not take this method here",
                uri.path()
            ),
        )
    }
}

/// `POST /api/v0/ipfs/pubsub/pub` and `POST /api/v0/p2p/pubsub/pub`.
pub(super) async fn publish(
    State(guest): State<Guest>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if guest.api.upstream.is_none() {
        return error(StatusCode::SERVICE_UNAVAILABLE, NO_UPSTREAM.into());
    }
    let content_type = headers.get(header::CONTENT_TYPE).cloned();
    forward(&guest, Method::POST, &uri, Some((body, content_type))).await
}

/// What is not here: asked of the upstream API, or a 404 naming `what`.
async fn miss(guest: &Guest, method: Method, uri: &Uri, what: String) -> Response {
    if guest.api.upstream.is_some() {
        forward(guest, method, uri, None).await
    } else {
        error(
            StatusCode::NOT_FOUND,
            format!("{what} is not on this node, and {NO_UPSTREAM}"),
        )
    }
}

/// Sends the request to the upstream API and answers with its status, `Content-Type` and
/// body (streamed).
async fn forward(
    guest: &Guest,
    method: Method,
    uri: &Uri,
    body: Option<(Bytes, Option<HeaderValue>)>,
) -> Response {
    let Some(upstream) = guest.api.upstream.as_deref() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, NO_UPSTREAM.into());
    };
    let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let url = format!("{upstream}{path}");
    let mut request = guest.api.client.request(method, &url);
    if let Some((bytes, content_type)) = body {
        if let Some(value) = content_type {
            request = request.header(header::CONTENT_TYPE, value);
        }
        request = request.body(bytes);
    }
    let mut upstream_response = match request.send().await {
        Ok(r) => r,
        Err(e) => {
            let reason = crate::runtime::describe_http(&e);
            tracing::warn!("guest API: {url}: {reason}");
            return error(
                StatusCode::BAD_GATEWAY,
                format!("the upstream Aleph API did not answer {path}: {reason}"),
            );
        }
    };
    let status = upstream_response.status();
    let content_type = upstream_response
        .headers()
        .get(header::CONTENT_TYPE)
        .cloned();
    let (mut tx, body) = http_body_util::channel::Channel::<Bytes, reqwest::Error>::new(4);
    tokio::spawn(async move {
        loop {
            match upstream_response.chunk().await {
                Ok(Some(chunk)) => {
                    if tx.send_data(chunk).await.is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => return tx.abort(e),
            }
        }
    });
    let mut response = Response::new(Body::new(body));
    *response.status_mut() = status;
    if let Some(value) = content_type {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

/// A 500 for a failure of the node's own; the guest learns no more than that.
fn internal(log: String) -> Response {
    tracing::error!("guest API: {log}");
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal error of the node (see its log)".into(),
    )
}

/// Seconds since the epoch as ISO 8601 in UTC with microseconds (`2024-05-01T12:00:00.250000Z`),
/// as pyaleph writes times.
fn iso_time(time: f64) -> String {
    let micros = (time * 1e6).round();
    let micros = if micros.is_finite() { micros as i64 } else { 0 };
    chrono::DateTime::from_timestamp_micros(micros)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}
