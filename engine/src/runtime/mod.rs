//! Runtimes: what a program's `runtime.ref` resolves to, the runtimes shipped with the engine,
//! and obtaining their interpreters by hash.
//!
//! A runtime is a small JSON manifest stored as an object ([`manifest`](Manifest)). Its `kind`
//! says how the engine starts the program: `wasi` means the code is itself a WASI command
//! module; `interpreter` means a WASI interpreter module — named by its sha256, stored as its
//! own object — runs the code, with the manifest's `argv` and `env` and its bootstrap files
//! mounted read-only. Bootstrap files and licence texts are objects too, named by hash.
//!
//! Files: `manifest.rs` owns the manifest format (source and stored forms, validation),
//! `fetch.rs` obtaining an interpreter by hash from the store, a file, a URL or a wheel,
//! `builtin.rs` the runtimes embedded from the repository's `runtimes/`; this file owns the
//! public operations ([`resolve`], [`add_dir`], [`fetch`], [`list`], [`by_name_or_ref`]).
//!
//! Runtimes stored here get a STORE message from the zero address at time 0, so a runtime's ref
//! depends only on its files and is the same on every node.

mod builtin;
pub(crate) mod fetch;
mod manifest;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

pub use builtin::{BUILTIN_OWNER, BUILTINS, SHIPPED, Shipped};
pub(crate) use fetch::describe_http;
pub use fetch::{
    Attempt, FetchConfig, FetchError, PYTHON_ENV, TEST_CACHE_ENV, ensure_interpreter,
    ensure_interpreter_cached, ensure_interpreter_with,
};
pub use manifest::{
    Bootstrap, FileRole, InterpreterSpec, LICENCES_DIR, MAX_MANIFEST_BYTES, Manifest, RuntimeKind,
    Source, build_stored, parse_manifest,
};

use crate::message::{ObjectRef, RuntimeRef, sha256_hex};
use crate::store::{Resolved, Store, StoreError};

/// The name of the manifest file in a runtime's source directory.
pub const MANIFEST_FILE: &str = "runtime.json";

/// What can go wrong resolving, storing or fetching a runtime.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The ref could not be resolved.
    #[error("content.runtime: {0}")]
    Store(#[from] StoreError),
    /// The object is not a runtime manifest.
    #[error(
        "content.runtime: runtime {hash} is not a Wasm runtime: not an aleph-wasm runtime \
         manifest ({reason}); this node runs Wasm runtimes only (a runtime is stored with \
         `aleph-wasm runtime add` or named on `program create --runtime`)"
    )]
    NotAManifest {
        /// The runtime's ref.
        hash: String,
        /// Why it was not accepted.
        reason: String,
    },
    /// No shipped runtime has that name.
    #[error("unknown runtime {0:?} (built in: {1})")]
    UnknownName(String, String),
    /// A runtime directory (or a shipped runtime) is not a valid runtime source.
    #[error("{path}: {reason}")]
    Source {
        /// The directory, or the manifest in it.
        path: PathBuf,
        /// What is wrong: the field, or the missing file.
        reason: String,
    },
    /// The runtime could not be stored.
    #[error("cannot store the runtime: {0}")]
    Storing(StoreError),
    /// The interpreter of an interpreter runtime is not in the store.
    #[error(
        "runtime {runtime}: interpreter {} is not in the store; run `aleph-wasm runtime fetch {hint}`",
        short(sha256)
    )]
    InterpreterMissing {
        /// The runtime's name.
        runtime: String,
        /// The interpreter's sha256.
        sha256: String,
        /// What to give `runtime fetch` (the shipped name, else the ref).
        hint: String,
    },
    /// An object the runtime needs (interpreter, bootstrap file) is unusable.
    #[error("runtime {runtime}: {what}: {source}")]
    Object {
        /// The runtime's name.
        runtime: String,
        /// Which object (`interpreter e5dc…a763`, `bootstrap file boot.py`).
        what: String,
        /// What the store said.
        source: StoreError,
    },
    /// The interpreter could not be obtained.
    #[error("runtime {runtime}: {source}")]
    Fetch {
        /// The runtime's name.
        runtime: String,
        /// Every source tried and why it failed.
        source: FetchError,
    },
}

