//! Restoring: one precompiled snapshot, mapped once, instantiated per instance.
//!
//! Per instance: a new store with the same preopens in the same order as the build, a
//! monotonic clock that starts where the snapshot's stopped (so `time.monotonic()` never goes
//! backwards), instantiation from the `InstancePre` (copy-on-write memory image),
//! `asyncify_start_rewind`, `_start`: the checkpoint sees the rewind and stops it, and the real
//! `fd_read` reads the line that enters the serving loop and reseeds `random` ([`enter`]). The
//! bootstrap's boot output (its `READY` frame and logs) was recorded at build time and is
//! replayed, so the caller sees the same frames as from a cold boot.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use wasmtime::{InstancePre, Module, Store};

use super::Hook;
use crate::sandbox::determinism::Determinism;
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
    /// Whether the snapshot was taken under the determinism profile (then `clock_ns` is the
    /// virtual time at the pause).
    #[serde(default)]
    pub(crate) reproducible: bool,
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
        let linker = if meta.reproducible {
            &sandbox.det_linker
        } else {
            &sandbox.full_linker
        };
        let pre = linker
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

/// Starts an interpreter instance's serving loop: sends the one REPL line that reseeds its
/// `random` and enters the loop (`channel::enter_line`), and waits for `SERVING`. A
/// reproducible instance's seed and random sources come from the execution key (re-keyed now,
/// while the guest waits) and it serves sequentially; any other instance's seed comes from
/// host randomness and it serves concurrently. Every interpreter instance enters this way,
/// whether restored or booted cold, so both paths are the same from the guest's point of view.
pub(crate) async fn enter(
    instance: &Instance,
    determinism: Option<&Determinism>,
) -> Result<(), String> {
    let seed = match determinism {
        Some(d) => {
            instance.rekey(d);
            d.interpreter_seed()
        }
        None => {
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed).map_err(|e| format!("no host randomness: {e}"))?;
            hex::encode(seed)
        }
    };
    let session = instance.session();
    session.send(crate::channel::enter_line(&seed, determinism.is_none()));
    let serving = session.wait_instance(|s| {
        if let Some(serving) = &s.serving {
            Some(match serving.get("protocol").and_then(|p| p.as_str()) {
                Some(crate::channel::PROTOCOL) => Ok(()),
                other => Err(format!(
                    "the runtime's bootstrap speaks channel protocol {}, this engine speaks {}: \
                     the runtime was stored by another version of aleph-wasm; create the program \
                     again with this version's runtime",
                    other.unwrap_or("(none named)"),
                    crate::channel::PROTOCOL
                )),
            })
        } else {
            s.closed
                .then(|| Err(format!("the instance ended: {:?}", instance.ended())))
        }
    });
    match tokio::time::timeout(ENTER_LIMIT, serving).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "the serving loop did not start within {} s",
            ENTER_LIMIT.as_secs()
        )),
    }
}

/// How long an instance may take to enter its serving loop.
const ENTER_LIMIT: Duration = Duration::from_secs(10);

impl Sandbox {
    /// Instantiates `r` for `spec`: rewinds, enters the serving loop, replays the boot output.
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
        let determinism = spec.determinism.clone();
        let instance = self.spawn_entry(entry, spec, boot_fuel, extras)?;
        if let Err(e) = enter(&instance, determinism.as_ref()).await {
            instance.kill();
            return Err(e);
        }
        instance.replay_stdout(&r.boot_stdout);
        Ok(instance)
    }
}
