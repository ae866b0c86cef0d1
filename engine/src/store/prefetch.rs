//! What a program needs, fetched from another node on a miss.
//!
//! A node started with another node's API ([`Remote`]) calls [`Prefetcher::program`] before it
//! resolves a program: the PROGRAM message (from the store, else fetched), then every ref the
//! program names — runtime, code, data, immutable volumes, persistent volumes' parents — each
//! as its STORE message, for `use_latest` the owner's newest amends on the remote, and the
//! object the ref resolves to; for an interpreter runtime also the interpreter (from the
//! remote, else from the sources its manifest lists) and the bootstrap files. What the store
//! already holds is not fetched again; everything fetched is verified by [`Remote`] first.
//! A runtime this node ships (by its fixed ref) is stored locally instead.
//!
//! A program whose needs were all met is remembered, so later requests cost one set lookup;
//! concurrent first requests for one program wait for a single fetch. Newer amends published
//! after that are not looked for again while the process runs.
//!
//! The executor then resolves from the store exactly as it would without a remote.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use super::remote::{Remote, RemoteError};
use super::{Store, StoreError};
use crate::message::{CodeSource, ItemType, Message, ObjectRef, ProgramContent, Volume};
use crate::runtime::{self, InterpreterSpec};

/// Why a program's needs could not be met: which field, and why.
#[derive(Debug)]
pub struct PrefetchError {
    /// What was being obtained: empty for the program message itself, else `content.code`,
    /// `content.runtime`, `content.data`, `content.volumes[i]`, or for a runtime's files
    /// `content.runtime interpreter` / `content.runtime bootstrap file NAME`.
    pub field: String,
    /// Why it could not be obtained.
    pub source: RemoteError,
}

impl std::fmt::Display for PrefetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.source)
        } else {
            write!(f, "{}: {}", self.field, self.source)
        }
    }
}

impl std::error::Error for PrefetchError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl PrefetchError {
    fn at(field: impl Into<String>) -> impl FnOnce(RemoteError) -> PrefetchError {
        let field = field.into();
        move |source| PrefetchError { field, source }
    }

    /// Whether the program message itself is neither here nor on the remote (or its item hash
    /// is not one): the program is unknown, rather than unobtainable.
    pub fn is_unknown_program(&self) -> bool {
        self.field == PROGRAM
            && matches!(
                self.source,
                RemoteError::NotFound { .. }
                    | RemoteError::Store(StoreError::NotFound { .. } | StoreError::BadHash(_))
            )
    }
}

