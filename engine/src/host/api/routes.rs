//! The guest API's routes, as aleph-vm's guest API (`aleph/vm/guest_api`) lays them out, and
//! the answers that are the node's own: signing and the cache. The Aleph API routes are in
//! [`super::proxy`].
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /properties` | the node's signing account, `{"chain": "ETH", "curve": "secp256k1", "address", "public_key"}`; 501 while the node has no signing key |
//! | `POST /sign` | the message signed by the node ([`crate::message::Signer`]): `sender` set, `signature` added; 403 unless its `content.address` is the program's own item hash, then 501 while the node has no signing key, 400 unless it is an inline message whose `item_hash` is its `item_content`'s |
//! | `GET /cache/?pattern=P` | the program's keys matching the glob `P` (`*` when absent), a JSON list; 400 for a bad pattern |
//! | `GET /cache/{key}` | the value's bytes; 404 `No such key in cache` |
//! | `PUT /cache/{key}` | sets the value (the body, at most [`MAX_VALUE_BYTES`]) for [`super::CACHE_TTL`]: `true` |
//! | `DELETE /cache/{key}` | `1` when the key was there, `0` when not |
//! | `POST /api/v0/{ipfs,p2p}/pubsub/pub` | forwarded to the upstream API; 503 without one |
//! | `GET`, `HEAD`, `OPTIONS` anything else | the Aleph API ([`super::proxy`]) |
//!
//! A bad key is a 400 whose text starts `Invalid key` (as on aleph-vm) and states the rule.
//! Errors of the node's own are JSON, `{"error": "…"}`.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::Guest;
use super::cache::{KEY_RULE, PATTERN_RULE, valid_key, valid_pattern};
use super::proxy;
use crate::message::sha256_hex;
use crate::store::remote::{MESSAGES_PATH, RAW_PATH};

/// The largest request body (a cached value, a message to sign or publish): 1 MiB, the
/// request size aleph-vm's guest API (aiohttp) takes.
pub const MAX_VALUE_BYTES: usize = 1 << 20;

/// Why `/properties` and `/sign` have no answer on a node without a signing key.
pub const NO_SIGNING_KEY: &str = "this node has no signing key (node option --signing-key)";

/// Every route of the guest API.
pub(super) fn router() -> Router<Guest> {
    Router::new()
        .route("/properties", get(properties))
        .route("/sign", post(sign))
        .route("/cache/", get(list_keys).put(no_key).delete(no_key))
        .route(
            "/cache/{*key}",
            get(get_value).put(put_value).delete(delete_value),
        )
        .route("/api/v0/ipfs/pubsub/pub", post(proxy::publish))
        .route("/api/v0/p2p/pubsub/pub", post(proxy::publish))
        .route(MESSAGES_PATH, get(proxy::messages).options(proxy::fallback))
        .route(
            "/api/v0/messages/{item_hash}",
            get(proxy::message).options(proxy::fallback),
        )
        .route(
            &format!("{RAW_PATH}{{hash}}"),
            get(proxy::raw).options(proxy::fallback),
        )
        .fallback(proxy::fallback)
        .layer(DefaultBodyLimit::max(MAX_VALUE_BYTES))
}

/// A JSON error answer, `{"error": message}`.
pub(super) fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// A plain-text answer, as aleph-vm gives its cache errors.
fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}

fn bad_key(key: &str) -> Response {
    text(
        StatusCode::BAD_REQUEST,
        format!("Invalid key {key:?}: {KEY_RULE}"),
    )
}

/// A failure of the cache backend: logged, and a 500 that says only that.
fn cache_failed(e: super::cache::CacheError) -> Response {
    tracing::error!("guest API: {e}");
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the node's cache failed (see the node's log)".into(),
    )
}

/// `GET /properties`: the node's signing account, as aleph-vm's VM connector answers it
/// (`vm_connector/main.py`, `properties`): `{"chain": "ETH", "curve": "secp256k1",
/// "address": EIP-55 address, "public_key": 0x + compressed key}`.
async fn properties(State(guest): State<Guest>) -> Response {
    match &guest.api.signer {
        Some(signer) => Json(signer.properties()).into_response(),
        None => error(StatusCode::NOT_IMPLEMENTED, NO_SIGNING_KEY.into()),
    }
}

/// `POST /sign`: the body is a message whose content (`item_content`, a JSON string, or
/// `content`) has the program's item hash as its `address`: a program signs only as itself
/// (aleph-vm's guest API checks the same, with a 400). The node then signs it as aleph-vm's VM
/// connector does (the SDK's `ETHAccount.sign_message`, [`super::Signer::sign_message`]) and
/// answers the message with its `sender` (the node's address) and `signature`.
///
/// The signature covers `item_hash`, not the content the address was checked in: the node
/// signs only an inline message whose `item_hash` is the SHA-256 of its `item_content` (as
/// Aleph's nodes check it), so that the check means something. aleph-vm does not compare the
/// two, and fails (500) on a message without `item_content`.
async fn sign(State(guest): State<Guest>, body: Bytes) -> Response {
    let mut message = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(message)) => message,
        Ok(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "the body must be a message: a JSON object".into(),
            );
        }
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("the body is not JSON: {e}"),
            );
        }
    };
    let content = match message.get("item_content") {
        Some(Value::String(text)) => match serde_json::from_str::<Value>(text) {
            Ok(content) => content,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("the message's item_content is not JSON: {e}"),
                );
            }
        },
        _ => match message.get("content") {
            Some(content @ Value::Object(_)) => content.clone(),
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "the message has no content (item_content or content)".into(),
                );
            }
        },
    };
    let address = content.get("address").and_then(Value::as_str);
    if address != Some(&*guest.program) {
        let found = address.map_or("no content.address".to_string(), |a| {
            format!("content.address {a:?}")
        });
        return error(
            StatusCode::FORBIDDEN,
            format!(
                "the message has {found}: a program signs only messages whose content.address \
                 is its own item hash ({})",
                guest.program
            ),
        );
    }
    let Some(signer) = &guest.api.signer else {
        return error(StatusCode::NOT_IMPLEMENTED, NO_SIGNING_KEY.into());
    };
    let Some(Value::String(item_content)) = message.get("item_content") else {
        return error(
            StatusCode::BAD_REQUEST,
            "the node signs only inline messages: the message has no item_content (a JSON \
             string) for its item_hash to be checked against"
                .into(),
        );
    };
    let expected = sha256_hex(item_content.as_bytes());
    match message.get("item_hash") {
        Some(Value::String(hash)) if *hash == expected => {}
        found => {
            let found = found.map_or("no item_hash".to_string(), |h| format!("item_hash {h}"));
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "the message has {found}: an inline message's item_hash is the SHA-256 of \
                     its item_content ({expected})"
                ),
            );
        }
    }
    if let Err(e) = signer.sign_message(&mut message) {
        return error(StatusCode::BAD_REQUEST, e);
    }
    Json(Value::Object(message)).into_response()
}

