//! Tests for unpacking hostile archives and for reproducible packing.

use super::*;
use std::fs;
use std::io::{Cursor, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt as _, symlink};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use flate2::Compression;
use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use zip::write::SimpleFileOptions;

const MIB: u64 = 1 << 20;

// ---------------------------------------------------------------------------------------------
// Helpers

/// A scratch area: `root/dest` is the (empty) unpack destination, everything else is "outside".
struct Scratch {
    tmp: TempDir,
}

impl Scratch {
    fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        fs::create_dir(tmp.path().join("dest")).expect("dest");
        Self { tmp }
    }
    fn root(&self) -> &Path {
        self.tmp.path()
    }
    fn dest(&self) -> PathBuf {
        self.root().join("dest")
    }
    fn unpack(
        &self,
        bytes: &[u8],
        format: ArchiveFormat,
        limits: &UnpackLimits,
    ) -> Result<UnpackReport, ArchiveError> {
        let archive = self.root().join("archive.bin");
        fs::write(&archive, bytes).expect("write archive");
        unpack(&archive, format, &self.dest(), "data.bin", limits)
    }
    /// Names directly under the scratch root, apart from `dest` and `archive.bin`.
    fn outside_names(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.root())
            .expect("read root")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n != "dest" && n != "archive.bin")
            .collect();
        names.sort();
        names
    }
}

/// Builds tar streams with raw headers, bypassing the tar crate's own path checks.
struct RawTar {
    builder: tar::Builder<Vec<u8>>,
}

impl RawTar {
    fn new() -> Self {
        Self {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    fn header(kind: u8, name: &[u8], link: &[u8], mode: u32, size: u64) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::new(kind));
        header.set_mode(mode);
        header.set_size(size);
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        header.set_cksum();
        header
    }

    /// Appends an entry whose data is `data`.
    fn entry(mut self, kind: u8, name: &str, link: &str, mode: u32, data: &[u8]) -> Self {
        let header = Self::header(
            kind,
            name.as_bytes(),
            link.as_bytes(),
            mode,
            data.len() as u64,
        );
        self.builder.append(&header, data).expect("append");
        self
    }

    fn file(self, name: &str, data: &[u8]) -> Self {
        self.entry(b'0', name, "", 0o644, data)
    }
    fn dir(self, name: &str) -> Self {
        self.entry(b'5', name, "", 0o755, b"")
    }
    fn symlink(self, name: &str, target: &str) -> Self {
        self.entry(b'2', name, target, 0o777, b"")
    }
    fn hard_link(self, name: &str, target: &str) -> Self {
        self.entry(b'1', name, target, 0o644, b"")
    }

    /// Appends an entry of `size` zero bytes, streamed.
    fn zeros(mut self, kind: u8, name: &str, size: u64) -> Self {
        let header = Self::header(kind, name.as_bytes(), b"", 0o644, size);
        self.builder
            .append(&header, std::io::repeat(0).take(size))
            .expect("append");
        self
    }

