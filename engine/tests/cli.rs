//! End-to-end tests of the `aleph-wasm` binary: each test gets a fresh directory and store,
//! builds WASI guests from WAT, and drives the real command line.

use crate::common;

use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;

/// Unique per test process, so host paths planted by hostile archives cannot collide.
fn unique(name: &str) -> String {
    format!("aleph-wasm-test-{}-{name}", std::process::id())
}

// ---------------------------------------------------------------------------------------------
// 1. CGI
// ---------------------------------------------------------------------------------------------

/// A CGI guest: `Status: 201`, then its whole environment (one `K=V` per line), then
/// `BODY:` and what it read on stdin.
fn cgi_echo_guest() -> String {
    let mut w = Wat::new();
    let header = w.s("Status: 201 Created\r\nContent-Type: text/plain\r\n\r\n");
    let marker = w.s("BODY:");
    w.module(&format!(
        r#"
    (local $size i32) (local $i i32) (local $n i32)
    (drop (call $environ_sizes_get (i32.const 48) (i32.const 52)))
    (local.set $size (i32.load (i32.const 52)))
    (drop (call $environ_get (i32.const {ENV_PTRS}) (i32.const {ENV_BUF})))
    ;; NUL separators become newlines
    (block $done
      (loop $each
        (br_if $done (i32.ge_u (local.get $i) (local.get $size)))
        (if (i32.eqz (i32.load8_u (i32.add (i32.const {ENV_BUF}) (local.get $i))))
          (then (i32.store8 (i32.add (i32.const {ENV_BUF}) (local.get $i)) (i32.const 10))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $each)))
    (call $print {header})
    (call $print (i32.const {ENV_BUF}) (local.get $size))
    (call $print {marker})
    (local.set $n (call $read_all (i32.const 0) (i32.const {BUF}) (i32.const 65536)))
    (if (i32.lt_s (local.get $n) (i32.const 0)) (then (call $proc_exit (i32.const 9))))
    (call $print (i32.const {BUF}) (local.get $n))
"#
    ))
}

/// The variables every program gets from the node: its item hash and its host label.
const NODE_FIXED: &[&str] = &["ALEPH_ITEM_HASH", "ALEPH_ADDRESS_TO_USE"];

/// The RFC 3875 meta-variables a CGI host may set.
const RFC3875: &[&str] = &[
    "AUTH_TYPE",
    "CONTENT_LENGTH",
    "CONTENT_TYPE",
    "GATEWAY_INTERFACE",
    "PATH_INFO",
    "PATH_TRANSLATED",
    "QUERY_STRING",
    "REMOTE_ADDR",
    "REMOTE_HOST",
    "REMOTE_IDENT",
    "REMOTE_USER",
    "REQUEST_METHOD",
    "SCRIPT_NAME",
    "SERVER_NAME",
    "SERVER_PORT",
    "SERVER_PROTOCOL",
    "SERVER_SOFTWARE",
];

#[test]
fn cgi_request_gets_meta_variables_body_and_status() {
    let t = TestDir::new();
    let program = t.guest_program(&cgi_echo_guest(), &["--variable", "GREETING=hi there"]);
    let body = t.write("body.txt", "hello world");
    let secret = unique("secret-value");
    let out = t
        .cmd()
        .env("ALEPH_TEST_SECRET", &secret)
        .args([
            "run",
            &program,
            "--json",
            "--request",
            "POST /hello/world?a=1&b=two",
        ])
        .args([
            "--header",
            "X-Test: yes",
            "--header",
            "Content-Type: text/plain",
        ])
        .arg("--body")
        .arg(&body)
        .assert_ok();
    let run = RunOutcome {
        json: out.json(),
        out,
    };
    run.assert_outcome("ok");
    assert_eq!(run.json["status"], 201, "\n{run}");
    let headers = run.json["headers"].as_array().unwrap();
    assert!(
        headers
            .iter()
            .any(|h| h[0] == "Content-Type" && h[1] == "text/plain"),
        "no Content-Type: text/plain header\n{run}"
    );
    assert!(
        !headers
            .iter()
            .any(|h| h[0].as_str().unwrap().eq_ignore_ascii_case("status")),
        "the Status line must become the status, not a header\n{run}"
    );
    let body = String::from_utf8(run.body()).unwrap();
    let (env, echoed) = body
        .split_once("BODY:")
        .unwrap_or_else(|| panic!("no BODY: marker in the body {body:?}\n{run}"));
    let lines: Vec<&str> = env.lines().filter(|l| !l.is_empty()).collect();
    for want in [
        "REQUEST_METHOD=POST",
        "PATH_INFO=/hello/world",
        "QUERY_STRING=a=1&b=two",
        "HTTP_X_TEST=yes",
        "CONTENT_TYPE=text/plain",
        "CONTENT_LENGTH=11",
        "GREETING=hi there",
    ] {
        assert!(
            lines.contains(&want),
            "the guest's environment lacks {want:?}: {lines:#?}"
        );
    }
    assert_eq!(echoed, "hello world", "the body was not on stdin");
    // Nothing of the host's environment leaks: only variables, CGI meta-variables, HTTP_*, and
    // the node's fixed ones naming the program.
    assert!(
        !body.contains(&secret),
        "the host's ALEPH_TEST_SECRET is visible: {lines:#?}"
    );
    for line in &lines {
        let name = line.split('=').next().unwrap();
        assert!(
            name == "GREETING"
                || name.starts_with("HTTP_")
                || RFC3875.contains(&name)
                || NODE_FIXED.contains(&name),
            "unexpected variable {name:?} in the guest's environment: {lines:#?}"
        );
    }

    // The plain output form: an HTTP/1.1 response, body from stdin (`--body -`).
    let out = t
        .cmd()
        .env("ALEPH_TEST_SECRET", &secret)
        .args(["run", &program, "--request", "PUT /x", "--body", "-"])
        .stdin("from stdin")
        .assert_ok();
    assert!(
        out.stdout.starts_with("HTTP/1.1 201"),
        "the first line is not `HTTP/1.1 201`\n{out}"
    );
    assert!(
        out.stdout.contains("Content-Type: text/plain\r\n"),
        "\n{out}"
    );
    assert!(
        out.stdout.contains("\r\n\r\n"),
        "no blank line after the headers\n{out}"
    );
    assert!(out.stdout.contains("REQUEST_METHOD=PUT\n"), "\n{out}");
    assert!(out.stdout.contains("CONTENT_LENGTH=10\n"), "\n{out}");
    assert!(out.stdout.ends_with("BODY:from stdin"), "\n{out}");
    assert!(!out.stdout.contains(&secret), "\n{out}");

    // An HTTP program run without --request gets `GET /`.
    let run = t.run_json(&program, &[], 0);
    let body = String::from_utf8(run.body()).unwrap();
    assert!(body.contains("REQUEST_METHOD=GET\n"), "\n{run}");
    assert!(body.contains("PATH_INFO=/\n"), "\n{run}");
    assert!(body.ends_with("BODY:"), "a GET has an empty body\n{run}");
}

// ---------------------------------------------------------------------------------------------
// 2. Data and export
// ---------------------------------------------------------------------------------------------

/// A job: reads `in.txt` from the data mount (fd 3), writes `result: <it>` to `result.txt` in
/// the export mount (fd 4), then tries to create a file in the (read-only) data mount.
fn data_export_guest() -> String {
    let mut w = Wat::new();
    let in_txt = w.s("in.txt");
    let result_txt = w.s("result.txt");
    let new_txt = w.s("new.txt");
    let prefix = w.s("result: ");
    let say_in = w.say("open_in", "(call $errno_of (local.get $fd))");
    let say_out = w.say("open_out", "(call $errno_of (local.get $out))");
    let say_write = w.say("write", "(local.get $err)");
    let say_data = w.say("data_write", "(call $errno_of (local.get $fd))");
    let creat_trunc = O_CREAT | O_TRUNC;
    w.module(&format!(
        r#"
    (local $fd i32) (local $out i32) (local $n i32) (local $err i32)
    (local.set $fd (call $open (i32.const 3) {in_txt} (i32.const 0) {RIGHTS_READ}))
    {say_in}
    (if (i32.lt_s (local.get $fd) (i32.const 0)) (then (call $proc_exit (i32.const 10))))
    (local.set $n (call $read_all (local.get $fd) (i32.const {BUF}) (i32.const 65536)))
    (local.set $out (call $open (i32.const 4) {result_txt} (i32.const {creat_trunc}) {RIGHTS_WRITE}))
    {say_out}
    (if (i32.lt_s (local.get $out) (i32.const 0)) (then (call $proc_exit (i32.const 11))))
    (local.set $err (call $write (local.get $out) {prefix}))
    (local.set $err (i32.or (local.get $err) (call $write (local.get $out) (i32.const {BUF}) (local.get $n))))
    {say_write}
    (drop (call $fd_close (local.get $out)))
    (local.set $fd (call $open (i32.const 3) {new_txt} (i32.const {creat_trunc}) {RIGHTS_WRITE}))
    {say_data}
"#
    ))
}

#[test]
fn job_reads_data_and_exports_reproducibly() {
    let t = TestDir::new();
    let data = t.write(
        "data.tar.gz",
        tar_gz(&[TarEntry::File(b"in.txt", b"hello data\n")]),
    );
    let wasm = t.wasm("main.wasm", &data_export_guest());
    let program = t.program(
        &wasm,
        &[
            "--no-http",
            "--data",
            data.to_str().unwrap(),
            "--data-mount",
            "/data",
            "--export-mount",
            "/out",
            "--export-encoding",
            "tar.gz",
        ],
    );
    let first = t.run_json(&program, &[], 0);
    first.assert_outcome("ok");
    assert_eq!(first.printed_int("open_in"), 0, "\n{first}");
    assert_eq!(first.printed_int("open_out"), 0, "\n{first}");
    assert_eq!(first.printed_int("write"), 0, "\n{first}");
    assert_ne!(
        first.printed_int("data_write"),
        0,
        "the data mount is writable\n{first}"
    );
    assert!(
        t.find_files("new.txt").is_empty(),
        "new.txt was created on the host"
    );

    let export = &first.json["export"];
    let file_hash = export["file_hash"]
        .as_str()
        .unwrap_or_else(|| panic!("no export.file_hash\n{first}"))
        .to_string();
    assert!(
        export["ref"].as_str().is_some_and(|r| r.len() == 64),
        "\n{first}"
    );
    assert!(
        export["tar_sha256"].as_str().is_some_and(|r| r.len() == 64),
        "\n{first}"
    );
    let archive = std::fs::read(t.object_path(&file_hash))
        .unwrap_or_else(|e| panic!("the export object {file_hash} is not in the store: {e}"));
    assert_eq!(sha256_hex(&archive), file_hash);
    let files = untar_gz(&archive);
    let result = files
        .iter()
        .find(|(p, _)| p.trim_start_matches("./") == "result.txt")
        .unwrap_or_else(|| {
            panic!(
                "no result.txt in the export: {:?}",
                files.iter().map(|f| &f.0).collect::<Vec<_>>()
            )
        });
    assert_eq!(String::from_utf8_lossy(&result.1), "result: hello data\n");

    // The export ref is a STORE message in the store, usable as an immutable volume ref.
    t.cmd()
        .args(["run", export["ref"].as_str().unwrap()])
        .assert_usage_error()
        .assert_stderr_has(&["not a PROGRAM"]);

    let second = t.run_json(&program, &[], 0);
    second.assert_outcome("ok");
    assert_eq!(
        second.json["export"]["file_hash"], file_hash,
        "the same run exported different bytes\n{second}"
    );
    assert_eq!(second.json["export"]["tar_sha256"], export["tar_sha256"]);
}

#[test]
fn data_mount_doubles_as_export_mount() {
    let t = TestDir::new();
    let data = t.write(
        "data.tar.gz",
        tar_gz(&[TarEntry::File(b"in.txt", b"original\n")]),
    );
    let mut w = Wat::new();
    let in_txt = w.s("in.txt");
    let added = w.s("added.txt");
    let text = w.s("added\n");
    let say_before = w.say("added_before", "(call $errno_of (local.get $fd))");
    let say_in = w.say("open_in", "(call $errno_of (local.get $fd))");
    let say_create = w.say("create", "(call $errno_of (local.get $fd))");
    let creat_trunc = O_CREAT | O_TRUNC;
    let wasm = t.wasm(
        "main.wasm",
        &w.module(&format!(
            r#"
    (local $fd i32)
    (local.set $fd (call $open (i32.const 3) {added} (i32.const 0) {RIGHTS_READ}))
    {say_before}
    (local.set $fd (call $open (i32.const 3) {in_txt} (i32.const 0) {RIGHTS_READ}))
    {say_in}
    (local.set $fd (call $open (i32.const 3) {added} (i32.const {creat_trunc}) {RIGHTS_WRITE}))
    {say_create}
    (if (i32.ge_s (local.get $fd) (i32.const 0))
      (then (drop (call $write (local.get $fd) {text}))))
"#
        )),
    );
    let program = t.program(
        &wasm,
        &[
            "--no-http",
            "--data",
            data.to_str().unwrap(),
            "--data-mount",
            "/data",
            "--export-mount",
            "/data",
        ],
    );
    for _ in 0..2 {
        let run = t.run_json(&program, &[], 0);
        run.assert_outcome("ok");
        assert_eq!(
            run.printed_int("added_before"),
            44,
            "each run starts from the stored data, not the last export\n{run}"
        );
        assert_eq!(run.printed_int("open_in"), 0, "\n{run}");
        assert_eq!(
            run.printed_int("create"),
            0,
            "the data+export mount is not writable\n{run}"
        );
        let hash = run.json["export"]["file_hash"]
            .as_str()
            .unwrap()
            .to_string();
        let mut files = untar_gz(&std::fs::read(t.object_path(&hash)).unwrap());
        for f in &mut files {
            f.0 = f.0.trim_start_matches("./").to_string();
        }
        files.sort();
        assert_eq!(
            files,
            [
                ("added.txt".to_string(), b"added\n".to_vec()),
                ("in.txt".to_string(), b"original\n".to_vec())
            ],
            "\n{run}"
        );
    }
}

#[test]
fn job_gets_argv_and_only_its_variables() {
    let t = TestDir::new();
    let mut w = Wat::new();
    let args_label = w.s("ARGS\n");
    let env_label = w.s("ENV\n");
    w.func(
        r#"
  ;; Turns the NUL separators of buf[..size] into newlines and prints it.
  (func $print_block (param $buf i32) (param $size i32)
    (local $i i32)
    (block $done
      (loop $each
        (br_if $done (i32.ge_u (local.get $i) (local.get $size)))
        (if (i32.eqz (i32.load8_u (i32.add (local.get $buf) (local.get $i))))
          (then (i32.store8 (i32.add (local.get $buf) (local.get $i)) (i32.const 10))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $each)))
    (call $print (local.get $buf) (local.get $size)))
"#,
    );
    let wasm = t.wasm(
        "main.wasm",
        &w.module(&format!(
            r#"
    (drop (call $args_sizes_get (i32.const 48) (i32.const 52)))
    (drop (call $args_get (i32.const {ENV_PTRS}) (i32.const {ENV_BUF})))
    (call $print {args_label})
    (call $print_block (i32.const {ENV_BUF}) (i32.load (i32.const 52)))
    (drop (call $environ_sizes_get (i32.const 48) (i32.const 52)))
    (drop (call $environ_get (i32.const {ENV_PTRS}) (i32.const {ENV_BUF})))
    (call $print {env_label})
    (call $print_block (i32.const {ENV_BUF}) (i32.load (i32.const 52)))
"#
        )),
    );
    let program = t.program(
        &wasm,
        &[
            "--no-http",
            "--arg",
            "one",
            "--arg",
            "two words",
            "--arg",
            "--dash",
            "--variable",
            "K=V",
            "--variable",
            "EMPTY=",
        ],
    );
    let secret = unique("secret");
    let out = t
        .cmd()
        .env("ALEPH_TEST_SECRET", &secret)
        .args(["run", &program, "--json"])
        .assert_ok();
    let run = RunOutcome {
        json: out.json(),
        out,
    };
    run.assert_outcome("ok");
    let stdout = run.stdout();
    let (args, env) = stdout
        .split_once("ENV\n")
        .unwrap_or_else(|| panic!("no ENV marker\n{run}"));
    assert_eq!(
        args, "ARGS\nmain.wasm\none\ntwo words\n--dash\n",
        "argv must be [entrypoint, args…]\n{run}"
    );
    let mut env: Vec<&str> = env.lines().collect();
    env.sort();
    let label = aleph_wasm::message::host_label(&program).expect("an item hash has a label");
    let address = format!("ALEPH_ADDRESS_TO_USE={label}");
    let item_hash = format!("ALEPH_ITEM_HASH={program}");
    assert_eq!(
        env,
        [address.as_str(), item_hash.as_str(), "EMPTY=", "K=V"],
        "a job's environment is exactly its variables and the two naming the program\n{run}"
    );
    assert!(
        run.json["status"].is_null(),
        "a job has no HTTP status\n{run}"
    );
}

#[test]
fn environ_pointers_outside_memory_or_misaligned_trap_naming_the_call() {
    let t = TestDir::new();
    for (body, want) in [
        (
            "(drop (call $environ_get (i32.const 2) (i32.const 1024)))",
            "environ_get: the guest's pointer 0x2 is not aligned to 4 bytes",
        ),
        (
            // The guest's memory is 4 pages (256 KiB): the strings would cross its end.
            "(drop (call $environ_get (i32.const 0) (i32.const 262140)))",
            "bytes at the guest's pointer 0x3fffc are outside its memory",
        ),
        (
            "(drop (call $environ_sizes_get (i32.const 262144) (i32.const 0)))",
            "environ_sizes_get: 4 bytes at the guest's pointer 0x40000 are outside its memory",
        ),
    ] {
        let program = t.guest_program(
            &Wat::new().module(&format!("    {body}")),
            &[
                "--no-http",
                "--variable",
                "NAME=a value long enough to cross",
            ],
        );
        let run = t.run_json(&program, &[], 1);
        run.assert_outcome("trap");
        assert!(run.out.stdout.contains(want), "{want:?}\n{run}");
    }
}

// ---------------------------------------------------------------------------------------------
// 3, 4, 12, 13. Limits and endings
// ---------------------------------------------------------------------------------------------

#[test]
fn infinite_loop_times_out() {
    let t = TestDir::new();
    let program = t.guest_program(
        &Wat::new().module("    (loop $forever (br $forever))"),
        &["--no-http", "--seconds", "1"],
    );
    let started = Instant::now();
    let run = t.run_json(&program, &[], 1);
    let elapsed = started.elapsed();
    run.assert_outcome("timeout");
    assert!(
        elapsed < Duration::from_secs(5),
        "a 1 s program took {elapsed:?} to be stopped\n{run}"
    );
    assert!(run.int("elapsed_ms") < 3000, "\n{run}");
}

#[test]
fn memory_bomb_is_out_of_memory_and_bounded() {
    let t = TestDir::new();
    let mut w = Wat::new();
    let say_pages = w.say("pages", "(memory.size)");
    // Grow one page at a time, touching every 4 KiB of each new page so it is resident.
    let program = t.guest_program(
        &w.module(&format!(
            r#"
    (local $page i32) (local $off i32)
    (block $refused
      (loop $grow
        (local.set $page (memory.grow (i32.const 1)))
        (br_if $refused (i32.lt_s (local.get $page) (i32.const 0)))
        (local.set $off (i32.const 0))
        (loop $touch
          (i32.store8 (i32.add (i32.mul (local.get $page) (i32.const 65536)) (local.get $off)) (i32.const 1))
          (local.set $off (i32.add (local.get $off) (i32.const 4096)))
          (br_if $touch (i32.lt_u (local.get $off) (i32.const 65536))))
        (br $grow)))
    {say_pages}
    unreachable
"#
        )),
        &["--no-http", "--memory", "16", "--seconds", "5"],
    );
    let out = t
        .cmd()
        .args(["run", &program, "--json"])
        .output_sampling_rss();
    assert_eq!(out.code, 1, "\n{out}");
    let run = RunOutcome {
        json: out.json(),
        out,
    };
    run.assert_outcome("out_of_memory");
    assert_eq!(
        run.printed_int("pages"),
        256,
        "growth must stop at exactly 16 MiB (256 pages)\n{run}"
    );
    let peak = run
        .out
        .peak_rss_kib
        .unwrap_or_else(|| panic!("no VmHWM sample was taken while the command ran\n{run}"));
    assert!(
        peak < 200 * 1024,
        "peak RSS of aleph-wasm was {} MiB\n{run}",
        peak / 1024
    );
}

#[test]
fn flooding_stdout_is_capped() {
    let t = TestDir::new();
    let program = t.guest_program(
        &Wat::new().module(&format!(
            r#"
    (local $i i32)
    (memory.fill (i32.const {BUF}) (i32.const 120) (i32.const 65536))
    (loop $chunk
      (drop (call $write (i32.const 1) (i32.const {BUF}) (i32.const 65536)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $chunk (i32.lt_u (local.get $i) (i32.const 160))))
"#
        )),
        &["--no-http", "--seconds", "5"],
    );
    let run = t.run_json(&program, &[], 0);
    run.assert_outcome("ok");
    let kept = run.stdout().len() as i64;
    let dropped = run.int("stdout_dropped");
    assert!(dropped > 0, "nothing was dropped\n{run}");
    assert!(kept <= 1 << 20, "{kept} bytes of stdout kept\n{run}");
    assert_eq!(
        kept + dropped,
        10 << 20,
        "kept + dropped must be what was written\n{run}"
    );
    assert!(run.stdout().bytes().all(|b| b == b'x'));
}

#[test]
fn proc_exit_code_is_reported() {
    let t = TestDir::new();
    let program = t.guest_program(
        &Wat::new().module("    (call $proc_exit (i32.const 3))"),
        &["--no-http"],
    );
    let run = t.run_json(&program, &[], 1);
    run.assert_outcome("exit");
    assert_eq!(run.int("exit_code"), 3, "\n{run}");
    // The plain form: exit 1 and the outcome on stderr.
    let out = t.cmd().args(["run", &program]).assert_code(1);
    out.assert_stderr_has(&["exit"]);
}

// ---------------------------------------------------------------------------------------------
// 5. Escapes
// ---------------------------------------------------------------------------------------------

#[test]
fn guest_cannot_open_paths_outside_its_mounts() {
    let t = TestDir::new();
    let secret = t.write("secret.txt", "original");
    let data = t.write(
        "data.tar.gz",
        tar_gz(&[TarEntry::File(b"in.txt", b"inside\n")]),
    );
    let mut w = Wat::new();
    let creat_trunc = O_CREAT | O_TRUNC;
    let mut body = String::from("    (local $fd i32)\n");
    // (key, dir fd, path, oflags, rights): fd 3 is /data (read-only), fd 4 is /out (writable).
    let secret_abs = secret.to_str().unwrap().to_string();
    let attempts: Vec<(&str, i32, String, i32, &str)> = vec![
        ("dotdot", 3, "../etc/passwd".into(), 0, RIGHTS_READ),
        (
            "deep_dotdot",
            3,
            "../../../../../../../../etc/passwd".into(),
            0,
            RIGHTS_READ,
        ),
        ("abs", 3, "/etc/passwd".into(), 0, RIGHTS_READ),
        ("abs_secret", 3, secret_abs.clone(), 0, RIGHTS_READ),
        (
            "out_dotdot_secret",
            4,
            "../../../../secret.txt".into(),
            creat_trunc,
            RIGHTS_WRITE,
        ),
        ("out_abs_secret", 4, secret_abs, creat_trunc, RIGHTS_WRITE),
        ("out_abs", 4, "/etc/passwd".into(), 0, RIGHTS_READ),
        ("inside", 3, "in.txt".into(), 0, RIGHTS_READ),
    ];
    let pwned = w.s("pwned");
    for (key, dir, path, oflags, rights) in &attempts {
        let p = w.s(path);
        let say = w.say(key, "(call $errno_of (local.get $fd))");
        body.push_str(&format!(
            r#"
    (local.set $fd (call $open (i32.const {dir}) {p} (i32.const {oflags}) {rights}))
    {say}
    (if (i32.ge_s (local.get $fd) (i32.const 0))
      (then (drop (call $write (local.get $fd) {pwned}))
            (drop (call $fd_close (local.get $fd)))))
"#
        ));
    }
    let program = t.guest_program(
        &w.module(&body),
        &[
            "--no-http",
            "--data",
            data.to_str().unwrap(),
            "--export-mount",
            "/out",
        ],
    );
    let run = t.run_json(&program, &[], 0);
    run.assert_outcome("ok");
    assert_eq!(
        run.printed_int("inside"),
        0,
        "the guest cannot open its own data\n{run}"
    );
    for (key, ..) in attempts.iter().filter(|a| a.0 != "inside") {
        let errno = run.printed_int(key);
        assert!(
            [2, 44, 63, 76].contains(&errno),
            "{key}: expected ENOENT/EPERM/ENOTCAPABLE, got errno {errno}\n{run}"
        );
    }
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "original");
    assert!(
        !String::from_utf8_lossy(
            &std::fs::read(t.object_path(run.json["export"]["file_hash"].as_str().unwrap()))
                .unwrap()
        )
        .contains("root:"),
        "host files ended up in the export"
    );
}

/// A guest that reads `name` under the data mount (fd 3) and prints `errno=` and `content=`.
fn read_one_guest(name: &str) -> String {
    let mut w = Wat::new();
    let p = w.s(name);
    let say = w.say("errno", "(call $errno_of (local.get $fd))");
    let label = w.s("content=");
    w.module(&format!(
        r#"
    (local $fd i32) (local $n i32)
    (local.set $fd (call $open (i32.const 3) {p} (i32.const 0) {RIGHTS_READ}))
    {say}
    (if (i32.ge_s (local.get $fd) (i32.const 0))
      (then
        (local.set $n (call $read_all (local.get $fd) (i32.const {BUF}) (i32.const 65536)))
        (call $print {label})
        (if (i32.gt_s (local.get $n) (i32.const 0))
          (then (call $print (i32.const {BUF}) (local.get $n))))
        (call $nl)))
"#
    ))
}

/// Runs `read_one_guest(read)` with `archive` as its data; returns the outcome.
fn run_with_data(t: &TestDir, archive_name: &str, archive: Vec<u8>, read: &str) -> RunOutcome {
    let data = t.write(archive_name, archive);
    let wasm = t.wasm("reader.wasm", &read_one_guest(read));
    let program = t.program(&wasm, &["--no-http", "--data", data.to_str().unwrap()]);
    let out = t.cmd().args(["run", &program, "--json"]).output();
    assert!(out.code == 0 || out.code == 1, "\n{out}");
    RunOutcome {
        json: out.json(),
        out,
    }
}

#[test]
fn escaping_symlinks_in_a_data_archive_are_refused() {
    let t = TestDir::new();
    t.write("x", "host file next to the store");
    let secret = t.write("secret.txt", "original");
    for (entry, target) in [
        ("evil_abs", "/etc/passwd".to_string()),
        ("evil_up", "../../x".to_string()),
        ("evil_secret", secret.to_str().unwrap().to_string()),
        ("sub/evil_deep", "../../secret.txt".to_string()),
    ] {
        let archive = tar_gz(&[
            TarEntry::File(b"in.txt", b"inside\n"),
            TarEntry::Dir(b"sub/"),
            TarEntry::Symlink(entry.as_bytes(), target.as_bytes()),
        ]);
        let run = run_with_data(&t, "links.tar.gz", archive, entry);
        run.assert_outcome("error");
        run.assert_error_has(&[entry, "symlink"]);
        assert_eq!(run.out.code, 1);
        assert!(!run.stdout().contains("root:"), "\n{run}");
    }
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "original");
}

#[test]
fn inside_symlink_in_a_data_archive_stays_inside() {
    let t = TestDir::new();
    let archive = tar_gz(&[
        TarEntry::File(b"in.txt", b"inside\n"),
        TarEntry::Symlink(b"alias", b"in.txt"),
    ]);
    let run = run_with_data(&t, "alias.tar.gz", archive, "alias");
    if run.outcome() == "error" {
        // Refusing every symlink is allowed, as long as the entry is named.
        run.assert_error_has(&["alias"]);
    } else {
        run.assert_outcome("ok");
        assert_eq!(run.printed_int("errno"), 0, "\n{run}");
        assert_eq!(run.printed("content"), "inside", "\n{run}");
    }
}

#[test]
fn zip_symlink_to_a_host_file_does_not_leak_it() {
    let t = TestDir::new();
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default();
    writer.start_file("in.txt", options).unwrap();
    writer.write_all(b"inside\n").unwrap();
    writer.add_symlink("zlink", "/etc/passwd", options).unwrap();
    let archive = writer.finish().unwrap().into_inner();
    let run = run_with_data(&t, "links.zip", archive, "zlink");
    if run.outcome() == "error" {
        run.assert_error_has(&["zlink"]);
    } else {
        assert!(!run.stdout().contains("root:"), "/etc/passwd leaked\n{run}");
    }
}

// ---------------------------------------------------------------------------------------------
// 6, 7, 8. Volumes
// ---------------------------------------------------------------------------------------------

/// A squashfs image holding `files` (and `dev`, a character device, when set).
fn squashfs(files: &[(&str, &[u8])], dev: Option<&str>) -> Vec<u8> {
    let header = |mode| backhand::NodeHeader::new(mode, 0, 0, 0);
    let mut fs = backhand::FilesystemWriter::default();
    for (name, data) in files {
        fs.push_file(std::io::Cursor::new(data.to_vec()), name, header(0o644))
            .unwrap();
    }
    if let Some(dev) = dev {
        fs.push_char_device(0x0103, dev, header(0o666)).unwrap();
    }
    let mut out = std::io::Cursor::new(Vec::new());
    fs.write(&mut out).unwrap();
    out.into_inner()
}

#[test]
fn squashfs_code_and_volumes_run_and_hostile_images_are_refused() {
    let t = TestDir::new();
    let volume = t.write(
        "vol.squashfs",
        squashfs(&[("readme.txt", b"read me\n")], None),
    );
    let (_, reference) = t.store_add(&volume);
    let mut w = Wat::new();
    let readme = w.s("readme.txt");
    let label = w.s("readme=");
    // Preopens: the code (fd 3, an archive here), then the volume (fd 4).
    let module = w.module(&format!(
        r#"
    (local $fd i32) (local $n i32)
    (local.set $fd (call $open (i32.const 4) {readme} (i32.const 0) {RIGHTS_READ}))
    (if (i32.lt_s (local.get $fd) (i32.const 0)) (then (call $proc_exit (i32.const 10))))
    (local.set $n (call $read_all (local.get $fd) (i32.const {BUF}) (i32.const 65536)))
    (call $print {label})
    (call $print (i32.const {BUF}) (local.get $n))
"#
    ));
    let wasm = std::fs::read(t.wasm("main.wasm", &module)).unwrap();
    let code = t.write("code.squashfs", squashfs(&[("main.wasm", &wasm)], None));
    let create = |volume_ref: &str| {
        let out = t
            .cmd()
            .args(["program", "create"])
            .arg(&code)
            .args(["--entrypoint", "main.wasm", "--no-http", "--volume"])
            .arg(format!("immutable:{volume_ref}:/ro"))
            .assert_ok();
        out.last_line()
    };
    let program = create(&reference);
    assert_eq!(
        stored_message(&t, &program)["content"]["code"]["encoding"],
        "squashfs"
    );
    let run = t.run_json(&program, &[], 0);
    run.assert_outcome("ok");
    assert_eq!(run.printed("readme"), "read me", "\n{run}");

    // A volume image with a device node is refused, the entry named.
    let hostile = t.write(
        "dev.squashfs",
        squashfs(&[("readme.txt", b"x")], Some("null")),
    );
    let (_, hostile_ref) = t.store_add(&hostile);
    let program = create(&hostile_ref);
    let run = t.run_json(&program, &[], 1);
    run.assert_error_has(&["\"null\"", "character device entries are not allowed"]);
}

#[test]
fn immutable_volume_is_read_only() {
    let t = TestDir::new();
    let volume = t.write("vol.zip", zip(&[("readme.txt", b"read me\n")]));
    let (_, reference) = t.store_add(&volume);
    let mut w = Wat::new();
    let readme = w.s("readme.txt");
    let new_txt = w.s("new.txt");
    let x = w.s("overwritten");
    let label = w.s("readme=");
    let say_create = w.say("create", "(call $errno_of (local.get $fd))");
    let say_overwrite = w.say("overwrite", "(call $errno_of (local.get $fd))");
    let creat_trunc = O_CREAT | O_TRUNC;
    let program = t.guest_program(
        &w.module(&format!(
            r#"
    (local $fd i32) (local $n i32)
    (local.set $fd (call $open (i32.const 3) {readme} (i32.const 0) {RIGHTS_READ}))
    (if (i32.lt_s (local.get $fd) (i32.const 0)) (then (call $proc_exit (i32.const 10))))
    (local.set $n (call $read_all (local.get $fd) (i32.const {BUF}) (i32.const 65536)))
    (call $print {label})
    (call $print (i32.const {BUF}) (local.get $n))
    (drop (call $fd_close (local.get $fd)))
    (local.set $fd (call $open (i32.const 3) {new_txt} (i32.const {creat_trunc}) {RIGHTS_WRITE}))
    {say_create}
    (if (i32.ge_s (local.get $fd) (i32.const 0)) (then (drop (call $write (local.get $fd) {x}))))
    (local.set $fd (call $open (i32.const 3) {readme} (i32.const {O_TRUNC}) {RIGHTS_WRITE}))
    {say_overwrite}
    (if (i32.ge_s (local.get $fd) (i32.const 0)) (then (drop (call $write (local.get $fd) {x}))))
"#
        )),
        &[
            "--no-http",
            "--volume",
            &format!("immutable:{reference}:/ro"),
        ],
    );
    for _ in 0..2 {
        let run = t.run_json(&program, &[], 0);
        run.assert_outcome("ok");
        assert_eq!(run.printed("readme"), "read me", "\n{run}");
        assert_ne!(
            run.printed_int("create"),
            0,
            "created a file in an immutable volume\n{run}"
        );
        assert_ne!(
            run.printed_int("overwrite"),
            0,
            "opened an immutable file for writing\n{run}"
        );
    }
    assert!(
        t.find_files("new.txt").is_empty(),
        "new.txt exists on the host"
    );
    for copy in t.find_files("readme.txt") {
        assert_eq!(
            std::fs::read_to_string(&copy).unwrap(),
            "read me\n",
            "{copy:?} changed"
        );
    }
}

/// Writes 2 MiB to `big.bin` in the first mount (fd 3) in 64 KiB chunks, stopping at the
/// first failed write; first prints whether `big.bin` already existed.
fn fill_guest() -> String {
    let mut w = Wat::new();
    let big = w.s("big.bin");
    let say_exists = w.say("exists", "(call $errno_of (local.get $fd))");
    let say_open = w.say("open", "(call $errno_of (local.get $fd))");
    let say_written = w.say("written", "(local.get $written)");
    let say_errno = w.say("write_errno", "(local.get $err)");
    let creat_trunc = O_CREAT | O_TRUNC;
    w.module(&format!(
        r#"
    (local $fd i32) (local $err i32) (local $written i32)
    (local.set $fd (call $open (i32.const 3) {big} (i32.const 0) {RIGHTS_READ}))
    {say_exists}
    (local.set $fd (call $open (i32.const 3) {big} (i32.const {creat_trunc}) {RIGHTS_WRITE}))
    {say_open}
    (if (i32.lt_s (local.get $fd) (i32.const 0)) (then (call $proc_exit (i32.const 10))))
    (memory.fill (i32.const {BUF}) (i32.const 7) (i32.const 65536))
    (block $stop
      (loop $chunk
        (local.set $err (call $write (local.get $fd) (i32.const {BUF}) (i32.const 65536)))
        (br_if $stop (local.get $err))
        (local.set $written (i32.add (local.get $written) (i32.const 65536)))
        (br_if $chunk (i32.lt_u (local.get $written) (i32.const 2097152)))))
    {say_written}
    {say_errno}
"#
    ))
}

#[test]
fn ephemeral_volume_enforces_its_size_and_starts_empty() {
    let t = TestDir::new();
    let program = t.guest_program(
        &fill_guest(),
        &["--no-http", "--volume", "ephemeral:/scratch:1"],
    );
    for round in 0..2 {
        let run = t.run_json(&program, &[], 0);
        run.assert_outcome("ok");
        assert_eq!(
            run.printed_int("exists"),
            44,
            "round {round}: big.bin should not exist yet (ENOENT)\n{run}"
        );
        assert_eq!(run.printed_int("open"), 0, "\n{run}");
        assert_eq!(run.printed_int("write_errno"), 51, "expected ENOSPC\n{run}");
        let written = run.printed_int("written");
        assert!(
            ((1 << 20) - 65536..=1 << 20).contains(&written),
            "{written} bytes written to a 1 MiB volume\n{run}"
        );
    }
    assert!(
        t.find_files("big.bin").is_empty(),
        "the ephemeral volume's file outlived the run: {:?}",
        t.find_files("big.bin")
    );
}

#[test]
fn rename_across_mounts_is_exdev() {
    let t = TestDir::new();
    let mut w = Wat::new();
    let f = w.s("f.txt");
    let g = w.s("g.txt");
    let x = w.s("x");
    let say_cross = w.say("cross", "(local.get $err)");
    let say_same = w.say("same", "(local.get $err)");
    let creat = O_CREAT;
    let program = t.guest_program(
        &w.module(&format!(
            r#"
    (local $fd i32) (local $err i32)
    (local.set $fd (call $open (i32.const 3) {f} (i32.const {creat}) {RIGHTS_WRITE}))
    (if (i32.lt_s (local.get $fd) (i32.const 0)) (then (call $proc_exit (i32.const 10))))
    (drop (call $write (local.get $fd) {x}))
    (drop (call $fd_close (local.get $fd)))
    (local.set $err (call $path_rename (i32.const 3) {f} (i32.const 4) {f}))
    {say_cross}
    (local.set $err (call $path_rename (i32.const 3) {f} (i32.const 3) {g}))
    {say_same}
"#
        )),
        &[
            "--no-http",
            "--volume",
            "ephemeral:/a:1",
            "--volume",
            "ephemeral:/b:1",
        ],
    );
    let run = t.run_json(&program, &[], 0);
    run.assert_outcome("ok");
    assert_eq!(run.printed_int("cross"), 75, "expected EXDEV\n{run}");
    assert_eq!(
        run.printed_int("same"),
        0,
        "a rename inside one mount failed\n{run}"
    );
}

#[test]
fn persistent_volume_keeps_a_counter() {
    let t = TestDir::new();
    let mut w = Wat::new();
    let n = w.s("n");
    let say_open = w.say("open_write", "(call $errno_of (local.get $fd))");
    let say_write = w.say("write_errno", "(local.get $err)");
    let say_count = w.say("count", "(local.get $v)");
    let creat_trunc = O_CREAT | O_TRUNC;
    let program = t.guest_program(
        &w.module(&format!(
            r#"
    (local $fd i32) (local $n i32) (local $v i32) (local $i i32) (local $c i32) (local $p i32) (local $err i32)
    (local.set $fd (call $open (i32.const 3) {n} (i32.const 0) {RIGHTS_READ}))
    (if (i32.ge_s (local.get $fd) (i32.const 0))
      (then
        (local.set $n (call $read_all (local.get $fd) (i32.const {BUF}) (i32.const 32)))
        (block $end
          (loop $digit
            (br_if $end (i32.ge_s (local.get $i) (local.get $n)))
            (local.set $c (i32.load8_u (i32.add (i32.const {BUF}) (local.get $i))))
            (br_if $end (i32.or (i32.lt_u (local.get $c) (i32.const 48)) (i32.gt_u (local.get $c) (i32.const 57))))
            (local.set $v (i32.add (i32.mul (local.get $v) (i32.const 10)) (i32.sub (local.get $c) (i32.const 48))))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br $digit)))
        (drop (call $fd_close (local.get $fd)))))
    (local.set $v (i32.add (local.get $v) (i32.const 1)))
    (local.set $fd (call $open (i32.const 3) {n} (i32.const {creat_trunc}) {RIGHTS_WRITE}))
    (if (i32.lt_s (local.get $fd) (i32.const 0)) (then {say_open} (call $proc_exit (i32.const 12))))
    (local.set $p (call $fmt_num (local.get $v)))
    (local.set $err (call $write (local.get $fd) (local.get $p) (i32.sub (i32.const 48) (local.get $p))))
    (if (local.get $err) (then {say_write} (call $proc_exit (i32.const 13))))
    (drop (call $fd_close (local.get $fd)))
    {say_count}
"#
        )),
        &["--no-http", "--volume", "persistent:counter:/state:1"],
    );
    for want in 1..=3 {
        let run = t.run_json(&program, &[], 0);
        run.assert_outcome("ok");
        assert_eq!(run.printed_int("count"), want, "\n{run}");
    }
    let on_host: Vec<String> = find_files(&t.store().join("volumes"), "n")
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    assert_eq!(on_host, ["3"], "the volume's file in the store");
}

