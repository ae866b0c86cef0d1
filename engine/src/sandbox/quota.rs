//! Disk quotas for writable mounts that have a size (`size_mib` volumes, the export mount).
//!
//! WASI has no notion of a quota, so the sandbox interposes on the preview 1 calls that can
//! make a mount hold more bytes: `fd_write`, `fd_pwrite` and `fd_filestat_set_size`. It also
//! follows `path_open`, `fd_renumber` and `fd_close` to know which mount each descriptor
//! belongs to, keeps the count right on `path_unlink_file`, and refuses `path_rename` and
//! `path_link` between two different mounts (`EXDEV`, as between two filesystems), which would
//! otherwise move bytes into a mount behind the count.
//!
//! The check happens before the write: a write that could take the mount past its size fails
//! with `ENOSPC` and writes nothing. For `fd_write` the file offset is not known to the host, so
//! the whole length counts as growth (an in-place overwrite of a nearly full mount is refused
//! too); `fd_pwrite` and `fd_filestat_set_size` are exact.
//!
//! The interposers call the same WASI implementation the plain imports use, with the same
//! arguments and memory, so the guest-visible behaviour is otherwise unchanged. Executions without any quota do not pay for this: the
//! sandbox links the interposers only into the linker used for them.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use cap_std::ambient_authority;
use cap_std::fs::Dir;
use wasmtime::{Caller, Linker};

use super::GuestState;

const MODULE: &str = "wasi_snapshot_preview1";
const ERRNO_SUCCESS: i32 = 0;
const ERRNO_NOSPC: i32 = 51;
const ERRNO_XDEV: i32 = 75;
const ERRNO_FAULT: i32 = 21;
/// Descriptors 0–2 are stdio; preopens follow in the order they were given.
const FIRST_PREOPEN_FD: u32 = 3;

/// The size limit of one writable mount.
#[derive(Debug)]
pub struct Quota {
    root: Dir,
    guest: String,
    limit: u64,
    used: u64,
}

impl Quota {
    /// A quota of `limit` bytes on the host directory `host`, mounted at `guest`. What the
    /// directory already holds (a persistent volume from an earlier run) counts.
    pub fn new(host: &Path, guest: &str, limit: u64) -> io::Result<Self> {
        let used = disk_usage(host)?;
        let root = Dir::open_ambient_dir(host, ambient_authority())?;
        Ok(Quota {
            root,
            guest: guest.to_string(),
            limit,
            used,
        })
    }

    /// Bytes counted against the quota.
    pub fn used(&self) -> u64 {
        self.used
    }

    fn admits(&self, growth: u64) -> bool {
        self.used.saturating_add(growth) <= self.limit
    }
}

/// Total size of the regular files under `dir` (links are not followed).
pub fn disk_usage(dir: &Path) -> io::Result<u64> {
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                total = total.saturating_add(meta.len());
            }
        }
    }
    Ok(total)
}

/// Which mount a descriptor belongs to, and where in it.
#[derive(Debug)]
struct Tracked {
    mount: usize,
    rel: PathBuf,
}

/// The quota bookkeeping of one execution.
#[derive(Default)]
pub struct QuotaState {
    mounts: Vec<Option<Quota>>,
    fds: HashMap<u32, Tracked>,
}

impl QuotaState {
    /// Bookkeeping for the preopens of one execution, in preopen order (`None`: no quota).
    pub fn new(mounts: Vec<Option<Quota>>) -> Self {
        let fds = (0..mounts.len())
            .map(|i| {
                (
                    FIRST_PREOPEN_FD + i as u32,
                    Tracked {
                        mount: i,
                        rel: PathBuf::new(),
                    },
                )
            })
            .collect();
        QuotaState { mounts, fds }
    }

    /// Whether any mount has a quota (only then are the interposers needed).
    pub fn any(&self) -> bool {
        self.mounts.iter().any(Option::is_some)
    }

    fn quota_of(&mut self, fd: u32) -> Option<&mut Quota> {
        let mount = self.fds.get(&fd)?.mount;
        self.mounts.get_mut(mount)?.as_mut()
    }

    /// The current size of the file behind `fd`, when it is in a mount with a quota.
    fn file_size(&mut self, fd: u32) -> Option<u64> {
        let rel = self.fds.get(&fd)?.rel.clone();
        let q = self.quota_of(fd)?;
        q.root
            .metadata(&rel)
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len())
    }

    fn mount_of(&self, fd: u32) -> Option<usize> {
        self.fds.get(&fd).map(|t| t.mount)
    }

    /// The mount (preopen index) and the path inside it that `fd` was opened as.
    pub(super) fn location(&self, fd: u32) -> Option<(usize, PathBuf)> {
        self.fds.get(&fd).map(|t| (t.mount, t.rel.clone()))
    }
}

/// A write admitted against a quota, settled once the real size change is known.
struct Pending {
    fd: u32,
    size_before: u64,
    reserved: u64,
}

/// What an interposer decided before forwarding: refuse with an errno, or forward (and maybe
/// settle a reservation afterwards).
type Decision = Result<Option<Pending>, i32>;

