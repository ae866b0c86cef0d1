//! Tests of the message module: the shared fixtures, and one test per rule, each asserting
//! the exact JSON path of the error.

use serde_json::{Value, json};

use super::*;

/// Reads a shared fixture, from the repository layout (`engine/../../shared`) or `/work/shared`.
fn fixture(name: &str) -> Vec<u8> {
    let candidates = [
        format!(
            "{}/../../shared/fixtures/{name}",
            env!("CARGO_MANIFEST_DIR")
        ),
        format!("/work/shared/fixtures/{name}"),
    ];
    candidates
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .unwrap_or_else(|| panic!("fixture {name} not found in {candidates:?}"))
}

fn fixture_json(name: &str) -> Value {
    serde_json::from_slice(&fixture(name)).expect("fixture is JSON")
}

const REF: &str = "c5e40cd89103d3c57327a514f465b83cd193d1331f307bc5a4c38bfec36ab37d";
const SENDER: &str = "0x99eC8dc3831F67359a18420449fb028D5dCAa60f";

/// A minimal valid final-form PROGRAM content.
fn program_content() -> Value {
    json!({
        "type": "vm-function",
        "address": SENDER,
        "time": 1700000000.5,
        "allow_amend": false,
        "code": {"encoding": "zip", "entrypoint": "main:app", "ref": REF},
        "runtime": {"ref": REF, "comment": "python"},
        "on": {"http": true},
        "environment": {},
        "resources": {},
    })
}

/// A signed-shape inline envelope around `content`, with a correct hash.
fn envelope(content: &Value) -> Value {
    let item_content = serde_json::to_string(content).unwrap();
    json!({
        "chain": "ETH",
        "sender": SENDER,
        "type": "PROGRAM",
        "time": 1700000001.0,
        "item_type": "inline",
        "item_hash": sha256_hex(item_content.as_bytes()),
        "item_content": item_content,
        "signature": "0xabc",
    })
}

fn parse_json(value: &Value) -> Result<Message, MessageError> {
    parse(&serde_json::to_vec(value).unwrap())
}

/// Parses a program whose content was changed by `edit`, expecting it to fail.
fn program_error(edit: impl FnOnce(&mut Value)) -> MessageError {
    let mut content = program_content();
    edit(&mut content);
    parse_json(&envelope(&content)).expect_err("expected a validation error")
}

/// Parses a program whose content was changed by `edit`, expecting it to pass.
fn program_ok(edit: impl FnOnce(&mut Value)) -> ProgramContent {
    let mut content = program_content();
    edit(&mut content);
    match parse_json(&envelope(&content)) {
        Ok(m) => m.program().expect("a program").clone(),
        Err(e) => panic!("unexpected error:\n{e}"),
    }
}

/// Asserts that `err` has a problem at exactly `path`, and returns its message.
fn message_at(err: &MessageError, path: &str) -> String {
    match err.at(path) {
        Some(e) => e.message.clone(),
        None => panic!("no error at {path:?}; got:\n{err}"),
    }
}

fn seed_with(edit: impl FnOnce(&mut Value)) -> Result<Message, MessageError> {
    let mut seed = fixture_json("seed-draft-program.json");
    edit(&mut seed);
    parse_json(&seed)
}

fn assert_round_trip(message: &Message) {
    let again = parse_json(&message.to_json()).expect("to_json output parses");
    assert_eq!(&again, message);
}

// --- fixtures -------------------------------------------------------------------------

