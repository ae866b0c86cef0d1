//! The test DSL: a fresh directory (and store) per test, a builder for `aleph-wasm` command
//! lines, readable failures that show both output streams, a WAT guest builder, and archive
//! builders for hostile inputs.

#![allow(dead_code)]

pub mod exchange;
pub mod http;
pub mod loopback;
pub mod node;
pub mod perturb;
pub mod python;
pub mod redis;
pub mod serve;

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_aleph-wasm");

/// The shared fixtures.
pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/fixtures/");

/// One test's private directory, with a store inside it.
pub struct TestDir {
    dir: tempfile::TempDir,
    store: PathBuf,
}

impl TestDir {
    /// A fresh directory with an (empty, not yet created) store at `store/`.
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("aleph-wasm-cli-")
            .tempdir()
            .expect("cannot make a temporary directory");
        let store = dir.path().join("store");
        TestDir { dir, store }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The store directory.
    pub fn store(&self) -> &Path {
        &self.store
    }

    /// Writes `bytes` to `name` inside the directory and returns the path.
    pub fn write(&self, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let path = self.dir.path().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// Compiles a WAT guest and writes it as `name` (a `.wasm` file).
    pub fn wasm(&self, name: &str, wat: &str) -> PathBuf {
        let bytes = wat::parse_str(wat)
            .unwrap_or_else(|e| panic!("guest {name} does not compile: {e}\n--- WAT ---\n{wat}"));
        self.write(name, bytes)
    }

    /// `aleph-wasm` with no arguments (no store), for commands that need none.
    pub fn bare_cmd(&self) -> Cmd {
        Cmd::new(self.path())
    }

    /// `aleph-wasm --store <store>`.
    pub fn cmd(&self) -> Cmd {
        let mut cmd = Cmd::new(self.path());
        cmd.arg("--store").arg(&self.store);
        cmd
    }

    /// `program create <wasm> --entrypoint main.wasm <extra…>`; returns the program's hash.
    pub fn program(&self, wasm: &Path, extra: &[&str]) -> String {
        let out = self
            .cmd()
            .args(["program", "create"])
            .arg(wasm)
            .args(["--entrypoint", "main.wasm"])
            .args(extra)
            .assert_ok();
        out.last_line()
    }

    /// Compiles `wat` and creates a program from it.
    pub fn guest_program(&self, wat: &str, extra: &[&str]) -> String {
        let wasm = self.wasm("main.wasm", wat);
        self.program(&wasm, extra)
    }

    /// `run <target> --json <extra…>`, expecting exit code `code`; returns the JSON outcome.
    pub fn run_json(&self, target: &str, extra: &[&str], code: i32) -> RunOutcome {
        let out = self
            .cmd()
            .args(["run", target, "--json"])
            .args(extra)
            .assert_code(code);
        let json = out.json();
        RunOutcome { json, out }
    }

    /// `store add <file>`; returns (file hash, ref).
    pub fn store_add(&self, file: &Path) -> (String, String) {
        let out = self.cmd().args(["store", "add"]).arg(file).assert_ok();
        let file_hash = out
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("file "))
            .unwrap_or_else(|| panic!("no `file <sha256>` line\n{out}"))
            .trim()
            .to_string();
        (file_hash, out.last_line())
    }

    /// Where the store keeps the object whose sha256 is `hash`.
    pub fn object_path(&self, hash: &str) -> PathBuf {
        self.store
            .join("objects/sha256")
            .join(&hash[..2])
            .join(hash)
    }

    /// Every regular file under the test directory whose name is `name`.
    pub fn find_files(&self, name: &str) -> Vec<PathBuf> {
        find_files(self.path(), name)
    }
}

/// Every regular file under `root` whose name is `name` (symlinks are not followed).
pub fn find_files(root: &Path, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(ty) = entry.file_type() else { continue };
            if ty.is_dir() {
                stack.push(entry.path());
            } else if entry.file_name() == name {
                found.push(entry.path());
            }
        }
    }
    found
}