    fn gz(self) -> Vec<u8> {
        let tar = self.builder.into_inner().expect("finish tar");
        gzip(&tar)
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(bytes).expect("gzip");
    gz.finish().expect("gzip finish")
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .expect("gunzip");
    out
}

/// One pax record `"<len> key=value\n"`.
fn pax_record(key: &str, value: &str) -> Vec<u8> {
    let body = format!(" {key}={value}\n");
    let mut len = body.len() + 1;
    while format!("{len}{body}").len() != len {
        len += 1;
    }
    format!("{len}{body}").into_bytes()
}

fn zip_bytes(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for (name, data) in entries {
        zip.start_file(*name, SimpleFileOptions::default())
            .expect("start file");
        zip.write_all(data).expect("write");
    }
    zip.finish().expect("finish").into_inner()
}

fn mode_of(path: &Path) -> u32 {
    fs::symlink_metadata(path).expect("metadata").mode() & 0o7777
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Path, kind, content (or link target) and executable bit of each entry.
type Snapshot = Vec<(String, &'static str, Vec<u8>, bool)>;

/// Kind, content (or link target) and executable bit of every path under `root`, sorted.
fn snapshot(root: &Path) -> Snapshot {
    fn visit(root: &Path, dir: &Path, out: &mut Snapshot) {
        for entry in fs::read_dir(dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            let rel = path
                .strip_prefix(root)
                .expect("prefix")
                .to_string_lossy()
                .into_owned();
            let meta = fs::symlink_metadata(&path).expect("metadata");
            let exec = meta.mode() & 0o111 != 0;
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&path).expect("read_link");
                out.push((
                    rel,
                    "link",
                    target.into_os_string().into_encoded_bytes(),
                    false,
                ));
            } else if meta.is_dir() {
                out.push((rel, "dir", Vec::new(), false));
                visit(root, &path, out);
            } else {
                out.push((rel, "file", fs::read(&path).expect("read"), exec));
            }
        }
    }
    let mut out = Vec::new();
    visit(root, root, &mut out);
    out.sort();
    out
}

/// One step of building a test tree.
type Step = Box<dyn Fn(&Path)>;

/// A tree exercising sort order, long names, empty dirs, exec bits and inside symlinks.
fn build_tree(root: &Path, reverse: bool) {
    let long_dir = "d".repeat(60);
    let long_file = format!("{long_dir}/{}", "f".repeat(70));
    let mut steps: Vec<Step> = vec![
        Box::new(|r| fs::create_dir_all(r.join("a")).expect("a")),
        Box::new(|r| fs::write(r.join("a-c"), b"dash").expect("a-c")),
        Box::new(|r| {
            fs::create_dir_all(r.join("a")).expect("a");
            fs::write(r.join("a/b"), b"inside a").expect("a/b")
        }),
        Box::new(|r| fs::write(r.join("B"), b"upper").expect("B")),
        Box::new(|r| fs::create_dir_all(r.join("empty")).expect("empty")),
        Box::new(|r| {
            fs::write(r.join("run.sh"), b"#!/bin/sh\necho hi\n").expect("run");
            fs::set_permissions(r.join("run.sh"), fs::Permissions::from_mode(0o700)).expect("chmod")
        }),
        Box::new(move |r| {
            fs::create_dir_all(r.join(&long_dir)).expect("long dir");
            fs::write(r.join(&long_file), vec![7u8; 100_000]).expect("long file")
        }),
        Box::new(|r| symlink("a/b", r.join("link-to-b")).expect("symlink")),
        Box::new(|r| {
            // Longer than the 100-byte tar link field, and inside the tree.
            let long_target = format!("{}a/b", "./".repeat(60));
            symlink(long_target, r.join("long-link")).expect("long symlink")
        }),
    ];
    if reverse {
        steps.reverse();
    }
    for step in &steps {
        step(root);
    }
}

// ---------------------------------------------------------------------------------------------
// Unpacking tar.gz

#[test]
fn tar_gz_happy_path_normalises_modes_and_copies_hard_links() {
    let bytes = RawTar::new()
        .dir("./")
        .dir("./bin/")
        .entry(b'0', "./bin/run", "", 0o4755, b"#!/bin/sh\n")
        .entry(b'0', "./data/a.txt", "", 0o600, b"alpha")
        .file("data/deep/b.txt", b"beta")
        .entry(b'5', "./locked/", "", 0o000, b"")
        .file("./locked/c", b"gamma")
        .symlink("./data/link", "a.txt")
        .symlink("lib/up", "../data/a.txt")
        .hard_link("./copy", "./data/a.txt")
        .gz();
    let s = Scratch::new();
    let report = s
        .unpack(&bytes, ArchiveFormat::TarGz, &UnpackLimits::default())
        .expect("unpack");
    let d = s.dest();
    assert_eq!(fs::read(d.join("bin/run")).expect("run"), b"#!/bin/sh\n");
    assert_eq!(
        mode_of(&d.join("bin/run")),
        0o755,
        "setuid dropped, exec kept"
    );
    assert_eq!(mode_of(&d.join("data/a.txt")), 0o644);
    assert_eq!(mode_of(&d.join("locked")), 0o755);
    assert_eq!(mode_of(&d.join("data/deep")), 0o755);
    assert_eq!(fs::read(d.join("data/deep/b.txt")).expect("b"), b"beta");
    assert_eq!(fs::read(d.join("locked/c")).expect("c"), b"gamma");
    assert_eq!(
        fs::read_link(d.join("data/link")).expect("link"),
        Path::new("a.txt")
    );
    assert_eq!(fs::read(d.join("lib/up")).expect("follow up"), b"alpha");
    assert_eq!(fs::read(d.join("copy")).expect("copy"), b"alpha");
    let ino = |p: &str| fs::metadata(d.join(p)).expect("meta").ino();
    assert_ne!(ino("copy"), ino("data/a.txt"), "hard links are copies");
    assert_eq!(
        report,
        UnpackReport {
            files: 5,
            dirs: 5, // bin, data, data/deep, locked, lib
            symlinks: 2,
            bytes: 10 + 5 + 4 + 5 + 5,
        }
    );
    assert!(s.outside_names().is_empty());
}

fn tar_error(bytes: &[u8]) -> (Scratch, ArchiveError) {
    let s = Scratch::new();
    let err = s
        .unpack(bytes, ArchiveFormat::TarGz, &UnpackLimits::default())
        .expect_err("must be refused");
    (s, err)
}

#[test]
fn tar_parent_dir_entry_is_refused() {
    let (s, err) = tar_error(&RawTar::new().file("../evil", b"x").gz());
    assert_eq!(
        err.to_string(),
        r#"archive entry "../evil": path escapes the mount (contains "..")"#
    );
    assert!(s.outside_names().is_empty());
    let (s, err) = tar_error(&RawTar::new().file("ok/../../evil", b"x").gz());
    assert!(matches!(
        err,
        ArchiveError::UnsafePath {
            rule: PathRule::ParentDir,
            ..
        }
    ));
    assert!(s.outside_names().is_empty());
}

#[test]
fn tar_absolute_and_empty_names_are_refused() {
    let (_s, err) = tar_error(&RawTar::new().file("/etc/passwd", b"root::0:0").gz());
    assert_eq!(
        err.to_string(),
        r#"archive entry "/etc/passwd": absolute path"#
    );
    let (_s, err) = tar_error(&RawTar::new().file("", b"x").gz());
    assert!(
        matches!(
            err,
            ArchiveError::UnsafePath {
                rule: PathRule::Empty,
                ..
            }
        ),
        "{err}"
    );
    let (_s, err) = tar_error(&RawTar::new().file("./.", b"x").gz());
    assert!(
        matches!(
            err,
            ArchiveError::UnsafePath {
                rule: PathRule::Root,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn tar_symlink_pointing_outside_is_refused() {
    let (s, err) = tar_error(&RawTar::new().dir("a/").symlink("a/link", "../../x").gz());
    assert_eq!(
        err.to_string(),
        r#"archive entry "a/link": symlink target "../../x" points outside the mount"#
    );
    assert!(!s.dest().join("a/link").exists());
    let (_s, err) = tar_error(&RawTar::new().symlink("top", "..").gz());
    assert!(matches!(
        err,
        ArchiveError::UnsafeSymlink {
            rule: SymlinkRule::Escapes,
            ..
        }
    ));
}

#[test]
fn tar_absolute_symlink_is_refused_before_anything_is_written_through_it() {
    let s = Scratch::new();
    let outside = s.root().join("outside");
    fs::create_dir(&outside).expect("outside");
    let target = outside.to_string_lossy().into_owned();
    let bytes = RawTar::new()
        .symlink("dir", &target)
        .file("dir/pwned", b"owned")
        .gz();
    let err = s
        .unpack(&bytes, ArchiveFormat::TarGz, &UnpackLimits::default())
        .expect_err("refused");
    assert!(
        matches!(
            err,
            ArchiveError::UnsafeSymlink {
                rule: SymlinkRule::Absolute,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().ends_with("is absolute"), "{err}");
    assert!(!outside.join("pwned").exists());
    let (_s, err) = tar_error(&RawTar::new().symlink("dir", "/tmp").gz());
    assert_eq!(
        err.to_string(),
        r#"archive entry "dir": symlink target "/tmp" is absolute"#
    );
}

#[test]
fn tar_dotdot_through_a_symlink_to_the_root_is_refused() {
    let (s, err) = tar_error(
        &RawTar::new()
            .symlink("link", ".")
            .file("link/../../x", b"x")
            .gz(),
    );
    assert!(
        matches!(
            err,
            ArchiveError::UnsafePath {
                rule: PathRule::ParentDir,
                ..
            }
        ),
        "{err}"
    );
    assert!(s.outside_names().is_empty());
}

#[test]
fn tar_entries_are_never_written_through_an_inside_symlink() {
    let (s, err) = tar_error(
        &RawTar::new()
            .dir("sub/")
            .symlink("inner", "sub")
            .file("inner/file", b"x")
            .gz(),
    );
    assert_eq!(
        err.to_string(),
        r#"archive entry "inner/file": parent "inner" is a symlink (entries are never written through symlinks)"#
    );
    assert!(!s.dest().join("sub/file").exists());
    assert!(s.outside_names().is_empty());
}

#[test]
fn tar_symlink_with_dotdot_after_a_name_is_refused() {
    // `s -> .` makes `../s/..` resolve above `u`'s parent, although it looks harmless lexically.
    let (_s, err) = tar_error(
        &RawTar::new()
            .symlink("s", ".")
            .dir("u/")
            .symlink("u/t", "../s/..")
            .gz(),
    );
    assert!(
        matches!(
            err,
            ArchiveError::UnsafeSymlink {
                rule: SymlinkRule::DotDotAfterName,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn tar_hard_links_outside_or_to_non_files_are_refused() {
    let (_s, err) = tar_error(&RawTar::new().hard_link("h", "../etc/passwd").gz());
    assert_eq!(
        err.to_string(),
        r#"archive entry "h": hard link target "../etc/passwd": path escapes the mount (contains "..")"#
    );
    let (_s, err) = tar_error(&RawTar::new().hard_link("h", "/etc/passwd").gz());
    assert!(
        matches!(
            err,
            ArchiveError::UnsafeHardLink {
                rule: PathRule::Absolute,
                ..
            }
        ),
        "{err}"
    );
    let (_s, err) = tar_error(&RawTar::new().hard_link("h", "missing").gz());
    assert!(matches!(err, ArchiveError::HardLinkTarget { .. }), "{err}");
    let (_s, err) = tar_error(
        &RawTar::new()
            .file("a", b"a")
            .symlink("l", "a")
            .hard_link("h", "l")
            .gz(),
    );
    assert!(matches!(err, ArchiveError::HardLinkTarget { .. }), "{err}");
    let (_s, err) = tar_error(&RawTar::new().dir("d/").hard_link("h", "d").gz());
    assert!(matches!(err, ArchiveError::HardLinkTarget { .. }), "{err}");
}

#[test]
fn tar_device_and_fifo_entries_are_refused() {
    for (kind, what) in [
        (b'3', "character device"),
        (b'4', "block device"),
        (b'6', "fifo"),
    ] {
        let (s, err) = tar_error(&RawTar::new().entry(kind, "dev", "", 0o666, b"").gz());
        assert_eq!(
            err.to_string(),
            format!(r#"archive entry "dev": {what} entries are not allowed"#)
        );
        assert!(!s.dest().join("dev").exists());
    }
}

#[test]
fn tar_duplicates_and_file_parents_are_refused() {
    let (_s, err) = tar_error(&RawTar::new().file("a", b"1").file("a", b"2").gz());
    assert!(matches!(err, ArchiveError::AlreadyExists { .. }), "{err}");
    let (_s, err) = tar_error(&RawTar::new().file("a", b"1").dir("a/").gz());
    assert!(matches!(err, ArchiveError::AlreadyExists { .. }), "{err}");
    let (_s, err) = tar_error(&RawTar::new().file("a", b"1").file("a/b", b"2").gz());
    assert!(
        matches!(err, ArchiveError::ParentNotDirectory { .. }),
        "{err}"
    );
    // A directory named twice is fine.
    let s = Scratch::new();
    let report = s
        .unpack(
            &RawTar::new().dir("d/").dir("d").gz(),
            ArchiveFormat::TarGz,
            &UnpackLimits::default(),
        )
        .expect("repeat dir");
    assert_eq!(report.dirs, 1);
}

#[test]
fn tar_byte_bomb_fails_fast_at_the_limit() {
    let bytes = RawTar::new().zeros(b'0', "zeros", 64 * MIB).gz();
    assert!(
        bytes.len() < 1024 * 1024,
        "compressed bomb is small: {}",
        bytes.len()
    );
    let s = Scratch::new();
    let limits = UnpackLimits {
        max_total_bytes: MIB,
        ..UnpackLimits::default()
    };
    let started = Instant::now();
    let err = s
        .unpack(&bytes, ArchiveFormat::TarGz, &limits)
        .expect_err("bomb");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(
        err.to_string(),
        "archive expands past the 1048576-byte limit"
    );
    assert!(fs::metadata(s.dest().join("zeros")).expect("partial").len() <= MIB);
}

#[test]
fn tar_byte_limit_is_exact() {
    let bytes = RawTar::new().file("a", &[1; 600]).file("b", &[2; 400]).gz();
    let limits = |max_total_bytes| UnpackLimits {
        max_total_bytes,
        max_entries: 10,
    };
    let s = Scratch::new();
    let report = s
        .unpack(&bytes, ArchiveFormat::TarGz, &limits(1000))
        .expect("fits");
    assert_eq!(report.bytes, 1000);
    let s = Scratch::new();
    let err = s
        .unpack(&bytes, ArchiveFormat::TarGz, &limits(999))
        .expect_err("too big");
    assert!(
        matches!(err, ArchiveError::TooManyBytes { limit: 999 }),
        "{err}"
    );
}

#[test]
fn tar_entry_count_bomb_is_refused() {
    let mut tar = RawTar::new();
    for i in 0..1000 {
        tar = tar.file(&format!("f{i}"), b"");
    }
    let s = Scratch::new();
    let limits = UnpackLimits {
        max_entries: 100,
        ..UnpackLimits::default()
    };
    let err = s
        .unpack(&tar.gz(), ArchiveFormat::TarGz, &limits)
        .expect_err("bomb");
    assert_eq!(err.to_string(), "archive has more than 100 entries");
    assert_eq!(fs::read_dir(s.dest()).expect("dest").count(), 100);
}

#[test]
fn tar_oversized_extension_header_is_refused_without_buffering_it() {
    let bytes = RawTar::new()
        .zeros(b'L', "././@LongLink", 16 * MIB)
        .file("x", b"")
        .gz();
    let (_s, err) = tar_error(&bytes);
    assert!(matches!(err, ArchiveError::CorruptTarGz(_)), "{err}");
    assert!(err.to_string().contains("extension header"), "{err}");
}

#[test]
fn tar_data_on_non_file_entries_is_charged() {
    let bytes = RawTar::new().zeros(b'5', "d/", 8 * MIB).gz();
    let s = Scratch::new();
    let limits = UnpackLimits {
        max_total_bytes: MIB,
        ..UnpackLimits::default()
    };
    let err = s
        .unpack(&bytes, ArchiveFormat::TarGz, &limits)
        .expect_err("charged");
    assert!(matches!(err, ArchiveError::TooManyBytes { .. }), "{err}");
}

#[test]
fn tar_long_names_and_pax_paths_are_resolved_and_checked() {
    let long = format!("{}/{}", "n".repeat(80), "m".repeat(80));
    let mut name_record = long.clone().into_bytes();
    name_record.push(0);
    let bytes = RawTar::new()
        .entry(b'L', "././@LongLink", "", 0o644, &name_record)
        .file("truncated", b"long")
        .entry(b'x', "pax", "", 0o644, &pax_record("path", "pax/name"))
        .file("ignored", b"pax")
        .gz();
    let s = Scratch::new();
    s.unpack(&bytes, ArchiveFormat::TarGz, &UnpackLimits::default())
        .expect("unpack");
    assert_eq!(fs::read(s.dest().join(&long)).expect("long"), b"long");
    assert_eq!(fs::read(s.dest().join("pax/name")).expect("pax"), b"pax");
    assert!(!s.dest().join("truncated").exists());

    let evil = RawTar::new()
        .entry(b'x', "pax", "", 0o644, &pax_record("path", "../evil"))
        .file("innocent", b"x")
        .gz();
    let (s, err) = tar_error(&evil);
    assert!(
        matches!(
            err,
            ArchiveError::UnsafePath {
                rule: PathRule::ParentDir,
                ..
            }
        ),
        "{err}"
    );
    assert!(s.outside_names().is_empty());

    let lying = RawTar::new()
        .entry(b'x', "pax", "", 0o644, &pax_record("size", "999999"))
        .file("f", b"x")
        .gz();
    let (_s, err) = tar_error(&lying);
    assert!(matches!(err, ArchiveError::CorruptTarGz(_)), "{err}");
}

#[test]
fn tar_corrupt_inputs_are_reported() {
    let (_s, err) = tar_error(b"this is not gzip at all");
    assert!(err.to_string().starts_with("corrupt tar.gz: "), "{err}");
    let good = RawTar::new().file("a", &[9; 200_000]).gz();
    let (_s, err) = tar_error(&good[..good.len() / 2]);
    assert!(err.to_string().starts_with("corrupt tar.gz: "), "{err}");
}

#[test]
fn unpack_requires_an_empty_destination() {
    let s = Scratch::new();
    fs::write(s.dest().join("existing"), b"x").expect("write");
    let err = s
        .unpack(
            &RawTar::new().file("a", b"a").gz(),
            ArchiveFormat::TarGz,
            &UnpackLimits::default(),
        )
        .expect_err("not empty");
    assert!(
        matches!(err, ArchiveError::DestinationNotEmpty { .. }),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// Unpacking zip

#[test]
fn zip_happy_path() {
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default();
    zip.add_directory("docs/", opts).expect("dir");
    zip.start_file("docs/readme.txt", opts.unix_permissions(0o600))
        .expect("file");
    zip.write_all(b"hello").expect("write");
    zip.start_file("bin/tool", opts.unix_permissions(0o4755))
        .expect("exec");
    zip.write_all(b"\x7fELF").expect("write");
    zip.add_symlink("docs/link", "readme.txt", opts)
        .expect("symlink");
    let bytes = zip.finish().expect("finish").into_inner();
    let s = Scratch::new();
    let report = s
        .unpack(&bytes, ArchiveFormat::Zip, &UnpackLimits::default())
        .expect("unpack");
    let d = s.dest();
    assert_eq!(
        fs::read(d.join("docs/readme.txt")).expect("readme"),
        b"hello"
    );
    assert_eq!(mode_of(&d.join("docs/readme.txt")), 0o644);
    assert_eq!(mode_of(&d.join("bin/tool")), 0o755);
    assert_eq!(mode_of(&d.join("bin")), 0o755);
    assert_eq!(
        fs::read_link(d.join("docs/link")).expect("link"),
        Path::new("readme.txt")
    );
    assert_eq!(
        report,
        UnpackReport {
            files: 2,
            dirs: 2,
            symlinks: 1,
            bytes: 9
        }
    );
}

#[test]
fn zip_unsafe_names_are_refused() {
    let cases: &[(&str, PathRule)] = &[
        ("../evil", PathRule::ParentDir),
        ("/abs/file", PathRule::Absolute),
        ("C:/windows/x", PathRule::DrivePrefix),
        ("c:evil", PathRule::DrivePrefix),
        ("a\\..\\..\\evil", PathRule::Backslash),
        ("nul\0byte", PathRule::Nul),
    ];
    for (name, rule) in cases {
        let s = Scratch::new();
        let err = s
            .unpack(
                &zip_bytes(&[(name, b"x")]),
                ArchiveFormat::Zip,
                &UnpackLimits::default(),
            )
            .expect_err(name);
        match &err {
            ArchiveError::UnsafePath { rule: got, .. } => assert_eq!(got, rule, "{name:?}"),
            other => panic!("{name:?}: unexpected {other}"),
        }
        assert!(s.outside_names().is_empty());
        assert_eq!(fs::read_dir(s.dest()).expect("dest").count(), 0);
    }
    let s = Scratch::new();
    let err = s
        .unpack(
            &zip_bytes(&[("../evil", b"x")]),
            ArchiveFormat::Zip,
            &UnpackLimits::default(),
        )
        .expect_err("evil");
    assert_eq!(
        err.to_string(),
        r#"archive entry "../evil": path escapes the mount (contains "..")"#
    );
}

#[test]
fn zip_symlinks_follow_the_same_rules() {
    for (target, rule) in [
        ("../x", SymlinkRule::Escapes),
        ("/etc", SymlinkRule::Absolute),
    ] {
        let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
        zip.add_symlink("l", target, SimpleFileOptions::default())
            .expect("symlink");
        let bytes = zip.finish().expect("finish").into_inner();
        let s = Scratch::new();
        let err = s
            .unpack(&bytes, ArchiveFormat::Zip, &UnpackLimits::default())
            .expect_err(target);
        assert!(
            matches!(&err, ArchiveError::UnsafeSymlink { rule: got, .. } if *got == rule),
            "{err}"
        );
    }
}

#[test]
fn zip_bomb_fails_fast_at_the_limit() {
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    zip.start_file("zeros", SimpleFileOptions::default())
        .expect("start");
    std::io::copy(&mut std::io::repeat(0).take(64 * MIB), &mut zip).expect("fill");
    let bytes = zip.finish().expect("finish").into_inner();
    assert!(
        bytes.len() < 1024 * 1024,
        "compressed bomb is small: {}",
        bytes.len()
    );
    let s = Scratch::new();
    let limits = UnpackLimits {
        max_total_bytes: MIB,
        ..UnpackLimits::default()
    };
    let started = Instant::now();
    let err = s
        .unpack(&bytes, ArchiveFormat::Zip, &limits)
        .expect_err("bomb");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(
        err.to_string(),
        "archive expands past the 1048576-byte limit"
    );
    assert!(fs::metadata(s.dest().join("zeros")).expect("partial").len() <= MIB);
}

#[test]
fn zip_entry_count_bomb_is_refused_up_front() {
    let names: Vec<String> = (0..500).map(|i| format!("f{i}")).collect();
    let entries: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b""[..])).collect();
    let s = Scratch::new();
    let limits = UnpackLimits {
        max_entries: 100,
        ..UnpackLimits::default()
    };
    let err = s
        .unpack(&zip_bytes(&entries), ArchiveFormat::Zip, &limits)
        .expect_err("bomb");
    assert_eq!(err.to_string(), "archive has more than 100 entries");
    assert_eq!(fs::read_dir(s.dest()).expect("dest").count(), 0);
}

#[test]
fn zip_special_file_modes_are_refused() {
    let mut bytes = zip_bytes(&[("pipe", b"")]);
    // Rewrite the central directory's external attributes to a fifo mode.
    let at = bytes
        .windows(4)
        .position(|w| w == b"PK\x01\x02")
        .expect("central header");
    bytes[at + 38..at + 42].copy_from_slice(&(0o010_644u32 << 16).to_le_bytes());
    let s = Scratch::new();
    let err = s
        .unpack(&bytes, ArchiveFormat::Zip, &UnpackLimits::default())
        .expect_err("fifo");
    assert_eq!(
        err.to_string(),
        r#"archive entry "pipe": fifo entries are not allowed"#
    );
}

#[test]
fn not_a_zip_is_reported() {
    let s = Scratch::new();
    let err = s
        .unpack(
            b"PK but not really a zip",
            ArchiveFormat::Zip,
            &UnpackLimits::default(),
        )
        .expect_err("not zip");
    assert!(err.to_string().starts_with("not a zip archive: "), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Plain files

#[test]
fn plain_file_is_copied_with_a_fixed_mode() {
    let s = Scratch::new();
    let archive = s.root().join("input");
    fs::write(&archive, b"plain bytes").expect("write");
    fs::set_permissions(&archive, fs::Permissions::from_mode(0o4777)).expect("chmod");
    let report = unpack(
        &archive,
        ArchiveFormat::Plain,
        &s.dest(),
        "sub/main.py",
        &UnpackLimits::default(),
    )
    .expect("plain");
    assert_eq!(
        fs::read(s.dest().join("sub/main.py")).expect("read"),
        b"plain bytes"
    );
    assert_eq!(mode_of(&s.dest().join("sub/main.py")), 0o644);
    assert_eq!(
        report,
        UnpackReport {
            files: 1,
            dirs: 1,
            symlinks: 0,
            bytes: 11
        }
    );
}

#[test]
fn plain_file_name_and_size_are_checked() {
    let s = Scratch::new();
    let archive = s.root().join("input");
    fs::write(&archive, vec![0u8; 5000]).expect("write");
    for (name, rule) in [
        ("../x", PathRule::ParentDir),
        ("/x", PathRule::Absolute),
        ("", PathRule::Empty),
        ("dir/", PathRule::NotAFileName),
        (".", PathRule::Root),
    ] {
        let err = unpack(
            &archive,
            ArchiveFormat::Plain,
            &s.dest(),
            name,
            &UnpackLimits::default(),
        )
        .expect_err(name);
        assert!(
            matches!(&err, ArchiveError::UnsafePath { rule: got, .. } if *got == rule),
            "{name:?}: {err}"
        );
    }
    let limits = UnpackLimits {
        max_total_bytes: 4096,
        ..UnpackLimits::default()
    };
    let err = unpack(&archive, ArchiveFormat::Plain, &s.dest(), "big", &limits).expect_err("big");
    assert!(
        matches!(err, ArchiveError::TooManyBytes { limit: 4096 }),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// Packing

fn pack_to(src: &Path, format: PackFormat, out_dir: &Path, name: &str) -> (PackReport, Vec<u8>) {
    let out = out_dir.join(name);
    let report = pack(src, format, &out).expect("pack");
    (report, fs::read(&out).expect("read archive"))
}

#[test]
fn packing_the_same_tree_twice_gives_identical_bytes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let tree = tmp.path().join("tree");
    fs::create_dir(&tree).expect("tree");
    build_tree(&tree, false);
    for format in [PackFormat::TarGz, PackFormat::Zip] {
        let (r1, b1) = pack_to(&tree, format, tmp.path(), "one");
        let (r2, b2) = pack_to(&tree, format, tmp.path(), "two");
        assert_eq!(b1, b2, "{format:?}");
        assert_eq!(r1, r2, "{format:?}");
        assert_eq!(r1.sha256, sha256_hex(&b1));
        assert_eq!(r1.bytes, b1.len() as u64);
        match format {
            PackFormat::TarGz => {
                assert_eq!(r1.tar_sha256, Some(sha256_hex(&gunzip(&b1))));
            }
            PackFormat::Zip => assert_eq!(r1.tar_sha256, None),
        }
    }
}

#[test]
fn packing_is_independent_of_creation_order_times_and_permissions() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    fs::create_dir(&one).expect("one");
    fs::create_dir(&two).expect("two");
    build_tree(&one, false);
    build_tree(&two, true);
    // Different mtimes and non-exec permission bits in the second tree.
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    for file in ["a-c", "a/b", "B"] {
        let f = fs::File::options()
            .write(true)
            .open(two.join(file))
            .expect("open");
        f.set_modified(old).expect("mtime");
        fs::set_permissions(two.join(file), fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    fs::set_permissions(two.join("run.sh"), fs::Permissions::from_mode(0o744)).expect("chmod");
    fs::set_permissions(two.join("empty"), fs::Permissions::from_mode(0o700)).expect("chmod");
    for format in [PackFormat::TarGz, PackFormat::Zip] {
        let (r1, b1) = pack_to(&one, format, tmp.path(), "one.out");
        let (r2, b2) = pack_to(&two, format, tmp.path(), "two.out");
        assert!(b1 == b2, "{format:?}: archives differ");
        assert_eq!(r1.sha256, r2.sha256);
        assert_eq!(r1.tar_sha256, r2.tar_sha256);
    }
}

#[test]
fn tar_gz_pack_has_fixed_headers_and_sorted_entries() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let tree = tmp.path().join("tree");
    fs::create_dir(&tree).expect("tree");
    build_tree(&tree, false);
    let (report, bytes) = pack_to(&tree, PackFormat::TarGz, tmp.path(), "out.tar.gz");
    // gzip header: magic, deflate, no flags (no file name), mtime 0, OS 255.
    assert_eq!(&bytes[..4], &[0x1f, 0x8b, 8, 0]);
    assert_eq!(&bytes[4..8], &[0, 0, 0, 0]);
    assert_eq!(bytes[9], 255);
    let tar_bytes = gunzip(&bytes);
    let mut archive = tar::Archive::new(tar_bytes.as_slice());
    let mut names = Vec::new();
    for entry in archive.entries().expect("entries") {
        let entry = entry.expect("entry");
        let header = entry.header();
        assert!(header.as_gnu().is_some(), "GNU headers");
        assert_eq!(header.mtime().expect("mtime"), 0);
        assert_eq!(header.uid().expect("uid"), 0);
        assert_eq!(header.gid().expect("gid"), 0);
        assert_eq!(header.username_bytes(), Some(&b""[..]));
        assert_eq!(header.groupname_bytes(), Some(&b""[..]));
        let name = String::from_utf8(entry.path_bytes().into_owned()).expect("utf8");
        let expected_mode = match header.entry_type() {
            tar::EntryType::Directory => 0o755,
            tar::EntryType::Symlink => 0o777,
            _ if name == "run.sh" => 0o755,
            _ => 0o644,
        };
        assert_eq!(header.mode().expect("mode"), expected_mode, "{name}");
        names.push(name);
    }
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "entries sorted by byte path");
    assert_eq!(&names[..4], &["B", "a-c", "a/", "a/b"]);
    assert!(names.contains(&"empty/".to_owned()));
    assert_eq!(report.entries, names.len() as u64);
    assert_eq!(report.tar_sha256, Some(sha256_hex(&tar_bytes)));
}

#[test]
fn zip_pack_has_fixed_metadata() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let tree = tmp.path().join("tree");
    fs::create_dir(&tree).expect("tree");
    build_tree(&tree, false);
    let (report, bytes) = pack_to(&tree, PackFormat::Zip, tmp.path(), "out.zip");
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).expect("zip");
    let mut names = Vec::new();
    for i in 0..zip.len() {
        let file = zip.by_index(i).expect("entry");
        let name = file.name().to_owned();
        let last = file.last_modified().expect("time");
        assert_eq!(
            (
                last.year(),
                last.month(),
                last.day(),
                last.hour(),
                last.minute(),
                last.second()
            ),
            (1980, 1, 1, 0, 0, 0)
        );
        assert!(
            file.extra_data().is_none_or(|e| e.is_empty()),
            "{name}: extra data"
        );
        let mode = file.unix_mode().expect("unix mode");
        let expected = if file.is_dir() {
            0o040_755
        } else if file.is_symlink() {
            0o120_777
        } else if name == "run.sh" {
            0o100_755
        } else {
            0o100_644
        };
        assert_eq!(mode, expected, "{name}");
        names.push(name);
    }
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert_eq!(&names[..4], &["B", "a-c", "a/", "a/b"]);
    assert_eq!(report.entries, names.len() as u64);
}

#[test]
fn pack_then_unpack_round_trips() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let tree = tmp.path().join("tree");
    fs::create_dir(&tree).expect("tree");
    build_tree(&tree, false);
    let expected = snapshot(&tree);
    for (format, unpack_format) in [
        (PackFormat::TarGz, ArchiveFormat::TarGz),
        (PackFormat::Zip, ArchiveFormat::Zip),
    ] {
        let out = tmp.path().join("archive");
        let report = pack(&tree, format, &out).expect("pack");
        let dest = tmp.path().join(format!("dest-{format:?}"));
        fs::create_dir(&dest).expect("dest");
        let unpacked =
            unpack(&out, unpack_format, &dest, "", &UnpackLimits::default()).expect("unpack");
        assert_eq!(snapshot(&dest), expected, "{format:?}");
        assert_eq!(
            unpacked.files + unpacked.dirs + unpacked.symlinks,
            report.entries,
            "{format:?}"
        );
    }
}

#[test]
fn packed_symlinks_are_stored_not_followed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let secret = tmp.path().join("host-secret.txt");
    let marker = b"HOST-SECRET-3f1c9a-DO-NOT-LEAK";
    fs::write(&secret, marker).expect("secret");
    let tree = tmp.path().join("tree");
    fs::create_dir(&tree).expect("tree");
    symlink(&secret, tree.join("leak")).expect("symlink");
    symlink(tmp.path(), tree.join("leak-dir")).expect("dir symlink");
    let target = secret.to_string_lossy().into_owned();

    let (_, gz) = pack_to(&tree, PackFormat::TarGz, tmp.path(), "out.tar.gz");
    let tar_bytes = gunzip(&gz);
    assert!(!tar_bytes.windows(marker.len()).any(|w| w == marker));
    let mut archive = tar::Archive::new(tar_bytes.as_slice());
    let mut kinds = Vec::new();
    for entry in archive.entries().expect("entries") {
        let entry = entry.expect("entry");
        let link = entry
            .link_name_bytes()
            .map(|l| String::from_utf8_lossy(&l).into_owned());
        kinds.push((entry.header().entry_type(), entry.size(), link));
    }
    assert_eq!(kinds.len(), 2);
    assert_eq!(kinds[0], (tar::EntryType::Symlink, 0, Some(target.clone())));
    assert_eq!(kinds[1].0, tar::EntryType::Symlink);

    let (_, zip_bytes) = pack_to(&tree, PackFormat::Zip, tmp.path(), "out.zip");
    let mut zip = zip::ZipArchive::new(Cursor::new(zip_bytes)).expect("zip");
    assert_eq!(zip.len(), 2);
    let mut file = zip.by_name("leak").expect("leak");
    assert!(file.is_symlink());
    let mut content = Vec::new();
    file.read_to_end(&mut content).expect("read");
    assert_eq!(content, target.as_bytes());
}

#[test]
fn packing_a_socket_fails_naming_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let tree = tmp.path().join("tree");
    fs::create_dir_all(tree.join("sub")).expect("tree");
    let _listener = std::os::unix::net::UnixListener::bind(tree.join("sub/sock")).expect("bind");
    for format in [PackFormat::TarGz, PackFormat::Zip] {
        let err = pack(&tree, format, &tmp.path().join("out")).expect_err("socket");
        assert_eq!(
            err.to_string(),
            r#"cannot pack "sub/sock": it is a socket (only regular files, directories and symlinks are packed)"#
        );
    }
}

#[test]
fn packing_into_the_source_tree_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let err = pack(
        tmp.path(),
        PackFormat::TarGz,
        &tmp.path().join("out.tar.gz"),
    )
    .expect_err("inside");
    assert!(
        matches!(err, ArchiveError::OutputInsideSource { .. }),
        "{err}"
    );
}

#[test]
fn zip_pack_refuses_names_zip_readers_would_misread() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let tree = tmp.path().join("tree");
    fs::create_dir(&tree).expect("tree");
    fs::write(tree.join("a\\b"), b"x").expect("write");
    let err = pack(&tree, PackFormat::Zip, &tmp.path().join("out.zip")).expect_err("backslash");
    assert!(
        matches!(err, ArchiveError::UnsupportedZipName { .. }),
        "{err}"
    );
    // The same name is an ordinary tar name.
    pack(&tree, PackFormat::TarGz, &tmp.path().join("out.tar.gz")).expect("tar accepts it");
}
