//! Verification: re-execute a receipt's inputs on this node and compare the new receipt with
//! it, field by field.
//!
//! The verdict is *match* (every field agrees), *mismatch* (naming the fields that differ) or
//! *inconclusive* when the rerun could not happen or complete for a host reason: another engine
//! identity, the message, an object or the request body missing from the store, the rerun
//! reaching the wall-clock safety net, or a stack overflow on one side only (where a stack
//! overflows depends on the engine build).

use serde_json::Value;

use super::{Execution, build, is_sealed};
use crate::executor::Executor;
use crate::interface::{HttpRequest, Trigger};
use crate::outcome::OutcomeKind;

/// One compared field.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldCheck {
    /// The field's path in the receipt, e.g. `outputs.body_sha256`.
    pub field: String,
    /// What the receipt says.
    pub expected: Value,
    /// What the rerun gave.
    pub actual: Value,
}

impl FieldCheck {
    /// Whether the rerun agrees with the receipt.
    pub fn matches(&self) -> bool {
        self.expected == self.actual
    }
}

/// The result of a verification.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Every field agrees.
    Match(Vec<FieldCheck>),
    /// Some fields differ (all checks are listed; see [`FieldCheck::matches`]).
    Mismatch(Vec<FieldCheck>),
    /// The rerun could not be done or completed on this host, for the reason given.
    Inconclusive(String),
}

impl Verdict {
    /// The fields that differ.
    pub fn mismatched(&self) -> Vec<&FieldCheck> {
        match self {
            Verdict::Mismatch(checks) => checks.iter().filter(|c| !c.matches()).collect(),
            _ => Vec::new(),
        }
    }
}

/// A receipt that cannot be read as one.
#[derive(Debug, thiserror::Error)]
#[error("not a receipt: {0}")]
pub struct MalformedReceipt(String);

fn field<'a>(v: &'a Value, path: &str) -> Result<&'a Value, MalformedReceipt> {
    path.split('.')
        .try_fold(v, |v, k| v.get(k))
        .ok_or_else(|| MalformedReceipt(format!("{path} is missing")))
}

fn text<'a>(v: &'a Value, path: &str) -> Result<&'a str, MalformedReceipt> {
    field(v, path)?
        .as_str()
        .ok_or_else(|| MalformedReceipt(format!("{path} is not a string")))
}

/// Re-executes `receipt` with `executor` (whose store holds the inputs) and compares.
pub async fn verify(executor: &Executor, receipt: &Value) -> Result<Verdict, MalformedReceipt> {
    let version = field(receipt, "receipt_version")?;
    if version != &Value::from(super::RECEIPT_VERSION) {
        return Err(MalformedReceipt(format!(
            "receipt_version {version} is not {}",
            super::RECEIPT_VERSION
        )));
    }
    let message = text(receipt, "inputs.message")?;
    let trigger_json = field(receipt, "inputs.trigger")?;
    let objects = field(receipt, "inputs.objects")?
        .as_array()
        .ok_or_else(|| MalformedReceipt("inputs.objects is not a list".into()))?;
    field(receipt, "outputs")?;

    let config = executor.sandbox().config();
    let ours = super::engine_identity(config);
    let mut theirs = field(receipt, "engine")?.clone();
    let their_interpreter = theirs
        .as_object_mut()
        .and_then(|m| m.remove("interpreter"))
        .unwrap_or(Value::Null);
    if theirs != ours {
        return Ok(Verdict::Inconclusive(format!(
            "the receipt comes from engine {theirs}; this node runs {ours}"
        )));
    }
    let store = executor.store();
    let msg = match store.get_message(message) {
        Ok(m) => m,
        Err(e) => {
            return Ok(Verdict::Inconclusive(format!(
                "message {message} is not available: {e}"
            )));
        }
    };
    for o in objects {
        let hash = o.get("sha256").and_then(Value::as_str).unwrap_or("");
        let name = o.get("field").and_then(Value::as_str).unwrap_or("?");
        if !store.has_object(hash) {
            return Ok(Verdict::Inconclusive(format!(
                "object {hash} ({name}) is not in the store"
            )));
        }
    }
    let reads = match receipt.pointer("/inputs/reads") {
        None => &[][..],
        Some(Value::Array(reads)) => reads.as_slice(),
        Some(_) => return Err(MalformedReceipt("inputs.reads is not a list".into())),
    };
    for r in reads {
        let (kind, hash) = (text(r, "kind")?, text(r, "hash")?);
        if r.get("found") != Some(&Value::Bool(true)) {
            continue;
        }
        let here = match kind {
            "message" => store.get_message(hash).is_ok(),
            "object" => store.has_object(hash),
            other => {
                return Err(MalformedReceipt(format!(
                    "inputs.reads names a {other:?}, neither a message nor an object"
                )));
            }
        };
        if !here {
            return Ok(Verdict::Inconclusive(format!(
                "{kind} {hash}, which the program read, is not in the store"
            )));
        }
    }
    let trigger = match rebuild_trigger(executor, trigger_json)? {
        Ok(t) => t,
        Err(reason) => return Ok(Verdict::Inconclusive(reason)),
    };
    let reproducible = msg
        .program()
        .map(|p| p.environment.reproducible)
        .unwrap_or(false);
    let outcome = executor.execute(&msg, &trigger).await;
    if outcome.kind == OutcomeKind::Inconclusive {
        return Ok(Verdict::Inconclusive(
            outcome
                .error
                .unwrap_or_else(|| "the rerun was inconclusive".into()),
        ));
    }
    let rerun = build(
        config,
        &Execution {
            message,
            reproducible,
            trigger: &trigger,
            outcome: &outcome,
        },
    );
    let our_interpreter = rerun
        .pointer("/engine/interpreter")
        .cloned()
        .unwrap_or(Value::Null);
    if their_interpreter != our_interpreter {
        return Ok(Verdict::Inconclusive(format!(
            "the receipt was made on interpreter module {their_interpreter} and the rerun ran \
             {our_interpreter} (\"prepared\": the interpreter prepared for snapshots, which \
             `--snapshots wait` and the same wasm-opt give; fuel counts differ between the two)"
        )));
    }
    let checks = compare(receipt, &rerun);
    let kinds = (
        receipt.pointer("/outputs/outcome"),
        rerun.pointer("/outputs/outcome"),
    );
    let overflow = Value::from("stack_overflow");
    if kinds.0 != kinds.1 && (kinds.0 == Some(&overflow) || kinds.1 == Some(&overflow)) {
        return Ok(Verdict::Inconclusive(format!(
            "the receipt's outcome is {} and the rerun's {}: where a stack overflows depends on              the host's engine build, not on the program",
            kinds.0.unwrap_or(&Value::Null),
            kinds.1.unwrap_or(&Value::Null)
        )));
    }
    Ok(if checks.iter().all(FieldCheck::matches) {
        Verdict::Match(checks)
    } else {
        Verdict::Mismatch(checks)
    })
}

