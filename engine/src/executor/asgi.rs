//! ASGI programs on an interpreter runtime: instances that boot once (interpreter start, app
//! import, lifespan startup) and then serve requests one after another.
//!
//! Each program has a pool of idle instances. A request takes one (or boots a new one — at
//! most `vcpus` exist, since each running request holds one of the program's `vcpus` slots),
//! serves the event under `resources.seconds` (wall-clock deadline and per-request fuel), and
//! gives the instance back — unless it crashed, timed out or ran out of memory: then it is
//! discarded and the next request gets a fresh one. Idle instances retire after
//! [`ExecutorConfig::idle_timeout`](super::ExecutorConfig::idle_timeout): lifespan shutdown,
//! end of stdin, export packed. Under [`Isolation::PerRequest`](super::Isolation::PerRequest)
//! no instance goes back to the pool: each is retired right after its request.
//!
//! A persistent program's instance is *pinned* ([`Pin`], see `executor::persistent`): it sits
//! in the same pool and serves requests and events like any other, but idle retirement passes
//! it by, and when it goes away (discarded after a crash, retired at shutdown) its holder is
//! told, so it can start another.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::interface::asgi::{self, Exchange};
use crate::interface::{HttpRequest, Trigger};
use crate::message::{CodeSource, Encoding, ProgramContent, Volume};
use crate::outcome::{ModuleCache, Outcome, OutcomeKind};
use crate::runtime::ResolvedRuntime;
use crate::sandbox::channel::Line;
use crate::sandbox::determinism::Determinism;
use crate::sandbox::instance::Instance;
use crate::sandbox::output::Captured;
use crate::sandbox::snapshot::restore::reseed;
use crate::sandbox::snapshot::{InterpreterModule, SnapshotSource};
use crate::sandbox::{GuestEnd, GuestSpec, MountOrigin, Preopen};
use crate::store::Resolved;
use crate::volumes::{self, ExportInfo, ExportPlan, ResolvedInput};

use super::{Executor, memory};

/// The file name plain (single-file) Python code gets in the code directory.
pub const PLAIN_CODE_FILE: &str = "main.py";

/// A booted instance of one program, with everything it was made from.
pub(super) struct Warm {
    instance: Instance,
    /// Keeps the per-execution directory (data, export, ephemeral volumes) alive.
    _exec_dir: tempfile::TempDir,
    export: Option<ExportPlan>,
    owner: String,
    time: f64,
    inputs: Vec<ResolvedInput>,
    module_cache: ModuleCache,
    /// The interpreter module the instance runs.
    interpreter: InterpreterModule,
    /// Whether the instance was restored from a snapshot.
    restored: bool,
    /// Logs written before the first request (boot, lifespan startup).
    pending_stdout: Vec<u8>,
    pending_stderr: Vec<u8>,
    served: u64,
    last_used: Instant,
    /// Runs under the determinism profile: never reused, fuel alone decides a timeout.
    reproducible: bool,
    /// Set when this is a persistent program's instance.
    pub(super) pin: Option<Pin>,
    /// What the instance holds of the node's memory budget.
    _memory: super::memory::Reservation,
}

/// What the holder of a pinned instance and the instance share.
#[derive(Debug, Default)]
pub(super) struct PinState {
    /// Set when the holder lets the instance go: it is then retired instead of kept.
    released: AtomicBool,
    /// Why the instance was discarded, when it was.
    reason: std::sync::Mutex<Option<String>>,
}

impl PinState {
    /// Lets the instance go: it is retired rather than put back in the pool.
    pub(super) fn release(&self) {
        self.released.store(true, Ordering::SeqCst);
    }

    fn released(&self) -> bool {
        self.released.load(Ordering::SeqCst)
    }

    /// Why the instance was discarded, if it was.
    pub(super) fn reason(&self) -> Option<String> {
        super::lock(&self.reason).clone()
    }
}

/// Marks a persistent program's instance. Dropped with the instance, which wakes the holder's
/// `gone` receiver.
pub(super) struct Pin {
    pub(super) state: Arc<PinState>,
    pub(super) _gone: oneshot::Sender<()>,
}

