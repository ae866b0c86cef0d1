//! The store served to other nodes: the read-only subset of the Aleph API that a fetching node
//! uses (see [`crate::store::remote`]).
//!
//! - `GET /api/v0/messages.json`: stored messages in their final form, filtered by `hashes`,
//!   `refs` (a STORE message's `content.ref`, or any content's `ref`), `owners`
//!   (`content.address`), `addresses` (the sender), `msgType` / `msgTypes`, `channels`,
//!   `chains` (lists are comma-separated or repeated), sorted by time (`sort_order` or
//!   `sortOrder`: `-1` newest first, the default, or `1`; `sortBy` `time` or `tx-time`, both by
//!   message time here), paginated like Aleph (`pagination` per page, default 20, `0` for all;
//!   `page` from 1). The answer is `{"messages": [...], "pagination_page", "pagination_total",
//!   "pagination_per_page", "pagination_item": "messages"}`; a bad parameter is a 422.
//! - `GET /api/v0/storage/raw/{sha256}`: an object's bytes, streamed and hashed on the way (a
//!   stored object that no longer matches its hash is cut off, never completed); 404 when the
//!   store does not hold it, 400 when the hash is not a sha256.
//!
//! Store reads run on the blocking pool, never on the async workers.

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt as _;

use super::AppState;
use crate::message::{Content, Message, MessageType, is_sha256};
use crate::store::remote::{MESSAGES_PATH, RAW_PATH};
use crate::store::{Store, StoreError};

/// Messages per page unless `pagination` says otherwise (Aleph's default).
pub const DEFAULT_PER_PAGE: usize = 20;

/// `GET /api/v0/messages.json` and `GET /api/v0/storage/raw/{sha256}`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route(MESSAGES_PATH, get(messages))
        .route(&format!("{RAW_PATH}{{hash}}"), get(raw))
}

/// A message listing query, parsed from Aleph's parameters.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MessageQuery {
    /// Only these item hashes.
    pub hashes: Vec<String>,
    /// Only messages whose content's `ref` is one of these.
    pub refs: Vec<String>,
    /// Only messages whose content's `address` is one of these.
    pub owners: Vec<String>,
    /// Only messages sent by one of these.
    pub addresses: Vec<String>,
    /// Only messages of these types.
    pub types: Vec<MessageType>,
    /// Only messages on these channels.
    pub channels: Vec<String>,
    /// Only messages of these chains.
    pub chains: Vec<String>,
    /// Newest first (the default) or oldest first.
    pub newest_first: bool,
    /// Messages per page; 0 for all.
    pub per_page: usize,
    /// The page, from 1.
    pub page: usize,
}

impl MessageQuery {
    /// Parses the query's `(name, value)` pairs; unknown names are ignored, as Aleph does.
    pub fn parse(pairs: &[(String, String)]) -> Result<Self, String> {
        let mut q = MessageQuery {
            newest_first: true,
            per_page: DEFAULT_PER_PAGE,
            page: 1,
            ..MessageQuery::default()
        };
        for (name, value) in pairs {
            let list = || {
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
                    .map(String::from)
            };
            match name.as_str() {
                "hashes" => q.hashes.extend(list()),
                "refs" => q.refs.extend(list()),
                "owners" => q.owners.extend(list()),
                "addresses" => q.addresses.extend(list()),
                "channels" => q.channels.extend(list()),
                "chains" => q.chains.extend(list()),
                "msgType" | "msgTypes" | "message_type" | "message_types" => {
                    for t in list() {
                        let kind = MessageType::from_name(&t.to_ascii_uppercase())
                            .ok_or_else(|| format!("{name}: unknown message type {t:?}"))?;
                        q.types.push(kind);
                    }
                }
                "sort_order" | "sortOrder" => {
                    q.newest_first = match value.trim() {
                        "-1" => true,
                        "1" => false,
                        _ => return Err(format!("{name}: expected -1 or 1, got {value:?}")),
                    }
                }
                "sort_by" | "sortBy" if !matches!(value.trim(), "time" | "tx-time") => {
                    return Err(format!("{name}: expected time or tx-time, got {value:?}"));
                }
                "pagination" => {
                    q.per_page = value.trim().parse().map_err(|_| {
                        format!("{name}: expected a number of messages (0 for all), got {value:?}")
                    })?
                }
                "page" => {
                    q.page = value
                        .trim()
                        .parse()
                        .ok()
                        .filter(|p| *p >= 1)
                        .ok_or_else(|| {
                            format!("{name}: expected a page number from 1, got {value:?}")
                        })?
                }
                _ => {}
            }
        }
        Ok(q)
    }

