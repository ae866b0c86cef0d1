//! The guest's side of the AW4 channel, checked by the guest's own tests: the bootstrap's
//! encoder and decoder against the shared test vectors (`runtimes/python-3.12/aw4-vectors.json`,
//! which `channel::wire`'s unit tests check on the host's side), and its serving loop driven
//! over pipes under the machine's native CPython (`runtimes/python-3.12/test_wire.py`).

use std::path::Path;
use std::process::Command;

#[test]
fn the_bootstraps_wire_and_serving_loop_pass_their_own_tests() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../runtimes/python-3.12/test_wire.py");
    let out = Command::new("python3")
        .arg(&script)
        .output()
        .expect("python3 runs (CI installs it; the Python runtime is fetched with it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "test_wire.py failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.ends_with(" 0 failed") && !l.starts_with("0 passed")),
        "test_wire.py ran no test:\n{stdout}"
    );
}
