//! Archives in and out of per-execution volume directories.
//!
//! This module owns the two places where archive bytes meet the host file system:
//!
//! * [`unpack`] turns a stored archive (untrusted bytes: a plain file, a zip, a tar.gz or a
//!   squashfs image, read with `backhand` — nothing is mounted) into
//!   the contents of a fresh, empty directory, refusing anything that could write outside that
//!   directory, plant an escaping symlink, create a device node, or exhaust disk, memory or time.
//! * [`pack`] turns a directory written by a sandboxed guest (also untrusted) into an archive
//!   whose bytes depend only on the tree's names, contents, executable bits and symlink
//!   targets, so the same output always hashes the same.
//!
//! # Unpacking policy
//!
//! * Every write goes through a [`cap_std::fs::Dir`] opened on the destination; ambient
//!   authority is used only to open that directory (and to read the archive file itself).
//! * Entry names must be relative and must not be empty, contain NUL bytes or any `..`
//!   component. Zip names must also not contain `\` or start with a Windows drive (`C:`).
//!   `.` components and repeated `/` are ignored; a name that reduces to the root is only
//!   accepted for directory entries (tar's `./`), which are then no-ops.
//! * Entries are never written through a symlink: every parent of an entry must be a real
//!   directory (missing ones are created). An entry below a symlink (`inner -> sub`, then
//!   `inner/file`) is refused. Because parents are real directories, a symlink's location is
//!   exactly its name, so its target is checked lexically relative to the link's directory:
//!   it must be relative, non-empty, at most 4095 bytes, and must not climb above the root.
//!   `..` is only accepted as a leading run (`../../x`); a `..` after a name (`a/../b`) is
//!   refused because `a` could itself be a symlink, which makes lexical resolution unsound.
//! * Tar hard links are not created as hard links: when the target is a regular file that was
//!   unpacked earlier in the same archive (reached through real directories only), its content
//!   is copied (the copy counts against the byte limit). Any other hard link is refused.
//! * Device, fifo, socket, GNU sparse and unknown entry types are refused.
//! * A squashfs image's entries go through the same rules, in path order; its inode count is
//!   checked against the entry limit before its directory tree is read.
//! * Modes are normalised: files `0o644`, or `0o755` when the archive marks any execute bit;
//!   directories `0o755`. No setuid/setgid/sticky bit, owner or timestamp is restored.
//! * Duplicate entries are refused (except a directory repeated as a directory).
//! * Limits ([`UnpackLimits`]) are enforced on bytes actually produced, never on declared
//!   sizes: file contents are copied in 64 KiB chunks and the unpack fails as soon as the
//!   running total would pass `max_total_bytes`. Data attached to non-file tar entries
//!   (normally none) and tar extension headers are charged to the same budget, because they
//!   must be decompressed to be skipped; extension headers (GNU long names, pax records) are
//!   held in memory and are therefore capped at 1 MiB each. Memory stays bounded by these caps
//!   plus, for zip, the archive's own central directory.
//! * The whole archive fails on the first refused entry. `dest` may then be left partially
//!   filled: the caller owns the per-execution directory and deletes it.
//!
//! # Packing format
//!
//! The tree is walked through a [`cap_std::fs::Dir`] without following symlinks. Entries are
//! emitted in byte order of their full archive path (directories carry a trailing `/`), so the
//! order never depends on creation order or on the file system. Sockets, fifos and devices
//! fail the pack.
//!
//! * tar.gz: GNU tar headers (long names and link targets as GNU `L`/`K` records), mtime 0,
//!   uid/gid 0, empty user/group names, modes `0o644` (files), `0o755` (directories and
//!   executables), `0o777` (symlinks); gzip with mtime 0, no file name, OS byte 255
//!   ("unknown") and level 6. [`PackReport::tar_sha256`] hashes the uncompressed tar stream,
//!   which does not depend on the deflate implementation.
//! * zip: every entry dated 1980-01-01 00:00:00 (the DOS minimum), unix permissions as for
//!   tar, file data deflated at level 6, directories and symlinks stored, no extra fields
//!   except zip64 sizes for files of 4 GiB or more.
//!
//! Compressed bytes are reproducible for a given build (the deflate implementation is pinned
//! by `Cargo.lock`). Output is streamed to disk: memory holds the sorted listings of the
//! directories on the path being walked (plus, for zip, one small central-directory record per
//! entry), never file contents.
//!
//! This module is Unix-only (it relies on Unix permission bits and byte file names).

