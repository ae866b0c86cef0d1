//! Reproducible mode with a WASI torture guest, through the command line: every run is a
//! separate process on its own copy of the store, with the host perturbed between runs; the
//! receipts must be byte-identical and `verify` must agree. The same guest without
//! `reproducible` must give differing receipts (so the test can fail), edited receipts must be
//! named as mismatches, and a missing object must make verification inconclusive.
//!
//! (The Python torture program is in `tests/python/reproducible.rs`, part of the `python`
//! suite that owns the interpreter set-up.)

use crate::common;

use std::path::Path;

use common::perturb::{self, export_bytes, file_in_tar_gz, perturbed_run};
use common::*;
use serde_json::Value;

/// A job that reads every nondeterministic input WASI offers and writes the raw results to
/// stdout and to `/out/result.bin` (the export): wall and monotonic clocks, 16 random bytes,
/// NaN bit patterns from arithmetic, the monotonic clock after a 50 ms sleep, the listing of a
/// directory whose files it creates out of order (with inode numbers), the filestat of a file
/// and of the directory (inode, link count, size, timestamps), and the environment.
fn torture_guest() -> String {
    let mut w = Wat::new();
    let names: Vec<String> = ["b.txt", "c.txt", "a.txt"].iter().map(|n| w.s(n)).collect();
    let a_txt = w.s("a.txt");
    let result = w.s("result.bin");
    let creat_trunc = O_CREAT | O_TRUNC;
    let imports = r#"
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_readdir" (func $readdir (param i32 i32 i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_filestat_get" (func $pstat (param i32 i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_filestat_get" (func $fstat (param i32 i32) (result i32)))"#;
    let mut create = String::new();
    for n in &names {
        create.push_str(&format!(
            "    (local.set $fd (call $open (i32.const 3) {n} (i32.const {creat_trunc}) {RIGHTS_WRITE}))\n\
             \x20   (drop (call $write (local.get $fd) {n}))\n\
             \x20   (drop (call $fd_close (local.get $fd)))\n"
        ));
    }
    // Layout of the results, from BUF: 0 wall, 8 monotonic, 16 random(16), 32 f64 NaN,
    // 40 f32 NaN, 48 monotonic after the sleep, 64 readdir (960 bytes), 1024 bufused,
    // 1040 filestat of a.txt, 1104 filestat of the directory, 1168 environ sizes; ends at 1176.
    let b = BUF;
    let sub = b + 4096;
    let ev = b + 4200;
    let module = w.module(&format!(
        r#"
    (local $fd i32) (local $out i32)
    (drop (call $clock (i32.const 0) (i64.const 1) (i32.const {b})))
    (drop (call $clock (i32.const 1) (i64.const 1) (i32.const {b8})))
    (drop (call $random (i32.const {b16}) (i32.const 16)))
    (f64.store (i32.const {b32}) (f64.div (f64.load (i32.const {zero})) (f64.load (i32.const {zero}))))
    (f32.store (i32.const {b40}) (f32.sqrt (f32.sub (f32.const 0) (f32.const 1))))
    ;; sleep 50 ms on the monotonic clock
    (i64.store (i32.const {sub}) (i64.const 7))
    (i32.store8 (i32.const {sub8}) (i32.const 0))
    (i32.store (i32.const {sub16}) (i32.const 1))
    (i64.store (i32.const {sub24}) (i64.const 50000000))
    (drop (call $poll (i32.const {sub}) (i32.const {ev}) (i32.const 1) (i32.const {evn})))
    (drop (call $clock (i32.const 1) (i64.const 1) (i32.const {b48})))
{create}
    (drop (call $readdir (i32.const 3) (i32.const {b64}) (i32.const 960) (i64.const 0) (i32.const {b1024})))
    (drop (call $pstat (i32.const 3) (i32.const 1) {a_txt} (i32.const {b1040})))
    (drop (call $fstat (i32.const 3) (i32.const {b1104})))
    (drop (call $environ_sizes_get (i32.const {b1168}) (i32.const {b1172})))
    (drop (call $environ_get (i32.const {ENV_PTRS}) (i32.const {ENV_BUF})))
    (call $print (i32.const {b}) (i32.const 1176))
    (call $print (i32.const {ENV_BUF}) (i32.load (i32.const {b1172})))
    (local.set $out (call $open (i32.const 3) {result} (i32.const {creat_trunc}) {RIGHTS_WRITE}))
    (drop (call $write (local.get $out) (i32.const {b}) (i32.const 1176)))
    (drop (call $fd_close (local.get $out)))
"#,
        b8 = b + 8,
        b16 = b + 16,
        b32 = b + 32,
        b40 = b + 40,
        b48 = b + 48,
        b64 = b + 64,
        b1024 = b + 1024,
        b1040 = b + 1040,
        b1104 = b + 1104,
        b1168 = b + 1168,
        b1172 = b + 1172,
        zero = b + 4000,
        sub8 = sub + 8,
        sub16 = sub + 16,
        sub24 = sub + 24,
        evn = ev + 64,
    ));
    // Imports come before the prelude's functions.
    module.replacen("(module\n", &format!("(module\n{imports}\n"), 1)
}

fn verify(t: &TestDir, receipt: &Path, code: i32) -> (String, String) {
    verify_in(t.store(), receipt, code)
}

fn verify_in(store: &Path, receipt: &Path, code: i32) -> (String, String) {
    let (got, stdout, stderr) = perturb::verify(&[], store, receipt);
    assert_eq!(
        got, code,
        "verify exit code\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
    );
    (stdout, stderr)
}

const PROGRAM_ARGS: [&str; 3] = ["--no-http", "--export-mount", "/out"];

#[test]
fn ten_perturbed_runs_of_the_wasi_torture_guest_give_identical_receipts_that_verify() {
    let t = TestDir::new();
    let wasm = t.wasm("main.wasm", &torture_guest());
    let mut args = PROGRAM_ARGS.to_vec();
    args.push("--reproducible");
    let program = t.program(&wasm, &args);

    let runs: Vec<_> = (0..10)
        .map(|i| perturbed_run(t.path(), t.store(), &[], &[&program], i))
        .collect();
    let first: Value = serde_json::from_slice(&runs[0].receipt).unwrap();
    assert_eq!(first["reproducible"], Value::Bool(true), "{first}");
    assert_eq!(first["outputs"]["outcome"], "ok", "{first}");
    perturb::assert_identical_receipts(&runs);
    for run in &runs {
        let (stdout, _) = verify_in(&run.store, &run.receipt_path, 0);
        assert!(stdout.contains("verdict: match"), "{stdout}");
    }
    // The export archive is byte-identical in two different stores.
    assert_eq!(
        export_bytes(&runs[0].store, &first),
        export_bytes(&runs[7].store, &first)
    );
    // What the guest saw: a sleep advanced the virtual monotonic clock by exactly 50 ms (plus
    // the clock steps), and the listing is sorted.
    let archive = export_bytes(&runs[0].store, &first);
    let stdout = file_in_tar_gz(&archive, "result.bin");
    let u64_at = |at: usize| u64::from_le_bytes(stdout[at..at + 8].try_into().unwrap());
    let slept = u64_at(48) - u64_at(8);
    assert!(
        (50_000_000..50_100_000).contains(&slept),
        "virtual sleep advanced the clock by {slept} ns"
    );
    let listing = String::from_utf8_lossy(&stdout[64..1024]).to_string();
    let (a, b, c) = (
        listing.find("a.txt").unwrap(),
        listing.find("b.txt").unwrap(),
        listing.find("c.txt").unwrap(),
    );
    assert!(a < b && b < c, "listing not sorted: {listing:?}");
}

#[test]
fn without_reproducible_the_same_guest_gives_differing_receipts() {
    let t = TestDir::new();
    let wasm = t.wasm("main.wasm", &torture_guest());
    let program = t.program(&wasm, &PROGRAM_ARGS);
    let run_a = perturbed_run(t.path(), t.store(), &[], &[&program], 0);
    let run_b = perturbed_run(t.path(), t.store(), &[], &[&program], 1);
    let (a, b): (Value, Value) = (
        serde_json::from_slice(&run_a.receipt).unwrap(),
        serde_json::from_slice(&run_b.receipt).unwrap(),
    );
    assert_eq!(a["reproducible"], Value::Bool(false));
    assert_ne!(a["outputs"]["stdout_sha256"], b["outputs"]["stdout_sha256"]);
    assert_ne!(a["outputs"]["export_sha256"], b["outputs"]["export_sha256"]);
    // Verifying a non-reproducible receipt names what came out differently.
    let (stdout, _) = verify_in(&run_a.store, &run_a.receipt_path, 1);
    assert!(
        stdout.contains("MISMATCH  outputs.stdout_sha256"),
        "{stdout}"
    );
}

#[test]
fn an_edited_output_field_is_named_and_a_missing_object_is_inconclusive() {
    let t = TestDir::new();
    let wasm = t.wasm("main.wasm", &torture_guest());
    let mut args = PROGRAM_ARGS.to_vec();
    args.push("--reproducible");
    let program = t.program(&wasm, &args);
    let path = t.path().join("receipt.json");
    t.cmd()
        .args(["run", &program, "--receipt"])
        .arg(&path)
        .assert_ok();
    verify(&t, &path, 0);
    let receipt: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let outputs = receipt["outputs"].as_object().unwrap().clone();
    assert!(outputs.len() >= 10, "{receipt}");
    for (key, value) in outputs {
        let edited_value = match &value {
            Value::Number(n) => Value::from(n.as_u64().unwrap_or(0) + 1),
            Value::String(s) if s == "ok" => Value::from("exit"),
            Value::String(s) => {
                let flipped = if s.ends_with('0') { '1' } else { '0' };
                Value::from(format!("{}{flipped}", &s[..s.len() - 1]))
            }
            Value::Null => Value::from(7),
            Value::Array(_) => serde_json::json!([["x-edited", "1"]]),
            Value::Bool(b) => Value::Bool(!b),
            Value::Object(_) => Value::Null,
        };
        assert_ne!(edited_value, value, "the edit of {key} must change it");
        let mut edited = receipt.clone();
        edited["outputs"][&key] = edited_value;
        let file = t.path().join(format!("edited-{key}.json"));
        std::fs::write(&file, serde_json::to_vec(&edited).unwrap()).unwrap();
        let (stdout, _) = verify(&t, &file, 1);
        assert!(
            stdout.contains(&format!("MISMATCH  outputs.{key}:")),
            "the edit of outputs.{key} is not named\n{stdout}"
        );
        assert!(stdout.contains("verdict: mismatch"), "{stdout}");
    }
    // Deleting the code object makes the rerun impossible: inconclusive.
    let code = perturb::code_object(&receipt);
    std::fs::remove_file(t.object_path(&code)).unwrap();
    let (stdout, _) = verify(&t, &path, 2);
    assert!(stdout.contains("inconclusive"), "{stdout}");
    assert!(
        stdout.contains(&code),
        "the missing object is named\n{stdout}"
    );
}

#[test]
fn a_stack_overflow_is_its_own_outcome_kind() {
    let t = TestDir::new();
    let mut w = Wat::new();
    w.func("  (func $deeper (param i64) (result i64) (i64.add (call $deeper (local.get 0)) (i64.const 1)))");
    let program = t.guest_program(
        &w.module("    (drop (call $deeper (i64.const 1)))"),
        &["--no-http", "--reproducible"],
    );
    let run = t.run_json(&program, &[], 1);
    run.assert_outcome("stack_overflow");
}

#[test]
fn the_internet_and_host_state_are_refused_in_reproducible_mode() {
    let t = TestDir::new();
    let body = "    (nop)";
    for (flags, field) in [
        (&["--internet"][..], "content.environment.internet"),
        (
            &["--volume", "persistent:state:/state:1"][..],
            "content.volumes[0]",
        ),
    ] {
        let mut args = vec!["--no-http", "--reproducible"];
        args.extend_from_slice(flags);
        let program = t.guest_program(&Wat::new().module(body), &args);
        let run = t.run_json(&program, &[], 1);
        run.assert_outcome("error");
        let error = run.json["error"].as_str().unwrap_or_default();
        assert!(error.contains(field), "{field} not named: {error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wall_clock_safety_net_makes_a_reproducible_run_inconclusive() {
    use aleph_wasm::sandbox::SandboxConfig;
    use aleph_wasm::{Executor, ExecutorConfig, OutcomeKind, Store, Trigger};
    let t = TestDir::new();
    let looping = Wat::new().module("    (loop $forever (br $forever))");
    let repro = t.guest_program(&looping, &["--no-http", "--reproducible"]);
    let plain = t.guest_program(&looping, &["--no-http"]);
    // A fuel rate no host reaches in a second: the wall clock ends the run first.
    let config = ExecutorConfig {
        sandbox: SandboxConfig {
            fuel_per_second: 1 << 50,
            safety_net_factor: 1,
            ..SandboxConfig::default()
        },
        ..ExecutorConfig::default()
    };
    let store = Store::open(t.store()).unwrap();
    let executor = Executor::new(store.clone(), config).unwrap();
    let outcome = executor
        .execute(&store.get_message(&repro).unwrap(), &Trigger::Job)
        .await;
    assert_eq!(
        outcome.kind,
        OutcomeKind::Inconclusive,
        "{:?}",
        outcome.error
    );
    assert!(outcome.error.unwrap().contains("safety net"));
    let outcome = executor
        .execute(&store.get_message(&plain).unwrap(), &Trigger::Job)
        .await;
    assert_eq!(outcome.kind, OutcomeKind::Timeout, "{:?}", outcome.error);
}

#[test]
fn a_request_with_a_body_verifies_from_the_store() {
    let t = TestDir::new();
    let mut w = Wat::new();
    let head = w.s("Content-Type: text/plain\r\n\r\n");
    let program = t.guest_program(
        &w.module(&format!(
            r#"
    (local $n i32)
    (local.set $n (call $read_all (i32.const 0) (i32.const {BUF}) (i32.const 65536)))
    (call $print {head})
    (call $print (i32.const {BUF}) (local.get $n))
"#
        )),
        &["--reproducible"],
    );
    let body = t.write("body.txt", "the request body\n");
    let receipt = t.path().join("receipt.json");
    let out = t
        .cmd()
        .args([
            "run",
            &program,
            "--request",
            "POST /echo?x=1",
            "--header",
            "X-A: b",
        ])
        .arg("--body")
        .arg(&body)
        .arg("--receipt")
        .arg(&receipt)
        .assert_ok();
    assert!(out.stdout.ends_with("the request body\n"), "\n{out}");
    let (stdout, _) = verify(&t, &receipt, 0);
    assert!(stdout.contains("match     inputs.trigger"), "{stdout}");
    // The receipt names the body by its hash; the store keeps the bytes for the rerun.
    let r: Value = serde_json::from_slice(&std::fs::read(&receipt).unwrap()).unwrap();
    let hash = r["inputs"]["trigger"]["body_sha256"].as_str().unwrap();
    std::fs::remove_file(t.object_path(hash)).unwrap();
    let (stdout, _) = verify(&t, &receipt, 2);
    assert!(stdout.contains(hash), "{stdout}");
}

#[test]
fn a_reproducible_wasi_module_reads_an_object_by_hash_and_the_receipt_names_it() {
    let t = TestDir::new();
    let (object_hash, _) = t.store_add(&t.write("object.txt", "stored bytes"));
    let missing = "0".repeat(64);
    let request = |hash: &str| {
        format!(
            "GET /api/v0/storage/raw/{hash} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
    };
    let connect = r#"{"unix":"/tmp/socat-socket"}"#;
    let guest = host_client_guest(connect, request(&object_hash).as_bytes(), "");
    let program = t.guest_program(&guest, &["--no-http", "--reproducible", "--aleph-api"]);
    let receipts: Vec<Vec<u8>> = (0..2)
        .map(|i| {
            let path = t.path().join(format!("receipt-{i}.json"));
            let run = t.run_json(&program, &["--receipt", path.to_str().unwrap()], 0);
            run.assert_outcome("ok");
            let stdout = run.stdout();
            assert!(stdout.starts_with("HTTP/1.1 200 OK\r\n"), "\n{run}");
            assert!(stdout.ends_with("\r\n\r\nstored bytes"), "\n{run}");
            std::fs::read(&path).unwrap()
        })
        .collect();
    assert_eq!(receipts[0], receipts[1], "two runs differ");
    let receipt: Value = serde_json::from_slice(&receipts[0]).unwrap();
    assert_eq!(
        receipt["inputs"]["reads"],
        serde_json::json!([{"kind": "object", "hash": object_hash, "found": true}]),
        "{receipt:#}"
    );
    let (stdout, _) = verify(&t, &t.path().join("receipt-0.json"), 0);
    assert!(stdout.contains("verdict: match"), "{stdout}");

    // A miss is a 404 the receipt records; a route other than a read by hash is a 403.
    let guest = host_client_guest(connect, request(&missing).as_bytes(), "");
    let program = t.guest_program(&guest, &["--no-http", "--reproducible", "--aleph-api"]);
    let path = t.path().join("receipt-miss.json");
    let run = t.run_json(&program, &["--receipt", path.to_str().unwrap()], 0);
    assert!(run.stdout().starts_with("HTTP/1.1 404"), "\n{run}");
    let receipt: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(receipt["inputs"]["reads"][0]["found"], false, "{receipt:#}");
    let cache = b"GET /cache/key HTTP/1.1\r\nConnection: close\r\n\r\n";
    let guest = host_client_guest(connect, cache, "");
    let program = t.guest_program(&guest, &["--no-http", "--reproducible", "--aleph-api"]);
    let run = t.run_json(&program, &[], 0);
    assert!(run.stdout().starts_with("HTTP/1.1 403"), "\n{run}");
    assert!(
        run.stdout()
            .contains("content.environment.reproducible is true"),
        "\n{run}"
    );
}
