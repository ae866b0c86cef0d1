//! `POST /api/v0/messages`: a message enters the node. The body is a message (final form or
//! the seed's draft) or `{"message": <message>, "sync": …}` as Aleph's API takes it; it is
//! validated, stored, and handed to the triggers at once (a program starts or is amended,
//! subscribed programs get it). Answers `{"item_hash", "type", "message_status": "processed"}`;
//! 400 with the JSON paths of what is wrong for an invalid message or one whose inline hash
//! cannot be checked, one whose signature does not hold, or an unsigned one on a node that
//! takes only signed messages (see [`crate::store::UnsignedMessages`]).

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use serde_json::{Value, json};

use super::AppState;
use super::error::ServiceError;
use crate::store::StoreError;

/// The path messages are posted to.
pub const MESSAGES_POST_PATH: &str = "/api/v0/messages";

/// `POST /api/v0/messages`.
pub fn router() -> Router<AppState> {
    Router::new().route(MESSAGES_POST_PATH, post(ingest))
}

async fn ingest(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ServiceError> {
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ServiceError::BadRequest(format!("the body is not JSON: {e}")))?;
    let value = match value {
        Value::Object(mut map) if map.contains_key("message") && !map.contains_key("item_hash") => {
            map.remove("message").unwrap_or(Value::Null)
        }
        other => other,
    };
    let msg = crate::message::parse_value(&value)
        .map_err(|e| ServiceError::BadRequest(format!("invalid message: {e}")))?;
    let stored = {
        let store = state.executor().store().clone();
        let msg = msg.clone();
        tokio::task::spawn_blocking(move || store.put_message(&msg))
            .await
            .map_err(|e| anyhow::anyhow!("the store task failed: {e}"))?
    };
    match stored {
        Ok(_) => {}
        Err(
            e @ (StoreError::Unverified(_)
            | StoreError::BadHash(_)
            | StoreError::Unauthentic { .. }
            | StoreError::Unsigned(_)),
        ) => {
            return Err(ServiceError::BadRequest(e.to_string()));
        }
        Err(e) => {
            return Err(ServiceError::Internal(
                anyhow::Error::new(e).context(format!("storing message {}", msg.item_hash)),
            ));
        }
    }
    tracing::info!(message = %msg.item_hash, kind = msg.kind.as_str(), "message received");
    let answer = json!({
        "item_hash": msg.item_hash,
        "type": msg.kind.as_str(),
        "message_status": "processed",
    });
    state.triggers().arrived(&state, msg);
    Ok(Json(answer))
}