/// `e5dc…a763`: a hash shortened for messages.
fn short(hash: &str) -> String {
    if hash.len() > 8 && hash.is_ascii() {
        format!("{}…{}", &hash[..4], &hash[hash.len() - 4..])
    } else {
        hash.to_string()
    }
}

/// A resolved runtime.
#[derive(Debug, Clone)]
pub struct ResolvedRuntime {
    /// Its manifest.
    pub manifest: Manifest,
    /// Where it came from.
    pub resolved: Resolved,
    /// For `interpreter` runtimes: the verified interpreter and bootstrap files.
    pub interpreter: Option<ResolvedInterpreter>,
}

impl ResolvedRuntime {
    /// The verified interpreter and bootstrap files (`interpreter` runtimes only).
    pub fn interpreter(&self) -> Option<&ResolvedInterpreter> {
        self.interpreter.as_ref()
    }
}

/// What an `interpreter` runtime needs to start, every object verified against its hash.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedInterpreter {
    /// The interpreter module's sha256 (also the compiled-module cache key).
    pub sha256: String,
    /// The verified interpreter object.
    pub path: PathBuf,
    /// The interpreter's `argv`, `argv[0]` first.
    pub argv: Vec<String>,
    /// The environment the runtime always sets.
    pub env: BTreeMap<String, String>,
    /// The interfaces the runtime drives (`asgi`).
    pub interfaces: Vec<String>,
    /// Where the bootstrap files are mounted read-only in the guest (`/opt/aleph-wasm`).
    pub bootstrap_mount: String,
    /// Bootstrap file name → verified object path (the interpreter module too, when the
    /// manifest's `bootstrap.interpreter` names it).
    pub bootstrap: BTreeMap<String, PathBuf>,
}

/// A shipped runtime as `runtime list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeInfo {
    /// Its name (`python-3.12`).
    pub name: String,
    /// Its ref (the item hash of its STORE message), the same on every node.
    pub reference: String,
    /// How it starts programs.
    pub kind: RuntimeKind,
    /// Whether everything it needs to run is in the store: the verified interpreter for an
    /// `interpreter` runtime; always true for `wasi`.
    pub interpreter_present: bool,
    /// What it is.
    pub description: String,
}

/// Resolves `runtime.ref` to its manifest and, for an interpreter runtime, to its verified
/// interpreter and bootstrap files.
pub fn resolve(store: &Store, r: &RuntimeRef) -> Result<ResolvedRuntime, RuntimeError> {
    let (manifest, resolved) = resolve_manifest(store, &r.reference)?;
    let interpreter = match manifest.kind {
        RuntimeKind::Wasi => None,
        RuntimeKind::Interpreter => Some(resolve_interpreter(store, &manifest, &resolved)?),
    };
    Ok(ResolvedRuntime {
        manifest,
        resolved,
        interpreter,
    })
}

fn resolve_manifest(store: &Store, r: &ObjectRef) -> Result<(Manifest, Resolved), RuntimeError> {
    let resolved = store.resolve(r)?;
    // A root filesystem (a microVM runtime) is far larger than any manifest: not read whole.
    let size = std::fs::metadata(&resolved.path)
        .map(|m| m.len())
        .unwrap_or(0);
    if size > MAX_MANIFEST_BYTES as u64 {
        return Err(RuntimeError::NotAManifest {
            hash: resolved.reference.clone(),
            reason: format!(
                "{size} bytes, where a manifest is JSON of at most {MAX_MANIFEST_BYTES}"
            ),
        });
    }
    let bytes = store.read_object(&resolved.file_hash)?;
    let manifest = parse_manifest(&bytes).map_err(|reason| RuntimeError::NotAManifest {
        hash: resolved.reference.clone(),
        reason,
    })?;
    Ok((manifest, resolved))
}

