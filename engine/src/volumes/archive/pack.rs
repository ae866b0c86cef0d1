//! Packing a guest-written tree into a reproducible archive (see the module docs for the format).

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use cap_std::ambient_authority;
use cap_std::fs::{Dir, FileType, FileTypeExt, PermissionsExt};
use flate2::{Compression, GzBuilder};
use sha2::{Digest, Sha256};
use zip::write::SimpleFileOptions;

use super::{ArchiveError, Dialect, PackFormat, PackReport, clean_path, io_err, show};

/// Deflate level used by both formats.
const LEVEL: u32 = 6;
/// Gzip OS byte: 255, "unknown".
const GZIP_OS: u8 = 255;
/// Tar name and link fields hold this many bytes; longer values go in GNU `L`/`K` records.
const TAR_NAME_FIELD: usize = 100;

/// Packs the tree under `src` into `out` (created or truncated), byte-reproducibly.
///
/// Symlinks are stored as links (never followed), and nothing outside `src` is read. Fails
/// on sockets, fifos and devices, naming them, and when `out` lies inside `src`. On failure
/// `out` may hold a partial archive.
pub fn pack(src: &Path, format: PackFormat, out: &Path) -> Result<PackReport, ArchiveError> {
    let root = Dir::open_ambient_dir(src, ambient_authority())
        .map_err(io_err(format!("opening pack source {src:?}")))?;
    refuse_output_inside(src, out)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(out)
        .map_err(io_err(format!("creating archive {out:?}")))?;
    match format {
        PackFormat::TarGz => {
            let mut sink = TarGzSink::new(file);
            walk(&root, &mut sink)?;
            sink.finish(out)
        }
        PackFormat::Zip => {
            let mut sink = ZipSink {
                zip: zip::ZipWriter::new(BufWriter::new(file)),
                entries: 0,
            };
            walk(&root, &mut sink)?;
            sink.finish(out)
        }
    }
}

/// Fails when `out` would be written inside `src` (the walk would read the half-written archive).
fn refuse_output_inside(src: &Path, out: &Path) -> Result<(), ArchiveError> {
    let src_real = src
        .canonicalize()
        .map_err(io_err(format!("resolving pack source {src:?}")))?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let parent_real = parent
        .canonicalize()
        .map_err(io_err(format!("resolving the directory of {out:?}")))?;
    if parent_real.starts_with(&src_real) {
        return Err(ArchiveError::OutputInsideSource {
            out: out.to_path_buf(),
            src: src.to_path_buf(),
        });
    }
    Ok(())
}

/// Receives the tree's entries in archive order. Names are full archive paths.
trait Sink {
    fn dir(&mut self, name: &[u8]) -> Result<(), ArchiveError>;
    fn file(
        &mut self,
        name: &[u8],
        exec: bool,
        size: u64,
        data: &mut dyn Read,
    ) -> Result<(), ArchiveError>;
    fn symlink(&mut self, name: &[u8], target: &[u8]) -> Result<(), ArchiveError>;
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Symlink,
}

struct Child {
    name: OsString,
    kind: Kind,
    /// The name, plus `/` for directories: sorting siblings by this key and walking depth-first
    /// yields the full paths in byte order (no sibling key is a prefix of a directory key).
    key: Vec<u8>,
}

/// One open directory on the walk stack.
struct Frame {
    dir: Dir,
    /// Archive path of this directory, with a trailing `/` (empty for the root).
    prefix: Vec<u8>,
    children: std::vec::IntoIter<Child>,
}

/// Walks the tree depth-first with an explicit stack (a deep tree cannot overflow the call stack).
fn walk(root: &Dir, sink: &mut dyn Sink) -> Result<(), ArchiveError> {
    let root = root.try_clone().map_err(io_err("opening pack source"))?;
    let children = list(&root, b"")?;
    let mut stack = vec![Frame {
        dir: root,
        prefix: Vec::new(),
        children: children.into_iter(),
    }];
    while let Some(frame) = stack.last_mut() {
        let Some(child) = frame.children.next() else {
            stack.pop();
            continue;
        };
        let path = [frame.prefix.as_slice(), child.key.as_slice()].concat();
        let context = || format!("packing {:?}", show(&path));
        match child.kind {
            Kind::Dir => {
                sink.dir(&path)?;
                let dir = frame.dir.open_dir(&child.name).map_err(io_err(context()))?;
                let children = list(&dir, &path)?;
                stack.push(Frame {
                    dir,
                    prefix: path,
                    children: children.into_iter(),
                });
            }
            Kind::File => {
                let mut file = frame.dir.open(&child.name).map_err(io_err(context()))?;
                let meta = file.metadata().map_err(io_err(context()))?;
                if !meta.is_file() {
                    return Err(ArchiveError::UnsupportedFile {
                        path: show(&path),
                        kind: "file that changed type while being packed",
                    });
                }
                let exec = meta.permissions().mode() & 0o111 != 0;
                let mut data = Exact {
                    inner: &mut file,
                    remaining: meta.len(),
                };
                sink.file(&path, exec, meta.len(), &mut data)?;
            }
            Kind::Symlink => {
                let target = frame
                    .dir
                    .read_link_contents(&child.name)
                    .map_err(io_err(context()))?;
                sink.symlink(&path, target.as_os_str().as_bytes())?;
            }
        }
    }
    Ok(())
}