impl Warm {
    /// What the node API shows of this instance.
    pub(super) fn info(&self) -> super::status::InstanceInfo {
        super::status::InstanceInfo {
            up_seconds: self.instance.started().elapsed().as_secs_f64(),
            idle_seconds: self.last_used.elapsed().as_secs_f64(),
            requests_served: self.served,
            peak_memory_bytes: self.instance.peak_memory_bytes(),
            fuel_consumed: self.instance.fuel_consumed(),
            memory_reserved_mib: self._memory.memory_mib(),
            persistent: self.pin.is_some(),
        }
    }

    /// Pinned and not released: idle retirement leaves it alone.
    fn held(&self) -> bool {
        self.pin.as_ref().is_some_and(|p| !p.state.released())
    }

    /// Whether a healthy instance goes back to the pool after serving: a pinned one while its
    /// holder keeps it, any other only under warm isolation and when it is not reproducible.
    fn kept(&self, isolation: super::Isolation) -> bool {
        match &self.pin {
            Some(pin) => !pin.state.released(),
            None => isolation == super::Isolation::Warm && !self.reproducible,
        }
    }
}

/// How a request ended for the instance that served it.
enum Fate {
    /// Healthy: back to the pool.
    Keep,
    /// Crashed, timed out or broke the protocol: discard.
    Discard,
}

/// Why an instance did not boot.
pub(super) enum BootError {
    /// The program or its runtime failed: an `error` outcome.
    Failed(String),
    /// A reproducible boot reached the wall-clock safety net: an `inconclusive` outcome.
    SafetyNet(String),
    /// The node had no room for another instance: an `error` outcome marked refused.
    Refused(super::memory::Refused),
}

impl From<super::memory::Refused> for BootError {
    fn from(r: super::memory::Refused) -> Self {
        BootError::Refused(r)
    }
}

impl From<String> for BootError {
    fn from(e: String) -> Self {
        BootError::Failed(e)
    }
}

impl From<BootError> for String {
    fn from(e: BootError) -> Self {
        match e {
            BootError::Failed(e) | BootError::SafetyNet(e) => e,
            BootError::Refused(r) => r.message,
        }
    }
}

impl Executor {
    /// Serves one trigger of an ASGI program on a new instance.
    pub(super) async fn execute_asgi(
        &self,
        key: &str,
        program: &ProgramContent,
        runtime: ResolvedRuntime,
        trigger: &Trigger,
        determinism: Option<Determinism>,
    ) -> Result<Outcome, String> {
        let warm = match self.boot(program, &runtime, determinism).await {
            Ok(warm) => warm,
            Err(BootError::Failed(e)) => return Err(e),
            Err(BootError::Refused(r)) => return Ok(r.outcome()),
            Err(BootError::SafetyNet(e)) => {
                let mut outcome = Outcome::error(e);
                outcome.kind = OutcomeKind::Inconclusive;
                return Ok(outcome);
            }
        };
        self.serve_warm(key, program, warm, trigger).await
    }

