//! Cold start with and without snapshots, in the same run.
//!
//! Measures, for `examples/python-hello` and a Starlette app (Starlette fetched with pip once):
//! - cold start: a new instance per request, interpreter start + app import + lifespan + one
//!   request, p50 / p99 — once starting cold, once restored from the snapshot;
//! - restored start with the engine's instance pool (`serve --pooling`) against without it:
//!   the two executors take turns, request by request, so both see the same machine;
//! - what a client waits for under `--isolation per-request` (restored start, request, and the
//!   retirement unless it happens after the answer, as a node does), the two taking turns with
//!   a pause between requests;
//! - the snapshot build: preparing the interpreter (once) and building the program's snapshot;
//! - CPU speed of the prepared interpreter: a 1e6-iteration Python loop in a request, the
//!   second request on a new instance of the original interpreter and on a restored one, the
//!   two taking turns (median of each, as a ratio), with the fuel of one request on each.
//!
//! Run: `cargo run -p aleph-wasm-benches --bin snapshot-start [-- --loop-only]` (the engine
//! obtains binaryen's `wasm-opt` by hash); `--loop-only` runs only the CPU-bound comparison.
//! Caches live in `$CARGO_TARGET_DIR/aleph-wasm-bench-cache` (default `target/`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use aleph_wasm::message;
use aleph_wasm::sandbox::PoolingLimits;
use aleph_wasm::sandbox::snapshot::SnapshotEvent;
use aleph_wasm::{
    Executor, ExecutorConfig, HttpRequest, Isolation, OutcomeKind, Store, Trigger, runtime,
};
use aleph_wasm_benches::{ms, percentile, python_program, workspace};

const COLD_RUNS: usize = 10;
const RESTORED_RUNS: usize = 40;
/// The pool of the pooled executor: a node's default for 64 concurrent executions.
const POOL: PoolingLimits = PoolingLimits {
    instances: 130,
    max_memory_bytes: 4 << 30,
    keep_resident_bytes: 0,
};
/// The same pool keeping up to 128 MiB of each memory resident between instances.
const POOL_RESIDENT: PoolingLimits = PoolingLimits {
    keep_resident_bytes: 128 << 20,
    ..POOL
};
const LOOP_RUNS: usize = 21;
const ANSWER_RUNS: usize = 20;
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

fn config(cache: &Path, snapshots: bool, pooling: Option<PoolingLimits>) -> ExecutorConfig {
    let mut config = ExecutorConfig {
        module_cache: Some(cache.join("modules")),
        isolation: Isolation::Warm,
        ..ExecutorConfig::default()
    };
    config.sandbox.snapshot.enabled = snapshots;
    config.sandbox.pooling = pooling;
    config
}

/// One timed start + request on a new instance of `ex` (retired after the timing).
async fn start_once(
    ex: &Executor,
    msg: &message::Message,
    req: &Trigger,
) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let o = ex.execute(msg, req).await;
    let elapsed = t.elapsed();
    anyhow::ensure!(o.kind == OutcomeKind::Ok, "request failed: {:?}", o.error);
    anyhow::ensure!(o.cold_start, "the request reused a warm instance");
    ex.shutdown().await;
    Ok(elapsed)
}

/// Restored starts on two executors taking turns (one warm-up each); returns (p50, p99) of
/// each.
async fn paired_starts<const N: usize>(
    store: &Store,
    configs: [ExecutorConfig; N],
    msg: &message::Message,
    runs: usize,
) -> anyhow::Result<[(Duration, Duration); N]> {
    let mut executors = Vec::new();
    for config in configs {
        executors.push(Executor::new(store.clone(), config)?);
    }
    let req = Trigger::Http(HttpRequest::from_line("GET /").map_err(anyhow::Error::msg)?);
    let mut times: [Vec<Duration>; N] = std::array::from_fn(|_| Vec::new());
    for ex in &executors {
        start_once(ex, msg, &req).await?;
    }
    for _ in 0..runs {
        for (ex, t) in executors.iter().zip(times.iter_mut()) {
            t.push(start_once(ex, msg, &req).await?);
        }
    }
    Ok(times.map(|mut t| {
        t.sort();
        (percentile(&t, 0.5), percentile(&t, 0.99))
    }))
}

/// Per-request answers (restored start + request + retirement) with the retirement before the
/// answer and after it, taking turns with a pause between requests; returns the p50 of each.
async fn per_request_answers(
    store: &Store,
    cache: &Path,
    msg: &message::Message,
    runs: usize,
) -> anyhow::Result<[Duration; 2]> {
    let mut executors = Vec::new();
    for after in [false, true] {
        let mut config = config(cache, true, None);
        config.isolation = Isolation::PerRequest;
        config.retire_after_answer = after;
        executors.push(Executor::new(store.clone(), config)?);
    }
    let req = Trigger::Http(HttpRequest::from_line("GET /").map_err(anyhow::Error::msg)?);
    let mut times = [Vec::new(), Vec::new()];
    for i in 0..=runs {
        for (ex, t) in executors.iter().zip(times.iter_mut()) {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let started = Instant::now();
            let o = ex.execute(msg, &req).await;
            anyhow::ensure!(o.kind == OutcomeKind::Ok, "request failed: {:?}", o.error);
            if i > 0 {
                t.push(started.elapsed());
            }
        }
    }
    Ok(times.map(|mut t| {
        t.sort();
        percentile(&t, 0.5)
    }))
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
        times.push(start_once(&ex, msg, &req).await?);
    }
    times.sort();
    Ok((
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        ex.sandbox().snapshots().events(),
    ))
}

