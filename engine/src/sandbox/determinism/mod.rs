//! The determinism profile: what `environment.reproducible: true` changes in an execution so
//! that two nodes produce bit-identical outputs (`docs/reproducible.md` lists every source of
//! nondeterminism and its answer).
//!
//! The engine configuration is already the same for every execution ([`super::engine_config`]).
//! On top of it, a reproducible execution gets:
//! - virtual wall and monotonic clocks ([`clock`]) that start at a fixed time and advance by a
//!   fixed step per read and by every sleep, which never waits on the host ([`poll`]);
//! - ChaCha20 for `random_get` and the insecure random source: keyed by the message while the
//!   interpreter boots, and re-keyed by the message and the trigger at the first event (the
//!   *reseed*), so one booted instance — or one snapshot of it — serves every trigger;
//! - `PYTHONHASHSEED=0` next to the declared environment;
//! - sorted directory listings, synthetic inode and device numbers, fixed timestamps, link
//!   counts and directory sizes ([`fs`]);
//! - a CPU budget decided by fuel alone; the wall-clock deadline becomes a safety net whose
//!   expiry makes the run *inconclusive* rather than a timeout.

pub mod clock;
pub mod fs;
pub mod poll;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use cap_std::fs::Dir;
use chacha20::ChaCha20Rng;
use rand_core::{SeedableRng, TryRng};
use sha2::{Digest, Sha256};
use wasmtime::Linker;
use wasmtime_wasi::WasiCtxBuilder;

use self::clock::{VirtualMonotonic, VirtualTime, VirtualWall};
use super::{GuestState, SandboxConfig};

/// The version of the determinism profile. It changes whenever a rule of the profile changes
/// (a clock step, an inode formula, a PRNG), so receipts of different profiles never compare.
pub const PROFILE_VERSION: u32 = 2;

/// How much a virtual clock advances at each read, in nanoseconds.
pub const CLOCK_STEP_NS: u64 = 1_000;

/// What makes one reproducible execution's nondeterministic inputs fixed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Determinism {
    /// The key of the random sources while the instance boots (everything before its first
    /// event). It does not depend on the trigger, so a booted instance is the same for every
    /// trigger of the message and can be snapshotted.
    pub boot_seed: [u8; 32],
    /// The key of the random sources from the first event on (derive it from the hashes of
    /// the inputs and the trigger).
    pub seed: [u8; 32],
    /// Where the virtual wall clock starts, in nanoseconds since the Unix epoch; also every
    /// file's timestamp.
    pub epoch_ns: u64,
}

fn key(parts: &[&str]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(format!(
        "aleph-wasm determinism profile {PROFILE_VERSION}\n"
    ));
    for part in parts {
        h.update(part.as_bytes());
        h.update(b"\n");
    }
    h.finalize().into()
}

impl Determinism {
    /// A profile whose boot is keyed by `boot` (the hashes of what the boot reads, in a fixed
    /// order), whose execution is keyed by `boot` and `execution` (the trigger), and whose
    /// clocks start at `epoch_seconds`.
    pub fn keyed(boot: &[&str], execution: &[&str], epoch_seconds: f64) -> Self {
        let all: Vec<&str> = boot.iter().chain(execution).copied().collect();
        let epoch_ns = if epoch_seconds.is_finite() && epoch_seconds > 0.0 {
            (epoch_seconds * 1e9) as u64
        } else {
            0
        };
        Determinism {
            boot_seed: key(boot),
            seed: key(&all),
            epoch_ns,
        }
    }

    /// The same profile keyed by the execution key from the start (for programs that have no
    /// boot phase and no reseed event).
    pub fn without_boot_phase(mut self) -> Self {
        self.boot_seed = self.seed;
        self
    }

    /// A sub-key of `seed` for one use.
    fn derive(seed: &[u8; 32], purpose: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(seed);
        h.update(purpose.as_bytes());
        h.finalize().into()
    }

    /// The seed of the interpreter's own random module, sent with the reseed event (hex).
    pub fn interpreter_seed(&self) -> String {
        hex::encode(Self::derive(&self.seed, "interpreter-random"))
    }

    /// Installs the clocks and random sources into a WASI context being built; returns the
    /// per-execution state the interposers need. The random sources are keyed for the boot;
    /// the virtual clocks start at `elapsed_ns` (a restored snapshot's time) or at zero.
    pub(super) fn apply(
        &self,
        wasi: &mut WasiCtxBuilder,
        roots: Vec<Option<Dir>>,
        elapsed_ns: Option<u64>,
    ) -> DetState {
        let time = Arc::new(VirtualTime::new(self.epoch_ns));
        if let Some(elapsed) = elapsed_ns {
            time.advance_to(elapsed);
        }
        let random = KeyedRandom::new(Self::derive(&self.boot_seed, "random"));
        let insecure = KeyedRandom::new(Self::derive(&self.boot_seed, "insecure-random"));
        let insecure_seed = Self::derive(&self.boot_seed, "insecure-random-seed");
        let mut seed128 = [0u8; 16];
        seed128.copy_from_slice(&insecure_seed[..16]);
        wasi.wall_clock(VirtualWall(time.clone()))
            .monotonic_clock(VirtualMonotonic(time.clone()))
            .secure_random(random.clone())
            .insecure_random(insecure.clone())
            .insecure_random_seed(u128::from_le_bytes(seed128));
        DetState {
            time,
            roots,
            epoch_ns: self.epoch_ns,
            random: Reseed { random, insecure },
        }
    }
}

/// A ChaCha20 stream that the host can re-key while the guest is waiting for an event.
#[derive(Clone)]
struct KeyedRandom(Arc<Mutex<ChaCha20Rng>>);

impl KeyedRandom {
    fn new(key: [u8; 32]) -> Self {
        KeyedRandom(Arc::new(Mutex::new(ChaCha20Rng::from_seed(key))))
    }

    fn rekey(&self, key: [u8; 32]) {
        *self.lock() = ChaCha20Rng::from_seed(key);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ChaCha20Rng> {
        match self.0.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
}

impl TryRng for KeyedRandom {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        self.lock().try_next_u32()
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        self.lock().try_next_u64()
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        self.lock().try_fill_bytes(dst)
    }
}

/// The handle that re-keys one execution's random sources from the boot key to the execution
/// key (at the reseed event, while the guest waits for it).
#[derive(Clone)]
pub struct Reseed {
    random: KeyedRandom,
    insecure: KeyedRandom,
}

impl Reseed {
    /// Re-keys the random sources for the execution of `d`.
    pub fn rekey(&self, d: &Determinism) {
        self.random.rekey(Determinism::derive(&d.seed, "random"));
        self.insecure
            .rekey(Determinism::derive(&d.seed, "insecure-random"));
    }
}

impl std::fmt::Debug for Reseed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reseed")
    }
}

/// The per-execution state of the determinism interposers.
pub struct DetState {
    pub(super) time: Arc<VirtualTime>,
    /// The preopened directories, in preopen order (`None` when one could not be opened).
    pub(super) roots: Vec<Option<Dir>>,
    pub(super) epoch_ns: u64,
    pub(super) random: Reseed,
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