fn resolve_interpreter(
    store: &Store,
    manifest: &Manifest,
    resolved: &Resolved,
) -> Result<ResolvedInterpreter, RuntimeError> {
    let not_a_manifest = |reason: &str| RuntimeError::NotAManifest {
        hash: resolved.reference.clone(),
        reason: reason.into(),
    };
    let spec = manifest
        .interpreter
        .as_ref()
        .ok_or_else(|| not_a_manifest("interpreter: missing"))?;
    let bootstrap = manifest
        .bootstrap
        .as_ref()
        .ok_or_else(|| not_a_manifest("bootstrap: missing"))?;
    let object_err = |what: String, source| RuntimeError::Object {
        runtime: manifest.name.clone(),
        what,
        source,
    };
    let path = match store.verify_object(&spec.sha256) {
        Ok(path) => path,
        Err(StoreError::NotFound { .. }) => {
            // Name the shipped runtime when this is it; otherwise the ref fetches it.
            let hint = match builtin::shipped(&manifest.name) {
                Some(s) if shipped_ref(s).is_ok_and(|(r, _)| r == resolved.message_hash) => {
                    manifest.name.clone()
                }
                _ => resolved.reference.clone(),
            };
            return Err(RuntimeError::InterpreterMissing {
                runtime: manifest.name.clone(),
                sha256: spec.sha256.clone(),
                hint,
            });
        }
        Err(e) => {
            return Err(object_err(
                format!("interpreter {}", short(&spec.sha256)),
                e,
            ));
        }
    };
    let mut files = BTreeMap::new();
    for (name, hash) in &bootstrap.files {
        let file = store
            .verify_object(hash)
            .map_err(|e| object_err(format!("bootstrap file {name}"), e))?;
        files.insert(name.clone(), file);
    }
    if let Some(name) = &bootstrap.interpreter {
        files.insert(name.clone(), path.clone());
    }
    Ok(ResolvedInterpreter {
        sha256: spec.sha256.clone(),
        path,
        argv: manifest.argv.clone(),
        env: manifest.env.clone(),
        interfaces: manifest.interfaces.clone(),
        bootstrap_mount: bootstrap.mount.clone(),
        bootstrap: files,
    })
}

/// Stores the runtime in directory `dir` (`runtime add DIR`) and returns its ref.
///
/// `dir/runtime.json` is a source manifest: bootstrap files listed by name are read from `dir`,
/// licence texts from `dir/licences/`. Each file is stored as an object; the stored manifest
/// lists them by sha256. The manifest is validated and every listed file must exist.
pub fn add_dir(store: &Store, dir: &Path) -> Result<String, RuntimeError> {
    let manifest_path = dir.join(MANIFEST_FILE);
    let source_err = |path: &Path, reason: String| RuntimeError::Source {
        path: path.to_path_buf(),
        reason,
    };
    let source = fs::read(&manifest_path).map_err(|e| source_err(&manifest_path, e.to_string()))?;
    let (_, bytes) = build_stored(&source, |role, name| {
        let path = dir.join(role.relative_path(name));
        if !path.is_file() {
            return Err(format!(
                "{}: listed in {MANIFEST_FILE} but not a file there",
                path.display()
            ));
        }
        store
            .put_object_file(&path)
            .map(|(hash, _)| hash)
            .map_err(|e| e.to_string())
    })
    .map_err(|reason| source_err(&manifest_path, reason))?;
    store_manifest(store, &bytes)
}

/// Stores the manifest bytes and their STORE message; returns the ref.
fn store_manifest(store: &Store, bytes: &[u8]) -> Result<String, RuntimeError> {
    let hash = store.put_object(bytes).map_err(RuntimeError::Storing)?;
    let msg = builtin::store_message(&hash, bytes.len());
    store.put_own_message(&msg).map_err(RuntimeError::Storing)?;
    Ok(msg.item_hash)
}

fn find_shipped(name: &str) -> Result<&'static Shipped, RuntimeError> {
    builtin::shipped(name)
        .ok_or_else(|| RuntimeError::UnknownName(name.into(), builtin::shipped_names()))
}

