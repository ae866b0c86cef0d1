//! Delivery to one subscribed program: a task that walks the arrivals journal from the
//! program's cursor, one message at a time — so in arrival order — and runs the program for
//! each message matching one of its subscriptions (ASGI: `{"type": "aleph.message", "body":
//! <message JSON>}`; binary: a job with the JSON on stdin).
//!
//! At least once: a failed run is retried ([`super::TriggerConfig::delivery_attempts`], with a
//! doubling pause), then given up (logged, counted as `failed`); the cursor is saved after
//! each message, so a restart resumes at the first message not yet handled.

use super::{Triggers, execute, filter, stderr_tail};
use crate::interface::Trigger;
use crate::message::Message;
use crate::server::AppState;

/// Walks the arrivals from `cursor` for `program`, until aborted.
pub(super) async fn run(state: AppState, triggers: Triggers, program: Message, mut cursor: usize) {
    let filters = program
        .program()
        .map(|p| p.on.message.clone())
        .unwrap_or_default();
    let mut arrivals = triggers.hub.arrivals.subscribe();
    loop {
        if arrivals.wait_for(|len| *len > cursor).await.is_err() {
            return;
        }
        if let Some(hash) = triggers.arrival(cursor) {
            match state.executor().store().get_message(&hash) {
                Ok(msg) => {
                    let json = msg.to_json();
                    if filter::matches_any(&filters, &json) {
                        deliver(&state, &triggers, &program, &hash, json).await;
                    }
                }
                Err(e) => tracing::debug!(program = %program.item_hash, "skipping {hash}: {e}"),
            }
        }
        cursor += 1;
        triggers.save_cursor(&program.item_hash, cursor);
    }
}

/// Runs `program` for the message `json` until it succeeds or the attempts run out.
async fn deliver(
    state: &AppState,
    triggers: &Triggers,
    program: &Message,
    hash: &str,
    json: serde_json::Value,
) {
    let attempts = triggers.config().delivery_attempts.max(1);
    let mut pause = triggers.config().retry_delay;
    let trigger = Trigger::Message(Box::new(json));
    for attempt in 1..=attempts {
        let outcome = execute(state, program, trigger.clone()).await;
        if outcome.is_ok() {
            state.metrics().message_delivery("delivered");
            tracing::info!(program = %program.item_hash, message = hash, "message delivered");
            return;
        }
        tracing::warn!(
            program = %program.item_hash,
            message = hash,
            attempt,
            attempts,
            outcome = outcome.kind.as_str(),
            error = outcome.error.as_deref().unwrap_or(""),
            stderr = %stderr_tail(&outcome),
            "message delivery failed"
        );
        if attempt == attempts {
            state.metrics().message_delivery("failed");
        } else {
            state.metrics().message_delivery("retried");
            tokio::time::sleep(pause).await;
            pause = pause.saturating_mul(2);
        }
    }
}
