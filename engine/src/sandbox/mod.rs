//! The sandbox: one wasmtime engine per process, its compiled-module cache, and the execution
//! of one guest under the resource block.
//!
//! Each execution gets a fresh `wasmtime::Store` with a WASI context built from nothing: no
//! inherited environment, arguments, stdio or directories, only what the [`GuestSpec`] lists.
//! Limits:
//! - memory: a fixed ceiling per linear memory ([`limits::MemoryLimiter`]);
//! - time: a wall-clock deadline (epoch interruption lets the guest yield so the deadline fires
//!   even in a tight loop) and a fuel budget of `seconds × fuel_per_second`;
//! - output: stdout and stderr are captured up to a cap ([`output::CappedOutput`]);
//! - disk: writable mounts with a size get a quota ([`quota`]).
//!
//! A reproducible execution ([`GuestSpec::determinism`]) also gets the determinism profile
//! ([`determinism`]): virtual clocks, keyed random sources, a stable view of the file system,
//! and a fuel-only CPU budget whose wall-clock safety net ends the run as inconclusive.

#[macro_use]
mod wasi_call;

pub mod host_calls;

pub mod determinism;
mod environ;
pub mod instance;
pub mod limits;
pub mod meter;
pub mod output;
pub mod quota;
pub mod snapshot;
pub mod stack;

use std::collections::HashMap;
use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, Linker, Module, PoolingAllocationConfig,
    Store, Trap, UpdateDeadline,
};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

use self::limits::MemoryLimiter;
use self::meter::Meter;
use self::output::{CappedOutput, Captured, SinkStream};
use self::quota::{Quota, QuotaState};
use self::snapshot::{Hook, SnapshotConfig, Snapshots};

/// The version of wasmtime this engine is built on (pinned exactly; fuel counts depend on it).
pub const WASMTIME_VERSION: &str = "48.0.0";

/// How the sandbox is tuned. The defaults are the published values.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Fuel granted per second of `resources.seconds`. By default 1,000,000,000: roughly one
    /// second of Wasm execution on a current x86-64 core.
    pub fuel_per_second: u64,
    /// How often the epoch advances; the guest yields at each tick. By default 10 ms.
    pub epoch_tick: Duration,
    /// How many bytes of stdout and of stderr are kept per execution. By default 1 MiB each.
    pub output_cap: usize,
    /// The largest Wasm stack, in bytes. By default 1 MiB.
    pub max_wasm_stack: usize,
    /// How interpreter instances use snapshots ([`snapshot`]).
    pub snapshot: SnapshotConfig,
    /// For reproducible executions, the wall-clock safety net is this many times
    /// `resources.seconds` (fuel decides the outcome; the net only catches a host far slower
    /// than the published fuel rate). By default 10.
    pub safety_net_factor: u32,
    /// Whether instances are allocated from a pool sized once at start-up (wasmtime's pooling
    /// allocator) rather than mapped and unmapped one by one. By default none (on demand:
    /// what a one-shot command wants); `serve --pooling` sets it.
    pub pooling: Option<PoolingLimits>,
}

/// The sizing of the engine's instance pool ([`SandboxConfig::pooling`]).
///
/// Every instance — a binary execution, an interpreter instance serving, idle or pinned, a
/// snapshot build's run — takes one slot of each pool: core instance, linear memory, table
/// and async stack. Slots are set up once (address space only; pages are committed when the
/// guest touches them and given back when the instance ends) and reused, so a start is a
/// few `madvise`/`mprotect` calls instead of fresh mappings.
///
/// The pool changes how instances are allocated, not what is compiled: the engine's
/// compatibility hash, the compiled-module cache and the snapshots are the same with and
/// without it. What it does refuse: a module with more than one linear memory or more than
/// one table, a table over [`limits::MAX_TABLE_ELEMENTS`] elements, or an instance whose
/// metadata is over 1 MiB (more functions and globals than any interpreter runtime has).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolingLimits {
    /// How many instances may be alive at once. The executor keeps
    /// [`POOL_HEADROOM`] of them for snapshot builds and refuses a new instance beyond the
    /// rest (after retiring idle ones) with an error naming the pool.
    pub instances: u32,
    /// The largest a linear memory may grow to, in bytes; at most [`MAX_POOLED_MEMORY`]. It
    /// must be at least the largest `resources.memory` the node admits, so that the memory
    /// limit, not the pool, refuses a growth.
    pub max_memory_bytes: u64,
    /// How many bytes of a linear memory stay resident when its instance ends: the pages the
    /// guest touched there are reset in place to the module's initial contents (only those,
    /// found with Linux's `PAGEMAP_SCAN` where the kernel has it) instead of being given back,
    /// so the next instance in the slot starts without page faults. 0: every page is given
    /// back (`madvise`).
    pub keep_resident_bytes: u64,
}