/// A command line being built.
pub struct Cmd {
    cmd: Command,
    line: Vec<String>,
    stdin: Option<Vec<u8>>,
}

impl Cmd {
    fn new(cwd: &Path) -> Self {
        let mut cmd = Command::new(BIN);
        cmd.current_dir(cwd)
            .env_remove("RUST_LOG")
            .env_remove("ALEPH_WASM_STORE")
            .env_remove("ALEPH_WASM_OWNER");
        Cmd {
            cmd,
            line: vec!["aleph-wasm".into()],
            stdin: None,
        }
    }

    /// Adds an argument.
    pub fn arg(&mut self, arg: impl AsRef<std::ffi::OsStr>) -> &mut Self {
        self.line.push(arg.as_ref().to_string_lossy().into_owned());
        self.cmd.arg(arg);
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        for a in args {
            self.arg(a);
        }
        self
    }

    /// Sets an environment variable of the `aleph-wasm` process.
    pub fn env(&mut self, key: &str, value: &str) -> &mut Self {
        self.cmd.env(key, value);
        self
    }

    /// Feeds `bytes` on standard input.
    pub fn stdin(&mut self, bytes: impl Into<Vec<u8>>) -> &mut Self {
        self.stdin = Some(bytes.into());
        self
    }

    fn spawn(&mut self) -> std::process::Child {
        self.cmd
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = self
            .cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
        if let Some(bytes) = self.stdin.take() {
            let mut stdin = child.stdin.take().unwrap();
            std::thread::spawn(move || {
                let _ = stdin.write_all(&bytes);
            });
        }
        child
    }

    /// Runs the command to completion.
    pub fn output(&mut self) -> Output {
        let started = Instant::now();
        let child = self.spawn();
        let out = child.wait_with_output().unwrap();
        self.finish(out, started.elapsed(), None)
    }

