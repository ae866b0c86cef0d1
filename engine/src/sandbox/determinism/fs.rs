//! The file system under the determinism profile: what a guest learns about files must not
//! depend on the host's file system, only on what the guest and its inputs wrote.
//!
//! - `fd_readdir` lists a directory sorted by name (bytes), `.` and `..` first, each entry with
//!   a synthetic inode number;
//! - `fd_filestat_get` / `path_filestat_get` report the synthetic inode, a device number per
//!   mount, one link, size 0 for directories and the profile's fixed time for every timestamp.
//!
//! A synthetic inode number is the first 8 bytes of sha256 over the mount's index and the
//! normalised path inside it: stable across hosts, runs and store directories. Which mount and
//! path a descriptor stands for comes from the descriptor bookkeeping of [`super::super::quota`].

use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::{Caller, Linker};

use super::super::GuestState;

pub(super) const ERRNO_FAULT: i32 = 21;
pub(super) const ERRNO_INVAL: i32 = 28;
const ERRNO_ILSEQ: i32 = 25;
const ERRNO_NOTDIR: i32 = 54;
const ERRNO_IO: i32 = 29;
const ERRNO_BADF: i32 = 8;

const DIRENT_SIZE: usize = 24;
const FILETYPE_UNKNOWN: u8 = 0;
const FILETYPE_DIRECTORY: u8 = 3;
const FILETYPE_REGULAR: u8 = 4;
const FILETYPE_SYMLINK: u8 = 7;
const FILESTAT_SIZE: usize = 64;

/// Reads `len` bytes of guest memory at `at`.
pub(super) fn read_guest(
    caller: &mut Caller<'_, GuestState>,
    at: i32,
    len: usize,
) -> Result<Vec<u8>, i32> {
    let mem = caller
        .get_export("memory")
        .and_then(|e| e.into_memory())
        .ok_or(ERRNO_FAULT)?;
    let start = at as u32 as usize;
    let end = start.checked_add(len).ok_or(ERRNO_FAULT)?;
    mem.data(&*caller)
        .get(start..end)
        .map(<[u8]>::to_vec)
        .ok_or(ERRNO_FAULT)
}

/// Writes `bytes` into guest memory at `at`.
pub(super) fn write_guest(
    caller: &mut Caller<'_, GuestState>,
    at: i32,
    bytes: &[u8],
) -> Result<(), i32> {
    let mem = caller
        .get_export("memory")
        .and_then(|e| e.into_memory())
        .ok_or(ERRNO_FAULT)?;
    let start = at as u32 as usize;
    let end = start.checked_add(bytes.len()).ok_or(ERRNO_FAULT)?;
    mem.data_mut(&mut *caller)
        .get_mut(start..end)
        .ok_or(ERRNO_FAULT)?
        .copy_from_slice(bytes);
    Ok(())
}

/// `rel` without `.` and with `..` applied (never above the mount's root).
fn normalise(rel: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

/// The synthetic inode number of `rel` in mount `mount`.
pub fn inode(mount: usize, rel: &Path) -> u64 {
    let mut h = Sha256::new();
    h.update((mount as u32).to_le_bytes());
    h.update(normalise(rel).to_string_lossy().as_bytes());
    let d = h.finalize();
    let mut x = [0u8; 8];
    x.copy_from_slice(&d[..8]);
    u64::from_le_bytes(x)
}

/// The mount and path a descriptor stands for, joined with `path` when given.
fn location(
    caller: &mut Caller<'_, GuestState>,
    fd: i32,
    path: Option<(i32, i32)>,
) -> Option<(usize, PathBuf)> {
    let (mount, base) = caller.data().quota.location(fd as u32)?;
    let rel = match path {
        None => base,
        Some((at, len)) => {
            let bytes = read_guest(caller, at, len as u32 as usize).ok()?;
            base.join(std::str::from_utf8(&bytes).ok()?.trim_start_matches('/'))
        }
    };
    Some((mount, normalise(&rel)))
}

/// Rewrites a filestat the WASI implementation wrote at `buf`.
fn patch_filestat(
    caller: &mut Caller<'_, GuestState>,
    buf: i32,
    at: Option<(usize, PathBuf)>,
) -> Result<(), i32> {
    let Some(epoch) = caller.data().det.as_ref().map(|d| d.epoch_ns) else {
        return Ok(());
    };
    let mut st = read_guest(caller, buf, FILESTAT_SIZE)?;
    if let Some((mount, rel)) = &at {
        st[0..8].copy_from_slice(&(*mount as u64 + 1).to_le_bytes());
        st[8..16].copy_from_slice(&inode(*mount, rel).to_le_bytes());
    }
    st[24..32].copy_from_slice(&1u64.to_le_bytes());
    if st[16] == FILETYPE_DIRECTORY {
        st[32..40].copy_from_slice(&0u64.to_le_bytes());
    }
    for t in [40, 48, 56] {
        st[t..t + 8].copy_from_slice(&epoch.to_le_bytes());
    }
    write_guest(caller, buf, &st)
}

/// Adds the interposers to `linker`.
pub(super) fn add_to_linker(linker: &mut Linker<GuestState>) -> anyhow::Result<()> {
    const MODULE: &str = "wasi_snapshot_preview1";
    linker
        .func_wrap_async(
            MODULE,
            "fd_filestat_get",
            |mut caller: Caller<'_, GuestState>, (fd, buf): (i32, i32)| {
                Box::new(async move {
                    let errno = call_wasi!(&mut caller, fd_filestat_get(fd, buf))?;
                    if errno != 0 {
                        return Ok(errno);
                    }
                    let at = location(&mut caller, fd, None);
                    Ok(match patch_filestat(&mut caller, buf, at) {
                        Ok(()) => 0,
                        Err(e) => e,
                    })
                })
            },
        )
        .map_err(|e| anyhow::anyhow!("cannot interpose fd_filestat_get: {e}"))?;
    linker
        .func_wrap_async(
            MODULE,
            "path_filestat_get",
            |mut caller: Caller<'_, GuestState>,
             (fd, flags, path, len, buf): (i32, i32, i32, i32, i32)| {
                Box::new(async move {
                    let errno =
                        call_wasi!(&mut caller, path_filestat_get(fd, flags, path, len, buf))?;
                    if errno != 0 {
                        return Ok(errno);
                    }
                    let at = location(&mut caller, fd, Some((path, len)));
                    Ok(match patch_filestat(&mut caller, buf, at) {
                        Ok(()) => 0,
                        Err(e) => e,
                    })
                })
            },
        )
        .map_err(|e| anyhow::anyhow!("cannot interpose path_filestat_get: {e}"))?;
    linker
        .func_wrap_async(
            MODULE,
            "fd_readdir",
            |mut caller: Caller<'_, GuestState>,
             (fd, buf, len, cookie, used): (i32, i32, i32, i64, i32)| {
                Box::new(async move {
                    if location(&mut caller, fd, None).is_none() {
                        return call_wasi!(&mut caller, fd_readdir(fd, buf, len, cookie, used));
                    }
                    Ok(
                        match readdir(&mut caller, fd, buf, len, cookie as u64, used) {
                            Ok(()) => 0,
                            Err(e) => e,
                        },
                    )
                })
            },
        )
        .map_err(|e| anyhow::anyhow!("cannot interpose fd_readdir: {e}"))?;
    Ok(())
}

