//! The executor: the one place where the steps meet. It takes a validated message and a
//! trigger through resolve → prepare → sandbox → interface and returns an [`Outcome`].
//!
//! It owns the process's [`Sandbox`], the per-program concurrency limits (at most
//! `resources.vcpus` executions of one program run at once; further ones wait their turn; one
//! instance at a time mounts a persistent volume, see [`volume_lease`]) and
//! the pool of warm interpreter instances, used or not according to [`Isolation`].
//! Reproducible programs get the determinism profile ([`reproducible`]) and a fresh instance
//! for every execution. Persistent programs are started ahead of any request and kept as
//! [`Running`] instances ([`persistent`]).

mod asgi;
mod binary;
pub mod memory;
pub mod persistent;
pub mod reproducible;
pub mod status;
mod volume_lease;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::host::{Host, HostConfig};
use crate::interface::Trigger;
use crate::message::{Interface, Message};
use crate::outcome::Outcome;
use crate::runtime::{self, RuntimeKind};
use crate::sandbox::{Sandbox, SandboxConfig};
use crate::store::Store;
use crate::volumes::VolumeLimits;

pub use persistent::Running;

/// Whether an interpreter (ASGI) instance serves more than one request or event.
///
/// Whatever the isolation, a persistent program (`on.persistent`) keeps its one long-lived
/// instance, which serves its requests and events in turn; a reproducible program never reuses
/// an instance; a binary program runs once per trigger. Persistent volumes are shared by
/// design under both, by one instance at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// Instances stay alive between requests — at most `resources.vcpus` per program — and
    /// retire after [`ExecutorConfig::idle_timeout`]: what a request leaves in the
    /// interpreter's memory or in the instance's ephemeral mounts is seen by the next request
    /// served on it. What the node service does unless told otherwise.
    Warm,
    /// Every request or event gets a new instance — restored from the program's snapshot when
    /// snapshots are on and the program has one, else booted cold — which is retired right
    /// after it (lifespan shutdown, end of stdin, export packed) and dropped with its
    /// execution directory (ephemeral volumes, writable data): nothing one request leaves in
    /// memory or in those directories is seen by the next. What a one-shot `run` does.
    PerRequest,
}

impl Isolation {
    /// The name used on the command line and in the node API: `warm` or `per-request`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Isolation::Warm => "warm",
            Isolation::PerRequest => "per-request",
        }
    }
}

impl std::fmt::Display for Isolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Isolation {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "warm" => Ok(Isolation::Warm),
            "per-request" => Ok(Isolation::PerRequest),
            other => Err(format!(
                "unknown isolation {other:?}: expected \"warm\" or \"per-request\""
            )),
        }
    }
}

/// How the executor is tuned.
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// The sandbox's settings.
    pub sandbox: SandboxConfig,
    /// Limits on volumes.
    pub volumes: VolumeLimits,
    /// Where compiled modules are cached. By default `cache/modules` in the store; several
    /// stores (a test suite's) can share one directory.
    pub module_cache: Option<std::path::PathBuf>,
    /// Whether interpreter instances stay alive between requests ([`Isolation`]). By default
    /// [`Isolation::PerRequest`] (one instance per execution, retired right after it: what a
    /// one-shot `run` wants); the node service uses [`Isolation::Warm`] unless told otherwise.
    pub isolation: Isolation,
    /// Whether an instance retired right after its request ([`Isolation::PerRequest`]) ends —
    /// lifespan shutdown, interpreter exit, tens of milliseconds for CPython — after the
    /// outcome is returned rather than before, when the outcome needs nothing from it (no
    /// export mount, not reproducible; the shutdown's logs then go to the debug log). The
    /// instance holds its memory and pool reservation until it is gone. By default false (a
    /// one-shot `run` waits, so its output has the shutdown's logs); the node service sets it.
    pub retire_after_answer: bool,
    /// How long an idle warm instance is kept. By default 5 minutes.
    pub idle_timeout: Duration,
    /// The wall-clock budget for booting an instance (interpreter start, app import, lifespan
    /// startup); its fuel budget is the same number of seconds. By default 30 s.
    pub boot_timeout: Duration,
    /// The wall-clock budget for lifespan shutdown. By default 10 s.
    pub shutdown_timeout: Duration,
    /// The node-wide memory budget in MiB: live instances hold their `resources.memory`, and
    /// work that does not fit is refused. By default none (nothing is counted).
    pub memory_budget_mib: Option<u64>,
    /// How many requests and events one shared interpreter instance serves at once,
    /// interleaved at their awaits ([`DEFAULT_INSTANCE_CONCURRENCY`]). A program has at most
    /// `resources.vcpus` instances; requests beyond `vcpus × instance_concurrency` wait for a
    /// place. Reproducible executions and per-request isolation serve one per instance.
    pub instance_concurrency: usize,
    /// Host capabilities: outbound connections, the guest API ([`crate::host`]).
    pub host: HostConfig,
}