/// The query of `GET /cache/`.
#[derive(serde::Deserialize)]
struct ListQuery {
    pattern: Option<String>,
}

/// `GET /cache/?pattern=P`.
async fn list_keys(State(guest): State<Guest>, Query(query): Query<ListQuery>) -> Response {
    let pattern = query.pattern.unwrap_or_else(|| "*".into());
    if !valid_pattern(&pattern) {
        return text(
            StatusCode::BAD_REQUEST,
            format!("Invalid key pattern {pattern:?}: {PATTERN_RULE}"),
        );
    }
    match guest.api.cache.keys(&guest.program, &pattern).await {
        Ok(keys) => Json(keys).into_response(),
        Err(e) => cache_failed(e),
    }
}

/// `PUT` or `DELETE /cache/`: no key.
async fn no_key() -> Response {
    bad_key("")
}

/// `GET /cache/{key}`.
async fn get_value(State(guest): State<Guest>, Path(key): Path<String>) -> Response {
    if !valid_key(&key) {
        return bad_key(&key);
    }
    match guest.api.cache.get(&guest.program, &key).await {
        Ok(Some(value)) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            )],
            value,
        )
            .into_response(),
        Ok(None) => text(StatusCode::NOT_FOUND, "No such key in cache".into()),
        Err(e) => cache_failed(e),
    }
}

/// `PUT /cache/{key}`: answers `true`, as aleph-vm passes on Redis's answer to `SET`.
async fn put_value(State(guest): State<Guest>, Path(key): Path<String>, value: Bytes) -> Response {
    if !valid_key(&key) {
        return bad_key(&key);
    }
    match guest
        .api
        .cache
        .set(&guest.program, &key, value, guest.api.cache_ttl)
        .await
    {
        Ok(()) => Json(true).into_response(),
        Err(e) => cache_failed(e),
    }
}

/// `DELETE /cache/{key}`: answers how many keys were deleted (`1` or `0`), as Redis's `DEL`.
async fn delete_value(State(guest): State<Guest>, Path(key): Path<String>) -> Response {
    if !valid_key(&key) {
        return bad_key(&key);
    }
    match guest.api.cache.delete(&guest.program, &key).await {
        Ok(deleted) => Json(u8::from(deleted)).into_response(),
        Err(e) => cache_failed(e),
    }
}
