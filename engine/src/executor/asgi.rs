//! ASGI programs on an interpreter runtime: instances that boot once (interpreter start, app
//! import, lifespan startup) and then serve requests — many at once, interleaved at their
//! awaits, over the instance's channel session (`crate::channel`, protocol AW4).
//!
//! Each program has a pool of live instances. A request claims a place on the least busy
//! instance with fewer than [`ExecutorConfig::instance_concurrency`] requests in flight, or
//! boots a new one (at most `vcpus` instances per program, one for a program that mounts a
//! persistent volume: `executor::volume_lease`), or waits for a place. It is
//! served under `resources.seconds` (a wall-clock deadline; fuel granted per request, see
//! `sandbox::meter`). A request past its deadline is cancelled in the guest and answered with
//! a timeout; if the guest does not let go of it within [`CANCEL_GRACE`] (a loop that never
//! yields), the instance is discarded, and so is one that crashes, runs out of memory or breaks
//! the protocol: every other request in flight on it ends with an error that says why. Idle
//! instances retire after [`ExecutorConfig::idle_timeout`]: lifespan shutdown, end of stdin,
//! export packed. Under [`Isolation::PerRequest`](super::Isolation::PerRequest), and for
//! reproducible programs (whose instances serve sequentially), an instance serves one request
//! and is retired right after it.
//!
//! A persistent program's instance is *pinned* ([`Pin`], see `executor::persistent`): it sits
//! in the same pool and serves requests and events like any other, but idle retirement passes
//! it by, and when it goes away (discarded after a crash, retired at shutdown) its holder is
//! told, so it can start another.
//!
//! [`ExecutorConfig::instance_concurrency`]: super::ExecutorConfig::instance_concurrency
//! [`ExecutorConfig::idle_timeout`]: super::ExecutorConfig::idle_timeout

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::channel::Frame;
use crate::interface::asgi::{self, Exchange};
use crate::interface::{HttpRequest, Trigger};
use crate::message::{CodeSource, Encoding, ProgramContent, Volume};
use crate::outcome::{ModuleCache, Outcome, OutcomeKind};
use crate::runtime::ResolvedRuntime;
use crate::sandbox::determinism::Determinism;
use crate::sandbox::instance::Instance;
use crate::sandbox::output::Captured;
use crate::sandbox::snapshot::restore::enter;
use crate::sandbox::snapshot::{InterpreterModule, SnapshotSource};
use crate::sandbox::{GuestEnd, GuestSpec, MountOrigin, Preopen};
use crate::store::Resolved;
use crate::volumes::{self, ExportInfo, ExportPlan, ResolvedInput};

use super::{Executor, memory};

/// The file name plain (single-file) Python code gets in the code directory.
pub const PLAIN_CODE_FILE: &str = "main.py";

/// How long a request cancelled at its deadline has to end in the guest before the instance
/// is taken to be stuck (a loop that never yields) and discarded.
pub const CANCEL_GRACE: Duration = Duration::from_secs(1);

/// What changes while an instance serves.
#[derive(Debug)]
struct Live {
    /// Whether the instance's module was compiled and cached before it started (reported by
    /// its first outcome only).
    module_cache: ModuleCache,
    /// Logs written before the first request (boot, lifespan startup).
    pending_stdout: Vec<u8>,
    pending_stderr: Vec<u8>,
    served: u64,
    last_used: Instant,
    /// Why the instance was discarded, once it was, and whether it was stuck (a request ran
    /// without yielding past its deadline: every request in flight on it then timed out).
    broken: Option<(String, bool)>,
}