#[test]
fn fixture_final_program_parses() {
    let message = parse(&fixture("program-message.json")).expect("valid");
    assert_eq!(message.kind, MessageType::Program);
    assert_eq!(message.chain, "ETH");
    assert_eq!(message.channel.as_deref(), Some("Fun-dApps"));
    assert_eq!(message.item_type, ItemType::Inline);
    assert!(message.item_content.is_none());
    assert!(
        !message.hash_verified,
        "no item_content: content taken on trust"
    );
    let program = message.program().expect("program");
    assert_eq!(program.code.encoding, Encoding::Zip);
    assert_eq!(program.code.interface, Interface::Asgi);
    assert!(!program.runtime.reference.use_latest);
    assert_eq!(program.resources.seconds, 30);
    assert_eq!(program.resources.memory_mib, 128);
    assert!(program.environment.reproducible);
    assert_eq!(
        program.data.as_ref().map(|d| d.mount.as_str()),
        Some("/data")
    );
    assert_eq!(
        program.export.as_ref().map(|e| e.mount.as_str()),
        Some("/data")
    );
    assert_eq!(program.volumes.len(), 5);
    assert!(matches!(program.volumes[0], Volume::Immutable { .. }));
    assert!(matches!(
        program.volumes[1],
        Volume::Ephemeral { size_mib: 5, .. }
    ));
    assert!(matches!(
        program.volumes[3],
        Volume::Persistent {
            persistence: Persistence::Store,
            ..
        }
    ));
    assert_eq!(program.volumes[4].mount(), None);
    assert_eq!(
        program.replaces.as_deref(),
        Some("0x9319Ad3B7A8E0eE24f2E639c40D8eD124C5520Ba")
    );
    assert_round_trip(&message);

    // Valid on the network, but its `persistence: store` volume is not runnable here.
    let err = program.check_supported().expect_err("store volume");
    assert_eq!(err.paths(), ["content.volumes[3].persistence"]);
    assert_eq!(
        err.to_string(),
        "content.volumes[3].persistence: \"store\" is not supported yet (use \"host\")"
    );
}

#[test]
fn fixture_seed_program_is_normalised() {
    let message = parse(&fixture("seed-draft-program.json")).expect("valid");
    assert_eq!(message.kind, MessageType::Program);
    assert_eq!(message.chain, SEED_CHAIN);
    assert_eq!(message.sender, SENDER);
    assert_eq!(message.time, 1618386753.856);
    assert!(message.hash_verified);
    let item_content = message.item_content.as_deref().expect("inline");
    assert_eq!(message.item_hash, sha256_hex(item_content.as_bytes()));

    let program = message.program().expect("program");
    assert_eq!(program.address, SENDER);
    assert!(
        !program.allow_amend,
        "seed drafts default allow_amend to false"
    );
    assert_eq!(program.code.encoding, Encoding::Zip);
    assert_eq!(
        program.code.interface,
        Interface::Binary,
        "no ':' in `application`"
    );
    assert_eq!(
        program.code.source,
        CodeSource::Ref(ObjectRef {
            reference: REF.into(),
            use_latest: true
        })
    );
    assert!(program.runtime.reference.use_latest);
    let data = program.data.as_ref().expect("data");
    assert_eq!(data.encoding, Encoding::TarGz);
    assert!(data.reference.use_latest);
    assert_eq!(
        program.export.as_ref().map(|e| e.encoding),
        Some(Encoding::TarGz)
    );
    assert_eq!(program.on.cron.as_deref(), Some("5 4 * * *"));
    assert_eq!(program.on.message.len(), 1);
    assert_eq!(program.on.message[0]["channel"], "FOUNDATION");
    assert!(program.check_supported().is_ok());

    // The item content is the final form.
    let content: Value = serde_json::from_str(item_content).unwrap();
    assert_eq!(content["type"], "vm-function");
    assert_eq!(content["code"]["use_latest"], true);
    assert_eq!(content["data"]["encoding"], "tar.gz");
    assert_eq!(content["on"]["message"][0]["type"], "POST");
    assert!(content["code"].get("latest_amend").is_none());
    assert!(content["on"].get("aleph").is_none());
    assert_round_trip(&message);
}