// ---------------------------------------------------------------------------------------------
// 9. Hostile inputs
// ---------------------------------------------------------------------------------------------

/// A trivial job.
fn noop_guest() -> String {
    Wat::new().module("    (nop)")
}

/// The stored JSON of a message.
fn stored_message(t: &TestDir, hash: &str) -> serde_json::Value {
    let path = t.store().join("messages").join(format!("{hash}.json"));
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

/// `msg` with its inline content changed by `edit`, and a correct item_hash.
fn edit_content(
    msg: &serde_json::Value,
    edit: impl FnOnce(&mut serde_json::Value),
) -> serde_json::Value {
    let mut msg = msg.clone();
    let mut content: serde_json::Value =
        serde_json::from_str(msg["item_content"].as_str().unwrap()).unwrap();
    edit(&mut content);
    let text = serde_json::to_string(&content).unwrap();
    msg["item_hash"] = sha256_hex(text.as_bytes()).into();
    msg["item_content"] = text.into();
    msg.as_object_mut().unwrap().remove("content");
    msg
}

/// A message file made from a program created in `t`, edited by `edit`.
fn edited_message_file(
    t: &TestDir,
    name: &str,
    edit: impl FnOnce(&mut serde_json::Value),
) -> std::path::PathBuf {
    let program = t.guest_program(&noop_guest(), &["--no-http"]);
    let msg = edit_content(&stored_message(t, &program), edit);
    t.write(name, serde_json::to_vec_pretty(&msg).unwrap())
}

/// The error text of a run that must fail: either exit 2 with an error on stderr, or exit 1
/// with outcome `error`.
fn run_failure(t: &TestDir, target: &str) -> String {
    let out = t.cmd().args(["run", target, "--json"]).output();
    match out.code {
        2 => {
            assert!(
                out.stderr.contains("error"),
                "exit 2 without an error\n{out}"
            );
            out.stderr.clone()
        }
        1 => {
            let run = RunOutcome {
                json: out.json(),
                out,
            };
            run.assert_outcome("error");
            run.str("error")
        }
        _ => panic!("expected a refusal (exit 1 or 2)\n{out}"),
    }
}

#[test]
fn hostile_malformed_json_message() {
    let t = TestDir::new();
    let bad = t.write("bad.json", "{\"type\": \"PROGRAM\", \"item_hash\": ");
    t.cmd()
        .args(["store", "add-message"])
        .arg(&bad)
        .assert_usage_error()
        .assert_stderr_has(&["bad.json", "JSON"]);
    t.bare_cmd()
        .args(["message", "check"])
        .arg(&bad)
        .assert_usage_error();
    // Not an object at all.
    let list = t.write("list.json", "[1, 2, 3]");
    t.cmd()
        .args(["store", "add-message"])
        .arg(&list)
        .assert_usage_error();
}

#[test]
fn hostile_wrong_item_hash() {
    let t = TestDir::new();
    let program = t.guest_program(&noop_guest(), &["--no-http"]);
    let mut msg = stored_message(&t, &program);
    let wrong = sha256_hex(b"something else");
    msg["item_hash"] = wrong.clone().into();
    let file = t.write("wrong-hash.json", serde_json::to_vec(&msg).unwrap());
    let out = t
        .cmd()
        .args(["store", "add-message"])
        .arg(&file)
        .assert_usage_error();
    out.assert_stderr_has(&["item_hash"]);
    assert!(
        !t.store()
            .join("messages")
            .join(format!("{wrong}.json"))
            .exists(),
        "the message was stored anyway"
    );
    // Running it directly from the file is refused the same way.
    t.cmd()
        .args(["run"])
        .arg(&file)
        .assert_usage_error()
        .assert_stderr_has(&["item_hash"]);
}

#[test]
fn hostile_unknown_key_is_named() {
    let t = TestDir::new();
    let file = edited_message_file(&t, "unknown.json", |c| {
        c["resources"]["turbo"] = true.into();
    });
    for sub in [&["store", "add-message"][..], &["message", "check"][..]] {
        t.cmd()
            .args(sub)
            .arg(&file)
            .assert_usage_error()
            .assert_stderr_has(&["content.resources", "turbo"]);
    }
}

#[test]
fn hostile_zero_memory_is_named() {
    let t = TestDir::new();
    let file = edited_message_file(&t, "zero.json", |c| {
        c["resources"]["memory"] = 0.into();
    });
    for sub in [&["store", "add-message"][..], &["message", "check"][..]] {
        t.cmd()
            .args(sub)
            .arg(&file)
            .assert_usage_error()
            .assert_stderr_has(&["content.resources.memory"]);
    }
    // And from the command line.
    let wasm = t.wasm("zero.wasm", &noop_guest());
    t.cmd()
        .args(["program", "create"])
        .arg(&wasm)
        .args(["--entrypoint", "zero.wasm", "--memory", "0"])
        .assert_usage_error()
        .assert_stderr_has(&["content.resources.memory"]);
}

/// Creates a program whose `--data` is `archive`; returns the failure's error text. The
/// refusal may come from `program create` (exit 2) or from `run` (outcome error).
fn data_refusal(t: &TestDir, name: &str, archive: &[u8]) -> String {
    let data = t.write(name, archive);
    let wasm = t.wasm("noop.wasm", &noop_guest());
    let out = t
        .cmd()
        .args(["program", "create"])
        .arg(&wasm)
        .args(["--entrypoint", "noop.wasm", "--no-http", "--data"])
        .arg(&data)
        .output();
    match out.code {
        0 => run_failure(t, &out.last_line()),
        2 => out.stderr.clone(),
        _ => panic!("unexpected exit code\n{out}"),
    }
}

#[test]
fn hostile_zip_with_dotdot_entry() {
    let t = TestDir::new();
    let evil = unique("evil.txt");
    let name = format!("../{evil}");
    let error = data_refusal(
        &t,
        "evil.zip",
        &zip(&[("ok.txt", b"ok"), (&name, b"pwned")]),
    );
    assert!(
        error.contains(&name),
        "the error does not name the entry {name:?}: {error}"
    );
    assert!(t.find_files(&evil).is_empty(), "{evil} was written");
    assert!(
        !std::env::temp_dir().join(&evil).exists(),
        "{evil} was written"
    );
}

#[test]
fn hostile_tar_with_absolute_entry() {
    let t = TestDir::new();
    let evil = unique("abs-evil.txt");
    let name = format!("/tmp/{evil}");
    let error = data_refusal(
        &t,
        "abs.tar.gz",
        &tar_gz(&[TarEntry::File(name.as_bytes(), b"pwned")]),
    );
    assert!(
        error.contains(&evil),
        "the error does not name the entry {name:?}: {error}"
    );
    assert!(!std::path::Path::new(&name).exists(), "{name} was written");
    assert!(
        t.find_files(&evil).is_empty(),
        "{evil} was written in the store"
    );
}

#[test]
fn hostile_zip_bomb_is_stopped_at_the_limit() {
    let t = TestDir::new();
    let bomb = t.path().join("bomb.zip");
    zip_bomb(&bomb, (1u64 << 30) + (100 << 20));
    let size = std::fs::metadata(&bomb).unwrap().len();
    assert!(size < 16 << 20, "the bomb is {size} bytes");
    let wasm = t.wasm("noop.wasm", &noop_guest());
    let out = t
        .cmd()
        .args(["program", "create"])
        .arg(&wasm)
        .args(["--entrypoint", "noop.wasm", "--no-http", "--data"])
        .arg(&bomb)
        .assert_ok();
    let started = Instant::now();
    let error = run_failure(&t, &out.last_line());
    let elapsed = started.elapsed();
    assert!(
        error.contains("limit") && error.contains("1073741824"),
        "the error does not mention the limit: {error}"
    );
    assert!(
        elapsed < Duration::from_secs(30),
        "stopping the bomb took {elapsed:?}"
    );
    // Nothing of the partial unpack is left behind.
    let mut left = 0u64;
    for sub in ["tmp", "cache"] {
        let mut stack = vec![t.store().join(sub)];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).unwrap().flatten() {
                let meta = e.metadata().unwrap();
                if meta.is_dir() {
                    stack.push(e.path());
                } else {
                    left += meta.len();
                }
            }
        }
    }
    assert!(
        left < 16 << 20,
        "{left} bytes left in the store's tmp/ and cache/"
    );
}

