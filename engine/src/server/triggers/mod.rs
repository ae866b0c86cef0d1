//! The node's triggers besides HTTP requests: persistent programs (`on.persistent`), cron
//! schedules (`on.cron`) and message subscriptions (`on.message`, the seed's `on.aleph`).
//!
//! [`Triggers`] is the registry, shared through the server's state. At [`Triggers::start`] it
//! reads every PROGRAM message in the store and activates the programs that have a trigger and
//! are not superseded by an amend; afterwards every message that enters the store — posted to
//! the node ([`super::ingest`]), or written by another process and found by polling the
//! store ([`watch`]), or received from another node's message feed ([`feed`], with
//! `serve --api`) — goes through [`Triggers::arrived`]:
//!
//! - a PROGRAM message is activated; when it `replaces` an active program of the same owner
//!   that allows amends, that one is deactivated first (its persistent instance stopped);
//! - a STORE message that amends a ref which a program uses with `use_latest` restarts that
//!   program's persistent instance and retires its warm instances, so the next execution
//!   uses the new content;
//! - every message is recorded in the arrivals [`journal`] and offered, in arrival order, to
//!   each subscribed program ([`deliver`]);
//! - every message is sent to the node's own feed subscribers ([`Triggers::subscribe_feed`],
//!   served as `GET /api/ws0/messages` by [`crate::server::ws`]), in the same order.
//!
//! Each activated program gets: a supervisor keeping its instance running, restarted with
//! exponential [`backoff`] ([`persistent`]); an entry in the cron table, run by the scheduler
//! on a [`Clock`] ([`cron`], [`schedule`]); a delivery task walking the arrivals
//! ([`deliver`], [`filter`]).

mod allocate;
mod backoff;
mod clock;
mod cron;
mod deliver;
pub mod feed;
mod filter;
mod journal;
mod persistent;
mod schedule;
mod watch;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinHandle;

use super::{AppState, lock};
use crate::interface::Trigger;
use crate::message::verify::same_account;
use crate::message::{CodeSource, Content, Message, ObjectRef, ProgramContent, Volume};

use crate::outcome::Outcome;
use crate::store::Store;

pub use allocate::Allocated;
pub use backoff::{Backoff, BackoffPolicy};
pub use clock::{Clock, ManualClock, SystemClock};
pub use filter::{matches, matches_any};
pub use journal::Journal;
pub use schedule::Schedule;

/// How many arrivals a feed subscriber may fall behind before it is disconnected.
pub const FEED_CAPACITY: usize = 1024;

/// How the trigger service is tuned.
#[derive(Debug, Clone)]
pub struct TriggerConfig {
    /// The clock the cron scheduler follows. By default the system clock; tests use a
    /// [`ManualClock`].
    pub clock: Arc<dyn Clock>,
    /// How often the store is polled for messages written by other processes. By default 1 s.
    pub store_poll: Duration,
    /// How restarts of persistent programs are spaced.
    pub backoff: BackoffPolicy,
    /// How many times a message is offered to a program before it is given up (logged and
    /// counted as failed). By default 3.
    pub delivery_attempts: u32,
    /// The pause after a failed delivery, doubled after each further failure. By default 500 ms.
    pub retry_delay: Duration,
}

impl Default for TriggerConfig {
    fn default() -> Self {
        TriggerConfig {
            clock: Arc::new(SystemClock),
            store_poll: Duration::from_secs(1),
            backoff: BackoffPolicy::default(),
            delivery_attempts: 3,
            retry_delay: Duration::from_millis(500),
        }
    }
}

/// A persistent program's instance as `/about/executions/list` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PersistentStatus {
    /// `starting`, `running`, `backoff` (waiting to restart) or `stopped`.
    pub state: &'static str,
    /// When it entered that state (seconds since the epoch).
    pub since: f64,
    /// How many times its instance had to be started again (it ended, or could not start).
    pub restarts: u64,
    /// Why its instance last ended or failed to start.
    pub last_end: Option<String>,
}

/// The trigger registry: cheap to clone, shared through the server's state.
#[derive(Clone)]
pub struct Triggers {
    hub: Arc<Hub>,
}

impl std::fmt::Debug for Triggers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Triggers").finish_non_exhaustive()
    }
}