#[test]
fn fixture_seed_inline_code() {
    let message = parse(&fixture("seed-draft-inline-code.json")).expect("valid");
    let program = message.program().expect("program");
    assert_eq!(program.code.encoding, Encoding::Plain);
    assert_eq!(program.code.entrypoint, "application");
    assert_eq!(
        program.code.interface,
        Interface::Asgi,
        "inline source is an ASGI app"
    );
    match &program.code.source {
        CodeSource::Inline(text) => assert!(text.starts_with("async def application(")),
        other => panic!("expected inline code, got {other:?}"),
    }
    assert!(program.data.is_none() && program.export.is_none());
    assert_round_trip(&message);
}

#[test]
fn seed_normalisation_round_trips_through_build_inline() {
    let message = parse(&fixture("seed-draft-program.json")).expect("valid");
    let content = serde_json::to_value(message.program().unwrap()).unwrap();
    let rebuilt = build_inline(MessageType::Program, "ETH", SENDER, message.time, content);
    assert_eq!(rebuilt, message);
    let reparsed = parse(&serde_json::to_vec(&rebuilt.to_json()).unwrap()).expect("valid");
    assert_eq!(reparsed, message);
}

// --- envelope -------------------------------------------------------------------------

#[test]
fn malformed_json_is_reported_at_the_root() {
    let err = parse(b"{\"chain\": \"ETH\",").expect_err("truncated");
    assert_eq!(err.paths(), [""]);
    assert!(err.errors[0].message.starts_with("invalid JSON"), "{err}");
    let err = parse(b"[1, 2]").expect_err("not an object");
    assert_eq!(err.paths(), [""]);
}

#[test]
fn wrong_inline_hash_is_rejected() {
    let mut env = envelope(&program_content());
    env["item_hash"] = json!("0".repeat(64));
    let err = parse_json(&env).expect_err("bad hash");
    assert_eq!(err.paths(), ["item_hash"]);
    assert!(message_at(&err, "item_hash").contains("does not match the sha256"));

    env["item_hash"] = json!("not-a-hash");
    let err = parse_json(&env).expect_err("malformed hash");
    assert!(message_at(&err, "item_hash").contains("64 lower-case hex"));
}

#[test]
fn content_must_match_item_content() {
    let content = program_content();
    let mut env = envelope(&content);
    env["content"] = content.clone();
    let message = parse_json(&env).expect("matching content is fine");
    assert!(message.hash_verified);

    env["content"]["allow_amend"] = json!(true);
    let err = parse_json(&env).expect_err("mismatch");
    assert_eq!(err.paths(), ["content"]);
}

#[test]
fn inline_without_item_content_is_taken_on_trust() {
    let mut env = envelope(&program_content());
    env.as_object_mut().unwrap().remove("item_content");
    env["content"] = program_content();
    let message = parse_json(&env).expect("valid");
    assert!(!message.hash_verified);

    env.as_object_mut().unwrap().remove("content");
    let err = parse_json(&env).expect_err("no content at all");
    assert_eq!(err.paths(), ["item_content"]);
}

#[test]
fn unknown_keys_are_named() {
    let mut env = envelope(&program_content());
    env["reception_time"] = json!(1);
    let err = parse_json(&env).expect_err("unknown envelope key");
    assert_eq!(err.paths(), ["reception_time"]);

    let err = program_error(|c| c["colour"] = json!("blue"));
    assert_eq!(err.paths(), ["content.colour"]);
    assert!(message_at(&err, "content.colour").starts_with("unknown key"));

    let err = program_error(|c| c["code"]["latest_amend"] = json!(true));
    assert_eq!(err.paths(), ["content.code.latest_amend"]);
    assert!(message_at(&err, "content.code.latest_amend").contains("use_latest"));

    let err = program_error(|c| c["resources"]["a b"] = json!(1));
    assert_eq!(err.paths(), ["content.resources[\"a b\"]"]);
}

