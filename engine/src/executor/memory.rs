//! What a live instance holds of the node: every live instance — a running binary execution,
//! a booted interpreter instance (serving, idle or pinned for a persistent program) — holds its
//! program's `resources.memory` MiB of the node-wide memory budget and, when the engine pools
//! its instances ([`crate::sandbox::PoolingLimits`]), one of the pool's instance slots, until
//! it ends. Work that does not fit is refused (after retiring idle instances, least recently
//! used first, to make room) rather than letting the host swap or be killed, or the engine
//! fail to allocate. Without a budget or a pool nothing is counted.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::outcome::{Outcome, Refusal};

use super::Executor;

/// What an instance holds of the budget and of the instance pool; released when dropped.
#[derive(Debug, Default)]
pub(super) struct Reservation {
    memory: Option<OwnedSemaphorePermit>,
    _slot: Option<OwnedSemaphorePermit>,
}

impl Reservation {
    /// The MiB held of the memory budget (0 without a budget).
    pub(super) fn memory_mib(&self) -> u64 {
        self.memory.as_ref().map_or(0, |p| p.num_permits() as u64)
    }
}

/// Why the node cannot start an instance now: the cause, and a message naming it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// What is full.
    pub cause: Refusal,
    /// What the client is told.
    pub message: String,
}

impl Refused {
    /// The `error` outcome of an execution refused for this reason.
    pub fn outcome(&self) -> Outcome {
        let mut outcome = Outcome::error(self.message.clone());
        outcome.refused = Some(self.cause);
        outcome
    }
}

impl From<Refused> for String {
    fn from(r: Refused) -> Self {
        r.message
    }
}

/// How long past the shutdown budget a reservation waits for retiring instances.
const RETIRE_GRACE: Duration = Duration::from_secs(2);

/// One instance being retired after its answer, counted while it lives.
pub(super) struct Retiring(Arc<AtomicUsize>);

impl Retiring {
    /// Counts one more retirement in `count` until the returned value is dropped.
    pub(super) fn start(count: &Arc<AtomicUsize>) -> Retiring {
        count.fetch_add(1, Ordering::SeqCst);
        Retiring(count.clone())
    }
}

impl Drop for Retiring {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A count of something (MiB, instance slots) as semaphore permits.
pub(super) struct Budget {
    total: u64,
    free: Arc<Semaphore>,
}

impl Budget {
    /// A budget of `total` MiB (or instance slots).
    pub(super) fn new(total: u64) -> Self {
        let permits = usize::try_from(total)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        Budget {
            total: permits as u64,
            free: Arc::new(Semaphore::new(permits)),
        }
    }

    fn try_take(&self, mib: u64) -> Option<OwnedSemaphorePermit> {
        let n = u32::try_from(mib.max(1)).ok()?;
        self.free.clone().try_acquire_many_owned(n).ok()
    }

    fn held(&self) -> u64 {
        self.total - self.free.available_permits() as u64
    }
}

/// The memory budget's state, for the node API and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryUse {
    /// The budget, in MiB.
    pub total_mib: u64,
    /// What live instances hold, in MiB.
    pub reserved_mib: u64,
}

/// The instance pool's state, for the node API and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolUse {
    /// How many instances may be alive at once.
    pub slots: u64,
    /// How many are alive (or being started).
    pub held: u64,
}

impl Executor {
    /// The memory budget's state, when the executor has one.
    pub fn memory_use(&self) -> Option<MemoryUse> {
        self.memory.as_ref().map(|b| MemoryUse {
            total_mib: b.total,
            reserved_mib: b.held(),
        })
    }

    /// The instance pool's state, when the engine pools its instances.
    pub fn pool_use(&self) -> Option<PoolUse> {
        self.slots.as_ref().map(|s| PoolUse {
            slots: s.total,
            held: s.held(),
        })
    }

    /// Reserves `mib` MiB and an instance slot for a new instance, retiring idle instances
    /// (least recently used first) when that makes room. Refuses, naming what is full, when it
    /// cannot.
    pub(super) async fn reserve_memory(&self, mib: u64) -> Result<Reservation, Refused> {
        let mut waiting_since: Option<Instant> = None;
        loop {
            let cause = match self.try_reserve(mib) {
                Ok(reservation) => return Ok(reservation),
                Err(cause) => cause,
            };
            match self.take_least_recently_used() {
                Some(warm) => {
                    tracing::info!(
                        "retiring an idle instance to make room ({})",
                        cause.as_str()
                    );
                    let _ = self.retire(&warm).await;
                }
                // Instances retiring after their answers hold their reservations until they
                // are gone, within the shutdown budget: room that is about to be free is
                // waited for, not refused.
                None if self.retiring.load(Ordering::SeqCst) > 0
                    && waiting_since.get_or_insert_with(Instant::now).elapsed()
                        < self.config.shutdown_timeout + RETIRE_GRACE =>
                {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                None => return Err(self.refusal(cause, mib)),
            }
        }
    }

    /// Takes `mib` MiB of the budget and one instance slot, if both are free.
    fn try_reserve(&self, mib: u64) -> Result<Reservation, Refusal> {
        let memory = match &self.memory {
            Some(budget) => Some(budget.try_take(mib).ok_or(Refusal::MemoryBudget)?),
            None => None,
        };
        let slot = match &self.slots {
            Some(slots) => Some(slots.try_take(1).ok_or(Refusal::InstancePool)?),
            None => None,
        };
        Ok(Reservation {
            memory,
            _slot: slot,
        })
    }

    fn refusal(&self, cause: Refusal, mib: u64) -> Refused {
        let message = match (cause, &self.memory, &self.slots) {
            (Refusal::MemoryBudget, Some(budget), _) => format!(
                "the node's memory budget cannot hold {mib} MiB more ({} of {} MiB are held by \
                 running and pinned instances)",
                budget.held(),
                budget.total
            ),
            (Refusal::InstancePool, _, Some(slots)) => format!(
                "the node's instance pool is full (all {} instance slots are held by running \
                 and pinned instances)",
                slots.total
            ),
            (cause, _, _) => format!("the node is full ({})", cause.as_str()),
        };
        Refused { cause, message }
    }

    /// Whether an execution of `msg` fits now: it reuses an idle warm instance, or the
    /// program's `resources.memory` fits in the memory budget and an instance slot is free
    /// (after retiring idle instances to make room). The node service asks before admitting a
    /// request; the refusal says what is full.
    pub async fn admit(&self, msg: &crate::message::Message) -> Result<(), Refused> {
        let Some(program) = msg.program() else {
            return Ok(());
        };
        if (self.memory.is_none() && self.slots.is_none())
            || (!program.environment.reproducible && self.has_room(&msg.item_hash))
        {
            return Ok(());
        }
        self.reserve_memory(program.resources.memory_mib)
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_refuses_what_does_not_fit_and_frees_on_drop() {
        let b = Budget::new(100);
        let first = b.try_take(60).expect("60 of 100");
        assert!(b.try_take(60).is_none(), "120 > 100");
        drop(first);
        assert!(b.try_take(100).is_some());
    }
}