/// The largest linear memory a pool slot holds: 4 GiB, the whole 32-bit address space (and
/// the address space the engine reserves per memory).
pub const MAX_POOLED_MEMORY: u64 = 4 << 30;

/// How an instance that found no free slot in the engine's pool is reported: the start of its
/// [`GuestEnd::Error`] (the executor counts slots so that this is rare; a snapshot build that
/// outruns [`POOL_HEADROOM`] can still meet it).
pub const POOL_FULL: &str = "the node's instance pool is full";

/// Pool slots the executor leaves to snapshot builds, whose runs are not counted as
/// instances.
pub const POOL_HEADROOM: u32 = 2;

impl PoolingLimits {
    /// A pool for `instances` live instances whose memories grow to at most
    /// `max_memory_mib` MiB (capped at [`MAX_POOLED_MEMORY`]); at least
    /// [`POOL_HEADROOM`] + 1 instances.
    pub fn new(instances: u32, max_memory_mib: u64) -> Self {
        PoolingLimits {
            instances: instances.max(POOL_HEADROOM + 1),
            max_memory_bytes: max_memory_mib
                .saturating_mul(1 << 20)
                .min(MAX_POOLED_MEMORY),
            keep_resident_bytes: 0,
        }
    }

    /// The slots the executor hands out to instances: all but [`POOL_HEADROOM`].
    pub fn executor_slots(&self) -> u32 {
        self.instances.saturating_sub(POOL_HEADROOM).max(1)
    }

    /// wasmtime's pooling configuration for these limits.
    fn allocation_config(&self) -> PoolingAllocationConfig {
        let mut p = PoolingAllocationConfig::new();
        p.total_core_instances(self.instances)
            .total_memories(self.instances)
            .total_tables(self.instances)
            .total_stacks(self.instances)
            .max_memories_per_module(1)
            .max_tables_per_module(1)
            .table_elements(limits::MAX_TABLE_ELEMENTS)
            .max_memory_size(usize::try_from(self.max_memory_bytes).unwrap_or(usize::MAX))
            .linear_memory_keep_resident(
                usize::try_from(self.keep_resident_bytes).unwrap_or(usize::MAX),
            );
        if self.keep_resident_bytes > 0 {
            p.pagemap_scan(Enabled::Auto);
        }
        p
    }
}

impl SandboxConfig {
    /// The wall-clock limit for work whose budget is `budget`: the budget itself, or for a
    /// reproducible execution (where fuel decides) the safety net of `budget × factor`.
    pub fn wall_limit(&self, budget: Duration, reproducible: bool) -> Duration {
        if reproducible {
            budget.saturating_mul(self.safety_net_factor.max(1))
        } else {
            budget
        }
    }
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            fuel_per_second: 1_000_000_000,
            epoch_tick: Duration::from_millis(10),
            output_cap: 1 << 20,
            max_wasm_stack: 1 << 20,
            snapshot: SnapshotConfig::default(),
            safety_net_factor: 10,
            pooling: None,
        }
    }
}

/// A directory the guest sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preopen {
    /// The host directory.
    pub host: PathBuf,
    /// Where the guest sees it (an absolute path).
    pub guest: String,
    /// Whether the guest may write to it.
    pub writable: bool,
    /// The most bytes the directory may hold, when it has a size (writable mounts only).
    pub quota_bytes: Option<u64>,
    /// Where its content comes from and how long it lives.
    pub origin: MountOrigin,
}

/// Where a mount's content comes from and how long it lives (what a snapshot build may do
/// with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MountOrigin {
    /// Read-only content shared by executions (cached in the store by hash: code, runtime
    /// bootstrap, immutable volumes).
    #[default]
    Shared,
    /// Made for one execution from its inputs and dropped after it (a data archive's unpacked
    /// copy, an export mount, an ephemeral volume): every execution starts with the same
    /// content.
    PerExecution,
    /// State kept on the host between executions (a persistent volume).
    Persistent,
}

/// Everything one execution of a guest needs besides its module.
#[derive(Debug, Clone, Default)]
pub struct GuestSpec {
    /// `argv`, including `argv[0]`.
    pub args: Vec<String>,
    /// The environment, exactly.
    pub env: Vec<(String, String)>,
    /// What the guest reads on stdin.
    pub stdin: Vec<u8>,
    /// The directories the guest sees.
    pub preopens: Vec<Preopen>,
    /// The memory ceiling in bytes.
    pub memory_bytes: u64,
    /// The CPU-time budget in seconds (`resources.seconds`).
    pub seconds: u64,
    /// The determinism profile, for reproducible executions.
    pub determinism: Option<determinism::Determinism>,
    /// The host functions each instance may call (its program's capabilities).
    pub calls: crate::channel::CallsFactory,
}