    /// Whether `msg` passes every filter but `hashes` (applied when candidates are listed).
    pub fn matches(&self, msg: &Message) -> bool {
        let any = |wanted: &[String], have: Option<&str>| {
            wanted.is_empty() || have.is_some_and(|h| wanted.iter().any(|w| w == h))
        };
        (self.types.is_empty() || self.types.contains(&msg.kind))
            && any(&self.owners, owner(msg))
            && any(&self.addresses, Some(&msg.sender))
            && any(&self.refs, content_ref(msg))
            && any(&self.channels, msg.channel.as_deref())
            && any(&self.chains, Some(&msg.chain))
    }

    /// Lists, filters, sorts and paginates the stored messages; returns the page and the total.
    pub fn run(&self, store: &Store) -> Result<(Vec<Message>, usize), StoreError> {
        let candidates: Vec<String> = if !self.hashes.is_empty() {
            self.hashes.clone()
        } else if !self.refs.is_empty() && self.types == [MessageType::Store] {
            // The amend index lists exactly the STORE messages with a `ref`.
            let mut hashes = Vec::new();
            for r in &self.refs {
                hashes.extend(store.amend_hashes(r)?);
            }
            hashes
        } else {
            store.message_hashes()?
        };
        let mut seen = std::collections::HashSet::new();
        let mut found = Vec::new();
        for hash in candidates {
            if !seen.insert(hash.clone()) {
                continue;
            }
            match store.get_message(&hash) {
                Ok(msg) if self.matches(&msg) => found.push(msg),
                Ok(_) | Err(StoreError::NotFound { .. } | StoreError::BadHash(_)) => {}
                Err(e) => tracing::warn!("not listing stored message {hash}: {e}"),
            }
        }
        found.sort_by(|a, b| {
            a.time
                .total_cmp(&b.time)
                .then_with(|| a.item_hash.cmp(&b.item_hash))
        });
        if self.newest_first {
            found.reverse();
        }
        let total = found.len();
        let page = if self.per_page == 0 {
            found
        } else {
            found
                .into_iter()
                .skip(self.per_page.saturating_mul(self.page - 1))
                .take(self.per_page)
                .collect()
        };
        Ok((page, total))
    }
}

/// A message's owner: its content's `address`.
fn owner(msg: &Message) -> Option<&str> {
    match &msg.content {
        Content::Program(p) => Some(&p.address),
        Content::Store(s) => Some(&s.address),
        Content::Other(v) => v.get("address").and_then(Value::as_str),
    }
}

/// What a message refers to: its content's `ref`.
fn content_ref(msg: &Message) -> Option<&str> {
    match &msg.content {
        Content::Program(_) => None,
        Content::Store(s) => s.reference.as_deref(),
        Content::Other(v) => v.get("ref").and_then(Value::as_str),
    }
}

/// A JSON error answer.
fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

