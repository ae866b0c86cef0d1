//! The determinism profile: what `environment.reproducible: true` changes in an execution so
//! that two nodes produce bit-identical outputs (`docs/reproducible.md` lists every source of
//! nondeterminism and its answer).
//!
//! The engine configuration is already the same for every execution ([`super::engine_config`]).
//! On top of it, a reproducible execution gets:
//! - virtual wall and monotonic clocks ([`clock`]) that start at a fixed time and advance by a
//!   fixed step per read and by every sleep, which never waits on the host ([`poll`]);
//! - ChaCha20 keyed by the inputs for `random_get` and the insecure random source;
//! - `PYTHONHASHSEED=0` next to the declared environment;
//! - sorted directory listings, synthetic inode and device numbers, fixed timestamps, link
//!   counts and directory sizes ([`fs`]);
//! - a CPU budget decided by fuel alone; the wall-clock deadline becomes a safety net whose
//!   expiry makes the run *inconclusive* rather than a timeout.

pub mod clock;
pub mod fs;
pub mod poll;

use std::sync::Arc;

use cap_std::fs::Dir;
use rand_core::SeedableRng;
use sha2::{Digest, Sha256};
use wasmtime::Linker;
use wasmtime_wasi::WasiCtxBuilder;

use self::clock::{VirtualMonotonic, VirtualTime, VirtualWall};
use super::{GuestState, SandboxConfig};

/// The version of the determinism profile. It changes whenever a rule of the profile changes
/// (a clock step, an inode formula, a PRNG), so receipts of different profiles never compare.
pub const PROFILE_VERSION: u32 = 1;

/// How much a virtual clock advances at each read, in nanoseconds.
pub const CLOCK_STEP_NS: u64 = 1_000;

/// What makes one reproducible execution's nondeterministic inputs fixed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Determinism {
    /// The key of every random source (derive it from the hashes of the inputs).
    pub seed: [u8; 32],
    /// Where the virtual wall clock starts, in nanoseconds since the Unix epoch; also every
    /// file's timestamp.
    pub epoch_ns: u64,
}

impl Determinism {
    /// A profile keyed by `parts` (the hashes of the inputs, in a fixed order) whose clocks
    /// start at `epoch_seconds`.
    pub fn keyed(parts: &[&str], epoch_seconds: f64) -> Self {
        let mut h = Sha256::new();
        h.update(format!(
            "aleph-wasm determinism profile {PROFILE_VERSION}\n"
        ));
        for part in parts {
            h.update(part.as_bytes());
            h.update(b"\n");
        }
        let epoch_ns = if epoch_seconds.is_finite() && epoch_seconds > 0.0 {
            (epoch_seconds * 1e9) as u64
        } else {
            0
        };
        Determinism {
            seed: h.finalize().into(),
            epoch_ns,
        }
    }

    /// A sub-key for one use of the seed.
    fn derive(&self, purpose: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.seed);
        h.update(purpose.as_bytes());
        h.finalize().into()
    }

    /// Installs the clocks and random sources into a WASI context being built; returns the
    /// per-execution state the interposers need.
    pub(super) fn apply(&self, wasi: &mut WasiCtxBuilder, roots: Vec<Option<Dir>>) -> DetState {
        let time = Arc::new(VirtualTime::new(self.epoch_ns));
        let insecure_seed = self.derive("insecure-random-seed");
        let mut seed128 = [0u8; 16];
        seed128.copy_from_slice(&insecure_seed[..16]);
        wasi.wall_clock(VirtualWall(time.clone()))
            .monotonic_clock(VirtualMonotonic(time.clone()))
            .secure_random(chacha20::ChaCha20Rng::from_seed(self.derive("random")))
            .insecure_random(chacha20::ChaCha20Rng::from_seed(
                self.derive("insecure-random"),
            ))
            .insecure_random_seed(u128::from_le_bytes(seed128));
        DetState {
            time,
            roots,
            epoch_ns: self.epoch_ns,
        }
    }
}

/// The per-execution state of the determinism interposers.
pub struct DetState {
    pub(super) time: Arc<VirtualTime>,
    /// The preopened directories, in preopen order (`None` when one could not be opened).
    pub(super) roots: Vec<Option<Dir>>,
    pub(super) epoch_ns: u64,
}

/// The engine and sandbox settings a reproducible result depends on, as a JSON object; its
/// canonical hash identifies the configuration in receipts.
pub fn settings(config: &SandboxConfig) -> serde_json::Value {
    serde_json::json!({
        "wasmtime": super::WASMTIME_VERSION,
        "profile": PROFILE_VERSION,
        "consume_fuel": true,
        "cranelift_nan_canonicalization": true,
        "relaxed_simd_deterministic": true,
        "threads": false,
        "max_wasm_stack": config.max_wasm_stack,
        "fuel_per_second": config.fuel_per_second,
        "output_cap": config.output_cap,
        "clock_step_ns": CLOCK_STEP_NS,
        "random": "chacha20",
        "wasi": "preview1",
    })
}

/// Adds the determinism interposers to `linker` (which must hold WASI preview 1 and the
/// descriptor bookkeeping of [`super::quota`]).
pub(super) fn add_to_linker(linker: &mut Linker<GuestState>) -> anyhow::Result<()> {
    linker.allow_shadowing(true);
    poll::add_to_linker(linker)?;
    fs::add_to_linker(linker)?;
    Ok(())
}