use std::fmt;
use std::io;
use std::path::PathBuf;

mod pack;
mod squashfs;
mod unpack;

#[cfg(test)]
mod tests;

pub use pack::pack;
pub use unpack::unpack;

/// Format of a stored archive handed to [`unpack`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArchiveFormat {
    /// Not an archive: a single file, copied as-is to `dest/<plain_name>`.
    Plain,
    /// A zip archive whose entries are stored or deflated.
    Zip,
    /// A gzip-compressed tar stream (ustar, GNU or pax headers).
    TarGz,
    /// A squashfs 4 image (gzip, xz, lz4 or zstd compressed), unpacked like an archive.
    Squashfs,
}

/// Resource limits applied while unpacking; both count what is actually produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnpackLimits {
    /// Maximum number of bytes written (plus tar metadata decompressed, see the module docs).
    /// Default: [`UnpackLimits::DEFAULT_MAX_TOTAL_BYTES`] (1 GiB).
    pub max_total_bytes: u64,
    /// Maximum number of archive entries (files, directories, links, pax global headers).
    /// Default: [`UnpackLimits::DEFAULT_MAX_ENTRIES`] (100 000).
    pub max_entries: u64,
}

impl UnpackLimits {
    /// Default byte limit: 1 GiB (1 073 741 824 bytes).
    pub const DEFAULT_MAX_TOTAL_BYTES: u64 = 1 << 30;
    /// Default entry limit: 100 000 entries.
    pub const DEFAULT_MAX_ENTRIES: u64 = 100_000;
}

impl Default for UnpackLimits {
    /// 1 GiB of content and 100 000 entries.
    fn default() -> Self {
        Self {
            max_total_bytes: Self::DEFAULT_MAX_TOTAL_BYTES,
            max_entries: Self::DEFAULT_MAX_ENTRIES,
        }
    }
}

/// What [`unpack`] created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnpackReport {
    /// Regular files written (hard-link copies included).
    pub files: u64,
    /// Directories created, whether named by an entry or implied by an entry's path.
    pub dirs: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// Bytes of file content written.
    pub bytes: u64,
}

/// Archive format produced by [`pack`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PackFormat {
    /// GNU tar, gzip-compressed.
    TarGz,
    /// Zip with deflated files.
    Zip,
}

/// What [`pack`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackReport {
    /// Lower-case hex SHA-256 of the archive file's bytes.
    pub sha256: String,
    /// Lower-case hex SHA-256 of the uncompressed tar stream ([`PackFormat::TarGz`] only).
    pub tar_sha256: Option<String>,
    /// Size of the archive file in bytes.
    pub bytes: u64,
    /// Number of members in the archive (directories, files and symlinks).
    pub entries: u64,
}

/// Why an entry name (or a hard link target, or a plain file name) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathRule {
    /// The name is empty.
    Empty,
    /// The name contains a NUL byte.
    Nul,
    /// The name starts with `/`.
    Absolute,
    /// The name has a `..` component.
    ParentDir,
    /// A zip name contains `\`.
    Backslash,
    /// A zip name starts with a Windows drive such as `C:`.
    DrivePrefix,
    /// The name reduces to the root itself but the entry is not a directory.
    Root,
    /// The name ends with `/` where a file name is required.
    NotAFileName,
}

impl fmt::Display for PathRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Empty => "empty name",
            Self::Nul => "name contains a NUL byte",
            Self::Absolute => "absolute path",
            Self::ParentDir => "path escapes the mount (contains \"..\")",
            Self::Backslash => "backslash in a zip name (Windows separator)",
            Self::DrivePrefix => "Windows drive prefix in a zip name",
            Self::Root => "names the mount root itself",
            Self::NotAFileName => "ends with \"/\" but must name a file",
        })
    }
}

