//! Restoring: one precompiled snapshot, mapped once, instantiated per instance.
//!
//! Per instance: a new store with the same preopens in the same order as the build, a
//! monotonic clock that starts where the snapshot's stopped (so `time.monotonic()` never goes
//! backwards), instantiation from the `InstancePre` (copy-on-write memory image),
//! `asyncify_start_rewind`, `_start`: the checkpoint sees the rewind and stops it, and the real
//! `fd_read` reads the first event — a reseed of `random` from host randomness. The bootstrap's
//! boot output (its `ready` frame and logs) was recorded at build time and is replayed, so the
//! caller sees the same frames as from a cold boot.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use wasmtime::{InstancePre, Module, Store};

use super::build::forget;
use super::{Hook, SnapshotEvent, SnapshotSource, snapshot_key};
use crate::sandbox::channel::Line;
use crate::sandbox::instance::{Entry, Instance};
use crate::sandbox::{GuestSpec, GuestState, Sandbox, Stage, StoreExtras};

/// What a snapshot needs besides its module.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Meta {
    /// Where the Asyncify data structure is in the snapshot's memory.
    pub(crate) data: i32,
    /// The guest's monotonic clock at the pause, in nanoseconds (at least).
    pub(crate) clock_ns: u64,
    /// What the boot wrote on stdout (base64).
    pub(crate) stdout: String,
}

/// A snapshot ready to be instantiated.
pub struct Restorable {
    key: String,
    pre: InstancePre<GuestState>,
    meta: Meta,
    boot_stdout: Vec<u8>,
}

impl Restorable {
    /// Maps the precompiled snapshot at `cwasm` and links it once.
    pub(crate) fn load(
        sandbox: &Sandbox,
        key: &str,
        cwasm: &Path,
        meta: Meta,
    ) -> Result<Restorable, String> {
        // SAFETY: the file was written by `Module::serialize` of an engine with the same
        // compatibility hash (it is in the cache path), through an atomic rename.
        let module = unsafe { Module::deserialize_file(sandbox.engine(), cwasm) }
            .map_err(|e| format!("{}: {e:#}", cwasm.display()))?;
        let pre = sandbox
            .full_linker
            .instantiate_pre(&module)
            .map_err(|e| format!("cannot link the snapshot: {e:#}"))?;
        let boot_stdout = base64::engine::general_purpose::STANDARD
            .decode(&meta.stdout)
            .map_err(|e| format!("snapshot metadata: {e}"))?;
        Ok(Restorable {
            key: key.to_string(),
            pre,
            meta,
            boot_stdout,
        })
    }

    /// The snapshot key.
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// Instantiates the snapshot in `store` and rewinds into its paused `_start`.
pub(crate) async fn rewind(
    pre: &InstancePre<GuestState>,
    data: i32,
    store: &mut Store<GuestState>,
) -> Result<(), (Stage, wasmtime::Error)> {
    let instance = pre
        .instantiate_async(&mut *store)
        .await
        .map_err(|e| (Stage::Start, e))?;
    let start_rewind = instance
        .get_typed_func::<i32, ()>(&mut *store, "asyncify_start_rewind")
        .map_err(|e| (Stage::Start, e))?;
    let start = instance
        .get_typed_func::<(), ()>(&mut *store, "_start")
        .map_err(|e| (Stage::Start, e))?;
    start_rewind
        .call_async(&mut *store, data)
        .await
        .map_err(|e| (Stage::Start, e))?;
    start
        .call_async(&mut *store, ())
        .await
        .map_err(|e| (Stage::Run, e))
}

/// The reseed event line: `random` gets 32 bytes of host randomness.
fn reseed_line() -> Result<Vec<u8>, String> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| format!("no host randomness: {e}"))?;
    let event = serde_json::json!({"type": "reseed", "seed": hex::encode(seed)});
    Ok(crate::interface::asgi::event_line(&event))
}

impl Sandbox {
    /// Starts a long-lived interpreter instance from the snapshot of `spec` (building the
    /// snapshot first if there is none yet), or returns `None` when it cannot: then the reason
    /// was logged and recorded, and the caller starts the instance cold. Also returns whether
    /// the snapshot already existed. `boot_fuel` and `boot_limit` bound the build's boot.
    pub async fn spawn_restored(
        &self,
        source: &SnapshotSource,
        spec: &GuestSpec,
        boot_fuel: u64,
        boot_limit: Duration,
    ) -> Option<(Instance, bool)> {
        let snapshots = &self.snapshots;
        if !snapshots.config.enabled {
            return None;
        }
        if let Some(p) = spec.preopens.iter().find(|p| p.writable) {
            snapshots.fallback(format!(
                "the writable mount {} cannot be snapshotted",
                p.guest
            ));
            return None;
        }
        let prepared = match snapshots
            .prepared(self, source, spec, boot_fuel, boot_limit)
            .await
        {
            Ok(p) => p,
            Err(e) => {
                snapshots.fallback(format!("no prepared interpreter: {e}"));
                return None;
            }
        };
        let key = snapshot_key(
            &prepared.sha256,
            &snapshots.engine_key,
            &source.content,
            spec,
        );
        let (restorable, existed) = match snapshots
            .restorable(self, &key, &prepared, spec, boot_fuel, boot_limit)
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
                    *g = Some(Err(e.clone()));
                }
                snapshots.fallback(format!("snapshot {key} did not restore: {e}"));
                None
            }
        }
    }

    /// Instantiates `r` for `spec`: rewinds, reseeds `random`, replays the boot output.
    pub(crate) async fn restore(
        &self,
        r: &Arc<Restorable>,
        spec: GuestSpec,
        boot_fuel: u64,
    ) -> Result<Instance, String> {
        let extras = StoreExtras {
            hook: Hook::Rewind,
            clock_offset_ns: Some(r.meta.clock_ns),
        };
        let entry = Entry::Rewind {
            pre: r.pre.clone(),
            data: r.meta.data,
        };
        let instance = self.spawn_entry(entry, spec, boot_fuel, extras)?;
        instance.send(&reseed_line()?);
        let answer = async {
            while let Some(line) = instance.next_line().await {
                match line {
                    Line::Frame(frame) => {
                        let v: serde_json::Value =
                            serde_json::from_slice(&frame).unwrap_or_default();
                        match v.get("t").and_then(|t| t.as_str()) {
                            Some("done") => return Ok(()),
                            Some("error") => {
                                return Err(format!("the reseed failed: {}", v["message"]));
                            }
                            _ => {}
                        }
                    }
                    Line::Log(_) => {}
                }
            }
            Err(format!("the instance ended: {:?}", instance.ended()))
        };
        match tokio::time::timeout(Duration::from_secs(10), answer).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                instance.kill();
                return Err(e);
            }
            Err(_) => {
                instance.kill();
                return Err("no answer to the reseed".into());
            }
        }
        instance.replay_stdout(&r.boot_stdout);
        Ok(instance)
    }
}