impl GuestSpec {
    /// The wall-clock limit of one execution (or one request) under this spec: `seconds`, or
    /// for a reproducible execution the safety net of `seconds × factor`.
    pub fn wall_limit(&self, config: &SandboxConfig) -> Duration {
        config.wall_limit(
            Duration::from_secs(self.seconds.max(1)),
            self.determinism.is_some(),
        )
    }
}

/// How a guest's execution ended, as the sandbox sees it.
#[derive(Debug, Clone, PartialEq)]
pub enum GuestEnd {
    /// `_start` returned or `proc_exit` was called with this code.
    Exited(i32),
    /// The wall-clock deadline or the fuel budget ran out.
    Timeout(String),
    /// A memory growth was refused by the limit and the guest then failed.
    OutOfMemory(String),
    /// The guest trapped.
    Trap(String),
    /// The guest exhausted its stack (`SandboxConfig::max_wasm_stack`). Kept apart from other
    /// traps: the depth at which it happens depends on the engine build.
    StackOverflow(String),
    /// The guest could not be started (bad module, missing import, host error).
    Error(String),
    /// A reproducible execution hit the wall-clock safety net: the host could not finish it,
    /// which says nothing about the program.
    Inconclusive(String),
}

/// What one execution produced.
#[derive(Debug, Clone)]
pub struct GuestRun {
    /// How it ended.
    pub end: GuestEnd,
    /// Captured stdout.
    pub stdout: Captured,
    /// Captured stderr.
    pub stderr: Captured,
    /// Fuel consumed by the guest.
    pub fuel_consumed: u64,
    /// Wall-clock time from instantiation to the end.
    pub elapsed: Duration,
    /// The largest linear memory reached, in bytes.
    pub peak_memory_bytes: u64,
}

/// A compiled module and whether it came from the on-disk cache.
#[derive(Clone)]
pub struct LoadedModule {
    /// The module.
    pub module: Module,
    /// True when it was loaded from the cache, false when it was compiled now.
    pub from_cache: bool,
}

/// The per-execution state that host functions see.
pub struct GuestState {
    wasi: WasiP1Ctx,
    /// The environment the `environ_*` imports hand over ([`environ`]).
    environ: environ::Environ,
    limiter: MemoryLimiter,
    quota: QuotaState,
    meter: Option<Arc<Meter>>,
    det: Option<determinism::DetState>,
    /// Fuel left at the latest epoch tick: what is known after the store's call was dropped
    /// at the deadline.
    fuel_at_tick: u64,
    /// What the snapshot checkpoint import does in this store.
    hook: Hook,
    /// The host functions this guest may call (`aleph_host`, or its channel's `CALL`s).
    calls: Arc<dyn crate::channel::HostCalls>,
    /// The result of the latest `aleph_host.call`, not yet taken.
    pending: Vec<u8>,
}

/// How a store differs from a plain one: the snapshot checkpoint's job, and a monotonic clock
/// that starts at an offset (a restored instance continues the snapshot's clock).
#[derive(Debug, Default)]
pub(crate) struct StoreExtras {
    pub(crate) hook: Hook,
    /// Where the monotonic clock starts (a restored snapshot's clock), in nanoseconds.
    pub(crate) clock_offset_ns: Option<u64>,
}

/// A monotonic clock that starts at `offset` nanoseconds.
struct OffsetClock {
    base: Instant,
    offset: u64,
}

impl wasmtime_wasi::HostMonotonicClock for OffsetClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        self.offset
            .saturating_add(self.base.elapsed().as_nanos() as u64)
    }
}

/// One wasmtime engine, its linker and its module cache. Create one per process and share it;
/// a clone is a cheap handle to the same engine, caches and snapshots.
#[derive(Clone)]
pub struct Sandbox {
    engine: Engine,
    linker: Arc<Linker<GuestState>>,
    full_linker: Arc<Linker<GuestState>>,
    det_linker: Arc<Linker<GuestState>>,
    config: SandboxConfig,
    cache_dir: PathBuf,
    loaded: Arc<Mutex<HashMap<String, Module>>>,
    _ticker: Arc<Ticker>,
    snapshots: Arc<Snapshots>,
}

/// Stops the epoch ticker thread when the last handle to the sandbox is dropped.
struct Ticker(Arc<AtomicBool>);

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The most Wasm frames a backtrace holds (wasmtime keeps 20 by default). Snapshot preparation
/// needs every frame at its pause (an interpreter's read of stdin is about 30 deep), and a
/// crash's log is more useful with the frames under the first 20.
pub const MAX_BACKTRACE_FRAMES: usize = 256;