#[test]
fn wrong_types_name_the_expected_type() {
    let err = program_error(|c| c["resources"]["vcpus"] = json!("2"));
    assert_eq!(err.paths(), ["content.resources.vcpus"]);
    assert!(message_at(&err, "content.resources.vcpus").starts_with("expected an integer"));

    let err = program_error(|c| c["on"]["http"] = json!("yes"));
    assert_eq!(
        message_at(&err, "content.on.http"),
        "expected a boolean, got a string (\"yes\")"
    );

    let err = program_error(|c| c["code"] = json!([]));
    assert_eq!(err.paths(), ["content.code"]);

    let mut env = envelope(&program_content());
    env["time"] = json!("yesterday");
    let err = parse_json(&env).expect_err("time");
    assert_eq!(err.paths(), ["time"]);
}

#[test]
fn several_errors_are_collected() {
    let err = program_error(|c| {
        c["resources"]["memory"] = json!(0);
        c["resources"]["vcpus"] = json!(300);
        c.as_object_mut().unwrap().remove("allow_amend");
    });
    assert_eq!(
        err.paths(),
        [
            "content.allow_amend",
            "content.resources.vcpus",
            "content.resources.memory"
        ]
    );
    assert_eq!(err.to_string().lines().count(), 3);
}

#[test]
fn non_inline_messages_need_content_and_no_item_content() {
    let env = json!({
        "chain": "ETH", "sender": SENDER, "type": "POST", "time": 1.0,
        "item_type": "storage", "item_hash": REF,
    });
    let err = parse_json(&env).expect_err("no content");
    assert_eq!(err.paths(), ["content"]);

    let mut env = env;
    env["content"] = json!({"type": "note", "address": SENDER, "time": 1.0, "content": {}});
    let message = parse_json(&env).expect("valid post");
    assert!(matches!(message.content, Content::Other(_)));
    assert_round_trip(&message);

    env["item_type"] = json!("ipfs");
    let err = parse_json(&env).expect_err("ipfs needs a CID");
    assert_eq!(err.paths(), ["item_hash"]);
    env["item_hash"] = json!("QmPZ9gcCEpqKTo6aq61g2nXGUhM4iCL3ewB6LDXZCtioEB");
    parse_json(&env).expect("CIDv0 accepted");
}

#[test]
fn store_content_is_typed() {
    let env = json!({
        "chain": "ETH", "sender": SENDER, "type": "STORE", "time": 1.0,
        "item_type": "storage", "item_hash": REF,
        "content": {
            "address": SENDER, "time": 2.0, "item_type": "ipfs",
            "item_hash": "QmPZ9gcCEpqKTo6aq61g2nXGUhM4iCL3ewB6LDXZCtioEB",
            "size": 1024, "content_type": "file", "ref": REF, "engine_info": {"x": 1},
        },
    });
    let message = parse_json(&env).expect("valid store");
    let store = message.store().expect("store");
    assert_eq!(store.item_type, ItemType::Ipfs);
    assert_eq!(store.size, Some(1024));
    assert_eq!(store.reference.as_deref(), Some(REF));
    assert!(store.extra.contains_key("engine_info"));
    assert_round_trip(&message);

    let mut bad = env.clone();
    bad["content"]["size"] = json!("big");
    let err = parse_json(&bad).expect_err("size type");
    assert_eq!(err.paths(), ["content.size"]);

    let mut bad = env;
    bad["content"].as_object_mut().unwrap().remove("item_hash");
    let err = parse_json(&bad).expect_err("missing hash");
    assert_eq!(err.paths(), ["content.item_hash"]);
}

#[test]
fn channel_is_limited() {
    let mut env = envelope(&program_content());
    env["channel"] = json!("x".repeat(129));
    let err = parse_json(&env).expect_err("long channel");
    assert_eq!(err.paths(), ["channel"]);
}

// --- program content ------------------------------------------------------------------

