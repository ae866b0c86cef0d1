//! Cold start by snapshot: an interpreter instance paused right after booting the program,
//! captured once, and restored per instance in about a millisecond.
//!
//! An interpreter runtime's instance (`python -i boot.py`) boots the program and then blocks in
//! a read of stdin with no frame of the bootstrap on the stack. This module captures exactly
//! that point:
//! - [`prepare`] (once per interpreter, cached by its key): the WASI build is rewritten so that
//!   its reads of stdin call the host-owned import `aleph_wasm.checkpoint` first; binaryen
//!   (`wasm-opt -O3` with more inlining) optimises it whole, which makes CPython about 30 %
//!   faster; a first run
//!   finds the functions on the stack at that call; binaryen's Asyncify is applied to exactly
//!   those functions;
//! - [`build`] (once per program, lazily on its first boot, cached by [`snapshot_key`]): the
//!   prepared interpreter boots the program with its preopens and variables; at the checkpoint
//!   the host unwinds the stack (refusing an unexpected stack), and Wizer's snapshot turns the
//!   paused instance into a new module, which is precompiled;
//! - [`restore`] (per instance): the precompiled snapshot is mapped once (`InstancePre`); each
//!   instance gets a new store with the same preopens in the same order and a monotonic clock
//!   that continues from the snapshot's, starts rewinding, and calls `_start`: the checkpoint
//!   sees the rewind, stops it, and the real `fd_read` reads the line that enters the serving
//!   loop, reseeding `random` from host randomness ([`restore::enter`]);
//! - `cache`: the cache directory is bounded; after each build the least recently used
//!   snapshots go ([`SnapshotConfig::cache_limit_bytes`]).
//!
//! `wasm-opt` ([`wasm_opt`]): the one configured, else a pinned binaryen release obtained by
//! its sha256 into the module cache (on a thread of its own, once per machine), else the one on
//! `PATH`; [`Snapshots::wasm_opt_status`] says which, or why there is none.
//!
//! Anything that stops a snapshot (no `wasm-opt`, a persistent volume, a boot that writes to
//! a writable mount, a failed build, an unexpected stack) is logged with its reason and the
//! instance starts cold, as before. A failure is kept for [`SnapshotConfig::retry_after`]; the
//! next instance that needs the thing after that tries again.
//! Frozen at snapshot time, so part of the key: argv, the environment (variables), the code and
//! data, the preopen list. Also frozen: the string hash seed (`PYTHONHASHSEED`) of the
//! interpreter (in reproducible mode it is 0 anyway).
//!
//! Reproducible programs are snapshotted under the determinism profile: the build boots with
//! the profile's boot key and virtual clocks (both in the key), the snapshot records the
//! virtual time at the pause, and a restored instance continues from it; entering the serving
//! loop then re-keys the random sources for the trigger, exactly as it does after a fresh boot. With
//! snapshots on, every interpreter instance runs the prepared interpreter, restored or cold, so
//! fuel counts — and receipts — do not depend on whether a snapshot was used.

pub mod build;
mod cache;
mod mounts;
pub mod prepare;
pub mod restore;
pub mod start;
pub mod wasm_opt;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::{Caller, Linker, WasmBacktrace};

use super::{GuestSpec, GuestState, WASMTIME_VERSION};

pub use restore::Restorable;
pub use start::{InterpreterModule, Started};
pub use wasm_opt::{WasmOpt, WasmOptSource};

/// The version of the snapshot protocol (rewrite, pause, restore); part of every cache key.
pub const PROTOCOL_VERSION: u32 = 5;
/// The module of the checkpoint import.
pub const CHECKPOINT_MODULE: &str = "aleph_wasm";
/// The name of the checkpoint import.
pub const CHECKPOINT_NAME: &str = "checkpoint";
/// The export name the prepared interpreter gives its stack-pointer global.
pub const STACK_POINTER_EXPORT: &str = "aleph_wasm_stack_pointer";

