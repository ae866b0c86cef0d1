//! Perturbed hosts for reproducibility tests: each run of a program gets its own copy of the
//! store (files copied in a run-dependent order), its own directories, another time zone,
//! locale, `TMPDIR` and unrelated environment variables.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::BIN;

/// Copies the store's objects, messages and amends (not its caches) to `to`, file by file, in
/// name order or in reverse (so the copies' directory layouts and inode numbers differ).
pub fn copy_store(from: &Path, to: &Path, reverse: bool) {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    for part in ["objects", "messages", "amends"] {
        if from.join(part).is_dir() {
            walk(&from.join(part), &mut files);
        }
    }
    if reverse {
        files.reverse();
    }
    for f in files {
        let dest = to.join(f.strip_prefix(from).unwrap());
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(&f, &dest).unwrap();
    }
}

/// One perturbed run: where its receipt and store are.
pub struct PerturbedRun {
    /// The receipt's bytes.
    pub receipt: Vec<u8>,
    /// The receipt file.
    pub receipt_path: PathBuf,
    /// The run's own store.
    pub store: PathBuf,
}

/// Runs `aleph-wasm <global…> --store <copy> run <run_args…> --receipt <file>` as run number
/// `i` on a perturbed host under `dir/host-<i>`, with a copy of the store `origin`.
pub fn perturbed_run(
    dir: &Path,
    origin: &Path,
    global: &[&str],
    run_args: &[&str],
    i: usize,
) -> PerturbedRun {
    let root = dir.join(format!("host-{i}"));
    let store = root.join(format!("store-{}", "x".repeat(i + 1)));
    copy_store(origin, &store, i % 2 == 1);
    let tmp = root.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    for k in 0..(i % 4 + 1) {
        let junk = tmp.join(format!("junk-{}", (k * 7 + i) % 5));
        std::fs::write(junk, vec![b'j'; k * 100]).unwrap();
    }
    let receipt_path = root.join("receipt.json");
    let zones = [
        "UTC",
        "Asia/Tokyo",
        "America/New_York",
        "Europe/Paris",
        "Pacific/Chatham",
    ];
    let out = Command::new(BIN)
        .current_dir(&root)
        .env_remove("RUST_LOG")
        .env_remove("ALEPH_WASM_STORE")
        .env_remove("ALEPH_WASM_MODULE_CACHE")
        .env("TZ", zones[i % zones.len()])
        .env("TMPDIR", &tmp)
        .env(format!("PERTURB_{i}"), "p".repeat(i + 1))
        .env(
            "LANG",
            if i.is_multiple_of(2) {
                "C"
            } else {
                "fr_FR.UTF-8"
            },
        )
        .args(global)
        .arg("--store")
        .arg(&store)
        .arg("run")
        .args(run_args)
        .arg("--receipt")
        .arg(&receipt_path)
        .output()
        .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
    let receipt = std::fs::read(&receipt_path).unwrap_or_else(|e| {
        panic!(
            "run {i} wrote no receipt ({e}); exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    PerturbedRun {
        receipt,
        receipt_path,
        store,
    }
}

/// `aleph-wasm <global…> --store <store> verify <receipt>`: (exit code, stdout, stderr).
pub fn verify(global: &[&str], store: &Path, receipt: &Path) -> (i32, String, String) {
    let out = Command::new(BIN)
        .env_remove("RUST_LOG")
        .env_remove("ALEPH_WASM_STORE")
        .env_remove("ALEPH_WASM_MODULE_CACHE")
        .args(global)
        .arg("--store")
        .arg(store)
        .arg("verify")
        .arg(receipt)
        .output()
        .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The export archive a receipt names, read from `store`.
pub fn export_bytes(store: &Path, receipt: &serde_json::Value) -> Vec<u8> {
    let hash = receipt["outputs"]["export_sha256"]
        .as_str()
        .unwrap_or_else(|| panic!("no export in {receipt}"));
    std::fs::read(store.join("objects/sha256").join(&hash[..2]).join(hash)).unwrap()
}

/// The file `name` from a tar.gz archive.
pub fn file_in_tar_gz(archive: &[u8], name: &str) -> Vec<u8> {
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.path().unwrap().ends_with(name) {
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut out).unwrap();
            return out;
        }
    }
    panic!("no {name} in the archive");
}

/// The sha256 of the code object a receipt names.
pub fn code_object(receipt: &serde_json::Value) -> String {
    receipt["inputs"]["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["field"] == "content.code")
        .unwrap_or_else(|| panic!("no code object in {receipt}"))["sha256"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Asserts that every run wrote the same receipt bytes as the first, showing both when not.
pub fn assert_identical_receipts(runs: &[PerturbedRun]) {
    for (i, run) in runs.iter().enumerate() {
        assert_eq!(
            run.receipt,
            runs[0].receipt,
            "run {i}'s receipt differs from run 0's:\n{}\n{}",
            String::from_utf8_lossy(&run.receipt),
            String::from_utf8_lossy(&runs[0].receipt)
        );
    }
}
