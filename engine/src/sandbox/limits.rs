//! The per-execution resource limiter: a fixed memory ceiling that records refused growth.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use wasmtime::ResourceLimiter;

/// The most table elements a guest may hold (function tables of large interpreters are ~10k).
pub const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// Enforces `resources.memory` on every linear memory of one execution.
///
/// Growth past the ceiling is refused (the guest sees `memory.grow` return -1, or its allocator
/// fail); the refusal is remembered so that a guest failing afterwards is reported as
/// out of memory rather than as a plain trap or exit. The ceiling is a fixed number, so growth
/// fails at exactly the same size on every host.
#[derive(Debug)]
pub struct MemoryLimiter {
    max_bytes: usize,
    peak_bytes: Arc<AtomicU64>,
    refused: Option<Refusal>,
    refusals: Arc<AtomicU64>,
}

/// A memory growth the limiter refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// Size of the memory when growth was asked for, in bytes.
    pub current: usize,
    /// The size asked for, in bytes.
    pub desired: usize,
}

impl MemoryLimiter {
    /// A limiter with a ceiling of `max_bytes` per memory.
    pub fn new(max_bytes: u64) -> Self {
        MemoryLimiter {
            max_bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
            peak_bytes: Arc::new(AtomicU64::new(0)),
            refused: None,
            refusals: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A counter of refused growths that the host can read while the guest runs (a
    /// long-lived guest may survive a refusal: CPython turns it into `MemoryError`).
    pub fn refusals(&self) -> Arc<AtomicU64> {
        self.refusals.clone()
    }

    /// The first growth that was refused, if any.
    pub fn refused(&self) -> Option<Refusal> {
        self.refused
    }

    /// The largest memory size granted so far, in bytes.
    pub fn peak_bytes(&self) -> usize {
        self.peak_bytes.load(Ordering::Relaxed) as usize
    }

    /// The largest memory size granted so far, readable by the host while the guest runs.
    pub fn peak(&self) -> Arc<AtomicU64> {
        self.peak_bytes.clone()
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.refused.get_or_insert(Refusal { current, desired });
            self.refusals.fetch_add(1, Ordering::SeqCst);
            return Ok(false);
        }
        self.peak_bytes.fetch_max(desired as u64, Ordering::Relaxed);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        16
    }

    fn memories(&self) -> usize {
        4
    }
}
