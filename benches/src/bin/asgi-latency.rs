//! ASGI latency: aleph-wasm against native CPython on the same app, in the same run.
//!
//! Measures, for `examples/python-hello` (or the code directory given as the first argument):
//! - first request with the compile cache warm: a fresh executor boots an instance (module
//!   loaded from the on-disk cache, interpreter start, app import, lifespan startup) and serves
//!   one request; native: `python3` process start + import + one request;
//! - warm request: one request on a booted instance; native: one request in a running process.
//!
//! Run: `cargo run -p aleph-wasm-benches --bin asgi-latency [CODE_DIR ENTRYPOINT]`.
//! The engine crate is built in the dev profile, whose dependencies (wasmtime, Cranelift) are
//! optimised; figures are reported as ratios against the native baseline of the same run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use aleph_wasm::message;
use aleph_wasm::{Executor, ExecutorConfig, HttpRequest, Isolation, OutcomeKind, Store, Trigger};
use aleph_wasm_benches::{bench_cache, ms, python_program, summary, workspace};

const FIRST_RUNS: usize = 10;
const WARM_RUNS: usize = 300;

fn program(store: &Store, code_dir: &Path, entrypoint: &str) -> anyhow::Result<message::Message> {
    python_program(store, code_dir, entrypoint, serde_json::json!({}))
}

/// The real native interpreter (not a wrapper script such as a version manager's shim, whose
/// own start-up would be counted against native CPython).
fn native_python() -> anyhow::Result<PathBuf> {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()?;
    anyhow::ensure!(out.status.success(), "python3 is not available");
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn native_first(code_dir: &Path, entrypoint: &str) -> anyhow::Result<Vec<Duration>> {
    let script = workspace().join("benches/python/native_asgi.py");
    let python = native_python()?;
    let mut out = Vec::new();
    for _ in 0..FIRST_RUNS {
        let t = Instant::now();
        let status = Command::new(&python)
            .arg(&script)
            .args(["first", &code_dir.to_string_lossy(), entrypoint])
            .status()?;
        anyhow::ensure!(status.success(), "native first request failed");
        out.push(t.elapsed());
    }
    Ok(out)
}

fn native_warm(code_dir: &Path, entrypoint: &str) -> anyhow::Result<Vec<Duration>> {
    let script = workspace().join("benches/python/native_asgi.py");
    let output = Command::new(native_python()?)
        .arg(&script)
        .args([
            "warm",
            &code_dir.to_string_lossy(),
            entrypoint,
            &WARM_RUNS.to_string(),
        ])
        .output()?;
    anyhow::ensure!(output.status.success(), "native warm requests failed");
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.trim().parse::<u64>().ok())
        .map(Duration::from_micros)
        .collect())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (code_dir, entrypoint) = match args.as_slice() {
        [dir, entry] => (PathBuf::from(dir), entry.clone()),
        _ => (
            workspace().join("examples/python-hello"),
            "main:app".to_string(),
        ),
    };
    let modules = bench_cache(&workspace().join("target/aleph-wasm-bench-cache"))?;
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path())?;
    let msg = program(&store, &code_dir, &entrypoint)?;
    let mut config = ExecutorConfig {
        module_cache: Some(modules),
        isolation: Isolation::Warm,
        ..ExecutorConfig::default()
    };
    // Cold starts, as measured here; `snapshot-start` measures restored ones.
    config.sandbox.snapshot.enabled = false;
    let req = Trigger::Http(HttpRequest::from_line("GET /").map_err(anyhow::Error::msg)?);

    // Compile (or load) the interpreter once, outside the measurements.
    {
        let ex = Executor::new(store.clone(), config.clone())?;
        let o = ex.execute(&msg, &req).await;
        anyhow::ensure!(o.kind == OutcomeKind::Ok, "warm-up failed: {:?}", o.error);
        ex.shutdown().await;
    }

    let mut first = Vec::new();
    for _ in 0..FIRST_RUNS {
        let ex = Executor::new(store.clone(), config.clone())?;
        let t = Instant::now();
        let o = ex.execute(&msg, &req).await;
        first.push(t.elapsed());
        anyhow::ensure!(
            o.kind == OutcomeKind::Ok,
            "first request failed: {:?}",
            o.error
        );
        ex.shutdown().await;
    }

    let ex = Executor::new(store.clone(), config.clone())?;
    let o = ex.execute(&msg, &req).await;
    anyhow::ensure!(o.kind == OutcomeKind::Ok, "boot failed: {:?}", o.error);
    let mut warm = Vec::new();
    for _ in 0..WARM_RUNS {
        let t = Instant::now();
        let o = ex.execute(&msg, &req).await;
        warm.push(t.elapsed());
        anyhow::ensure!(
            o.kind == OutcomeKind::Ok,
            "warm request failed: {:?}",
            o.error
        );
    }
    ex.shutdown().await;

    let native_first = native_first(&code_dir, &entrypoint)?;
    let native_warm = native_warm(&code_dir, &entrypoint)?;

    let rows = [
        (
            "first request (compile cache warm)",
            summary(first),
            summary(native_first),
        ),
        ("warm request", summary(warm), summary(native_warm)),
    ];
    println!("app: {} ({entrypoint})", code_dir.display());
    println!(
        "{:<36} {:>12} {:>12} {:>12} {:>12} {:>9} {:>9}",
        "measure", "wasm p50 ms", "wasm p99 ms", "native p50", "native p99", "p50 ×", "p99 ×"
    );
    for (name, (w50, w99), (n50, n99)) in rows {
        println!(
            "{name:<36} {:>12.3} {:>12.3} {:>12.3} {:>12.3} {:>9.1} {:>9.1}",
            ms(w50),
            ms(w99),
            ms(n50),
            ms(n99),
            w50.as_secs_f64() / n50.as_secs_f64(),
            w99.as_secs_f64() / n99.as_secs_f64()
        );
    }
    Ok(())
}