    /// Runs the command while sampling the child's peak resident set size (`VmHWM`).
    pub fn output_sampling_rss(&mut self) -> Output {
        let started = Instant::now();
        let mut child = self.spawn();
        let status = format!("/proc/{}/status", child.id());
        // Drain the pipes on threads so a chatty child never blocks on a full pipe.
        let mut stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let out_thread = std::thread::spawn(move || {
            let mut b = Vec::new();
            std::io::Read::read_to_end(&mut stdout, &mut b).map(|_| b)
        });
        let err_thread = std::thread::spawn(move || {
            let mut b = Vec::new();
            std::io::Read::read_to_end(&mut stderr, &mut b).map(|_| b)
        });
        let mut peak_kib: Option<u64> = None;
        let exit = loop {
            // Read before checking for exit: a zombie has no VmHWM line any more, but until
            // it is reaped a live process's high-water mark only ever rises.
            if let Ok(text) = std::fs::read_to_string(&status)
                && let Some(kib) = text
                    .lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            {
                peak_kib = Some(peak_kib.map_or(kib, |p| p.max(kib)));
            }
            if let Some(exit) = child.try_wait().unwrap() {
                break exit;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let out = std::process::Output {
            status: exit,
            stdout: out_thread.join().unwrap().unwrap(),
            stderr: err_thread.join().unwrap().unwrap(),
        };
        self.finish(out, started.elapsed(), peak_kib)
    }

    fn finish(
        &self,
        out: std::process::Output,
        elapsed: Duration,
        peak_rss_kib: Option<u64>,
    ) -> Output {
        let out = Output {
            line: self.line.join(" "),
            code: out.status.code().unwrap_or(-1),
            stdout_bytes: out.stdout.clone(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed,
            peak_rss_kib,
        };
        if std::env::var_os("ALEPH_WASM_TEST_VERBOSE").is_some() {
            eprintln!("{out}");
        }
        out
    }

    /// Runs the command and checks its exit code.
    pub fn assert_code(&mut self, code: i32) -> Output {
        let out = self.output();
        if out.code != code {
            panic!("expected exit code {code}, got {}\n{out}", out.code);
        }
        out
    }

    /// Runs the command and checks that it succeeded.
    pub fn assert_ok(&mut self) -> Output {
        self.assert_code(0)
    }

    /// Runs the command and checks that it failed as bad input: exit 2, an error on stderr.
    pub fn assert_usage_error(&mut self) -> Output {
        let out = self.assert_code(2);
        if !out.stderr.contains("error") {
            panic!("exit 2 without an error message on stderr\n{out}");
        }
        out
    }
}

/// What a finished command produced.
pub struct Output {
    /// The command line, for messages.
    pub line: String,
    /// The exit code (-1 when killed by a signal).
    pub code: i32,
    /// Standard output, raw.
    pub stdout_bytes: Vec<u8>,
    /// Standard output, lossily decoded.
    pub stdout: String,
    /// Standard error, lossily decoded.
    pub stderr: String,
    /// How long the whole command took.
    pub elapsed: Duration,
    /// The peak RSS seen while it ran, when it was sampled.
    pub peak_rss_kib: Option<u64>,
}

impl Output {
    /// The last non-empty line of stdout.
    pub fn last_line(&self) -> String {
        self.stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_else(|| panic!("no output on stdout\n{self}"))
            .trim()
            .to_string()
    }

    /// Stdout parsed as one JSON value.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("stdout is not one JSON value: {e}\n{self}"))
    }

    /// Panics unless stderr contains every one of `needles`.
    pub fn assert_stderr_has(&self, needles: &[&str]) {
        for n in needles {
            if !self.stderr.contains(n) {
                panic!("stderr does not mention {n:?}\n{self}");
            }
        }
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "command: {}", self.line)?;
        writeln!(f, "exit code: {} (after {:?})", self.code, self.elapsed)?;
        if let Some(kib) = self.peak_rss_kib {
            writeln!(f, "peak RSS: {} KiB", kib)?;
        }
        writeln!(f, "--- stdout ---")?;
        writeln!(f, "{}", shorten(&self.stdout))?;
        writeln!(f, "--- stderr ---")?;
        writeln!(f, "{}", shorten(&self.stderr))?;
        write!(f, "--------------")
    }
}

fn shorten(s: &str) -> String {
    const MAX: usize = 4000;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} more bytes)", &s[..end], s.len() - end)
}

/// The JSON outcome of `run --json`, with the command's output for messages.
pub struct RunOutcome {
    /// The parsed JSON.
    pub json: serde_json::Value,
    /// The command's output.
    pub out: Output,
}

impl RunOutcome {
    /// A string field ("" when null or absent).
    pub fn str(&self, key: &str) -> String {
        match &self.json[key] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => String::new(),
            other => other.to_string(),
        }
    }

    /// An integer field.
    pub fn int(&self, key: &str) -> i64 {
        self.json[key]
            .as_i64()
            .unwrap_or_else(|| panic!("{key} is not an integer\n{self}"))
    }

    /// The `outcome` field.
    pub fn outcome(&self) -> String {
        self.str("outcome")
    }

    /// The guest's stdout.
    pub fn stdout(&self) -> String {
        self.str("stdout")
    }

    /// The decoded HTTP body.
    pub fn body(&self) -> Vec<u8> {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .decode(self.str("body_base64"))
            .unwrap_or_else(|e| panic!("body_base64 is not base64: {e}\n{self}"))
    }

    /// Panics unless `outcome` is `want`.
    pub fn assert_outcome(&self, want: &str) -> &Self {
        if self.outcome() != want {
            panic!(
                "expected outcome {want:?}, got {:?}\n{self}",
                self.outcome()
            );
        }
        self
    }

    /// Panics unless the guest's stdout contains `needle`.
    pub fn assert_stdout_has(&self, needle: &str) -> &Self {
        if !self.stdout().contains(needle) {
            panic!("the guest's stdout does not contain {needle:?}\n{self}");
        }
        self
    }

    /// Panics unless the error contains every one of `needles`.
    pub fn assert_error_has(&self, needles: &[&str]) -> &Self {
        let error = self.str("error");
        for n in needles {
            if !error.contains(n) {
                panic!("the error does not mention {n:?}\n{self}");
            }
        }
        self
    }

    /// The value the guest printed as `key=<value>` on its stdout.
    pub fn printed(&self, key: &str) -> String {
        printed(&self.stdout(), key)
            .unwrap_or_else(|| panic!("the guest did not print {key}=…\n{self}"))
    }

    /// The integer the guest printed as `key=<n>` on its stdout.
    pub fn printed_int(&self, key: &str) -> i64 {
        let v = self.printed(key);
        v.parse()
            .unwrap_or_else(|_| panic!("{key}={v} is not an integer\n{self}"))
    }
}

