//! Content-addressed reads of a reproducible program (`tests/python/reads/main.py`), through
//! the library: a program with `reproducible` and `aleph_api` reads a message and an object of
//! the node's store by their hashes — with urllib, with aiohttp over the unix socket, and with
//! two asyncio streams at once — while the cache and the internet are refused. Two runs give
//! identical receipts that name every read, and `verify` accepts them; a read that the store no
//! longer has makes verification inconclusive. The call-by-call behaviour is unit-tested in
//! `host::recorded`.

use super::*;
use aleph_wasm::receipt::verify::{Verdict, verify};

/// The app (without its packages).
const READS_APP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/reads");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reproducible_program_reads_by_hash_and_its_receipts_record_the_reads() {
    let py = Py::new();
    let code = code_with_wheels(
        &py,
        READS_APP,
        "reads-code",
        &super::internet::internet_wheels(),
    );
    let code_ref = py.code(&code);
    // An object larger than one read, so that how it is split is part of what must agree.
    let object: Vec<u8> = (0..300_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let object_hash = py.store.put_object(&object).unwrap();
    let stored = py
        .store
        .add_store_message(&object_hash, object.len() as u64, OWNER, 3.0, None)
        .unwrap();
    let missing = message::sha256_hex(b"not on this node");
    let msg = py.program(
        &code_ref,
        "main:app",
        json!({
            "environment": {
                "reproducible": true,
                "internet": false,
                "aleph_api": true,
                "shared_cache": false,
            },
            "resources": {"vcpus": 1, "memory": 256, "seconds": 30},
        }),
    );
    let ex = py.executor(config(true));
    let line = format!(
        "GET /?message={}&object={object_hash}&missing={missing}",
        stored.item_hash
    );

    let first = run(&ex, &msg, http(&line)).await;
    let v = ok_json(&first);
    assert_eq!(v["message"]["status"], 200, "{v:#}");
    assert_eq!(
        v["message_json"]["item_hash"],
        json!(stored.item_hash),
        "{v:#}"
    );
    assert_eq!(
        v["message_json"]["message"]["content"]["item_hash"],
        json!(object_hash),
        "{v:#}"
    );
    let whole = json!({
        "status": 200,
        "sha256": object_hash,
        "size": object.len(),
    });
    for got in [&v["object"], &v["streams"][0]] {
        for key in ["status", "sha256", "size"] {
            assert_eq!(got[key], whole[key], "{key}: {v:#}");
        }
    }
    assert_eq!(v["streams"][1]["status"], 404, "{v:#}");
    assert_eq!(v["cache"]["status"], 403, "{v:#}");
    assert!(
        v["cache"]["text"]
            .as_str()
            .unwrap()
            .contains("content.environment.reproducible is true"),
        "{v:#}"
    );
    let internet = v["internet"].as_str().unwrap();
    assert!(
        internet.contains("content.environment.internet is false"),
        "{internet}"
    );

    // A second run (a fresh instance: reproducible executions never reuse one) agrees to the
    // bit, fuel included, and both receipts name the reads.
    let second = run(&ex, &msg, http(&line)).await;
    let trigger = http(&line);
    let (a, b) = (
        reproducible_receipt(&ex, &msg, &trigger, &first),
        reproducible_receipt(&ex, &msg, &trigger, &second),
    );
    assert_eq!(a, b, "two runs differ");
    assert_eq!(
        a["inputs"]["reads"],
        json!([
            {"kind": "message", "hash": stored.item_hash, "found": true},
            {"kind": "object", "hash": object_hash, "found": true},
            {"kind": "object", "hash": missing, "found": false},
        ]),
        "{a:#}"
    );

    match verify(&ex, &a).await.unwrap() {
        Verdict::Match(_) => {}
        other => panic!("verify: {other:?}"),
    }
    // A read the store does not have (any more): the rerun could not see what the run saw.
    let mut gone = a.clone();
    let elsewhere = message::sha256_hex(b"elsewhere");
    gone["inputs"]["reads"][1]["hash"] = json!(elsewhere);
    aleph_wasm::receipt::seal(&mut gone);
    match verify(&ex, &gone).await.unwrap() {
        Verdict::Inconclusive(why) => assert!(why.contains(&elsewhere), "{why}"),
        other => panic!("verify: {other:?}"),
    }
    ex.shutdown().await;
}