/// A booted instance of one program, with everything it was made from.
pub(super) struct Warm {
    instance: Instance,
    /// Keeps the per-execution directory (data, export, ephemeral volumes) alive.
    _exec_dir: tempfile::TempDir,
    export: Option<ExportPlan>,
    /// Whether what the program writes outlives the instance (an export mount, a persistent
    /// volume): then its interpreter exits properly at retirement, flushing its files.
    durable: bool,
    owner: String,
    time: f64,
    inputs: Vec<ResolvedInput>,
    /// A reproducible execution's reads through the guest API.
    reads: Option<crate::host::recorded::ReadLog>,
    /// The interpreter module the instance runs.
    interpreter: InterpreterModule,
    /// Whether the instance was restored from a snapshot.
    restored: bool,
    /// Runs under the determinism profile: serves sequentially, never reused, fuel alone
    /// decides a timeout.
    reproducible: bool,
    /// Set when this is a persistent program's instance.
    pub(super) pin: Option<Pin>,
    /// What the instance holds of the node's memory budget.
    _memory: super::memory::Reservation,
    live: std::sync::Mutex<Live>,
    /// Requests and events in flight on it.
    in_flight: AtomicUsize,
    /// Set once its retirement has begun (by whoever takes it out of service).
    retiring: AtomicBool,
    /// The persistent volumes it mounts, held until it is gone (the last field: let go after
    /// everything else).
    lease: super::volume_lease::VolumeLease,
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
        let live = super::lock(&self.live);
        super::status::InstanceInfo {
            up_seconds: self.instance.started().elapsed().as_secs_f64(),
            idle_seconds: if self.busy() {
                0.0
            } else {
                live.last_used.elapsed().as_secs_f64()
            },
            requests_served: live.served,
            requests_in_flight: self.in_flight.load(Ordering::SeqCst),
            peak_memory_bytes: self.instance.peak_memory_bytes(),
            fuel_consumed: self.instance.fuel_consumed_now(),
            memory_reserved_mib: self._memory.memory_mib(),
            persistent: self.pin.is_some(),
        }
    }

    /// Pinned and not released: idle retirement leaves it alone.
    fn held(&self) -> bool {
        self.pin.as_ref().is_some_and(|p| !p.state.released())
    }

    fn busy(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst) > 0
    }

    fn last_used(&self) -> Instant {
        super::lock(&self.live).last_used
    }

    /// Whether a healthy instance stays in service after serving: a pinned one while its
    /// holder keeps it, any other only under warm isolation and when it is not reproducible.
    fn kept(&self, isolation: super::Isolation) -> bool {
        match &self.pin {
            Some(pin) => !pin.state.released(),
            None => isolation == super::Isolation::Warm && !self.reproducible,
        }
    }

    /// Takes the instance out of service; true for the one caller that should retire it.
    fn begin_retiring(&self) -> bool {
        !self.retiring.swap(true, Ordering::SeqCst)
    }

    /// Discards the instance: every request in flight on it ends, told `why`.
    fn discard(&self, why: &str, stuck: bool) {
        super::lock(&self.live)
            .broken
            .get_or_insert_with(|| (why.to_string(), stuck));
        if let Some(pin) = &self.pin {
            super::lock(&pin.state.reason).get_or_insert_with(|| why.to_string());
        }
        self.retiring.store(true, Ordering::SeqCst);
        self.instance.kill();
    }
}

/// How a request ended for the instance that served it.
enum Fate {
    /// Healthy: it stays in service.
    Keep,
    /// Crashed, out of memory, broke the protocol, or stuck past a request's deadline (then
    /// every request in flight on it timed out): discard it, with the reason.
    Discard {
        /// Why.
        why: String,
        /// Whether it was stuck.
        stuck: bool,
    },
}

impl Fate {
    fn discard(why: impl Into<String>) -> Self {
        Fate::Discard {
            why: why.into(),
            stuck: false,
        }
    }
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

impl BootError {
    /// The outcome of an execution whose instance did not boot.
    pub(super) fn outcome(self) -> Outcome {
        match self {
            BootError::Failed(e) => Outcome::error(e),
            BootError::Refused(r) => r.outcome(),
            BootError::SafetyNet(e) => {
                let mut outcome = Outcome::error(e);
                outcome.kind = OutcomeKind::Inconclusive;
                outcome
            }
        }
    }
}

/// What a request finds when it looks for an instance of its program.
pub(super) enum Claim {
    /// A place on a live instance (its count of requests in flight already includes this one).
    Instance(Arc<Warm>),
    /// Room to boot a new shared instance: the program has fewer than `vcpus`. Dropping the
    /// guard gives the room back.
    Boot(Booting),
    /// The program's instances are not shared (per-request isolation): boot one of its own.
    Exclusive,
    /// Every instance is full and no more may be booted: wait for a change and look again.
    Wait,
}

/// Room taken to boot one instance of a program.
pub(super) struct Booting {
    executor_booting: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    key: String,
    changed: Arc<tokio::sync::Notify>,
}

impl Drop for Booting {
    fn drop(&mut self) {
        let mut booting = super::lock(&self.executor_booting);
        if let Some(n) = booting.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                booting.remove(&self.key);
            }
        }
        drop(booting);
        self.changed.notify_waiters();
    }
}

