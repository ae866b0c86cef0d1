//! Unpacking untrusted archives into a directory (see the module docs for the policy).

use std::io::{self, BufReader, Read};
use std::mem;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use cap_std::ambient_authority;
use cap_std::fs::{Dir, OpenOptions, Permissions, PermissionsExt};
use flate2::read::MultiGzDecoder;

use super::{
    ArchiveError, ArchiveFormat, CleanPath, Dialect, PathRule, UnpackLimits, UnpackReport,
    check_symlink_target, clean_path, io_err, show,
};

/// Copy buffer size; also the granularity of the byte limit check.
const CHUNK: usize = 64 * 1024;

/// Cap on one tar extension header (GNU long name/link, pax record), which is held in memory.
const MAX_EXTENSION_BYTES: u64 = 1 << 20;

/// Unpacks `archive` (a file on disk) of `format` into the existing empty directory `dest`.
///
/// [`ArchiveFormat::Plain`]: the single file is copied to `dest/<plain_name>` (`plain_name` is
/// checked like an entry name; it may contain `/` to create directories). Other formats
/// ignore `plain_name`.
///
/// Fails on the first entry that breaks a rule of the module docs, or when `limits` are
/// passed; `dest` may then be left partially filled and should be deleted by the caller.
pub fn unpack(
    archive: &Path,
    format: ArchiveFormat,
    dest: &Path,
    plain_name: &str,
    limits: &UnpackLimits,
) -> Result<UnpackReport, ArchiveError> {
    let root = Dir::open_ambient_dir(dest, ambient_authority())
        .map_err(io_err(format!("opening unpack destination {dest:?}")))?;
    let mut listing = root
        .entries()
        .map_err(io_err(format!("listing unpack destination {dest:?}")))?;
    if listing.next().is_some() {
        return Err(ArchiveError::DestinationNotEmpty {
            path: dest.to_path_buf(),
        });
    }
    let mut out = Extractor {
        root,
        limits: *limits,
        entries: 0,
        charged: 0,
        report: UnpackReport::default(),
        buf: vec![0; CHUNK],
        last_parent: None,
    };
    match format {
        ArchiveFormat::Plain => unpack_plain(archive, plain_name, &mut out)?,
        ArchiveFormat::Zip => unpack_zip(archive, &mut out)?,
        ArchiveFormat::TarGz => unpack_tar_gz(archive, &mut out)?,
        ArchiveFormat::Squashfs => super::squashfs::unpack_squashfs(archive, &mut out)?,
    }
    Ok(out.report)
}

/// Copies a plain file.
fn unpack_plain(archive: &Path, name: &str, out: &mut Extractor) -> Result<(), ArchiveError> {
    let clean =
        clean_path(name.as_bytes(), Dialect::Tar).map_err(|rule| unsafe_path(name, rule))?;
    if clean.depth == 0 {
        return Err(unsafe_path(name, PathRule::Root));
    }
    if clean.dir_syntax {
        return Err(unsafe_path(name, PathRule::NotAFileName));
    }
    let mut file = std::fs::File::open(archive).map_err(io_err(format!("opening {archive:?}")))?;
    out.count_entry()?;
    out.write_file(name, &clean, false, &mut file, &|e| ArchiveError::Io {
        context: format!("reading {archive:?}"),
        source: e,
    })?;
    Ok(())
}

