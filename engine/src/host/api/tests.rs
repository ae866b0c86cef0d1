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
        .add_store_message(&file_hash, 12, "0xOwner", 1_700_000_000.25, None)
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

/// A well-known test key (web3.js's documentation) and its EIP-55 address.
const TEST_KEY: &str = "0x4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318";
const TEST_ADDRESS: &str = "0x2c7536E3605D9C16a7a3D7b1898e529396a65c23";

/// An inline message of `address`'s whose item_hash is its item_content's, as the SDK's
/// `generate_signed_message` makes it before signing.
fn inline_message(address: &str) -> serde_json::Map<String, Value> {
    let item_content = json!({"address": address, "time": 1.5, "type": "test",
                              "content": {"hello": "world"}})
    .to_string();
    let message = json!({
        "sender": TEST_ADDRESS,
        "chain": "ETH",
        "type": "POST",
        "content": {"address": address, "time": 1.5, "type": "test",
                    "content": {"hello": "world"}},
        "time": 1.5,
        "channel": "TEST",
        "item_hash": sha256_hex(item_content.as_bytes()),
        "item_content": item_content,
        "item_type": "inline",
    });
    message.as_object().unwrap().clone()
}

#[tokio::test]
async fn with_a_key_the_node_signs_its_programs_messages_as_aleph_vm() {
    let (dir, store) = store();
    let key_file = dir.path().join("ethereum.key");
    std::fs::write(&key_file, format!("{TEST_KEY}\n")).unwrap();
    let signer = Arc::new(Signer::load(&key_file).unwrap());
    let api = Arc::new(
        GuestApi::new(store.clone(), embedded(&store).await, None).with_signer(signer.clone()),
    );
    let me = program("me");
    let mut client = Client::new(&api, &me).await;

    // The account, as aleph-vm's VM connector gives it.
    let properties = client.get("/properties").await;
    assert_eq!(properties.status, StatusCode::OK, "{}", properties.text());
    assert_eq!(properties.content_type(), "application/json");
    assert_eq!(
        properties.json(),
        json!({
            "chain": "ETH",
            "curve": "secp256k1",
            "address": TEST_ADDRESS,
            "public_key": "0x024e3b81af9c2234cad09d679ce6035ed1392347ce64ce405f5dcd36228a25de6e",
        })
    );

    // A message of its own: signed, every field kept in its order, the signature added last.
    let message = inline_message(&me);
    let signed = client
        .send("POST", "/sign", Value::Object(message.clone()).to_string())
        .await;
    assert_eq!(signed.status, StatusCode::OK, "{}", signed.text());
    let signed_message = signed.json();
    let signed_message = signed_message.as_object().unwrap();
    let mut keys: Vec<&str> = message.keys().map(String::as_str).collect();
    keys.push("signature");
    assert_eq!(
        signed_message
            .keys()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        keys
    );
    for (k, v) in &message {
        assert_eq!(&signed_message[k], v, "{k}");
    }
    // eth-account 0.14 signs this buffer to this signature (the same key, RFC 6979 nonces).
    let item_hash = message["item_hash"].as_str().unwrap();
    assert_eq!(
        item_hash,
        "e0da72171d186887ac0b91c0249d65cd62416ec189850544f52eeaa84f92e417"
    );
    let signature = signed_message["signature"].as_str().unwrap();
    assert_eq!(
        signature,
        "0x57426b255d8da158d7f578043e776d26edb78bdd111568586e4be231fa76795d\
         085a993a432303196e4dc18d554dc5981ab213e87ccb301e0fd7ce6f738b37f91c"
    );
    // And it recovers to the node's address over Aleph's verification buffer.
    let buffer = format!("ETH\n{TEST_ADDRESS}\nPOST\n{item_hash}");
    assert_eq!(
        recover(signature, buffer.as_bytes()),
        TEST_ADDRESS,
        "{signature}"
    );

    // Without a sender (or a null one), the node's is set: appended, or in its place.
    let mut no_sender = inline_message(&me);
    no_sender.remove("sender");
    let signed = client
        .send("POST", "/sign", Value::Object(no_sender).to_string())
        .await;
    assert_eq!(signed.status, StatusCode::OK, "{}", signed.text());
    let signed = signed.json();
    assert_eq!(signed["sender"], TEST_ADDRESS);
    assert_eq!(signed["signature"], signature);
    let keys: Vec<String> = signed.as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys[keys.len() - 2..], ["sender", "signature"]);
    let mut null_sender = inline_message(&me);
    null_sender.insert("sender".into(), Value::Null);
    let signed = client
        .send("POST", "/sign", Value::Object(null_sender).to_string())
        .await
        .json();
    assert_eq!(signed["sender"], TEST_ADDRESS);
    assert_eq!(signed.as_object().unwrap().keys().next().unwrap(), "sender");

    // Another sender: refused, as the SDK refuses it.
    let mut other_sender = inline_message(&me);
    other_sender.insert(
        "sender".into(),
        json!("0x0000000000000000000000000000000000000001"),
    );
    let refused = client
        .send("POST", "/sign", Value::Object(other_sender).to_string())
        .await;
    assert_eq!(
        refused.status,
        StatusCode::BAD_REQUEST,
        "{}",
        refused.text()
    );
    assert!(
        refused.json()["error"]
            .as_str()
            .unwrap()
            .contains(TEST_ADDRESS)
    );

    // Someone else's message is still a 403, key or not.
    let foreign = client
        .send(
            "POST",
            "/sign",
            Value::Object(inline_message(&program("other"))).to_string(),
        )
        .await;
    assert_eq!(foreign.status, StatusCode::FORBIDDEN, "{}", foreign.text());
    assert!(foreign.json().get("signature").is_none());

    // An item_hash that is not the item_content's: the node would be signing other content.
    let mut wrong_hash = inline_message(&me);
    wrong_hash.insert("item_hash".into(), json!(sha256_hex(b"something else")));
    let refused = client
        .send("POST", "/sign", Value::Object(wrong_hash).to_string())
        .await;
    assert_eq!(
        refused.status,
        StatusCode::BAD_REQUEST,
        "{}",
        refused.text()
    );
    assert!(
        refused.json()["error"]
            .as_str()
            .unwrap()
            .contains("SHA-256 of its item_content"),
        "{}",
        refused.text()
    );
    let mut no_hash = inline_message(&me);
    no_hash.remove("item_hash");
    assert_eq!(
        client
            .send("POST", "/sign", Value::Object(no_hash).to_string())
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    // Content without item_content (a stored message's): its item_hash cannot be checked.
    let mut stored = inline_message(&me);
    stored.remove("item_content");
    stored.insert("item_type".into(), json!("storage"));
    let refused = client
        .send("POST", "/sign", Value::Object(stored).to_string())
        .await;
    assert_eq!(
        refused.status,
        StatusCode::BAD_REQUEST,
        "{}",
        refused.text()
    );
    assert!(refused.json()["error"].as_str().unwrap().contains("inline"));
    // A message without a chain: Aleph's verification buffer needs it.
    let mut no_chain = inline_message(&me);
    no_chain.remove("chain");
    let refused = client
        .send("POST", "/sign", Value::Object(no_chain).to_string())
        .await;
    assert_eq!(
        refused.status,
        StatusCode::BAD_REQUEST,
        "{}",
        refused.text()
    );
    assert!(refused.json()["error"].as_str().unwrap().contains("chain"));

    // The API's Debug shows the address, never the key.
    let debug = format!("{api:?} {signer:?}");
    assert!(debug.contains(TEST_ADDRESS), "{debug}");
    assert!(!debug.to_lowercase().contains(&TEST_KEY[2..18]), "{debug}");
}