impl Executor {
    /// Looks for a place for one more request of the program `key`: at most `vcpus` shared
    /// instances, each with at most `instance_concurrency` requests in flight. With `shared`
    /// false (per-request isolation) only a live instance (a persistent program's) is shared.
    pub(super) fn claim(&self, key: &str, vcpus: usize, shared: bool) -> Claim {
        let per_instance = self.config.instance_concurrency.max(1);
        let pool = super::lock(&self.pool);
        let live: Vec<(usize, &Arc<Warm>)> = pool
            .get(key)
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter(|w| !w.retiring.load(Ordering::SeqCst))
            .map(|w| (w.in_flight.load(Ordering::SeqCst), w))
            .collect();
        let least = live
            .iter()
            .filter(|(n, _)| *n < per_instance)
            .min_by_key(|(n, _)| *n);
        let take = |warm: &Arc<Warm>| {
            warm.in_flight.fetch_add(1, Ordering::SeqCst);
            Claim::Instance(warm.clone())
        };
        // An idle instance first; then another instance while the program has fewer than
        // `vcpus` (requests spread over the cores it may use); then a place beside others.
        if let Some((0, warm)) = least {
            return take(warm);
        }
        let mut booting = super::lock(&self.booting);
        let n = booting.get(key).copied().unwrap_or(0);
        if !shared || live.len() + n >= vcpus.max(1) {
            return match least {
                Some((_, warm)) => take(warm),
                None if !shared => Claim::Exclusive,
                None => Claim::Wait,
            };
        }
        booting.insert(key.to_string(), n + 1);
        drop(booting);
        Claim::Boot(Booting {
            executor_booting: self.booting.clone(),
            key: key.to_string(),
            changed: self.pool_changed.clone(),
        })
    }

    /// Boots an instance of an ASGI program and serves `trigger` on it: kept in the pool for
    /// more requests when the program's instances are shared, else retired after it.
    pub(super) async fn execute_asgi(
        &self,
        key: &str,
        program: &ProgramContent,
        runtime: ResolvedRuntime,
        trigger: &Trigger,
        determinism: Option<Determinism>,
        booting: Option<Booting>,
    ) -> Result<Outcome, String> {
        let warm = match self.boot(key, program, &runtime, determinism).await {
            Ok(warm) => Arc::new(warm),
            Err(e) => return Ok(e.outcome()),
        };
        warm.in_flight.fetch_add(1, Ordering::SeqCst);
        if booting.is_some() && warm.kept(self.config.isolation) {
            self.put_live(key, warm.clone());
        }
        drop(booting);
        self.serve_warm(key, program, warm, trigger).await
    }

    /// Serves one trigger on an instance on which a place was claimed for it, then keeps,
    /// retires or discards the instance.
    pub(super) async fn serve_warm(
        &self,
        key: &str,
        program: &ProgramContent,
        warm: Arc<Warm>,
        trigger: &Trigger,
    ) -> Result<Outcome, String> {
        let (mut outcome, fate) = self.serve(&warm, program, trigger).await;
        let logs = warm.instance.session().take_logs();
        {
            let mut live = super::lock(&warm.live);
            let mut stdout = std::mem::take(&mut live.pending_stdout);
            stdout.extend_from_slice(&logs.stdout);
            outcome.stdout.bytes.splice(0..0, stdout);
            let mut stderr = std::mem::take(&mut live.pending_stderr);
            stderr.extend_from_slice(&logs.stderr);
            outcome.stderr.bytes.splice(0..0, stderr);
            outcome.module_cache =
                Some(std::mem::replace(&mut live.module_cache, ModuleCache::Hit));
            live.served += 1;
            live.last_used = Instant::now();
        }
        outcome.inputs = warm.inputs.clone();
        super::reproducible::record_reads(&mut outcome, warm.reads.as_ref());
        outcome.interpreter = Some(warm.interpreter.clone());
        outcome.restored = warm.restored;
        let left = warm.in_flight.fetch_sub(1, Ordering::SeqCst) - 1;
        self.pool_changed.notify_waiters();
        match fate {
            // Already discarded, by another request in flight on it.
            Fate::Discard { .. } if warm.retiring.load(Ordering::SeqCst) => {
                self.remove_live(key, &warm);
            }
            Fate::Discard { why, stuck } => {
                warm.discard(&why, stuck);
                self.remove_live(key, &warm);
                if outcome.kind != OutcomeKind::Error
                    && let Some(plan) = &warm.export
                {
                    outcome.export =
                        volumes::collect_export(&self.store, plan, &warm.owner, warm.time).ok();
                }
            }
            Fate::Keep if warm.kept(self.config.isolation) => {}
            Fate::Keep => {
                self.remove_live(key, &warm);
                if left > 0 || !warm.begin_retiring() {
                    // The last request in flight retires it.
                } else if self.config.retire_after_answer
                    && warm.export.is_none()
                    && warm.pin.is_none()
                    && !warm.reproducible
                {
                    // Nothing of the retirement goes into the outcome: the answer does not
                    // wait for it. The instance keeps its memory and pool reservation until
                    // it is gone.
                    let limit = self.config.shutdown_timeout;
                    let program = key.to_string();
                    let retiring = memory::Retiring::start(&self.retiring);
                    tokio::spawn(async move {
                        let _retiring = retiring;
                        let logs = end_gracefully(&warm.instance, limit, warm.durable).await;
                        if !logs.is_empty() {
                            tracing::debug!(
                                program,
                                "retired after its answer: {}",
                                String::from_utf8_lossy(&logs)
                            );
                        }
                        drop(warm);
                    });
                } else {
                    let (export, logs) = self.retire(&warm).await;
                    outcome.stderr.bytes.extend_from_slice(&logs);
                    match export {
                        Ok(e) => outcome.export = e,
                        Err(e) => {
                            outcome.kind = OutcomeKind::Error;
                            outcome.error = Some(e);
                        }
                    }
                }
            }
        }
        Ok(outcome)
    }

