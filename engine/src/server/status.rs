//! What the network asks a node about itself, in the shapes today's nodes answer:
//! `GET /status/check/version?reference=X` (200 when this node's version is X or newer, 403
//! when older), `/status/check/host` (the node's own checks: IPv4 and IPv6 connectivity as
//! today's nodes probe it ([`connectivity`]), its store takes writes and its runtimes are
//! present; 503 when a required check fails), `/status/config` (the public part of the
//! configuration, with today's nodes' keys where they mean something here) and
//! `/about/capability` (what this node runs: Wasm programs, on which runtimes — no VM
//! instances, no hypervisor, no GPU, no confidential computing).

use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ServiceError;
use super::{AppState, connectivity};
use crate::runtime::{self, RuntimeKind};

/// This node's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// `/status/check/version`, `/status/check/host`, `/status/config`, `/about/capability`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/status/check/version", get(check_version))
        .route("/status/check/host", get(check_host))
        .route("/status/config", get(public_config))
        .route("/about/capability", get(capability))
}

#[derive(Debug, Deserialize)]
struct VersionQuery {
    reference: Option<String>,
}

/// The numeric release parts of `text` (`1.2.3`, `v1.2`, `1.2.3-rc1` → 1, 2, 3).
fn release(text: &str) -> Option<Vec<u64>> {
    let core = text.trim().trim_start_matches('v');
    let core = core.split(['-', '+']).next()?;
    core.split('.').map(|p| p.parse().ok()).collect()
}

/// Compares release parts, missing parts counting as 0.
fn compare(a: &[u64], b: &[u64]) -> std::cmp::Ordering {
    let len = a.len().max(b.len());
    let at = |v: &[u64], i: usize| v.get(i).copied().unwrap_or(0);
    (0..len)
        .map(|i| at(a, i).cmp(&at(b, i)))
        .find(|o| o.is_ne())
        .unwrap_or(std::cmp::Ordering::Equal)
}

async fn check_version(
    Query(query): Query<VersionQuery>,
) -> Result<(StatusCode, String), ServiceError> {
    let reference = query.reference.ok_or_else(|| {
        ServiceError::BadRequest("the query field ?reference= must be given".into())
    })?;
    let wanted = release(&reference).ok_or_else(|| {
        ServiceError::BadRequest(format!("{reference:?} is not a version (1.2.3)"))
    })?;
    let current = release(VERSION).unwrap_or_default();
    Ok(if compare(&current, &wanted).is_ge() {
        (
            StatusCode::OK,
            format!("Up-to-date: version {VERSION} >= {reference}"),
        )
    } else {
        (
            StatusCode::FORBIDDEN,
            format!("Outdated: version {VERSION} < {reference}"),
        )
    })
}

async fn check_host(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let store = state.executor().store().clone();
    let checks = tokio::task::spawn_blocking(move || {
        let writable = tempfile::NamedTempFile::new_in(store.tmp_dir()).is_ok();
        let runtimes: serde_json::Map<String, Value> = runtime::list(&store)
            .map(|list| {
                list.into_iter()
                    .map(|r| (r.name, r.interpreter_present.into()))
                    .collect()
            })
            .unwrap_or_default();
        (writable, runtimes)
    })
    .await;
    let (writable, runtimes) = checks.unwrap_or_default();
    let config = state.config();
    let (mut report, connected) =
        connectivity::check(&config.connectivity, config.domain.as_deref()).await;
    let healthy = connected && writable && runtimes.values().any(|v| v == &Value::Bool(true));
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    report["store_writable"] = writable.into();
    report["runtimes_present"] = runtimes.into();
    (status, Json(report))
}

async fn public_config(State(state): State<AppState>) -> Json<Value> {
    let c = state.config();
    Json(json!({
        "version": VERSION,
        "DOMAIN_NAME": c.domain,
        "references": { "API_SERVER": c.api },
        "security": {
            "ALLOW_VM_NETWORKING": true,
            "UNSIGNED_MESSAGES": state.executor().store().unsigned().as_str(),
            "SCHEDULERS": c.schedulers,
        },
        "computing": {
            "ENABLE_QEMU_SUPPORT": false,
            "INSTANCE_DEFAULT_HYPERVISOR": null,
            "ENABLE_CONFIDENTIAL_COMPUTING": false,
            "ENABLE_GPU_SUPPORT": false,
            "WASM_RUNTIMES_ONLY": true,
        },
    }))
}

async fn capability(State(state): State<AppState>) -> Json<Value> {
    let store = state.executor().store().clone();
    let runtimes = tokio::task::spawn_blocking(move || runtime::list(&store))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let runtimes: Vec<Value> = runtimes
        .into_iter()
        .map(|r| {
            json!({
                "name": r.name,
                "ref": r.reference,
                "kind": match r.kind {
                    RuntimeKind::Wasi => "wasi",
                    RuntimeKind::Interpreter => "interpreter",
                },
                "interpreter_present": r.interpreter_present,
            })
        })
        .collect();
    Json(json!({
        "engine": "wasm",
        "message_types": { "program": true, "instance": false },
        "runtimes": runtimes,
        "cpu": {
            "architecture": std::env::consts::ARCH,
            "count": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        },
        "hypervisors": [],
        "confidential_computing": false,
        "gpu": false,
        "note": "this node runs Wasm runtimes only: a program whose runtime is not a Wasm \
                 runtime manifest, and every instance (VM), is refused",
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_by_release_parts() {
        let v = |t: &str| release(t).unwrap();
        assert!(compare(&v("0.1.0"), &v("0.1")).is_eq());
        assert!(compare(&v("1.10.0"), &v("1.9.9")).is_gt());
        assert!(compare(&v("v1.2.3-rc1"), &v("1.2.4")).is_lt());
        assert!(release("one.two").is_none());
        assert!(release("").is_none());
    }
}