struct Hub {
    config: TriggerConfig,
    /// The arrivals, once started.
    journal: Mutex<Option<Journal>>,
    /// How many arrivals there are (delivery tasks wait on it).
    arrivals: tokio::sync::watch::Sender<usize>,
    /// The active programs, by item hash.
    programs: Mutex<HashMap<String, Active>>,
    /// The cron table, by item hash.
    cron: Mutex<HashMap<String, cron::Entry>>,
    /// Bumped when the cron table changes (the scheduler recomputes its wake-up).
    cron_changed: tokio::sync::watch::Sender<u64>,
    /// The state of each persistent program's instance.
    persistent: Mutex<BTreeMap<String, PersistentStatus>>,
    /// Messages in the store that could not be read (reported once).
    unreadable: Mutex<HashSet<String>>,
    /// The scheduler, the store poller and the network feed client.
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Every new arrival, for the node's feed subscribers (sent under the journal's lock).
    feed: tokio::sync::broadcast::Sender<Arc<Message>>,
    /// Set once the node stops: feed subscribers are disconnected.
    closing: tokio::sync::watch::Sender<bool>,
    /// The persistent programs the scheduler allocated here ([`allocate`]).
    allocated: Mutex<BTreeSet<String>>,
}

/// An activated program and what runs for it.
struct Active {
    msg: Message,
    supervisor: Option<persistent::Supervisor>,
    delivery: Option<JoinHandle<()>>,
    /// The resolved item hash of each `use_latest` ref, to tell a real amend.
    fingerprint: Vec<String>,
}

/// Stops every trigger task when dropped (a server dropped without a graceful shutdown).
#[derive(Debug)]
pub struct Guard {
    triggers: Triggers,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.triggers.abort_all();
    }
}

impl Guard {
    /// Stops gracefully: no more ticks, polls or deliveries; persistent instances stopped
    /// (ASGI ones retired with lifespan shutdown), waiting at most `limit` for them.
    pub async fn shutdown(&self, limit: Duration) {
        self.triggers.shutdown(limit).await;
    }
}

/// The `use_latest` refs of a program: what an amend can change under it.
fn latest_refs(program: &ProgramContent) -> Vec<&ObjectRef> {
    let mut refs = Vec::new();
    if let CodeSource::Ref(r) = &program.code.source {
        refs.push(r);
    }
    refs.push(&program.runtime.reference);
    if let Some(data) = &program.data {
        refs.push(&data.reference);
    }
    for v in &program.volumes {
        match v {
            Volume::Immutable { reference, .. } => refs.push(reference),
            Volume::Persistent {
                parent: Some(parent),
                ..
            } => refs.push(parent),
            _ => {}
        }
    }
    refs.retain(|r| r.use_latest);
    refs
}

/// What each `use_latest` ref of `program` resolves to now.
fn fingerprint(store: &Store, program: &ProgramContent) -> Vec<String> {
    latest_refs(program)
        .into_iter()
        .map(|r| {
            store
                .resolve_message(r)
                .map(|m| m.item_hash)
                .unwrap_or_default()
        })
        .collect()
}

/// Whether `program` has any trigger this service runs.
fn has_triggers(program: &ProgramContent) -> bool {
    program.on.persistent || program.on.cron.is_some() || !program.on.message.is_empty()
}

/// Runs `program` once for `trigger` on one of the node's execution slots (waiting for one),
/// recorded in the node's activity like a request.
async fn execute(state: &AppState, program: &Message, trigger: Trigger) -> Outcome {
    let Ok(_slot) = state.slots().clone().acquire_owned().await else {
        return Outcome::error("the node's execution slots are closed");
    };
    state.execution_started(&program.item_hash);
    let outcome = state.executor().execute(program, &trigger).await;
    state.execution_ended(&program.item_hash, outcome.kind.as_str());
    outcome
}

/// The end of what a program wrote on stderr, for a log line.
fn stderr_tail(outcome: &Outcome) -> String {
    let bytes = &outcome.stderr.bytes;
    String::from_utf8_lossy(&bytes[bytes.len().saturating_sub(2048)..]).into_owned()
}