#[test]
fn hostile_missing_object() {
    let t = TestDir::new();
    let bytes = tar_gz(&[TarEntry::File(b"in.txt", b"x")]);
    let data = t.write("data.tar.gz", &bytes);
    let program = t.guest_program(
        &noop_guest(),
        &["--no-http", "--data", data.to_str().unwrap()],
    );
    t.run_json(&program, &[], 0).assert_outcome("ok");
    let hash = sha256_hex(&bytes);
    std::fs::remove_file(t.object_path(&hash)).unwrap();
    let error = run_failure(&t, &program);
    assert!(
        error.contains(&hash),
        "the error does not name the object: {error}"
    );
    assert!(
        error.contains("content.data"),
        "the error does not name the field: {error}"
    );
}

#[test]
fn hostile_corrupt_object() {
    let t = TestDir::new();
    let wasm = t.wasm("main.wasm", &noop_guest());
    let program = t.program(&wasm, &["--no-http"]);
    t.run_json(&program, &[], 0).assert_outcome("ok");
    // The compiled module is cached now; the corrupt code object must still be noticed.
    let hash = sha256_hex(&std::fs::read(&wasm).unwrap());
    std::fs::write(t.object_path(&hash), b"not the same bytes").unwrap();
    let error = run_failure(&t, &program);
    assert!(
        error.contains("corrupt"),
        "the error does not say corrupt: {error}"
    );
    assert!(
        error.contains(&hash),
        "the error does not name the object: {error}"
    );
}

