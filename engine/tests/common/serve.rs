//! `aleph-wasm serve` as a separate process: started, asked for its address, stopped with
//! SIGTERM.

use std::io::BufRead as _;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// `aleph-wasm --store <store> --module-cache <module_cache> --snapshots off serve --listen
/// 127.0.0.1:0 <args…>`, inheriting no `ALEPH_WASM_*` setting from the test's environment: a
/// node on a free loopback port whose instances start cold.
pub fn cold_command(store: &Path, module_cache: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(super::BIN);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ALEPH_WASM_") {
            cmd.env_remove(key);
        }
    }
    cmd.arg("--store")
        .arg(store)
        .arg("--module-cache")
        .arg(module_cache)
        .args(["--snapshots", "off", "serve", "--listen", "127.0.0.1:0"])
        .args(args);
    cmd
}

/// A `serve` process a test started; killed if the test ends without stopping it.
pub struct ServeProcess {
    child: Option<Child>,
    /// Where it listens (`http://127.0.0.1:PORT`).
    pub base: String,
}

impl ServeProcess {
    /// Starts `cmd` (`aleph-wasm … serve …`) and waits, at most 60 s, for the address it
    /// prints first.
    pub async fn start(mut cmd: Command) -> ServeProcess {
        let mut child = cmd
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `serve`: {e}"));
        let stdout = child.stdout.take().unwrap();
        let mut process = ServeProcess {
            child: Some(child),
            base: String::new(),
        };
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            line
        });
        let line = tokio::time::timeout(Duration::from_secs(60), line)
            .await
            .expect("`serve` printed no address")
            .unwrap();
        process.base = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from `serve`: {line:?}"))
            .to_string();
        process
    }

    /// Stops it with SIGTERM; its output once it has exited (within 60 s).
    pub async fn stop(mut self) -> Output {
        let child = self.child.take().expect("stopped twice");
        let killed = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let exited = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap());
        tokio::time::timeout(Duration::from_secs(60), exited)
            .await
            .expect("`serve` did not stop after SIGTERM")
            .unwrap()
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