/// The loop request on each interpreter, the two taking turns: each sample is the second
/// request on a new instance (the first one boots it, or restores it), so that what differs
/// between instances (memory layout, hash seed) is averaged over as well; returns the median
/// time and the fuel of one request, for the original interpreter and then the prepared one.
async fn loop_times(
    store: &Store,
    cache: &Path,
    msg: &message::Message,
) -> anyhow::Result<[(Duration, u64); 2]> {
    let executors = [
        Executor::new(store.clone(), config(cache, false, None))?,
        Executor::new(store.clone(), config(cache, true, None))?,
    ];
    let req = Trigger::Http(HttpRequest::from_line("GET /").map_err(anyhow::Error::msg)?);
    let mut times = [Vec::new(), Vec::new()];
    let mut fuel = [0, 0];
    for _ in 0..LOOP_RUNS {
        for (k, ex) in executors.iter().enumerate() {
            let o = ex.execute(msg, &req).await;
            anyhow::ensure!(o.kind == OutcomeKind::Ok, "loop failed: {:?}", o.error);
            let t = Instant::now();
            let o = ex.execute(msg, &req).await;
            let elapsed = t.elapsed();
            anyhow::ensure!(o.kind == OutcomeKind::Ok, "loop failed: {:?}", o.error);
            anyhow::ensure!(!o.cold_start, "the timed request started a new instance");
            times[k].push(elapsed);
            fuel[k] = o.fuel_consumed;
            ex.shutdown().await;
        }
    }
    let [a, b] = times.map(|mut t| {
        t.sort();
        percentile(&t, 0.5)
    });
    Ok([(a, fuel[0]), (b, fuel[1])])
}

/// Prints the loop comparison of [`loop_times`].
async fn print_loop(store: &Store, cache: &Path, loop_dir: &Path) -> anyhow::Result<()> {
    let msg = program(store, loop_dir)?;
    let [(original, fuel_original), (prepared, fuel_prepared)] =
        loop_times(store, cache, &msg).await?;
    println!(
        "1e6-iteration loop in a request, the second on a new instance, the two interpreters \
         taking turns, median of {LOOP_RUNS}: original interpreter {:.1} ms, prepared (restored) {:.1} ms, ratio {:.3}; \
         fuel {fuel_original} and {fuel_prepared}, ratio {:.4}",
        ms(original),
        ms(prepared),
        prepared.as_secs_f64() / original.as_secs_f64(),
        fuel_prepared as f64 / fuel_original as f64
    );
    Ok(())
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
    if std::env::args().any(|a| a == "--loop-only") {
        return print_loop(&store, &cache, &loop_dir).await;
    }
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
    let mut pooled = Vec::new();
    let mut answers = Vec::new();
    for (name, code) in &apps {
        let msg = program(&store, code)?;
        let (cold50, cold99, _) =
            starts(&store, config(&cache, false, None), &msg, COLD_RUNS).await?;
        let t = Instant::now();
        let (snap50, snap99, events) =
            starts(&store, config(&cache, true, None), &msg, RESTORED_RUNS).await?;
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
                SnapshotEvent::Built {
                    ms,
                    modules_compiled,
                    ..
                } => builds.push(format!(
                    "{name}: build the snapshot (instrument, boot, snapshot, precompile; \
                     {modules_compiled} module(s) compiled): {ms} ms"
                )),
                SnapshotEvent::Loaded { .. } => {
                    builds.push(format!("{name}: snapshot loaded from the cache"))
                }
                _ => {}
            }
        }
        let _ = total;
        let [(plain50, plain99), (pool50, pool99), (res50, res99)] = paired_starts(
            &store,
            [
                config(&cache, true, None),
                config(&cache, true, Some(POOL)),
                config(&cache, true, Some(POOL_RESIDENT)),
            ],
            &msg,
            RESTORED_RUNS,
        )
        .await?;
        let [before, after] = per_request_answers(&store, &cache, &msg, ANSWER_RUNS).await?;
        answers.push(format!(
            "{name}: retired before the answer {:.2} ms, after it {:.2} ms, {:.1}x",
            ms(before),
            ms(after),
            before.as_secs_f64() / after.as_secs_f64()
        ));
        let ratio = |d: Duration| plain50.as_secs_f64() / d.as_secs_f64();
        pooled.push(format!(
            "{:<10} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>6.2}x {:>9.2} {:>9.2} {:>6.2}x",
            name,
            ms(plain50),
            ms(plain99),
            ms(pool50),
            ms(pool99),
            ratio(pool50),
            ms(res50),
            ms(res99),
            ratio(res50),
        ));
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
    println!(
        "restored start (new instance + one request), on-demand against the instance pool ({} \
         slots; then keeping {} MiB of each memory resident), executors taking turns, ms",
        POOL.instances,
        POOL_RESIDENT.keep_resident_bytes >> 20
    );
    println!(
        "{:<10} {:>9} {:>9} {:>9} {:>9} {:>7} {:>9} {:>9} {:>7}",
        "app", "od p50", "od p99", "pool p50", "pool p99", "gain", "res p50", "res p99", "gain"
    );
    for line in &pooled {
        println!("{line}");
    }
    println!(
        "--isolation per-request: what a client waits for (restored start + request + \
         retirement before the answer, or after it as a node does), p50 of {}",
        ANSWER_RUNS
    );
    for line in &answers {
        println!("{line}");
    }
    for line in &builds {
        println!("{line}");
    }
    print_loop(&store, &cache, &loop_dir).await
}
