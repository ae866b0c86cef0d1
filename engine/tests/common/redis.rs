//! A real Redis for the tests of the guest API's Redis cache: Debian's `redis-server` on a
//! free loopback port, without persistence, killed on drop. When the machine has none, it is
//! installed with `apt-get` (the tests run as root on the project's machines; `.ci/run` installs
//! it up front). Shared by the library's tests (`host::api`) and the integration tests.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A running `redis-server`.
pub struct RedisServer {
    child: Child,
    /// `redis://127.0.0.1:<port>`.
    pub url: String,
    _dir: tempfile::TempDir,
}

/// Installs Debian's redis-server once if `redis-server` is not on `PATH`.
fn ensure_installed() {
    static ONCE: Mutex<bool> = Mutex::new(false);
    let mut done = ONCE.lock().unwrap_or_else(|p| p.into_inner());
    if *done
        || Command::new("redis-server")
            .arg("--version")
            .output()
            .is_ok()
    {
        *done = true;
        return;
    }
    let status = Command::new("sh")
        .args([
            "-c",
            "apt-get update -qq && apt-get install -y -qq redis-server",
        ])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status();
    assert!(
        matches!(status, Ok(s) if s.success()),
        "the Redis cache tests need Debian's redis-server and could not install it \
         (apt-get install redis-server, as root): {status:?}"
    );
    *done = true;
}

impl RedisServer {
    /// Starts one (installing the package first if need be).
    pub fn start() -> Self {
        ensure_installed();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server: {e}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("redis-server exited at start-up: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on port {port} within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        RedisServer {
            child,
            url: format!("redis://127.0.0.1:{port}"),
            _dir: dir,
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
