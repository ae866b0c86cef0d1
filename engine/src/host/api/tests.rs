//! The guest API driven as a program drives it: an HTTP/1 client on the guest's end of the
//! duplex stream, against a real store in a temporary directory, the embedded cache, a real
//! `redis-server`, and a local stand-in for the upstream Aleph API.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{Request, StatusCode, header};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use super::cache::MAX_KEY_LEN;
use super::routes::MAX_VALUE_BYTES;
use super::*;
use crate::message::sha256_hex;

/// A program's item hash, made from a label.
fn program(label: &str) -> String {
    sha256_hex(label.as_bytes())
}

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    (dir, store)
}

async fn embedded(store: &Store) -> Arc<dyn CacheBackend> {
    CacheConfig::Embedded.backend(store).await.unwrap()
}

/// One answer, read whole.
struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text()))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn content_type(&self) -> &str {
        self.headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The JSON list of keys, sorted.
    fn keys(&self) -> Vec<String> {
        assert_eq!(self.status, StatusCode::OK, "{}", self.text());
        let mut keys: Vec<String> = serde_json::from_value(self.json()).unwrap();
        keys.sort();
        keys
    }
}

/// A program's HTTP/1 connection to the guest API.
struct Client {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Client {
    async fn new(api: &Arc<GuestApi>, program: &str) -> Self {
        let io = TokioIo::new(api.connect(program));
        let (sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Client { sender }
    }

    async fn send(&mut self, method: &str, path: &str, body: impl Into<Bytes>) -> Answer {
        self.send_with(method, path, None, body).await
    }

    async fn send_with(
        &mut self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: impl Into<Bytes>,
    ) -> Answer {
        self.sender.ready().await.unwrap();
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "localhost");
        if let Some(ct) = content_type {
            request = request.header(header::CONTENT_TYPE, ct);
        }
        let request = request.body(Full::new(body.into())).unwrap();
        let response = self.sender.send_request(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            headers,
            body,
        }
    }