#[test]
fn usage_errors_exit_2() {
    let t = TestDir::new();
    t.cmd()
        .args(["run", &"0".repeat(64)])
        .assert_usage_error()
        .assert_stderr_has(&["not in the store"]);
    let program = t.guest_program(&noop_guest(), &[]);
    t.cmd()
        .args(["run", &program, "--request", "GET nopath"])
        .assert_usage_error();
    let wasm = t.path().join("main.wasm");
    t.cmd()
        .args(["program", "create"])
        .arg(&wasm)
        .args(["--entrypoint", "main.wasm", "--volume", "floppy:/a"])
        .assert_usage_error()
        .assert_stderr_has(&["--volume"]);
    t.cmd()
        .args(["store", "add"])
        .arg(t.path().join("does-not-exist"))
        .assert_usage_error();
    t.cmd()
        .args(["--snapshots", "sometimes", "run", &program])
        .assert_usage_error()
        .assert_stderr_has(&["--snapshots", "off", "wait", "background"]);
    t.cmd()
        .args(["--snapshot-cache", "lots", "run", &program])
        .assert_usage_error()
        .assert_stderr_has(&["--snapshot-cache", "lots"]);
    // A WASI program has no interpreter to snapshot: any mode runs it.
    let echo = t.guest_program(&cgi_echo_guest(), &[]);
    for mode in ["off", "wait", "background", "on"] {
        t.cmd()
            .args(["--snapshots", mode, "--snapshot-cache", "64", "run", &echo])
            .args(["--request", "GET /"])
            .assert_ok();
    }
}