/// The engine configuration. It is the same for every execution, reproducible or not, so that
/// a compiled module, a fuel count and a NaN bit pattern mean the same thing on every node.
/// wasmtime is built without its `threads` feature, so shared memories are never available.
/// The allocation strategy ([`SandboxConfig::pooling`]) is the one setting that may differ
/// between nodes: it decides where instances live, not how code is compiled, so it leaves the
/// compatibility hash (and so the module cache and snapshots) unchanged.
pub fn engine_config(config: &SandboxConfig) -> Config {
    let mut c = Config::new();
    c.consume_fuel(true)
        .epoch_interruption(true)
        .cranelift_nan_canonicalization(true)
        .relaxed_simd_deterministic(true)
        .max_wasm_stack(config.max_wasm_stack)
        .wasm_backtrace_max_frames(std::num::NonZeroUsize::new(MAX_BACKTRACE_FRAMES));
    if let Some(pooling) = &config.pooling {
        c.allocation_strategy(InstanceAllocationStrategy::Pooling(
            pooling.allocation_config(),
        ));
    }
    c
}

impl Sandbox {
    /// Builds the engine, links WASI preview 1 and starts the epoch ticker. Compiled modules
    /// are cached under `cache_dir/<engine compatibility hash>/`.
    pub fn new(config: SandboxConfig, cache_dir: &Path) -> anyhow::Result<Self> {
        let engine = Engine::new(&engine_config(&config))
            .map_err(|e| anyhow::anyhow!("cannot build the wasm engine: {e}"))?;
        let mut linker: Linker<GuestState> = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut linker, |s: &mut GuestState| &mut s.wasi)
            .map_err(|e| anyhow::anyhow!("cannot link WASI: {e}"))?;
        environ::add_to_linker(&mut linker)?;
        snapshot::add_to_linker(&mut linker)?;
        host_calls::add_to_linker(&mut linker)?;
        let mut full_linker = linker.clone();
        quota::add_to_linker(&mut full_linker)?;
        meter::add_to_linker(&mut full_linker)?;
        let engine_key = compatibility_key(&engine);
        let cache_dir = cache_dir.join(&engine_key);
        let mut det_linker = full_linker.clone();
        determinism::add_to_linker(&mut det_linker)?;
        std::fs::create_dir_all(&cache_dir)
            .map_err(|e| anyhow::anyhow!("{}: {e}", cache_dir.display()))?;
        let ticker_stop = Arc::new(AtomicBool::new(false));
        {
            let engine = engine.clone();
            let stop = ticker_stop.clone();
            let tick = config.epoch_tick;
            std::thread::Builder::new()
                .name("aleph-wasm-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(tick);
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| anyhow::anyhow!("cannot start the epoch ticker: {e}"))?;
        }
        let snapshots = Snapshots::new(
            config.snapshot.clone(),
            cache_dir.join("snapshots"),
            engine_key,
        );
        Ok(Sandbox {
            engine,
            linker: Arc::new(linker),
            full_linker: Arc::new(full_linker),
            det_linker: Arc::new(det_linker),
            config,
            cache_dir,
            loaded: Arc::new(Mutex::new(HashMap::new())),
            _ticker: Arc::new(Ticker(ticker_stop)),
            snapshots: Arc::new(snapshots),
        })
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The sandbox's configuration.
    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// The snapshots of interpreter instances.
    pub fn snapshots(&self) -> &Snapshots {
        &self.snapshots
    }

    /// The directory compiled modules are cached in.
    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    /// Returns the compiled module for the bytes whose sha256 is `hash`: from memory, from the
    /// on-disk cache, or compiled now from `bytes()` (and then cached). Compiling blocks the
    /// calling thread; async callers use [`Sandbox::module_off_thread`].
    pub fn module(
        &self,
        hash: &str,
        bytes: impl FnOnce() -> anyhow::Result<Vec<u8>>,
    ) -> anyhow::Result<LoadedModule> {
        if let Some(loaded) = self.cached_module(hash) {
            return Ok(loaded);
        }
        let module = compile(&self.engine, hash, &bytes()?)?;
        Ok(self.keep_compiled(hash, module))
    }

    /// [`Sandbox::module`] for async callers: a compilation (seconds for a large interpreter)
    /// runs on the blocking thread pool, so the async workers keep serving other requests.
    pub async fn module_off_thread(
        &self,
        hash: &str,
        bytes: impl FnOnce() -> anyhow::Result<Vec<u8>> + Send + 'static,
    ) -> anyhow::Result<LoadedModule> {
        if let Some(loaded) = self.cached_module(hash) {
            return Ok(loaded);
        }
        let engine = self.engine.clone();
        let name = hash.to_string();
        let module = tokio::task::spawn_blocking(move || compile(&engine, &name, &bytes()?))
            .await
            .map_err(|e| anyhow::anyhow!("the compilation of module {hash} failed: {e}"))??;
        Ok(self.keep_compiled(hash, module))
    }

