//! Programs written against Aleph's SDK: `aleph.sdk.vm.app.AlephApp` routing HTTP to a
//! Starlette app and events to the handlers whose filters match, and
//! `aleph.sdk.vm.cache.VmCache` over the guest API — the runtime's compatible modules
//! (`runtimes/python-3.12/aleph_sdk.py`), since the real SDK needs compiled extensions.

use super::*;

/// The app (without its packages).
const ALEPH_SDK_APP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/aleph_sdk");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aleph_app_answers_http_takes_its_events_and_uses_the_vm_cache() {
    let py = Py::new();
    let code = code_with_wheels(
        &py,
        ALEPH_SDK_APP,
        "aleph-sdk-code",
        &pure_wheels("starlette", &STARLETTE_WHEELS),
    );
    let msg = py.program(
        &py.code(&code),
        "main:app",
        json!({
            "environment": {"reproducible": false, "internet": false, "aleph_api": true,
                            "shared_cache": false},
            "resources": {"vcpus": 1, "memory": 256, "seconds": 30},
        }),
    );
    let ex = py.executor(config(true));

    let v = ok_json(&run(&ex, &msg, http("GET /")).await);
    assert_eq!(v, json!({"vm_hash": msg.item_hash, "events": []}));

    // A message the handler's filter matches, one it does not, and a cron tick.
    let matching = json!({"item_hash": "a1", "channel": "TEST", "type": "POST",
                          "content": {"type": "greeting", "address": OWNER}});
    let other = json!({"item_hash": "b2", "channel": "OTHER", "type": "POST",
                       "content": {"type": "greeting", "address": OWNER}});
    for event in [
        Trigger::Message(Box::new(matching)),
        Trigger::Message(Box::new(other)),
        Trigger::Cron {
            time: 1_800_000_000.0,
        },
    ] {
        let o = run(&ex, &msg, event).await;
        assert_eq!(o.kind, OutcomeKind::Ok, "{}", show(&o));
    }
    let v = ok_json(&run(&ex, &msg, http("GET /")).await);
    assert_eq!(
        v["events"],
        json!([["message", "a1"], ["cron", 1_800_000_000.0]])
    );

    // VmCache: set, get (text and bytes), a missing key, keys with and without a pattern,
    // delete, and a key the SDK refuses before asking.
    let v = ok_json(&run(&ex, &msg, http("GET /cache")).await);
    assert_eq!(
        v,
        json!({
            "greeting": "hello",
            "raw_bytes": [0, 255],
            "missing": null,
            "keys": ["greeting", "raw_bytes"],
            "gre_keys": ["greeting"],
            "after_delete": ["greeting"],
            "bad_key": "Key may only contain letters, numbers and underscore",
        })
    );
    ex.shutdown().await;
}