    async fn get(&mut self, path: &str) -> Answer {
        self.send("GET", path, Bytes::new()).await
    }
}

/// The cache's whole behaviour through the API, on `cache`.
async fn cache_behaviour(store: Store, cache: Arc<dyn CacheBackend>) {
    let api = Arc::new(GuestApi::new(store.clone(), cache.clone(), None));
    let (a, b) = (program("program a"), program("program b"));
    let mut ca = Client::new(&api, &a).await;
    let mut cb = Client::new(&api, &b).await;

    // Set, get.
    let put = ca.send("PUT", "/cache/greeting", "hello").await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.text());
    assert_eq!(put.json(), json!(true));
    let got = ca.get("/cache/greeting").await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.body, "hello");
    assert_eq!(got.content_type(), "application/octet-stream");
    // Replaced.
    ca.send("PUT", "/cache/greeting", "hello again").await;
    assert_eq!(ca.get("/cache/greeting").await.body, "hello again");
    // Any bytes.
    let binary: Vec<u8> = (0..=255u8).collect();
    assert_eq!(
        ca.send("PUT", "/cache/binary", binary.clone()).await.status,
        StatusCode::OK
    );
    assert_eq!(ca.get("/cache/binary").await.body, binary);
    // The longest key.
    let long = "k".repeat(MAX_KEY_LEN);
    assert_eq!(
        ca.send("PUT", &format!("/cache/{long}"), "long")
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(ca.get(&format!("/cache/{long}")).await.body, "long");
    ca.send("PUT", "/cache/greet_2", "2").await;

    // Listing, with and without a pattern.
    let all = ["binary", "greet_2", "greeting", long.as_str()];
    assert_eq!(ca.get("/cache/").await.keys(), all);
    assert_eq!(ca.get("/cache/?pattern=*").await.keys(), all);
    assert_eq!(
        ca.get("/cache/?pattern=greet*").await.keys(),
        ["greet_2", "greeting"]
    );
    assert_eq!(ca.get("/cache/?pattern=gr?et_?").await.keys(), ["greet_2"]);
    assert_eq!(ca.get("/cache/?pattern=*ing").await.keys(), ["greeting"]);
    assert!(ca.get("/cache/?pattern=nothing*").await.keys().is_empty());

    // Bad keys: 400, naming the rule.
    let too_long = "k".repeat(MAX_KEY_LEN + 1);
    for path in [
        "/cache/bad-key".to_string(),
        "/cache/a%3Ab".to_string(),
        "/cache/a/b".to_string(),
        "/cache/%C3%A9".to_string(),
        format!("/cache/{too_long}"),
    ] {
        for method in ["GET", "PUT", "DELETE"] {
            let answer = ca.send(method, &path, "x").await;
            assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{method} {path}");
            assert!(
                answer.text().starts_with("Invalid key"),
                "{}",
                answer.text()
            );
            assert!(answer.text().contains("^\\w+$"), "{}", answer.text());
        }
    }
    for method in ["PUT", "DELETE"] {
        let answer = ca.send(method, "/cache/", "x").await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{method} /cache/");
    }
    // Bad patterns: 400, naming the rule.
    for pattern in ["a:b", "", "%5Ba%5D", "a%5C*", "x%20y"] {
        let answer = ca.get(&format!("/cache/?pattern={pattern}")).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{pattern:?}");
        assert!(
            answer.text().starts_with("Invalid key pattern"),
            "{}",
            answer.text()
        );
    }
    // A value over the limit.
    let big = vec![b'x'; MAX_VALUE_BYTES + 1];
    assert_eq!(
        ca.send("PUT", "/cache/big", big).await.status,
        StatusCode::PAYLOAD_TOO_LARGE
    );

    // Isolation: another program sees none of it, and its keys are its own.
    assert_eq!(
        cb.get("/cache/greeting").await.status,
        StatusCode::NOT_FOUND
    );
    assert!(cb.get("/cache/").await.keys().is_empty());
    assert_eq!(
        cb.send("DELETE", "/cache/greeting", "").await.json(),
        json!(0)
    );
    cb.send("PUT", "/cache/greeting", "from b").await;
    assert_eq!(cb.get("/cache/greeting").await.body, "from b");
    assert_eq!(ca.get("/cache/greeting").await.body, "hello again");
    assert_eq!(cb.get("/cache/").await.keys(), ["greeting"]);
    assert_eq!(
        cb.send("DELETE", "/cache/greeting", "").await.json(),
        json!(1)
    );
    assert_eq!(ca.get("/cache/greeting").await.body, "hello again");

    // Delete: 1, then 0; a missing key is a 404.
    assert_eq!(
        ca.send("DELETE", "/cache/greeting", "").await.json(),
        json!(1)
    );
    assert_eq!(
        ca.send("DELETE", "/cache/greeting", "").await.json(),
        json!(0)
    );
    let missing = ca.get("/cache/greeting").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.text(), "No such key in cache");
    assert_eq!(
        ca.get("/cache/").await.keys(),
        ["binary", "greet_2", long.as_str()]
    );

    // A second connection of the same program sees the same cache.
    let mut ca2 = Client::new(&api, &a).await;
    assert_eq!(ca2.get("/cache/greet_2").await.body, "2");

    // Expiry: a value set with a short time to live is gone once it has passed.
    let short =
        Arc::new(GuestApi::new(store, cache, None).with_cache_ttl(Duration::from_millis(300)));
    let mut cs = Client::new(&short, &a).await;
    cs.send("PUT", "/cache/fleeting", "soon gone").await;
    assert_eq!(cs.get("/cache/fleeting").await.body, "soon gone");
    assert!(cs.get("/cache/?pattern=fl*").await.keys() == ["fleeting"]);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        cs.get("/cache/fleeting").await.status,
        StatusCode::NOT_FOUND
    );
    assert!(cs.get("/cache/?pattern=fl*").await.keys().is_empty());
    assert_eq!(
        cs.send("DELETE", "/cache/fleeting", "").await.json(),
        json!(0)
    );
    // Values set with the default time to live are still there.
    assert_eq!(cs.get("/cache/greet_2").await.body, "2");
}