/// How snapshots are used.
#[derive(Debug, Clone)]
pub struct SnapshotConfig {
    /// Whether interpreter instances run the prepared interpreter and are restored from
    /// snapshots. By default false.
    pub enabled: bool,
    /// When a missing prepared interpreter or snapshot is made.
    pub build: SnapshotBuild,
    /// The `wasm-opt` binary (binaryen). By default the pinned release
    /// ([`wasm_opt::PINNED_VERSION`]), obtained by its sha256 into the module cache, else
    /// `wasm-opt` on `PATH` ([`wasm_opt::resolve`]).
    pub wasm_opt: Option<PathBuf>,
    /// How long a failure is kept — to find or obtain `wasm-opt`, prepare the interpreter,
    /// build or restore a snapshot — before the next instance that needs the thing tries again
    /// (a node need not restart after the registry is back, binaryen is installed or a full
    /// pool drains). Until then instances start cold at once. By default
    /// [`SnapshotConfig::RETRY_AFTER`].
    pub retry_after: Duration,
    /// How many bytes of program snapshots the cache directory may hold: after each build,
    /// the least recently used ones are removed down to this (never those this process holds,
    /// never prepared interpreters). By default [`SnapshotConfig::CACHE_LIMIT`].
    pub cache_limit_bytes: u64,
}

impl SnapshotConfig {
    /// The default [`SnapshotConfig::retry_after`]: ten minutes.
    pub const RETRY_AFTER: Duration = Duration::from_secs(600);
    /// The default [`SnapshotConfig::cache_limit_bytes`]: 4 GiB, about a hundred Python
    /// program versions.
    pub const CACHE_LIMIT: u64 = 4 << 30;
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        SnapshotConfig {
            enabled: false,
            build: SnapshotBuild::default(),
            wasm_opt: None,
            retry_after: Self::RETRY_AFTER,
            cache_limit_bytes: Self::CACHE_LIMIT,
        }
    }
}

/// When a missing prepared interpreter (once per machine, tens of seconds) or program snapshot
/// (once per program version, seconds to tens of seconds) is made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SnapshotBuild {
    /// On first use, and the instance waits for it (one-shot runs, verification reruns: the
    /// next run of the program is fast).
    #[default]
    Wait,
    /// In the background: the instance that needs it starts cold meanwhile, and later ones are
    /// restored (a node service: no request waits for a build). A reproducible instance still
    /// waits for the prepared interpreter (not for the snapshot), so that its fuel count does
    /// not depend on timing.
    Background,
}

/// Something that happened to snapshots in this process (for logs, tests and benchmarks).
#[derive(Debug, Clone, PartialEq)]
pub enum SnapshotEvent {
    /// An interpreter was prepared (rewritten, stack discovered, asyncified).
    Prepared {
        /// The prepared interpreter's key.
        key: String,
        /// How long it took.
        ms: u64,
    },
    /// A snapshot was built and precompiled.
    Built {
        /// The snapshot key.
        key: String,
        /// How long it took.
        ms: u64,
        /// How many modules the build compiled: 1 (the snapshot) when Wizer's instrumented
        /// interpreter came from the compiled-module cache, 2 when it was compiled too.
        modules_compiled: u32,
    },
    /// A snapshot was loaded from the on-disk cache.
    Loaded {
        /// The snapshot key.
        key: String,
    },
    /// An instance was restored from a snapshot.
    Restored {
        /// The snapshot key.
        key: String,
    },
    /// An instance started cold instead.
    Fallback {
        /// Why.
        reason: String,
    },
}

/// What the checkpoint import does in one store.
#[derive(Debug, Default)]
pub(crate) enum Hook {
    /// Nothing (every read of stdin after a restore, and cold instances).
    #[default]
    Off,
    /// Record the stack at the first call, then stop the guest.
    Discover,
    /// The stack found by [`Hook::Discover`].
    Discovered(Vec<u32>),
    /// Unwind at the first call if the stack is `expected`.
    Unwind {
        /// The pause stack, innermost first.
        expected: Vec<u32>,
        /// When the store's WASI context was made (for the monotonic clock).
        since: Instant,
    },
    /// The stack is being unwound from the checkpoint.
    Unwinding {
        /// Where the Asyncify data structure is.
        data: i32,
        /// The guest's monotonic clock at the pause, in nanoseconds (at least).
        clock_ns: u64,
    },
    /// The build refused to unwind.
    Refused(String),
    /// Stop rewinding at the next call.
    Rewind,
}

