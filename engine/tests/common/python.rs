//! The python-3.12 runtime for suites that run a few Python programs: the interpreter is taken
//! from the verified copy the suites share (`$ALEPH_WASM_TEST_CACHE`, else `CACHE`), fetched
//! by hash and kept there the first time.

use std::path::Path;

use aleph_wasm::{Store, runtime};

/// The runtime's source manifest.
const RUNTIME_JSON: &str = include_str!("../../../runtimes/python-3.12/runtime.json");

/// The interpreter's sha256, from the runtime's manifest.
pub fn interpreter_sha256() -> String {
    let manifest: serde_json::Value = serde_json::from_str(RUNTIME_JSON).unwrap();
    manifest["interpreter"]["sha256"]
        .as_str()
        .expect("runtimes/python-3.12/runtime.json has no interpreter.sha256")
        .to_string()
}

/// Stores python-3.12 in `store` (its interpreter from the copy in `cache` when there is one,
/// kept there once fetched); returns the runtime's ref.
pub fn python_runtime(store: &Store, cache: &Path) -> String {
    if std::env::var_os(runtime::TEST_CACHE_ENV).is_some_and(|d| !d.is_empty()) {
        return runtime::fetch_cached(store, "python-3.12")
            .unwrap_or_else(|e| panic!("cannot obtain the python-3.12 interpreter: {e}"));
    }
    let sha = interpreter_sha256();
    let cached = cache.join(&sha);
    let user_file = cached.is_file().then_some(cached.as_path());
    let reference = runtime::fetch(store, "python-3.12", user_file, false)
        .unwrap_or_else(|e| panic!("cannot obtain the python-3.12 interpreter: {e}"));
    if !cached.is_file() {
        let object = store.verify_object(&sha).unwrap();
        std::fs::create_dir_all(cache).unwrap();
        let tmp = cache.join(format!(".partial-{}-{sha}", std::process::id()));
        std::fs::copy(&object, &tmp).unwrap();
        std::fs::rename(&tmp, &cached).unwrap();
    }
    reference
}
