//! A node service in the test process: a fresh store, a server on a loopback port, requests
//! to it, and its counters.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aleph_wasm::Store;
use aleph_wasm::server::{self, Server, ServerConfig};
use serde_json::Value;

use super::http::{Answer, client};

/// What the suites keep between runs: the interpreter copy and compiled modules.
const CACHE: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/aleph-wasm-test-cache");

/// One test's store and server.
pub struct Node {
    /// The test's directory (the store is `store/` in it).
    pub dir: tempfile::TempDir,
    /// The store.
    pub store: Store,
    /// The server, once started.
    pub server: Option<Server>,
    /// A client for its routes.
    pub client: reqwest::Client,
}

impl Node {
    /// A fresh store; call [`Node::start`] once programs are stored (or before: the server
    /// reads the store on each request).
    pub fn new() -> Node {
        let dir = tempfile::Builder::new()
            .prefix("aleph-wasm-node-")
            .tempdir()
            .unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        Node {
            dir,
            store,
            server: None,
            client: client(),
        }
    }

    /// Starts the server on a loopback port with the shared module cache and instances that
    /// start cold (snapshots have their own tests), `tune` applied to the configuration.
    pub async fn start(mut self, tune: impl FnOnce(&mut ServerConfig, &Path)) -> Node {
        let mut config = ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            module_cache: Some(PathBuf::from(CACHE).join("modules")),
            ..ServerConfig::default()
        };
        config.snapshot.enabled = false;
        tune(&mut config, self.dir.path());
        let server = server::start(config, self.store.clone())
            .await
            .unwrap_or_else(|e| panic!("the server does not start: {e:#}"));
        let addr = server.local_addr();
        assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
        self.server = Some(server);
        self
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.server.as_ref().expect("not started").local_addr()
    }

    /// `http://<address><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Answer {
        Answer::of(self.client.get(self.url(path))).await
    }

    /// `POST path` with `body`.
    pub async fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> Answer {
        Answer::of(self.client.post(self.url(path)).body(body)).await
    }

    /// `GET path`, which must answer 200 with JSON.
    pub async fn json(&self, path: &str) -> Value {
        self.get(path).await.status(200).json()
    }

    /// Stops the server (within 60 s).
    pub async fn shutdown(mut self) {
        let server = self.server.take().expect("not started");
        tokio::time::timeout(Duration::from_secs(60), server.shutdown())
            .await
            .expect("the shutdown hangs")
            .unwrap();
    }
}

/// Polls the node's `/about/usage/system` until `ready` holds for it (at most 30 s) and returns
/// it; `what` names the awaited state in the failure.
pub async fn wait_usage(node: &Node, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let usage = node.json("/about/usage/system").await;
        if ready(&usage) {
            return usage;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never {what}: {usage}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the node reports `n` executions running.
pub async fn wait_running(node: &Node, n: u64) {
    wait_usage(node, &format!("{n} executions running"), |u| {
        u["executions"]["running"].as_u64() == Some(n)
    })
    .await;
}
