//! Squashfs images, read with `backhand` and unpacked through the same [`Extractor`] rules as
//! zip and tar entries (nothing is mounted).
//!
//! Before the image's tables are read, its superblock is checked: squashfs 4, at most
//! `max_entries` inodes, and metadata tables (inodes, directories) of at most
//! [`MAX_METADATA_BYTES`] once decompressed — counted from the metadata blocks' own headers
//! (each holds at most 8 KiB), so a compressed metadata bomb is refused unread.

use std::io::{BufReader, Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use backhand::{FilesystemReader, InnerNode, Squashfs};

use super::unpack::{Extractor, unsafe_path, unsupported};
use super::{ArchiveError, Dialect, clean_path, io_err, show};

/// The most decompressed metadata (inode and directory tables) an image may have: 64 MiB.
pub const MAX_METADATA_BYTES: u64 = 64 << 20;

/// A metadata block's largest decompressed size.
const METADATA_BLOCK: u64 = 8192;

/// What the superblock says about where the tables are.
struct Superblock {
    inode_count: u32,
    inode_table: u64,
    directory_table: u64,
    /// Where the directory table ends at the latest (the next table, or the image's end).
    directory_end: u64,
}

fn bad(reason: impl Into<String>) -> ArchiveError {
    ArchiveError::BadSquashfs(reason.into())
}

fn read_superblock(file: &mut std::fs::File) -> Result<Superblock, ArchiveError> {
    let mut sb = [0u8; 96];
    file.read_exact(&mut sb)
        .map_err(|_| bad("shorter than a squashfs superblock"))?;
    let u16_at = |o: usize| u16::from_le_bytes([sb[o], sb[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes(sb[o..o + 4].try_into().unwrap_or([0; 4]));
    let u64_at = |o: usize| u64::from_le_bytes(sb[o..o + 8].try_into().unwrap_or([0; 8]));
    if &sb[..4] != b"hsqs" {
        return Err(bad("no squashfs magic (\"hsqs\", little-endian)"));
    }
    if (u16_at(28), u16_at(30)) != (4, 0) {
        return Err(bad(format!(
            "squashfs version {}.{} (only 4.0 is read)",
            u16_at(28),
            u16_at(30)
        )));
    }
    let bytes_used = u64_at(40);
    let (inode_table, directory_table) = (u64_at(64), u64_at(72));
    if !(96..=bytes_used).contains(&inode_table)
        || !(inode_table..=bytes_used).contains(&directory_table)
    {
        return Err(bad("its table offsets are out of order"));
    }
    // Fragment, export, id and xattr tables follow; unused ones are all ones.
    let directory_end = [u64_at(80), u64_at(88), u64_at(48), u64_at(56), bytes_used]
        .into_iter()
        .filter(|&o| o > directory_table && o <= bytes_used)
        .min()
        .unwrap_or(bytes_used);
    Ok(Superblock {
        inode_count: u32_at(4),
        inode_table,
        directory_table,
        directory_end,
    })
}

/// How many bytes the metadata blocks in `start..end` hold at most once decompressed.
fn metadata_bound(file: &mut std::fs::File, start: u64, end: u64) -> Result<u64, ArchiveError> {
    let mut reader = BufReader::new(file);
    reader
        .seek(SeekFrom::Start(start))
        .map_err(io_err("reading a squashfs image".to_string()))?;
    let (mut at, mut total) = (start, 0u64);
    while at < end {
        let mut header = [0u8; 2];
        if reader.read_exact(&mut header).is_err() {
            break;
        }
        let len = u64::from(u16::from_le_bytes(header) & 0x7fff);
        total += METADATA_BLOCK;
        if total > MAX_METADATA_BYTES {
            return Err(bad(format!(
                "its metadata tables decompress past {MAX_METADATA_BYTES} bytes"
            )));
        }
        at += 2 + len;
        reader
            .seek_relative(len as i64)
            .map_err(io_err("reading a squashfs image".to_string()))?;
    }
    Ok(total)
}

/// Unpacks the squashfs image `archive` through `out`.
pub(super) fn unpack_squashfs(archive: &Path, out: &mut Extractor) -> Result<(), ArchiveError> {
    let open = || std::fs::File::open(archive).map_err(io_err(format!("opening {archive:?}")));
    let mut file = open()?;
    let sb = read_superblock(&mut file)?;
    if u64::from(sb.inode_count) > out.limits.max_entries {
        return Err(ArchiveError::TooManyEntries {
            limit: out.limits.max_entries,
        });
    }
    let inodes = metadata_bound(&mut file, sb.inode_table, sb.directory_table)?;
    let dirs = metadata_bound(&mut file, sb.directory_table, sb.directory_end)?;
    if inodes + dirs > MAX_METADATA_BYTES {
        return Err(bad(format!(
            "its metadata tables decompress past {MAX_METADATA_BYTES} bytes"
        )));
    }
    let reader = BufReader::new(open()?);
    // A damaged image must be an error, never a crash of the node: parsing is guarded.
    let fs: FilesystemReader = std::panic::catch_unwind(move || {
        Squashfs::from_reader(reader).and_then(Squashfs::into_filesystem_reader)
    })
    .map_err(|_| bad("its tables could not be parsed"))?
    .map_err(|e| bad(e.to_string()))?;
    let mut nodes: Vec<_> = fs.files().collect();
    nodes.sort_by(|a, b| a.fullpath.cmp(&b.fullpath));
    for node in nodes {
        let raw = node.fullpath.as_os_str().as_bytes();
        let relative = raw.strip_prefix(b"/").unwrap_or(raw);
        if relative.is_empty() {
            continue; // The image's root: the destination itself.
        }
        out.count_entry()?;
        let name = show(relative);
        let clean = clean_path(relative, Dialect::Tar).map_err(|rule| unsafe_path(&name, rule))?;
        match &node.inner {
            InnerNode::Dir(_) => out.make_dir(&name, &clean)?,
            InnerNode::File(file) => {
                let exec = node.header.permissions & 0o111 != 0;
                let mut reader = fs
                    .file(file)
                    .reader_checked()
                    .map_err(|e| bad(format!("entry {name:?}: {e}")))?;
                let damaged = |e: std::io::Error| bad(format!("entry {name:?}: {e}"));
                let written = out.write_file(&name, &clean, exec, &mut reader, &damaged)?;
                if written != file.file_len() as u64 {
                    return Err(bad(format!(
                        "entry {name:?}: {written} of {} bytes",
                        file.file_len()
                    )));
                }
            }
            InnerNode::Symlink(link) => {
                let target = link.link.as_os_str().as_bytes();
                out.charge(target.len() as u64)?;
                out.make_symlink(&name, &clean, target)?;
            }
            InnerNode::CharacterDevice(_) => return Err(unsupported(&name, "character device")),
            InnerNode::BlockDevice(_) => return Err(unsupported(&name, "block device")),
            InnerNode::NamedPipe => return Err(unsupported(&name, "fifo")),
            InnerNode::Socket => return Err(unsupported(&name, "socket")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::{Cursor, Write as _};
    use std::os::unix::fs::PermissionsExt as _;

    use backhand::{FilesystemWriter, NodeHeader};

    use super::super::{UnpackLimits, unpack};
    use super::*;
    use crate::volumes::archive::ArchiveFormat;

    fn header(mode: u16) -> NodeHeader {
        NodeHeader::new(mode, 0, 0, 0)
    }

    /// A squashfs image built by `build`, in a temporary directory.
    fn image(build: impl FnOnce(&mut FilesystemWriter)) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let mut fs = FilesystemWriter::default();
        build(&mut fs);
        let mut bytes = Cursor::new(Vec::new());
        fs.write(&mut bytes).unwrap();
        let path = dir.path().join("image.squashfs");
        std::fs::write(&path, bytes.into_inner()).unwrap();
        (dir, path)
    }

    fn unpack_image(
        path: &Path,
        limits: UnpackLimits,
    ) -> (tempfile::TempDir, Result<(), ArchiveError>) {
        let dest = tempfile::tempdir().unwrap();
        let result = unpack(path, ArchiveFormat::Squashfs, dest.path(), "", &limits).map(|_| ());
        (dest, result)
    }

    #[test]
    fn files_directories_modes_and_inner_symlinks_unpack() {
        let (_d, path) = image(|fs| {
            fs.push_dir("app", header(0o755)).unwrap();
            fs.push_dir("app/lib", header(0o700)).unwrap();
            fs.push_file(
                Cursor::new(b"print('hi')\n".to_vec()),
                "app/main.py",
                header(0o600),
            )
            .unwrap();
            fs.push_file(
                Cursor::new(vec![7u8; 300_000]),
                "app/lib/big.bin",
                header(0o644),
            )
            .unwrap();
            fs.push_file(
                Cursor::new(b"#!/bin/sh\n".to_vec()),
                "app/run.sh",
                header(0o4755),
            )
            .unwrap();
            fs.push_symlink("main.py", "app/link", header(0o777))
                .unwrap();
            fs.push_symlink("../lib/big.bin", "app/lib/up", header(0o777))
                .unwrap();
        });
        let (dest, result) = unpack_image(&path, UnpackLimits::default());
        result.unwrap();
        let root = dest.path();
        assert_eq!(
            std::fs::read(root.join("app/main.py")).unwrap(),
            b"print('hi')\n"
        );
        assert_eq!(
            std::fs::read(root.join("app/lib/big.bin")).unwrap(),
            vec![7u8; 300_000]
        );
        let mode = |p: &str| {
            std::fs::metadata(root.join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("app/main.py"), 0o644, "modes are normalised");
        assert_eq!(mode("app/run.sh"), 0o755, "no setuid bit");
        assert_eq!(
            std::fs::read_link(root.join("app/link")).unwrap(),
            Path::new("main.py")
        );
        assert_eq!(
            std::fs::read(root.join("app/lib/up")).unwrap().len(),
            300_000
        );
    }

    #[test]
    fn hostile_images_are_refused_with_the_entry_named() {
        type Build = Box<dyn Fn(&mut FilesystemWriter)>;
        let cases: Vec<(Build, &str)> = vec![
            (
                Box::new(|fs| {
                    fs.push_symlink("/etc/passwd", "abs", header(0o777))
                        .unwrap()
                }),
                "symlink target \"/etc/passwd\" is absolute",
            ),
            (
                Box::new(|fs| {
                    fs.push_dir("a", header(0o755)).unwrap();
                    fs.push_symlink("../../etc", "a/up", header(0o777)).unwrap();
                }),
                "points outside the mount",
            ),
            (
                Box::new(|fs| fs.push_char_device(0x0103, "null", header(0o666)).unwrap()),
                "\"null\": character device entries are not allowed",
            ),
            (
                Box::new(|fs| fs.push_block_device(0x0800, "sda", header(0o660)).unwrap()),
                "block device entries are not allowed",
            ),
            (
                Box::new(|fs| fs.push_fifo("pipe", header(0o644)).unwrap()),
                "fifo entries are not allowed",
            ),
        ];
        for (build, needle) in cases {
            let (_d, path) = image(|fs| build(fs));
            let (_dest, result) = unpack_image(&path, UnpackLimits::default());
            let err = result.expect_err(needle).to_string();
            assert!(err.contains(needle), "{needle}: {err}");
        }
    }

    #[test]
    fn bombs_are_refused_by_what_they_produce() {
        // 4 MiB of zeros compress to almost nothing; the byte limit counts what is written.
        let (_d, path) = image(|fs| {
            fs.push_file(Cursor::new(vec![0u8; 4 << 20]), "zeros", header(0o644))
                .unwrap();
        });
        let limits = UnpackLimits {
            max_total_bytes: 1 << 20,
            ..UnpackLimits::default()
        };
        let (_dest, result) = unpack_image(&path, limits);
        assert!(
            matches!(result, Err(ArchiveError::TooManyBytes { .. })),
            "{result:?}"
        );
        // Many entries: refused from the superblock, before the tables are read.
        let (_d, path) = image(|fs| {
            for i in 0..50 {
                fs.push_file(Cursor::new(vec![1u8]), format!("f{i}"), header(0o644))
                    .unwrap();
            }
        });
        let limits = UnpackLimits {
            max_entries: 20,
            ..UnpackLimits::default()
        };
        let (_dest, result) = unpack_image(&path, limits);
        assert!(
            matches!(result, Err(ArchiveError::TooManyEntries { .. })),
            "{result:?}"
        );
    }

    #[test]
    fn a_metadata_bomb_is_refused_unread() {
        // 10 000 empty metadata blocks: 2 bytes each on disk, up to 80 MiB decompressed.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta");
        let mut f = std::fs::File::create(&path).unwrap();
        for _ in 0..10_000 {
            f.write_all(&[0, 0]).unwrap();
        }
        drop(f);
        let mut f = std::fs::File::open(&path).unwrap();
        let err = metadata_bound(&mut f, 0, 20_000).unwrap_err();
        assert!(
            err.to_string().contains("metadata tables decompress past"),
            "{err}"
        );
        let mut f = std::fs::File::open(&path).unwrap();
        assert_eq!(
            metadata_bound(&mut f, 0, 200).unwrap(),
            100 * METADATA_BLOCK
        );
    }

    #[test]
    fn damaged_images_are_errors_never_crashes() {
        let (_d, path) = image(|fs| {
            fs.push_dir("d", header(0o755)).unwrap();
            for i in 0..20 {
                let body = format!("file {i}").repeat(100).into_bytes();
                fs.push_file(Cursor::new(body), format!("d/f{i}"), header(0o644))
                    .unwrap();
            }
            fs.push_symlink("f1", "d/l", header(0o777)).unwrap();
        });
        let original = std::fs::read(&path).unwrap();
        let (_dest, result) = unpack_image(Path::new("/dev/null"), UnpackLimits::default());
        assert!(
            matches!(result, Err(ArchiveError::BadSquashfs(_))),
            "{result:?}"
        );
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for round in 0..200 {
            let mut bytes = original.clone();
            for _ in 0..1 + round % 4 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let at = (state as usize) % bytes.len();
                bytes[at] ^= (state >> 32) as u8 | 1;
            }
            std::fs::write(&path, &bytes).unwrap();
            // Either way is fine, as long as it returns.
            let (_dest, _result) = unpack_image(&path, UnpackLimits::default());
        }
        // Cut in the middle of what the superblock says is used (the rest is padding).
        let used = u64::from_le_bytes(original[40..48].try_into().unwrap()) as usize;
        std::fs::write(&path, &original[..used / 2]).unwrap();
        let (_dest, result) = unpack_image(&path, UnpackLimits::default());
        assert!(result.is_err());
    }
}