/// Lists one directory, sorted by key; fails on anything but files, directories and symlinks.
fn list(dir: &Dir, prefix: &[u8]) -> Result<Vec<Child>, ArchiveError> {
    let context = || format!("listing {:?}", show(prefix));
    let mut children = Vec::new();
    for item in dir.entries().map_err(io_err(context()))? {
        let item = item.map_err(io_err(context()))?;
        let name = item.file_name();
        let file_type = item.file_type().map_err(io_err(context()))?;
        let kind = if file_type.is_dir() {
            Kind::Dir
        } else if file_type.is_file() {
            Kind::File
        } else if file_type.is_symlink() {
            Kind::Symlink
        } else {
            return Err(ArchiveError::UnsupportedFile {
                path: show(&[prefix, name.as_bytes()].concat()),
                kind: describe(file_type),
            });
        };
        let mut key = name.as_bytes().to_vec();
        if kind == Kind::Dir {
            key.push(b'/');
        }
        children.push(Child { name, kind, key });
    }
    children.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    Ok(children)
}

fn describe(file_type: FileType) -> &'static str {
    if file_type.is_fifo() {
        "fifo"
    } else if file_type.is_socket() {
        "socket"
    } else if file_type.is_char_device() {
        "character device"
    } else if file_type.is_block_device() {
        "block device"
    } else {
        "special file"
    }
}

/// Reads exactly `remaining` bytes (the size already written in the header), or fails.
struct Exact<'a> {
    inner: &'a mut dyn Read,
    remaining: u64,
}

impl Read for Exact<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let max = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while being packed",
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Hashes and counts everything written through it.
struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W> HashWriter<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

type GzOut = flate2::write::GzEncoder<HashWriter<BufWriter<std::fs::File>>>;

/// Writes GNU tar records through a hashing tee into a fixed-header gzip stream.
struct TarGzSink {
    tar: tar::Builder<HashWriter<GzOut>>,
    entries: u64,
}

impl TarGzSink {
    fn new(file: std::fs::File) -> Self {
        let gz = GzBuilder::new().mtime(0).operating_system(GZIP_OS).write(
            HashWriter::new(BufWriter::new(file)),
            Compression::new(LEVEL),
        );
        Self {
            tar: tar::Builder::new(HashWriter::new(gz)),
            entries: 0,
        }
    }

    /// A header with every field fixed except those given.
    fn header(kind: u8, mode: u32, size: u64) -> tar::Header {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::new(kind));
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_size(size);
        header
    }

    /// Emits a GNU `L` or `K` record carrying a value too long for its header field.
    fn long_record(&mut self, kind: u8, value: &[u8], path: &[u8]) -> Result<(), ArchiveError> {
        let mut header = Self::header(kind, 0o644, value.len() as u64 + 1);
        let label = b"././@LongLink";
        header.as_old_mut().name[..label.len()].copy_from_slice(label);
        header.set_cksum();
        self.tar
            .append(&header, value.chain(&[0u8][..]))
            .map_err(io_err(format!("writing {:?}", show(path))))
    }

    fn append(
        &mut self,
        kind: u8,
        name: &[u8],
        mode: u32,
        size: u64,
        link: &[u8],
        data: &mut dyn Read,
    ) -> Result<(), ArchiveError> {
        if name.len() >= TAR_NAME_FIELD {
            self.long_record(b'L', name, name)?;
        }
        if link.len() >= TAR_NAME_FIELD {
            self.long_record(b'K', link, name)?;
        }
        let mut header = Self::header(kind, mode, size);
        let fields = header.as_old_mut();
        let n = name.len().min(TAR_NAME_FIELD);
        fields.name[..n].copy_from_slice(&name[..n]);
        let n = link.len().min(TAR_NAME_FIELD);
        fields.linkname[..n].copy_from_slice(&link[..n]);
        header.set_cksum();
        self.tar
            .append(&header, data)
            .map_err(io_err(format!("writing {:?}", show(name))))?;
        self.entries += 1;
        Ok(())
    }

    fn finish(self, out: &Path) -> Result<PackReport, ArchiveError> {
        let context = || format!("finishing archive {out:?}");
        let tee = self.tar.into_inner().map_err(io_err(context()))?;
        let tar_sha256 = hex::encode(tee.hasher.finalize());
        let counted = tee.inner.finish().map_err(io_err(context()))?;
        let mut buffered = counted.inner;
        buffered.flush().map_err(io_err(context()))?;
        Ok(PackReport {
            sha256: hex::encode(counted.hasher.finalize()),
            tar_sha256: Some(tar_sha256),
            bytes: counted.bytes,
            entries: self.entries,
        })
    }
}

