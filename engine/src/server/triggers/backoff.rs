//! Exponential backoff between restarts of a persistent program: the first retry after
//! [`BackoffPolicy::initial`], each next one twice as late up to [`BackoffPolicy::max`], and
//! back to the start once an instance has stayed up for [`BackoffPolicy::stable`].

use std::time::Duration;

/// How restarts are spaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// The delay before the first restart. By default 100 ms.
    pub initial: Duration,
    /// The longest delay. By default 30 s.
    pub max: Duration,
    /// An instance that ran at least this long resets the delay to `initial`. By default 60 s.
    pub stable: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            stable: Duration::from_secs(60),
        }
    }
}

/// The delays of one program's restarts.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: BackoffPolicy,
    next: Duration,
}

impl Backoff {
    /// A backoff at its first delay.
    pub fn new(policy: BackoffPolicy) -> Self {
        Backoff {
            next: policy.initial.min(policy.max),
            policy,
        }
    }

    /// The delay before the next restart; the one after is twice as long (up to the cap).
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = self.next.saturating_mul(2).min(self.policy.max);
        delay
    }

    /// Notes that an instance ran for `uptime`: a stable run resets the delays.
    pub fn ran_for(&mut self, uptime: Duration) {
        if uptime >= self.policy.stable {
            self.reset();
        }
    }

    /// Back to the first delay.
    pub fn reset(&mut self) {
        self.next = self.policy.initial.min(self.policy.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_reset_after_a_stable_run() {
        let mut b = Backoff::new(BackoffPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(700),
            stable: Duration::from_secs(10),
        });
        let delays: Vec<u64> = (0..5).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(delays, [100, 200, 400, 700, 700]);
        b.ran_for(Duration::from_secs(9));
        assert_eq!(b.next_delay(), Duration::from_millis(700));
        b.ran_for(Duration::from_secs(10));
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }
}