#[test]
fn memory_zero_is_out_of_range() {
    let err = program_error(|c| c["resources"]["memory"] = json!(0));
    assert_eq!(
        err.to_string(),
        "content.resources.memory: must be between 1 and 1048576 MiB, got 0"
    );
    let err = program_error(|c| c["resources"]["seconds"] = json!(-3));
    assert_eq!(
        message_at(&err, "content.resources.seconds"),
        "must be at least 1 second(s), got -3"
    );
}

#[test]
fn defaults_are_filled_in() {
    let program = program_ok(|_| {});
    assert_eq!(program.resources, Resources::default());
    assert_eq!(program.resources.vcpus, 1);
    assert_eq!(program.resources.memory_mib, 128);
    assert_eq!(program.resources.seconds, 1);
    assert_eq!(program.environment, Environment::default());
    assert!(
        program.runtime.reference.use_latest,
        "runtime.use_latest defaults to true"
    );
    assert!(matches!(&program.code.source, CodeSource::Ref(r) if !r.use_latest));
    assert!(program.volumes.is_empty() && program.variables.is_empty());
}

#[test]
fn allow_amend_and_runtime_comment_are_required() {
    let err = program_error(|c| {
        c.as_object_mut().unwrap().remove("allow_amend");
    });
    assert_eq!(err.paths(), ["content.allow_amend"]);
    let err = program_error(|c| {
        c["runtime"].as_object_mut().unwrap().remove("comment");
    });
    assert_eq!(err.paths(), ["content.runtime.comment"]);
    let err = seed_with(|s| {
        s["content"]["runtime"]
            .as_object_mut()
            .unwrap()
            .remove("comment");
    })
    .expect_err("seed too");
    assert_eq!(err.paths(), ["content.runtime.comment"]);
}

#[test]
fn interface_is_inferred_from_the_entrypoint() {
    assert_eq!(Interface::infer("main:app"), Interface::Asgi);
    assert_eq!(Interface::infer("run.sh"), Interface::Binary);
    let program = program_ok(|_| {});
    assert_eq!(program.code.interface, Interface::Asgi);
    let program = program_ok(|c| c["code"]["entrypoint"] = json!("bin/server"));
    assert_eq!(program.code.interface, Interface::Binary);
    let program = program_ok(|c| {
        c["code"]["entrypoint"] = json!("bin/server");
        c["code"]["interface"] = json!("asgi");
    });
    assert_eq!(program.code.interface, Interface::Asgi);
    let err = program_error(|c| c["code"]["interface"] = json!("cgi"));
    assert_eq!(err.paths(), ["content.code.interface"]);
}

#[test]
fn squashfs_code_is_supported_but_not_as_an_export() {
    let program = program_ok(|c| c["code"]["encoding"] = json!("squashfs"));
    assert_eq!(program.code.encoding, Encoding::Squashfs);
    program.check_supported().expect("squashfs code runs here");
    let program = program_ok(|c| c["export"] = json!({"encoding": "squashfs", "mount": "/out"}));
    let err = program.check_supported().expect_err("squashfs export");
    assert_eq!(err.paths(), ["content.export.encoding"]);

    let program = program_ok(|c| c["export"] = json!({"encoding": "plain", "mount": "/out"}));
    let err = program.check_supported().expect_err("plain export");
    assert_eq!(err.paths(), ["content.export.encoding"]);

    let err = program_error(|c| c["code"]["encoding"] = json!("rar"));
    assert_eq!(err.paths(), ["content.code.encoding"]);
    for spelling in ["tar.gz", "tar.gzip", "targz"] {
        let program = program_ok(|c| c["code"]["encoding"] = json!(spelling));
        assert_eq!(program.code.encoding, Encoding::TarGz);
    }
}

