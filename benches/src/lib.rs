//! What the bench harnesses share: percentiles, the workspace path, and a python-3.12 ASGI
//! program built from a code directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use aleph_wasm::message::{self, MessageType};
use aleph_wasm::volumes::archive::{self, PackFormat};
use aleph_wasm::{Store, runtime};

/// The `p` quantile (0..=1) of sorted samples.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// (p50, p99) of the samples.
pub fn summary(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (percentile(&v, 0.5), percentile(&v, 0.99))
}

/// Milliseconds, as a float.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Stores `code_dir` as a zip and an ASGI program for it on python-3.12 (fetched or taken
/// from the cache), with `environment` as the message's environment block.
pub fn python_program(
    store: &Store,
    code_dir: &Path,
    entrypoint: &str,
    environment: serde_json::Value,
) -> anyhow::Result<message::Message> {
    let runtime_ref = runtime::fetch_cached(store, "python-3.12")?;
    let zip = tempfile::NamedTempFile::new_in(store.tmp_dir())?;
    archive::pack(code_dir, PackFormat::Zip, zip.path())?;
    let owner = "0x00000000000000000000000000000000000000b0";
    let code = store.add_file(zip.path(), owner, 1.0, None)?;
    let content = serde_json::json!({
        "type": "vm-function", "address": owner, "time": 1.0, "allow_amend": false,
        "code": {"encoding": "zip", "entrypoint": entrypoint, "ref": code.item_hash},
        "runtime": {"ref": runtime_ref, "use_latest": false, "comment": "python"},
        "on": {"http": true}, "environment": environment,
        "resources": {"vcpus": 1, "memory": 128, "seconds": 30},
    });
    let msg = message::build_inline(MessageType::Program, "ETH", owner, 1.0, content);
    store.put_message(&msg)?;
    Ok(msg)
}

/// Points the runtime fetcher's cache at `dir/interpreter` unless the environment already
/// names one, and returns the shared compiled-module cache `dir/modules`.
pub fn bench_cache(dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    if std::env::var_os(runtime::TEST_CACHE_ENV).is_none() {
        // SAFETY: called at start-up, before any other thread reads the environment.
        unsafe { std::env::set_var(runtime::TEST_CACHE_ENV, dir.join("interpreter")) };
    }
    Ok(dir.join("modules"))
}