#[tokio::test]
async fn embedded_cache_behaviour() {
    let (_dir, store) = store();
    let cache = embedded(&store).await;
    cache_behaviour(store, cache).await;
}

#[tokio::test]
async fn embedded_cache_files_expire_lazily_and_stay_in_the_program_directory() {
    let (_dir, store) = store();
    let cache = embedded(&store).await;
    let root = store.root().join("cache").join(cache::EMBEDDED_DIR);
    let a = program("a");
    cache
        .set(
            &a,
            "soon",
            Bytes::from_static(b"x"),
            Duration::from_millis(50),
        )
        .await
        .unwrap();
    cache
        .set(&a, "later", Bytes::from_static(b"y"), CACHE_TTL)
        .await
        .unwrap();
    let file = root.join(&a).join("soon");
    assert!(file.is_file(), "{}", file.display());
    tokio::time::sleep(Duration::from_millis(150)).await;
    // Still there until something reads or lists it.
    assert!(file.is_file());
    assert_eq!(cache.keys(&a, "*").await.unwrap(), ["later"]);
    assert!(!file.exists(), "the listing removed the expired value");
    // A value file cut short (a crash mid-write) counts as missing and goes.
    let broken = root.join(&a).join("broken");
    std::fs::write(&broken, b"no header").unwrap();
    assert_eq!(cache.get(&a, "broken").await.unwrap(), None);
    assert!(!broken.exists());
    // Nothing but the program's directory was written, and no temporary file is left.
    let names: Vec<_> = std::fs::read_dir(root.join(&a))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["later"]);
    // The backend itself refuses keys that could leave the directory.
    assert!(cache.get(&a, "../x").await.is_err());
    assert!(cache.set(&a, "a/b", Bytes::new(), CACHE_TTL).await.is_err());
    assert!(cache.keys(&a, "../*").await.is_err());
}

/// Debian's `redis-server`, started by the test (shared with the integration tests).
#[path = "../../../tests/common/redis.rs"]
mod redis_server;
use redis_server::RedisServer;

#[tokio::test]
async fn redis_cache_behaviour() {
    let server = RedisServer::start();
    let (_dir, store) = store();
    let config = CacheConfig::parse(&server.url).unwrap();
    let cache = config.backend(&store).await.unwrap();
    assert_eq!(cache.describe(), format!("redis ({})", server.url));
    cache_behaviour(store, cache).await;
}

#[tokio::test]
async fn redis_keys_are_laid_out_as_aleph_vm_lays_them_out() {
    let server = RedisServer::start();
    let (_dir, store) = store();
    let api = Arc::new(GuestApi::new(
        store.clone(),
        CacheConfig::Redis(server.url.clone())
            .backend(&store)
            .await
            .unwrap(),
        None,
    ));
    let a = program("a");
    let mut client = Client::new(&api, &a).await;
    client.send("PUT", "/cache/greeting", "hello").await;
    // As aleph-vm: `<program>:<key>`, expiring after 7 days.
    let redis = ::redis::Client::open(server.url.as_str()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let key = format!("{a}:greeting");
    let value: Vec<u8> = ::redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(value, b"hello");
    let ttl: i64 = ::redis::cmd("TTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        (CACHE_TTL.as_secs() as i64 - 5..=CACHE_TTL.as_secs() as i64).contains(&ttl),
        "{ttl}"
    );
    // A value aleph-vm wrote is read back.
    let () = ::redis::cmd("SET")
        .arg(format!("{a}:from_aleph_vm"))
        .arg("old")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(client.get("/cache/from_aleph_vm").await.body, "old");
    assert_eq!(
        client.get("/cache/").await.keys(),
        ["from_aleph_vm", "greeting"]
    );
}

#[tokio::test]
async fn a_wrong_redis_address_fails_at_start_up() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (_dir, store) = store();
    let url = format!("redis://127.0.0.1:{port}");
    let started = Instant::now();
    let e = CacheConfig::Redis(url.clone())
        .backend(&store)
        .await
        .err()
        .expect("no server listens there");
    assert!(e.contains(&url), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5), "{e}");
}