/// Bytes of the Asyncify buffer (the saved locals of the pause stack).
const ASYNCIFY_BUFFER: i32 = 32 * 1024;
/// Bytes left free between the stack pointer at the pause and the Asyncify data.
const STACK_GAP: i32 = 1024;

/// Adds `aleph_wasm.checkpoint` to `linker`.
pub(super) fn add_to_linker(linker: &mut Linker<GuestState>) -> anyhow::Result<()> {
    linker
        .func_wrap_async(
            CHECKPOINT_MODULE,
            CHECKPOINT_NAME,
            |mut caller: Caller<'_, GuestState>, (): ()| {
                Box::new(async move { checkpoint(&mut caller).await })
            },
        )
        .map_err(|e| anyhow::anyhow!("cannot link the checkpoint: {e}"))?;
    Ok(())
}

fn stack(caller: &Caller<'_, GuestState>) -> Vec<u32> {
    WasmBacktrace::force_capture(caller)
        .frames()
        .iter()
        .map(|f| f.func_index())
        .collect()
}

async fn call_export(
    caller: &mut Caller<'_, GuestState>,
    name: &str,
    arg: Option<i32>,
) -> wasmtime::Result<()> {
    let func = caller
        .get_export(name)
        .and_then(|e| e.into_func())
        .ok_or_else(|| wasmtime::format_err!("the module does not export {name}"))?;
    match arg {
        Some(a) => {
            func.typed::<i32, ()>(&*caller)?
                .call_async(&mut *caller, a)
                .await
        }
        None => {
            func.typed::<(), ()>(&*caller)?
                .call_async(&mut *caller, ())
                .await
        }
    }
}

async fn checkpoint(caller: &mut Caller<'_, GuestState>) -> wasmtime::Result<()> {
    match std::mem::take(&mut caller.data_mut().hook) {
        Hook::Off => Ok(()),
        Hook::Discover => {
            let found = stack(caller);
            if found.len() >= crate::sandbox::MAX_BACKTRACE_FRAMES {
                // The backtrace may be cut short: the functions under it would not unwind.
                wasmtime::bail!(
                    "the stack at the first read of stdin is {} frames deep or more, deeper \
                     than a snapshot can be prepared for",
                    found.len()
                )
            }
            caller.data_mut().hook = Hook::Discovered(found);
            wasmtime::bail!("paused for stack discovery")
        }
        Hook::Unwind { expected, since } => {
            let found = stack(caller);
            if found != expected {
                let why = format!(
                    "unexpected stack at the checkpoint: {found:?}, prepared for {expected:?}"
                );
                caller.data_mut().hook = Hook::Refused(why.clone());
                wasmtime::bail!(why);
            }
            let sp = match caller.get_export(STACK_POINTER_EXPORT) {
                Some(wasmtime::Extern::Global(g)) => g.get(&mut *caller).i32(),
                _ => None,
            }
            .ok_or_else(|| wasmtime::format_err!("no stack-pointer export"))?;
            let data = (sp - STACK_GAP - ASYNCIFY_BUFFER - 8) & !15;
            if data < 1024 {
                let why = format!("too little stack below the pause (stack pointer {sp})");
                caller.data_mut().hook = Hook::Refused(why.clone());
                wasmtime::bail!(why);
            }
            let memory = caller
                .get_export("memory")
                .and_then(|e| e.into_memory())
                .ok_or_else(|| wasmtime::format_err!("no memory export"))?;
            let mut header = [0u8; 8];
            header[..4].copy_from_slice(&(data + 8).to_le_bytes());
            header[4..].copy_from_slice(&(data + 8 + ASYNCIFY_BUFFER).to_le_bytes());
            memory.write(&mut *caller, data as usize, &header)?;
            let clock_ns = since.elapsed().as_nanos() as u64;
            call_export(caller, "asyncify_start_unwind", Some(data)).await?;
            caller.data_mut().hook = Hook::Unwinding { data, clock_ns };
            Ok(())
        }
        Hook::Rewind => call_export(caller, "asyncify_stop_rewind", None).await,
        other => {
            caller.data_mut().hook = other;
            Ok(())
        }
    }
}

