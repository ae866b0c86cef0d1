//! Long-lived guests: an instance whose `_start` keeps running and serves requests the host
//! sends on its stdin, answering with frames on its stdout (the [`Session`] of
//! `crate::channel`).
//!
//! The instance runs on its own tokio task. The host sends frames through the session, which
//! routes what the guest writes to the requests in flight; it can wait for the guest to block
//! on stdin again, and kills the instance (dropping its store) when it must go.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use wasmtime::{InstancePre, Module};

use super::determinism::{Determinism, Reseed};
use super::meter::Meter;
use super::output::{Sink, SinkStream};
use super::{GuestEnd, GuestSpec, GuestState, Sandbox, Stdio, StoreExtras, exit_end, start};
use crate::channel::pipe::{ChannelInput, LineOutput};
use crate::channel::session::Session;

/// How an instance's guest code is entered.
pub(crate) enum Entry {
    /// Instantiate the module and call `_start` (a cold start).
    Start(Module),
    /// Instantiate a snapshot and rewind into its paused `_start` (Asyncify data at `data`).
    Rewind {
        pre: InstancePre<GuestState>,
        data: i32,
    },
}

/// A running long-lived guest.
pub struct Instance {
    input: ChannelInput,
    session: Session,
    stderr: LineOutput,
    meter: Arc<Meter>,
    end: Arc<Mutex<Option<GuestEnd>>>,
    task: JoinHandle<()>,
    started: Instant,
    peak_memory: Arc<std::sync::atomic::AtomicU64>,
    memory_refusals: Arc<std::sync::atomic::AtomicU64>,
    reseed: Option<Reseed>,
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Instance {
    /// The instance's channel session: requests in flight, the instance's own frames.
    pub(crate) fn session(&self) -> &Session {
        &self.session
    }

    /// Queues bytes on the guest's stdin.
    pub fn send(&self, bytes: &[u8]) {
        self.input.send(bytes);
    }

    /// Closes the guest's stdin; it reads end-of-file once the queue is drained.
    pub fn close_stdin(&self) {
        self.input.close();
    }

    /// The next line a binary guest wrote on stdout; `None` when the guest has ended and
    /// every line was read.
    pub async fn next_line(&self) -> Option<Vec<u8>> {
        self.session.next_line().await
    }

    /// Every line the guest wrote on stderr so far (its raw stderr, outside any protocol).
    pub async fn drain_stderr(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(line) = self.stderr.next(|| true).await {
            out.push(line);
        }
        out
    }

    /// Puts bytes in front of what the guest writes next on stdout, as if it had written them
    /// (the boot output of a restored snapshot).
    pub(crate) fn replay_stdout(&self, bytes: &[u8]) {
        Sink::push(&self.session, bytes);
    }

    /// Grants an event its fuel budget (see `sandbox::meter`): call it before sending the
    /// event, and [`Instance::finished`] once it is done.
    pub fn grant(&self) {
        self.meter.grant();
    }

    /// An event granted with [`Instance::grant`] is done.
    pub fn finished(&self) {
        self.meter.finished();
    }

    /// Waits until the guest blocks reading stdin with nothing left to read.
    pub async fn wait_idle(&self) {
        self.input.wait_blocked().await
    }

    /// How the guest ended, once it has.
    pub fn ended(&self) -> Option<GuestEnd> {
        lock(&self.end).clone()
    }

    /// Waits for the guest to end, at most `limit`; returns how it ended.
    pub async fn wait_end(&self, limit: Duration) -> Option<GuestEnd> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(end) = self.ended() {
                return Some(end);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops the guest now (its store is dropped).
    pub fn kill(&self) {
        self.task.abort();
        let mut end = lock(&self.end);
        if end.is_none() {
            *end = Some(GuestEnd::Error(
                "the instance was stopped by the host".into(),
            ));
        }
        drop(end);
        self.session.close();
        self.stderr.wake();
    }

    /// Stops the guest now, as [`Instance::kill`] does, then waits (at most a second) until its
    /// task has ended: a guest stopped inside a host call has let go of it, so the caller may
    /// tear down the async runtime (a one-shot command after a failed boot) without cancelling
    /// that call under it.
    pub async fn kill_and_wait(&self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(1);
        while !self.task.is_finished() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Re-keys a reproducible guest's random sources for the execution of `d` (call it while
    /// the guest waits for its first event, before sending the reseed event).
    pub(crate) fn rekey(&self, d: &Determinism) {
        if let Some(r) = &self.reseed {
            r.rekey(d);
        }
    }

    /// Fuel the guest consumed up to its latest read of stdin.
    pub fn fuel_consumed(&self) -> u64 {
        self.meter.consumed()
    }

    /// Fuel the guest consumed up to now (as of the latest epoch tick while it runs).
    pub fn fuel_consumed_now(&self) -> u64 {
        self.meter.consumed_now()
    }

    /// How many memory growths the limit has refused so far.
    pub fn memory_refusals(&self) -> u64 {
        self.memory_refusals
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// When the instance was started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The largest linear memory the guest has reached so far, in bytes.
    pub fn peak_memory_bytes(&self) -> u64 {
        self.peak_memory.load(std::sync::atomic::Ordering::Relaxed)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl Sandbox {
    /// Starts a long-lived guest. `spec.stdin` is ignored (stdin is the request channel);
    /// `boot_fuel` is the fuel for everything up to the first read of stdin, after which each
    /// read refills it to `seconds × fuel_per_second`. Must be called within a tokio runtime.
    pub fn spawn(
        &self,
        module: &Module,
        spec: GuestSpec,
        boot_fuel: u64,
    ) -> Result<Instance, String> {
        self.spawn_entry(
            Entry::Start(module.clone()),
            spec,
            boot_fuel,
            StoreExtras::default(),
        )
    }

    /// Starts a long-lived guest entered through `entry`, in a store with `extras`.
    pub(crate) fn spawn_entry(
        &self,
        entry: Entry,
        spec: GuestSpec,
        boot_fuel: u64,
        extras: StoreExtras,
    ) -> Result<Instance, String> {
        let input = ChannelInput::new();
        let calls = spec.calls.make();
        let store_calls = calls.one_at_a_time();
        let session = Session::new(input.clone(), calls, self.config.output_cap);
        let stderr = LineOutput::new(self.config.output_cap);
        let budget = spec.seconds.saturating_mul(self.config.fuel_per_second);
        let meter = Arc::new(Meter::new(budget));
        meter.filled(boot_fuel);
        let stdio = Stdio {
            stdin: Box::new(input.clone()),
            stdout: Box::new(SinkStream(session.clone())),
            stderr: Box::new(SinkStream(stderr.clone())),
        };
        let mut store = self.new_store(
            &spec,
            stdio,
            store_calls,
            boot_fuel,
            Some(meter.clone()),
            extras,
        )?;
        let memory_refusals = store.data().limiter.refusals();
        let linker = self.linker_for(&store);
        let end: Arc<Mutex<Option<GuestEnd>>> = Arc::new(Mutex::new(None));
        let peak_memory = store.data().limiter.peak();
        let reseed = store.data().det.as_ref().map(|d| d.random.clone());
        let task = {
            let end = end.clone();
            let session = session.clone();
            let stderr = stderr.clone();
            let meter = meter.clone();
            tokio::spawn(async move {
                let result = match entry {
                    Entry::Start(module) => start(&linker, &module, &mut store).await,
                    Entry::Rewind { pre, data } => {
                        super::snapshot::restore::rewind(&pre, data, &mut store).await
                    }
                };
                let limiter = &store.data().limiter;
                let guest_end = match result {
                    Ok(()) => exit_end(0, limiter),
                    Err((stage, e)) => super::classify(stage, e, limiter, budget),
                };
                meter.tick(store.get_fuel().unwrap_or(0));
                *lock(&end) = Some(guest_end);
                session.close();
                stderr.wake();
            })
        };
        Ok(Instance {
            input,
            session,
            stderr,
            meter,
            end,
            task,
            started: Instant::now(),
            peak_memory,
            memory_refusals,
            reseed,
        })
    }
}
