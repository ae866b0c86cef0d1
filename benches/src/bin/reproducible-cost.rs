//! The cost of reproducible mode: the same CPU-bound Python request (`benches/python/
//! cpu_workload`) with and without `environment.reproducible`, in one run.
//!
//! Each sample is one execution on a fresh instance (a reproducible execution never reuses
//! one, so the plain program is measured the same way): boot + request wall time, the
//! request's own wall time, and its fuel. Samples alternate between the two programs so drift
//! of the machine affects both alike.
//!
//! Run: `cargo run -p aleph-wasm-benches --bin reproducible-cost [SAMPLES]` (the dev profile
//! optimises every dependency, wasmtime and Cranelift included).

use std::time::{Duration, Instant};

use aleph_wasm::{Executor, ExecutorConfig, HttpRequest, OutcomeKind, Store, Trigger};
use aleph_wasm_benches::{bench_cache, ms, python_program, summary, workspace};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let samples: usize = match std::env::args().nth(1) {
        Some(n) => n.parse()?,
        None => 15,
    };
    let modules = bench_cache(&workspace().join("target/aleph-wasm-bench-cache"))?;
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path())?;
    let code = workspace().join("benches/python/cpu_workload");
    let plain = python_program(&store, &code, "app:app", serde_json::json!({}))?;
    let repro = python_program(
        &store,
        &code,
        "app:app",
        serde_json::json!({"reproducible": true}),
    )?;
    let config = ExecutorConfig {
        module_cache: Some(modules),
        ..ExecutorConfig::default()
    };
    let executor = Executor::new(store, config)?;
    let req = Trigger::Http(HttpRequest::from_line("GET /").map_err(anyhow::Error::msg)?);
    // Load (or compile) the interpreter once, outside the measurements.
    for msg in [&plain, &repro] {
        let o = executor.execute(msg, &req).await;
        anyhow::ensure!(o.kind == OutcomeKind::Ok, "warm-up failed: {:?}", o.error);
    }
    let mut totals = [Vec::new(), Vec::new()];
    let mut requests = [Vec::new(), Vec::new()];
    let mut fuel = [Vec::new(), Vec::new()];
    for _ in 0..samples {
        for (i, msg) in [&plain, &repro].into_iter().enumerate() {
            let started = Instant::now();
            let o = executor.execute(msg, &req).await;
            totals[i].push(started.elapsed());
            anyhow::ensure!(o.kind == OutcomeKind::Ok, "run failed: {:?}", o.error);
            requests[i].push(Duration::from_millis(o.elapsed_ms));
            fuel[i].push(o.fuel_consumed);
        }
    }
    println!(
        "reproducible mode, CPU-bound python request, {samples} samples each, fresh instance per sample"
    );
    println!(
        "{:<34} {:>14} {:>14} {:>8}",
        "measure (p50 / p99)", "plain", "reproducible", "ratio"
    );
    for (name, v) in [
        ("boot + request (ms)", &totals),
        ("request only (ms)", &requests),
    ] {
        let (a50, a99) = summary(v[0].clone());
        let (b50, b99) = summary(v[1].clone());
        println!(
            "{:<34} {:>6.1} / {:<6.1} {:>6.1} / {:<6.1} {:>5.3}x",
            name,
            ms(a50),
            ms(a99),
            ms(b50),
            ms(b99),
            ms(b50) / ms(a50)
        );
    }
    let median = |v: &mut Vec<u64>| {
        v.sort();
        v[v.len() / 2]
    };
    let (f0, f1) = (median(&mut fuel[0]), median(&mut fuel[1]));
    println!(
        "{:<34} {:>14} {:>14} {:>5.3}x",
        "request fuel (median)",
        f0,
        f1,
        f1 as f64 / f0 as f64
    );
    let distinct: std::collections::BTreeSet<_> = fuel[1].iter().collect();
    println!(
        "reproducible fuel is {} across samples",
        if distinct.len() == 1 {
            "identical".to_string()
        } else {
            format!("NOT identical ({} distinct values)", distinct.len())
        }
    );
    Ok(())
}