/// Fetches what programs need from a [`Remote`], once per program.
#[derive(Debug)]
pub struct Prefetcher {
    remote: Remote,
    ready: Mutex<HashSet<String>>,
    flights: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// The field of the program message itself.
const PROGRAM: &str = "";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Prefetcher {
    /// A prefetcher over `remote`.
    pub fn new(remote: Remote) -> Self {
        Prefetcher {
            remote,
            ready: Mutex::new(HashSet::new()),
            flights: Mutex::new(HashMap::new()),
        }
    }

    /// The remote it fetches from.
    pub fn remote(&self) -> &Remote {
        &self.remote
    }

    /// The message `item_hash` from `store` — fetched first when missing — and, when it is a
    /// PROGRAM, everything the program needs, fetched into `store` where missing. Another
    /// kind of message is returned as it is (the caller refuses it).
    pub async fn program(
        &self,
        store: &Store,
        item_hash: &str,
    ) -> Result<Arc<Message>, PrefetchError> {
        if lock(&self.ready).contains(item_hash) || !crate::message::is_sha256(item_hash) {
            return store
                .message(item_hash)
                .map_err(|e| PrefetchError::at(PROGRAM)(e.into()));
        }
        let flight = lock(&self.flights)
            .entry(item_hash.to_string())
            .or_default()
            .clone();
        let _turn = flight.lock().await;
        if lock(&self.ready).contains(item_hash) {
            return store
                .message(item_hash)
                .map_err(|e| PrefetchError::at(PROGRAM)(e.into()));
        }
        let result = self.program_once(store, item_hash).await;
        if result.is_ok() {
            lock(&self.ready).insert(item_hash.to_string());
        }
        lock(&self.flights).remove(item_hash);
        result
    }

    async fn program_once(
        &self,
        store: &Store,
        item_hash: &str,
    ) -> Result<Arc<Message>, PrefetchError> {
        let msg = self
            .message(store, item_hash)
            .await
            .map_err(PrefetchError::at(PROGRAM))?;
        if let Some(program) = msg.program() {
            self.needs(store, program).await?;
        }
        Ok(Arc::new(msg))
    }

    /// A message from the store, else fetched.
    async fn message(&self, store: &Store, item_hash: &str) -> Result<Message, RemoteError> {
        match store.get_message(item_hash) {
            Ok(msg) => Ok(msg),
            Err(StoreError::NotFound { .. }) => self.remote.fetch_message(store, item_hash).await,
            Err(e) => Err(e.into()),
        }
    }

    /// Every ref the program names, and the runtime's own files.
    async fn needs(&self, store: &Store, program: &ProgramContent) -> Result<(), PrefetchError> {
        let field = "content.runtime";
        // A runtime this node ships is its own, never fetched (nor refused as unsigned).
        if !store.has_message(&program.runtime.reference.reference)
            && let Err(e) = runtime::add_shipped_ref(store, &program.runtime.reference.reference)
        {
            tracing::warn!("{field}: cannot store a shipped runtime: {e}");
        }
        let manifest_hash = self
            .object_ref(store, &program.runtime.reference)
            .await
            .map_err(PrefetchError::at(field))?;
        if let Some(manifest_hash) = manifest_hash {
            self.runtime_files(store, &manifest_hash).await?;
        }
        if let CodeSource::Ref(r) = &program.code.source {
            self.object_ref(store, r)
                .await
                .map_err(PrefetchError::at("content.code"))?;
        }
        if let Some(data) = &program.data {
            self.object_ref(store, &data.reference)
                .await
                .map_err(PrefetchError::at("content.data"))?;
        }
        for (i, volume) in program.volumes.iter().enumerate() {
            let r = match volume {
                Volume::Immutable { reference, .. } => reference,
                Volume::Persistent {
                    parent: Some(parent),
                    ..
                } => parent,
                _ => continue,
            };
            self.object_ref(store, r)
                .await
                .map_err(PrefetchError::at(format!("content.volumes[{i}]")))?;
        }
        Ok(())
    }

    /// Makes `r` resolvable from the store: its STORE message, for `use_latest` the owner's
    /// newest amends, and the object of the message it resolves to. Returns that object's
    /// sha256 (`None` for IPFS content, which the store cannot hold; resolution reports it).
    async fn object_ref(
        &self,
        store: &Store,
        r: &ObjectRef,
    ) -> Result<Option<String>, RemoteError> {
        let original = self.message(store, &r.reference).await?;
        if r.use_latest
            && original.store().is_some()
            && let Err(e) = self.remote.fetch_amends(store, &original).await
        {
            if e.is_mismatch() {
                return Err(e);
            }
            tracing::warn!(
                "cannot ask {} for the amends of {}: {e}; using what the store has",
                self.remote.api(),
                r.reference
            );
        }
        let msg = store.resolve_message(r)?;
        let Some(content) = msg.store() else {
            return Ok(None);
        };
        if content.item_type != ItemType::Storage {
            return Ok(None);
        }
        if !store.has_object(&content.item_hash) {
            self.remote
                .fetch_object(store, &content.item_hash, content.size)
                .await?;
        }
        Ok(Some(content.item_hash.clone()))
    }

    /// An interpreter runtime's interpreter and bootstrap files. A manifest that does not parse
    /// is left for resolution to report.
    async fn runtime_files(&self, store: &Store, manifest_hash: &str) -> Result<(), PrefetchError> {
        let field = "content.runtime";
        let bytes = store
            .read_object(manifest_hash)
            .map_err(|e| PrefetchError::at(field)(e.into()))?;
        let Ok(manifest) = runtime::parse_manifest(&bytes) else {
            return Ok(());
        };
        if let Some(spec) = &manifest.interpreter {
            self.interpreter(store, spec)
                .await
                .map_err(PrefetchError::at(format!("{field} interpreter")))?;
        }
        if let Some(bootstrap) = &manifest.bootstrap {
            for (name, hash) in &bootstrap.files {
                if !store.has_object(hash) {
                    self.remote
                        .fetch_object(store, hash, None)
                        .await
                        .map_err(PrefetchError::at(format!("{field} bootstrap file {name}")))?;
                }
            }
        }
        Ok(())
    }

    /// The interpreter from the remote, else from the sources its manifest lists.
    async fn interpreter(&self, store: &Store, spec: &InterpreterSpec) -> Result<(), RemoteError> {
        if store.has_object(&spec.sha256) {
            return Ok(());
        }
        let missing = match self
            .remote
            .fetch_object(store, &spec.sha256, Some(spec.size))
            .await
        {
            Err(e @ RemoteError::NotFound { .. }) => e,
            other => return other,
        };
        let (store, spec) = (store.clone(), spec.clone());
        let fetched = tokio::task::spawn_blocking(move || {
            runtime::ensure_interpreter(&store, &spec, None, false)
        })
        .await;
        match fetched {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                tracing::warn!("{missing}, and its own sources failed: {e}");
                Err(missing)
            }
            Err(e) => {
                tracing::warn!("{missing}, and fetching it from its sources failed: {e}");
                Err(missing)
            }
        }
    }
}