/// Kind of a zip entry, from its name and unix mode.
enum ZipKind {
    Dir,
    File { exec: bool },
    Symlink,
    Other(&'static str),
}

/// Unpacks a zip archive.
fn unpack_zip(archive: &Path, out: &mut Extractor) -> Result<(), ArchiveError> {
    let file = std::fs::File::open(archive).map_err(io_err(format!("opening {archive:?}")))?;
    let mut zip = zip::ZipArchive::new(BufReader::new(file))
        .map_err(|e| ArchiveError::NotZip(e.to_string()))?;
    // The central directory is already parsed: refuse an entry-count bomb before any work.
    if zip.len() as u64 > out.limits.max_entries {
        return Err(ArchiveError::TooManyEntries {
            limit: out.limits.max_entries,
        });
    }
    for index in 0..zip.len() {
        let (name, mode) = {
            let raw = zip
                .by_index_raw(index)
                .map_err(|e| ArchiveError::CorruptZip(format!("entry #{index}: {e}")))?;
            (raw.name().to_owned(), raw.unix_mode())
        };
        out.count_entry()?;
        let clean =
            clean_path(name.as_bytes(), Dialect::Zip).map_err(|rule| unsafe_path(&name, rule))?;
        let kind = match mode.map(|m| m & 0o170_000) {
            Some(0o040_000) => ZipKind::Dir,
            Some(0o120_000) => ZipKind::Symlink,
            None | Some(0) | Some(0o100_000) => ZipKind::File {
                exec: mode.is_some_and(|m| m & 0o111 != 0),
            },
            Some(0o010_000) => ZipKind::Other("fifo"),
            Some(0o020_000) => ZipKind::Other("character device"),
            Some(0o060_000) => ZipKind::Other("block device"),
            Some(0o140_000) => ZipKind::Other("socket"),
            Some(_) => ZipKind::Other("unknown file type"),
        };
        let corrupt =
            |e: &dyn std::fmt::Display| ArchiveError::CorruptZip(format!("entry {name:?}: {e}"));
        match kind {
            ZipKind::Other(kind) => return Err(unsupported(&name, kind)),
            ZipKind::Dir | ZipKind::File { .. } if clean.dir_syntax => {
                out.make_dir(&name, &clean)?
            }
            ZipKind::Dir => out.make_dir(&name, &clean)?,
            ZipKind::Symlink if clean.dir_syntax => {
                return Err(unsupported(&name, "symlink with a directory name"));
            }
            ZipKind::File { exec } => {
                let mut data = zip.by_index(index).map_err(|e| corrupt(&e))?;
                out.write_file(&name, &clean, exec, &mut data, &|e| corrupt(&e))?;
            }
            ZipKind::Symlink => {
                let mut data = zip.by_index(index).map_err(|e| corrupt(&e))?;
                let mut target = Vec::new();
                (&mut data)
                    .take(super::MAX_SYMLINK_TARGET as u64 + 1)
                    .read_to_end(&mut target)
                    .map_err(|e| corrupt(&e))?;
                out.charge(target.len() as u64)?;
                out.make_symlink(&name, &clean, &target)?;
            }
        }
    }
    Ok(())
}

/// Tar extension records waiting for the member they describe.
#[derive(Default)]
struct Pending {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<Vec<u8>>,
}

/// Unpacks a gzip-compressed tar stream.
///
/// The tar reader runs in raw mode so that extension records are read here with a size cap
/// instead of being buffered whole.
fn unpack_tar_gz(archive: &Path, out: &mut Extractor) -> Result<(), ArchiveError> {
    let file = std::fs::File::open(archive).map_err(io_err(format!("opening {archive:?}")))?;
    let mut tar = tar::Archive::new(MultiGzDecoder::new(BufReader::new(file)));
    let entries = tar.entries().map_err(|e| corrupt_tar(&e))?.raw(true);
    let mut pending = Pending::default();
    for item in entries {
        let mut entry = item.map_err(|e| corrupt_tar(&e))?;
        let kind = entry.header().entry_type().as_byte();
        let size = entry.size();
        if matches!(kind, b'L' | b'K' | b'x' | b'g') {
            if size > MAX_EXTENSION_BYTES {
                return Err(ArchiveError::CorruptTarGz(format!(
                    "extension header of type '{}' has {size} bytes (the cap is {MAX_EXTENSION_BYTES})",
                    kind as char
                )));
            }
            out.charge(size)?;
            let mut data = Vec::with_capacity(size as usize);
            (&mut entry)
                .take(MAX_EXTENSION_BYTES)
                .read_to_end(&mut data)
                .map_err(|e| corrupt_tar(&e))?;
            let slot = match kind {
                b'L' => &mut pending.long_name,
                b'K' => &mut pending.long_link,
                b'x' => &mut pending.pax,
                _ => {
                    // A pax global header: counted, otherwise ignored.
                    out.count_entry()?;
                    continue;
                }
            };
            if slot.replace(data).is_some() {
                return Err(ArchiveError::CorruptTarGz(format!(
                    "two extension headers of type '{}' for one entry",
                    kind as char
                )));
            }
            continue;
        }
        out.count_entry()?;
        let pending = mem::take(&mut pending);
        let header = entry.header();
        let mut name = pending
            .long_name
            .map(trim_nul)
            .unwrap_or_else(|| header.path_bytes().into_owned());
        let mut link = pending
            .long_link
            .map(trim_nul)
            .or_else(|| header.link_name_bytes().map(|l| l.into_owned()));
        if let Some(pax) = &pending.pax {
            for ext in tar::PaxExtensions::new(pax) {
                let ext = ext.map_err(|e| corrupt_tar(&e))?;
                match ext.key_bytes() {
                    b"path" => name = ext.value_bytes().to_vec(),
                    b"linkpath" => link = Some(ext.value_bytes().to_vec()),
                    b"size" if ext.value_bytes() != size.to_string().as_bytes() => {
                        return Err(ArchiveError::CorruptTarGz(format!(
                            "entry {:?}: pax size {:?} differs from the header size {size} (size overrides are not supported)",
                            show(&name),
                            show(ext.value_bytes())
                        )));
                    }
                    key if key.starts_with(b"GNU.sparse.") => {
                        return Err(unsupported(&show(&name), "GNU sparse file"));
                    }
                    _ => {}
                }
            }
        }
        let display = show(&name);
        let clean = clean_path(&name, Dialect::Tar).map_err(|rule| unsafe_path(&display, rule))?;
        match kind {
            b'0' | b'7' if !clean.dir_syntax => {
                let mode = header.mode().map_err(|e| corrupt_tar(&e))?;
                let corrupt =
                    |e: io::Error| ArchiveError::CorruptTarGz(format!("entry {display:?}: {e}"));
                let written =
                    out.write_file(&display, &clean, mode & 0o111 != 0, &mut entry, &corrupt)?;
                if written != size {
                    return Err(ArchiveError::CorruptTarGz(format!(
                        "entry {display:?}: truncated ({written} of {size} bytes)"
                    )));
                }
            }
            b'0' | b'7' | b'5' => {
                out.charge(size)?;
                out.make_dir(&display, &clean)?;
            }
            b'2' | b'1' => {
                out.charge(size)?;
                let Some(target) = link else {
                    return Err(ArchiveError::CorruptTarGz(format!(
                        "entry {display:?}: link without a target"
                    )));
                };
                if kind == b'2' {
                    out.make_symlink(&display, &clean, &target)?;
                } else {
                    out.copy_hard_link(&display, &clean, &target)?;
                }
            }
            b'3' => return Err(unsupported(&display, "character device")),
            b'4' => return Err(unsupported(&display, "block device")),
            b'6' => return Err(unsupported(&display, "fifo")),
            b'S' => return Err(unsupported(&display, "GNU sparse file")),
            other => {
                return Err(unsupported(
                    &display,
                    &format!("tar type {:?}", char::from(other)),
                ));
            }
        }
    }
    if pending.long_name.is_some() || pending.long_link.is_some() || pending.pax.is_some() {
        return Err(ArchiveError::CorruptTarGz(
            "extension header without a following entry".into(),
        ));
    }
    Ok(())
}

/// Drops the NUL terminator(s) of a GNU long name record.
fn trim_nul(mut bytes: Vec<u8>) -> Vec<u8> {
    while bytes.last() == Some(&0) {
        bytes.pop();
    }
    bytes
}

fn corrupt_tar(e: &io::Error) -> ArchiveError {
    ArchiveError::CorruptTarGz(e.to_string())
}

pub(super) fn unsafe_path(entry: &str, rule: PathRule) -> ArchiveError {
    ArchiveError::UnsafePath {
        entry: entry.to_owned(),
        rule,
    }
}

pub(super) fn unsupported(entry: &str, kind: &str) -> ArchiveError {
    ArchiveError::UnsupportedEntry {
        entry: entry.to_owned(),
        kind: kind.to_owned(),
    }
}

fn mode(bits: u32) -> Permissions {
    Permissions::from_mode(bits)
}

/// Writes validated entries under the root, enforcing the limits.
pub(super) struct Extractor {
    root: Dir,
    pub(super) limits: UnpackLimits,
    entries: u64,
    /// Bytes charged against `max_total_bytes`.
    charged: u64,
    report: UnpackReport,
    buf: Vec<u8>,
    /// The most recent parent directory verified to be a chain of real directories.
    last_parent: Option<PathBuf>,
}

impl Extractor {
    pub(super) fn count_entry(&mut self) -> Result<(), ArchiveError> {
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(ArchiveError::TooManyEntries {
                limit: self.limits.max_entries,
            });
        }
        Ok(())
    }