    /// Serves one trigger on a booted instance, then keeps, retires or discards it.
    pub(super) async fn serve_warm(
        &self,
        key: &str,
        program: &ProgramContent,
        mut warm: Warm,
        trigger: &Trigger,
    ) -> Result<Outcome, String> {
        let event = match trigger {
            Trigger::Http(req) => asgi::http_event(req),
            Trigger::Job => asgi::http_event(&HttpRequest::from_line("GET /")?),
            Trigger::Cron { time } => asgi::cron_event(*time),
            Trigger::Message(body) => asgi::message_event(body),
        };
        let body = match trigger {
            Trigger::Http(req) if req.body.len() > asgi::INLINE_BODY_MAX => Some(&req.body[..]),
            _ => None,
        };
        let (mut outcome, fate) = self
            .serve(&mut warm, program, &event, body, trigger.is_event())
            .await;
        outcome
            .stdout
            .bytes
            .splice(0..0, std::mem::take(&mut warm.pending_stdout));
        outcome
            .stderr
            .bytes
            .splice(0..0, std::mem::take(&mut warm.pending_stderr));
        outcome.inputs = warm.inputs.clone();
        outcome.module_cache = Some(warm.module_cache);
        outcome.interpreter = Some(warm.interpreter.clone());
        outcome.restored = warm.restored;
        warm.module_cache = ModuleCache::Hit;
        warm.served += 1;
        warm.last_used = Instant::now();
        match fate {
            Fate::Keep if warm.kept(self.config.isolation) => self.put_idle(key, warm),
            Fate::Keep
                if self.config.retire_after_answer
                    && warm.export.is_none()
                    && warm.pin.is_none()
                    && !warm.reproducible =>
            {
                // Nothing of the retirement goes into the outcome: the answer does not wait
                // for it. The instance keeps its memory and pool reservation until it is gone.
                let limit = self.config.shutdown_timeout;
                let program = key.to_string();
                let retiring = memory::Retiring::start(&self.retiring);
                tokio::spawn(async move {
                    let _retiring = retiring;
                    let logs = end_gracefully(&warm.instance, limit).await;
                    if !logs.is_empty() {
                        tracing::debug!(
                            program,
                            "retired after its answer: {}",
                            String::from_utf8_lossy(&logs)
                        );
                    }
                    drop(warm);
                });
            }
            Fate::Keep => {
                let (export, logs) = self.retire(warm).await;
                outcome.stderr.bytes.extend_from_slice(&logs);
                match export {
                    Ok(e) => outcome.export = e,
                    Err(e) => {
                        outcome.kind = OutcomeKind::Error;
                        outcome.error = Some(e);
                    }
                }
            }
            Fate::Discard => {
                if let Some(pin) = &warm.pin {
                    *super::lock(&pin.state.reason) = Some(
                        outcome
                            .error
                            .clone()
                            .unwrap_or_else(|| format!("the {} outcome", outcome.kind.as_str())),
                    );
                }
                warm.instance.kill();
                if outcome.kind != OutcomeKind::Error
                    && let Some(plan) = &warm.export
                {
                    outcome.export =
                        volumes::collect_export(&self.store, plan, &warm.owner, warm.time).ok();
                }
            }
        }
        Ok(outcome)
    }

    /// An idle warm instance of the program `key`, if there is one.
    pub(super) fn take_idle(&self, key: &str) -> Option<Warm> {
        let mut pool = super::lock(&self.pool);
        let idle = pool.get_mut(key)?;
        idle.pop()
    }

    /// Takes out of the pool the idle instance unused for the longest time, of any program
    /// (pinned instances stay).
    pub(super) fn take_least_recently_used(&self) -> Option<Warm> {
        let mut pool = super::lock(&self.pool);
        let (key, index) = pool
            .iter()
            .flat_map(|(k, idle)| {
                idle.iter()
                    .enumerate()
                    .filter(|(_, w)| !w.held())
                    .map(move |(i, w)| (w.last_used, k.clone(), i))
            })
            .min_by_key(|(used, _, _)| *used)
            .map(|(_, k, i)| (k, i))?;
        let idle = pool.get_mut(&key)?;
        let warm = idle.remove(index);
        if idle.is_empty() {
            pool.remove(&key);
        }
        Some(warm)
    }

    /// Whether the program `key` has an idle warm instance.
    pub(super) fn has_idle(&self, key: &str) -> bool {
        super::lock(&self.pool)
            .get(key)
            .is_some_and(|idle| !idle.is_empty())
    }

    pub(super) fn put_idle(&self, key: &str, warm: Warm) {
        super::lock(&self.pool)
            .entry(key.to_string())
            .or_default()
            .push(warm);
    }

    /// Takes out of the pool every idle instance of the programs `key` accepts for which
    /// `stale` holds.
    fn take_idle_where(
        &self,
        key: impl Fn(&str) -> bool,
        stale: impl Fn(&Warm) -> bool,
    ) -> Vec<Warm> {
        let mut pool = super::lock(&self.pool);
        let mut out = Vec::new();
        for (k, idle) in pool.iter_mut() {
            if !key(k) {
                continue;
            }
            let (old, keep): (Vec<Warm>, Vec<Warm>) =
                std::mem::take(idle).into_iter().partition(&stale);
            *idle = keep;
            out.extend(old);
        }
        pool.retain(|_, v| !v.is_empty());
        out
    }