/// The field-by-field comparison of a receipt with its rerun's receipt: every top-level
/// scalar, every input, every output, and whether the receipt's own hash is intact.
pub fn compare(receipt: &Value, rerun: &Value) -> Vec<FieldCheck> {
    let mut checks = Vec::new();
    let mut push = |field: String, expected: Option<&Value>, actual: Option<&Value>| {
        checks.push(FieldCheck {
            field,
            expected: expected.cloned().unwrap_or(Value::Null),
            actual: actual.cloned().unwrap_or(Value::Null),
        });
    };
    for key in ["receipt_version", "reproducible"] {
        push(key.into(), receipt.get(key), rerun.get(key));
    }
    for part in ["inputs", "outputs"] {
        let mut keys: Vec<String> = Vec::new();
        for side in [receipt, rerun] {
            if let Some(Value::Object(map)) = side.get(part) {
                for k in map.keys() {
                    if !keys.contains(k) {
                        keys.push(k.clone());
                    }
                }
            }
        }
        for k in keys {
            push(
                format!("{part}.{k}"),
                receipt.get(part).and_then(|p| p.get(&k)),
                rerun.get(part).and_then(|p| p.get(&k)),
            );
        }
    }
    checks.push(FieldCheck {
        field: "receipt_sha256".into(),
        expected: receipt
            .get("receipt_sha256")
            .cloned()
            .unwrap_or(Value::Null),
        actual: if is_sealed(receipt) {
            receipt
                .get("receipt_sha256")
                .cloned()
                .unwrap_or(Value::Null)
        } else {
            Value::String("(the receipt's content does not hash to it)".into())
        },
    });
    checks
}

/// The trigger a receipt describes; the inner error is a reason for an inconclusive verdict.
fn rebuild_trigger(
    executor: &Executor,
    t: &Value,
) -> Result<Result<Trigger, String>, MalformedReceipt> {
    match text(t, "kind")? {
        "job" => Ok(Ok(Trigger::Job)),
        "cron" => Ok(Ok(Trigger::Cron {
            time: field(t, "time")?
                .as_f64()
                .ok_or_else(|| MalformedReceipt("inputs.trigger.time is not a number".into()))?,
        })),
        "message" => Ok(Ok(Trigger::Message(Box::new(field(t, "message")?.clone())))),
        "http" => {
            let headers = field(t, "headers")?
                .as_array()
                .ok_or_else(|| MalformedReceipt("inputs.trigger.headers is not a list".into()))?
                .iter()
                .map(|h| {
                    let pair = h.as_array().filter(|p| p.len() == 2);
                    let s = |i: usize| pair.and_then(|p| p[i].as_str()).map(str::to_string);
                    s(0).zip(s(1)).ok_or_else(|| {
                        MalformedReceipt("inputs.trigger.headers: expected [name, value]".into())
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let body_hash = text(t, "body_sha256")?;
            let body = if field(t, "body_size")?.as_u64() == Some(0) {
                Vec::new()
            } else {
                match executor.store().read_object(body_hash) {
                    Ok(b) => b,
                    Err(e) => {
                        return Ok(Err(format!(
                            "the request body {body_hash} is not available: {e}"
                        )));
                    }
                }
            };
            Ok(Ok(Trigger::Http(HttpRequest {
                method: text(t, "method")?.to_string(),
                path: text(t, "path")?.to_string(),
                query: text(t, "query")?.to_string(),
                headers,
                body,
                remote_addr: t
                    .get("remote_addr")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                server_name: text(t, "server_name")?.to_string(),
                server_port: field(t, "server_port")?
                    .as_u64()
                    .and_then(|p| u16::try_from(p).ok())
                    .ok_or_else(|| MalformedReceipt("inputs.trigger.server_port".into()))?,
            })))
        }
        other => Err(MalformedReceipt(format!(
            "inputs.trigger.kind {other:?} is not one this engine can replay"
        ))),
    }
}