    /// Adds a live instance to the program's pool.
    pub(super) fn put_live(&self, key: &str, warm: Arc<Warm>) {
        super::lock(&self.pool)
            .entry(key.to_string())
            .or_default()
            .push(warm);
        self.pool_changed.notify_waiters();
    }

    fn remove_live(&self, key: &str, warm: &Arc<Warm>) {
        let mut pool = super::lock(&self.pool);
        if let Some(live) = pool.get_mut(key) {
            live.retain(|w| !Arc::ptr_eq(w, warm));
            if live.is_empty() {
                pool.remove(key);
            }
        }
        drop(pool);
        self.pool_changed.notify_waiters();
    }

    /// Takes out of the pool the idle instance unused for the longest time, of any program
    /// (pinned instances stay).
    pub(super) fn take_least_recently_used(&self) -> Option<Arc<Warm>> {
        let mut pool = super::lock(&self.pool);
        let (key, index) = pool
            .iter()
            .flat_map(|(k, live)| {
                live.iter()
                    .enumerate()
                    .filter(|(_, w)| !w.held() && !w.busy())
                    .map(move |(i, w)| (w.last_used(), k.clone(), i))
            })
            .min_by_key(|(used, _, _)| *used)
            .map(|(_, k, i)| (k, i))?;
        let live = pool.get_mut(&key)?;
        let warm = live.remove(index);
        if live.is_empty() {
            pool.remove(&key);
        }
        warm.begin_retiring().then_some(warm)
    }

    /// Whether the program `key` has a live instance.
    pub(super) fn has_live(&self, key: &str) -> bool {
        super::lock(&self.pool).contains_key(key)
    }

    /// Whether the program `key` has a live instance with room for one more request.
    pub(super) fn has_room(&self, key: &str) -> bool {
        let per_instance = self.config.instance_concurrency.max(1);
        super::lock(&self.pool).get(key).is_some_and(|live| {
            live.iter().any(|w| {
                !w.retiring.load(Ordering::SeqCst)
                    && w.in_flight.load(Ordering::SeqCst) < per_instance
            })
        })
    }

    /// Takes out of the pool every idle instance of the programs `key` accepts for which
    /// `stale` holds.
    fn take_idle_where(
        &self,
        key: impl Fn(&str) -> bool,
        stale: impl Fn(&Warm) -> bool,
    ) -> Vec<Arc<Warm>> {
        let mut pool = super::lock(&self.pool);
        let mut out = Vec::new();
        for (k, live) in pool.iter_mut() {
            if !key(k) {
                continue;
            }
            let (old, keep): (Vec<Arc<Warm>>, Vec<Arc<Warm>>) = std::mem::take(live)
                .into_iter()
                .partition(|w| !w.busy() && stale(w));
            *live = keep;
            out.extend(old.into_iter().filter(|w| w.begin_retiring()));
        }
        pool.retain(|_, v| !v.is_empty());
        out
    }

    /// Retires every idle instance unused for `older_than` or longer, except the instances
    /// persistent programs hold.
    pub async fn retire_idle(&self, older_than: Duration) {
        let stale = self.take_idle_where(
            |_| true,
            |w| !w.held() && w.last_used().elapsed() >= older_than,
        );
        for warm in stale {
            let _ = self.retire(&warm).await;
        }
    }

    /// Retires the idle instances of the program `key` (not the one a persistent program
    /// holds): the next execution boots a fresh one, resolving its refs again. Returns how
    /// many were retired.
    pub async fn retire_program(&self, key: &str) -> usize {
        let stale = self.take_idle_where(|k| k == key, |w| !w.held());
        let n = stale.len();
        for warm in stale {
            let _ = self.retire(&warm).await;
        }
        n
    }

