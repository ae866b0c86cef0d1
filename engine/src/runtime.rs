//! Runtimes: what a program's `runtime.ref` resolves to, and the built-in runtimes.
//!
//! A runtime is a small JSON manifest stored as an object. Its `kind` says how the engine
//! starts the program: `wasi` means the code is itself a WASI command module. Built-in
//! manifests live in the repository's `runtimes/` directory and are stored with a fixed STORE
//! message (zero address, time 0), so their refs are the same on every node.

use serde::{Deserialize, Serialize};

use crate::message::{self, MessageType, RuntimeRef};
use crate::store::{Resolved, Store, StoreError};

/// The owner of the STORE messages of built-in runtimes.
pub const BUILTIN_OWNER: &str = "0x0000000000000000000000000000000000000000";

/// The built-in runtimes: name and manifest text.
pub const BUILTINS: &[(&str, &str)] = &[("wasi", include_str!("../../runtimes/wasi/runtime.json"))];

/// How a runtime starts a program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// The code is a WASI command module, run directly.
    Wasi,
}

/// A runtime manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// How the runtime starts a program.
    pub kind: RuntimeKind,
    /// A short name (`wasi`, `python-3.12`).
    pub name: String,
    /// What the runtime is.
    #[serde(default)]
    pub description: String,
    /// The interfaces (`asgi`, `binary`) it can drive.
    pub interfaces: Vec<String>,
}

/// What can go wrong resolving a runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The ref could not be resolved.
    #[error("content.runtime: {0}")]
    Store(#[from] StoreError),
    /// The object is not a runtime manifest.
    #[error(
        "content.runtime: object {hash} is not an aleph-wasm runtime manifest ({reason}); \
         a runtime is stored with `aleph-wasm runtime add` or named on `program create --runtime`"
    )]
    NotAManifest {
        /// The object's hash.
        hash: String,
        /// Why it was not accepted.
        reason: String,
    },
    /// No built-in runtime has that name.
    #[error("unknown runtime {0:?} (built in: {1})")]
    UnknownName(String, String),
}

/// A resolved runtime.
#[derive(Debug, Clone)]
pub struct ResolvedRuntime {
    /// Its manifest.
    pub manifest: Manifest,
    /// Where it came from.
    pub resolved: Resolved,
}

/// Resolves `runtime.ref` to its manifest.
pub fn resolve(store: &Store, r: &RuntimeRef) -> Result<ResolvedRuntime, RuntimeError> {
    let resolved = store.resolve(&r.reference)?;
    let bytes = store.read_object(&resolved.file_hash)?;
    let manifest = parse_manifest(&bytes).map_err(|reason| RuntimeError::NotAManifest {
        hash: resolved.file_hash.clone(),
        reason,
    })?;
    Ok(ResolvedRuntime { manifest, resolved })
}

/// Parses a manifest.
pub fn parse_manifest(bytes: &[u8]) -> Result<Manifest, String> {
    if bytes.len() > 1 << 20 {
        return Err("larger than 1 MiB".into());
    }
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}

/// Stores the built-in runtime `name` (idempotent) and returns its ref.
pub fn add_builtin(store: &Store, name: &str) -> Result<String, RuntimeError> {
    let Some((_, text)) = BUILTINS.iter().find(|(n, _)| *n == name) else {
        let names: Vec<&str> = BUILTINS.iter().map(|(n, _)| *n).collect();
        return Err(RuntimeError::UnknownName(name.into(), names.join(", ")));
    };
    let hash = store.put_object(text.as_bytes())?;
    let content = serde_json::json!({
        "address": BUILTIN_OWNER,
        "time": 0.0,
        "item_type": "storage",
        "item_hash": hash,
        "size": text.len(),
        "content_type": "application/json",
    });
    let msg = message::build_inline(MessageType::Store, "ETH", BUILTIN_OWNER, 0.0, content);
    store.put_message(&msg)?;
    Ok(msg.item_hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_parse_and_have_a_stable_ref() {
        for (name, text) in BUILTINS {
            let m = parse_manifest(text.as_bytes()).unwrap();
            assert_eq!(&m.name, name);
        }
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let ra = add_builtin(&Store::open(a.path()).unwrap(), "wasi").unwrap();
        let rb = add_builtin(&Store::open(b.path()).unwrap(), "wasi").unwrap();
        assert_eq!(ra, rb);
        assert!(add_builtin(&Store::open(a.path()).unwrap(), "cobol").is_err());
    }
}