    /// The module from memory or from the on-disk cache, if it is in either.
    fn cached_module(&self, hash: &str) -> Option<LoadedModule> {
        if let Some(module) = self.loaded_modules().get(hash) {
            return Some(LoadedModule {
                module: module.clone(),
                from_cache: true,
            });
        }
        let path = self.cache_dir.join(format!("{hash}.cwasm"));
        if !path.is_file() {
            return None;
        }
        // SAFETY: the file was written by `Module::serialize` of an engine with the same
        // compatibility hash (it is in the path), through an atomic rename.
        match unsafe { Module::deserialize_file(&self.engine, &path) } {
            Ok(module) => {
                tracing::debug!(module = hash, "compiled module loaded from the cache");
                self.remember(hash, &module);
                Some(LoadedModule {
                    module,
                    from_cache: true,
                })
            }
            Err(e) => {
                tracing::warn!(
                    module = hash,
                    "cached module unusable, compiling again: {e}"
                );
                None
            }
        }
    }

    /// Writes a module compiled now to the on-disk cache and keeps it in memory.
    fn keep_compiled(&self, hash: &str, module: Module) -> LoadedModule {
        let path = self.cache_dir.join(format!("{hash}.cwasm"));
        match module.serialize() {
            Ok(serialized) => {
                if let Err(e) = write_atomic(&path, &serialized) {
                    tracing::warn!(module = hash, "cannot cache the compiled module: {e}");
                }
            }
            Err(e) => tracing::warn!(module = hash, "cannot serialise the compiled module: {e}"),
        }
        self.remember(hash, &module);
        LoadedModule {
            module,
            from_cache: false,
        }
    }

    fn loaded_modules(&self) -> std::sync::MutexGuard<'_, HashMap<String, Module>> {
        match self.loaded.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn remember(&self, hash: &str, module: &Module) {
        self.loaded_modules()
            .insert(hash.to_string(), module.clone());
    }

    /// Lets go of the in-memory copy of a module (its code stays in the on-disk cache): for
    /// one that is used rarely and briefly, so it does not hold memory between uses.
    pub(crate) fn forget_module(&self, hash: &str) {
        self.loaded_modules().remove(hash);
    }

    /// Runs a WASI command module's `_start` under the spec's limits. Never panics and never
    /// returns an error: every failure is a [`GuestEnd`].
    pub async fn run(&self, module: &Module, spec: GuestSpec) -> GuestRun {
        let stdout = CappedOutput::new(self.config.output_cap);
        let stderr = CappedOutput::new(self.config.output_cap);
        let started = Instant::now();
        let fuel_budget = spec.seconds.saturating_mul(self.config.fuel_per_second);
        let mut run = GuestRun {
            end: GuestEnd::Error(String::new()),
            stdout: Captured::default(),
            stderr: Captured::default(),
            fuel_consumed: 0,
            elapsed: Duration::ZERO,
            peak_memory_bytes: 0,
        };
        let stdio = Stdio {
            stdin: Box::new(MemoryInputPipe::new(spec.stdin.clone())),
            stdout: Box::new(SinkStream(stdout.clone())),
            stderr: Box::new(SinkStream(stderr.clone())),
        };
        let calls = spec.calls.make().one_at_a_time();
        let mut store = match self.new_store(
            &spec,
            stdio,
            calls,
            fuel_budget,
            None,
            StoreExtras::default(),
        ) {
            Ok(store) => store,
            Err(e) => {
                run.end = GuestEnd::Error(e);
                return run;
            }
        };
        let deadline = spec.wall_limit(&self.config);
        let linker = self.linker_for(&store);
        let result = tokio::time::timeout(deadline, start(&linker, module, &mut store)).await;
        run.elapsed = started.elapsed();
        let limiter = &store.data().limiter;
        run.peak_memory_bytes = limiter.peak_bytes() as u64;
        run.end = match result {
            Err(_) if spec.determinism.is_some() => GuestEnd::Inconclusive(format!(
                "the wall-clock safety net of {} s was reached before the fuel budget ran out",
                deadline.as_secs()
            )),
            Err(_) => GuestEnd::Timeout(format!(
                "wall-clock deadline of {} s reached",
                deadline.as_secs()
            )),
            Ok(Ok(())) => exit_end(0, limiter),
            Ok(Err((stage, e))) => classify(stage, e, limiter, fuel_budget),
        };
        let fuel_left = store.get_fuel().unwrap_or(0).min(store.data().fuel_at_tick);
        run.fuel_consumed = fuel_budget.saturating_sub(fuel_left);
        run.stdout = stdout.captured();
        run.stderr = stderr.captured();
        run
    }