/// How long an idle warm instance is kept unless told otherwise.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// How many requests one warm interpreter instance serves at once unless told otherwise: as
/// many connections as a load test opens to one uvicorn worker.
pub const DEFAULT_INSTANCE_CONCURRENCY: usize = 64;

impl Default for ExecutorConfig {
    fn default() -> Self {
        ExecutorConfig {
            sandbox: SandboxConfig::default(),
            volumes: VolumeLimits::default(),
            module_cache: None,
            isolation: Isolation::PerRequest,
            retire_after_answer: false,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            boot_timeout: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(10),
            memory_budget_mib: None,
            instance_concurrency: DEFAULT_INSTANCE_CONCURRENCY,
            host: HostConfig::default(),
        }
    }
}

/// Runs programs from one store. Create one per process and share it.
pub struct Executor {
    host: Host,
    store: Store,
    sandbox: Sandbox,
    config: ExecutorConfig,
    permits: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Every live shared instance of each program, busy or idle.
    pool: Mutex<HashMap<String, Vec<Arc<asgi::Warm>>>>,
    /// How many instances of each program are booting to join the pool.
    booting: Arc<Mutex<HashMap<String, usize>>>,
    /// Signalled when an instance joins or leaves the pool or a request on one ends.
    pool_changed: Arc<tokio::sync::Notify>,
    /// When the executor was made, and when (ms after) idle instances were last looked over.
    created: std::time::Instant,
    last_sweep_ms: std::sync::atomic::AtomicU64,
    memory: Option<memory::Budget>,
    /// The engine's instance pool as slots, when it pools instances.
    slots: Option<memory::Budget>,
    /// Instances being retired after their answers (they still hold their reservations).
    retiring: Arc<std::sync::atomic::AtomicUsize>,
    /// Which persistent volumes are mounted by a live instance.
    volume_leases: volume_lease::VolumeLeases,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// What an execution is granted ([`Executor::grant`]).
pub(crate) struct Granted {
    /// What makes each instance's host calls.
    pub(crate) calls: crate::channel::CallsFactory,
    /// For a reproducible execution, what its calls read.
    pub(crate) reads: Option<crate::host::recorded::ReadLog>,
}

impl Executor {
    /// An executor over `store`; compiled modules are cached in the store's cache.
    pub fn new(store: Store, config: ExecutorConfig) -> anyhow::Result<Self> {
        let cache = match &config.module_cache {
            Some(dir) => dir.clone(),
            None => store.cache_dir("modules")?,
        };
        let sandbox = Sandbox::new(config.sandbox.clone(), &cache)?;
        let memory = config.memory_budget_mib.map(memory::Budget::new);
        let slots = config
            .sandbox
            .pooling
            .map(|p| memory::Budget::new(p.executor_slots().into()));
        let host = Host::new(store.clone(), config.host.clone());
        Ok(Executor {
            host,
            store,
            sandbox,
            config,
            permits: Mutex::new(HashMap::new()),
            pool: Mutex::new(HashMap::new()),
            booting: Arc::default(),
            pool_changed: Arc::default(),
            created: std::time::Instant::now(),
            last_sweep_ms: std::sync::atomic::AtomicU64::new(0),
            memory,
            slots,
            retiring: Arc::default(),
            volume_leases: volume_lease::VolumeLeases::default(),
        })
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The node's host capabilities.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// What `program` (item hash `item_hash`) is granted: the variables that go with its
    /// capabilities (added to `env` unless the program's own variables set them, which win as
    /// on Aleph's VMs), and what makes each instance's host calls — for a reproducible program,
    /// recorded ones, with the log of what they read.
    pub(crate) async fn grant(
        &self,
        item_hash: &str,
        program: &crate::message::ProgramContent,
        env: &mut Vec<(String, String)>,
    ) -> Result<Granted, String> {
        let grants = crate::host::Grants {
            internet: program.environment.internet,
            aleph_api: program.environment.aleph_api,
        };
        let mut ours = vec![(crate::host::ITEM_HASH_ENV, item_hash.to_string())];
        if let Some(label) = crate::message::host_label(item_hash) {
            ours.push((crate::host::ADDRESS_ENV, label));
        }
        if grants.aleph_api {
            ours.extend(
                crate::host::API_ENV
                    .iter()
                    .map(|(k, v)| (*k, v.to_string())),
            );
        }
        for (key, value) in ours {
            if !program.variables.contains_key(key) {
                env.push((key.to_string(), value));
            }
        }
        if program.environment.reproducible {
            let log = crate::host::recorded::ReadLog::default();
            return Ok(Granted {
                calls: self.host.recorded_calls_for(grants, log.clone()),
                reads: Some(log),
            });
        }
        Ok(Granted {
            calls: self.host.calls_for(item_hash, grants).await?,
            reads: None,
        })
    }

    /// The sandbox.
    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    /// The program's execution slots: `permits` of them (fixed by the first caller).
    fn semaphore(&self, program: &str, permits: usize) -> Arc<Semaphore> {
        lock(&self.permits)
            .entry(program.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(permits.max(1))))
            .clone()
    }

