//! The node-wide memory budget: every live instance — a running binary execution, a booted
//! interpreter instance (serving, idle or pinned for a persistent program) — holds its
//! program's `resources.memory` MiB of the budget until it ends. Work that does not fit is
//! refused (after retiring idle instances, least recently used first, to make room) rather
//! than letting the host swap or be killed. Without a budget nothing is counted.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::Executor;

/// What an instance holds of the budget; released when dropped.
pub(super) type Reservation = Option<OwnedSemaphorePermit>;

/// The budget: MiB as semaphore permits.
pub(super) struct MemoryBudget {
    total_mib: u64,
    free: Arc<Semaphore>,
}

impl MemoryBudget {
    /// A budget of `total_mib` MiB.
    pub(super) fn new(total_mib: u64) -> Self {
        let permits = usize::try_from(total_mib)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        MemoryBudget {
            total_mib: permits as u64,
            free: Arc::new(Semaphore::new(permits)),
        }
    }

    fn try_take(&self, mib: u64) -> Option<OwnedSemaphorePermit> {
        let n = u32::try_from(mib.max(1)).ok()?;
        self.free.clone().try_acquire_many_owned(n).ok()
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

impl Executor {
    /// The memory budget's state, when the executor has one.
    pub fn memory_use(&self) -> Option<MemoryUse> {
        self.memory.as_ref().map(|b| MemoryUse {
            total_mib: b.total_mib,
            reserved_mib: b.total_mib - b.free.available_permits() as u64,
        })
    }

    /// Reserves `mib` MiB for a new instance, retiring idle instances (least recently used
    /// first) when that makes room. Refuses, naming the budget, when it cannot.
    pub(super) async fn reserve_memory(&self, mib: u64) -> Result<Reservation, String> {
        let Some(budget) = &self.memory else {
            return Ok(None);
        };
        loop {
            if let Some(permit) = budget.try_take(mib) {
                return Ok(Some(permit));
            }
            match self.take_least_recently_used() {
                Some(warm) => {
                    tracing::info!("retiring an idle instance to make room in the memory budget");
                    let _ = self.retire(warm).await;
                }
                None => {
                    return Err(format!(
                        "the node's memory budget cannot hold {mib} MiB more ({} of {} MiB are \
                         held by running and pinned instances)",
                        budget.total_mib - budget.free.available_permits() as u64,
                        budget.total_mib
                    ));
                }
            }
        }
    }

    /// Whether an execution of `msg` fits in the memory budget now: it reuses an idle warm
    /// instance, or the program's `resources.memory` fits (after retiring idle instances to
    /// make room). The node service asks before admitting a request; the reason says why not.
    pub async fn admit(&self, msg: &crate::message::Message) -> Result<(), String> {
        let Some(program) = msg.program() else {
            return Ok(());
        };
        if self.memory.is_none()
            || (!program.environment.reproducible && self.has_idle(&msg.item_hash))
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
        let b = MemoryBudget::new(100);
        let first = b.try_take(60).expect("60 of 100");
        assert!(b.try_take(60).is_none(), "120 > 100");
        drop(first);
        assert!(b.try_take(100).is_some());
    }
}