/// Adds the interposers to `linker` (which must already hold WASI preview 1).
pub(super) fn add_to_linker(linker: &mut Linker<GuestState>) -> anyhow::Result<()> {
    linker.allow_shadowing(true);
    macro_rules! interpose {
        ($name:literal, $fn:ident, ($($arg:ident : $ty:ty),*), $decide:expr) => {
            linker
                .func_wrap_async(
                    MODULE,
                    $name,
                    |mut caller: Caller<'_, GuestState>, ($($arg,)*): ($($ty,)*)| {
                        Box::new(async move {
                            let decision: Decision = $decide(&mut caller, $($arg),*);
                            let pending = match decision {
                                Err(errno) => return Ok(errno),
                                Ok(pending) => pending,
                            };
                            let errno = call_wasi!(&mut caller, $fn($($arg),*))?;
                            if let Some(p) = pending {
                                settle(&mut caller, p);
                            }
                            Ok(errno)
                        })
                    },
                )
                .map_err(|e| anyhow::anyhow!("cannot interpose {}: {e}", $name))?;
        };
    }
    interpose!("fd_write", fd_write, (fd: i32, iovs: i32, iovs_len: i32, nwritten: i32), decide_write);
    interpose!("fd_pwrite", fd_pwrite, (fd: i32, iovs: i32, iovs_len: i32, offset: i64, nwritten: i32), decide_pwrite);
    interpose!("fd_filestat_set_size", fd_filestat_set_size, (fd: i32, size: i64), decide_set_size);
    interpose!("path_unlink_file", path_unlink_file, (fd: i32, path: i32, path_len: i32), decide_unlink);
    interpose!("path_rename", path_rename, (fd: i32, old: i32, old_len: i32, new_fd: i32, new: i32, new_len: i32),
        |c: &mut Caller<'_, GuestState>, fd: i32, _: i32, _: i32, new_fd: i32, _: i32, _: i32| cross_mount(c, fd, new_fd));
    interpose!("path_link", path_link, (fd: i32, flags: i32, old: i32, old_len: i32, new_fd: i32, new: i32, new_len: i32),
        |c: &mut Caller<'_, GuestState>, fd: i32, _: i32, _: i32, _: i32, new_fd: i32, _: i32, _: i32| cross_mount(c, fd, new_fd));
    // Descriptor bookkeeping: these forward first and record what happened.
    linker
        .func_wrap_async(
            MODULE,
            "path_open",
            |mut caller: Caller<'_, GuestState>,
             (dirfd, dirflags, path, path_len, oflags, base, inheriting, fdflags, out): (
                i32,
                i32,
                i32,
                i32,
                i32,
                i64,
                i64,
                i32,
                i32,
            )| {
                Box::new(async move {
                    let rel = guest_path(&mut caller, dirfd, path, path_len);
                    let errno = call_wasi!(
                        &mut caller,
                        path_open(
                            dirfd, dirflags, path, path_len, oflags, base, inheriting, fdflags, out
                        )
                    )?;
                    if errno == ERRNO_SUCCESS
                        && let Some(mount) = caller.data().quota.mount_of(dirfd as u32)
                    {
                        let new_fd = read_u32(&mut caller, out);
                        let state = &mut caller.data_mut().quota;
                        if let (Some(new_fd), Some(rel)) = (new_fd, rel) {
                            state.fds.insert(new_fd, Tracked { mount, rel });
                        }
                    }
                    Ok(errno)
                })
            },
        )
        .map_err(|e| anyhow::anyhow!("cannot interpose path_open: {e}"))?;
    linker
        .func_wrap_async(
            MODULE,
            "fd_close",
            |mut caller: Caller<'_, GuestState>, (fd,): (i32,)| {
                Box::new(async move {
                    let errno = call_wasi!(&mut caller, fd_close(fd))?;
                    if errno == ERRNO_SUCCESS {
                        caller.data_mut().quota.fds.remove(&(fd as u32));
                    }
                    Ok(errno)
                })
            },
        )
        .map_err(|e| anyhow::anyhow!("cannot interpose fd_close: {e}"))?;
    linker
        .func_wrap_async(
            MODULE,
            "fd_renumber",
            |mut caller: Caller<'_, GuestState>, (from, to): (i32, i32)| {
                Box::new(async move {
                    let errno = call_wasi!(&mut caller, fd_renumber(from, to))?;
                    if errno == ERRNO_SUCCESS {
                        let fds = &mut caller.data_mut().quota.fds;
                        match fds.remove(&(from as u32)) {
                            Some(t) => {
                                fds.insert(to as u32, t);
                            }
                            None => {
                                fds.remove(&(to as u32));
                            }
                        }
                    }
                    Ok(errno)
                })
            },
        )
        .map_err(|e| anyhow::anyhow!("cannot interpose fd_renumber: {e}"))?;
    Ok(())
}

fn decide_write(c: &mut Caller<'_, GuestState>, fd: i32, iovs: i32, n: i32, _: i32) -> Decision {
    let len = iovec_total(c, iovs, n)?;
    reserve(c, fd, |_size| len)
}

