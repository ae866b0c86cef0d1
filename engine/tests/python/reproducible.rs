//! Reproducible mode with the Python torture app (`tests/python/torture/app.py`), through the
//! command line: ten runs in separate processes on perturbed hosts give byte-identical
//! receipts that `verify` accepts; without `reproducible` the receipts differ; an edited
//! output is named; a missing code object makes verification inconclusive.

use super::*;
use common::perturb::{self, export_bytes, file_in_tar_gz, perturbed_run};

/// The torture app.
const TORTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/torture");

/// Creates the torture program in `py`'s store; returns its item hash.
fn create(py: &Py, reproducible: bool) -> String {
    let mut args = vec![
        "program",
        "create",
        TORTURE,
        "--entrypoint",
        "app:app",
        "--export-mount",
        "/out",
        "--seconds",
        "10",
    ];
    if reproducible {
        args.push("--reproducible");
    }
    py.cli(&args).ok().last_line()
}

fn verify(store: &Path, receipt: &Path, code: i32) -> String {
    let cache = module_cache();
    let (got, stdout, stderr) =
        perturb::verify(&["--module-cache", cache.to_str().unwrap()], store, receipt);
    assert_eq!(
        got, code,
        "verify exit code\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
    );
    stdout
}

const REQUEST: [&str; 2] = ["--request", "GET /torture?x=1"];

