//! The recorded guest API driven call by call, as the session hands it a reproducible guest's
//! calls: a real store in a temporary directory.

use super::*;
use crate::channel::CallFailure;

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    (dir, store)
}

/// A guest's calls, numbered as the guest numbers them.
struct Guest {
    calls: RecordedCalls,
    next: u32,
}

impl Guest {
    fn new(store: &Store, aleph_api: bool) -> (Self, ReadLog) {
        let log = ReadLog::default();
        let calls = RecordedCalls::new(store.clone(), aleph_api, 4, 1 << 20, log.clone());
        (Guest { calls, next: 1 }, log)
    }

    /// Makes a call; its id and the replies it made due.
    async fn call(&mut self, name: &str, args: Vec<u8>) -> (u32, Replies) {
        let id = self.next;
        self.next += 1;
        (id, self.calls.call(id, name, args).await)
    }

    /// A call answered at once: its result.
    async fn now(&mut self, name: &str, args: Vec<u8>) -> CallResult {
        let (id, mut replies) = self.call(name, args).await;
        assert_eq!(replies.len(), 1, "{name}: {replies:?}");
        let (reply, result) = replies.remove(0);
        assert_eq!(reply, id);
        result
    }

    async fn connect_unix(&mut self) -> u32 {
        let args = json!({"unix": API_SOCKET}).to_string().into_bytes();
        let result = self.now("net.connect", args).await.unwrap();
        let v: Value = serde_json::from_slice(&result).unwrap();
        v["handle"].as_u64().unwrap() as u32
    }

    async fn send(&mut self, handle: u32, bytes: &[u8]) -> Replies {
        let mut args = handle.to_le_bytes().to_vec();
        args.extend_from_slice(bytes);
        self.call("net.send", args).await.1
    }

    fn recv_args(handle: u32, max: u32, timeout: u32) -> Vec<u8> {
        [handle, max, timeout]
            .iter()
            .flat_map(|n| n.to_le_bytes())
            .collect()
    }

    /// Receives until the end of the stream, `max` bytes at a time; the sizes of the reads too.
    async fn recv_all(&mut self, handle: u32, max: u32) -> (Vec<u8>, Vec<usize>) {
        let (mut all, mut sizes) = (Vec::new(), Vec::new());
        loop {
            let chunk = self
                .now("net.recv", Self::recv_args(handle, max, WAIT_FOREVER))
                .await
                .unwrap();
            if chunk.is_empty() {
                return (all, sizes);
            }
            sizes.push(chunk.len());
            all.extend_from_slice(&chunk);
        }
    }
}

fn body_of(answer: &[u8]) -> (&str, &[u8]) {
    let at = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a whole head");
    (
        std::str::from_utf8(&answer[..at]).unwrap(),
        &answer[at + 4..],
    )
}

fn get(path: &str, close: bool) -> Vec<u8> {
    let connection = if close { "close" } else { "keep-alive" };
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: {connection}\r\n\r\n")
        .into_bytes()
}