fn decide_pwrite(
    c: &mut Caller<'_, GuestState>,
    fd: i32,
    iovs: i32,
    n: i32,
    offset: i64,
    _: i32,
) -> Decision {
    let len = iovec_total(c, iovs, n)?;
    reserve(c, fd, |size| {
        (offset as u64).saturating_add(len).saturating_sub(size)
    })
}

fn decide_set_size(c: &mut Caller<'_, GuestState>, fd: i32, new_size: i64) -> Decision {
    reserve(c, fd, |size| (new_size as u64).saturating_sub(size))
}

/// Uncounts a file when this unlink removes its last link (the unlink itself is forwarded).
fn decide_unlink(c: &mut Caller<'_, GuestState>, fd: i32, path: i32, len: i32) -> Decision {
    let Some(rel) = guest_path(c, fd, path, len) else {
        return Ok(None);
    };
    if let Some(q) = c.data_mut().quota.quota_of(fd as u32)
        && let Ok(meta) = q.root.symlink_metadata(&rel)
        && meta.is_file()
        && nlink(&meta) <= 1
    {
        q.used = q.used.saturating_sub(meta.len());
    }
    Ok(None)
}

/// Refuses an operation that could grow the mount of `fd` past its quota, or reserves the
/// growth. `growth` maps the file's current size to the most bytes the operation can add.
fn reserve(c: &mut Caller<'_, GuestState>, fd: i32, growth: impl FnOnce(u64) -> u64) -> Decision {
    let fd = fd as u32;
    let state = &mut c.data_mut().quota;
    let Some(size_before) = state.file_size(fd) else {
        return Ok(None);
    };
    let Some(q) = state.quota_of(fd) else {
        return Ok(None);
    };
    let reserved = growth(size_before);
    if !q.admits(reserved) {
        tracing::debug!(mount = %q.guest, used = q.used, reserved, limit = q.limit, "write refused by the quota");
        return Err(ERRNO_NOSPC);
    }
    q.used += reserved;
    Ok(Some(Pending {
        fd,
        size_before,
        reserved,
    }))
}

/// Replaces a reservation by the real change in the file's size.
fn settle(c: &mut Caller<'_, GuestState>, p: Pending) {
    let state = &mut c.data_mut().quota;
    let size_after = state.file_size(p.fd).unwrap_or(p.size_before);
    if let Some(q) = state.quota_of(p.fd) {
        q.used = q.used.saturating_sub(p.reserved);
        if size_after >= p.size_before {
            q.used = q.used.saturating_add(size_after - p.size_before);
        } else {
            q.used = q.used.saturating_sub(p.size_before - size_after);
        }
    }
}

fn cross_mount(c: &mut Caller<'_, GuestState>, fd: i32, new_fd: i32) -> Decision {
    let state = &c.data().quota;
    let (a, b) = (state.mount_of(fd as u32), state.mount_of(new_fd as u32));
    let involves_quota = [a, b]
        .iter()
        .flatten()
        .any(|m| state.mounts.get(*m).is_some_and(Option::is_some));
    if a != b && involves_quota {
        Err(ERRNO_XDEV)
    } else {
        Ok(None)
    }
}

/// The sum of the lengths of a guest iovec array; `Some(EFAULT)` as an error when out of bounds.
fn iovec_total(caller: &mut Caller<'_, GuestState>, iovs: i32, count: i32) -> Result<u64, i32> {
    let mem = caller
        .get_export("memory")
        .and_then(|e| e.into_memory())
        .ok_or(ERRNO_FAULT)?;
    let data = mem.data(&*caller);
    let mut total = 0u64;
    for i in 0..count as u32 as usize {
        let at = (iovs as u32 as usize)
            .checked_add(i * 8 + 4)
            .ok_or(ERRNO_FAULT)?;
        let bytes = data.get(at..at + 4).ok_or(ERRNO_FAULT)?;
        total += u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as u64;
    }
    Ok(total)
}

fn read_u32(caller: &mut Caller<'_, GuestState>, at: i32) -> Option<u32> {
    let mem = caller.get_export("memory")?.into_memory()?;
    let data = mem.data(&*caller);
    let at = at as u32 as usize;
    let b = data.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// The path, relative to its mount, that `path` names under the descriptor `dirfd`.
fn guest_path(
    caller: &mut Caller<'_, GuestState>,
    dirfd: i32,
    path: i32,
    len: i32,
) -> Option<PathBuf> {
    let base = caller.data().quota.fds.get(&(dirfd as u32))?.rel.clone();
    let mem = caller.get_export("memory")?.into_memory()?;
    let data = mem.data(&*caller);
    let start = path as u32 as usize;
    let bytes = data.get(start..start.checked_add(len as u32 as usize)?)?;
    let text = std::str::from_utf8(bytes).ok()?;
    Some(base.join(text.trim_start_matches('/')))
}

#[cfg(unix)]
fn nlink(meta: &cap_std::fs::Metadata) -> u64 {
    use cap_std::fs::MetadataExt;
    meta.nlink()
}

#[cfg(not(unix))]
fn nlink(_meta: &cap_std::fs::Metadata) -> u64 {
    1
}
