//! The mounts a snapshot build boots with.
//!
//! Shared read-only content (code, runtime bootstrap, immutable volumes) is mounted as it is.
//! Every per-execution mount (a data archive's unpacked copy, an export mount, an ephemeral
//! volume) is copied into a directory of the build's own, so a build never touches a live
//! execution's directories nor depends on how long they live; a writable one must come out of
//! the boot unchanged — what the boot wrote there would be missing from every restored
//! instance, which gets a fresh copy. A persistent volume holds state kept between executions:
//! a program with one is never snapshotted.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

use crate::sandbox::{GuestSpec, MountOrigin};

/// The spec a build boots with, and what it must find unchanged afterwards.
pub(super) struct BuildMounts {
    _dir: tempfile::TempDir,
    /// The spec with private copies of the per-execution mounts.
    pub(super) spec: GuestSpec,
    watched: Vec<(String, PathBuf, Vec<Entry>)>,
}

/// One entry of a directory tree: its path inside the tree and what it is.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Entry {
    Dir(OsString),
    File(OsString, u64),
    Link(OsString, PathBuf),
}

/// Why a program cannot be snapshotted because of its mounts, if it cannot.
pub(super) fn refusal(spec: &GuestSpec) -> Option<String> {
    spec.preopens
        .iter()
        .find(|p| p.origin == MountOrigin::Persistent)
        .map(|p| {
            format!(
                "the persistent volume at {} cannot be snapshotted (its content is state kept \
                 between executions)",
                p.guest
            )
        })
}

impl BuildMounts {
    /// Copies the per-execution mounts of `spec` into a new directory under `work`.
    pub(super) fn new(spec: &GuestSpec, work: &Path) -> Result<Self, String> {
        if let Some(why) = refusal(spec) {
            return Err(why);
        }
        fs::create_dir_all(work).map_err(|e| format!("{}: {e}", work.display()))?;
        let dir = tempfile::tempdir_in(work).map_err(|e| format!("{}: {e}", work.display()))?;
        let mut spec = spec.clone();
        let mut watched = Vec::new();
        for (i, p) in spec.preopens.iter_mut().enumerate() {
            if p.origin != MountOrigin::PerExecution {
                continue;
            }
            let copy = dir.path().join(format!("mount-{i}"));
            copy_tree(&p.host, &copy)
                .map_err(|e| format!("cannot copy the mount {} for the build: {e}", p.guest))?;
            p.host = copy;
            if p.writable {
                let before = listing(&p.host).map_err(|e| format!("{}: {e}", p.guest))?;
                watched.push((p.guest.clone(), p.host.clone(), before));
            }
        }
        Ok(BuildMounts {
            _dir: dir,
            spec,
            watched,
        })
    }

    /// Checks that the boot left every writable mount as it found it.
    pub(super) fn check_unchanged(&self) -> Result<(), String> {
        for (guest, host, before) in &self.watched {
            let after = listing(host).map_err(|e| format!("{guest}: {e}"))?;
            if &after != before {
                return Err(format!(
                    "the program wrote to {guest} while booting; restored instances would not \
                     see what it wrote"
                ));
            }
        }
        Ok(())
    }
}

/// Copies the tree at `from` to `to` (directories, files, symbolic links as links).
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    fs::create_dir(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_tree(&src, &dst)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&src)?, &dst)?;
        } else if kind.is_file() {
            fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}

/// Every entry of the tree at `root`, sorted.
fn listing(root: &Path) -> std::io::Result<Vec<Entry>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<Entry>) -> std::io::Result<()> {
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            let name = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .as_os_str()
                .to_owned();
            let meta = fs::symlink_metadata(&path)?;
            if meta.is_dir() {
                out.push(Entry::Dir(name));
                walk(root, &path, out)?;
            } else if meta.file_type().is_symlink() {
                out.push(Entry::Link(name, fs::read_link(&path)?));
            } else {
                out.push(Entry::File(name, meta.len()));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(root, root, &mut out)?;
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::Preopen;

    fn preopen(host: &Path, guest: &str, writable: bool, origin: MountOrigin) -> Preopen {
        Preopen {
            host: host.to_path_buf(),
            guest: guest.into(),
            writable,
            quota_bytes: None,
            origin,
        }
    }

    #[test]
    fn per_execution_mounts_are_copied_and_writes_to_them_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let (shared, data, out) = (t.path().join("s"), t.path().join("d"), t.path().join("o"));
        for d in [&shared, &data, &out] {
            fs::create_dir(d).unwrap();
        }
        fs::create_dir(data.join("sub")).unwrap();
        fs::write(data.join("sub/a.txt"), b"data").unwrap();
        std::os::unix::fs::symlink("sub/a.txt", data.join("link")).unwrap();
        let spec = GuestSpec {
            preopens: vec![
                preopen(&shared, "/code", false, MountOrigin::Shared),
                preopen(&data, "/data", false, MountOrigin::PerExecution),
                preopen(&out, "/out", true, MountOrigin::PerExecution),
            ],
            ..GuestSpec::default()
        };
        let m = BuildMounts::new(&spec, &t.path().join("work")).unwrap();
        let hosts: Vec<&Path> = m.spec.preopens.iter().map(|p| p.host.as_path()).collect();
        assert_eq!(hosts[0], shared, "shared content is mounted as it is");
        assert_ne!(hosts[1], data);
        assert_ne!(hosts[2], out);
        assert_eq!(fs::read(hosts[1].join("sub/a.txt")).unwrap(), b"data");
        assert_eq!(
            fs::read_link(hosts[1].join("link")).unwrap(),
            Path::new("sub/a.txt")
        );
        m.check_unchanged().unwrap();
        fs::write(hosts[2].join("boot.log"), b"x").unwrap();
        let err = m.check_unchanged().unwrap_err();
        assert!(err.contains("/out"), "{err}");
        assert!(!out.join("boot.log").exists(), "the live mount was touched");
    }

    #[test]
    fn a_persistent_volume_is_refused_by_name() {
        let t = tempfile::tempdir().unwrap();
        let spec = GuestSpec {
            preopens: vec![preopen(t.path(), "/db", true, MountOrigin::Persistent)],
            ..GuestSpec::default()
        };
        let why = BuildMounts::new(&spec, &t.path().join("work"))
            .err()
            .unwrap();
        assert!(why.contains("persistent volume at /db"), "{why}");
    }
}
