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
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt as _;

use super::AppState;
use crate::message::{Message, is_sha256};
use crate::store::remote::{MESSAGES_PATH, RAW_PATH};
// The listing query lives with the store (the guest API runs it too); named here as before.
pub use crate::store::query::{DEFAULT_PER_PAGE, MessageQuery};

/// `GET /api/v0/messages.json` and `GET /api/v0/storage/raw/{sha256}`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route(MESSAGES_PATH, get(messages))
        .route(&format!("{RAW_PATH}{{hash}}"), get(raw))
}

/// A JSON error answer.
pub(super) fn error(status: StatusCode, message: String) -> Response {
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
