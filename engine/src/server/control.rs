//! Operator control of programs: `POST /control/machine/{ref}/stop` and `/expire`, behind
//! `Authorization: Bearer <token>` (the token from `--token-file`). Without a configured token
//! the routes answer 403 ("control routes disabled"); a missing or wrong token gets 401.
//!
//! `stop` retires warm instances now (lifespan shutdown, export) and stops the program's
//! persistent instance, if it has one (not restarted until the node restarts or the program
//! is amended); `expire` retires warm instances after `{"timeout": seconds}` (default 0). Executions in progress are not interrupted; the
//! next request boots a fresh instance. The executor can so far only retire idle instances of
//! every program at once, so both act on the whole node (the answer says how many instances
//! of the named program and of the node were retired).

use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use axum::routing::post;
use serde_json::{Value, json};

use super::AppState;
use super::error::ServiceError;
use crate::store::StoreError;

/// The longest `expire` timeout accepted: one day.
pub const MAX_EXPIRE_SECONDS: f64 = 86_400.0;

/// `POST /control/machine/{ref}/stop`, `/control/machine/{ref}/expire`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/control/machine/{ref}/stop", post(stop))
        .route("/control/machine/{ref}/expire", post(expire))
}

/// Compares without an early exit, so the time taken does not tell how much of a guess was
/// right.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks the bearer token: 403 when control is disabled, 401 when the token is missing or
/// wrong.
pub(super) fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ServiceError> {
    let Some(token) = state.token() else {
        return Err(ServiceError::ControlDisabled);
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    match given {
        Some(given) if same(given.as_bytes(), token.as_bytes()) => Ok(()),
        _ => Err(ServiceError::Unauthorized),
    }
}

/// The item hash of the PROGRAM message `reference`, or 404.
fn program(state: &AppState, reference: &str) -> Result<String, ServiceError> {
    match state.executor().store().get_message(reference) {
        Ok(msg) if msg.program().is_some() => Ok(msg.item_hash),
        Ok(_) | Err(StoreError::NotFound { .. }) | Err(StoreError::BadHash(_)) => Err(
            ServiceError::UnknownProgram(reference.chars().take(128).collect()),
        ),
        Err(e) => Err(ServiceError::Internal(
            anyhow::Error::new(e).context(format!("reading program {reference}")),
        )),
    }
}

/// Retires the idle instances; returns how many were the program's and how many in all.
async fn retire(state: &AppState, item_hash: &str) -> (usize, usize) {
    let idle = state.executor().idle_instances();
    let program = idle.get(item_hash).copied().unwrap_or(0);
    let node = idle.values().sum();
    state.executor().retire_idle(Duration::ZERO).await;
    tracing::info!(
        program = item_hash,
        "control: retired {node} idle instances"
    );
    (program, node)
}

async fn stop(
    State(state): State<AppState>,
    Path(reference): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ServiceError> {
    authorize(&state, &headers)?;
    let item_hash = program(&state, &reference)?;
    let limit = state.config().executor_config().shutdown_timeout + Duration::from_secs(5);
    let persistent = state.triggers().stop_persistent(&item_hash, limit).await;
    let (program, node) = retire(&state, &item_hash).await;
    Ok(Json(json!({
        "program": item_hash,
        "stopped": true,
        "persistent": persistent,
        "retired_instances": program,
        "retired_instances_on_node": node,
    })))
}

async fn expire(
    State(state): State<AppState>,
    Path(reference): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ServiceError> {
    authorize(&state, &headers)?;
    let item_hash = program(&state, &reference)?;
    let timeout = if body.iter().all(u8::is_ascii_whitespace) {
        0.0
    } else {
        let value: Value = serde_json::from_slice(&body)
            .map_err(|e| ServiceError::BadRequest(format!("the body is not JSON: {e}")))?;
        match value.get("timeout") {
            None | Some(Value::Null) => 0.0,
            Some(t) => t
                .as_f64()
                .filter(|t| (0.0..=MAX_EXPIRE_SECONDS).contains(t))
                .ok_or_else(|| {
                    ServiceError::BadRequest(format!(
                        "\"timeout\" must be a number of seconds from 0 to {MAX_EXPIRE_SECONDS}"
                    ))
                })?,
        }
    };
    if timeout == 0.0 {
        let (program, node) = retire(&state, &item_hash).await;
        return Ok(Json(json!({
            "program": item_hash,
            "expires_in": 0.0,
            "retired_instances": program,
            "retired_instances_on_node": node,
        })));
    }
    let later = state.clone();
    let hash = item_hash.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs_f64(timeout)).await;
        retire(&later, &hash).await;
    });
    Ok(Json(json!({ "program": item_hash, "expires_in": timeout })))
}
