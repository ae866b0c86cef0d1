//! The cron scheduler: a table of cron programs with their next occurrence, and one task that
//! sleeps on the [`Clock`](super::Clock) until the earliest one and runs what is due
//! ([`Triggers::tick_cron`]).
//!
//! A due program runs once per tick — ASGI programs get `{"type": "aleph.cron", "time": …}`,
//! binary programs run as a job — on a node execution slot, in its own task. If its previous
//! tick is still running, the tick is skipped (logged, counted as `skipped`). When the clock
//! jumped over several occurrences (a suspended machine, a manual clock moved far), they count
//! as one tick, for the latest of them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{Schedule, Triggers, execute, lock, stderr_tail};
use crate::interface::Trigger;
use crate::message::Message;
use crate::server::AppState;

/// How long the scheduler sleeps when no program has a next occurrence (it also wakes when
/// the table changes).
const IDLE_WAKE_SECONDS: f64 = 3600.0;

/// One cron program.
pub(super) struct Entry {
    program: Message,
    schedule: Schedule,
    /// The next occurrence not yet run.
    next: Option<f64>,
    /// Set while a tick's execution runs.
    busy: Arc<AtomicBool>,
}

impl Triggers {
    /// Adds `program` to the cron table, due at the first occurrence after now.
    pub(super) fn cron_insert(&self, program: &Message, schedule: Schedule) {
        let next = schedule.next_after(self.hub.config.clock.now());
        lock(&self.hub.cron).insert(
            program.item_hash.clone(),
            Entry {
                program: program.clone(),
                schedule,
                next,
                busy: Arc::new(AtomicBool::new(false)),
            },
        );
        self.hub.cron_changed.send_modify(|n| *n += 1);
    }

    /// Removes a program from the cron table.
    pub(super) fn cron_remove(&self, hash: &str) {
        if lock(&self.hub.cron).remove(hash).is_some() {
            self.hub.cron_changed.send_modify(|n| *n += 1);
        }
    }

    /// The earliest next occurrence in the table.
    fn next_due(&self) -> Option<f64> {
        lock(&self.hub.cron)
            .values()
            .filter_map(|e| e.next)
            .min_by(f64::total_cmp)
    }

    /// Runs every cron program due at `at` (seconds since the epoch): each whose next
    /// occurrence is at or before `at` starts a tick — or skips it while its previous tick
    /// still runs — and moves on to its first occurrence after `at`.
    pub fn tick_cron(&self, state: &AppState, at: f64) {
        let due: Vec<(Message, f64, Arc<AtomicBool>)> = {
            let mut table = lock(&self.hub.cron);
            table
                .values_mut()
                .filter_map(|e| {
                    let next = e.next.filter(|&n| n <= at)?;
                    let time = e.schedule.last_at_or_before(at).unwrap_or(next).max(next);
                    e.next = e.schedule.next_after(at);
                    Some((e.program.clone(), time, e.busy.clone()))
                })
                .collect()
        };
        for (program, time, busy) in due {
            let hash = program.item_hash.clone();
            if busy.swap(true, Ordering::SeqCst) {
                state.metrics().cron_tick("skipped");
                tracing::warn!(
                    program = %hash,
                    time,
                    "cron tick skipped: the previous tick is still running"
                );
                continue;
            }
            state.metrics().cron_tick("run");
            tracing::info!(program = %hash, time, "cron tick");
            let state = state.clone();
            tokio::spawn(async move {
                let outcome = execute(&state, &program, Trigger::Cron { time }).await;
                busy.store(false, Ordering::SeqCst);
                if !outcome.is_ok() {
                    tracing::warn!(
                        program = %hash,
                        time,
                        outcome = outcome.kind.as_str(),
                        error = outcome.error.as_deref().unwrap_or(""),
                        stderr = %stderr_tail(&outcome),
                        "cron tick did not end ok"
                    );
                }
            });
        }
    }
}

/// The scheduler: ticks at every due occurrence, on the configured clock, until aborted.
pub(super) async fn run(state: AppState, triggers: Triggers) {
    let clock = triggers.hub.config.clock.clone();
    let mut changed = triggers.hub.cron_changed.subscribe();
    loop {
        let now = clock.now();
        triggers.tick_cron(&state, now);
        let wake = triggers.next_due().unwrap_or(now + IDLE_WAKE_SECONDS);
        tokio::select! {
            _ = clock.sleep_until(wake) => {}
            r = changed.changed() => {
                if r.is_err() {
                    return;
                }
            }
        }
    }
}