    pub(super) fn charge(&mut self, bytes: u64) -> Result<(), ArchiveError> {
        self.charged = self.charged.saturating_add(bytes);
        if self.charged > self.limits.max_total_bytes {
            return Err(ArchiveError::TooManyBytes {
                limit: self.limits.max_total_bytes,
            });
        }
        Ok(())
    }

    /// Makes sure every parent of `path` is a real directory, creating missing ones.
    fn prepare_parent(&mut self, entry: &str, path: &Path) -> Result<(), ArchiveError> {
        let Some(parent) = path.parent() else {
            return Ok(());
        };
        if parent.as_os_str().is_empty() || self.last_parent.as_deref() == Some(parent) {
            return Ok(());
        }
        let mut prefix = PathBuf::new();
        for part in parent.components() {
            prefix.push(part);
            match self.root.symlink_metadata(&prefix) {
                Ok(meta) if meta.is_dir() => {}
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(ArchiveError::ThroughSymlink {
                        entry: entry.to_owned(),
                        parent: show(prefix.as_os_str().as_bytes()),
                    });
                }
                Ok(_) => {
                    return Err(ArchiveError::ParentNotDirectory {
                        entry: entry.to_owned(),
                        parent: show(prefix.as_os_str().as_bytes()),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => self.create_dir(entry, &prefix)?,
                Err(e) => return Err(io_err(format!("checking parent of {entry:?}"))(e)),
            }
        }
        self.last_parent = Some(parent.to_path_buf());
        Ok(())
    }

    fn create_dir(&mut self, entry: &str, path: &Path) -> Result<(), ArchiveError> {
        let context = || format!("creating directory for {entry:?}");
        self.root.create_dir(path).map_err(io_err(context()))?;
        self.root
            .set_permissions(path, mode(0o755))
            .map_err(io_err(context()))?;
        self.report.dirs += 1;
        Ok(())
    }

    /// Fails unless nothing exists at `path` (symlinks are not followed).
    fn ensure_absent(&self, entry: &str, path: &Path) -> Result<(), ArchiveError> {
        match self.root.symlink_metadata(path) {
            Ok(_) => Err(ArchiveError::AlreadyExists {
                entry: entry.to_owned(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(format!("checking {entry:?}"))(e)),
        }
    }

    pub(super) fn make_dir(&mut self, entry: &str, clean: &CleanPath) -> Result<(), ArchiveError> {
        if clean.depth == 0 {
            return Ok(()); // `./`: the root already exists.
        }
        self.prepare_parent(entry, &clean.path)?;
        match self.root.symlink_metadata(&clean.path) {
            Ok(meta) if meta.is_dir() => Ok(()),
            Ok(_) => Err(ArchiveError::AlreadyExists {
                entry: entry.to_owned(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => self.create_dir(entry, &clean.path),
            Err(e) => Err(io_err(format!("checking {entry:?}"))(e)),
        }
    }

    /// Streams `data` into a new file, charging every byte; returns the bytes written.
    pub(super) fn write_file(
        &mut self,
        entry: &str,
        clean: &CleanPath,
        exec: bool,
        data: &mut dyn Read,
        read_error: &dyn Fn(io::Error) -> ArchiveError,
    ) -> Result<u64, ArchiveError> {
        if clean.depth == 0 {
            return Err(unsafe_path(entry, PathRule::Root));
        }
        self.prepare_parent(entry, &clean.path)?;
        self.ensure_absent(entry, &clean.path)?;
        let context = || format!("writing {entry:?}");
        let mut file = self
            .root
            .open_with(&clean.path, OpenOptions::new().write(true).create_new(true))
            .map_err(io_err(context()))?;
        let mut buf = mem::take(&mut self.buf);
        let copied = self.copy_counted(data, &mut file, &mut buf, read_error, &context);
        self.buf = buf;
        let copied = copied?;
        file.set_permissions(mode(if exec { 0o755 } else { 0o644 }))
            .map_err(io_err(context()))?;
        self.report.files += 1;
        self.report.bytes += copied;
        Ok(copied)
    }

    fn copy_counted(
        &mut self,
        data: &mut dyn Read,
        file: &mut cap_std::fs::File,
        buf: &mut [u8],
        read_error: &dyn Fn(io::Error) -> ArchiveError,
        context: &dyn Fn() -> String,
    ) -> Result<u64, ArchiveError> {
        use std::io::Write;
        let mut copied = 0u64;
        loop {
            let n = match data.read(buf) {
                Ok(0) => return Ok(copied),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(read_error(e)),
            };
            self.charge(n as u64)?;
            file.write_all(&buf[..n]).map_err(io_err(context()))?;
            copied += n as u64;
        }
    }

    pub(super) fn make_symlink(
        &mut self,
        entry: &str,
        clean: &CleanPath,
        target: &[u8],
    ) -> Result<(), ArchiveError> {
        if clean.depth == 0 {
            return Err(unsafe_path(entry, PathRule::Root));
        }
        check_symlink_target(target, clean).map_err(|rule| ArchiveError::UnsafeSymlink {
            entry: entry.to_owned(),
            target: show(target),
            rule,
        })?;
        self.prepare_parent(entry, &clean.path)?;
        self.ensure_absent(entry, &clean.path)?;
        let target = Path::new(std::ffi::OsStr::from_bytes(target));
        self.root
            .symlink(target, &clean.path)
            .map_err(io_err(format!("creating symlink {entry:?}")))?;
        self.report.symlinks += 1;
        Ok(())
    }

    /// Materialises a tar hard link as a copy of a regular file unpacked earlier.
    fn copy_hard_link(
        &mut self,
        entry: &str,
        clean: &CleanPath,
        target: &[u8],
    ) -> Result<(), ArchiveError> {
        let shown = show(target);
        let refuse = |rule| ArchiveError::UnsafeHardLink {
            entry: entry.to_owned(),
            target: shown.clone(),
            rule,
        };
        let source = clean_path(target, Dialect::Tar).map_err(refuse)?;
        if source.depth == 0 {
            return Err(refuse(PathRule::Root));
        }
        let not_a_file = || ArchiveError::HardLinkTarget {
            entry: entry.to_owned(),
            target: shown.clone(),
        };
        // The target must be reached through real directories only, and be a regular file.
        let mut prefix = PathBuf::new();
        for part in source.path.components() {
            prefix.push(part);
            let meta = self
                .root
                .symlink_metadata(&prefix)
                .map_err(|_| not_a_file())?;
            let last = prefix == source.path;
            if (last && !meta.is_file()) || (!last && !meta.is_dir()) {
                return Err(not_a_file());
            }
        }
        let mut file = self
            .root
            .open(&source.path)
            .map_err(io_err(format!("opening hard link target of {entry:?}")))?;
        let exec = file
            .metadata()
            .map_err(io_err(format!("reading hard link target of {entry:?}")))?
            .permissions()
            .mode()
            & 0o111
            != 0;
        let read_error = |e| io_err(format!("reading hard link target of {entry:?}"))(e);
        self.write_file(entry, clean, exec, &mut file, &read_error)?;
        Ok(())
    }
}