#[test]
fn overlapping_mounts_are_rejected() {
    let err = program_error(|c| {
        c["data"] = json!({"encoding": "zip", "mount": "/data", "ref": REF});
        c["volumes"] = json!([{"ref": REF, "mount": "/data/lib"}]);
    });
    assert_eq!(err.paths(), ["content.volumes[0].mount"]);
    assert!(message_at(&err, "content.volumes[0].mount").contains("content.data.mount"));

    let err = program_error(|c| {
        c["volumes"] = json!([
            {"ephemeral": true, "size_mib": 5, "mount": "/var/lib"},
            {"name": "db", "persistence": "host", "size_mib": 5, "mount": "/var"},
        ]);
    });
    assert_eq!(err.paths(), ["content.volumes[1].mount"]);

    let err = program_error(|c| {
        c["volumes"] = json!([
            {"ephemeral": true, "size_mib": 5, "mount": "/cache"},
            {"ephemeral": true, "size_mib": 5, "mount": "/cache"},
        ]);
    });
    assert_eq!(err.paths(), ["content.volumes[1].mount"]);

    // Export may share the data directory, and `/data` does not contain `/database`.
    let program = program_ok(|c| {
        c["data"] = json!({"encoding": "zip", "mount": "/data", "ref": REF});
        c["export"] = json!({"encoding": "zip", "mount": "/data"});
        c["volumes"] = json!([{"ref": REF, "mount": "/database"}, {"ref": REF}]);
    });
    assert_eq!(program.mounts().len(), 3);

    let err = program_error(|c| {
        c["data"] = json!({"encoding": "zip", "mount": "/data", "ref": REF});
        c["export"] = json!({"encoding": "zip", "mount": "/data/out"});
    });
    assert_eq!(err.paths(), ["content.export.mount"]);
}

#[test]
fn mount_paths_must_be_absolute_and_normalised() {
    let cases = [
        ("/opt/../etc", "\"..\""),
        ("opt/venv", "absolute"),
        ("/", "root"),
        ("/opt/", "normalised"),
        ("/opt//venv", "normalised"),
        ("/opt/./venv", "normalised"),
        ("/opt/\u{7}", "printable"),
    ];
    for (mount, rule) in cases {
        let err = program_error(|c| c["volumes"] = json!([{"ref": REF, "mount": mount}]));
        assert_eq!(err.paths(), ["content.volumes[0].mount"], "{mount}");
        assert!(
            message_at(&err, "content.volumes[0].mount").contains(rule),
            "{mount}: {err}"
        );
    }
    let err =
        program_error(|c| c["data"] = json!({"encoding": "zip", "mount": "/a/../b", "ref": REF}));
    assert_eq!(err.paths(), ["content.data.mount"]);

    let path = MountPath::new("/var/lib").unwrap();
    assert!(path.contains(&MountPath::new("/var/lib/x").unwrap()));
    assert!(!path.overlaps(&MountPath::new("/var/library").unwrap()));
    assert_eq!(path.components().collect::<Vec<_>>(), ["var", "lib"]);
    assert_eq!(path.to_string(), "/var/lib");
}

