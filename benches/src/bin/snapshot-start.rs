//! Cold start with and without snapshots, in the same run.
//!
//! Measures, for `examples/python-hello` and a Starlette app (Starlette fetched with pip once):
//! - cold start: a new instance per request (`keep_warm` off), interpreter start + app import +
//!   lifespan + one request, p50 / p99 — once starting cold, once restored from the snapshot;
//! - the snapshot build: preparing the interpreter (once) and building the program's snapshot;
//! - CPU speed of the prepared interpreter: a 1e6-iteration Python loop in a request, on a warm
//!   instance of the original interpreter and on a restored one (median of several), as a ratio.
//!
//! Run: `cargo run -p aleph-wasm-benches --bin snapshot-start` (needs binaryen's `wasm-opt`).
//! Caches live in `$CARGO_TARGET_DIR/aleph-wasm-bench-cache` (default `target/`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use aleph_wasm::message;
use aleph_wasm::sandbox::snapshot::SnapshotEvent;
use aleph_wasm::{Executor, ExecutorConfig, HttpRequest, OutcomeKind, Store, Trigger, runtime};
use aleph_wasm_benches::{ms, percentile, python_program, workspace};

const COLD_RUNS: usize = 10;
const RESTORED_RUNS: usize = 40;
const LOOP_RUNS: usize = 5;
const STARLETTE_WHEELS: [&str; 4] = [
    "starlette==0.37.2",
    "anyio==4.4.0",
    "sniffio==1.3.1",
    "idna==3.7",
];
const LOOP_APP: &str = r#"
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            m = await receive()
            await send({"type": m["type"] + ".complete"})
            if m["type"].endswith("shutdown"):
                return
    n = 0
    for i in range(1_000_000):
        n += i
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(n).encode()})
"#;

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
}

fn program(store: &Store, code_dir: &Path) -> anyhow::Result<message::Message> {
    python_program(store, code_dir, "main:app", serde_json::json!({}))
}

/// The Starlette app of the tests with its packages unpacked next to it.
fn starlette_code(cache: &Path, dir: &Path) -> anyhow::Result<PathBuf> {
    let wheels = cache.join("wheels-starlette-0.37.2");
    if !wheels.join(".complete").is_file() {
        std::fs::create_dir_all(&wheels)?;
        let status = Command::new("python3")
            .args([
                "-m",
                "pip",
                "download",
                "--disable-pip-version-check",
                "--no-deps",
            ])
            .args(["--only-binary=:all:", "--python-version", "3.12"])
            .args(STARLETTE_WHEELS)
            .arg("-d")
            .arg(&wheels)
            .status()?;
        anyhow::ensure!(status.success(), "pip download failed");
        std::fs::write(wheels.join(".complete"), b"")?;
    }
    let code = dir.join("starlette");
    let packages = code.join("packages");
    std::fs::create_dir_all(&packages)?;
    std::fs::copy(
        workspace().join("engine/tests/python/starlette/main.py"),
        code.join("main.py"),
    )?;
    for entry in std::fs::read_dir(&wheels)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "whl") {
            zip::ZipArchive::new(std::fs::File::open(&path)?)?.extract(&packages)?;
        }
    }
    Ok(code)
}

fn config(cache: &Path, snapshots: bool, keep_warm: bool) -> ExecutorConfig {
    let mut config = ExecutorConfig {
        module_cache: Some(cache.join("modules")),
        keep_warm,
        ..ExecutorConfig::default()
    };
    config.sandbox.snapshot.enabled = snapshots;
    config
}

/// Times `runs` requests, each on a new instance (start + one request; the instance is retired
/// after the timing, so lifespan shutdown and exit are not counted); returns (p50, p99) after
/// one warm-up.
async fn starts(
    store: &Store,
    config: ExecutorConfig,
    msg: &message::Message,
    runs: usize,
) -> anyhow::Result<(Duration, Duration, Vec<SnapshotEvent>)> {
    let ex = Executor::new(store.clone(), config)?;
    let req = Trigger::Http(HttpRequest::from_line("GET /").map_err(anyhow::Error::msg)?);
    let o = ex.execute(msg, &req).await;
    anyhow::ensure!(o.kind == OutcomeKind::Ok, "warm-up failed: {:?}", o.error);
    ex.shutdown().await;
    let mut times = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let o = ex.execute(msg, &req).await;
        times.push(t.elapsed());
        anyhow::ensure!(o.kind == OutcomeKind::Ok, "request failed: {:?}", o.error);
        anyhow::ensure!(o.cold_start, "the request reused a warm instance");
        ex.shutdown().await;
    }
    times.sort();
    Ok((
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        ex.sandbox().snapshots().events(),
    ))
}

