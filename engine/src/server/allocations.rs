//! The network scheduler's push, `POST /control/allocations`: the body
//! `{"persistent_vms": [...], "instances": [...], "on_demand_vms": [...], "jobs": [...]}` lists
//! what the scheduler wants on this node; the persistent programs are started and those no
//! longer listed stopped ([`crate::server::triggers::Triggers::allocate`]).
//!
//! Authentication, either:
//! - `Authorization: Aleph-EIP191-V1 sig=<hex>,payload=<hex>`, as today's nodes take it: the
//!   payload is the JSON `{"method", "path", "body_sha256", "iat"}`, signed with EIP-191
//!   `personal_sign` by one of the node's scheduler addresses (`serve --scheduler`); it must
//!   name this request's method and path (no query string), hash its body, be at most
//!   [`SIGNATURE_MAX_AGE`] away from the node's clock, and carry an `iat` above the last one
//!   taken from that signer (no replay);
//! - `Authorization: Bearer <token>`, the node's control token (`--token-file`).
//!
//! Instances (VMs) are refused: this node runs Wasm programs only. `on_demand_vms` and `jobs`
//! are ignored, as on today's nodes. The answer is `{"success", "successful", "failing",
//! "stopped", "errors"}`: 200 when everything listed runs, 207 when some of it does, 503 when
//! none does.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::routing::post;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::AppState;
use super::error::ServiceError;

/// The route.
pub const ALLOCATIONS_PATH: &str = "/control/allocations";
/// The signed scheme's name (compared without case).
pub const SCHEME: &str = "Aleph-EIP191-V1";
/// How far a signed payload's `iat` may be from the node's clock.
pub const SIGNATURE_MAX_AGE: Duration = Duration::from_secs(300);
/// The largest allocation body taken.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// `POST /control/allocations`.
pub fn router() -> Router<AppState> {
    Router::new().route(ALLOCATIONS_PATH, post(allocations))
}

/// The scheduler's allocation.
#[derive(Debug, Deserialize)]
struct Allocation {
    persistent_vms: BTreeSet<String>,
    #[serde(default)]
    instances: BTreeSet<String>,
    #[serde(default)]
    on_demand_vms: Option<BTreeSet<String>>,
    #[serde(default)]
    jobs: Option<BTreeSet<String>>,
}

/// The highest `iat` taken from each scheduler address (lowercase).
#[derive(Debug, Default)]
pub struct Replays(Mutex<HashMap<String, i64>>);

impl Replays {
    /// Takes `iat` from `signer` if it is above the last one taken.
    fn take(&self, signer: &str, iat: i64) -> bool {
        let mut last = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match last.get(signer) {
            Some(&previous) if iat <= previous => false,
            _ => {
                last.insert(signer.to_string(), iat);
                true
            }
        }
    }
}

async fn allocations(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ServiceError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(ServiceError::BodyTooLarge {
            limit: MAX_BODY_BYTES,
        });
    }
    let by = authenticate(&state, &method, &uri, &headers, &body)?;
    let allocation: Allocation = serde_json::from_slice(&body)
        .map_err(|e| ServiceError::BadRequest(format!("the allocation is not valid: {e}")))?;
    tracing::info!(
        by,
        persistent = allocation.persistent_vms.len(),
        instances = allocation.instances.len(),
        "allocation received"
    );
    for (what, list) in [
        ("on_demand_vms", &allocation.on_demand_vms),
        ("jobs", &allocation.jobs),
    ] {
        if list.as_ref().is_some_and(|l| !l.is_empty()) {
            tracing::warn!("allocation: {what} ignored (not supported, as on today's nodes)");
        }
    }
    let mut done = state
        .triggers()
        .allocate(&state, &allocation.persistent_vms)
        .await;
    for instance in &allocation.instances {
        done.failing.insert(
            instance.clone(),
            "instances (virtual machines) are not supported: this node runs Wasm programs only"
                .into(),
        );
    }
    let status = if done.failing.is_empty() {
        StatusCode::OK
    } else if done.successful.is_empty() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::MULTI_STATUS
    };
    Ok((
        status,
        Json(json!({
            "success": done.failing.is_empty(),
            "successful": done.successful,
            "failing": done.failing.keys().collect::<Vec<_>>(),
            "stopped": done.stopped,
            "errors": done.failing,
        })),
    ))
}