/// The value after the last `key=` at the start of a line of `text`.
pub fn printed(text: &str, key: &str) -> Option<String> {
    let prefix = format!("{key}=");
    text.lines()
        .rev()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().to_string())
}

impl std::fmt::Display for RunOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut json = self.json.clone();
        if let Some(s) = json["stdout"].as_str()
            && s.len() > 4000
        {
            json["stdout"] = format!("{}… ({} bytes)", &s[..4000], s.len()).into();
        }
        writeln!(
            f,
            "outcome JSON: {}",
            serde_json::to_string_pretty(&json).unwrap_or_default()
        )?;
        write!(f, "{}", self.out)
    }
}

/// sha256 as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

// ---------------------------------------------------------------------------------------------
// WAT guests
// ---------------------------------------------------------------------------------------------

/// Instructions that sleep `ms` milliseconds in the host, for a hand-written guest that imports
/// `poll_oneoff` as `$poll`: one relative clock subscription (monotonic clock) built at
/// 64..112, its event written at 256, the count at 512.
pub fn wasi_sleep(ms: u64) -> String {
    format!(
        "(i64.store (i32.const 64) (i64.const 0))
    (i32.store8 (i32.const 72) (i32.const 0))
    (i32.store (i32.const 80) (i32.const 1))
    (i64.store (i32.const 88) (i64.const {ns}))
    (i64.store (i32.const 96) (i64.const 0))
    (i32.store16 (i32.const 104) (i32.const 0))
    (drop (call $poll (i32.const 64) (i32.const 256) (i32.const 1) (i32.const 512)))",
        ns = ms * 1_000_000
    )
}

/// Memory layout of every guest (4 pages, 256 KiB):
/// - 0..12: an iovec and the count written or read; 12: the fd `path_open` returns;
/// - 16..48: the digits of a number being formatted; 48/52: environment sizes;
/// - 60: "\n", 61: " ";
/// - 1024..65536: string constants ([`Wat::s`]);
/// - [`BUF`]..+64 KiB: an I/O buffer; [`ENV_PTRS`], [`ENV_BUF`]: the environment.
pub const BUF: u32 = 65536;
/// Where `environ_get` writes the pointers.
pub const ENV_PTRS: u32 = 131072;
/// Where `environ_get` writes the strings.
pub const ENV_BUF: u32 = 196608;

/// `fs_rights_base` for reading.
pub const RIGHTS_READ: &str = "(i64.const 2)";
/// `fs_rights_base` for writing (fd_write, and fd_read too so the file can be reused).
pub const RIGHTS_WRITE: &str = "(i64.const 66)";
/// `oflags`: create.
pub const O_CREAT: i32 = 1;
/// `oflags`: truncate.
pub const O_TRUNC: i32 = 8;