#[tokio::test]
async fn a_message_and_an_object_are_read_from_the_store_and_recorded() {
    let (_dir, store) = store();
    let object = vec![7u8; 100_000];
    let file_hash = store.put_object(&object).unwrap();
    let msg = store
        .add_store_message(
            &file_hash,
            object.len() as u64,
            "0xOwner",
            1_700_000_000.0,
            None,
        )
        .unwrap();
    let (mut g, log) = Guest::new(&store, true);
    let h = g.connect_unix().await;

    // Keep-alive: two requests on one connection, each answered whole before it is read.
    let replies = g
        .send(
            h,
            &get(&format!("/api/v0/messages/{}", msg.item_hash), false),
        )
        .await;
    assert_eq!(replies.len(), 1);
    let read = g
        .now("net.recv", Guest::recv_args(h, 1 << 20, 0))
        .await
        .unwrap();
    let (head, body) = body_of(&read);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let v: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(v, crate::host::api::proxy::message_answer(&msg));

    g.send(h, &get(&format!("/api/v0/storage/raw/{file_hash}"), true))
        .await;
    let (answer, sizes) = g.recv_all(h, 4096).await;
    let (head, body) = body_of(&answer);
    assert!(head.contains("content-length: 100000"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert_eq!(body, &object[..]);
    // Every read but the last is as large as asked: the answer was whole before the first.
    assert!(
        sizes[..sizes.len() - 1].iter().all(|n| *n == 4096),
        "{sizes:?}"
    );

    // A miss answers 404, and is recorded as one.
    let h2 = g.connect_unix().await;
    let missing = crate::message::sha256_hex(b"not stored");
    g.send(h2, &get(&format!("/api/v0/storage/raw/{missing}"), true))
        .await;
    let (answer, _) = g.recv_all(h2, 1 << 16).await;
    assert!(body_of(&answer).0.starts_with("HTTP/1.1 404"));

    // The same read again is recorded once.
    let h3 = g.connect_unix().await;
    g.send(h3, &get(&format!("/api/v0/storage/raw/{file_hash}"), true))
        .await;
    g.recv_all(h3, 1 << 16).await;
    assert_eq!(
        log.reads(),
        vec![
            Read {
                kind: "message",
                hash: msg.item_hash.clone(),
                found: true
            },
            Read {
                kind: "object",
                hash: file_hash,
                found: true
            },
            Read {
                kind: "object",
                hash: missing,
                found: false
            },
        ]
    );
    assert_eq!(log.host_fault(), None);
}

#[tokio::test]
async fn a_waiting_recv_is_answered_by_the_send_that_completes_the_request() {
    let (_dir, store) = store();
    let hash = store.put_object(b"abc").unwrap();
    let (mut g, _log) = Guest::new(&store, true);
    let h = g.connect_unix().await;
    // The read is asked for before the request is written (as an event loop's transport does).
    let (recv_id, replies) = g
        .call("net.recv", Guest::recv_args(h, 1 << 16, WAIT_FOREVER))
        .await;
    assert!(replies.is_empty(), "{replies:?}");
    // A second read on the same connection is refused while one waits.
    let second = g
        .now("net.recv", Guest::recv_args(h, 1, WAIT_FOREVER))
        .await
        .unwrap_err();
    assert_eq!(second.kind, kind::BAD_ARGS);
    // The request in two writes: the first completes nothing.
    let request = get(&format!("/api/v0/storage/raw/{hash}"), true);
    let (first, rest) = request.split_at(10);
    let replies = g.send(h, first).await;
    assert_eq!(replies.len(), 1);
    let (send_id, replies) = {
        let mut args = h.to_le_bytes().to_vec();
        args.extend_from_slice(rest);
        g.call("net.send", args).await
    };
    // The send's own reply, then the read it completed.
    assert_eq!(replies.len(), 2, "{replies:?}");
    assert_eq!(replies[0].0, send_id);
    assert_eq!(
        replies[0].1.as_deref().unwrap(),
        (rest.len() as u32).to_le_bytes()
    );
    assert_eq!(replies[1].0, recv_id);
    let answer = replies[1].1.as_ref().unwrap();
    assert_eq!(body_of(answer).1, b"abc");
    // Then the end: `connection: close`.
    let end = g.now("net.recv", Guest::recv_args(h, 10, 0)).await.unwrap();
    assert!(end.is_empty());
}

#[tokio::test]
async fn nothing_to_read_fails_at_once_with_a_timeout_and_close_ends_a_waiting_recv() {
    let (_dir, store) = store();
    let (mut g, _log) = Guest::new(&store, true);
    let h = g.connect_unix().await;
    let e = g
        .now("net.recv", Guest::recv_args(h, 10, 5000))
        .await
        .unwrap_err();
    assert_eq!(e.kind, kind::TIMEOUT, "{e:?}");
    let (recv_id, replies) = g
        .call("net.recv", Guest::recv_args(h, 10, WAIT_FOREVER))
        .await;
    assert!(replies.is_empty());
    let (close_id, replies) = g.call("net.close", h.to_le_bytes().to_vec()).await;
    assert_eq!(replies.len(), 2);
    assert_eq!(replies[0].0, recv_id);
    assert_eq!(replies[0].1.as_ref().unwrap_err().kind, kind::BAD_HANDLE);
    assert_eq!(replies[1], (close_id, Ok(Vec::new())));
}

#[tokio::test]
async fn other_routes_are_refused_naming_what_may_be_read() {
    let (_dir, store) = store();
    let (mut g, log) = Guest::new(&store, true);
    for request in [
        get("/cache/key", true),
        get("/properties", true),
        get("/api/v0/messages.json?hashes=abc", true),
        b"POST /sign HTTP/1.1\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}".to_vec(),
        b"PUT /cache/k HTTP/1.1\r\nContent-Length: 1\r\nConnection: close\r\n\r\nv".to_vec(),
    ] {
        let h = g.connect_unix().await;
        g.send(h, &request).await;
        let (answer, _) = g.recv_all(h, 1 << 16).await;
        let (head, body) = body_of(&answer);
        assert!(head.starts_with("HTTP/1.1 403"), "{head}");
        let v: Value = serde_json::from_slice(body).unwrap();
        let error = v["error"].as_str().unwrap();
        assert!(
            error.contains("content.environment.reproducible is true")
                && error.contains("/api/v0/storage/raw/{sha256}"),
            "{error}"
        );
        g.now("net.close", h.to_le_bytes().to_vec()).await.unwrap();
    }
    // Not a hash; not HTTP.
    let h = g.connect_unix().await;
    g.send(h, &get("/api/v0/messages/nope", true)).await;
    let (answer, _) = g.recv_all(h, 1 << 16).await;
    assert!(body_of(&answer).0.starts_with("HTTP/1.1 400"));
    let h = g.connect_unix().await;
    g.send(h, b"\x00\x01 garbage\r\n\r\n").await;
    let (answer, _) = g.recv_all(h, 1 << 16).await;
    assert!(body_of(&answer).0.starts_with("HTTP/1.1 400"));
    assert!(log.reads().is_empty());
}

#[tokio::test]
async fn the_internet_and_an_ungranted_api_are_refused_with_the_flag() {
    let (_dir, store) = store();
    let (mut g, _) = Guest::new(&store, true);
    let check = |r: CallResult, flag: &str| {
        let CallFailure { kind, message } = r.unwrap_err();
        assert_eq!(kind, super::kind::PERMISSION);
        assert!(message.contains(flag), "{message}");
    };
    let internet = "content.environment.internet is false";
    check(
        g.now(
            "net.connect",
            json!({"host": "example.com", "port": 443})
                .to_string()
                .into_bytes(),
        )
        .await,
        internet,
    );
    check(
        g.now(
            "net.resolve",
            json!({"host": "example.com"}).to_string().into_bytes(),
        )
        .await,
        internet,
    );
    let resolved = g
        .now(
            "net.resolve",
            json!({"host": "localhost"}).to_string().into_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&resolved).unwrap(),
        json!({"addresses": ["127.0.0.1"]})
    );
    let local = g
        .now(
            "net.connect",
            json!({"host": "localhost", "port": 80})
                .to_string()
                .into_bytes(),
        )
        .await
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&local).unwrap()["peer"],
        json!(["127.0.0.1", 80])
    );
    let (mut g, _) = Guest::new(&store, false);
    check(
        g.now(
            "net.connect",
            json!({"unix": API_SOCKET}).to_string().into_bytes(),
        )
        .await,
        "content.environment.aleph_api is false",
    );
}

#[tokio::test]
async fn connections_and_bytes_are_limited() {
    let (_dir, store) = store();
    let hash = store.put_object(&vec![1u8; 4000]).unwrap();
    let log = ReadLog::default();
    let mut calls = RecordedCalls::new(store.clone(), true, 1, 1000, log);
    let connect = json!({"unix": API_SOCKET}).to_string().into_bytes();
    let first = calls.call(1, "net.connect", connect.clone()).await;
    assert!(first[0].1.is_ok());
    let second = calls.call(2, "net.connect", connect).await;
    assert_eq!(second[0].1.as_ref().unwrap_err().kind, kind::LIMIT);
    let mut args = 1u32.to_le_bytes().to_vec();
    args.extend_from_slice(&get(&format!("/api/v0/storage/raw/{hash}"), true));
    calls.call(3, "net.send", args).await;
    let recv = Guest::recv_args(1, 1 << 16, 0);
    let over = calls.call(4, "net.recv", recv).await;
    let e = over[0].1.as_ref().unwrap_err();
    assert_eq!(e.kind, kind::LIMIT);
    assert!(e.message.contains("--net-max-bytes"), "{}", e.message);
}