/// The median time of the loop request on a warm instance.
async fn loop_time(
    store: &Store,
    config: ExecutorConfig,
    msg: &message::Message,
) -> anyhow::Result<Duration> {
    let ex = Executor::new(store.clone(), config)?;
    let req = Trigger::Http(HttpRequest::from_line("GET /").map_err(anyhow::Error::msg)?);
    let mut times = Vec::new();
    for i in 0..=LOOP_RUNS {
        let t = Instant::now();
        let o = ex.execute(msg, &req).await;
        anyhow::ensure!(o.kind == OutcomeKind::Ok, "loop failed: {:?}", o.error);
        if i > 0 {
            // The first one booted the instance.
            times.push(t.elapsed());
        }
    }
    ex.shutdown().await;
    times.sort();
    Ok(percentile(&times, 0.5))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let cache = target_dir().join("aleph-wasm-bench-cache");
    std::fs::create_dir_all(&cache)?;
    if std::env::var_os(runtime::TEST_CACHE_ENV).is_none() {
        // SAFETY: set before any other thread reads the environment.
        unsafe { std::env::set_var(runtime::TEST_CACHE_ENV, cache.join("interpreter")) };
    }
    let dir = tempfile::tempdir()?;
    let store = Store::open(dir.path().join("store"))?;
    let loop_dir = dir.path().join("loop");
    std::fs::create_dir_all(&loop_dir)?;
    std::fs::write(loop_dir.join("main.py"), LOOP_APP)?;
    let apps = [
        ("hello", workspace().join("examples/python-hello")),
        ("starlette", starlette_code(&cache, dir.path())?),
    ];
    println!("cold start = new instance + one request (GET /), ms");
    println!(
        "{:<10} {:>10} {:>10} {:>12} {:>12} {:>8}",
        "app", "cold p50", "cold p99", "snapshot p50", "snapshot p99", "speedup"
    );
    let mut builds = Vec::new();
    for (name, code) in &apps {
        let msg = program(&store, code)?;
        let (cold50, cold99, _) =
            starts(&store, config(&cache, false, true), &msg, COLD_RUNS).await?;
        let t = Instant::now();
        let (snap50, snap99, events) =
            starts(&store, config(&cache, true, true), &msg, RESTORED_RUNS).await?;
        let total = t.elapsed();
        if let Some(reason) = events.iter().find_map(|e| match e {
            SnapshotEvent::Fallback { reason } => Some(reason.clone()),
            _ => None,
        }) {
            anyhow::bail!("{name}: no snapshot: {reason}");
        }
        for e in &events {
            match e {
                SnapshotEvent::Prepared { ms, .. } => builds.push(format!(
                    "prepare the interpreter (rewrite, discovery, wasm-opt --asyncify): {ms} ms"
                )),
                SnapshotEvent::Built { ms, .. } => builds.push(format!(
                    "{name}: build the snapshot (instrument, boot, snapshot, precompile): {ms} ms"
                )),
                SnapshotEvent::Loaded { .. } => {
                    builds.push(format!("{name}: snapshot loaded from the cache"))
                }
                _ => {}
            }
        }
        let _ = total;
        println!(
            "{:<10} {:>10.1} {:>10.1} {:>12.2} {:>12.2} {:>7.0}x",
            name,
            ms(cold50),
            ms(cold99),
            ms(snap50),
            ms(snap99),
            cold50.as_secs_f64() / snap50.as_secs_f64()
        );
    }
    for line in &builds {
        println!("{line}");
    }
    let msg = program(&store, &loop_dir)?;
    let original = loop_time(&store, config(&cache, false, true), &msg).await?;
    let prepared = loop_time(&store, config(&cache, true, true), &msg).await?;
    println!(
        "1e6-iteration loop in a request, median of {LOOP_RUNS}: original interpreter {:.1} ms, prepared (restored) {:.1} ms, ratio {:.3}",
        ms(original),
        ms(prepared),
        prepared.as_secs_f64() / original.as_secs_f64()
    );
    Ok(())
}