    /// Runs the program of `msg` for `trigger`. Never panics; every failure is an outcome.
    pub async fn execute(&self, msg: &Message, trigger: &Trigger) -> Outcome {
        let Some(program) = msg.program() else {
            return Outcome::error(format!(
                "message {} is a {:?} message, not a PROGRAM",
                msg.item_hash, msg.kind
            ));
        };
        if let Err(e) = program.check_supported() {
            return Outcome::error(e.to_string());
        }
        let det = match reproducible::profile(msg, program, trigger) {
            Ok(det) => det,
            Err(e) => return Outcome::error(e),
        };
        // Shared instances serve many requests each; otherwise one instance serves one.
        let shared = det.is_none() && self.config.isolation == Isolation::Warm;
        let vcpus = volume_lease::max_instances(program);
        let per_instance = if shared {
            self.config.instance_concurrency.max(1)
        } else {
            1
        };
        let semaphore = self.semaphore(&msg.item_hash, vcpus.saturating_mul(per_instance));
        let Ok(_permit) = semaphore.acquire().await else {
            return Outcome::error("the program's execution slots are closed");
        };
        if self.sweep_due() {
            self.retire_idle(self.config.idle_timeout).await;
        }
        let mut booting = None;
        // A reproducible execution starts from nothing: no live instance carries state into it.
        if det.is_none() && (self.has_live(&msg.item_hash) || self.is_asgi(program)) {
            loop {
                let changed = self.pool_changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                match self.claim(&msg.item_hash, vcpus, shared) {
                    asgi::Claim::Instance(warm) => {
                        // A live instance was resolved and verified when it booted.
                        return self
                            .serve_warm(&msg.item_hash, program, warm, trigger)
                            .await
                            .unwrap_or_else(Outcome::error);
                    }
                    asgi::Claim::Boot(guard) => {
                        booting = Some(guard);
                        break;
                    }
                    asgi::Claim::Exclusive => break,
                    asgi::Claim::Wait => changed.await,
                }
            }
        }
        let mut outcome = self.execute_cold(msg, program, trigger, det, booting).await;
        if outcome.kind == crate::outcome::OutcomeKind::Error
            && outcome
                .error
                .as_deref()
                .is_some_and(|e| e.contains(crate::sandbox::POOL_FULL))
        {
            // The engine had no slot for the instance: the node's doing, not the program's.
            outcome.refused = Some(crate::outcome::Refusal::InstancePool);
        }
        outcome.cold_start = outcome.refused.is_none();
        outcome
    }

    /// Whether idle instances should be looked over for retirement now: at most once a second
    /// (a node also does it on a timer of its own).
    fn sweep_due(&self) -> bool {
        let now = self.created.elapsed().as_millis() as u64;
        let last = self
            .last_sweep_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        now.saturating_sub(last) >= 1000
            && self
                .last_sweep_ms
                .compare_exchange(
                    last,
                    now,
                    std::sync::atomic::Ordering::Relaxed,
                    std::sync::atomic::Ordering::Relaxed,
                )
                .is_ok()
    }

    /// Whether the program's runtime is an interpreter serving ASGI (its instances are pooled).
    fn is_asgi(&self, program: &crate::message::ProgramContent) -> bool {
        program.code.interface == Interface::Asgi
            && runtime::resolve(&self.store, &program.runtime)
                .is_ok_and(|r| r.manifest.kind == RuntimeKind::Interpreter)
    }

    /// Runs a program on a new instance (a binary run, or a boot and one event).
    async fn execute_cold(
        &self,
        msg: &Message,
        program: &crate::message::ProgramContent,
        trigger: &Trigger,
        det: Option<crate::sandbox::determinism::Determinism>,
        booting: Option<asgi::Booting>,
    ) -> Outcome {
        let runtime = match runtime::resolve(&self.store, &program.runtime) {
            Ok(r) => r,
            Err(e) => return Outcome::error(e.to_string()),
        };
        let result = match runtime.manifest.kind {
            RuntimeKind::Wasi => {
                self.execute_binary(&msg.item_hash, program, runtime, trigger, det)
                    .await
            }
            RuntimeKind::Interpreter if program.code.interface == Interface::Asgi => {
                self.execute_asgi(&msg.item_hash, program, runtime, trigger, det, booting)
                    .await
            }
            RuntimeKind::Interpreter => Err(format!(
                "content.code.interface: runtime {:?} serves the asgi interface, not binary",
                runtime.manifest.name
            )),
        };
        result.unwrap_or_else(Outcome::error)
    }
}
