//! Receipts: a canonical JSON record of one execution — which engine ran it, from which inputs,
//! and what came out — that a verifier can re-execute and compare field by field
//! ([`verify`]).
//!
//! Canonical form: UTF-8 JSON, object keys sorted by their bytes, no insignificant whitespace,
//! integers only, strings escaped as `serde_json` does. `receipt_sha256` is the sha256 of the
//! canonical form of the receipt without that field. Bytes (bodies, stdout, stderr, archives)
//! appear by their sha256 only.
//!
//! A receipt has three parts:
//! - `engine`: crate name and version, wasmtime version, determinism-profile version, the
//!   sha256 of the determinism-relevant settings ([`crate::sandbox::determinism::settings`]),
//!   and for an interpreter runtime the interpreter module that ran (`interpreter`: its sha256
//!   and whether it is the one prepared for snapshots — fuel counts differ between the two);
//! - `inputs`: the message's item hash, every object the execution was made from (field, ref,
//!   resolved message and file hash), the trigger ([`Trigger::describe`]), and — only when a
//!   reproducible execution read content through the guest API — `reads`: each message or
//!   object it asked for by hash, in the order first read, and whether the store had it;
//! - `outputs`: outcome kind, exit code, HTTP status, headers and body hash, stdout and stderr
//!   hashes (with what the cap dropped), the export archive's hash and the hash of its
//!   uncompressed tar, and the fuel consumed.
//!
//! `reproducible` says whether the execution ran under the determinism profile; receipts of
//! other executions are a record, not something two runs are expected to agree on.

pub mod verify;

use serde_json::{Map, Value, json};

use crate::interface::Trigger;
use crate::message::sha256_hex;
pub use crate::message::{canonical, canonical_hash};
use crate::outcome::Outcome;
use crate::sandbox::{SandboxConfig, WASMTIME_VERSION, determinism};

/// The version of the receipt format.
pub const RECEIPT_VERSION: u32 = 1;

/// The identity of this engine as receipts record it.
pub fn engine_identity(config: &SandboxConfig) -> Value {
    json!({
        "name": env!("CARGO_PKG_NAME"),
        "version": env!("CARGO_PKG_VERSION"),
        "wasmtime": WASMTIME_VERSION,
        "profile": determinism::PROFILE_VERSION,
        "config_sha256": canonical_hash(&determinism::settings(config)),
    })
}

/// The `engine` part of the receipt of `outcome`: [`engine_identity`] and the interpreter
/// module that ran.
pub fn engine_of(config: &SandboxConfig, outcome: &Outcome) -> Value {
    let mut engine = engine_identity(config);
    if let (Value::Object(map), Some(m)) = (&mut engine, &outcome.interpreter) {
        map.insert(
            "interpreter".into(),
            json!({"sha256": m.sha256, "prepared": m.prepared}),
        );
    }
    engine
}

/// What a receipt says about one execution, before its own hash is added.
pub struct Execution<'a> {
    /// The message's item hash.
    pub message: &'a str,
    /// Whether it ran under the determinism profile.
    pub reproducible: bool,
    /// What triggered it.
    pub trigger: &'a Trigger,
    /// What it produced.
    pub outcome: &'a Outcome,
}

/// The receipt of an execution, `receipt_sha256` included.
pub fn build(config: &SandboxConfig, e: &Execution<'_>) -> Value {
    let objects: Vec<Value> = e
        .outcome
        .inputs
        .iter()
        .map(|i| {
            json!({
                "field": i.field,
                "ref": i.resolved.reference,
                "message_hash": i.resolved.message_hash,
                "sha256": i.resolved.file_hash,
            })
        })
        .collect();
    let mut inputs = json!({
        "message": e.message,
        "objects": objects,
        "trigger": e.trigger.describe(),
    });
    if !e.outcome.reads.is_empty()
        && let Value::Object(map) = &mut inputs
    {
        let reads = e.outcome.reads.iter().map(|r| r.to_json()).collect();
        map.insert("reads".into(), Value::Array(reads));
    }
    let mut receipt = json!({
        "receipt_version": RECEIPT_VERSION,
        "reproducible": e.reproducible,
        "engine": engine_of(config, e.outcome),
        "inputs": inputs,
        "outputs": outputs(e.outcome),
    });
    seal(&mut receipt);
    receipt
}

/// The `outputs` part of a receipt.
pub fn outputs(o: &Outcome) -> Value {
    let export = o.export.as_ref();
    json!({
        "outcome": o.kind.as_str(),
        "exit_code": o.exit_code,
        "status": o.status,
        "headers": o.headers.iter().map(|(k, v)| [k, v]).collect::<Vec<_>>(),
        "body_sha256": sha256_hex(&o.body),
        "stdout_sha256": sha256_hex(&o.stdout.bytes),
        "stdout_dropped": o.stdout.dropped,
        "stderr_sha256": sha256_hex(&o.stderr.bytes),
        "stderr_dropped": o.stderr.dropped,
        "export_sha256": export.map(|x| x.file_hash.clone()),
        "export_tar_sha256": export.and_then(|x| x.tar_sha256.clone()),
        "fuel_consumed": o.fuel_consumed,
    })
}

/// Sets `receipt_sha256` to the hash of everything else.
pub fn seal(receipt: &mut Value) {
    if let Value::Object(map) = receipt {
        map.remove("receipt_sha256");
        let hash = canonical_hash(&Value::Object(map.clone()));
        map.insert("receipt_sha256".into(), Value::String(hash));
    }
}

/// Whether `receipt_sha256` is the hash of the rest of the receipt.
pub fn is_sealed(receipt: &Value) -> bool {
    let Value::Object(map) = receipt else {
        return false;
    };
    let Some(Value::String(claimed)) = map.get("receipt_sha256") else {
        return false;
    };
    let mut rest: Map<String, Value> = map.clone();
    rest.remove("receipt_sha256");
    &canonical_hash(&Value::Object(rest)) == claimed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealing_detects_any_edit() {
        let mut r = json!({"outputs": {"status": 200}, "inputs": {}});
        seal(&mut r);
        assert!(is_sealed(&r));
        r["outputs"]["status"] = json!(201);
        assert!(!is_sealed(&r));
    }
}
