//! The executor: the one place where the steps meet. It takes a validated message and a
//! trigger through resolve → prepare → sandbox → interface and returns an [`Outcome`].
//!
//! It owns the process's [`Sandbox`], the per-program concurrency limits (at most
//! `resources.vcpus` executions of one program run at once; further ones wait their turn) and
//! the pool of warm interpreter instances. Reproducible programs get the determinism profile
//! ([`reproducible`]) and a fresh instance for every execution. Persistent programs are
//! started ahead of any request and kept as [`Running`] instances ([`persistent`]).

mod asgi;
mod binary;
pub mod memory;
pub mod persistent;
pub mod reproducible;
pub mod status;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::interface::Trigger;
use crate::message::{Interface, Message};
use crate::outcome::Outcome;
use crate::runtime::{self, RuntimeKind};
use crate::sandbox::{Sandbox, SandboxConfig};
use crate::store::Store;
use crate::volumes::VolumeLimits;

pub use persistent::Running;

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
    /// Whether interpreter instances stay alive between requests. By default false (one
    /// instance per execution, retired right after it: what a one-shot `run` wants); a node
    /// service sets it.
    pub keep_warm: bool,
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
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        ExecutorConfig {
            sandbox: SandboxConfig::default(),
            volumes: VolumeLimits::default(),
            module_cache: None,
            keep_warm: false,
            idle_timeout: Duration::from_secs(300),
            boot_timeout: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(10),
            memory_budget_mib: None,
        }
    }
}

/// Runs programs from one store. Create one per process and share it.
pub struct Executor {
    store: Store,
    sandbox: Sandbox,
    config: ExecutorConfig,
    permits: Mutex<HashMap<String, Arc<Semaphore>>>,
    pool: Mutex<HashMap<String, Vec<asgi::Warm>>>,
    memory: Option<memory::MemoryBudget>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl Executor {
    /// An executor over `store`; compiled modules are cached in the store's cache.
    pub fn new(store: Store, config: ExecutorConfig) -> anyhow::Result<Self> {
        let cache = match &config.module_cache {
            Some(dir) => dir.clone(),
            None => store.cache_dir("modules")?,
        };
        let sandbox = Sandbox::new(config.sandbox.clone(), &cache)?;
        let memory = config.memory_budget_mib.map(memory::MemoryBudget::new);
        Ok(Executor {
            store,
            sandbox,
            config,
            permits: Mutex::new(HashMap::new()),
            pool: Mutex::new(HashMap::new()),
            memory,
        })
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The sandbox.
    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    fn semaphore(&self, program: &str, vcpus: u32) -> Arc<Semaphore> {
        lock(&self.permits)
            .entry(program.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(vcpus.max(1) as usize)))
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
        let semaphore = self.semaphore(&msg.item_hash, program.resources.vcpus);
        let Ok(_permit) = semaphore.acquire().await else {
            return Outcome::error("the program's execution slots are closed");
        };
        self.retire_idle(self.config.idle_timeout).await;
        // A reproducible execution starts from nothing: no warm instance carries state into it.
        if det.is_none()
            && let Some(warm) = self.take_idle(&msg.item_hash)
        {
            // A warm instance was resolved and verified when it booted.
            return self
                .serve_warm(&msg.item_hash, program, warm, trigger)
                .await
                .unwrap_or_else(Outcome::error);
        }
        let mut outcome = self.execute_cold(msg, program, trigger, det).await;
        outcome.cold_start = true;
        outcome
    }

    /// Runs a program on a new instance (a binary run, or a boot and one event).
    async fn execute_cold(
        &self,
        msg: &Message,
        program: &crate::message::ProgramContent,
        trigger: &Trigger,
        det: Option<crate::sandbox::determinism::Determinism>,
    ) -> Outcome {
        let runtime = match runtime::resolve(&self.store, &program.runtime) {
            Ok(r) => r,
            Err(e) => return Outcome::error(e.to_string()),
        };
        let result = match runtime.manifest.kind {
            RuntimeKind::Wasi => self.execute_binary(program, runtime, trigger, det).await,
            RuntimeKind::Interpreter if program.code.interface == Interface::Asgi => {
                self.execute_asgi(&msg.item_hash, program, runtime, trigger, det)
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