    /// Retires every idle instance unused for `older_than` or longer, except the instances
    /// persistent programs hold.
    pub async fn retire_idle(&self, older_than: Duration) {
        let stale = self.take_idle_where(
            |_| true,
            |w| !w.held() && w.last_used.elapsed() >= older_than,
        );
        for warm in stale {
            let _ = self.retire(warm).await;
        }
    }

    /// Retires the idle instances of the program `key` (not the one a persistent program
    /// holds): the next execution boots a fresh one, resolving its refs again. Returns how
    /// many were retired.
    pub async fn retire_program(&self, key: &str) -> usize {
        let stale = self.take_idle_where(|k| k == key, |w| !w.held());
        let n = stale.len();
        for warm in stale {
            let _ = self.retire(warm).await;
        }
        n
    }

    /// Retires the pinned instance that shares `state`, if it is idle; a busy one is retired
    /// once its request ends (the pin is released first).
    pub(super) async fn retire_pinned(&self, key: &str, state: &Arc<PinState>) {
        state.release();
        let pinned = self.take_idle_where(
            |k| k == key,
            |w| w.pin.as_ref().is_some_and(|p| Arc::ptr_eq(&p.state, state)),
        );
        for warm in pinned {
            let _ = self.retire(warm).await;
        }
    }

    /// Retires every idle instance now, persistent programs' too (lifespan shutdown, export).
    pub async fn shutdown(&self) {
        let all = self.take_idle_where(|_| true, |_| true);
        for warm in all {
            if let Some(pin) = &warm.pin {
                pin.state.release();
            }
            let _ = self.retire(warm).await;
        }
    }