#[test]
fn ten_perturbed_runs_of_the_python_torture_app_give_identical_receipts_that_verify() {
    let py = Py::new();
    let program = create(&py, true);
    let cache = module_cache();
    let global = ["--module-cache", cache.to_str().unwrap()];
    let mut run_args = vec![program.as_str()];
    run_args.extend(REQUEST);
    let runs: Vec<_> = (0..10)
        .map(|i| perturbed_run(py.dir.path(), py.store.root(), &global, &run_args, i))
        .collect();
    let first: Value = serde_json::from_slice(&runs[0].receipt).unwrap();
    assert_eq!(first["outputs"]["outcome"], "ok", "{first}");
    assert_eq!(first["outputs"]["status"], 200, "{first}");
    perturb::assert_identical_receipts(&runs);
    for run in &runs {
        let stdout = verify(&run.store, &run.receipt_path, 0);
        assert!(stdout.contains("verdict: match"), "{stdout}");
    }
    // The export is byte-identical in two different stores.
    let archive = export_bytes(&runs[0].store, &first);
    assert_eq!(archive, export_bytes(&runs[3].store, &first));

    // What the app saw: the declared environment plus PYTHONHASHSEED=0, nothing of the host's;
    // virtual sleeps of exactly 0.75 s; sorted listings; the message's time on the clocks.
    let report: Value = serde_json::from_slice(&file_in_tar_gz(&archive, "report.json")).unwrap();
    let env = report["environ"].as_object().unwrap();
    assert_eq!(env["PYTHONHASHSEED"], "0", "{report}");
    for host in ["TZ", "LANG", "TMPDIR", "PERTURB_0", "HOME", "PATH"] {
        assert!(
            !env.contains_key(host),
            "{host} leaked into the guest: {report}"
        );
    }
    let slept = report["slept_monotonic"].as_f64().unwrap();
    assert!((0.75..0.751).contains(&slept), "slept {slept} s: {report}");
    let files = &report["files"];
    let listing: Vec<&str> = files["listdir"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let mut sorted = listing.clone();
    sorted.sort();
    assert_eq!(listing, sorted, "{report}");
    let msg: Value = serde_json::from_slice(
        &std::fs::read(py.store.root().join(format!("messages/{program}.json"))).unwrap(),
    )
    .unwrap();
    let time = msg["content"]["time"].as_f64().unwrap();
    let seen = report["time"].as_f64().unwrap();
    assert!(
        (seen - time).abs() < 1.0,
        "time.time() {seen} is not the message time {time}"
    );
}

#[test]
fn without_reproducible_the_torture_app_differs_and_edited_receipts_fail_verification() {
    let py = Py::new();
    let plain = create(&py, false);
    let cache = module_cache();
    let global = ["--module-cache", cache.to_str().unwrap()];
    let mut run_args = vec![plain.as_str()];
    run_args.extend(REQUEST);
    let a = perturbed_run(py.dir.path(), py.store.root(), &global, &run_args, 0);
    let b = perturbed_run(py.dir.path(), py.store.root(), &global, &run_args, 1);
    let (ra, rb): (Value, Value) = (
        serde_json::from_slice(&a.receipt).unwrap(),
        serde_json::from_slice(&b.receipt).unwrap(),
    );
    assert_eq!(ra["reproducible"], Value::Bool(false));
    assert_eq!(ra["outputs"]["outcome"], "ok", "{ra}");
    assert_ne!(ra["outputs"]["body_sha256"], rb["outputs"]["body_sha256"]);

    // A reproducible receipt with one output edited: the field is named.
    let program = create(&py, true);
    let receipt_path = py.dir.path().join("receipt.json");
    py.cli(&[
        "run",
        &program,
        REQUEST[0],
        REQUEST[1],
        "--receipt",
        receipt_path.to_str().unwrap(),
    ])
    .ok();
    let receipt: Value = serde_json::from_slice(&std::fs::read(&receipt_path).unwrap()).unwrap();
    let mut edited = receipt.clone();
    edited["outputs"]["body_sha256"] = Value::from("0".repeat(64));
    let edited_path = py.dir.path().join("edited.json");
    std::fs::write(&edited_path, serde_json::to_vec(&edited).unwrap()).unwrap();
    let stdout = verify(py.store.root(), &edited_path, 1);
    assert!(
        stdout.contains("MISMATCH  outputs.body_sha256:"),
        "{stdout}"
    );
    assert!(
        stdout.contains("match     outputs.stdout_sha256"),
        "{stdout}"
    );

    // Without the code object the rerun cannot happen.
    let code = perturb::code_object(&receipt);
    std::fs::remove_file(
        py.store
            .root()
            .join("objects/sha256")
            .join(&code[..2])
            .join(&code),
    )
    .unwrap();
    let stdout = verify(py.store.root(), &receipt_path, 2);
    assert!(
        stdout.contains("inconclusive") && stdout.contains(&code),
        "{stdout}"
    );
}

#[test]
fn receipts_made_with_snapshots_verify_with_the_interpreter_they_name() {
    let py = Py::new();
    let program = create(&py, true);
    let run = |name: &str, snapshots: bool| -> (PathBuf, Value) {
        let path = py.dir.path().join(name);
        let mut args = vec!["run", &program, REQUEST[0], REQUEST[1], "--receipt"];
        args.push(path.to_str().unwrap());
        if snapshots {
            args.splice(0..0, ["--snapshots", "wait"]);
        }
        py.cli(&args).ok();
        let receipt = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        (path, receipt)
    };
    // With snapshots: the prepared interpreter (the first run builds the snapshot, both
    // restore it), one receipt.
    let (first_path, first) = run("snapshot-1.json", true);
    let (_, second) = run("snapshot-2.json", true);
    assert_eq!(first["engine"]["interpreter"]["prepared"], true, "{first}");
    assert_eq!(first["outputs"]["outcome"], "ok", "{first}");
    assert_eq!(first, second);
    // Without: the original interpreter, named as such; the same answer.
    let (plain_path, plain) = run("plain.json", false);
    assert_eq!(plain["engine"]["interpreter"]["prepared"], false, "{plain}");
    assert_eq!(
        plain["outputs"]["body_sha256"],
        first["outputs"]["body_sha256"]
    );
    // The prepared interpreter costs the fuel of the original (Asyncify instruments only the
    // pause stack, and the code it flattens is optimised again).
    let fuel = |r: &Value| r["outputs"]["fuel_consumed"].as_f64().unwrap();
    let ratio = fuel(&first) / fuel(&plain);
    assert!(
        (0.95..1.05).contains(&ratio),
        "fuel on the prepared interpreter is {ratio:.3} × the original's"
    );
    // `verify` reruns each on the interpreter its receipt names.
    for path in [&first_path, &plain_path] {
        let stdout = verify(py.store.root(), path, 0);
        assert!(stdout.contains("verdict: match"), "{stdout}");
    }
}
