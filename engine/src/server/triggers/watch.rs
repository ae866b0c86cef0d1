//! Messages written into the store by another process (`aleph-wasm store add-message` while
//! the node runs): the store's message directory is polled every
//! [`super::TriggerConfig::store_poll`], and messages not yet seen are taken in oldest file
//! first, as arrivals ([`Triggers::arrived`]).

use std::path::Path;
use std::time::SystemTime;

use super::{Triggers, lock};
use crate::server::AppState;
use crate::store::{Store, StoreError};

/// The item hashes in the store that `known` does not know, oldest message file first (ties
/// by hash).
pub(super) fn unseen(
    store: &Store,
    known: impl Fn(&str) -> bool,
) -> Result<Vec<String>, StoreError> {
    let dir = store.root().join("messages");
    let mut new: Vec<(SystemTime, String)> = store
        .message_hashes()?
        .into_iter()
        .filter(|h| !known(h))
        .map(|h| (modified(&dir.join(format!("{h}.json"))), h))
        .collect();
    new.sort();
    Ok(new.into_iter().map(|(_, h)| h).collect())
}

fn modified(path: &Path) -> SystemTime {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

impl Triggers {
    /// Takes in every message of the store not seen yet, oldest first.
    pub async fn scan_store(&self, state: &AppState) {
        let store = state.executor().store().clone();
        let triggers = self.clone();
        let found =
            tokio::task::spawn_blocking(move || unseen(&store, |h| triggers.known(h))).await;
        let hashes = match found {
            Ok(Ok(hashes)) => hashes,
            Ok(Err(e)) => {
                tracing::warn!("cannot list the store's messages: {e}");
                return;
            }
            Err(e) => {
                tracing::warn!("the store scan failed: {e}");
                return;
            }
        };
        for hash in hashes {
            match state.executor().store().get_message(&hash) {
                Ok(msg) => self.arrived(state, msg),
                Err(e) => {
                    tracing::warn!("stored message {hash} is unreadable: {e}");
                    lock(&self.hub.unreadable).insert(hash);
                }
            }
        }
    }
}

/// Polls the store until aborted.
pub(super) async fn run(state: AppState, triggers: Triggers) {
    let mut ticks = tokio::time::interval(triggers.config().store_poll);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        triggers.scan_store(&state).await;
    }
}