async fn messages(
    State(state): State<AppState>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Response {
    let query = match MessageQuery::parse(&pairs) {
        Ok(q) => q,
        Err(e) => return error(StatusCode::UNPROCESSABLE_ENTITY, e),
    };
    let store = state.executor().store().clone();
    let listed = {
        let query = query.clone();
        tokio::task::spawn_blocking(move || query.run(&store)).await
    };
    match listed {
        Ok(Ok((page, total))) => Json(json!({
            "messages": page.iter().map(Message::to_json).collect::<Vec<_>>(),
            "pagination_page": query.page,
            "pagination_total": total,
            "pagination_per_page": query.per_page,
            "pagination_item": "messages",
        }))
        .into_response(),
        Ok(Err(e)) => {
            tracing::error!("listing messages: {e}");
            error(StatusCode::INTERNAL_SERVER_ERROR, "internal error".into())
        }
        Err(e) => {
            tracing::error!("the listing task failed: {e}");
            error(StatusCode::INTERNAL_SERVER_ERROR, "internal error".into())
        }
    }
}

async fn raw(State(state): State<AppState>, Path(hash): Path<String>) -> Response {
    if !is_sha256(&hash) {
        return error(
            StatusCode::BAD_REQUEST,
            format!("{hash:?} is not a sha256 hash (64 lowercase hex characters)"),
        );
    }
    let path = match state.executor().store().object_path(&hash) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return error(
                StatusCode::NOT_FOUND,
                format!("object {hash} is not on this node"),
            );
        }
        Err(e) => {
            tracing::error!("{}: {e}", path.display());
            return error(StatusCode::INTERNAL_SERVER_ERROR, "internal error".into());
        }
    };
    let len = match file.metadata().await {
        Ok(m) => m.len(),
        Err(e) => {
            tracing::error!("{}: {e}", path.display());
            return error(StatusCode::INTERNAL_SERVER_ERROR, "internal error".into());
        }
    };
    let (tx, body) = http_body_util::channel::Channel::<Bytes, std::io::Error>::new(4);
    tokio::spawn(stream_verified(file, hash, tx));
    let mut response = Response::new(Body::new(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    response
}

/// Sends the file in chunks while hashing it; a file whose bytes no longer hash to `hash` is
/// cut off before its end, so no client ever receives it whole.
async fn stream_verified(
    mut file: tokio::fs::File,
    hash: String,
    mut tx: http_body_util::channel::Sender<Bytes, std::io::Error>,
) {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut pending: Option<Bytes> = None;
    loop {
        let n = match file.read(&mut buf).await {
            Ok(n) => n,
            Err(e) => return tx.abort(e),
        };
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        // Hold back the last chunk until the hash is known.
        if let Some(chunk) = pending.replace(Bytes::copy_from_slice(&buf[..n]))
            && tx.send_data(chunk).await.is_err()
        {
            return;
        }
    }
    let actual = hex::encode(hasher.finalize());
    if actual != hash {
        tracing::error!(
            "object {hash} is corrupt in the store (its bytes hash to {actual}); not served"
        );
        return tx.abort(std::io::Error::other(format!("object {hash} is corrupt")));
    }
    if let Some(chunk) = pending {
        let _ = tx.send_data(chunk).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn aleph_parameters_parse() {
        let q = MessageQuery::parse(&pairs(&[
            ("hashes", "a,b"),
            ("hashes", "c"),
            ("msgType", "STORE"),
            ("sort_order", "1"),
            ("pagination", "0"),
            ("page", "2"),
            ("unknown", "x"),
        ]))
        .unwrap();
        assert_eq!(q.hashes, ["a", "b", "c"]);
        assert_eq!(q.types, [MessageType::Store]);
        assert!(!q.newest_first);
        assert_eq!((q.per_page, q.page), (0, 2));
        let d = MessageQuery::parse(&[]).unwrap();
        assert!(d.newest_first);
        assert_eq!((d.per_page, d.page), (DEFAULT_PER_PAGE, 1));
    }

    #[test]
    fn bad_parameters_are_named() {
        for (k, v) in [
            ("msgType", "NOPE"),
            ("sort_order", "0"),
            ("sortBy", "size"),
            ("pagination", "-3"),
            ("page", "0"),
        ] {
            let e = MessageQuery::parse(&pairs(&[(k, v)])).unwrap_err();
            assert!(e.starts_with(k), "{e}");
        }
    }
}