/// Builds a shipped runtime's stored manifest, calling `file` for each embedded file it lists.
fn build_shipped(
    shipped: &Shipped,
    mut file: impl FnMut(&'static [u8]) -> Result<String, String>,
) -> Result<(Manifest, Vec<u8>), RuntimeError> {
    build_stored(shipped.manifest.as_bytes(), |role, name| {
        let relative = role.relative_path(name);
        let bytes = shipped
            .file(&relative)
            .ok_or_else(|| format!("{relative} is not embedded in the binary"))?;
        file(bytes)
    })
    .map_err(|reason| RuntimeError::Source {
        path: Path::new("runtimes").join(shipped.name).join(MANIFEST_FILE),
        reason,
    })
}

/// A shipped runtime's ref and manifest, computed without touching any store.
fn shipped_ref(shipped: &Shipped) -> Result<(String, Manifest), RuntimeError> {
    let (manifest, bytes) = build_shipped(shipped, |bytes| Ok(sha256_hex(bytes)))?;
    let msg = builtin::store_message(&sha256_hex(&bytes), bytes.len());
    Ok((msg.item_hash, manifest))
}

/// Stores a shipped runtime's manifest, bootstrap files and licence texts; returns its ref.
fn store_shipped(store: &Store, shipped: &Shipped) -> Result<String, RuntimeError> {
    let (_, bytes) = build_shipped(shipped, |bytes| {
        store.put_object(bytes).map_err(|e| e.to_string())
    })?;
    store_manifest(store, &bytes)
}

/// Stores the shipped runtime `name` (idempotent) and returns its ref; the interpreter is not
/// fetched (see [`fetch`]).
pub fn add_builtin(store: &Store, name: &str) -> Result<String, RuntimeError> {
    store_shipped(store, find_shipped(name)?)
}

/// Stores the shipped runtime whose ref is `reference`, if there is one (idempotent); returns
/// whether there was. A node never needs another node for a runtime it ships: its STORE
/// message, made by nobody's key, is this node's own.
pub fn add_shipped_ref(store: &Store, reference: &str) -> Result<bool, RuntimeError> {
    for shipped in SHIPPED {
        if shipped_ref(shipped)?.0 == reference {
            store_shipped(store, shipped)?;
            return Ok(true);
        }
    }
    Ok(false)
}

/// A runtime ref from what a user typed: a 64-hex ref passes through unchanged; a shipped
/// runtime's name gives its ref, storing its manifest and files if needed (but not fetching its
/// interpreter).
pub fn by_name_or_ref(store: &Store, s: &str) -> Result<String, RuntimeError> {
    if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(s.to_string());
    }
    add_builtin(store, s)
}

/// `runtime fetch NAME`: stores the runtime (a shipped name, or the ref of a stored runtime)
/// and makes sure its interpreter is in the store, trying `user_file` before the manifest's
/// sources. Returns the runtime's ref. `progress` draws a progress bar on a terminal's stderr.
pub fn fetch(
    store: &Store,
    name: &str,
    user_file: Option<&Path>,
    progress: bool,
) -> Result<String, RuntimeError> {
    fetch_inner(store, name, |spec| {
        ensure_interpreter(store, spec, user_file, progress)
    })
}

/// [`fetch`] for test suites: the interpreter comes through [`ensure_interpreter_cached`]
/// (a copy kept in `$ALEPH_WASM_TEST_CACHE` is tried first and kept up to date).
pub fn fetch_cached(store: &Store, name: &str) -> Result<String, RuntimeError> {
    fetch_inner(store, name, |spec| ensure_interpreter_cached(store, spec))
}

fn fetch_inner(
    store: &Store,
    name: &str,
    ensure: impl FnOnce(&InterpreterSpec) -> Result<PathBuf, FetchError>,
) -> Result<String, RuntimeError> {
    let reference = by_name_or_ref(store, name)?;
    let exact = ObjectRef {
        reference: reference.clone(),
        use_latest: false,
    };
    let (manifest, _) = resolve_manifest(store, &exact)?;
    if let Some(spec) = &manifest.interpreter {
        ensure(spec).map_err(|source| RuntimeError::Fetch {
            runtime: manifest.name.clone(),
            source,
        })?;
    }
    Ok(reference)
}

/// The shipped runtimes with their refs and whether their interpreter is in the store
/// (verified). Reads the store, never writes it.
pub fn list(store: &Store) -> Result<Vec<RuntimeInfo>, RuntimeError> {
    SHIPPED
        .iter()
        .map(|shipped| {
            let (reference, manifest) = shipped_ref(shipped)?;
            let interpreter_present = manifest
                .interpreter
                .as_ref()
                .is_none_or(|spec| store.verify_object(&spec.sha256).is_ok());
            Ok(RuntimeInfo {
                name: shipped.name.to_string(),
                reference,
                kind: manifest.kind,
                interpreter_present,
                description: manifest.description,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