    /// A store for `spec` whose host functions (the `aleph_host` imports) are `calls`.
    fn new_store(
        &self,
        spec: &GuestSpec,
        stdio: Stdio,
        calls: Arc<dyn crate::channel::HostCalls>,
        fuel_budget: u64,
        meter: Option<Arc<Meter>>,
        extras: StoreExtras,
    ) -> Result<Store<GuestState>, String> {
        let mut wasi = WasiCtxBuilder::new();
        if let Some(offset) = extras.clock_offset_ns {
            wasi.monotonic_clock(OffsetClock {
                base: Instant::now(),
                offset,
            });
        }
        let mut env = spec.env.clone();
        if spec.determinism.is_some() && !env.iter().any(|(k, _)| k == "PYTHONHASHSEED") {
            env.push(("PYTHONHASHSEED".into(), "0".into()));
        }
        wasi.args(&spec.args)
            .envs(&env)
            .stdin(stdio.stdin)
            .stdout(stdio.stdout)
            .stderr(stdio.stderr)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        let mut quotas = Vec::new();
        let mut roots = Vec::new();
        for p in &spec.preopens {
            let perms = if p.writable {
                FsPerms::ReadWrite
            } else {
                FsPerms::ReadOnly
            };
            wasi.preopened_dir(&p.host, &p.guest, perms)
                .map_err(|e| format!("cannot mount {} at {}: {e}", p.host.display(), p.guest))?;
            let quota = match (p.writable, p.quota_bytes) {
                (true, Some(limit)) => {
                    Some(Quota::new(&p.host, &p.guest, limit).map_err(|e| e.to_string())?)
                }
                _ => None,
            };
            quotas.push(quota);
            if spec.determinism.is_some() {
                roots.push(
                    cap_std::fs::Dir::open_ambient_dir(&p.host, cap_std::ambient_authority()).ok(),
                );
            }
        }
        let det = spec
            .determinism
            .as_ref()
            .map(|d| d.apply(&mut wasi, roots, extras.clock_offset_ns));
        let state = GuestState {
            wasi: wasi.build_p1(),
            environ: environ::Environ::new(&env),
            limiter: MemoryLimiter::new(spec.memory_bytes),
            quota: QuotaState::new(quotas),
            meter,
            det,
            fuel_at_tick: fuel_budget,
            hook: extras.hook,
            calls,
            pending: Vec::new(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        store
            .set_fuel(fuel_budget)
            .map_err(|e| format!("cannot set fuel: {e}"))?;
        // Yield to the executor every ~10 ms of compute: the fuel count is saved at each yield,
        // so it is known even when the call is dropped at the deadline.
        store
            .fuel_async_yield_interval(Some((self.config.fuel_per_second / 100).max(1)))
            .map_err(|e| format!("cannot set the fuel yield interval: {e}"))?;
        store.set_epoch_deadline(1);
        // At every tick: note the fuel left, then yield so deadlines and other tasks can run.
        store.epoch_deadline_callback(|mut ctx| {
            let left = ctx.get_fuel()?;
            ctx.data_mut().fuel_at_tick = left;
            if let Some(meter) = &ctx.data().meter {
                meter.tick(left);
            }
            Ok(UpdateDeadline::Yield(1))
        });
        Ok(store)
    }

    /// The linker a store needs: the plain WASI one, the one with the quota and meter
    /// interposers when the store uses either, or the one that also has the determinism
    /// interposers.
    pub(crate) fn linker_for(&self, store: &Store<GuestState>) -> Arc<Linker<GuestState>> {
        if store.data().det.is_some() {
            self.det_linker.clone()
        } else if store.data().quota.any() || store.data().meter.is_some() {
            self.full_linker.clone()
        } else {
            self.linker.clone()
        }
    }
}

/// The three standard streams of a guest.
pub(crate) struct Stdio {
    pub(crate) stdin: Box<dyn wasmtime_wasi::cli::StdinStream + Sync>,
    pub(crate) stdout: Box<dyn wasmtime_wasi::cli::StdoutStream + Sync>,
    pub(crate) stderr: Box<dyn wasmtime_wasi::cli::StdoutStream + Sync>,
}

/// Instantiates the module and calls `_start`. Errors before `_start` runs are the host's or
/// the module's ([`Stage::Start`]); errors from inside it are the guest's.
async fn start(
    linker: &Linker<GuestState>,
    module: &Module,
    store: &mut Store<GuestState>,
) -> Result<(), (Stage, wasmtime::Error)> {
    let instance = linker
        .instantiate_async(&mut *store, module)
        .await
        .map_err(|e| (Stage::Start, e))?;
    let start = instance
        .get_typed_func::<(), ()>(&mut *store, "_start")
        .map_err(|e| (Stage::Start, e))?;
    start
        .call_async(&mut *store, ())
        .await
        .map_err(|e| (Stage::Run, e))
}

fn exit_end(code: i32, limiter: &MemoryLimiter) -> GuestEnd {
    match (code, limiter.refused()) {
        (0, _) => GuestEnd::Exited(0),
        (code, Some(r)) => GuestEnd::OutOfMemory(format!(
            "memory growth from {} to {} bytes refused by the limit; the guest then exited with code {code}",
            r.current, r.desired
        )),
        (code, None) => GuestEnd::Exited(code),
    }
}

/// Where an execution failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Instantiating the module or finding `_start`.
    Start,
    /// Inside `_start`.
    Run,
}

fn classify(
    stage: Stage,
    err: wasmtime::Error,
    limiter: &MemoryLimiter,
    fuel_budget: u64,
) -> GuestEnd {
    if let Some(exit) = err.downcast_ref::<I32Exit>() {
        return exit_end(exit.0, limiter);
    }
    if let Some(full) = err.downcast_ref::<wasmtime::PoolConcurrencyLimitError>() {
        return GuestEnd::Error(format!("{POOL_FULL} ({full})"));
    }
    match err.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => {
            return GuestEnd::Timeout(format!("fuel budget of {fuel_budget} exhausted"));
        }
        Some(Trap::Interrupt) => {
            return GuestEnd::Timeout("interrupted at the deadline".to_string());
        }
        Some(Trap::StackOverflow) if stage == Stage::Run => {
            tracing::warn!(error = format!("{err:?}"), "the guest exhausted its stack");
            return GuestEnd::StackOverflow(format!(
                "the guest exhausted its stack ({})",
                describe(&err)
            ));
        }
        _ => {}
    }
    if let Some(r) = limiter.refused() {
        return GuestEnd::OutOfMemory(format!(
            "memory growth from {} to {} bytes refused by the limit; then: {}",
            r.current,
            r.desired,
            describe(&err)
        ));
    }
    match stage {
        Stage::Start => GuestEnd::Error(format!("cannot start the module: {err:#}")),
        Stage::Run => {
            // The sentence goes into the outcome; the wasm backtrace only into the log.
            tracing::warn!(error = format!("{err:?}"), "the guest crashed");
            let cause = match below_zero_fault(&err) {
                Some(address) => format!(
                    "its C stack overflowed: C calls nested deeper than its stack holds, \
                     caught by an access at wasm address {address:#x}; an interpreter's C \
                     stack is {} MiB, a WASI module's is the size it was linked with",
                    self::stack::STACK_BYTES >> 20
                ),
                None => describe(&err),
            };
            GuestEnd::Trap(format!("the guest crashed ({cause})"))
        }
    }
}

