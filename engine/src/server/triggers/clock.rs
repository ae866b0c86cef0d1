//! Time for the cron scheduler. A [`Clock`] says what time it is and waits for a moment to
//! come: [`SystemClock`] is the real clock (production); [`ManualClock`] only moves when told
//! to, so tests exercise schedules without waiting real minutes — the scheduler runs the same
//! code on both.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// A future that resolves when a clock reaches a moment.
pub type Sleep<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// The longest a [`SystemClock`] sleeps at once: the scheduler looks at the clock again at
/// least this often, so a wall-clock jump is noticed.
pub const MAX_SYSTEM_SLEEP: Duration = Duration::from_secs(30);

/// A source of wall-clock time.
pub trait Clock: Send + Sync + Debug {
    /// Seconds since the epoch, now.
    fn now(&self) -> f64;

    /// Resolves once the clock reads `at` (seconds since the epoch) or later. It may resolve
    /// earlier (callers look at [`Clock::now`] again), never much later.
    fn sleep_until(&self, at: f64) -> Sleep<'_>;
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> f64 {
        crate::server::unix_now()
    }

    fn sleep_until(&self, at: f64) -> Sleep<'_> {
        let wait = at - self.now();
        let wait = if wait.is_finite() && wait > 0.0 {
            Duration::from_secs_f64(wait).min(MAX_SYSTEM_SLEEP)
        } else {
            Duration::ZERO
        };
        Box::pin(tokio::time::sleep(wait))
    }
}

/// A clock that stands still until [`ManualClock::set`] or [`ManualClock::advance`] moves it.
/// Clones share the same time.
#[derive(Debug, Clone)]
pub struct ManualClock {
    time: Arc<watch::Sender<f64>>,
}

impl ManualClock {
    /// A clock that reads `start` (seconds since the epoch).
    pub fn new(start: f64) -> Self {
        ManualClock {
            time: Arc::new(watch::Sender::new(start)),
        }
    }

    /// Sets the time to `at`; whoever sleeps until `at` or earlier wakes up.
    pub fn set(&self, at: f64) {
        self.time.send_replace(at);
    }

    /// Moves the time forward by `by`.
    pub fn advance(&self, by: Duration) {
        let now = *self.time.borrow();
        self.set(now + by.as_secs_f64());
    }
}

impl Clock for ManualClock {
    fn now(&self) -> f64 {
        *self.time.borrow()
    }

    fn sleep_until(&self, at: f64) -> Sleep<'_> {
        let mut rx = self.time.subscribe();
        Box::pin(async move {
            let _ = rx.wait_for(|now| *now >= at).await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_manual_clock_wakes_sleepers_when_it_reaches_their_time() {
        let clock = ManualClock::new(100.0);
        let sleeper = {
            let clock = clock.clone();
            tokio::spawn(async move { clock.sleep_until(160.0).await })
        };
        clock.set(159.0);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!sleeper.is_finished(), "woke before its time");
        clock.advance(Duration::from_secs(1));
        tokio::time::timeout(Duration::from_secs(5), sleeper)
            .await
            .expect("the sleeper never woke")
            .unwrap();
        assert_eq!(clock.now(), 160.0);
    }

    #[tokio::test]
    async fn the_system_clock_does_not_sleep_for_the_past() {
        let clock = SystemClock;
        tokio::time::timeout(
            Duration::from_secs(1),
            clock.sleep_until(clock.now() - 10.0),
        )
        .await
        .expect("sleeping until a past moment must return at once");
    }
}