const PRELUDE: &str = r#"
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $fd_close (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_rename"
    (func $path_rename (param i32 i32 i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_get" (func $environ_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (memory (export "memory") 4)
  (data (i32.const 60) "\n ")

  ;; Writes all of ptr[..len] to fd; returns 0 or the errno (-1 when a write made no progress).
  (func $write (param $fd i32) (param $ptr i32) (param $len i32) (result i32)
    (local $err i32) (local $n i32)
    (block $done
      (loop $again
        (br_if $done (i32.le_s (local.get $len) (i32.const 0)))
        (i32.store (i32.const 0) (local.get $ptr))
        (i32.store (i32.const 4) (local.get $len))
        (local.set $err (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8)))
        (if (local.get $err) (then (return (local.get $err))))
        (local.set $n (i32.load (i32.const 8)))
        (if (i32.eqz (local.get $n)) (then (return (i32.const -1))))
        (local.set $ptr (i32.add (local.get $ptr) (local.get $n)))
        (local.set $len (i32.sub (local.get $len) (local.get $n)))
        (br $again)))
    (i32.const 0))

  (func $print (param $ptr i32) (param $len i32)
    (drop (call $write (i32.const 1) (local.get $ptr) (local.get $len))))

  (func $nl (call $print (i32.const 60) (i32.const 1)))

  ;; Formats n in decimal into 16..48 and returns where the digits start (they end at 48).
  (func $fmt_num (param $n i32) (result i32)
    (local $p i32) (local $neg i32)
    (local.set $p (i32.const 48))
    (if (i32.lt_s (local.get $n) (i32.const 0))
      (then (local.set $neg (i32.const 1))
            (local.set $n (i32.sub (i32.const 0) (local.get $n)))))
    (loop $digits
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i32.store8 (local.get $p) (i32.add (i32.const 48) (i32.rem_u (local.get $n) (i32.const 10))))
      (local.set $n (i32.div_u (local.get $n) (i32.const 10)))
      (br_if $digits (local.get $n)))
    (if (local.get $neg)
      (then (local.set $p (i32.sub (local.get $p) (i32.const 1)))
            (i32.store8 (local.get $p) (i32.const 45))))
    (local.get $p))

  (func $print_num (param $n i32)
    (local $p i32)
    (local.set $p (call $fmt_num (local.get $n)))
    (call $print (local.get $p) (i32.sub (i32.const 48) (local.get $p))))

  ;; Prints "<label><n>\n".
  (func $say (param $label i32) (param $len i32) (param $n i32)
    (call $print (local.get $label) (local.get $len))
    (call $print_num (local.get $n))
    (call $nl))

  ;; Reads fd until EOF or cap bytes into ptr; returns the count, or -errno.
  (func $read_all (param $fd i32) (param $ptr i32) (param $cap i32) (result i32)
    (local $total i32) (local $err i32) (local $n i32)
    (loop $again
      (i32.store (i32.const 0) (i32.add (local.get $ptr) (local.get $total)))
      (i32.store (i32.const 4) (i32.sub (local.get $cap) (local.get $total)))
      (local.set $err (call $fd_read (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8)))
      (if (local.get $err) (then (return (i32.sub (i32.const 0) (local.get $err)))))
      (local.set $n (i32.load (i32.const 8)))
      (local.set $total (i32.add (local.get $total) (local.get $n)))
      (br_if $again (i32.and (i32.ne (local.get $n) (i32.const 0))
                             (i32.lt_u (local.get $total) (local.get $cap)))))
    (local.get $total))

  ;; path_open following symlinks; returns the new fd, or -errno.
  (func $open (param $dir i32) (param $path i32) (param $len i32) (param $oflags i32) (param $rights i64) (result i32)
    (local $err i32)
    (local.set $err (call $path_open (local.get $dir) (i32.const 1) (local.get $path) (local.get $len)
      (local.get $oflags) (local.get $rights) (local.get $rights) (i32.const 0) (i32.const 12)))
    (if (result i32) (local.get $err)
      (then (i32.sub (i32.const 0) (local.get $err)))
      (else (i32.load (i32.const 12)))))

  ;; 0 when fd >= 0, else the errno (-fd).
  (func $errno_of (param $fd i32) (result i32)
    (if (result i32) (i32.lt_s (local.get $fd) (i32.const 0))
      (then (i32.sub (i32.const 0) (local.get $fd)))
      (else (i32.const 0))))
"#;

/// Builds a guest: the prelude's helpers, string constants, and a `_start` body.
///
/// `w.s("text")` places a string in memory and returns `(i32.const ptr) (i32.const len)`, to
/// splice into the body, e.g. `(call $print {hello})`; `w.say("key")` returns a label
/// `key=` to use with `$say`.
#[derive(Default)]
pub struct Wat {
    data: String,
    next: u32,
    funcs: String,
}

impl Wat {
    /// A guest with no strings yet.
    pub fn new() -> Self {
        Wat {
            data: String::new(),
            next: 1024,
            funcs: String::new(),
        }
    }

    /// Places `text` in memory; returns its `(i32.const ptr) (i32.const len)`.
    pub fn s(&mut self, text: impl AsRef<[u8]>) -> String {
        let bytes = text.as_ref();
        let at = self.next;
        let mut escaped = String::new();
        for b in bytes {
            write!(escaped, "\\{b:02x}").unwrap();
        }
        writeln!(self.data, "  (data (i32.const {at}) \"{escaped}\")").unwrap();
        self.next += bytes.len() as u32 + 1;
        assert!(self.next < BUF, "too many string constants");
        format!("(i32.const {at}) (i32.const {})", bytes.len())
    }

    /// `(call $say <"key="> VALUE)`: prints `key=<value>` on its own line.
    pub fn say(&mut self, key: &str, value: &str) -> String {
        let label = self.s(format!("{key}="));
        format!("(call $say {label} {value})")
    }

    /// Adds a helper function (or any other module field).
    pub fn func(&mut self, text: &str) -> &mut Self {
        self.funcs.push_str(text);
        self.funcs.push('\n');
        self
    }

    /// The module text, with `body` as `_start` (locals may be declared at its top).
    pub fn module(&self, body: &str) -> String {
        format!(
            "(module\n{PRELUDE}\n{}\n{}\n  (func (export \"_start\")\n{body}\n  )\n)\n",
            self.data, self.funcs
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Archives
// ---------------------------------------------------------------------------------------------

/// An entry of a hand-built tar archive.
pub enum TarEntry<'a> {
    /// A regular file, with a raw name (not checked).
    File(&'a [u8], &'a [u8]),
    /// A symlink: raw name and target.
    Symlink(&'a [u8], &'a [u8]),
    /// A directory.
    Dir(&'a [u8]),
}

/// A tar.gz with `entries`, names written as given (absolute and `..` names included).
pub fn tar_gz(entries: &[TarEntry<'_>]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut builder = tar::Builder::new(gz);
    for entry in entries {
        let mut header = tar::Header::new_ustar();
        let (name, data, kind, mode): (&[u8], &[u8], tar::EntryType, u32) = match entry {
            TarEntry::File(name, data) => (name, data, tar::EntryType::Regular, 0o644),
            TarEntry::Symlink(name, _) => (name, b"", tar::EntryType::Symlink, 0o777),
            TarEntry::Dir(name) => (name, b"", tar::EntryType::Directory, 0o755),
        };
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_size(data.len() as u64);
        header.set_mtime(0);
        let old = header.as_old_mut();
        assert!(name.len() < old.name.len(), "tar name too long");
        old.name.fill(0);
        old.name[..name.len()].copy_from_slice(name);
        if let TarEntry::Symlink(_, target) = entry {
            assert!(target.len() < old.linkname.len(), "link name too long");
            old.linkname.fill(0);
            old.linkname[..target.len()].copy_from_slice(target);
        }
        header.set_cksum();
        builder.append(&header, data).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

/// A zip with deflated files, names written as given.
pub fn zip(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, data) in files {
        writer.start_file(*name, options).unwrap();
        writer.write_all(data).unwrap();
    }
    writer.finish().unwrap().into_inner()
}

/// Streams a zip holding one file of `size` zero bytes to `path` (a zip bomb: the zip is
/// about a thousandth of `size`).
pub fn zip_bomb(path: &Path, size: u64) {
    let file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut writer = zip::ZipWriter::new(file);
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .compression_level(Some(1))
        .large_file(size >= u32::MAX as u64);
    writer.start_file("zeros.bin", options).unwrap();
    let chunk = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        writer.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
    }
    writer.finish().unwrap();
}

/// The entries of a tar.gz: (path, contents) of the regular files.
pub fn untar_gz(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
    let mut out = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
        out.push((path, data));
    }
    out
}

/// A WASI guest that connects to the TCP echo server at `port` through `aleph_host.call`, sends
/// "ping" and prints `head` then what comes back (`head` makes it a CGI response); on a failed
/// call it prints the failure's text and exits with its errno.
pub fn echo_client_guest(port: u16, head: &str) -> String {
    let connect = format!(r#"{{"host":"127.0.0.1","port":{port}}}"#);
    host_client_guest(&connect, b"ping", head)
}

/// A WASI guest that calls `net.connect` with the JSON `connect` through `aleph_host.call`,
/// sends `payload` on the first connection, receives once (at most 1024 bytes, waiting at most
/// 5 s) and prints `head` then what came; on a failed call it prints the failure's text and
/// exits with its errno.
pub fn host_client_guest(connect: &str, payload: &[u8], head: &str) -> String {
    let mut send_args = 1u32.to_le_bytes().to_vec();
    send_args.extend_from_slice(payload);
    let hex = |bytes: &[u8]| -> String { bytes.iter().map(|b| format!("\\{b:02x}")).collect() };
    format!(
        r#"(module
  (import "aleph_host" "call" (func $call (param i32 i32 i32 i32) (result i64)))
  (import "aleph_host" "take" (func $take (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "net.connect")
  (data (i32.const 16) "net.send")
  (data (i32.const 32) "net.recv")
  (data (i32.const 64) "{json}")
  ;; handle 1, max 1024, timeout 5000 ms
  (data (i32.const 544) "\01\00\00\00\00\04\00\00\88\13\00\00")
  (data (i32.const 3072) "{head}")
  ;; handle 1 (the first connection), then the payload
  (data (i32.const 4096) "{send}")
  (func $out (param $ptr i32) (param $len i32)
    (i32.store (i32.const 2048) (local.get $ptr))
    (i32.store (i32.const 2052) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 2048) (i32.const 1) (i32.const 2056))))
  (func $check (param $r i64)
    (if (i64.lt_s (local.get $r) (i64.const 0))
      (then
        (call $out (i32.const 1024) (call $take (i32.const 1024) (i32.const 1024)))
        (call $exit (i32.wrap_i64 (i64.sub (i64.const 0) (local.get $r)))))))
  (func (export "_start")
    (call $check (call $call (i32.const 0) (i32.const 11) (i32.const 64) (i32.const {len})))
    (drop (call $take (i32.const 1024) (i32.const 1024)))
    (call $check (call $call (i32.const 16) (i32.const 8) (i32.const 4096) (i32.const {send_len})))
    (drop (call $take (i32.const 1024) (i32.const 1024)))
    (call $check (call $call (i32.const 32) (i32.const 8) (i32.const 544) (i32.const 12)))
    (call $out (i32.const 3072) (i32.const {head_len}))
    (call $out (i32.const 1024) (call $take (i32.const 1024) (i32.const 1024)))))"#,
        json = connect.replace('"', "\\\""),
        len = connect.len(),
        head = head.escape_default(),
        head_len = head.len(),
        send = hex(&send_args),
        send_len = send_args.len(),
    )
}
