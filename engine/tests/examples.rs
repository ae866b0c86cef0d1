//! The WebAssembly-text examples in `examples/`, run end to end through the command line
//! exactly as `examples/README.md` shows them. (The Python examples are run by `python.rs`.)

use crate::common;

use common::TestDir;

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");

#[test]
fn cgi_hello_answers_with_its_cgi_environment() {
    let t = TestDir::new();
    let out = t
        .cmd()
        .args([
            "program",
            "create",
            &format!("{EXAMPLES}/cgi-hello/hello.wat"),
            "--entrypoint",
            "hello.wat",
        ])
        .assert_ok();
    let program = out.last_line();
    let out = t
        .cmd()
        .args(["run", &program, "--request", "GET /hello?name=aleph"])
        .assert_ok();
    let text = out.stdout.clone();
    assert!(text.starts_with("HTTP/1.1 200\r\n"), "{text}");
    assert!(text.contains("Content-Type: text/plain\r\n"), "{text}");
    assert!(text.contains("Hello from aleph-wasm!"), "{text}");
    assert!(text.contains("PATH_INFO=/hello\n"), "{text}");
    assert!(text.contains("QUERY_STRING=name=aleph\n"), "{text}");
}

#[test]
fn data_job_reports_on_its_data_and_exports_the_report() {
    let t = TestDir::new();
    let out = t
        .cmd()
        .args([
            "program",
            "create",
            &format!("{EXAMPLES}/data-job/report.wat"),
            "--entrypoint",
            "report.wat",
            "--no-http",
            "--data",
            &format!("{EXAMPLES}/data-job/data"),
            "--data-mount",
            "/data",
            "--export-mount",
            "/out",
        ])
        .assert_ok();
    let program = out.last_line();
    let input = std::fs::read(format!("{EXAMPLES}/data-job/data/in.txt")).unwrap();
    let lines = input.iter().filter(|&&b| b == b'\n').count();
    let expected = format!("bytes: {}\nlines: {lines}\n", input.len());

    let run = t.run_json(&program, &[], 0);
    run.assert_outcome("ok").assert_stdout_has(&expected);
    let export = &run.json["export"];
    let file_hash = export["file_hash"].as_str().expect("an export").to_string();
    let archive = std::fs::read(t.object_path(&file_hash)).unwrap();
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(&archive[..]));
    let mut report = None;
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.path().unwrap().to_string_lossy() == "report.txt" {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut entry, &mut text).unwrap();
            report = Some(text);
        }
    }
    assert_eq!(report.as_deref(), Some(expected.as_str()));

    // The same data gives the same export, byte for byte.
    let again = t.run_json(&program, &[], 0);
    assert_eq!(
        again.json["export"]["file_hash"].as_str(),
        Some(file_hash.as_str())
    );
}
