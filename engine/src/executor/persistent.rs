//! Persistent programs (`on.persistent`): one instance started ahead of any request and kept
//! running, as [`Running`].
//!
//! - An ASGI program's instance is booted (import, lifespan startup) and *pinned* in the pool
//!   of warm instances: it serves requests and events like any warm instance, idle retirement
//!   passes it by, and [`Running::ended`] returns once it is gone (discarded after a crash or a
//!   timeout, retired at shutdown).
//! - A binary program runs as a long-lived job: `_start` on its own task with no wall-clock
//!   deadline and no fuel ceiling (a persistent program is meant to keep running), stdin at
//!   end-of-file, its stdout and stderr lines logged. [`Running::ended`] returns when it exits,
//!   traps or runs out of memory; its export, if any, is collected then.
//!
//! Restarting, backoff and when to stop are the caller's business (the node's trigger service).

use std::sync::Arc;

use tokio::sync::oneshot;

use crate::interface::Trigger;
use crate::message::{Interface, Message};
use crate::runtime::{self, RuntimeKind};
use crate::sandbox::instance::Instance;
use crate::store::Store;
use crate::volumes::{self, ExportPlan};

use super::Executor;
use super::asgi::{Pin, PinState};

/// The fuel of a persistent binary job: the most the engine accepts, so fuel never ends it.
const UNLIMITED_FUEL: u64 = i64::MAX as u64;

/// The instance of a persistent program, started by [`Executor::start_persistent`].
pub struct Running {
    key: String,
    kind: Kind,
}

enum Kind {
    /// A pinned warm instance in the pool.
    Pooled {
        state: Arc<PinState>,
        gone: Option<oneshot::Receiver<()>>,
    },
    /// A long-lived binary job.
    Job(Box<Job>),
}

struct Job {
    instance: Instance,
    /// Keeps the per-execution directory (data, export, ephemeral volumes) alive.
    _exec_dir: tempfile::TempDir,
    export: Option<ExportPlan>,
    store: Store,
    owner: String,
    time: f64,
    finished: Option<String>,
    /// What the job holds of the node's memory budget.
    _memory: super::memory::Reservation,
    /// The persistent volumes it mounts, held while it runs.
    _lease: super::volume_lease::VolumeLease,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            Kind::Pooled { .. } => "asgi",
            Kind::Job(_) => "binary",
        };
        f.debug_struct("Running")
            .field("program", &self.key)
            .field("kind", &kind)
            .finish()
    }
}

/// At most this many bytes of one line of a persistent job's output go to the log.
const LOG_LINE_MAX: usize = 4096;

fn log_line(key: &str, stream: &str, bytes: &[u8]) {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(LOG_LINE_MAX)]);
    tracing::info!(target: "aleph_wasm::program", program = key, stream, "{text}");
}

impl Running {
    /// The program's item hash.
    pub fn program(&self) -> &str {
        &self.key
    }

    /// Waits until the instance is gone and says why. Once it has returned, it returns at
    /// once with the same answer. Cancel-safe: dropped before it returns, it can be called
    /// again.
    pub async fn ended(&mut self) -> String {
        match &mut self.kind {
            Kind::Pooled { state, gone } => {
                if let Some(rx) = gone.as_mut() {
                    let _ = rx.await;
                    *gone = None;
                }
                state
                    .reason()
                    .unwrap_or_else(|| "the instance was retired".to_string())
            }
            Kind::Job(job) => {
                if let Some(why) = &job.finished {
                    return why.clone();
                }
                while let Some(line) = job.instance.next_line().await {
                    log_line(&self.key, "stdout", &line);
                }
                for line in job.instance.drain_stderr().await {
                    log_line(&self.key, "stderr", &line);
                }
                let why = match job.instance.ended() {
                    Some(end) => format!("the job ended: {end:?}"),
                    None => "the job ended".to_string(),
                };
                if let Some(plan) = &job.export {
                    // The export of a job that ended by itself, as a one-shot run would leave it.
                    match volumes::collect_export(&job.store, plan, &job.owner, job.time) {
                        Ok(info) => tracing::info!(
                            program = %self.key,
                            "export stored as {}",
                            info.reference
                        ),
                        Err(e) => tracing::warn!(program = %self.key, "export failed: {e}"),
                    }
                }
                job.finished = Some(why.clone());
                why
            }
        }
    }

    /// Stops the instance: an ASGI instance is retired (lifespan shutdown, export) — at once
    /// when idle, after its request when busy; a binary job is killed.
    pub async fn stop(self, executor: &Executor) {
        match self.kind {
            Kind::Pooled { state, .. } => executor.retire_pinned(&self.key, &state).await,
            Kind::Job(job) => job.instance.kill(),
        }
    }
}

impl Executor {
    /// Starts the instance of the persistent program `msg`: boots and pins an ASGI instance,
    /// or spawns a binary program as a long-lived job. Fails (with the reason) when the
    /// program cannot be started; the caller decides when to try again.
    pub async fn start_persistent(&self, msg: &Message) -> Result<Running, String> {
        let program = msg.program().ok_or_else(|| {
            format!(
                "message {} is a {:?} message, not a PROGRAM",
                msg.item_hash, msg.kind
            )
        })?;
        program.check_supported().map_err(|e| e.to_string())?;
        let runtime = runtime::resolve(&self.store, &program.runtime).map_err(|e| e.to_string())?;
        let key = msg.item_hash.clone();
        match runtime.manifest.kind {
            RuntimeKind::Wasi => {
                let prepared = self
                    .prepare_binary(&key, program, runtime, &Trigger::Job, None)
                    .await?;
                let mut spec = prepared.spec;
                // Every read of stdin refills the fuel to `seconds` worth: unlimited as well.
                spec.seconds = UNLIMITED_FUEL / self.sandbox.config().fuel_per_second.max(1);
                let instance = self
                    .sandbox
                    .spawn(&prepared.loaded.module, spec, UNLIMITED_FUEL)?;
                instance.close_stdin();
                Ok(Running {
                    key,
                    kind: Kind::Job(Box::new(Job {
                        instance,
                        _exec_dir: prepared.exec_dir,
                        export: prepared.export,
                        store: self.store.clone(),
                        owner: program.address.clone(),
                        time: program.time,
                        finished: None,
                        _memory: prepared.memory,
                        _lease: prepared.lease,
                    })),
                })
            }
            RuntimeKind::Interpreter if program.code.interface == Interface::Asgi => {
                // Booting takes one of the program's execution slots, as a request's boot does.
                let semaphore = self.semaphore(
                    &key,
                    super::volume_lease::max_instances(program)
                        .saturating_mul(self.config.instance_concurrency.max(1)),
                );
                let _permit = semaphore
                    .acquire()
                    .await
                    .map_err(|_| "the program's execution slots are closed".to_string())?;
                let mut warm = self.boot(&key, program, &runtime, None).await?;
                let state = Arc::new(PinState::default());
                let (tx, rx) = oneshot::channel();
                warm.pin = Some(Pin {
                    state: state.clone(),
                    _gone: tx,
                });
                self.put_live(&key, Arc::new(warm));
                Ok(Running {
                    key,
                    kind: Kind::Pooled {
                        state,
                        gone: Some(rx),
                    },
                })
            }
            RuntimeKind::Interpreter => Err(format!(
                "content.code.interface: runtime {:?} serves the asgi interface, not binary",
                runtime.manifest.name
            )),
        }
    }
}