impl std::fmt::Display for GuestEnd {
    /// One sentence, for an error text: what ended the guest.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GuestEnd::Exited(code) => write!(f, "the guest exited with code {code}"),
            GuestEnd::Timeout(why) => write!(f, "timeout: {why}"),
            GuestEnd::OutOfMemory(why) => write!(f, "out of memory: {why}"),
            GuestEnd::Trap(why)
            | GuestEnd::StackOverflow(why)
            | GuestEnd::Error(why)
            | GuestEnd::Inconclusive(why) => f.write_str(why),
        }
    }
}

/// The address of an out-of-bounds access just below 4 GiB or past it: where the guard of a
/// relocated interpreter stack reads ([`self::stack::GUARD_FAULT_ADDRESS`]), and where a module's own
/// C stack laid out first in memory (LLVM's `--stack-first`, growing down towards 0) goes when
/// it overflows, its 32-bit address wrapping below 0.
fn below_zero_fault(err: &wasmtime::Error) -> Option<u64> {
    const PREFIX: &str = "memory fault at wasm address 0x";
    if err.downcast_ref::<Trap>() != Some(&Trap::MemoryOutOfBounds) {
        return None;
    }
    err.chain().find_map(|cause| {
        let text = cause.to_string();
        let hex = text.strip_prefix(PREFIX)?.split(' ').next()?;
        let address = u64::from_str_radix(hex, 16).ok()?;
        (address >= (1 << 32) - (1 << 20)).then_some(address)
    })
}

/// The cause of a failure in a few words: the trap when there is one, else the innermost error.
fn describe(err: &wasmtime::Error) -> String {
    match err.downcast_ref::<Trap>() {
        Some(trap) => trap.to_string(), // "wasm trap: …"
        None => err
            .chain()
            .last()
            .map(|e| e.to_string())
            .unwrap_or_else(|| err.to_string()),
    }
}

/// Compiles module bytes whose sha256 is `hash`.
fn compile(engine: &Engine, hash: &str, bytes: &[u8]) -> anyhow::Result<Module> {
    let started = Instant::now();
    let module = Module::new(engine, bytes)
        .map_err(|e| anyhow::anyhow!("module {hash} is not valid WebAssembly: {e}"))?;
    tracing::info!(
        module = hash,
        ms = started.elapsed().as_millis() as u64,
        "compiled module"
    );
    Ok(module)
}

