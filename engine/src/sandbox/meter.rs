//! Per-request fuel for long-lived guests.
//!
//! A long-lived guest (an interpreter serving requests) reads each request from stdin. The
//! meter interposes on `fd_read` of descriptor 0: at every such read the fuel used since the
//! previous one is added to the running total, and the budget is filled up again, so each
//! request gets the full `seconds × fuel_per_second` of its own and the host can tell exactly
//! how much fuel one request took (the total after the request minus the total before).

use std::sync::atomic::{AtomicU64, Ordering};

use wasmtime::{Caller, Linker};

use super::GuestState;

/// The fuel accounting of one long-lived guest.
#[derive(Debug)]
pub struct Meter {
    budget: u64,
    filled_to: AtomicU64,
    consumed: AtomicU64,
    left_at_tick: AtomicU64,
}

impl Meter {
    /// A meter that fills the fuel up to `budget` at every read of stdin.
    pub fn new(budget: u64) -> Self {
        Meter {
            budget,
            filled_to: AtomicU64::new(0),
            consumed: AtomicU64::new(0),
            left_at_tick: AtomicU64::new(u64::MAX),
        }
    }

    /// Fuel consumed by the guest up to its latest read of stdin.
    pub fn consumed(&self) -> u64 {
        self.consumed.load(Ordering::SeqCst)
    }

    /// Fuel consumed up to now: up to the latest read of stdin, plus what was used since, as
    /// of the latest epoch tick (or the end of the guest).
    pub fn consumed_now(&self) -> u64 {
        let filled = self.filled_to.load(Ordering::SeqCst);
        let left = self.left_at_tick.load(Ordering::SeqCst).min(filled);
        self.consumed() + filled.saturating_sub(left)
    }

    /// Records the fuel left at an epoch tick, or when the guest ended (0 when it ran out).
    pub fn tick(&self, fuel_left: u64) {
        self.left_at_tick.store(fuel_left, Ordering::SeqCst);
    }

    /// Records that the store was given `fuel` (at instantiation).
    pub fn filled(&self, fuel: u64) {
        self.filled_to.store(fuel, Ordering::SeqCst);
        self.left_at_tick.store(fuel, Ordering::SeqCst);
    }

    fn on_stdin_read(&self, fuel_left: u64) -> u64 {
        let used = self
            .filled_to
            .load(Ordering::SeqCst)
            .saturating_sub(fuel_left);
        self.consumed.fetch_add(used, Ordering::SeqCst);
        self.filled_to.store(self.budget, Ordering::SeqCst);
        self.left_at_tick.store(self.budget, Ordering::SeqCst);
        self.budget
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
                    if fd == 0
                        && let Some(meter) = caller.data().meter.clone()
                    {
                        let left = caller.get_fuel()?;
                        let refill = meter.on_stdin_read(left);
                        caller.set_fuel(refill)?;
                    }
                    call_wasi!(&mut caller, fd_read(fd, iovs, iovs_len, nread))
                })
            },
        )
        .map_err(|e| anyhow::anyhow!("cannot interpose fd_read: {e}"))?;
    Ok(())
}
