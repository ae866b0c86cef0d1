//! The runtimes shipped inside the binary: their source manifests and files, embedded from the
//! repository's `runtimes/<name>/` at compile time, and the fixed STORE message that gives each
//! stored manifest the same ref on every node.
//!
//! A shipped runtime is stored exactly like `aleph-wasm runtime add runtimes/<name>` would store
//! it, with the zero address as owner and time 0; so the ref depends only on the files.

use crate::message::{self, Message, MessageType};

/// The owner of the STORE messages of built-in (and directory-added) runtimes.
pub const BUILTIN_OWNER: &str = "0x0000000000000000000000000000000000000000";

/// The runtimes whose stored manifest is their source text byte for byte (no files to hash):
/// name and manifest text. [`SHIPPED`] lists every shipped runtime.
pub const BUILTINS: &[(&str, &str)] = &[("wasi", WASI_MANIFEST)];

const WASI_MANIFEST: &str = include_str!("../../../runtimes/wasi/runtime.json");

/// A runtime shipped inside the binary.
#[derive(Debug, Clone, Copy)]
pub struct Shipped {
    /// Its name (`wasi`, `python-3.12`), also its directory under `runtimes/`.
    pub name: &'static str,
    /// The source manifest (`runtime.json`), listing files by name.
    pub manifest: &'static str,
    /// The files the manifest lists: path relative to the runtime's directory, and bytes.
    pub files: &'static [(&'static str, &'static [u8])],
}

impl Shipped {
    /// The bytes of the file at `relative` (`boot.py`, `licences/zlib.txt`), if shipped.
    pub fn file(&self, relative: &str) -> Option<&'static [u8]> {
        self.files
            .iter()
            .find(|(path, _)| *path == relative)
            .map(|(_, bytes)| *bytes)
    }
}

macro_rules! shipped_files {
    ($dir:literal: $($file:literal),* $(,)?) => {
        &[$(($file, include_bytes!(concat!("../../../runtimes/", $dir, "/", $file)))),*]
    };
}

/// A Python runtime's files: the bootstrap both Python runtimes share (`python-3.11-pydantic`
/// links to `python-3.12`'s files), then its own licence texts.
macro_rules! python_files {
    ($dir:literal: $($licence:literal),* $(,)?) => {
        shipped_files!($dir: "boot.py", "hostnet.py", "threads.py", "standins.py", "wsgi.py",
            "aleph_sdk.py", "tzdata.zip", $($licence),*)
    };
}

/// Every runtime shipped inside the binary.
pub const SHIPPED: &[Shipped] = &[
    Shipped {
        name: "wasi",
        manifest: WASI_MANIFEST,
        files: &[],
    },
    Shipped {
        name: "python-3.12",
        manifest: include_str!("../../../runtimes/python-3.12/runtime.json"),
        files: python_files!("python-3.12":
            "licences/cpython-psf-2.0.txt",
            "licences/webassembly-language-runtimes-apache-2.0.txt",
            "licences/webassembly-language-runtimes-notice.txt",
            "licences/zlib.txt",
            "licences/bzip2.txt",
            "licences/sqlite-public-domain.txt",
            "licences/libmpdec-bsd-2-clause.txt",
            "licences/expat-mit.txt",
            "licences/wasi-libc-apache-2.0-with-llvm-exception.txt",
            "licences/wasi-libc-musl-mit.txt",
            "licences/tzdata-apache-2.0.txt",
        ),
    },
    Shipped {
        name: "python-3.11-pydantic",
        manifest: include_str!("../../../runtimes/python-3.11-pydantic/runtime.json"),
        files: python_files!("python-3.11-pydantic":
            "licences/cpython-psf-2.0.txt",
            "licences/zlib.txt",
            "licences/bzip2.txt",
            "licences/sqlite-public-domain.txt",
            "licences/libmpdec-bsd-2-clause.txt",
            "licences/expat-mit.txt",
            "licences/wasi-libc-apache-2.0-with-llvm-exception.txt",
            "licences/wasi-libc-musl-mit.txt",
            "licences/compiler-rt-apache-2.0-with-llvm-exception.txt",
            "licences/rust-std-mit-apache-2.0.txt",
            "licences/pydantic-core-mit.txt",
            "licences/pydantic-core-crates.txt",
            "licences/pydantic-mit.txt",
            "licences/annotated-types-mit.txt",
            "licences/typing-extensions-psf-2.0.txt",
            "licences/typing-inspection-mit.txt",
            "licences/tzdata-apache-2.0.txt",
        ),
    },
];

/// The shipped runtime called `name`.
pub fn shipped(name: &str) -> Option<&'static Shipped> {
    SHIPPED.iter().find(|s| s.name == name)
}

/// The names of the shipped runtimes, comma-separated (for error messages).
pub fn shipped_names() -> String {
    SHIPPED
        .iter()
        .map(|s| s.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The STORE message that stores a runtime manifest object under the fixed owner and time.
pub fn store_message(manifest_hash: &str, size: usize) -> Message {
    let content = serde_json::json!({
        "address": BUILTIN_OWNER,
        "time": 0.0,
        "item_type": "storage",
        "item_hash": manifest_hash,
        "size": size,
        "content_type": "application/json",
    });
    message::build_inline(MessageType::Store, "ETH", BUILTIN_OWNER, 0.0, content)
}