#[tokio::test]
async fn messages_and_objects_come_from_the_store() {
    let (_dir, store) = store();
    let file_hash = store.put_object(b"hello object").unwrap();
    let msg = store
        .add_store_message(&file_hash, 12, "0xOwner", 1_700_000_000.25)
        .unwrap();
    let api = Arc::new(GuestApi::new(store.clone(), embedded(&store).await, None));
    let mut client = Client::new(&api, &program("p")).await;

    // The listing, in the shape the node serves other nodes.
    let listing = client
        .get(&format!("/api/v0/messages.json?hashes={}", msg.item_hash))
        .await;
    assert_eq!(listing.status, StatusCode::OK, "{}", listing.text());
    assert_eq!(
        listing.json(),
        json!({
            "messages": [msg.to_json()],
            "pagination_page": 1,
            "pagination_total": 1,
            "pagination_per_page": 20,
            "pagination_item": "messages",
        })
    );
    let by_ref = client
        .get("/api/v0/messages.json?msgType=STORE&owners=0xOwner")
        .await
        .json();
    assert_eq!(by_ref["pagination_total"], 1);
    let bad = client.get("/api/v0/messages.json?sort_order=0").await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(bad.json()["error"].as_str().unwrap().contains("sort_order"));
    // Nothing found and no upstream: an empty listing.
    let none = client
        .get(&format!("/api/v0/messages.json?hashes={}", program("none")))
        .await
        .json();
    assert_eq!(none["messages"], json!([]));

    // One message, as pyaleph answers it.
    let one = client
        .get(&format!("/api/v0/messages/{}", msg.item_hash))
        .await;
    assert_eq!(one.status, StatusCode::OK, "{}", one.text());
    assert_eq!(
        one.json(),
        json!({
            "status": "processed",
            "item_hash": msg.item_hash,
            "reception_time": "2023-11-14T22:13:20.250000Z",
            "message": msg.to_json(),
        })
    );
    let missing = client
        .get(&format!("/api/v0/messages/{}", program("missing")))
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let error = missing.json()["error"].as_str().unwrap().to_string();
    assert!(error.contains(&program("missing")), "{error}");
    assert!(error.contains("--api"), "{error}");
    assert_eq!(
        client.get("/api/v0/messages/not-a-hash").await.status,
        StatusCode::BAD_REQUEST
    );

    // An object's bytes.
    let raw = client
        .get(&format!("/api/v0/storage/raw/{file_hash}"))
        .await;
    assert_eq!(raw.status, StatusCode::OK);
    assert_eq!(raw.body, "hello object");
    assert_eq!(raw.content_type(), "application/octet-stream");
    let head = client
        .send("HEAD", &format!("/api/v0/storage/raw/{file_hash}"), "")
        .await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    let absent = client
        .get(&format!("/api/v0/storage/raw/{}", program("absent")))
        .await;
    assert_eq!(absent.status, StatusCode::NOT_FOUND);
    assert!(
        absent.json()["error"]
            .as_str()
            .unwrap()
            .contains(&program("absent"))
    );
    assert_eq!(
        client.get("/api/v0/storage/raw/xyz").await.status,
        StatusCode::BAD_REQUEST
    );
    // A corrupt object is never served.
    std::fs::write(store.object_path(&file_hash).unwrap(), b"HELLO OBJECT").unwrap();
    let corrupt = client
        .get(&format!("/api/v0/storage/raw/{file_hash}"))
        .await;
    assert_eq!(corrupt.status, StatusCode::NOT_FOUND);
    assert!(!corrupt.text().contains("HELLO"));

    // Anything else, without an upstream API: a 404 naming it; other methods: 405.
    let other = client.get("/api/v0/aggregates/0xabc.json?keys=a").await;
    assert_eq!(other.status, StatusCode::NOT_FOUND);
    let error = other.json()["error"].as_str().unwrap().to_string();
    assert!(
        error.contains("GET /api/v0/aggregates/0xabc.json") && error.contains("--api"),
        "{error}"
    );
    assert_eq!(
        client.send("POST", "/api/v0/whatever", "").await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
}

#[tokio::test]
async fn signing_is_only_for_the_program_itself_and_needs_a_key() {
    let (_dir, store) = store();
    let api = Arc::new(GuestApi::new(store.clone(), embedded(&store).await, None));
    let me = program("me");
    let mut client = Client::new(&api, &me).await;

    let properties = client.get("/properties").await;
    assert_eq!(properties.status, StatusCode::NOT_IMPLEMENTED);
    assert_eq!(
        properties.json()["error"],
        "this node has no signing key (node option --signing-key)"
    );

    let message = |address: &str| {
        let content = json!({"address": address, "type": "test", "content": {}, "time": 1.0});
        json!({
            "chain": "ETH",
            "sender": "0xNode",
            "type": "POST",
            "item_type": "inline",
            "item_content": content.to_string(),
            "item_hash": sha256_hex(content.to_string().as_bytes()),
            "time": 1.0,
        })
    };
    // Someone else's address: 403, in either form of the content.
    let foreign = client
        .send("POST", "/sign", message(&program("other")).to_string())
        .await;
    assert_eq!(foreign.status, StatusCode::FORBIDDEN, "{}", foreign.text());
    let error = foreign.json()["error"].as_str().unwrap().to_string();
    assert!(
        error.contains(&me) && error.contains(&program("other")),
        "{error}"
    );
    let inline_content = json!({"content": {"address": "0xSomeone"}, "sender": me});
    assert_eq!(
        client
            .send("POST", "/sign", inline_content.to_string())
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let no_address = json!({"item_content": "{}"});
    assert_eq!(
        client
            .send("POST", "/sign", no_address.to_string())
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    // Not a message: 400.
    for body in ["not json", "[1]", r#"{"item_content": "{"}"#, "{}"] {
        assert_eq!(
            client.send("POST", "/sign", body).await.status,
            StatusCode::BAD_REQUEST,
            "{body}"
        );
    }
    // Its own address: the node would sign, but has no key.
    let own = client.send("POST", "/sign", message(&me).to_string()).await;
    assert_eq!(own.status, StatusCode::NOT_IMPLEMENTED);
    assert!(
        own.json()["error"]
            .as_str()
            .unwrap()
            .contains("--signing-key")
    );
    let own_content = json!({"content": {"address": me}});
    assert_eq!(
        client
            .send("POST", "/sign", own_content.to_string())
            .await
            .status,
        StatusCode::NOT_IMPLEMENTED
    );
}

#[tokio::test]
async fn pubsub_needs_an_upstream_api() {
    let (_dir, store) = store();
    let api = Arc::new(GuestApi::new(store.clone(), embedded(&store).await, None));
    let mut client = Client::new(&api, &program("p")).await;
    for path in ["/api/v0/ipfs/pubsub/pub", "/api/v0/p2p/pubsub/pub"] {
        let answer = client
            .send("POST", path, r#"{"topic": "t", "data": "{}"}"#)
            .await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert_eq!(
            answer.json()["error"],
            "this node has no upstream Aleph API (node option --api)"
        );
    }
}

/// A stand-in for the upstream Aleph API on a loopback port: echoes each request as JSON
/// (`/teapot` answers 418).
async fn echo_upstream() -> (String, tokio::task::JoinHandle<()>) {
    async fn echo(
        method: axum::http::Method,
        uri: axum::http::Uri,
        headers: axum::http::HeaderMap,
        body: Bytes,
    ) -> axum::response::Response {
        use axum::response::IntoResponse as _;
        let status = if uri.path() == "/teapot" {
            StatusCode::IM_A_TEAPOT
        } else {
            StatusCode::OK
        };
        let echoed = json!({
            "method": method.as_str(),
            "path": uri.path(),
            "query": uri.query(),
            "content_type": headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()),
            "body": String::from_utf8_lossy(&body),
        });
        (status, axum::Json(echoed)).into_response()
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        axum::serve(listener, axum::Router::new().fallback(echo))
            .await
            .unwrap();
    });
    (url, server)
}

#[tokio::test]
async fn what_the_store_lacks_goes_to_the_upstream_api() {
    let (upstream, server) = echo_upstream().await;
    let (_dir, store) = store();
    let file_hash = store.put_object(b"local").unwrap();
    let msg = store
        .add_store_message(&file_hash, 5, "0xOwner", 1.0)
        .unwrap();
    let api = Arc::new(GuestApi::new(
        store.clone(),
        embedded(&store).await,
        Some(upstream),
    ));
    let mut client = Client::new(&api, &program("p")).await;

    // Any other path, with its query and method.
    let other = client.get("/api/v0/aggregates/0xabc.json?keys=a,b").await;
    assert_eq!(other.status, StatusCode::OK);
    assert_eq!(other.content_type(), "application/json");
    assert_eq!(
        other.json(),
        json!({
            "method": "GET",
            "path": "/api/v0/aggregates/0xabc.json",
            "query": "keys=a,b",
            "content_type": null,
            "body": "",
        })
    );
    let options = client.send("OPTIONS", "/api/v0/messages.json", "").await;
    assert_eq!(options.json()["method"], "OPTIONS");
    // The upstream's status comes back as it is.
    assert_eq!(client.get("/teapot").await.status, StatusCode::IM_A_TEAPOT);
    // What the store holds is answered here; what it lacks is asked upstream.
    let local = client
        .get(&format!("/api/v0/messages.json?hashes={}", msg.item_hash))
        .await
        .json();
    assert_eq!(local["messages"][0]["item_hash"], msg.item_hash.as_str());
    let partly = client
        .get(&format!(
            "/api/v0/messages.json?hashes={},{}",
            msg.item_hash,
            program("elsewhere")
        ))
        .await
        .json();
    assert_eq!(partly["path"], "/api/v0/messages.json");
    let remote = client
        .get(&format!("/api/v0/messages/{}", program("elsewhere")))
        .await
        .json();
    assert_eq!(
        remote["path"],
        format!("/api/v0/messages/{}", program("elsewhere"))
    );
    assert_eq!(
        client
            .get(&format!("/api/v0/storage/raw/{file_hash}"))
            .await
            .body,
        "local"
    );
    let raw = client
        .get(&format!("/api/v0/storage/raw/{}", program("elsewhere")))
        .await
        .json();
    assert_eq!(
        raw["path"],
        format!("/api/v0/storage/raw/{}", program("elsewhere"))
    );

    // Pubsub: the body and its type, forwarded as they are.
    for path in ["/api/v0/ipfs/pubsub/pub", "/api/v0/p2p/pubsub/pub"] {
        let body = r#"{"topic":"ALEPH-TEST","data":"{}"}"#;
        let published = client
            .send_with("POST", path, Some("application/json"), body)
            .await
            .json();
        assert_eq!(
            published,
            json!({
                "method": "POST",
                "path": path,
                "query": null,
                "content_type": "application/json",
                "body": body,
            })
        );
    }
    server.abort();
}

#[tokio::test]
async fn an_unreachable_upstream_api_is_a_502() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (_dir, store) = store();
    let api = Arc::new(GuestApi::new(
        store.clone(),
        embedded(&store).await,
        Some(format!("http://127.0.0.1:{port}")),
    ));
    let mut client = Client::new(&api, &program("p")).await;
    let answer = client.get("/api/v0/aggregates/x.json").await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert!(
        answer.json()["error"]
            .as_str()
            .unwrap()
            .contains("/api/v0/aggregates/x.json")
    );
}

#[tokio::test]
async fn a_connection_serves_until_the_guest_closes_it() {
    let (_dir, store) = store();
    let api = Arc::new(GuestApi::new(store.clone(), embedded(&store).await, None));
    let mut client = Client::new(&api, &program("p")).await;
    for i in 0..20 {
        let put = client
            .send("PUT", &format!("/cache/k{i}"), format!("{i}"))
            .await;
        assert_eq!(put.status, StatusCode::OK);
    }
    assert_eq!(client.get("/cache/").await.keys().len(), 20);
    // Dropping the client closes the guest's end; the served side sees the end and stops
    // (nothing else holds the API then).
    drop(client);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Arc::strong_count(&api) > 1 {
        assert!(Instant::now() < deadline, "the connection was not released");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