    /// Takes the leases of the persistent volumes among `preopens` for a new instance,
    /// retiring an idle instance that holds one (see `executor::volume_lease`).
    pub(super) async fn lease_volumes(
        &self,
        preopens: &[Preopen],
    ) -> Result<super::volume_lease::VolumeLease, String> {
        self.volume_leases
            .acquire(preopens, self.config.boot_timeout, |dir| async move {
                let holders = self.take_idle_where(|_| true, |w| !w.held() && w.lease.holds(&dir));
                for warm in holders {
                    tracing::info!(
                        "retiring an idle instance to let another one mount the persistent \
                         volume it holds"
                    );
                    let _ = self.retire(&warm).await;
                }
            })
            .await
            .map_err(|e| e.to_string())
    }

    /// Retires the pinned instance that shares `state`, if it is idle; a busy one is retired
    /// once its last request ends (the pin is released first).
    pub(super) async fn retire_pinned(&self, key: &str, state: &Arc<PinState>) {
        state.release();
        let pinned = self.take_idle_where(
            |k| k == key,
            |w| w.pin.as_ref().is_some_and(|p| Arc::ptr_eq(&p.state, state)),
        );
        for warm in pinned {
            let _ = self.retire(&warm).await;
        }
    }

    /// Retires every idle instance now, persistent programs' too (lifespan shutdown, export).
    pub async fn shutdown(&self) {
        let all = self.take_idle_where(|_| true, |_| true);
        for warm in all {
            if let Some(pin) = &warm.pin {
                pin.state.release();
            }
            let _ = self.retire(&warm).await;
        }
    }

