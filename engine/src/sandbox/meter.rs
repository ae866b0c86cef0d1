//! Fuel for long-lived guests, granted per event by the host.
//!
//! A long-lived guest (an interpreter serving requests) starts with its boot fuel. Afterwards
//! the host *grants* each request or event its budget (`seconds × fuel_per_second`) when it
//! sends it; the grants are put into the store at the guest's next read of stdin — where it
//! takes the event in — and never otherwise, so a request's work, the reading of a large body
//! included, is paid from its own budget. What the store may hold is capped at one budget per
//! event in flight (at least one): unused fuel of finished events does not pile up. When the
//! fuel runs out the guest traps, ending the instance.
//!
//! The meter also counts what the guest consumed, so the host can tell how much fuel an event
//! took (the count after it minus the count before).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use wasmtime::{Caller, Linker};

use super::GuestState;

#[derive(Debug, Default)]
struct Tank {
    /// Fuel put into the store so far, boot fuel included.
    given: u64,
    /// Granted and not yet put into the store.
    pending: u64,
    /// Events granted and not yet finished.
    in_flight: u64,
    /// Fuel consumed up to the latest read of stdin.
    consumed_at_read: u64,
}

/// The fuel accounting of one long-lived guest.
#[derive(Debug)]
pub struct Meter {
    budget: u64,
    tank: Mutex<Tank>,
    /// Fuel consumed as of the latest epoch tick, read of stdin or end.
    consumed_at_tick: AtomicU64,
}

impl Meter {
    /// A meter whose events each get `budget` fuel.
    pub fn new(budget: u64) -> Self {
        Meter {
            budget,
            tank: Mutex::new(Tank::default()),
            consumed_at_tick: AtomicU64::new(0),
        }
    }

    fn tank(&self) -> std::sync::MutexGuard<'_, Tank> {
        match self.tank.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Fuel consumed by the guest up to its latest read of stdin.
    pub fn consumed(&self) -> u64 {
        self.tank().consumed_at_read
    }

    /// Fuel consumed up to now, as of the latest epoch tick (or read of stdin, or the end).
    pub fn consumed_now(&self) -> u64 {
        self.consumed_at_tick.load(Ordering::SeqCst)
    }

    /// Records the fuel left at an epoch tick, or when the guest ended (0 when it ran out).
    pub fn tick(&self, fuel_left: u64) {
        let given = self.tank().given;
        self.consumed_at_tick
            .store(given.saturating_sub(fuel_left), Ordering::SeqCst);
    }

    /// Records that the store was given `fuel` at instantiation.
    pub fn filled(&self, fuel: u64) {
        self.tank().given = fuel;
    }

    /// Grants one event its budget; it reaches the store at the guest's next read of stdin.
    pub fn grant(&self) {
        let mut tank = self.tank();
        tank.pending = tank.pending.saturating_add(self.budget);
        tank.in_flight += 1;
    }

    /// An event granted with [`Meter::grant`] has finished.
    pub fn finished(&self) {
        let mut tank = self.tank();
        tank.in_flight = tank.in_flight.saturating_sub(1);
    }

    /// When the guest starts a read of stdin with `fuel_left` in the store: records what it
    /// has consumed (a host waiting for the guest to block in that read then knows).
    fn on_read_start(&self, fuel_left: u64) {
        let mut tank = self.tank();
        let consumed = tank.given.saturating_sub(fuel_left);
        tank.consumed_at_read = consumed;
        self.consumed_at_tick.store(consumed, Ordering::SeqCst);
    }

    /// When a read of stdin returns with `fuel_left` in the store: the fuel the store should
    /// now hold — what is left plus the grants of the events sent so far, at most one budget
    /// per event in flight (at least one).
    fn on_read_end(&self, fuel_left: u64) -> u64 {
        let mut tank = self.tank();
        let consumed = tank.given.saturating_sub(fuel_left);
        let cap = self.budget.saturating_mul(tank.in_flight.max(1));
        let fuel = fuel_left
            .saturating_add(std::mem::take(&mut tank.pending))
            .min(cap);
        tank.given = consumed.saturating_add(fuel);
        fuel
    }
}

/// Adds the `fd_read` interposer to `linker` (which must already hold WASI preview 1).
pub(super) fn add_to_linker(linker: &mut Linker<GuestState>) -> anyhow::Result<()> {
    linker.allow_shadowing(true);
    linker
        .func_wrap_async(
            "wasi_snapshot_preview1",
            "fd_read",
            |mut caller: Caller<'_, GuestState>,
             (fd, iovs, iovs_len, nread): (i32, i32, i32, i32)| {
                Box::new(async move {
                    let meter = if fd == 0 {
                        caller.data().meter.clone()
                    } else {
                        None
                    };
                    if let Some(meter) = &meter {
                        meter.on_read_start(caller.get_fuel()?);
                    }
                    let result = call_wasi!(&mut caller, fd_read(fd, iovs, iovs_len, nread));
                    if let Some(meter) = &meter {
                        let left = caller.get_fuel()?;
                        let fuel = meter.on_read_end(left);
                        if fuel != left {
                            caller.set_fuel(fuel)?;
                        }
                    }
                    result
                })
            },
        )
        .map_err(|e| anyhow::anyhow!("cannot interpose fd_read: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(m: &Meter, left: u64) -> u64 {
        m.on_read_start(left);
        m.on_read_end(left)
    }

    #[test]
    fn grants_reach_the_store_after_a_read_and_only_then() {
        let m = Meter::new(100);
        m.filled(1000);
        // Boot used 400; its leftover is cut to one budget at the first read.
        assert_eq!(read(&m, 600), 100);
        assert_eq!(m.consumed(), 400);
        // The guest blocks reading; the host grants and sends meanwhile: the fuel is there
        // when the read returns.
        m.on_read_start(100);
        m.grant();
        assert_eq!(m.on_read_end(100), 100);
        // The event reads its body in many reads: no refill on the way.
        assert_eq!(read(&m, 60), 60);
        assert_eq!(read(&m, 10), 10);
        assert_eq!(m.consumed(), 490);
        m.finished();
        m.grant();
        m.grant();
        assert_eq!(read(&m, 10), 200);
        assert_eq!(m.consumed(), 490);
        m.tick(150);
        assert_eq!(m.consumed_now(), 540);
        // Leftovers do not pile up: two events in flight hold at most two budgets.
        m.finished();
        m.grant();
        assert_eq!(read(&m, 150), 200);
    }
}