/// Why a symlink target was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SymlinkRule {
    /// The target is empty.
    Empty,
    /// The target contains a NUL byte.
    Nul,
    /// The target is longer than 4095 bytes.
    TooLong,
    /// The target starts with `/`.
    Absolute,
    /// The target climbs above the root, relative to the link's directory.
    Escapes,
    /// The target has `..` after a name component (`a/../b`).
    DotDotAfterName,
}

impl fmt::Display for SymlinkRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Empty => "is empty",
            Self::Nul => "contains a NUL byte",
            Self::TooLong => "is longer than 4095 bytes",
            Self::Absolute => "is absolute",
            Self::Escapes => "points outside the mount",
            Self::DotDotAfterName => {
                "has \"..\" after a name component (only leading \"..\" can be checked safely)"
            }
        })
    }
}

/// Everything that can go wrong in [`unpack`] or [`pack`].
///
/// Entry names are shown as Rust string literals (lossy UTF-8, escaped).
#[derive(thiserror::Error, Debug)]
pub enum ArchiveError {
    /// An entry name breaks a [`PathRule`].
    #[error("archive entry {entry:?}: {rule}")]
    UnsafePath {
        /// The entry's name as stored in the archive.
        entry: String,
        /// The rule it breaks.
        rule: PathRule,
    },
    /// A symlink target breaks a [`SymlinkRule`].
    #[error("archive entry {entry:?}: symlink target {target:?} {rule}")]
    UnsafeSymlink {
        /// The symlink entry's name.
        entry: String,
        /// Its target as stored.
        target: String,
        /// The rule it breaks.
        rule: SymlinkRule,
    },
    /// A hard link target name breaks a [`PathRule`].
    #[error("archive entry {entry:?}: hard link target {target:?}: {rule}")]
    UnsafeHardLink {
        /// The hard link entry's name.
        entry: String,
        /// Its target as stored.
        target: String,
        /// The rule the target breaks.
        rule: PathRule,
    },
    /// A hard link whose target is not a regular file unpacked earlier.
    #[error(
        "archive entry {entry:?}: hard link target {target:?} is not a regular file unpacked earlier from this archive"
    )]
    HardLinkTarget {
        /// The hard link entry's name.
        entry: String,
        /// Its target as stored.
        target: String,
    },
    /// An entry of a kind that is never unpacked (device, fifo, sparse file, unknown type).
    #[error("archive entry {entry:?}: {kind} entries are not allowed")]
    UnsupportedEntry {
        /// The entry's name.
        entry: String,
        /// What kind of entry it is.
        kind: String,
    },
    /// An entry would be written through a symlink created by an earlier entry.
    #[error(
        "archive entry {entry:?}: parent {parent:?} is a symlink (entries are never written through symlinks)"
    )]
    ThroughSymlink {
        /// The entry's name.
        entry: String,
        /// The parent path that is a symlink.
        parent: String,
    },
    /// A parent of an entry exists and is a file.
    #[error("archive entry {entry:?}: parent {parent:?} is not a directory")]
    ParentNotDirectory {
        /// The entry's name.
        entry: String,
        /// The parent path that is not a directory.
        parent: String,
    },
    /// An entry's path was already created by an earlier entry.
    #[error("archive entry {entry:?}: path already exists (duplicate entry)")]
    AlreadyExists {
        /// The entry's name.
        entry: String,
    },
    /// The byte limit was passed.
    #[error("archive expands past the {limit}-byte limit")]
    TooManyBytes {
        /// The limit in force.
        limit: u64,
    },
    /// The entry limit was passed.
    #[error("archive has more than {limit} entries")]
    TooManyEntries {
        /// The limit in force.
        limit: u64,
    },
    /// The zip's central directory could not be read.
    #[error("not a zip archive: {0}")]
    NotZip(String),
    /// A zip entry could not be read or decompressed.
    #[error("corrupt zip: {0}")]
    CorruptZip(String),
    /// The gzip or tar layer could not be read.
    #[error("corrupt tar.gz: {0}")]
    CorruptTarGz(String),
    /// The file is not a squashfs image this engine reads, or the image is damaged.
    #[error("not a readable squashfs image: {0}")]
    BadSquashfs(String),
    /// [`unpack`] was given a destination that already has content.
    #[error("unpack destination {path:?} is not empty")]
    DestinationNotEmpty {
        /// The destination directory.
        path: PathBuf,
    },
    /// [`pack`] met a file that is not a regular file, directory or symlink.
    #[error(
        "cannot pack {path:?}: it is a {kind} (only regular files, directories and symlinks are packed)"
    )]
    UnsupportedFile {
        /// The file's path relative to the packed root.
        path: String,
        /// What kind of file it is.
        kind: &'static str,
    },
    /// [`pack`] met a name that cannot be stored in a zip.
    #[error("cannot pack {path:?} into a zip: {reason}")]
    UnsupportedZipName {
        /// The file's path relative to the packed root.
        path: String,
        /// Why the name cannot be stored.
        reason: String,
    },
    /// [`pack`] was asked to write the archive inside the tree it packs.
    #[error("archive output {out:?} is inside the packed tree {src:?}")]
    OutputInsideSource {
        /// The requested output path.
        out: PathBuf,
        /// The tree being packed.
        src: PathBuf,
    },
    /// Any other I/O failure, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: io::Error,
    },
}