#[test]
fn volumes_are_validated() {
    let err = program_error(|c| c["volumes"] = json!([{"ephemeral": true, "size_mib": 1001}]));
    assert_eq!(
        message_at(&err, "content.volumes[0].size_mib"),
        "must be between 1 and 1000 MiB, got 1001"
    );
    let err = program_error(|c| {
        c["volumes"] = json!([{"name": "x", "persistence": "host", "size_mib": 0}])
    });
    assert_eq!(err.paths(), ["content.volumes[0].size_mib"]);
    let err = program_error(|c| {
        c["volumes"] = json!([{"name": "../x", "persistence": "host", "size_mib": 1}])
    });
    assert_eq!(err.paths(), ["content.volumes[0].name"]);
    let err = program_error(|c| {
        c["volumes"] = json!([{"name": "x", "persistence": "cloud", "size_mib": 1}])
    });
    assert_eq!(err.paths(), ["content.volumes[0].persistence"]);
    let err = program_error(|c| c["volumes"] = json!([{"ref": REF, "size_mib": 1}]));
    assert_eq!(err.paths(), ["content.volumes[0].size_mib"]);
    let err = program_error(|c| c["volumes"] = json!([{"mount": "/x"}]));
    assert_eq!(err.paths(), ["content.volumes[0]"]);
    let err = program_error(|c| c["volumes"] = json!([{"ref": "abc"}]));
    assert_eq!(err.paths(), ["content.volumes[0].ref"]);

    let program = program_ok(|c| {
        c["volumes"] = json!([
            {"ref": REF},
            {"name": "db", "persistence": "host", "size_mib": 5, "parent": {"ref": REF}},
        ]);
    });
    assert!(
        matches!(&program.volumes[0], Volume::Immutable { reference, .. } if reference.use_latest)
    );
    assert!(matches!(
        &program.volumes[1],
        Volume::Persistent { parent: Some(p), .. } if p.use_latest
    ));
    let too_many = vec![json!({"ephemeral": true, "size_mib": 1}); MAX_VOLUMES + 1];
    let err = program_error(|c| c["volumes"] = json!(too_many));
    assert_eq!(err.paths(), ["content.volumes"]);
}

#[test]
fn maps_and_triggers_are_validated() {
    let program = program_ok(|c| c["variables"] = json!({"A": "1", "B": "two"}));
    assert_eq!(program.variables.get("B").map(String::as_str), Some("two"));
    let err = program_error(|c| c["variables"] = json!({"A": 1}));
    assert_eq!(err.paths(), ["content.variables.A"]);
    let err = program_error(|c| c["variables"] = json!({"A=B": "1"}));
    assert_eq!(err.paths(), ["content.variables[\"A=B\"]"]);
    let big: serde_json::Map<String, Value> = (0..=MAX_MAP_ENTRIES)
        .map(|i| (format!("k{i}"), json!(i)))
        .collect();
    let err = program_error(|c| c["metadata"] = Value::Object(big));
    assert_eq!(err.paths(), ["content.metadata"]);

    let wide: serde_json::Map<String, Value> = (0..=MAX_SUBSCRIPTION_KEYS)
        .map(|i| (format!("k{i}"), json!(i)))
        .collect();
    let err = program_error(|c| c["on"]["message"] = json!([{}, Value::Object(wide)]));
    assert_eq!(err.paths(), ["content.on.message[1]"]);

    let program = program_ok(|c| c["on"]["cron"] = json!("*/15 0-6 1,15 JAN-MAR mon"));
    assert_eq!(
        program.on.cron.as_deref(),
        Some("*/15 0-6 1,15 JAN-MAR mon")
    );
    for bad in [
        "5 4 * *",
        "60 * * * *",
        "@daily",
        "* * * * * *",
        "*/0 * * * *",
    ] {
        let err = program_error(|c| c["on"]["cron"] = json!(bad));
        assert_eq!(err.paths(), ["content.on.cron"], "{bad}");
    }
    let err = program_error(|c| c["on"]["aleph"] = json!([]));
    assert!(message_at(&err, "content.on.aleph").contains("\"message\""));

    let err = program_error(|c| c["payment"] = json!({"type": "gift"}));
    assert_eq!(err.paths(), ["content.payment.type"]);
    program_ok(|c| c["payment"] = json!({"chain": "ETH", "type": "hold", "receiver": null}));
}

#[test]
fn wrong_content_type_for_program() {
    let err = program_error(|c| c["type"] = json!("vm-instance"));
    assert_eq!(err.paths(), ["content.type"]);
}

// --- seed draft -----------------------------------------------------------------------

