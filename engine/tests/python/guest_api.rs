//! The guest API (`content.environment.aleph_api`) from inside a program, through the library
//! (`Executor`): the program (`tests/python/guest_api/main.py`) reaches it as programs on Aleph's
//! VMs do — aiohttp over the unix socket `ALEPH_API_UNIX_SOCKET` with `ALEPH_API_HOST` as the
//! base URL (what the in-VM SDK's cache does), and urllib against `http://localhost` — and the
//! node serves it in-process. Its cache is checked with both backends: embedded in the store,
//! and a real Redis (`redis-server`, started by the test). Route details (expiry, every status)
//! are unit-tested in `host::api`.

use super::*;
use crate::common::redis::RedisServer;
use aleph_wasm::host::api::CacheConfig;

/// The app (without its packages).
const GUEST_API_APP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/guest_api");

/// The app with aiohttp (and what it needs) in `packages/`.
fn guest_api_code(py: &Py) -> PathBuf {
    code_with_wheels(
        py,
        GUEST_API_APP,
        "guest-api-code",
        &super::internet::internet_wheels(),
    )
}

/// Two programs (same code, different item hashes) granted `aleph_api`, and one not.
struct Programs {
    py: Py,
    a: Message,
    b: Message,
    denied: Message,
    ex: Executor,
}

impl Programs {
    fn start(cache: CacheConfig) -> Programs {
        let py = Py::new();
        let code_ref = py.code(&guest_api_code(&py));
        let program = |api: bool, name: &str| {
            py.program(
                &code_ref,
                "main:app",
                json!({
                    "environment": {
                        "reproducible": false,
                        "internet": false,
                        "aleph_api": api,
                        "shared_cache": false,
                    },
                    "resources": {"vcpus": 1, "memory": 256, "seconds": 30},
                    "variables": {"NAME": name},
                }),
            )
        };
        let (a, b, denied) = (program(true, "a"), program(true, "b"), program(false, "c"));
        let mut config = config(true);
        config.host.cache = cache;
        let ex = py.executor(config);
        Programs {
            py,
            a,
            b,
            denied,
            ex,
        }
    }

    /// One request of `msg`'s program to the guest API: `(status, body)`, or the failure's JSON.
    async fn api(&self, msg: &Message, via: &str, method: &str, path: &str) -> Value {
        self.api_with(msg, via, method, path, None).await
    }

    async fn api_with(
        &self,
        msg: &Message,
        via: &str,
        method: &str,
        path: &str,
        data: Option<&str>,
    ) -> Value {
        let mut q = format!("via={via}&method={method}&path={}", percent(path));
        if let Some(data) = data {
            q.push_str(&format!("&data={}", percent(data)));
        }
        let o = run(&self.ex, msg, http(&format!("GET /api?{q}"))).await;
        ok_json(&o)
    }

    async fn shutdown(self) {
        self.ex.shutdown().await;
        drop(self.py);
    }
}

fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[track_caller]
fn answer(reply: &Value, status: u64, body: &str) {
    assert_eq!(reply["ok"], json!(true), "{reply:#}");
    assert_eq!(reply["status"], json!(status), "{reply:#}");
    assert_eq!(reply["body"], json!(body), "{reply:#}");
}