/// Which name rules apply, on top of the common ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    /// Tar names (and plain file names): `\` and `:` are ordinary characters.
    Tar,
    /// Zip names: `\` and drive prefixes are refused.
    Zip,
}

/// A validated entry name: only normal components, relative to the root.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CleanPath {
    /// The normal components joined with `/`; empty for the root.
    path: PathBuf,
    /// Number of components.
    depth: usize,
    /// The stored name ended with `/`.
    dir_syntax: bool,
}

/// Validates an entry name (see the module docs for the rules).
fn clean_path(name: &[u8], dialect: Dialect) -> Result<CleanPath, PathRule> {
    use std::os::unix::ffi::OsStrExt;
    if name.is_empty() {
        return Err(PathRule::Empty);
    }
    if name.contains(&0) {
        return Err(PathRule::Nul);
    }
    if dialect == Dialect::Zip {
        if name.contains(&b'\\') {
            return Err(PathRule::Backslash);
        }
        if name.len() >= 2 && name[0].is_ascii_alphabetic() && name[1] == b':' {
            return Err(PathRule::DrivePrefix);
        }
    }
    if name[0] == b'/' {
        return Err(PathRule::Absolute);
    }
    let mut path = PathBuf::new();
    let mut depth = 0;
    for part in name.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err(PathRule::ParentDir),
            _ => {
                path.push(std::ffi::OsStr::from_bytes(part));
                depth += 1;
            }
        }
    }
    Ok(CleanPath {
        path,
        depth,
        dir_syntax: name.ends_with(b"/"),
    })
}

/// Longest accepted symlink target, in bytes (Linux `PATH_MAX` minus the NUL).
const MAX_SYMLINK_TARGET: usize = 4095;

/// Checks a symlink target for a link at `link` (see the module docs for the rules).
fn check_symlink_target(target: &[u8], link: &CleanPath) -> Result<(), SymlinkRule> {
    if target.is_empty() {
        return Err(SymlinkRule::Empty);
    }
    if target.contains(&0) {
        return Err(SymlinkRule::Nul);
    }
    if target.len() > MAX_SYMLINK_TARGET {
        return Err(SymlinkRule::TooLong);
    }
    if target[0] == b'/' {
        return Err(SymlinkRule::Absolute);
    }
    // The link's directory is `depth - 1` levels below the root.
    let room = link.depth.saturating_sub(1);
    let mut ups = 0usize;
    let mut seen_name = false;
    for part in target.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." if seen_name => return Err(SymlinkRule::DotDotAfterName),
            b".." => {
                ups += 1;
                if ups > room {
                    return Err(SymlinkRule::Escapes);
                }
            }
            _ => seen_name = true,
        }
    }
    Ok(())
}

/// Shows raw name bytes in messages.
fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Builds a closure wrapping an [`io::Error`] with what was being done.
fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> ArchiveError {
    let context = context.into();
    move |source| ArchiveError::Io { context, source }
}