    /// Boots an instance: interpreter, app import, lifespan startup.
    pub(super) async fn boot(
        &self,
        item_hash: &str,
        program: &ProgramContent,
        runtime: &ResolvedRuntime,
        determinism: Option<Determinism>,
    ) -> Result<Warm, BootError> {
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
        // The volumes first, then the memory: a boot that waits for another instance to let go
        // of a volume holds none of the node's memory meanwhile.
        let lease = self.lease_volumes(&mounts.preopens).await?;
        let memory = self.reserve_memory(program.resources.memory_mib).await?;
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
        let granted = self.grant(item_hash, program, &mut env).await?;
        let spec = GuestSpec {
            args: interp.argv.clone(),
            env,
            stdin: Vec::new(),
            preopens: mounts.preopens,
            memory_bytes: program.resources.memory_mib.saturating_mul(1 << 20),
            seconds: program.resources.seconds,
            determinism,
            calls: granted.calls,
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
        let warm = Warm {
            instance,
            _exec_dir: exec_dir,
            durable: mounts.export.is_some() || program.has_persistent_volume(),
            export: mounts.export,
            owner: program.address.clone(),
            time: program.time,
            inputs,
            reads: granted.reads,
            interpreter: started.module,
            restored: started.restored,
            reproducible,
            pin: None,
            _memory: memory,
            live: std::sync::Mutex::new(Live {
                module_cache: if from_cache {
                    ModuleCache::Hit
                } else {
                    ModuleCache::Miss
                },
                pending_stdout: Vec::new(),
                pending_stderr: Vec::new(),
                served: 0,
                last_used: Instant::now(),
                broken: None,
            }),
            in_flight: AtomicUsize::new(0),
            retiring: AtomicBool::new(false),
            lease,
        };
        // The import of the app, then lifespan startup, each within the boot budget.
        let session = warm.instance.session().clone();
        let booted = tokio::time::timeout(
            boot_limit,
            session.wait_instance(|s| {
                if let Some(e) = &s.boot_error {
                    Some(Err(e.clone()))
                } else if s.ready.is_some() {
                    Some(Ok(()))
                } else {
                    s.closed.then(|| Err(serde_json::Value::Null))
                }
            }),
        )
        .await;
        let logs = session.take_logs();
        {
            let mut live = super::lock(&warm.live);
            live.pending_stdout.extend_from_slice(&logs.stdout);
            live.pending_stderr.extend_from_slice(&logs.stderr);
        }
        match booted {
            Ok(Ok(())) => {}
            Ok(Err(e)) if !e.is_null() => {
                warm.instance.kill_and_wait().await;
                let s = |k: &str| e.get(k).and_then(|v| v.as_str()).unwrap_or_default();
                return Err(BootError::Failed(format!(
                    "the app could not be loaded: {}\n{}",
                    s("message"),
                    s("traceback")
                )));
            }
            Ok(Err(_)) => {
                warm.instance.kill_and_wait().await;
                return Err(boot_failure(
                    "loading the app (the interpreter's start and the app's import)",
                    false,
                    boot_limit,
                    &warm.instance,
                    reproducible,
                ));
            }
            Err(_) => {
                warm.instance.kill_and_wait().await;
                return Err(boot_failure(
                    "loading the app (the interpreter's start and the app's import)",
                    true,
                    boot_limit,
                    &warm.instance,
                    reproducible,
                ));
            }
        }
        // Every instance enters its serving loop the same way; a restored one already has.
        if !started.restored
            && let Err(e) = enter(&warm.instance, determinism.as_ref()).await
        {
            warm.instance.kill_and_wait().await;
            return Err(BootError::Failed(format!("booting the interpreter: {e}")));
        }
        let startup = exchange(
            &warm.instance,
            asgi::event_frames,
            &asgi::lifespan_event("startup"),
            boot_limit,
            usize::MAX,
        )
        .await;
        {
            let mut live = super::lock(&warm.live);
            live.pending_stdout
                .extend_from_slice(&startup.exchange.stdout);
            live.pending_stderr
                .extend_from_slice(&startup.exchange.stderr);
        }
        if !startup.exchange.done {
            warm.instance.kill_and_wait().await;
            return Err(boot_failure(
                "lifespan startup",
                startup.timed_out,
                boot_limit,
                &warm.instance,
                reproducible,
            ));
        }
        if let Some((result, message)) = &startup.exchange.lifespan
            && result == "failed"
        {
            warm.instance.kill_and_wait().await;
            return Err(BootError::Failed(format!(
                "lifespan startup failed: {}",
                message.as_deref().unwrap_or("(no message)")
            )));
        }
        Ok(warm)
    }

    /// The most response body a request may return: more is an error.
    fn body_limit(&self) -> usize {
        self.sandbox.config().output_cap.max(1 << 20) * 16
    }

    /// Serves one request or event on an instance. For an event (cron tick, message) the app
    /// returning without a response is a success.
    async fn serve(
        &self,
        warm: &Warm,
        program: &ProgramContent,
        trigger: &Trigger,
    ) -> (Outcome, Fate) {
        let deadline = self.sandbox.config().wall_limit(
            Duration::from_secs(program.resources.seconds.max(1)),
            warm.reproducible,
        );
        let sequential = warm.reproducible;
        if sequential {
            // The fuel count moves at each read of stdin: start from the guest's next read, so
            // the tail of the previous event is not counted against this one.
            let _ = tokio::time::timeout(deadline, warm.instance.wait_idle()).await;
        }
        let fuel = |w: &Warm| {
            if sequential {
                w.instance.fuel_consumed()
            } else {
                w.instance.fuel_consumed_now()
            }
        };
        let fuel_before = fuel(warm);
        let refusals_before = warm.instance.memory_refusals();
        let started = Instant::now();
        let event = match trigger {
            Trigger::Http(req) => Err(req),
            Trigger::Job => Ok(None),
            Trigger::Cron { time } => Ok(Some(asgi::cron_event(*time))),
            Trigger::Message(body) => Ok(Some(asgi::message_event(body))),
        };
        let body_limit = self.body_limit();
        let default_request;
        let got = match event {
            Err(req) => {
                exchange(&warm.instance, asgi::http_frames, req, deadline, body_limit).await
            }
            Ok(Some(event)) => {
                exchange(
                    &warm.instance,
                    asgi::event_frames,
                    &event,
                    deadline,
                    body_limit,
                )
                .await
            }
            Ok(None) => {
                default_request = HttpRequest::from_line("GET /").unwrap_or_default();
                let req = &default_request;
                exchange(&warm.instance, asgi::http_frames, req, deadline, body_limit).await
            }
        };
        let mut outcome = Outcome::error("");
        outcome.error = None;
        outcome.elapsed_ms = started.elapsed().as_millis() as u64;
        let x = &got.exchange;
        outcome.stdout = Captured {
            bytes: x.stdout.clone(),
            dropped: 0,
        };
        outcome.stderr = Captured {
            bytes: x.stderr.clone(),
            dropped: 0,
        };
        if !x.done {
            let broken = super::lock(&warm.live).broken.clone();
            let end = warm.instance.ended();
            let fate = Fate::discard;
            // The guest's own end (out of fuel, a trap) speaks for every request in flight;
            // when the host stopped it, the reason it was discarded does.
            let broken = broken.filter(|_| matches!(end, None | Some(GuestEnd::Error(_))));
            let (kind, error, fate) = match (broken, end) {
                // Another request's end took the instance down while this one was in flight.
                (Some((why, stuck)), _) => (
                    if stuck {
                        OutcomeKind::Timeout
                    } else {
                        OutcomeKind::Error
                    },
                    format!("the instance was discarded while this request was in flight: {why}"),
                    Fate::discard(why),
                ),
                (None, Some(GuestEnd::Timeout(why))) => {
                    (OutcomeKind::Timeout, why.clone(), fate(&why))
                }
                (None, Some(GuestEnd::OutOfMemory(why))) => {
                    (OutcomeKind::OutOfMemory, why.clone(), fate(&why))
                }
                (None, Some(GuestEnd::Trap(why))) => {
                    let why = format!("{why} while serving the request");
                    (OutcomeKind::Trap, why.clone(), fate(&why))
                }
                (None, Some(GuestEnd::StackOverflow(why))) => {
                    let why = format!("{why} while serving the request");
                    (OutcomeKind::StackOverflow, why.clone(), fate(&why))
                }
                (None, Some(GuestEnd::Exited(code))) => {
                    outcome.exit_code = Some(code);
                    let why = format!("the interpreter exited with code {code} during the request");
                    (OutcomeKind::Exit, why.clone(), fate(&why))
                }
                (None, Some(GuestEnd::Error(why))) => (OutcomeKind::Error, why.clone(), fate(&why)),
                (None, Some(GuestEnd::Inconclusive(why))) => {
                    (OutcomeKind::Inconclusive, why.clone(), fate(&why))
                }
                (None, None) if got.timed_out && warm.reproducible => {
                    let why = format!(
                        "the wall-clock safety net of {} s was reached before the fuel budget ran out",
                        deadline.as_secs()
                    );
                    (OutcomeKind::Inconclusive, why.clone(), fate(&why))
                }
                (None, None) if got.timed_out && got.cancelled => (
                    OutcomeKind::Timeout,
                    format!(
                        "wall-clock deadline of {} s reached; the request was cancelled",
                        deadline.as_secs()
                    ),
                    Fate::Keep,
                ),
                (None, None) if got.timed_out => {
                    let why = format!(
                        "a request ran past its wall-clock deadline of {} s and the instance did \
                         not let go of it within {} ms of its cancellation (code that does not \
                         yield holds the interpreter): the instance was stopped",
                        deadline.as_secs(),
                        CANCEL_GRACE.as_millis()
                    );
                    (
                        OutcomeKind::Timeout,
                        why.clone(),
                        Fate::Discard { why, stuck: true },
                    )
                }
                (None, None) => {
                    let why = "the instance stopped answering".to_string();
                    (OutcomeKind::Error, why.clone(), fate(&why))
                }
            };
            outcome.fuel_consumed = warm
                .instance
                .fuel_consumed_now()
                .saturating_sub(fuel_before);
            outcome.kind = kind;
            outcome.error = Some(error);
            return (outcome, fate);
        }
        if sequential {
            // Let the guest get back to its read of stdin: the meter then has the request's
            // fuel. A reproducible execution's fuel must be complete: wait as long as needed.
            let _ = tokio::time::timeout(deadline, warm.instance.wait_idle()).await;
        }
        outcome.fuel_consumed = fuel(warm).saturating_sub(fuel_before);
        if !x.bad_frames.is_empty() {
            let why = format!("malformed frames from the bootstrap: {:?}", x.bad_frames);
            outcome.kind = OutcomeKind::Error;
            outcome.error = Some(why.clone());
            return (outcome, Fate::discard(why));
        }
        if x.body_dropped > 0 {
            outcome.kind = OutcomeKind::Error;
            outcome.error = Some(format!(
                "the response is larger than the output limit of {body_limit} bytes"
            ));
            return (outcome, Fate::Keep);
        }
        if let Some(message) = &x.protocol_error {
            outcome.kind = OutcomeKind::Error;
            outcome.error = Some(format!("the app broke the ASGI protocol: {message}"));
            return (outcome, Fate::Keep);
        }
        let complete = x.status.is_some() && x.body_complete;
        if trigger.is_event()
            && x.status.is_none()
            && x.app_error
                .as_deref()
                .is_none_or(|e| e == asgi::RETURNED_WITHOUT_RESPONSE)
        {
            outcome.kind = OutcomeKind::Ok;
            return (outcome, Fate::Keep);
        }
        let mut got = got;
        if complete {
            outcome.status = got.exchange.status;
            outcome.headers = std::mem::take(&mut got.exchange.headers);
            outcome.body = std::mem::take(&mut got.exchange.body);
        }
        let x = &got.exchange;
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
            let why = format!(
                "memory growth refused by the limit of {} MiB; then: {}",
                program.resources.memory_mib,
                outcome.error.as_deref().unwrap_or("the request failed")
            );
            outcome.error = Some(why.clone());
            return (outcome, Fate::discard(why));
        }
        (outcome, Fate::Keep)
    }