// ---------------------------------------------------------------------------------------------
// 10. Module cache
// ---------------------------------------------------------------------------------------------

#[test]
fn second_run_hits_the_module_cache() {
    let t = TestDir::new();
    let program = t.guest_program(&noop_guest(), &["--no-http"]);
    let first = t.run_json(&program, &[], 0);
    assert_eq!(first.str("module_cache"), "miss", "\n{first}");
    let second = t.run_json(&program, &[], 0);
    assert_eq!(second.str("module_cache"), "hit", "\n{second}");
}

// ---------------------------------------------------------------------------------------------
// 11. Fixtures
// ---------------------------------------------------------------------------------------------

#[test]
fn shared_fixtures_parse() {
    let t = TestDir::new();
    for name in ["seed-draft-program.json", "seed-draft-inline-code.json"] {
        let path = format!("{FIXTURES}{name}");
        let out = t.bare_cmd().args(["message", "check", &path]).assert_ok();
        let normalised = out.json();
        assert!(normalised.is_object(), "{name}: not an object\n{out}");
        out.assert_stderr_has(&["signature: none"]);
    }
    // The final-form fixture parses, but its signature recovers another account than its
    // sender: `message check` prints it and names why the network would refuse it.
    let out = t
        .bare_cmd()
        .args([
            "message",
            "check",
            &format!("{FIXTURES}program-message.json"),
        ])
        .assert_usage_error();
    assert!(out.json().is_object(), "{out}");
    out.assert_stderr_has(&[
        "7e16fff1323220229e6188472619ee92f870c5787df79b28cbf93797e2fa7486 is refused",
        "not by the sender 0x9319Ad3B7A8E0eE24f2E639c40D8eD124C5520Ba",
    ]);
    let out = t
        .cmd()
        .args([
            "store",
            "add-message",
            &format!("{FIXTURES}program-message.json"),
        ])
        .assert_usage_error();
    out.assert_stderr_has(&["item_content"]);
    assert!(
        !t.store()
            .join("messages/7e16fff1323220229e6188472619ee92f870c5787df79b28cbf93797e2fa7486.json")
            .exists(),
        "the unverifiable message was stored"
    );
}