/// One entry of a listing.
struct Entry {
    name: Vec<u8>,
    ino: u64,
    kind: u8,
}

fn readdir(
    caller: &mut Caller<'_, GuestState>,
    fd: i32,
    buf: i32,
    len: i32,
    cookie: u64,
    used: i32,
) -> Result<(), i32> {
    let (mount, rel) = location(caller, fd, None).ok_or(ERRNO_BADF)?;
    let entries = list(caller, mount, &rel)?;
    let cap = len as u32 as usize;
    let mut out = Vec::with_capacity(cap.min(1 << 16));
    let skip = usize::try_from(cookie).unwrap_or(usize::MAX);
    for (i, e) in entries.iter().enumerate().skip(skip) {
        let mut header = [0u8; DIRENT_SIZE];
        header[0..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
        header[8..16].copy_from_slice(&e.ino.to_le_bytes());
        header[16..20].copy_from_slice(&(e.name.len() as u32).to_le_bytes());
        header[20] = e.kind;
        for chunk in [&header[..], &e.name[..]] {
            let room = cap - out.len();
            out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
        if out.len() == cap {
            break;
        }
    }
    write_guest(caller, buf, &out)?;
    write_guest(caller, used, &(out.len() as u32).to_le_bytes())
}

/// The sorted listing of `rel` in mount `mount`, `.` and `..` first.
fn list(caller: &mut Caller<'_, GuestState>, mount: usize, rel: &Path) -> Result<Vec<Entry>, i32> {
    let det = caller.data().det.as_ref().ok_or(ERRNO_BADF)?;
    let root = det
        .roots
        .get(mount)
        .and_then(Option::as_ref)
        .ok_or(ERRNO_BADF)?;
    let dir = if rel.as_os_str().is_empty() {
        root.try_clone().map_err(|_| ERRNO_IO)?
    } else {
        root.open_dir(rel).map_err(|e| match e.raw_os_error() {
            Some(20) => ERRNO_NOTDIR,
            _ => ERRNO_IO,
        })?
    };
    let parent = rel.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut entries = vec![
        Entry {
            name: b".".to_vec(),
            ino: inode(mount, rel),
            kind: FILETYPE_DIRECTORY,
        },
        Entry {
            name: b"..".to_vec(),
            ino: inode(mount, &parent),
            kind: FILETYPE_DIRECTORY,
        },
    ];
    let mut rest = Vec::new();
    for entry in dir.entries().map_err(|_| ERRNO_IO)? {
        let entry = entry.map_err(|_| ERRNO_IO)?;
        let name = entry.file_name();
        let name = name.to_str().ok_or(ERRNO_ILSEQ)?.to_string();
        let kind = match entry.file_type() {
            Ok(t) if t.is_dir() => FILETYPE_DIRECTORY,
            Ok(t) if t.is_file() => FILETYPE_REGULAR,
            Ok(t) if t.is_symlink() => FILETYPE_SYMLINK,
            _ => FILETYPE_UNKNOWN,
        };
        rest.push(Entry {
            ino: inode(mount, &rel.join(&name)),
            name: name.into_bytes(),
            kind,
        });
    }
    rest.sort_by(|a, b| a.name.cmp(&b.name));
    entries.extend(rest);
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inodes_depend_on_the_normalised_path_and_the_mount_only() {
        assert_eq!(
            inode(0, Path::new("a/b")),
            inode(0, Path::new("a/./c/../b"))
        );
        assert_ne!(inode(0, Path::new("a/b")), inode(1, Path::new("a/b")));
        assert_ne!(inode(0, Path::new("a/b")), inode(0, Path::new("a/c")));
    }
}