/// Where an instance's snapshot comes from: the interpreter and the identity of everything the
/// boot reads besides what the [`GuestSpec`] says.
#[derive(Debug, Clone)]
pub struct SnapshotSource {
    /// The sha256 of the interpreter module.
    pub interpreter_sha256: String,
    /// Where its bytes are.
    pub interpreter_path: PathBuf,
    /// Content identities (hashes, never host paths) of the runtime, its bootstrap, the code,
    /// data and volumes.
    pub content: Vec<String>,
}

/// The key of a snapshot: the prepared interpreter, the content, argv, environment, the preopen
/// list (guest paths, order, permissions), the determinism profile's boot inputs, the engine
/// and the protocol. A change in any of them is a new snapshot. Nothing in it names a host
/// path, so stores and nodes with the same engine build compute the same keys.
pub fn snapshot_key(
    prepared_sha256: &str,
    engine_key: &str,
    content: &[String],
    spec: &GuestSpec,
) -> String {
    let preopens: Vec<(&str, bool)> = spec
        .preopens
        .iter()
        .map(|p| (p.guest.as_str(), p.writable))
        .collect();
    // What a reproducible boot sees besides the spec: the profile, its boot key and epoch
    // (not the execution key, which only applies from the first event on).
    let determinism = spec.determinism.as_ref().map(|d| {
        serde_json::json!({
            "profile": super::determinism::PROFILE_VERSION,
            "boot_seed": hex::encode(d.boot_seed),
            "epoch_ns": d.epoch_ns,
        })
    });
    let doc = serde_json::json!({
        "protocol": PROTOCOL_VERSION,
        "wasmtime": WASMTIME_VERSION,
        "engine": engine_key,
        "prepared": prepared_sha256,
        "content": content,
        "argv": spec.args,
        "env": spec.env,
        "preopens": preopens,
        "determinism": determinism,
    });
    hex::encode(Sha256::digest(doc.to_string().as_bytes()))
}

/// The key of a prepared interpreter.
fn prepared_key(source: &SnapshotSource, spec: &GuestSpec, wasm_opt: &str) -> String {
    let doc = serde_json::json!({
        "protocol": PROTOCOL_VERSION,
        "wasmtime": WASMTIME_VERSION,
        "interpreter": source.interpreter_sha256,
        "argv": spec.args,
        "wasm_opt": wasm_opt,
        "optimize": prepare::OPTIMIZE_ARGS,
    });
    hex::encode(Sha256::digest(doc.to_string().as_bytes()))
}

/// What was made for one key, or why it could not be, and when.
struct Made<T> {
    result: Result<T, String>,
    at: Instant,
}

impl<T: Clone> Made<T> {
    fn now(result: Result<T, String>) -> Self {
        Made {
            result,
            at: Instant::now(),
        }
    }

    /// The result, unless it is a failure older than `retry_after` (then it is tried again).
    fn current(&self, retry_after: Duration) -> Option<Result<T, String>> {
        match &self.result {
            Err(_) if self.at.elapsed() >= retry_after => None,
            r => Some(r.clone()),
        }
    }
}

type Slot<T> = Arc<tokio::sync::Mutex<Option<Made<Arc<T>>>>>;