// ---------------------------------------------------------------------------------------------
// Signing: `--key`, checked by an independent implementation
// ---------------------------------------------------------------------------------------------

/// A well-known test key (web3.js's documentation) and its address.
const TEST_KEY: &str = "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318";
const TEST_ADDRESS: &str = "0x2c7536E3605D9C16a7a3D7b1898e529396a65c23";

/// eth-account 0.14.0 (and what it needs), installed with pip once per target directory.
fn eth_account() -> PathBuf {
    let dir = PathBuf::from(concat!(env!("CARGO_TARGET_TMPDIR"), "/eth-account-0.14.0"));
    if dir.join("eth_account").is_dir() {
        return dir;
    }
    let partial = dir.with_extension(format!("partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    let out = std::process::Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(["--no-warn-conflicts", "--target"])
        .arg(&partial)
        .arg("eth-account==0.14.0")
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 -m pip: {e}"));
    assert!(
        out.status.success(),
        "pip install eth-account failed\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Another test process may have finished first: either copy will do.
    let _ = std::fs::rename(&partial, &dir);
    let _ = std::fs::remove_dir_all(&partial);
    dir
}

/// The account eth-account recovers from an EIP-191 `personal_sign` `signature` of `text`.
fn eth_account_recover(text: &str, signature: &str) -> String {
    let script = "import sys\n\
        from eth_account import Account\n\
        from eth_account.messages import encode_defunct\n\
        print(Account.recover_message(encode_defunct(text=sys.argv[1]), signature=sys.argv[2]))\n";
    let out = std::process::Command::new("python3")
        .env("PYTHONPATH", eth_account())
        .args(["-c", script, text, signature])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn program_create_with_a_key_signs_messages_eth_account_recovers() {
    let t = TestDir::new();
    // aleph-client's key file: the raw 32 bytes.
    let key = t.write("ethereum.key", hex::decode(TEST_KEY).unwrap());
    let wasm = t.wasm("main.wasm", &cgi_echo_guest());
    let out = t
        .cmd()
        .args(["program", "create"])
        .arg(&wasm)
        .args(["--entrypoint", "main.wasm", "--key"])
        .arg(&key)
        .assert_ok();
    assert!(!out.stderr.contains("unsigned"), "{out}");
    let program = stored_message(&t, &out.last_line());
    let code = stored_message(&t, program["content"]["code"]["ref"].as_str().unwrap());
    for msg in [&program, &code] {
        assert_eq!(msg["sender"], TEST_ADDRESS, "{msg}");
        assert_eq!(msg["content"]["address"], TEST_ADDRESS, "{msg}");
        let buffer = format!(
            "{}\n{}\n{}\n{}",
            msg["chain"].as_str().unwrap(),
            msg["sender"].as_str().unwrap(),
            msg["type"].as_str().unwrap(),
            msg["item_hash"].as_str().unwrap()
        );
        let signature = msg["signature"].as_str().unwrap();
        assert_eq!(
            eth_account_recover(&buffer, signature),
            TEST_ADDRESS,
            "{msg}"
        );
    }
    // `message check` says so too.
    let file = t.write("program.json", serde_json::to_vec(&program).unwrap());
    let check = t
        .bare_cmd()
        .args(["message", "check"])
        .arg(&file)
        .assert_ok();
    check.assert_stderr_has(&["signature: valid (EIP-191)", TEST_ADDRESS]);

    // A hex key file works as well; an owner other than the key's address is refused.
    let hex_key = t.write("hex.key", format!("0x{TEST_KEY}\n"));
    let out = t
        .cmd()
        .args(["store", "add"])
        .arg(&wasm)
        .arg("--key")
        .arg(&hex_key)
        .args(["--owner", "0x0000000000000000000000000000000000000001"])
        .assert_usage_error();
    out.assert_stderr_has(&[
        "--owner 0x0000000000000000000000000000000000000001",
        TEST_ADDRESS,
    ]);
    let out = t
        .cmd()
        .args(["store", "add"])
        .arg(&wasm)
        .arg("--key")
        .arg(&hex_key)
        .assert_ok();
    let stored = stored_message(&t, &out.last_line());
    assert_eq!(stored["sender"], TEST_ADDRESS);
    // Without a key the message is unsigned, and says so.
    let out = t.cmd().args(["store", "add"]).arg(&wasm).assert_ok();
    out.assert_stderr_has(&["is unsigned (no --key)"]);
    assert!(
        stored_message(&t, &out.last_line())
            .get("signature")
            .is_none_or(|s| s.is_null())
    );
    // A key file that is not a key is named, and its contents are not printed.
    let bad = t.write("bad.key", "not a key at all");
    let out = t
        .cmd()
        .args(["store", "add"])
        .arg(&wasm)
        .arg("--key")
        .arg(&bad)
        .assert_usage_error();
    out.assert_stderr_has(&["--key", "bad.key"]);
    assert!(!out.stderr.contains("not a key at all"), "{out}");
}

#[test]
fn commands_that_print_a_result_print_json_when_asked() {
    let t = TestDir::new();
    let key = t.write("ethereum.key", TEST_KEY);
    let file = t.write("hello.txt", "hello\n");
    let added = t
        .cmd()
        .args(["store", "add", "--json", "--key"])
        .arg(&key)
        .arg(&file)
        .assert_ok()
        .json();
    assert_eq!(added["file_hash"], sha256_hex(b"hello\n"));
    assert_eq!(added["sender"], TEST_ADDRESS);
    assert_eq!(added["signed"], true);
    let reference = added["ref"].as_str().unwrap();
    let message = t.write(
        "m.json",
        serde_json::to_vec(&stored_message(&t, reference)).unwrap(),
    );
    let checked = t
        .bare_cmd()
        .args(["message", "check", "--json"])
        .arg(&message)
        .assert_ok()
        .json();
    assert_eq!(checked["message"]["item_hash"], reference);
    assert_eq!(checked["signature"]["status"], "signed (EIP-191)");
    let other = TestDir::new();
    let taken = other
        .cmd()
        .args(["store", "add-message", "--json"])
        .arg(&message)
        .assert_ok()
        .json();
    assert_eq!(taken["item_hash"], reference);
    assert_eq!(taken["type"], "STORE");
    let runtimes = t
        .cmd()
        .args(["runtime", "list", "--json"])
        .assert_ok()
        .json();
    let wasi = runtimes
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "wasi")
        .unwrap_or_else(|| panic!("{runtimes}"));
    assert_eq!(wasi["kind"], "wasi");
    assert_eq!(wasi["interpreter_present"], true);
}

#[test]
fn message_check_names_why_a_tampered_message_is_refused() {
    let t = TestDir::new();
    let key = t.write("ethereum.key", TEST_KEY);
    let wasm = t.wasm("main.wasm", &cgi_echo_guest());
    let out = t
        .cmd()
        .args(["store", "add"])
        .arg(&wasm)
        .arg("--key")
        .arg(&key)
        .assert_ok();
    let mut msg = stored_message(&t, &out.last_line());
    let signature = msg["signature"].as_str().unwrap().to_string();
    // One byte of s changed.
    let tampered = format!(
        "{}{}{}",
        &signature[..80],
        if &signature[80..82] == "00" {
            "01"
        } else {
            "00"
        },
        &signature[82..]
    );
    msg["signature"] = tampered.into();
    let file = t.write("tampered.json", serde_json::to_vec(&msg).unwrap());
    let out = t
        .bare_cmd()
        .args(["message", "check"])
        .arg(&file)
        .assert_usage_error();
    out.assert_stderr_has(&["is refused", "not by the sender", TEST_ADDRESS]);
    // And a store will not take it.
    let other = TestDir::new();
    let out = other
        .cmd()
        .args(["store", "add-message"])
        .arg(&file)
        .assert_usage_error();
    out.assert_stderr_has(&["not by the sender"]);
}

// ---------------------------------------------------------------------------------------------
// `program upload`: aleph-client's words
// ---------------------------------------------------------------------------------------------

/// A stored PROGRAM message's content without what depends on the moment it was made (its
/// times and its code's STORE message), and the file its code ref names.
fn comparable_program(t: &TestDir, hash: &str) -> (serde_json::Value, serde_json::Value) {
    let msg = stored_message(t, hash);
    let mut content = msg["content"].clone();
    let code = stored_message(t, content["code"]["ref"].as_str().unwrap());
    content.as_object_mut().unwrap().remove("time");
    content["code"].as_object_mut().unwrap().remove("ref");
    let envelope = serde_json::json!({
        "sender": msg["sender"], "chain": msg["chain"], "channel": msg["channel"],
        "type": msg["type"], "code_file": code["content"]["item_hash"],
    });
    (content, envelope)
}

#[test]
fn program_upload_with_aleph_clients_flags_makes_the_message_program_create_makes() {
    let t = TestDir::new();
    let key = t.write("ethereum.key", hex::decode(TEST_KEY).unwrap());
    let wasm = t.wasm("main.wasm", &cgi_echo_guest());
    let (_, immutable) = t.store_add(&wasm);
    let upload = t
        .cmd()
        .args(["program", "upload"])
        .arg(&wasm)
        .arg("main.wasm")
        .args([
            "--memory",
            "64",
            "--vcpus",
            "2",
            "--timeout-seconds",
            "12.0",
        ])
        .args(["--internet", "--aleph-api", "--persistent", "--updatable"])
        .args(["--persistent-volume", "name=db,mount=/var/db,size_mib=5"])
        .args(["--ephemeral-volume", "mount=/var/tmp,size_mib=3"])
        .args([
            "--immutable-volume",
            &format!("ref={immutable},mount=/opt/lib"),
        ])
        .args(["--env-vars", "GREETING=hi, MODE=prod"])
        .args(["--channel", "MY-CHANNEL", "--private-key-file"])
        .arg(&key)
        .assert_ok();
    let create = t
        .cmd()
        .args(["program", "create"])
        .arg(&wasm)
        .args(["--entrypoint", "main.wasm"])
        .args(["--memory", "64", "--vcpus", "2", "--seconds", "12"])
        .args(["--internet", "--aleph-api", "--persistent", "--allow-amend"])
        .args([
            "--volume",
            "persistent:db:/var/db:5",
            "--volume",
            "ephemeral:/var/tmp:3",
        ])
        .args(["--variable", "GREETING=hi", "--variable", "MODE=prod"])
        .args(["--channel", "MY-CHANNEL", "--key"])
        .arg(&key)
        .assert_ok();
    let (uploaded, up_envelope) = comparable_program(&t, &upload.last_line());
    let (created, created_envelope) = comparable_program(&t, &create.last_line());
    assert_eq!(up_envelope, created_envelope);
    assert_eq!(up_envelope["channel"], "MY-CHANNEL");
    assert_eq!(up_envelope["sender"], TEST_ADDRESS);
    // The same message, but for the immutable volume `program create` has no use_latest for.
    let mut uploaded_volumes = uploaded["volumes"].as_array().unwrap().clone();
    let immutable_volume = uploaded_volumes.pop().unwrap();
    assert_eq!(immutable_volume["ref"], immutable.as_str());
    assert_eq!(immutable_volume["mount"], "/opt/lib");
    assert_eq!(immutable_volume["use_latest"], true);
    let mut uploaded = uploaded.clone();
    uploaded["volumes"] = uploaded_volumes.into();
    assert_eq!(uploaded, created);
    assert_eq!(created["allow_amend"], true);
    assert_eq!(created["resources"]["seconds"], 12);
    assert_eq!(created["variables"]["MODE"], "prod");
    assert_eq!(created["environment"]["internet"], true);

    // --json: one object naming what was written.
    let out = t
        .cmd()
        .args(["program", "upload"])
        .arg(&wasm)
        .args(["main.wasm", "--json"])
        .assert_ok();
    let summary = out.json();
    let hash = summary["item_hash"].as_str().unwrap();
    assert_eq!(summary["path"], format!("/vm/{hash}"));
    assert_eq!(summary["signed"], false);
    let program = stored_message(&t, hash);
    assert_eq!(
        program["content"]["resources"]["seconds"], 30,
        "aleph-client's default"
    );
    assert_eq!(program["content"]["resources"]["memory"], 128);

    // Bad flags are named.
    for (flag, value, needle) in [
        (
            "--persistent-volume",
            "name=db,mount=/x",
            "size_mib=… is missing",
        ),
        (
            "--ephemeral-volume",
            "mount=/x,size=3",
            "unknown key \"size\"",
        ),
        (
            "--immutable-volume",
            "ref=abc,mount=/x,use_latest=maybe",
            "not true or false",
        ),
        ("--env-vars", "JUSTAWORD", "is not K=V"),
        ("--timeout-seconds", "2.5", "whole number of seconds"),
    ] {
        let out = t
            .cmd()
            .args(["program", "upload"])
            .arg(&wasm)
            .args(["main.wasm", flag, value])
            .assert_usage_error();
        out.assert_stderr_has(&[flag, needle]);
    }
}

// ---------------------------------------------------------------------------------------------
// Regression tests for engine bugs found while writing this file
// ---------------------------------------------------------------------------------------------

#[test]
fn timeout_reports_the_fuel_it_burned() {
    let t = TestDir::new();
    let program = t.guest_program(
        &Wat::new().module("    (loop $forever (br $forever))"),
        &["--no-http", "--seconds", "1"],
    );
    let run = t.run_json(&program, &[], 1);
    run.assert_outcome("timeout");
    assert!(
        run.int("fuel_consumed") > 0,
        "a guest that spun for a second consumed no fuel?\n{run}"
    );
}

#[test]
fn out_of_memory_error_names_the_trap() {
    let t = TestDir::new();
    let program = t.guest_program(
        &Wat::new().module(
            r#"
    (block $refused
      (loop $grow
        (br_if $refused (i32.lt_s (memory.grow (i32.const 16)) (i32.const 0)))
        (br $grow)))
    unreachable"#,
        ),
        &["--no-http", "--memory", "16"],
    );
    let run = t.run_json(&program, &[], 1);
    run.assert_outcome("out_of_memory");
    run.assert_error_has(&["unreachable"]);
}

// --- Host capabilities for WASI modules ------------------------------------------------------

#[test]
fn a_wasi_module_reaches_the_network_through_aleph_host_when_granted() {
    let t = TestDir::new();
    let echo = common::loopback::Loopback::start();
    let port = echo.echo_addr().port();
    let guest = common::echo_client_guest(port, "");

    // Granted, and loopback allowed by the node: the echo comes back.
    let program = t.guest_program(&guest, &["--internet"]);
    let run = t.run_json(&program, &["--job", "--allow-net", "127.0.0.0/8"], 0);
    run.assert_outcome("ok");
    assert_eq!(run.stdout(), "ping", "\n{run}");

    // Granted, but the node forbids loopback: EACCES and the policy's reason.
    let run = t.run_json(&program, &["--job"], 1);
    run.assert_outcome("exit");
    assert_eq!(run.json["exit_code"], 2, "\n{run}");
    assert!(
        run.stdout()
            .starts_with("forbidden: 127.0.0.1 is a loopback address"),
        "\n{run}"
    );
    assert!(run.stdout().contains("--allow-net"), "\n{run}");

    // Not granted: EACCES naming the flag, whatever the node allows.
    let program = t.guest_program(&guest, &[]);
    let run = t.run_json(&program, &["--job", "--allow-net", "127.0.0.0/8"], 1);
    run.assert_outcome("exit");
    assert_eq!(run.json["exit_code"], 2, "\n{run}");
    assert_eq!(
        run.stdout(),
        "permission: content.environment.internet is false",
        "\n{run}"
    );
    assert_eq!(echo.echo_connections(), 1, "only the granted run connected");
}
