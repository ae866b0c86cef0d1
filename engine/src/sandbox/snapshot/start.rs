//! Starting an interpreter instance: restored from the program's snapshot when there is one,
//! else booted cold.
//!
//! With snapshots on, every instance runs the *prepared* interpreter — restored, or booted cold
//! from the prepared module when the program cannot be snapshotted (a persistent volume, a
//! failed build) — so that what a program computes, and the fuel it takes, do not depend on whether a
//! snapshot was used. With snapshots off, or without `wasm-opt`, instances boot cold from the
//! original interpreter. [`InterpreterModule`] says which module ran; receipts record it.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::build::forget;
use super::mounts;
use super::prepare_cache::Prepared;
use super::{Made, SnapshotBuild, SnapshotEvent, SnapshotSource, Snapshots, snapshot_key};
use crate::sandbox::instance::Instance;
use crate::sandbox::stack;
use crate::sandbox::{GuestSpec, Sandbox};

/// The interpreter module an instance runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InterpreterModule {
    /// The sha256 of the module's bytes: the prepared interpreter's, or the original
    /// interpreter's (which runs with its C stack relocated by [`stack::relocate`]).
    pub sha256: String,
    /// Whether it is the interpreter prepared for snapshots (else the original).
    pub prepared: bool,
}

/// An interpreter instance just started, before its boot output is read.
pub struct Started {
    /// The instance.
    pub instance: Instance,
    /// Whether its module (or snapshot) was already compiled and cached.
    pub from_cache: bool,
    /// The interpreter module it runs.
    pub module: InterpreterModule,
    /// Whether it was restored from a snapshot (then it has entered its serving loop already).
    pub restored: bool,
}

impl Sandbox {
    /// Starts an interpreter instance for `spec`: restored from its snapshot (built now if
    /// there is none) when snapshots are on and the program can be snapshotted, else booted
    /// cold — from the prepared interpreter when snapshots are on, from the original one
    /// otherwise. Every reason not to restore is logged and recorded. `boot_fuel` and
    /// `boot_limit` bound the boot of a snapshot build.
    pub async fn start_interpreter(
        &self,
        source: &SnapshotSource,
        spec: &GuestSpec,
        boot_fuel: u64,
        boot_limit: Duration,
    ) -> Result<Started, String> {
        let snapshots = &self.snapshots;
        if snapshots.config.enabled {
            match self.prepared_now(source, spec, boot_fuel, boot_limit).await {
                Some(Ok(prepared)) => {
                    let module = InterpreterModule {
                        sha256: prepared.sha256.clone(),
                        prepared: true,
                    };
                    if let Some((instance, existed)) = self
                        .try_restore(&prepared, source, spec, boot_fuel, boot_limit)
                        .await
                    {
                        return Ok(Started {
                            instance,
                            from_cache: existed,
                            module,
                            restored: true,
                        });
                    }
                    let wasm = prepared.clone();
                    let loaded = self
                        .module_off_thread(&prepared.sha256, move || {
                            wasm.wasm().map(<[u8]>::to_vec).map_err(anyhow::Error::msg)
                        })
                        .await
                        .map_err(|e| format!("content.runtime: {e:#}"))?;
                    let instance = self.spawn(&loaded.module, spec.clone(), boot_fuel)?;
                    return Ok(Started {
                        instance,
                        from_cache: loaded.from_cache,
                        module,
                        restored: false,
                    });
                }
                Some(Err(e)) => snapshots.fallback(format!("no prepared interpreter: {e}")),
                None => snapshots.fallback(
                    "the interpreter is being prepared for snapshots in the background".into(),
                ),
            }
        }
        let path = source.interpreter_path.clone();
        let key = stack::relocated_key(&source.interpreter_sha256);
        let loaded = self
            .module_off_thread(&key, move || {
                stack::relocate(&std::fs::read(&path)?).map_err(anyhow::Error::msg)
            })
            .await
            .map_err(|e| format!("content.runtime: {e:#}"))?;
        let instance = self.spawn(&loaded.module, spec.clone(), boot_fuel)?;
        Ok(Started {
            instance,
            from_cache: loaded.from_cache,
            module: InterpreterModule {
                sha256: source.interpreter_sha256.clone(),
                prepared: false,
            },
            restored: false,
        })
    }