/// A short, stable key for the engine's compilation settings (wasmtime's own compatibility
/// hash, digested with sha256).
fn compatibility_key(engine: &Engine) -> String {
    struct ShaHasher(Sha256);
    impl Hasher for ShaHasher {
        fn finish(&self) -> u64 {
            0
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
    }
    let mut h = ShaHasher(Sha256::new());
    std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut h);
    hex::encode(&h.0.finalize()[..12])
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODULE: &str = r#"(module (memory (export "memory") 1) (table 4 funcref)
        (func (export "_start")))"#;

    fn engines() -> (Engine, Engine) {
        let on_demand = Engine::new(&engine_config(&SandboxConfig::default())).unwrap();
        let pooled = Engine::new(&engine_config(&SandboxConfig {
            pooling: Some(PoolingLimits::new(4, 64)),
            ..SandboxConfig::default()
        }))
        .unwrap();
        (on_demand, pooled)
    }

    #[test]
    fn pooling_keeps_the_compatibility_hash_and_the_compiled_modules() {
        let (on_demand, pooled) = engines();
        // One cache directory for both: a module compiled by either loads in the other.
        assert_eq!(compatibility_key(&on_demand), compatibility_key(&pooled));
        let bytes = wat::parse_str(MODULE).unwrap();
        let compiled = Module::new(&on_demand, &bytes)
            .unwrap()
            .serialize()
            .unwrap();
        // SAFETY: the bytes were serialised just above by an engine of the same build.
        let loaded = unsafe { Module::deserialize(&pooled, &compiled) }.unwrap();
        let mut store = Store::new(&pooled, ());
        wasmtime::Instance::new(&mut store, &loaded, &[]).unwrap();
    }

    #[test]
    fn a_full_pool_refuses_an_instance_with_an_error_naming_the_limit() {
        let (_, pooled) = engines();
        let module = Module::new(&pooled, wat::parse_str(MODULE).unwrap()).unwrap();
        let mut stores: Vec<Store<()>> = (0..4).map(|_| Store::new(&pooled, ())).collect();
        for store in &mut stores {
            wasmtime::Instance::new(&mut *store, &module, &[]).unwrap();
        }
        let mut fifth = Store::new(&pooled, ());
        let err = wasmtime::Instance::new(&mut fifth, &module, &[]).unwrap_err();
        assert!(
            err.downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
                .is_some(),
            "{err:#}"
        );
        // A slot comes back when its instance's store is dropped.
        stores.pop();
        wasmtime::Instance::new(&mut fifth, &module, &[]).unwrap();
    }

    #[test]
    fn pool_limits_keep_headroom_and_cap_memories_at_four_gib() {
        let p = PoolingLimits::new(130, 19_000);
        assert_eq!(p.instances, 130);
        assert_eq!(p.executor_slots(), 130 - POOL_HEADROOM);
        assert_eq!(p.max_memory_bytes, MAX_POOLED_MEMORY);
        let small = PoolingLimits::new(0, 128);
        assert_eq!(small.instances, POOL_HEADROOM + 1);
        assert_eq!(small.executor_slots(), 1);
        assert_eq!(small.max_memory_bytes, 128 << 20);
    }
}

#[cfg(test)]
mod pool_tests {
    use super::*;

    /// Reads stdin until end of file, then exits.
    const READER: &str = r#"(module
      (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (func (export "_start")
        (i32.store (i32.const 0) (i32.const 64))
        (i32.store (i32.const 4) (i32.const 64))
        (loop $again
          (drop (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 8)))
          (br_if $again (i32.load (i32.const 8))))))"#;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_instance_beyond_the_pool_ends_with_an_error_naming_the_pool() {
        let cache = tempfile::tempdir().unwrap();
        let config = SandboxConfig {
            pooling: Some(PoolingLimits::new(3, 16)),
            ..SandboxConfig::default()
        };
        let sandbox = Sandbox::new(config, cache.path()).unwrap();
        let bytes = wat::parse_str(READER).unwrap();
        let module = sandbox.module("reader", || Ok(bytes)).unwrap().module;
        let spec = GuestSpec {
            memory_bytes: 16 << 20,
            seconds: 5,
            ..GuestSpec::default()
        };
        // Three instances waiting on stdin hold every slot.
        let held: Vec<_> = (0..3)
            .map(|_| sandbox.spawn(&module, spec.clone(), 1 << 30).unwrap())
            .collect();
        for instance in &held {
            tokio::time::timeout(Duration::from_secs(5), instance.wait_idle())
                .await
                .expect("the instance never read stdin");
        }
        let run = sandbox.run(&module, spec.clone()).await;
        match &run.end {
            GuestEnd::Error(e) => assert!(e.contains(POOL_FULL), "{e}"),
            other => panic!("expected a pool error, got {other:?}"),
        }
        // Their slots come back when they end (once their tasks have dropped their stores).
        for instance in held {
            instance.close_stdin();
            assert!(instance.wait_end(Duration::from_secs(5)).await.is_some());
        }
        let started = Instant::now();
        loop {
            let run = sandbox.run(&module, spec.clone()).await;
            if run.end == GuestEnd::Exited(0) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "no slot came back: {:?}",
                run.end
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