#[test]
fn seed_errors_use_the_seed_paths() {
    let err = seed_with(|s| s["content"]["code"]["encoding"] = json!("rar")).expect_err("encoding");
    assert_eq!(err.paths(), ["content.code.encoding"]);

    let err = seed_with(|s| s["content"]["code"]["use_latest"] = json!(true)).expect_err("key");
    assert_eq!(err.paths(), ["content.code.use_latest"]);
    assert!(message_at(&err, "content.code.use_latest").contains("latest_amend"));

    let err = seed_with(|s| s["content"]["on"]["aleph"] = json!([1])).expect_err("filter");
    assert_eq!(err.paths(), ["content.on.aleph[0]"]);

    let err = seed_with(|s| s["content"]["resources"]["memory"] = json!(0)).expect_err("memory");
    assert_eq!(err.paths(), ["content.resources.memory"]);

    let err = seed_with(|s| s["content"]["code"]["content"] = json!("print(1)")).expect_err("both");
    assert_eq!(err.paths(), ["content.code.ref"]);

    let err = seed_with(|s| {
        s["content"]["code"].as_object_mut().unwrap().remove("ref");
    })
    .expect_err("neither");
    assert_eq!(err.paths(), ["content.code"]);

    let err = seed_with(|s| s["address"] = json!(5)).expect_err("address");
    assert_eq!(err.paths(), ["address"]);

    let err = seed_with(|s| s["chain"] = json!("ETH")).expect_err("unknown top-level key");
    assert_eq!(err.paths(), ["chain"]);
}

#[test]
fn inline_code_must_be_plain() {
    let mut seed = fixture_json("seed-draft-inline-code.json");
    seed["content"]["code"]["encoding"] = json!("zip");
    let err = parse_json(&seed).expect_err("zip inline");
    assert_eq!(err.paths(), ["content.code.encoding"]);
}

// --- builder and robustness -----------------------------------------------------------

#[test]
fn build_inline_round_trips() {
    let message = build_inline(MessageType::Program, "ETH", SENDER, 1.25, program_content());
    assert!(message.hash_verified);
    assert!(message.program().is_some());
    assert_eq!(
        message.item_content.as_deref(),
        Some(serde_json::to_string(&program_content()).unwrap().as_str())
    );
    assert_round_trip(&message);

    let post = build_inline(
        MessageType::Post,
        "SOL",
        "addr",
        2.0,
        json!({"x": [1, 2.5]}),
    );
    assert_round_trip(&post);

    // Invalid program content is kept as-is; parse reports the problem.
    let bad = build_inline(
        MessageType::Program,
        "ETH",
        SENDER,
        1.0,
        json!({"type": "vm-function"}),
    );
    assert!(matches!(bad.content, Content::Other(_)));
    let err = parse_json(&bad.to_json()).expect_err("invalid");
    assert!(err.at("content.code").is_some());
    assert!(try_build_inline(MessageType::Program, "ETH", SENDER, 1.0, json!({})).is_err());
}

#[test]
fn mangled_inputs_never_panic() {
    for name in [
        "program-message.json",
        "seed-draft-program.json",
        "seed-draft-inline-code.json",
    ] {
        let bytes = fixture(name);
        for end in 0..bytes.len() {
            let _ = parse(&bytes[..end]);
        }
        for i in 0..bytes.len() {
            for replacement in [b'0', b'"', b'}'] {
                let mut mangled = bytes.clone();
                mangled[i] = replacement;
                if let Ok(m) = parse(&mangled) {
                    let _ = m.to_json();
                    let _ = m.program().map(ProgramContent::check_supported);
                }
            }
        }
    }
    let deep = "[".repeat(100_000);
    assert_eq!(parse(deep.as_bytes()).expect_err("deep").paths(), [""]);
}

#[test]
fn message_serialises_as_its_envelope() {
    let message = parse(&fixture("seed-draft-inline-code.json")).expect("valid");
    assert_eq!(serde_json::to_value(&message).unwrap(), message.to_json());
    let keys: Vec<String> = message
        .to_json()
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(
        keys,
        [
            "chain",
            "sender",
            "type",
            "channel",
            "time",
            "item_type",
            "item_content",
            "item_hash",
            "signature",
            "content"
        ]
    );
}