/// Who is asking: `scheduler 0x…` or `token`; else 401 with the reason (403 when the node has
/// neither schedulers nor a token).
fn authenticate(
    state: &AppState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<String, ServiceError> {
    let schedulers = &state.config().schedulers;
    if schedulers.is_empty() && state.token().is_none() {
        return Err(ServiceError::ControlDisabled);
    }
    let refused = |reason: String| ServiceError::NotAuthorized(reason);
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(refused(format!(
            "an Authorization header is required ({SCHEME} from a scheduler, or Bearer)"
        )));
    };
    let value = value
        .to_str()
        .map_err(|_| refused("the Authorization header is not text".into()))?;
    let (scheme, params) = value.trim().split_once(' ').unwrap_or((value, ""));
    if scheme.eq_ignore_ascii_case("bearer") {
        super::control::authorize(state, headers)?;
        return Ok("token".into());
    }
    if !scheme.eq_ignore_ascii_case(SCHEME) {
        return Err(refused(format!("unsupported scheme {scheme:?}")));
    }
    let (signer, iat) =
        verify_signed(method, uri, body, params, SystemTime::now()).map_err(refused)?;
    if !schedulers.iter().any(|s| s.eq_ignore_ascii_case(&signer)) {
        return Err(refused(format!("{signer} is not a scheduler of this node")));
    }
    if !state.replays().take(&signer.to_ascii_lowercase(), iat) {
        return Err(refused(
            "a replayed request: iat is not above the last one taken from this scheduler".into(),
        ));
    }
    Ok(format!("scheduler {signer}"))
}

/// `sig=…,payload=…`: the signature, and the payload's bytes (hex-decoded).
fn parse_params(params: &str) -> Result<(String, Vec<u8>), String> {
    let (mut sig, mut payload) = (None, None);
    for pair in params.split(',') {
        let (key, value) = pair
            .trim()
            .split_once('=')
            .filter(|(_, v)| !v.is_empty())
            .ok_or_else(|| format!("malformed parameter {pair:?}"))?;
        match key {
            "sig" => sig = Some(value.to_string()),
            "payload" => payload = Some(value.to_string()),
            other => return Err(format!("unknown parameter {other:?}")),
        }
    }
    let (Some(sig), Some(payload)) = (sig, payload) else {
        return Err("sig=… and payload=… are required".into());
    };
    let bytes = hex::decode(payload.strip_prefix("0x").unwrap_or(&payload))
        .map_err(|_| "the payload is not hex".to_string())?;
    Ok((sig, bytes))
}

/// Checks a signed request; returns the signer's address and the payload's `iat`.
fn verify_signed(
    method: &Method,
    uri: &Uri,
    body: &[u8],
    params: &str,
    now: SystemTime,
) -> Result<(String, i64), String> {
    let (sig, bytes) = parse_params(params)?;
    let payload: Value =
        serde_json::from_slice(&bytes).map_err(|_| "the payload is not JSON".to_string())?;
    let field = |name: &str| {
        payload
            .get(name)
            .ok_or_else(|| format!("the payload has no {name:?}"))
    };
    let iat = field("iat")?.as_i64().ok_or("iat is not an integer")?;
    let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    if iat.abs_diff(now) > SIGNATURE_MAX_AGE.as_secs() {
        return Err(format!(
            "the payload's iat {iat} is more than {} s from the node's clock ({now})",
            SIGNATURE_MAX_AGE.as_secs()
        ));
    }
    if field("method")?.as_str() != Some(method.as_str())
        || field("path")?.as_str() != Some(uri.path())
    {
        return Err(format!(
            "the payload names another request than {method} {}",
            uri.path()
        ));
    }
    if uri.query().is_some() {
        return Err("a signed request has no query string".into());
    }
    let body_hash = hex::encode(Sha256::digest(body));
    if field("body_sha256")?.as_str() != Some(body_hash.as_str()) {
        return Err("body_sha256 is not the body's sha256".into());
    }
    let signer = crate::message::verify::recover_evm("ETH", &bytes, &sig)
        .map_err(|e| format!("the signature: {e}"))?;
    Ok((signer, iat))
}