impl Sink for TarGzSink {
    fn dir(&mut self, name: &[u8]) -> Result<(), ArchiveError> {
        self.append(b'5', name, 0o755, 0, b"", &mut io::empty())
    }

    fn file(
        &mut self,
        name: &[u8],
        exec: bool,
        size: u64,
        data: &mut dyn Read,
    ) -> Result<(), ArchiveError> {
        let mode = if exec { 0o755 } else { 0o644 };
        self.append(b'0', name, mode, size, b"", data)
    }

    fn symlink(&mut self, name: &[u8], target: &[u8]) -> Result<(), ArchiveError> {
        self.append(b'2', name, 0o777, 0, target, &mut io::empty())
    }
}

/// Writes a zip with fixed timestamps and permissions.
struct ZipSink {
    zip: zip::ZipWriter<BufWriter<std::fs::File>>,
    entries: u64,
}

impl ZipSink {
    fn options(permissions: u32) -> SimpleFileOptions {
        SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .compression_level(Some(i64::from(LEVEL)))
            .last_modified_time(zip::DateTime::default())
            .unix_permissions(permissions)
    }

    /// Zip names are strings, and must pass the zip name rules [`super::unpack`] applies.
    fn name<'a>(bytes: &'a [u8], what: &str) -> Result<&'a str, ArchiveError> {
        let name = std::str::from_utf8(bytes).map_err(|_| ArchiveError::UnsupportedZipName {
            path: show(bytes),
            reason: format!("the {what} is not valid UTF-8"),
        })?;
        Ok(name)
    }

    fn check(name: &[u8]) -> Result<&str, ArchiveError> {
        let text = Self::name(name, "name")?;
        clean_path(name, Dialect::Zip).map_err(|rule| ArchiveError::UnsupportedZipName {
            path: show(name),
            reason: rule.to_string(),
        })?;
        Ok(text)
    }

    fn finish(self, out: &Path) -> Result<PackReport, ArchiveError> {
        let context = || format!("finishing archive {out:?}");
        let buffered = self
            .zip
            .finish()
            .map_err(|e| io_err(context())(io::Error::other(e)))?;
        let mut file = buffered
            .into_inner()
            .map_err(|e| io_err(context())(e.into_error()))?;
        file.seek(SeekFrom::Start(0)).map_err(io_err(context()))?;
        let mut hasher = HashWriter::new(io::sink());
        io::copy(&mut file, &mut hasher).map_err(io_err(context()))?;
        Ok(PackReport {
            sha256: hex::encode(hasher.hasher.finalize()),
            tar_sha256: None,
            bytes: hasher.bytes,
            entries: self.entries,
        })
    }
}

fn zip_err(path: &[u8]) -> impl FnOnce(zip::result::ZipError) -> ArchiveError {
    let context = format!("writing {:?}", show(path));
    move |e| ArchiveError::Io {
        context,
        source: match e {
            zip::result::ZipError::Io(e) => e,
            other => io::Error::other(other),
        },
    }
}

impl Sink for ZipSink {
    fn dir(&mut self, name: &[u8]) -> Result<(), ArchiveError> {
        let text = Self::check(name)?;
        self.zip
            .add_directory(text, Self::options(0o755))
            .map_err(zip_err(name))?;
        self.entries += 1;
        Ok(())
    }

    fn file(
        &mut self,
        name: &[u8],
        exec: bool,
        size: u64,
        data: &mut dyn Read,
    ) -> Result<(), ArchiveError> {
        let text = Self::check(name)?;
        let options =
            Self::options(if exec { 0o755 } else { 0o644 }).large_file(size >= u64::from(u32::MAX));
        self.zip.start_file(text, options).map_err(zip_err(name))?;
        io::copy(data, &mut self.zip).map_err(io_err(format!("writing {:?}", show(name))))?;
        self.entries += 1;
        Ok(())
    }

    fn symlink(&mut self, name: &[u8], target: &[u8]) -> Result<(), ArchiveError> {
        let text = Self::check(name)?;
        let target = Self::name(target, "symlink target")?;
        self.zip
            .add_symlink(text, target, Self::options(0o777))
            .map_err(zip_err(name))?;
        self.entries += 1;
        Ok(())
    }
}