    /// Stops an instance gracefully: lifespan shutdown, end of stdin, then its export.
    /// Returns the export and what the program logged meanwhile.
    pub(super) async fn retire(
        &self,
        warm: &Warm,
    ) -> (Result<Option<ExportInfo>, String>, Vec<u8>) {
        let logs = end_gracefully(&warm.instance, self.config.shutdown_timeout, warm.durable).await;
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
            // A link where the cache and the store share a filesystem: the interpreter module
            // can be mounted here too, and it is tens of MB.
            let target = root.join(name);
            if std::fs::hard_link(path, &target).is_err() {
                std::fs::copy(path, &target).map_err(|e| format!("{name}: {e}"))?;
            }
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

/// Ends an instance gracefully: lifespan shutdown (within `limit`), then — when what the
/// program writes outlives the instance (`durable`) — end of stdin and at most 2 s for the
/// interpreter to exit, flushing its open files; then the instance is stopped. An instance
/// with nothing durable is stopped right after lifespan shutdown: CPython's own exit takes
/// tens of milliseconds and leaves nothing anyone will see. Returns what the program logged
/// meanwhile.
async fn end_gracefully(instance: &Instance, limit: Duration, durable: bool) -> Vec<u8> {
    let mut logs = Vec::new();
    if instance.ended().is_none() {
        let got = exchange(
            instance,
            asgi::event_frames,
            &asgi::lifespan_event("shutdown"),
            limit,
            usize::MAX,
        )
        .await;
        logs.extend_from_slice(&got.exchange.stderr);
        if durable {
            instance.close_stdin();
            let _ = instance.wait_end(Duration::from_secs(2)).await;
        }
    }
    logs.extend_from_slice(&instance.session().take_logs().stderr);
    instance.kill();
    logs
}

/// What [`exchange`] gathered.
struct Collected {
    exchange: Exchange,
    /// The deadline passed before `DONE`.
    timed_out: bool,
    /// After the deadline, the guest ended the cancelled request within [`CANCEL_GRACE`].
    cancelled: bool,
}

/// Sends one request or event (its frames made by `frames` for the stream's id) with its fuel
/// grant, and gathers its frames until `DONE`, the instance's end, or `limit`. Past `limit`
/// the request is cancelled in the guest, which has [`CANCEL_GRACE`] to end it.
async fn exchange<T: ?Sized>(
    instance: &Instance,
    frames: impl FnOnce(u32, &T) -> bytes::Bytes,
    what: &T,
    limit: Duration,
    body_limit: usize,
) -> Collected {
    let session = instance.session();
    let mut stream = session.open();
    let id = stream.id();
    let mut exchange = Exchange::default();
    instance.grant();
    session.send(frames(id, what));
    let read = async {
        while let Some(frame) = stream.next().await {
            exchange.take(frame, body_limit);
            if exchange.done {
                return;
            }
        }
    };
    let timed_out = tokio::time::timeout(limit, read).await.is_err();
    let mut cancelled = false;
    if timed_out && instance.ended().is_none() {
        session.send(Frame::Cancel(id).to_bytes());
        let ended = async {
            while let Some(frame) = stream.next().await {
                if matches!(frame, Frame::Done(_)) {
                    return true;
                }
            }
            false
        };
        cancelled = tokio::time::timeout(CANCEL_GRACE, ended)
            .await
            .unwrap_or(false);
    }
    instance.finished();
    Collected {
        exchange,
        timed_out,
        cancelled,
    }
}

/// The boot error for a step (`what`) that did not finish.
fn boot_failure(
    what: &str,
    timed_out: bool,
    limit: Duration,
    instance: &Instance,
    reproducible: bool,
) -> BootError {
    match instance.ended() {
        Some(end) => BootError::Failed(format!("{what}: {end}")),
        None if timed_out && reproducible => BootError::SafetyNet(format!(
            "{what}: the wall-clock safety net of {} s was reached before the fuel budget ran out",
            limit.as_secs()
        )),
        None if timed_out => {
            BootError::Failed(format!("{what}: no answer within {} s", limit.as_secs()))
        }
        None => BootError::Failed(format!("{what}: the instance stopped answering")),
    }
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