/// The cache routes as the table in docs/host.md says, for whichever backend the node has.
async fn cache_behaves(p: &Programs) {
    for via in ["unix", "localhost"] {
        let key = format!("greeting_{via}");
        let path = format!("/cache/{key}");
        answer(
            &p.api(&p.a, via, "GET", &path).await,
            404,
            "No such key in cache",
        );
        let put = p.api_with(&p.a, via, "PUT", &path, Some("hello")).await;
        assert_eq!(put["status"], json!(200), "{put:#}");
        answer(&p.api(&p.a, via, "GET", &path).await, 200, "hello");
        // Another program's cache is its own.
        answer(
            &p.api(&p.b, via, "GET", &path).await,
            404,
            "No such key in cache",
        );
        let listed = p.api(&p.a, via, "GET", "/cache/?pattern=greeting_*").await;
        let keys: Vec<String> = serde_json::from_str(listed["body"].as_str().unwrap()).unwrap();
        assert!(keys.contains(&key), "{listed:#}");
        let listed_b = p.api(&p.b, via, "GET", "/cache/?pattern=greeting_*").await;
        assert_eq!(listed_b["body"], json!("[]"), "{listed_b:#}");
        // Bad keys and patterns are 400s that say why.
        let bad = p.api(&p.a, via, "GET", "/cache/no%20spaces").await;
        assert_eq!(bad["status"], json!(400), "{bad:#}");
        assert!(
            bad["body"].as_str().unwrap().starts_with("Invalid key"),
            "{bad:#}"
        );
        let bad = p.api(&p.a, via, "GET", "/cache/?pattern=a/b").await;
        assert_eq!(bad["status"], json!(400), "{bad:#}");
        let deleted = p.api(&p.a, via, "DELETE", &path).await;
        assert_eq!(deleted["status"], json!(200), "{deleted:#}");
        answer(
            &p.api(&p.a, via, "GET", &path).await,
            404,
            "No such key in cache",
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guest_api_serves_the_store_and_a_cache_of_each_programs_own() {
    let p = Programs::start(CacheConfig::Embedded);

    let env = ok_json(&run(&p.ex, &p.a, http("GET /env")).await);
    assert_eq!(env["ALEPH_API_HOST"], json!("http://localhost"), "{env:#}");
    assert_eq!(
        env["ALEPH_API_UNIX_SOCKET"],
        json!("/tmp/socat-socket"),
        "{env:#}"
    );
    assert_eq!(
        env["ALEPH_REMOTE_CRYPTO_UNIX_SOCKET"],
        json!("/tmp/socat-socket"),
        "{env:#}"
    );
    assert_eq!(env["ALEPH_ITEM_HASH"], json!(p.a.item_hash), "{env:#}");
    let label = aleph_wasm::message::host_label(&p.a.item_hash).unwrap();
    assert_eq!(env["ALEPH_ADDRESS_TO_USE"], json!(label), "{env:#}");

    // An object and a message from the node's store, both ways.
    let object =
        p.py.store
            .put_object(b"an object in the node's store")
            .unwrap();
    for via in ["unix", "localhost"] {
        let raw = format!("/api/v0/storage/raw/{object}");
        answer(
            &p.api(&p.a, via, "GET", &raw).await,
            200,
            "an object in the node's store",
        );
        let listing = p
            .api(
                &p.a,
                via,
                "GET",
                &format!("/api/v0/messages.json?hashes={}", p.b.item_hash),
            )
            .await;
        assert_eq!(listing["status"], json!(200), "{listing:#}");
        let listing: Value = serde_json::from_str(listing["body"].as_str().unwrap()).unwrap();
        assert_eq!(
            listing["messages"][0]["item_hash"],
            json!(p.b.item_hash),
            "{listing:#}"
        );
        let one = p
            .api(
                &p.a,
                via,
                "GET",
                &format!("/api/v0/messages/{}", p.b.item_hash),
            )
            .await;
        assert_eq!(one["status"], json!(200), "{one:#}");
    }
    // What the store does not hold, with no upstream API: a 404 that says so.
    let missing = p
        .api(
            &p.a,
            "unix",
            "GET",
            &format!("/api/v0/storage/raw/{}", "0".repeat(64)),
        )
        .await;
    assert_eq!(missing["status"], json!(404), "{missing:#}");

    cache_behaves(&p).await;

    // Signing: only the program's own messages, and this node has no key.
    let foreign = json!({"sender": "0xabc", "chain": "ETH", "type": "POST", "item_type": "inline",
                         "item_content": json!({"address": "0xsomeoneelse", "time": 1.0}).to_string()});
    let signed = p
        .api_with(&p.a, "unix", "POST", "/sign", Some(&foreign.to_string()))
        .await;
    assert_eq!(signed["status"], json!(403), "{signed:#}");

    // Without the flag: the unix socket and localhost are not there.
    let denied = p.api(&p.denied, "unix", "GET", "/cache/x").await;
    assert_eq!(denied["ok"], json!(false), "{denied:#}");
    let messages = denied["messages"].to_string();
    assert!(
        denied["chain"].to_string().contains("PermissionError"),
        "{denied:#}"
    );
    assert!(
        messages.contains("content.environment.aleph_api is false"),
        "{denied:#}"
    );
    let env = ok_json(&run(&p.ex, &p.denied, http("GET /env")).await);
    assert!(env.get("ALEPH_API_HOST").is_none(), "{env:#}");
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guest_api_cache_works_the_same_on_redis() {
    let redis = RedisServer::start();
    let p = Programs::start(CacheConfig::Redis(redis.url.clone()));
    cache_behaves(&p).await;
    p.shutdown().await;
}
