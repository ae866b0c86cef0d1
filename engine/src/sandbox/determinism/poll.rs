//! `poll_oneoff` and `sched_yield` under the determinism profile: a sleep never waits on the
//! host. When every subscription is a clock, the virtual time jumps to the earliest deadline
//! and the subscriptions due by then are reported; descriptor subscriptions are reported ready
//! at once (a plain read then blocks, as it would without the poll). `sched_yield` does
//! nothing.

use wasmtime::{Caller, Linker};

use super::super::GuestState;
use super::fs::{ERRNO_FAULT, ERRNO_INVAL, read_guest, write_guest};

const SUBSCRIPTION_SIZE: usize = 48;
const EVENT_SIZE: usize = 32;
const TAG_CLOCK: u8 = 0;
const CLOCK_REALTIME: u32 = 0;
const ABSTIME: u16 = 1;

/// One decoded subscription.
struct Subscription {
    userdata: u64,
    tag: u8,
    clock_id: u32,
    timeout: u64,
    flags: u16,
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

fn decode(bytes: &[u8]) -> Subscription {
    Subscription {
        userdata: u64_at(bytes, 0),
        tag: bytes[8],
        clock_id: u32::from_le_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]),
        timeout: u64_at(bytes, 24),
        flags: u16::from_le_bytes([bytes[40], bytes[41]]),
    }
}

fn event(userdata: u64, tag: u8) -> [u8; EVENT_SIZE] {
    let mut e = [0u8; EVENT_SIZE];
    e[..8].copy_from_slice(&userdata.to_le_bytes());
    e[10] = tag;
    e
}

/// Adds the interposers to `linker`.
pub(super) fn add_to_linker(linker: &mut Linker<GuestState>) -> anyhow::Result<()> {
    linker
        .func_wrap(
            "wasi_snapshot_preview1",
            "poll_oneoff",
            |mut caller: Caller<'_, GuestState>,
             subs: i32,
             events: i32,
             n: i32,
             nevents: i32|
             -> wasmtime::Result<i32> {
                Ok(match poll(&mut caller, subs, events, n, nevents) {
                    Ok(()) => 0,
                    Err(errno) => errno,
                })
            },
        )
        .map_err(|e| anyhow::anyhow!("cannot interpose poll_oneoff: {e}"))?;
    linker
        .func_wrap(
            "wasi_snapshot_preview1",
            "sched_yield",
            |_caller: Caller<'_, GuestState>| -> wasmtime::Result<i32> { Ok(0) },
        )
        .map_err(|e| anyhow::anyhow!("cannot interpose sched_yield: {e}"))?;
    Ok(())
}

fn poll(
    caller: &mut Caller<'_, GuestState>,
    subs: i32,
    events: i32,
    n: i32,
    nevents: i32,
) -> Result<(), i32> {
    let n = n as u32 as usize;
    if n == 0 {
        return Err(ERRNO_INVAL);
    }
    let raw = read_guest(
        caller,
        subs,
        n.checked_mul(SUBSCRIPTION_SIZE).ok_or(ERRNO_FAULT)?,
    )?;
    let subs: Vec<Subscription> = raw.chunks_exact(SUBSCRIPTION_SIZE).map(decode).collect();
    let Some(det) = caller.data().det.as_ref() else {
        return Err(ERRNO_INVAL);
    };
    let time = det.time.clone();
    let mut out = Vec::new();
    if subs.iter().any(|s| s.tag != TAG_CLOCK) {
        for s in subs.iter().filter(|s| s.tag != TAG_CLOCK) {
            out.extend_from_slice(&event(s.userdata, s.tag));
        }
    } else {
        let now = time.elapsed();
        let deadline = |s: &Subscription| -> u64 {
            if s.flags & ABSTIME == 0 {
                now.saturating_add(s.timeout)
            } else if s.clock_id == CLOCK_REALTIME {
                s.timeout.saturating_sub(time.epoch_ns())
            } else {
                s.timeout
            }
        };
        let earliest = subs.iter().map(deadline).min().unwrap_or(now);
        time.advance_to(earliest);
        let reached = time.elapsed();
        for s in subs.iter().filter(|s| deadline(s) <= reached) {
            out.extend_from_slice(&event(s.userdata, TAG_CLOCK));
        }
    }
    let count = (out.len() / EVENT_SIZE) as u32;
    write_guest(caller, events, &out)?;
    write_guest(caller, nevents, &count.to_le_bytes())
}