/// The snapshots of one sandbox: prepared interpreters and program snapshots, in memory and in
/// the cache directory.
pub struct Snapshots {
    config: SnapshotConfig,
    dir: PathBuf,
    engine_key: String,
    prepared: Mutex<HashMap<String, Slot<prepare_cache::Prepared>>>,
    snapshots: Mutex<HashMap<String, Slot<Restorable>>>,
    events: Mutex<Vec<SnapshotEvent>>,
    warned: Mutex<Option<String>>,
    /// The `wasm-opt` found or obtained (or why not), shared with the thread that obtains it.
    wasm_opt: Arc<WasmOptCell>,
    /// The background jobs running now (prepared-interpreter and snapshot keys).
    building: Mutex<std::collections::HashSet<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl Snapshots {
    /// Snapshots cached under `dir` for the engine whose compatibility key is `engine_key`.
    pub(super) fn new(config: SnapshotConfig, dir: PathBuf, engine_key: String) -> Self {
        Snapshots {
            config,
            dir,
            engine_key,
            prepared: Mutex::new(HashMap::new()),
            snapshots: Mutex::new(HashMap::new()),
            events: Mutex::new(Vec::new()),
            warned: Mutex::new(None),
            wasm_opt: Arc::default(),
            building: Mutex::new(Default::default()),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SnapshotConfig {
        &self.config
    }

    /// Where prepared interpreters and snapshots are cached.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What happened so far, oldest first.
    pub fn events(&self) -> Vec<SnapshotEvent> {
        lock(&self.events).clone()
    }

    fn record(&self, event: SnapshotEvent) {
        lock(&self.events).push(event);
    }

    /// Records a fallback to a cold start; logs its reason (a warning the first time a given
    /// reason is seen in a row, then at debug level).
    pub(crate) fn fallback(&self, reason: String) {
        let mut warned = lock(&self.warned);
        if warned.as_deref() != Some(reason.as_str()) {
            tracing::warn!("snapshot not used, starting cold: {reason}");
            *warned = Some(reason.clone());
        } else {
            tracing::debug!("snapshot not used, starting cold: {reason}");
        }
        drop(warned);
        self.record(SnapshotEvent::Fallback { reason });
    }

    /// The `wasm-opt` binary to run (the one found or obtained; the configured one, or
    /// `wasm-opt`, while none is).
    fn wasm_opt(&self) -> PathBuf {
        match self.wasm_opt_now(false) {
            Some(Ok(found)) => found.path.clone(),
            _ => self
                .config
                .wasm_opt
                .clone()
                .unwrap_or_else(|| PathBuf::from("wasm-opt")),
        }
    }

    /// Where tools obtained for snapshots are kept ([`wasm_opt::tools_dir`]): `dir` is
    /// `<module cache>/<engine>/snapshots`.
    fn tools_dir(&self) -> PathBuf {
        let module_cache = self.dir.parent().and_then(Path::parent);
        wasm_opt::tools_dir(module_cache.unwrap_or(&self.dir))
    }

    /// Starts finding or obtaining `wasm-opt` on a thread of its own, unless snapshots are
    /// off, it is known already, or it is under way; returns at once. Its outcome is logged
    /// (an error when there is none: snapshots are then off until it is tried again, after
    /// [`SnapshotConfig::retry_after`]). `serve` calls it at start-up; otherwise the first
    /// instance that needs it does.
    pub fn obtain_wasm_opt(&self) {
        if self.config.enabled {
            let _ = self.wasm_opt_now(false);
        }
    }

    /// What this process knows of its `wasm-opt` now, without waiting.
    pub fn wasm_opt_status(&self) -> WasmOptStatus {
        if !self.config.enabled {
            return WasmOptStatus::Off;
        }
        let slot = lock(&self.wasm_opt.slot);
        if slot.obtaining {
            return WasmOptStatus::Obtaining;
        }
        match slot.made.as_ref().map(|m| &m.result) {
            None => WasmOptStatus::NotLookedFor,
            Some(Ok(found)) => WasmOptStatus::Ready(found.clone()),
            Some(Err(error)) => WasmOptStatus::Failed(error.clone()),
        }
    }

    /// The `wasm-opt` to use: known already, else being found or obtained on a thread (started
    /// now if it is not), which `wait` waits for (`None` without `wait`). A failure is kept
    /// for [`SnapshotConfig::retry_after`], then tried again.
    fn wasm_opt_now(&self, wait: bool) -> Option<Result<Arc<WasmOpt>, String>> {
        let cell = &self.wasm_opt;
        let mut slot = lock(&cell.slot);
        loop {
            if !slot.obtaining {
                if let Some(known) = slot
                    .made
                    .as_ref()
                    .and_then(|m| m.current(self.config.retry_after))
                {
                    return Some(known);
                }
                slot.obtaining = true;
                let (cell, configured, tools) =
                    (cell.clone(), self.config.wasm_opt.clone(), self.tools_dir());
                let retry_after = self.config.retry_after;
                let spawned = std::thread::Builder::new()
                    .name("aleph-wasm-wasm-opt".into())
                    .spawn(move || cell.obtain(configured.as_deref(), &tools, retry_after));
                if let Err(e) = spawned {
                    slot.obtaining = false;
                    let error = format!("cannot start a thread to find wasm-opt: {e}");
                    slot.made = Some(Made::now(Err(error.clone())));
                    return Some(Err(error));
                }
            }
            if !wait {
                return None;
            }
            slot = match cell.done.wait(slot) {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
        }
    }

    /// The `wasm-opt` version for the key of `spec`'s prepared interpreter. Waits for it to
    /// be found or obtained when builds wait or the instance is reproducible (its fuel count
    /// must not depend on timing); otherwise, while it is under way, says so (the instance
    /// starts cold).
    fn wasm_opt_version(&self, spec: &GuestSpec) -> Result<String, String> {
        let found = match self.wasm_opt_now(false) {
            Some(known) => known,
            None if self.config.build == SnapshotBuild::Wait || spec.determinism.is_some() => {
                block(|| self.wasm_opt_now(true))
                    .unwrap_or_else(|| Err("wasm-opt was not found".into()))
            }
            None => {
                return Err(match &self.config.wasm_opt {
                    Some(path) => format!("wasm-opt ({}) is being checked", path.display()),
                    None => format!(
                        "wasm-opt (binaryen {}) is being obtained in the background, once \
                         per machine",
                        wasm_opt::PINNED_VERSION
                    ),
                });
            }
        };
        found.map(|w| w.version.clone())
    }

    /// The key of the prepared interpreter for `source` and `spec`.
    fn prepared_key(&self, source: &SnapshotSource, spec: &GuestSpec) -> Result<String, String> {
        Ok(prepared_key(source, spec, &self.wasm_opt_version(spec)?))
    }

    /// What a slot holds, without waiting: `None` when nothing was made yet, it is being
    /// made now, or it failed long enough ago to be tried again.
    fn peek<T>(
        &self,
        map: &Mutex<HashMap<String, Slot<T>>>,
        key: &str,
    ) -> Option<Result<Arc<T>, String>> {
        let slot = Self::slot(map, key);
        let guard = slot.try_lock().ok()?;
        guard.as_ref()?.current(self.config.retry_after)
    }

    /// What the slot `held` holds now (see [`Snapshots::peek`]).
    fn current<T>(&self, held: &Option<Made<Arc<T>>>) -> Option<Result<Arc<T>, String>> {
        held.as_ref()?.current(self.config.retry_after)
    }

    /// The snapshots this process holds or is making (a slot it cannot look into is busy,
    /// so counted in): the cache never removes them.
    fn held(&self) -> std::collections::HashSet<String> {
        lock(&self.snapshots)
            .iter()
            .filter(|(_, slot)| {
                slot.try_lock()
                    .map(|made| made.as_ref().is_some_and(|m| m.result.is_ok()))
                    .unwrap_or(true)
            })
            .map(|(key, _)| key.clone())
            .collect()
    }

    fn slot<T>(map: &Mutex<HashMap<String, Slot<T>>>, key: &str) -> Slot<T> {
        lock(map).entry(key.to_string()).or_default().clone()
    }
}

/// What a process knows of its `wasm-opt` ([`Snapshots::wasm_opt_status`]).
#[derive(Debug, Clone, PartialEq)]
pub enum WasmOptStatus {
    /// Snapshots are off: none is needed.
    Off,
    /// Nothing asked for it yet (the first instance that needs it, or `serve` at start-up,
    /// starts looking).
    NotLookedFor,
    /// Being found or obtained now (a download: seconds to minutes, once per machine).
    Obtaining,
    /// In use.
    Ready(Arc<WasmOpt>),
    /// There is none (why): snapshots are off until it is tried again, after
    /// [`SnapshotConfig::retry_after`].
    Failed(String),
}

/// The `wasm-opt` of a [`Snapshots`], and the thread that finds or obtains it.
#[derive(Default)]
struct WasmOptCell {
    slot: Mutex<WasmOptSlot>,
    /// Signalled when a search ends.
    done: Condvar,
}

#[derive(Default)]
struct WasmOptSlot {
    /// The last search's outcome.
    made: Option<Made<Arc<WasmOpt>>>,
    /// Whether a search is under way.
    obtaining: bool,
}

impl WasmOptCell {
    /// Finds or obtains `wasm-opt` (a panic is a failure), logs the outcome, keeps it and
    /// wakes whoever waits.
    fn obtain(&self, configured: Option<&Path>, tools_dir: &Path, retry_after: Duration) {
        let found = std::panic::catch_unwind(|| wasm_opt::resolve(configured, tools_dir))
            .unwrap_or_else(|_| Err("finding wasm-opt panicked".into()))
            .map(Arc::new);
        match &found {
            Ok(w) => match &w.source {
                WasmOptSource::Path { pinned_error } => tracing::warn!(
                    "snapshots: using {} ({}) from PATH: {pinned_error} (fuel counts may \
                     differ from nodes that use binaryen {})",
                    w.path.display(),
                    w.version,
                    wasm_opt::PINNED_VERSION
                ),
                source => tracing::info!(
                    "snapshots: {}, {}: {}",
                    w.version,
                    source.describe(),
                    w.path.display()
                ),
            },
            Err(e) => tracing::error!(
                "snapshots are off (instances start cold; tried again in {} s): {e}",
                retry_after.as_secs()
            ),
        }
        let mut slot = lock(&self.slot);
        slot.made = Some(Made::now(found));
        slot.obtaining = false;
        drop(slot);
        self.done.notify_all();
    }
}

/// Runs `f`, which may block for a long time, without stalling the async runtime it is called
/// from (on a multi-threaded runtime, the worker hands its other tasks on first).
fn block<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

pub(crate) mod prepare_cache {
    //! The prepared interpreter as cached: the module and the pause stack it was made for. Its
    //! 13 MB are read (and their sha256 checked) only when they are needed — a cold start on
    //! it that misses the compiled-module cache, or a snapshot build — not by every process
    //! that restores a snapshot.

    use std::path::PathBuf;
    use std::sync::OnceLock;

    use serde::{Deserialize, Serialize};

    /// A prepared interpreter.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct Prepared {
        /// The sha256 of the prepared module.
        pub sha256: String,
        /// The pause stack (function indices, innermost first).
        pub stack: Vec<u32>,
        /// Where the module's bytes are kept (not in the JSON file).
        #[serde(skip)]
        pub path: PathBuf,
        #[serde(skip)]
        bytes: OnceLock<Vec<u8>>,
    }

    impl Prepared {
        /// A prepared interpreter just made: its bytes are at hand.
        pub fn made(sha256: String, stack: Vec<u32>, path: PathBuf, wasm: Vec<u8>) -> Self {
            Prepared {
                sha256,
                stack,
                path,
                bytes: OnceLock::from(wasm),
            }
        }

        /// The module's bytes, read from [`Prepared::path`] on first use and checked against
        /// [`Prepared::sha256`].
        pub fn wasm(&self) -> Result<&[u8], String> {
            if let Some(bytes) = self.bytes.get() {
                return Ok(bytes);
            }
            let bytes = std::fs::read(&self.path)
                .map_err(|e| format!("the prepared interpreter {}: {e}", self.path.display()))?;
            let actual = crate::message::sha256_hex(&bytes);
            if actual != self.sha256 {
                return Err(format!(
                    "the prepared interpreter {} has sha256 {actual}, expected {} (remove it to \
                     prepare it again)",
                    self.path.display(),
                    self.sha256
                ));
            }
            Ok(self.bytes.get_or_init(|| bytes))
        }
    }
}
