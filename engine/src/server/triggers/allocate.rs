//! The scheduler's allocations: the persistent programs the network's scheduler wants on this
//! node ([`Triggers::allocate`], called by `POST /control/allocations`).
//!
//! Each push lists every program the node should keep running. A listed program is obtained
//! (from the store, else from `--api`), checked — a PROGRAM message, `on.persistent`, runnable
//! here, its runtime a Wasm runtime — and started like any persistent program; one the
//! scheduler listed before and no longer lists is stopped. Programs the node runs for other
//! reasons (persistent programs found in its store) are the operator's, not the scheduler's,
//! and are left alone.

use std::collections::{BTreeMap, BTreeSet};

use super::{Triggers, lock, persistent};
use crate::server::AppState;

/// What one allocation did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Allocated {
    /// The programs running as asked (started now, or already running).
    pub successful: BTreeSet<String>,
    /// The programs that could not be started, with the reason.
    pub failing: BTreeMap<String, String>,
    /// The programs stopped because the scheduler no longer lists them.
    pub stopped: BTreeSet<String>,
}

impl Triggers {
    /// Makes the scheduler's persistent programs `wanted`: starts each one not running yet,
    /// stops those it allocated before and no longer lists.
    pub async fn allocate(&self, state: &AppState, wanted: &BTreeSet<String>) -> Allocated {
        let mut out = Allocated::default();
        let gone: Vec<String> = {
            let mut allocated = lock(&self.hub.allocated);
            let gone = allocated.difference(wanted).cloned().collect();
            allocated.retain(|h| wanted.contains(h));
            gone
        };
        for hash in gone {
            tracing::info!(program = %hash, "no longer allocated by the scheduler: stopping");
            self.deactivate(&hash);
            out.stopped.insert(hash);
        }
        for hash in wanted {
            match self.start_allocated(state, hash).await {
                Ok(()) => {
                    lock(&self.hub.allocated).insert(hash.clone());
                    out.successful.insert(hash.clone());
                }
                Err(reason) => {
                    tracing::warn!(program = %hash, "allocation refused: {reason}");
                    out.failing.insert(hash.clone(), reason);
                }
            }
        }
        out
    }

    /// The programs the scheduler allocated here.
    pub fn allocated(&self) -> BTreeSet<String> {
        lock(&self.hub.allocated).clone()
    }

    async fn start_allocated(&self, state: &AppState, hash: &str) -> Result<(), String> {
        if !crate::message::is_sha256(hash) {
            return Err(format!("{hash:?} is not an item hash"));
        }
        let store = state.executor().store();
        let msg = match state.prefetcher() {
            Some(prefetcher) => prefetcher
                .program(store, hash)
                .await
                .map_err(|e| e.to_string())?,
            None => store.message(hash).map_err(|e| e.to_string())?,
        };
        let msg = std::sync::Arc::unwrap_or_clone(msg);
        let Some(program) = msg.program() else {
            return Err(format!("{hash} is a {} message, not a PROGRAM", msg.kind));
        };
        if !program.on.persistent {
            return Err(format!(
                "{hash}: on.persistent is false; the scheduler allocates persistent programs"
            ));
        }
        program.check_supported().map_err(|e| e.to_string())?;
        let (store_copy, runtime) = (store.clone(), program.runtime.clone());
        tokio::task::spawn_blocking(move || crate::runtime::resolve(&store_copy, &runtime))
            .await
            .map_err(|e| format!("resolving the runtime failed: {e}"))?
            .map_err(|e| e.to_string())?;
        let restart = {
            let mut programs = lock(&self.hub.programs);
            match programs.get_mut(hash) {
                // Active, with its instance kept running: nothing to do.
                Some(active) if active.supervisor.is_some() => return Ok(()),
                // Active, its instance stopped by the operator: the scheduler starts it again.
                Some(active) => {
                    active.supervisor =
                        Some(persistent::Supervisor::spawn(state, self, msg.clone()));
                    true
                }
                None => false,
            }
        };
        if !restart {
            self.activate(state, msg, None);
        }
        Ok(())
    }
}
