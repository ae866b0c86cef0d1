//! What metering costs the interpreter: `benches/python/interpreter_speed` (the Python a
//! request runs) on the python-3.12 interpreter under plain wasmtime, with the engine's
//! metering (fuel and epoch interruption), with epochs only and with neither, against native
//! CPython, the variants taking turns; and the engine's metering with tables filled at
//! instantiation instead of on first use (each variant's instantiation time is printed: what
//! eager tables cost an instance). Every other setting is the engine's
//! (`aleph_wasm::sandbox::engine_config`), so the figures isolate one setting each.
//!
//! `cargo run --release -p aleph-wasm-benches --bin metering-cost [-- --rounds N] [-- --module FILE
//! [--stdlib-zip]]` (`--module`: another build of the interpreter, e.g. one optimised by
//! `wasm-opt -O3`; `--stdlib-zip`: the module carries its standard library as a trailing zip, as
//! the source-built `python-3.11-pydantic` does, so its directory is preopened at
//! `/opt/aleph-wasm` and the module put on `PYTHONPATH`, as that runtime's manifest does. Set
//! `PYTHON` to the native CPython of the same version.)

use std::path::{Path, PathBuf};
use std::process::Command;

use aleph_wasm::runtime;
use aleph_wasm::sandbox::{SandboxConfig, engine_config};
use aleph_wasm::store::Store;
use aleph_wasm_benches::{bench_cache, workspace};
use anyhow::{Context, anyhow, bail};
use wasmtime::{Engine, Linker, Module, Store as WasmStore};
use wasmtime_wasi::p1::{self, WasiP1Ctx};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

/// A wasmtime configuration under test.
struct Variant {
    name: &'static str,
    fuel: bool,
    epochs: bool,
    /// Tables filled at instantiation (`Config::table_lazy_init(false)`) instead of on first
    /// use (wasmtime's default, which the engine keeps): `call_indirect` then skips its
    /// is-it-initialised check.
    eager_tables: bool,
}

const VARIANTS: [Variant; 4] = [
    Variant {
        name: "fuel + epochs (the engine's)",
        fuel: true,
        epochs: true,
        eager_tables: false,
    },
    Variant {
        name: "epochs only",
        fuel: false,
        epochs: true,
        eager_tables: false,
    },
    Variant {
        name: "no metering",
        fuel: false,
        epochs: false,
        eager_tables: false,
    },
    Variant {
        name: "fuel + epochs, eager tables",
        fuel: true,
        epochs: true,
        eager_tables: true,
    },
];

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut rounds = 5usize;
    let mut module_file: Option<PathBuf> = None;
    let mut stdlib_zip = false;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--rounds" => rounds = it.next().context("--rounds N")?.parse()?,
            "--module" => module_file = Some(it.next().context("--module FILE")?.into()),
            "--stdlib-zip" => stdlib_zip = true,
            other => bail!("unknown argument {other:?} (--rounds N, --module FILE, --stdlib-zip)"),
        }
    }
    let root = workspace();
    let cache = bench_cache(&root.join("target/aleph-wasm-bench-cache"))?;
    let module_file = match module_file {
        Some(file) => file,
        None => interpreter(&root)?,
    };
    let app = root.join("benches/python/interpreter_speed/app.py");
    let source = std::fs::read_to_string(&app).with_context(|| app.display().to_string())?;
    let home = if stdlib_zip {
        Some(GuestHome::new(&module_file)?)
    } else {
        None
    };

    let compiled: Vec<(Engine, Module)> = VARIANTS
        .iter()
        .map(|v| compile(v, &module_file, &cache))
        .collect::<anyhow::Result<_>>()?;
    let mut native = Vec::new();
    let mut guest: Vec<Vec<f64>> = vec![Vec::new(); VARIANTS.len()];
    let mut instantiate: Vec<Vec<f64>> = vec![Vec::new(); VARIANTS.len()];
    for round in 1..=rounds {
        native.push(run_native(&app)?);
        for (i, (engine, module)) in compiled.iter().enumerate() {
            let (step_ns, instantiate_us) =
                run_guest(&VARIANTS[i], engine, module, &source, home.as_ref())?;
            guest[i].push(step_ns);
            instantiate[i].push(instantiate_us);
        }
        eprintln!("round {round}/{rounds} done");
    }
    let native = median(native);
    println!(
        "interpreter_speed, ns per step, median of {rounds} rounds taking turns ({}):",
        module_file.display()
    );
    println!("  {:<32} {:>8.0}  1.00x native", "native CPython", native);
    let metered = median(guest[0].clone());
    for (i, v) in VARIANTS.iter().enumerate() {
        let m = median(guest[i].clone());
        println!(
            "  {:<32} {:>8.0}  {:.2}x native, {:.3}x the engine's; instantiation {:.0} us",
            v.name,
            m,
            m / native,
            m / metered,
            median(instantiate[i].clone())
        );
    }
    Ok(())
}

/// Where a module that carries its standard library as a trailing zip finds it: the module's
/// directory, preopened read-only at [`GuestHome::MOUNT`].
struct GuestHome {
    dir: PathBuf,
    zip: String,
}

impl GuestHome {
    const MOUNT: &str = "/opt/aleph-wasm";