    /// The instance restored from the snapshot of `spec` (building the snapshot first if
    /// there is none yet), and whether the snapshot already existed; `None` when it cannot be
    /// (the reason is logged and recorded).
    async fn try_restore(
        &self,
        prepared: &Arc<Prepared>,
        source: &SnapshotSource,
        spec: &GuestSpec,
        boot_fuel: u64,
        boot_limit: Duration,
    ) -> Option<(Instance, bool)> {
        let snapshots = &self.snapshots;
        if let Some(why) = mounts::refusal(spec) {
            snapshots.fallback(why);
            return None;
        }
        let key = snapshot_key(
            &prepared.sha256,
            &snapshots.engine_key,
            &source.content,
            spec,
        );
        if self.in_background()
            && snapshots.peek(&snapshots.snapshots, &key).is_none()
            && !snapshots.dir.join(format!("{key}.cwasm")).is_file()
        {
            self.build_in_background(&key, source, spec, boot_fuel, boot_limit);
            snapshots.fallback(format!(
                "the snapshot {key} is being built in the background"
            ));
            return None;
        }
        let (restorable, existed) = match snapshots
            .restorable(self, &key, prepared, spec, boot_fuel, boot_limit)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                snapshots.fallback(format!("no snapshot {key}: {e}"));
                return None;
            }
        };
        match self.restore(&restorable, spec.clone(), boot_fuel).await {
            Ok(instance) => {
                snapshots.record(SnapshotEvent::Restored { key });
                Some((instance, existed))
            }
            Err(e) => {
                // A snapshot that does not restore is not used again.
                forget(&snapshots.dir, &key);
                if let Some(slot) = super::lock(&snapshots.snapshots).get(&key)
                    && let Ok(mut g) = slot.try_lock()
                {
                    *g = Some(Made::now(Err(e.clone())));
                }
                snapshots.fallback(format!("snapshot {key} did not restore: {e}"));
                None
            }
        }
    }

    fn in_background(&self) -> bool {
        self.snapshots.config.build == SnapshotBuild::Background
    }

    /// The prepared interpreter: waited for, or — when builds happen in the background and it
    /// is neither made nor cached yet — `None` after starting its preparation (a reproducible
    /// instance always waits: its fuel count must not depend on timing).
    async fn prepared_now(
        &self,
        source: &SnapshotSource,
        spec: &GuestSpec,
        boot_fuel: u64,
        boot_limit: Duration,
    ) -> Option<Result<Arc<Prepared>, String>> {
        let snapshots = &self.snapshots;
        if self.in_background() && spec.determinism.is_none() {
            let key = match snapshots.prepared_key(source, spec) {
                Ok(k) => k,
                Err(e) => return Some(Err(e)),
            };
            let cached = snapshots.dir.join(format!("prepared-{key}.wasm")).is_file();
            if !cached {
                let done = snapshots.peek(&snapshots.prepared, &key);
                if done.is_none() {
                    self.build_in_background(&key, source, spec, boot_fuel, boot_limit);
                }
                return done;
            }
        }
        Some(
            snapshots
                .prepared(self, source, spec, boot_fuel, boot_limit)
                .await,
        )
    }

    /// Prepares the interpreter and builds the snapshot of `spec` on a task of their own (one
    /// task per `job` at a time); the outcome is kept (a failure is logged by the next
    /// instance that needs it, and tried again after [`super::SnapshotConfig::retry_after`]).
    fn build_in_background(
        &self,
        job: &str,
        source: &SnapshotSource,
        spec: &GuestSpec,
        boot_fuel: u64,
        boot_limit: Duration,
    ) {
        if !super::lock(&self.snapshots.building).insert(job.to_string()) {
            return;
        }
        let job = job.to_string();
        // The per-execution mounts are copied now: the execution that asked may be over (and
        // its directories gone) before the build boots.
        let mounts = match mounts::BuildMounts::new(spec, &self.snapshots.dir.join("tmp")) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!("cannot build the snapshot: {e}");
                super::lock(&self.snapshots.building).remove(&job);
                return;
            }
        };
        let sandbox = self.clone();
        let (source, spec) = (source.clone(), mounts.spec.clone());
        tokio::spawn(async move {
            let _mounts = mounts;
            let snapshots = &sandbox.snapshots;
            let _done = Finished(snapshots.clone(), job);
            let prepared = match snapshots
                .prepared(&sandbox, &source, &spec, boot_fuel, boot_limit)
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!("cannot prepare the interpreter for snapshots: {e}");
                    return;
                }
            };
            if mounts::refusal(&spec).is_some() {
                return;
            }
            let key = snapshot_key(
                &prepared.sha256,
                &snapshots.engine_key,
                &source.content,
                &spec,
            );
            if let Err(e) = snapshots
                .restorable(&sandbox, &key, &prepared, &spec, boot_fuel, boot_limit)
                .await
            {
                tracing::warn!(key, "cannot build the snapshot: {e}");
            }
        });
    }
}

/// Takes a background job off the list of running ones when it ends (even by a panic).
struct Finished(Arc<Snapshots>, String);

impl Drop for Finished {
    fn drop(&mut self) {
        super::lock(&self.0.building).remove(&self.1);
    }
}