/// The EIP-55 address that a `0x` r ‖ s ‖ v signature of EIP-191 `text` recovers to.
fn recover(signature: &str, text: &[u8]) -> String {
    use k256::ecdsa::{RecoveryId, Signature, VerifyingKey};
    let bytes = hex::decode(signature.strip_prefix("0x").unwrap()).unwrap();
    assert_eq!(bytes.len(), 65);
    assert!(bytes[64] == 27 || bytes[64] == 28, "v = {}", bytes[64]);
    let sig = Signature::from_slice(&bytes[..64]).unwrap();
    assert!(sig.normalize_s().is_none(), "a high-s signature");
    let recovery = RecoveryId::from_byte(bytes[64] - 27).unwrap();
    let digest = crate::message::signer::eip191_digest(text);
    let key = VerifyingKey::recover_from_prehash(&digest, &sig, recovery).unwrap();
    crate::message::signer::address_of(&key)
}

/// The node's host options, parsed from `args`.
fn host_args(args: &[&std::ffi::OsStr]) -> crate::cli::HostArgs {
    use clap::Parser as _;
    #[derive(clap::Parser)]
    struct Options {
        #[command(flatten)]
        host: crate::cli::HostArgs,
    }
    let argv = std::iter::once(std::ffi::OsStr::new("node")).chain(args.iter().copied());
    Options::try_parse_from(argv).unwrap().host
}

#[test]
fn the_node_option_loads_either_key_file_form() {
    let dir = tempfile::tempdir().unwrap();
    let hex_file = dir.path().join("hex.key");
    std::fs::write(&hex_file, format!("  {TEST_KEY}\n")).unwrap();
    let raw_file = dir.path().join("ethereum.key");
    std::fs::write(&raw_file, hex::decode(&TEST_KEY[2..]).unwrap()).unwrap();
    for file in [&hex_file, &raw_file] {
        let args = host_args(&["--signing-key".as_ref(), file.as_os_str()]);
        let config = args.config(None).unwrap();
        let signer = config.signing_key.expect("a signing key");
        assert_eq!(signer.address(), TEST_ADDRESS);
    }
    // A bad file: the error names the file and what is wrong, not what it holds.
    let bad = dir.path().join("bad.key");
    std::fs::write(&bad, &TEST_KEY[..40]).unwrap();
    let error = host_args(&["--signing-key".as_ref(), bad.as_os_str()])
        .config(None)
        .unwrap_err();
    assert!(
        error.contains(&format!("--signing-key {}", bad.display()))
            && error.contains("38 hex digits"),
        "{error}"
    );
    assert!(!error.contains(&TEST_KEY[2..18]), "{error}");
    // Without the option there is no key.
    assert!(host_args(&[]).config(None).unwrap().signing_key.is_none());
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
        .add_store_message(&file_hash, 5, "0xOwner", 1.0, None)
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
