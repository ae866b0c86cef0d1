//! The supervisor of one persistent program: starts its instance
//! ([`crate::executor::Executor::start_persistent`]), waits for it to end, and starts it again
//! after an exponential backoff (reset by a stable run). An amend restarts it at once; a stop
//! (operator, deactivation, shutdown) ends the supervisor after stopping the instance.

use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{Backoff, Triggers};
use crate::message::Message;
use crate::server::AppState;

/// What the supervisor is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Control {
    /// Keep an instance running; a new generation replaces the current instance.
    Run { generation: u64 },
    /// Stop the instance and end.
    Stop,
}

/// A running supervisor.
pub(super) struct Supervisor {
    control: watch::Sender<Control>,
    task: JoinHandle<()>,
}

impl Supervisor {
    /// Starts supervising the persistent program `msg`.
    pub(super) fn spawn(state: &AppState, triggers: &Triggers, msg: Message) -> Self {
        let (control, rx) = watch::channel(Control::Run { generation: 0 });
        let task = tokio::spawn(supervise(state.clone(), triggers.clone(), msg, rx));
        Supervisor { control, task }
    }

    /// Replaces the instance with a fresh one now (no backoff).
    pub(super) fn restart(&self) {
        self.control.send_modify(|c| {
            if let Control::Run { generation } = c {
                *generation += 1;
            }
        });
    }

    /// Asks the supervisor to stop its instance and end.
    pub(super) fn stop(&self) {
        self.control.send_replace(Control::Stop);
    }

    /// Waits at most `limit` for the supervisor to end, then aborts it.
    pub(super) async fn wait(mut self, limit: Duration) {
        if tokio::time::timeout(limit, &mut self.task).await.is_err() {
            self.task.abort();
        }
    }

    /// Stops and waits (see [`Supervisor::stop`], [`Supervisor::wait`]).
    pub(super) async fn stop_and_wait(self, limit: Duration) {
        self.stop();
        self.wait(limit).await;
    }

    /// Ends the supervisor at once; its instance goes with it.
    pub(super) fn abort(&self) {
        self.task.abort();
    }
}

/// The next request from the controller; `Stop` once the controller is gone.
async fn changed(rx: &mut watch::Receiver<Control>) -> Control {
    match rx.changed().await {
        Ok(()) => *rx.borrow_and_update(),
        Err(_) => Control::Stop,
    }
}

async fn supervise(
    state: AppState,
    triggers: Triggers,
    msg: Message,
    mut control: watch::Receiver<Control>,
) {
    let key = msg.item_hash.clone();
    let mut backoff = Backoff::new(triggers.config().backoff);
    let mut restarts = 0u64;
    let mut last_end: Option<String> = None;
    loop {
        if *control.borrow_and_update() == Control::Stop {
            break;
        }
        triggers.set_status(&key, "starting", restarts, last_end.clone());
        let started = Instant::now();
        let attempt = tokio::select! {
            r = state.executor().start_persistent(&msg) => Some(r),
            c = changed(&mut control) => {
                if c == Control::Stop {
                    break;
                }
                None
            }
        };
        let why = match attempt {
            // Replaced while starting: start again.
            None => continue,
            Some(Err(e)) => {
                tracing::warn!(program = %key, "the persistent instance cannot start: {e}");
                state.metrics().persistent_restart("start_failed");
                format!("could not start: {e}")
            }
            Some(Ok(mut running)) => {
                tracing::info!(program = %key, "persistent instance running");
                triggers.set_status(&key, "running", restarts, last_end.clone());
                let ended = tokio::select! {
                    why = running.ended() => Ok(why),
                    c = changed(&mut control) => Err(c),
                };
                match ended {
                    Err(c) => {
                        running.stop(state.executor()).await;
                        if c == Control::Stop {
                            break;
                        }
                        // An amend: the new version starts at once.
                        backoff.reset();
                        continue;
                    }
                    Ok(why) => {
                        backoff.ran_for(started.elapsed());
                        state.metrics().persistent_restart("ended");
                        tracing::warn!(program = %key, "the persistent instance ended: {why}");
                        why
                    }
                }
            }
        };
        restarts += 1;
        last_end = Some(why);
        let delay = backoff.next_delay();
        triggers.set_status(&key, "backoff", restarts, last_end.clone());
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            c = changed(&mut control) => {
                if c == Control::Stop {
                    break;
                }
            }
        }
    }
    tracing::info!(program = %key, "persistent instance stopped");
    triggers.set_status(&key, "stopped", restarts, last_end);
}