impl Triggers {
    /// An empty registry; nothing runs before [`Triggers::start`].
    pub fn new(config: TriggerConfig) -> Self {
        Triggers {
            hub: Arc::new(Hub {
                config,
                journal: Mutex::new(None),
                arrivals: tokio::sync::watch::Sender::new(0),
                programs: Mutex::new(HashMap::new()),
                cron: Mutex::new(HashMap::new()),
                cron_changed: tokio::sync::watch::Sender::new(0),
                persistent: Mutex::new(BTreeMap::new()),
                unreadable: Mutex::new(HashSet::new()),
                tasks: Mutex::new(Vec::new()),
                feed: tokio::sync::broadcast::Sender::new(FEED_CAPACITY),
                closing: tokio::sync::watch::Sender::new(false),
                allocated: Mutex::new(BTreeSet::new()),
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &TriggerConfig {
        &self.hub.config
    }

    /// Opens the arrivals journal, takes in the messages stored while the node was down,
    /// activates every triggered program that is not superseded, and starts the cron
    /// scheduler, the store poller and — when the node has another node's API
    /// ([`crate::server::ServerConfig::api`]) — the client of that node's message feed.
    /// Must be called within a tokio runtime, once.
    pub fn start(&self, state: &AppState) -> anyhow::Result<Guard> {
        anyhow::ensure!(
            lock(&self.hub.journal).is_none(),
            "the trigger service is already started"
        );
        let store = state.executor().store();
        let (mut journal, fresh) = Journal::open(store.root())?;
        let unseen = watch::unseen(store, |h| journal.contains(h))?;
        for hash in &unseen {
            journal.append(hash)?;
        }
        let mut programs = Vec::new();
        for i in 0..journal.len() {
            let Some(hash) = journal.get(i) else { break };
            match store.get_message(hash) {
                Ok(msg) if msg.program().is_some() => programs.push(msg),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!("stored message {hash} is unreadable: {e}");
                    lock(&self.hub.unreadable).insert(hash.to_string());
                }
            }
        }
        let superseded = superseded(&programs);
        // On the first start everything stored so far is history: no program is owed it.
        let start_all_at = fresh.then_some(journal.len());
        let mut cursors = HashMap::new();
        for msg in &programs {
            let cursor = journal
                .cursor(&msg.item_hash)
                .or(start_all_at)
                .or_else(|| journal.position(&msg.item_hash).map(|p| p + 1))
                .unwrap_or(journal.len());
            cursors.insert(msg.item_hash.clone(), cursor);
        }
        self.hub.arrivals.send_replace(journal.len());
        *lock(&self.hub.journal) = Some(journal);
        for msg in programs {
            if superseded.contains(&msg.item_hash) {
                continue;
            }
            let cursor = cursors.get(&msg.item_hash).copied();
            self.activate(state, msg, cursor);
        }
        let scheduler = tokio::spawn(cron::run(state.clone(), self.clone()));
        let poller = tokio::spawn(watch::run(state.clone(), self.clone()));
        lock(&self.hub.tasks).extend([scheduler, poller]);
        if let Some(prefetcher) = state.prefetcher() {
            let client = feed::run(state.clone(), self.clone(), prefetcher.remote().clone());
            lock(&self.hub.tasks).push(tokio::spawn(client));
        }
        Ok(Guard {
            triggers: self.clone(),
        })
    }

    /// Takes in a message that has just entered the store: records its arrival (once; a
    /// message seen before is ignored) and reacts to it (see the module docs). Does nothing
    /// before [`Triggers::start`] (the start takes in what is in the store by then).
    pub fn arrived(&self, state: &AppState, msg: Message) {
        let appended = match lock(&self.hub.journal).as_mut() {
            None => return,
            Some(journal) => {
                let appended = journal.append(&msg.item_hash);
                if let Ok(Some(_)) = appended {
                    // Under the journal's lock: feed subscribers see the journal's order.
                    let _ = self.hub.feed.send(Arc::new(msg.clone()));
                }
                appended.map(|at| at.map(|at| at + 1))
            }
        };
        match appended {
            Ok(Some(len)) => {
                self.hub.arrivals.send_replace(len);
            }
            Ok(None) => return,
            Err(e) => {
                tracing::error!("cannot record the arrival of {}: {e}", msg.item_hash);
                return;
            }
        }
        match &msg.content {
            Content::Program(program) => {
                if let Some(old) = &program.replaces {
                    self.replace(old, &msg);
                }
                self.activate(state, msg, None);
            }
            Content::Store(store) => {
                if let Some(original) = &store.reference {
                    self.amended(state, original);
                }
            }
            Content::Other(_) => {}
        }
    }

    /// Subscribes to the node's arrivals: the item hashes of the last `history` arrivals
    /// (oldest first), and a receiver of every arrival after them, without a gap or an
    /// overlap. A receiver more than [`FEED_CAPACITY`] arrivals behind is told it lagged.
    pub fn subscribe_feed(
        &self,
        history: usize,
    ) -> (Vec<String>, tokio::sync::broadcast::Receiver<Arc<Message>>) {
        let journal = lock(&self.hub.journal);
        let receiver = self.hub.feed.subscribe();
        let past = journal
            .as_ref()
            .map(|j| {
                (j.len().saturating_sub(history)..j.len())
                    .filter_map(|i| j.get(i).map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        (past, receiver)
    }

    /// Disconnects the feed subscribers (the node stops).
    pub(crate) fn close_feed(&self) {
        self.hub.closing.send_replace(true);
    }

    /// Becomes true when the node stops (feed subscribers are then disconnected).
    pub fn closing(&self) -> tokio::sync::watch::Receiver<bool> {
        self.hub.closing.subscribe()
    }

    /// Deactivates the program `old` when `new` is an amend of it: same owner, and `old`
    /// allows amends.
    fn replace(&self, old: &str, new: &Message) {
        let allowed = {
            let programs = lock(&self.hub.programs);
            programs.get(old).is_some_and(|a| {
                a.msg.program().zip(new.program()).is_some_and(|(o, n)| {
                    o.allow_amend
                        && same_account(&new.chain, &o.address, &n.address)
                        && a.msg.item_hash != new.item_hash
                })
            })
        };
        if allowed {
            tracing::info!(program = old, "replaced by {}", new.item_hash);
            self.deactivate(old);
        }
    }

    /// Starts the triggers of `msg`, a PROGRAM message. A subscribed program walks the
    /// arrivals from `cursor` (by default its saved cursor, else right after its own arrival).
    fn activate(&self, state: &AppState, msg: Message, cursor: Option<usize>) {
        let Some(program) = msg.program() else { return };
        if !has_triggers(program) || lock(&self.hub.programs).contains_key(&msg.item_hash) {
            return;
        }
        if let Err(e) = program.check_supported() {
            tracing::warn!(program = %msg.item_hash, "not runnable here, triggers ignored: {e}");
            return;
        }
        let hash = msg.item_hash.clone();
        let mut active = Active {
            fingerprint: fingerprint(state.executor().store(), program),
            supervisor: None,
            delivery: None,
            msg: msg.clone(),
        };
        if let Some(expr) = &program.on.cron {
            match Schedule::parse(expr) {
                Ok(schedule) => self.cron_insert(&msg, schedule),
                Err(e) => tracing::warn!(program = %hash, "on.cron ignored: {e}"),
            }
        }
        if !program.on.message.is_empty() {
            let start = {
                let mut journal = lock(&self.hub.journal);
                journal.as_mut().map(|j| {
                    let start = cursor
                        .or_else(|| j.cursor(&hash))
                        .or_else(|| j.position(&hash).map(|p| p + 1))
                        .unwrap_or(j.len());
                    if let Err(e) = j.set_cursor(&hash, start) {
                        tracing::warn!(program = %hash, "cannot save the cursor: {e}");
                    }
                    start
                })
            };
            if let Some(start) = start {
                active.delivery = Some(tokio::spawn(deliver::run(
                    state.clone(),
                    self.clone(),
                    msg.clone(),
                    start,
                )));
            }
        }
        if program.on.persistent {
            active.supervisor = Some(persistent::Supervisor::spawn(state, self, msg.clone()));
        }
        tracing::info!(
            program = %hash,
            persistent = program.on.persistent,
            cron = program.on.cron.as_deref().unwrap_or(""),
            subscriptions = program.on.message.len(),
            "triggers active"
        );
        lock(&self.hub.programs).insert(hash, active);
    }

    /// Stops every trigger of the program `hash`.
    fn deactivate(&self, hash: &str) {
        let active = lock(&self.hub.programs).remove(hash);
        self.cron_remove(hash);
        if let Some(active) = active {
            if let Some(delivery) = active.delivery {
                delivery.abort();
            }
            if let Some(supervisor) = active.supervisor {
                supervisor.stop();
            }
        }
    }

    /// A STORE message amending `original` arrived: programs that use it with `use_latest`
    /// and now resolve it differently get fresh instances.
    fn amended(&self, state: &AppState, original: &str) {
        let store = state.executor().store();
        let uses = |p: &ProgramContent| latest_refs(p).iter().any(|r| r.reference == original);
        let mut changed = Vec::new();
        for (hash, active) in lock(&self.hub.programs).iter_mut() {
            let Some(program) = active.msg.program() else {
                continue;
            };
            if !uses(program) {
                continue;
            }
            let now = fingerprint(store, program);
            if now != active.fingerprint {
                active.fingerprint = now;
                if let Some(supervisor) = &active.supervisor {
                    tracing::info!(program = %hash, "{original} was amended: restarting");
                    state.metrics().persistent_restart("amended");
                    supervisor.restart();
                }
                changed.push(hash.clone());
            }
        }
        // On-demand programs with warm instances are affected as well.
        for hash in state.executor().idle_instances().into_keys() {
            if !changed.contains(&hash)
                && let Ok(msg) = store.get_message(&hash)
                && msg.program().is_some_and(uses)
            {
                changed.push(hash);
            }
        }
        if changed.is_empty() {
            return;
        }
        let executor = state.executor().clone();
        tokio::spawn(async move {
            for hash in changed {
                executor.retire_program(&hash).await;
            }
        });
    }

    /// Stops the persistent instance of `hash` (the operator's `/control/machine/{ref}/stop`):
    /// it is not restarted until the node restarts or the program is amended. Waits at most
    /// `limit` for the instance to be stopped. Returns whether the program is persistent here.
    pub async fn stop_persistent(&self, hash: &str, limit: Duration) -> bool {
        let supervisor = lock(&self.hub.programs)
            .get_mut(hash)
            .and_then(|a| a.supervisor.take());
        match supervisor {
            Some(supervisor) => {
                supervisor.stop_and_wait(limit).await;
                true
            }
            None => lock(&self.hub.persistent).contains_key(hash),
        }
    }

    /// The state of every persistent program's instance, by item hash.
    pub fn persistent_status(&self) -> BTreeMap<String, PersistentStatus> {
        lock(&self.hub.persistent).clone()
    }

    /// How many persistent programs have a running instance.
    pub fn persistent_running(&self) -> usize {
        lock(&self.hub.persistent)
            .values()
            .filter(|s| s.state == "running")
            .count()
    }

    fn set_status(&self, hash: &str, state: &'static str, restarts: u64, last_end: Option<String>) {
        lock(&self.hub.persistent).insert(
            hash.to_string(),
            PersistentStatus {
                state,
                since: super::unix_now(),
                restarts,
                last_end,
            },
        );
    }

    /// Saves the cursor of a subscribed program.
    fn save_cursor(&self, hash: &str, at: usize) {
        if let Some(journal) = lock(&self.hub.journal).as_mut()
            && let Err(e) = journal.set_cursor(hash, at)
        {
            tracing::warn!(program = hash, "cannot save the cursor: {e}");
        }
    }

    /// The item hash of arrival `i`.
    fn arrival(&self, i: usize) -> Option<String> {
        lock(&self.hub.journal)
            .as_ref()
            .and_then(|j| j.get(i).map(str::to_string))
    }

    /// Whether `item_hash` has arrived or was found unreadable.
    fn known(&self, item_hash: &str) -> bool {
        lock(&self.hub.journal)
            .as_ref()
            .is_some_and(|j| j.contains(item_hash))
            || lock(&self.hub.unreadable).contains(item_hash)
    }

    /// Aborts every task at once (no graceful stop).
    fn abort_all(&self) {
        self.hub.closing.send_replace(true);
        for task in lock(&self.hub.tasks).drain(..) {
            task.abort();
        }
        for (_, active) in lock(&self.hub.programs).drain() {
            if let Some(delivery) = active.delivery {
                delivery.abort();
            }
            if let Some(supervisor) = active.supervisor {
                supervisor.abort();
            }
        }
        lock(&self.hub.cron).clear();
    }

    async fn shutdown(&self, limit: Duration) {
        self.hub.closing.send_replace(true);
        for task in lock(&self.hub.tasks).drain(..) {
            task.abort();
        }
        lock(&self.hub.cron).clear();
        let active: Vec<Active> = lock(&self.hub.programs).drain().map(|(_, a)| a).collect();
        let mut stopping = Vec::new();
        for a in active {
            if let Some(delivery) = a.delivery {
                delivery.abort();
            }
            if let Some(supervisor) = a.supervisor {
                supervisor.stop();
                stopping.push(supervisor);
            }
        }
        for supervisor in stopping {
            supervisor.wait(limit).await;
        }
    }
}

/// The programs that a later PROGRAM message of the same owner replaces, where the replaced
/// one allows amends.
fn superseded(programs: &[Message]) -> HashSet<String> {
    let by_hash: HashMap<&str, &ProgramContent> = programs
        .iter()
        .filter_map(|m| Some((m.item_hash.as_str(), m.program()?)))
        .collect();
    let mut out = HashSet::new();
    for msg in programs {
        let Some(new) = msg.program() else { continue };
        if let Some(old_hash) = &new.replaces
            && old_hash != &msg.item_hash
            && let Some(old) = by_hash.get(old_hash.as_str())
            && old.allow_amend
            && same_account(&msg.chain, &old.address, &new.address)
        {
            out.insert(old_hash.clone());
        }
    }
    out
}