    fn new(module: &Path) -> anyhow::Result<Self> {
        let module = module
            .canonicalize()
            .with_context(|| module.display().to_string())?;
        let name = module
            .file_name()
            .and_then(|n| n.to_str())
            .context("the module's file name is not UTF-8")?;
        Ok(GuestHome {
            zip: format!("{}/{name}", Self::MOUNT),
            dir: module
                .parent()
                .context("the module has no directory")?
                .into(),
        })
    }
}

/// The python-3.12 interpreter module, fetched by hash into the bench cache if needed.
fn interpreter(root: &Path) -> anyhow::Result<PathBuf> {
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(
        root.join("runtimes/python-3.12/runtime.json"),
    )?)?;
    let sha256 = manifest["interpreter"]["sha256"]
        .as_str()
        .ok_or_else(|| anyhow!("runtime.json names no interpreter sha256"))?;
    let store_dir = tempfile::tempdir()?;
    let store = Store::open(store_dir.path())?;
    runtime::fetch_cached(&store, "python-3.12")?;
    let dir = std::env::var_os(runtime::TEST_CACHE_ENV).context("no interpreter cache")?;
    Ok(PathBuf::from(dir).join(sha256))
}

/// The engine's configuration with the variant's metering; the module compiled once and kept.
fn compile(variant: &Variant, file: &Path, cache: &Path) -> anyhow::Result<(Engine, Module)> {
    let mut config = engine_config(&SandboxConfig::default());
    config
        .consume_fuel(variant.fuel)
        .epoch_interruption(variant.epochs);
    if variant.eager_tables {
        config.table_lazy_init(false);
    }
    let engine = Engine::new(&config).map_err(|e| anyhow!("{e}"))?;
    let bytes = std::fs::read(file).with_context(|| file.display().to_string())?;
    let key = format!(
        "metering-{}{}{}-{}.cwasm",
        if variant.eager_tables { "e" } else { "" },
        u8::from(variant.fuel),
        u8::from(variant.epochs),
        &sha256_hex(&bytes)[..16]
    );
    let kept = cache.join(key);
    if kept.is_file() {
        // SAFETY: written by this harness with the same engine configuration.
        if let Ok(module) = unsafe { Module::deserialize_file(&engine, &kept) } {
            return Ok((engine, module));
        }
    }
    eprintln!("compiling the interpreter for {} ...", variant.name);
    let module = Module::new(&engine, &bytes).map_err(|e| anyhow!("{e}"))?;
    std::fs::create_dir_all(cache)?;
    std::fs::write(&kept, module.serialize().map_err(|e| anyhow!("{e}"))?)?;
    Ok((engine, module))
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Runs `python -c <app>` (its `__main__` part prints "<ns> ns/step") and reads the figure;
/// returns it with the instantiation's time in microseconds.
fn run_guest(
    variant: &Variant,
    engine: &Engine,
    module: &Module,
    source: &str,
    home: Option<&GuestHome>,
) -> anyhow::Result<(f64, f64)> {
    let stdout = MemoryOutputPipe::new(1 << 16);
    let stderr = MemoryOutputPipe::new(1 << 16);
    let mut builder = WasiCtxBuilder::new();
    builder
        .args(&["python", "-c", source])
        .stdout(stdout.clone())
        .stderr(stderr.clone());
    if let Some(home) = home {
        builder
            .env("PYTHONHOME", GuestHome::MOUNT)
            .env("PYTHONPATH", &home.zip)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .preopened_dir(&home.dir, GuestHome::MOUNT, FsPerms::ReadOnly)
            .map_err(|e| anyhow!("{}: {e}", home.dir.display()))?;
    }
    let wasi = builder.build_p1();
    let mut linker: Linker<WasiP1Ctx> = Linker::new(engine);
    p1::add_to_linker_sync(&mut linker, |s| s).map_err(|e| anyhow!("{e}"))?;
    let mut store = WasmStore::new(engine, wasi);
    if variant.fuel {
        store.set_fuel(u64::MAX).map_err(|e| anyhow!("{e}"))?;
    }
    if variant.epochs {
        store.set_epoch_deadline(u64::MAX / 2); // checked on every loop and call, never reached
    }
    let started = std::time::Instant::now();
    let instance = linker
        .instantiate(&mut store, module)
        .map_err(|e| anyhow!("{e}"))?;
    let instantiate_us = started.elapsed().as_secs_f64() * 1e6;
    let start = instance
        .get_typed_func::<(), ()>(&mut store, "_start")
        .map_err(|e| anyhow!("{e}"))?;
    if let Err(e) = start.call(&mut store, ()) {
        match e.downcast_ref::<wasmtime_wasi::I32Exit>() {
            Some(exit) if exit.0 == 0 => {}
            _ => bail!(
                "the interpreter failed: {e}; stderr: {}",
                String::from_utf8_lossy(&stderr.contents())
            ),
        }
    }
    Ok((
        parse(&String::from_utf8_lossy(&stdout.contents()))?,
        instantiate_us,
    ))
}

fn run_native(app: &Path) -> anyhow::Result<f64> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3.12".into());
    let out = Command::new(&python)
        .arg(app)
        .output()
        .with_context(|| format!("{python} (set PYTHON to a CPython 3.12)"))?;
    if !out.status.success() {
        bail!("{python} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    parse(&String::from_utf8_lossy(&out.stdout))
}

fn parse(text: &str) -> anyhow::Result<f64> {
    text.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow!("no figure in {text:?}"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