    /// Boots an instance: interpreter, app import, lifespan startup.
    pub(super) async fn boot(
        &self,
        program: &ProgramContent,
        runtime: &ResolvedRuntime,
        determinism: Option<Determinism>,
    ) -> Result<Warm, BootError> {
        let memory = self.reserve_memory(program.resources.memory_mib).await?;
        let interp = runtime
            .interpreter()
            .ok_or_else(|| "content.runtime: not an interpreter runtime".to_string())?;
        let mut inputs = vec![ResolvedInput {
            field: "content.runtime".into(),
            resolved: runtime.resolved.clone(),
        }];
        let code = self.python_code(program)?;
        inputs.extend(code.input.clone());
        let (code_dir, plain) = (code.dir.clone(), code.plain);
        let boot_dir = self.bootstrap_dir(runtime)?;
        let exec_dir = tempfile::tempdir_in(self.store.tmp_dir())
            .map_err(|e| format!("cannot make the execution directory: {e}"))?;
        let mut mounts = volumes::prepare(
            &self.store,
            program,
            Some(&code_dir),
            &[volumes::CODE_MOUNT, interp.bootstrap_mount.as_str()],
            exec_dir.path(),
            &self.config.volumes,
        )
        .map_err(|e| e.to_string())?;
        inputs.extend(mounts.inputs.iter().cloned());
        mounts.preopens.insert(
            1,
            Preopen {
                host: boot_dir.clone(),
                guest: interp.bootstrap_mount.clone(),
                writable: false,
                quota_bytes: None,
                origin: MountOrigin::Shared,
            },
        );
        let entry = &program.code.entrypoint;
        let (module_part, attr) = entry.split_once(':').unwrap_or(("", entry.as_str()));
        let mut env: Vec<(String, String)> = interp.env.clone().into_iter().collect();
        env.extend(
            program
                .variables
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        env.push(("ALEPH_WASM_CODE".into(), volumes::CODE_MOUNT.into()));
        if plain {
            env.push(("ALEPH_WASM_PLAIN".into(), PLAIN_CODE_FILE.into()));
            env.push(("ALEPH_WASM_ENTRYPOINT".into(), attr.into()));
        } else if module_part.is_empty() {
            return Err(BootError::Failed(format!(
                "content.code.entrypoint: {entry:?} must be \"module:attribute\" for archive code"
            )));
        } else {
            env.push(("ALEPH_WASM_ENTRYPOINT".into(), entry.clone()));
        }
        env.push(("ALEPH_WASM_PATHS".into(), extra_paths(program).join(":")));
        let spec = GuestSpec {
            args: interp.argv.clone(),
            env,
            stdin: Vec::new(),
            preopens: mounts.preopens,
            memory_bytes: program.resources.memory_mib.saturating_mul(1 << 20),
            seconds: program.resources.seconds,
            determinism,
        };
        let reproducible = spec.determinism.is_some();
        let boot_limit = self
            .sandbox
            .config()
            .wall_limit(self.config.boot_timeout, reproducible);
        let boot_fuel = self
            .config
            .boot_timeout
            .as_secs()
            .saturating_mul(self.sandbox.config().fuel_per_second);
        // Restored from the program's snapshot when there can be one, else a cold start.
        let mut content: Vec<String> = inputs
            .iter()
            .map(|i| i.resolved.file_hash.clone())
            .collect();
        content.push(code.identity.clone());
        let source = SnapshotSource {
            interpreter_sha256: interp.sha256.clone(),
            interpreter_path: interp.path.clone(),
            content,
        };
        let determinism = spec.determinism.clone();
        let started = self
            .sandbox
            .start_interpreter(&source, &spec, boot_fuel, self.config.boot_timeout)
            .await?;
        let (instance, from_cache) = (started.instance, started.from_cache);
        let mut warm = Warm {
            instance,
            _exec_dir: exec_dir,
            export: mounts.export,
            owner: program.address.clone(),
            time: program.time,
            inputs,
            module_cache: if from_cache {
                ModuleCache::Hit
            } else {
                ModuleCache::Miss
            },
            interpreter: started.module,
            restored: started.restored,
            pending_stdout: Vec::new(),
            pending_stderr: Vec::new(),
            served: 0,
            last_used: Instant::now(),
            reproducible,
            pin: None,
            _memory: memory,
        };
        // The import of the app, then lifespan startup, each within the boot budget.
        let boot = collect(&warm.instance, boot_limit, None, |x| {
            x.ready || x.boot_error.is_some()
        })
        .await;
        warm.pending_stdout.extend_from_slice(&boot.exchange.stdout);
        warm.pending_stderr.extend_from_slice(&boot.exchange.stderr);
        if let Some((message, traceback)) = &boot.exchange.boot_error {
            warm.instance.kill();
            return Err(BootError::Failed(format!(
                "the app could not be loaded: {message}\n{traceback}"
            )));
        }
        if !boot.exchange.ready {
            warm.instance.kill();
            return Err(boot.failure(
                "booting the interpreter",
                boot_limit,
                &warm.instance,
                reproducible,
            ));
        }
        // The first event of every instance; a restored one has had it.
        if !started.restored
            && let Err(e) = reseed(&warm.instance, determinism.as_ref()).await
        {
            warm.instance.kill();
            return Err(BootError::Failed(format!("booting the interpreter: {e}")));
        }
        warm.instance
            .send(&asgi::event_line(&asgi::lifespan_event("startup")));
        let startup = collect(&warm.instance, boot_limit, None, |x| x.done).await;
        warm.pending_stdout
            .extend_from_slice(&startup.exchange.stdout);
        warm.pending_stderr
            .extend_from_slice(&startup.exchange.stderr);
        if !startup.exchange.done {
            warm.instance.kill();
            return Err(startup.failure(
                "lifespan startup",
                boot_limit,
                &warm.instance,
                reproducible,
            ));
        }
        if let Some((result, message)) = &startup.exchange.lifespan
            && result == "failed"
        {
            warm.instance.kill();
            return Err(BootError::Failed(format!(
                "lifespan startup failed: {}",
                message.as_deref().unwrap_or("(no message)")
            )));
        }
        Ok(warm)
    }

    /// Serves one event on a booted instance. For an `is_event` trigger (cron tick, message)
    /// the app returning without a response is a success.
    async fn serve(
        &self,
        warm: &mut Warm,
        program: &ProgramContent,
        event: &serde_json::Value,
        body: Option<&[u8]>,
        is_event: bool,
    ) -> (Outcome, Fate) {
        let deadline = self.sandbox.config().wall_limit(
            Duration::from_secs(program.resources.seconds.max(1)),
            warm.reproducible,
        );
        // The fuel count moves at each read of stdin: start from the guest's next read, so the
        // tail of the previous event is not counted against this one.
        let settle = if warm.reproducible {
            deadline
        } else {
            Duration::from_secs(1)
        };
        let _ = tokio::time::timeout(settle, warm.instance.wait_idle()).await;
        let fuel_before = warm.instance.fuel_consumed();
        let refusals_before = warm.instance.memory_refusals();
        let started = Instant::now();
        warm.instance.send(&asgi::event_line(event));
        let got = collect(&warm.instance, deadline, body, |x| x.done).await;
        let mut outcome = Outcome::error("");
        outcome.error = None;
        outcome.elapsed_ms = started.elapsed().as_millis() as u64;
        let x = &got.exchange;
        let (dropped, frame_lost) = warm.instance.output_losses();
        outcome.stdout = Captured {
            bytes: x.stdout.clone(),
            dropped,
        };
        outcome.stderr = Captured {
            bytes: x.stderr.clone(),
            dropped: 0,
        };
        if !x.done {
            let end = warm.instance.ended();
            warm.instance.kill();
            outcome.fuel_consumed = warm
                .instance
                .fuel_consumed_now()
                .saturating_sub(fuel_before);
            let (kind, error) = match end {
                Some(GuestEnd::Timeout(why)) => (OutcomeKind::Timeout, why),
                Some(GuestEnd::OutOfMemory(why)) => (OutcomeKind::OutOfMemory, why),
                Some(GuestEnd::Trap(why)) => (OutcomeKind::Trap, why),
                Some(GuestEnd::StackOverflow(why)) => (OutcomeKind::StackOverflow, why),
                Some(GuestEnd::Exited(code)) => {
                    outcome.exit_code = Some(code);
                    (
                        OutcomeKind::Exit,
                        format!("the interpreter exited with code {code} during the request"),
                    )
                }
                Some(GuestEnd::Error(why)) => (OutcomeKind::Error, why),
                Some(GuestEnd::Inconclusive(why)) => (OutcomeKind::Inconclusive, why),
                None if got.timed_out && warm.reproducible => (
                    OutcomeKind::Inconclusive,
                    format!(
                        "the wall-clock safety net of {} s was reached before the fuel budget ran out",
                        deadline.as_secs()
                    ),
                ),
                None if got.timed_out => (
                    OutcomeKind::Timeout,
                    format!("wall-clock deadline of {} s reached", deadline.as_secs()),
                ),
                None => (
                    OutcomeKind::Error,
                    "the instance stopped answering".to_string(),
                ),
            };
            outcome.kind = kind;
            outcome.error = Some(error);
            return (outcome, Fate::Discard);
        }
        // Let the guest get back to its read of stdin: the meter then has the request's fuel.
        // A reproducible execution's fuel must be complete: wait for the read as long as needed.
        let _ = tokio::time::timeout(settle, warm.instance.wait_idle()).await;
        outcome.fuel_consumed = warm.instance.fuel_consumed().saturating_sub(fuel_before);
        if frame_lost || !x.bad_frames.is_empty() {
            outcome.kind = OutcomeKind::Error;
            outcome.error = Some(if frame_lost {
                "the response is larger than the output limit".to_string()
            } else {
                format!("malformed frames from the bootstrap: {:?}", x.bad_frames)
            });
            return (outcome, Fate::Discard);
        }
        if let Some(message) = &x.protocol_error {
            outcome.kind = OutcomeKind::Error;
            outcome.error = Some(format!("the app broke the ASGI protocol: {message}"));
            return (outcome, Fate::Keep);
        }
        let complete = x.status.is_some() && x.body_complete;
        if is_event
            && x.status.is_none()
            && x.app_error
                .as_deref()
                .is_none_or(|e| e == asgi::RETURNED_WITHOUT_RESPONSE)
        {
            outcome.kind = OutcomeKind::Ok;
            return (outcome, Fate::Keep);
        }
        if complete {
            outcome.status = x.status;
            outcome.headers = x.headers.clone();
            outcome.body = x.body.clone();
        }
        match (complete, &x.app_error) {
            (true, None) => outcome.kind = OutcomeKind::Ok,
            (true, Some(message)) => {
                // The response was complete (a framework's own 500 page, say): it stands.
                outcome.kind = OutcomeKind::Error;
                outcome.error = Some(format!("the app raised {message} after its response"));
            }
            (false, Some(message)) if x.status.is_none() => {
                outcome.kind = OutcomeKind::Error;
                outcome.status = Some(500);
                outcome.headers = vec![("content-type".into(), "text/plain; charset=utf-8".into())];
                outcome.body = b"Internal Server Error".to_vec();
                outcome.error = Some(format!("the app raised {message}"));
            }
            (false, Some(message)) => {
                outcome.kind = OutcomeKind::Error;
                outcome.error = Some(format!(
                    "the app raised {message} after starting its response"
                ));
            }
            (false, None) => {
                outcome.kind = OutcomeKind::Error;
                outcome.error = Some(if x.status.is_none() {
                    "the app returned without sending a response".into()
                } else {
                    "the app returned before the last part of its response body".into()
                });
            }
        }
        if outcome.kind != OutcomeKind::Ok && warm.instance.memory_refusals() > refusals_before {
            // The limit refused memory and the request then failed: out of memory, whatever
            // the app made of its MemoryError. The instance may be left in a bad state.
            outcome.kind = OutcomeKind::OutOfMemory;
            outcome.error = Some(format!(
                "memory growth refused by the limit of {} MiB; then: {}",
                program.resources.memory_mib,
                outcome.error.as_deref().unwrap_or("the request failed")
            ));
            return (outcome, Fate::Discard);
        }
        (outcome, Fate::Keep)
    }

    /// Stops an instance gracefully: lifespan shutdown, end of stdin, then its export.
    /// Returns the export and what the program logged meanwhile.
    pub(super) async fn retire(&self, warm: Warm) -> (Result<Option<ExportInfo>, String>, Vec<u8>) {
        let logs = end_gracefully(&warm.instance, self.config.shutdown_timeout).await;
        let export = match &warm.export {
            Some(plan) => volumes::collect_export(&self.store, plan, &warm.owner, warm.time)
                .map(Some)
                .map_err(|e| e.to_string()),
            None => Ok(None),
        };
        (export, logs)
    }

    /// The code directory (read-only, cached) and whether the code is a single plain file.
    fn python_code(&self, program: &ProgramContent) -> Result<PythonCode, String> {
        let code = &program.code;
        let resolved = match &code.source {
            CodeSource::Inline(text) => {
                let hash = self
                    .store
                    .put_object(text.as_bytes())
                    .map_err(|e| format!("content.code: {e}"))?;
                let path = self
                    .store
                    .verify_object(&hash)
                    .map_err(|e| format!("content.code: {e}"))?;
                Resolved {
                    reference: hash.clone(),
                    message_hash: String::new(),
                    file_hash: hash,
                    path,
                }
            }
            CodeSource::Ref(r) => self
                .store
                .resolve(r)
                .map_err(|e| format!("content.code: {e}"))?,
        };
        let input = match &code.source {
            CodeSource::Ref(_) => Some(ResolvedInput {
                field: "content.code".into(),
                resolved: resolved.clone(),
            }),
            CodeSource::Inline(_) => None,
        };
        let dir = volumes::unpack_encoded(
            &self.store,
            &resolved,
            code.encoding,
            PLAIN_CODE_FILE,
            &self.config.volumes.unpack,
        )
        .map_err(|e| format!("content.code: {e}"))?;
        Ok(PythonCode {
            dir,
            plain: code.encoding == Encoding::Plain,
            identity: format!("code {} {:?}", resolved.file_hash, code.encoding),
            input,
        })
    }

    /// The runtime's bootstrap files, laid out once in the cache (read-only mount).
    fn bootstrap_dir(&self, runtime: &ResolvedRuntime) -> Result<PathBuf, String> {
        let interp = runtime
            .interpreter()
            .ok_or_else(|| "content.runtime: not an interpreter runtime".to_string())?;
        let cache = self
            .store
            .cache_dir("bootstrap")
            .map_err(|e| e.to_string())?;
        let dir = cache.join(&runtime.resolved.file_hash);
        if dir.join(".complete").is_file() {
            return Ok(dir.join("root"));
        }
        let work = tempfile::tempdir_in(self.store.tmp_dir()).map_err(|e| e.to_string())?;
        let root = work.path().join("root");
        std::fs::create_dir(&root).map_err(|e| e.to_string())?;
        for (name, path) in &interp.bootstrap {
            if Path::new(name).components().count() != 1 || name.starts_with('.') {
                return Err(format!(
                    "runtime bootstrap file name {name:?} is not a plain file name"
                ));
            }
            std::fs::copy(path, root.join(name)).map_err(|e| format!("{name}: {e}"))?;
        }
        std::fs::write(work.path().join(".complete"), b"").map_err(|e| e.to_string())?;
        let work = work.keep();
        if std::fs::rename(&work, &dir).is_err() {
            let _ = std::fs::remove_dir_all(&work);
        }
        Ok(dir.join("root"))
    }
}

/// A program's code, unpacked for its mount.
struct PythonCode {
    /// Where it is unpacked.
    dir: PathBuf,
    /// Whether it is a single plain file.
    plain: bool,
    /// What it is, independent of where it is (its hash and encoding).
    identity: String,
    /// The resolved code object, for code given by ref.
    input: Option<ResolvedInput>,
}

/// Ends an instance gracefully: lifespan shutdown (within `limit`), end of stdin, at most 2 s
/// for the interpreter to exit, then the instance is stopped. Returns what the program logged
/// meanwhile.
async fn end_gracefully(instance: &Instance, limit: Duration) -> Vec<u8> {
    let mut logs = Vec::new();
    if instance.ended().is_none() {
        instance.send(&asgi::event_line(&asgi::lifespan_event("shutdown")));
        let got = collect(instance, limit, None, |x| x.done).await;
        logs.extend_from_slice(&got.exchange.stderr);
        instance.close_stdin();
        let _ = instance.wait_end(Duration::from_secs(2)).await;
    }
    instance.kill();
    logs
}

/// Extra `sys.path` entries: the library folders of read-only volumes (`M/packages`,
/// `M/lib/python3.12/site-packages`, and `M` itself).
fn extra_paths(program: &ProgramContent) -> Vec<String> {
    let mut out = Vec::new();
    for v in &program.volumes {
        if let Volume::Immutable { mount: Some(m), .. } = v {
            let m = m.as_str();
            out.push(format!("{m}/lib/python3.12/site-packages"));
            out.push(format!("{m}/packages"));
            out.push(m.to_string());
        }
    }
    out
}

/// What [`collect`] gathered.
struct Collected {
    exchange: Exchange,
    timed_out: bool,
}

impl Collected {
    fn failure(
        &self,
        what: &str,
        limit: Duration,
        instance: &Instance,
        reproducible: bool,
    ) -> BootError {
        match instance.ended() {
            Some(end) => BootError::Failed(format!("{what}: the interpreter ended: {end:?}")),
            None if self.timed_out && reproducible => BootError::SafetyNet(format!(
                "{what}: the wall-clock safety net of {} s was reached before the fuel budget \
                 ran out",
                limit.as_secs()
            )),
            None if self.timed_out => {
                BootError::Failed(format!("{what}: no answer within {} s", limit.as_secs()))
            }
            None => BootError::Failed(format!("{what}: the instance stopped answering")),
        }
    }
}

/// Reads lines from the instance until `until` holds, the instance ends, or `limit` passes.
/// When the guest asks for the request body on stdin (a `read` frame), `body` is sent.
async fn collect(
    instance: &Instance,
    limit: Duration,
    body: Option<&[u8]>,
    until: impl Fn(&Exchange) -> bool,
) -> Collected {
    let mut exchange = Exchange::default();
    let read = async {
        while let Some(line) = instance.next_line().await {
            match line {
                Line::Frame(frame) => {
                    exchange.take_frame(&frame);
                    if let Some(wanted) = exchange.read_request.take()
                        && let Some(body) = body.filter(|b| b.len() == wanted)
                    {
                        instance.send(body);
                    }
                }
                Line::Log(text) => {
                    exchange.stdout.extend_from_slice(&text);
                    exchange.stdout.push(b'\n');
                }
            }
            if until(&exchange) {
                return true;
            }
        }
        false
    };
    let timed_out = tokio::time::timeout(limit, read).await.is_err();
    Collected {
        exchange,
        timed_out,
    }
}
