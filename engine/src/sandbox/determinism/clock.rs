//! Virtual clocks: one counter of elapsed nanoseconds shared by the wall clock (epoch +
//! elapsed) and the monotonic clock (elapsed). Every read advances the counter by
//! [`CLOCK_STEP_NS`](super::CLOCK_STEP_NS), so time moves forward for a guest that polls it,
//! and a sleep advances it to the sleep's deadline ([`super::poll`]). Nothing depends on the
//! host's time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use wasmtime_wasi::{HostMonotonicClock, HostWallClock};

use super::CLOCK_STEP_NS;

/// The shared virtual time of one execution.
#[derive(Debug)]
pub struct VirtualTime {
    epoch_ns: u64,
    elapsed: AtomicU64,
}

impl VirtualTime {
    /// Time that starts at `epoch_ns` nanoseconds since the Unix epoch.
    pub fn new(epoch_ns: u64) -> Self {
        VirtualTime {
            epoch_ns,
            elapsed: AtomicU64::new(0),
        }
    }

    /// A read of the clock: advances by one step and returns the elapsed nanoseconds.
    pub fn read(&self) -> u64 {
        self.elapsed
            .fetch_add(CLOCK_STEP_NS, Ordering::SeqCst)
            .saturating_add(CLOCK_STEP_NS)
    }

    /// The elapsed nanoseconds, without advancing.
    pub fn elapsed(&self) -> u64 {
        self.elapsed.load(Ordering::SeqCst)
    }

    /// Advances to `elapsed_ns` if that is later than now (a sleep's deadline).
    pub fn advance_to(&self, elapsed_ns: u64) {
        self.elapsed.fetch_max(elapsed_ns, Ordering::SeqCst);
    }

    /// Where the wall clock started, in nanoseconds since the Unix epoch.
    pub fn epoch_ns(&self) -> u64 {
        self.epoch_ns
    }
}

/// The wall clock over a [`VirtualTime`].
pub struct VirtualWall(pub Arc<VirtualTime>);

impl HostWallClock for VirtualWall {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(CLOCK_STEP_NS)
    }

    fn now(&self) -> Duration {
        Duration::from_nanos(self.0.epoch_ns.saturating_add(self.0.read()))
    }
}

/// The monotonic clock over a [`VirtualTime`].
pub struct VirtualMonotonic(pub Arc<VirtualTime>);

impl HostMonotonicClock for VirtualMonotonic {
    fn resolution(&self) -> u64 {
        CLOCK_STEP_NS
    }

    fn now(&self) -> u64 {
        self.0.read()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_advance_by_a_fixed_step_and_sleeps_jump_forward() {
        let t = Arc::new(VirtualTime::new(1_000_000_000));
        let wall = VirtualWall(t.clone());
        let mono = VirtualMonotonic(t.clone());
        assert_eq!(mono.now(), CLOCK_STEP_NS);
        assert_eq!(
            wall.now(),
            Duration::from_nanos(1_000_000_000 + 2 * CLOCK_STEP_NS)
        );
        t.advance_to(5_000_000);
        assert_eq!(mono.now(), 5_000_000 + CLOCK_STEP_NS);
        t.advance_to(10);
        assert_eq!(t.elapsed(), 5_000_000 + CLOCK_STEP_NS, "never backwards");
    }
}
