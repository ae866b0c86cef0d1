//! Persistent volumes, one instance at a time.
//!
//! A persistent volume is one host directory, shared by every execution of its owner's
//! programs that mounts it by name. WASI preview 1 has no file locks: the locks a database
//! library takes in the guest (SQLite's among them) are no-ops, so two instances writing the
//! same files would corrupt them. On aleph-vm a program runs in one VM, whatever its `vcpus`,
//! and its processes share one kernel's locks. Here, an instance holds a [`VolumeLease`] on
//! each persistent volume it mounts, from before it boots until it is gone, so at most one
//! instance at a time sees a volume; inside it, requests still interleave at their awaits.
//!
//! The executor therefore runs at most one instance of a program that mounts a persistent
//! volume, whatever its `vcpus` ([`max_instances`]). Another program of the same owner that
//! mounts the same volume waits for the lease: an idle instance that holds it is retired to
//! let it go, and the wait ends with an error after [`ExecutorConfig::boot_timeout`].
//!
//! [`ExecutorConfig::boot_timeout`]: super::ExecutorConfig::boot_timeout

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::OwnedMutexGuard;

use crate::message::ProgramContent;
use crate::sandbox::{MountOrigin, Preopen};

/// How many instances of the program may run at once: `resources.vcpus`, or one when it
/// mounts a persistent volume.
pub(super) fn max_instances(program: &ProgramContent) -> usize {
    if program.has_persistent_volume() {
        1
    } else {
        program.resources.vcpus.max(1) as usize
    }
}

/// The leases of the node's persistent volumes, by host directory.
#[derive(Debug, Default)]
pub(super) struct VolumeLeases {
    locks: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
}

/// The persistent volumes one instance holds, released when it is dropped.
#[derive(Debug, Default)]
pub(super) struct VolumeLease {
    dirs: Vec<PathBuf>,
    _guards: Vec<OwnedMutexGuard<()>>,
}

impl VolumeLease {
    /// Whether the lease holds the volume at host directory `dir`.
    pub(super) fn holds(&self, dir: &Path) -> bool {
        self.dirs.iter().any(|d| d == dir)
    }
}

/// Why a lease was not obtained in time.
#[derive(Debug)]
pub(super) struct LeaseTimeout {
    /// The volume's mount in the guest.
    pub(super) mount: String,
    /// How long the execution waited.
    pub(super) waited: Duration,
}

impl std::fmt::Display for LeaseTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the persistent volume at {} is in use by another instance (of this program or of \
             another program of its owner) that did not let go of it within {} s: one instance \
             at a time mounts a persistent volume, as WASI has no file locks",
            self.mount,
            self.waited.as_secs()
        )
    }
}

impl VolumeLeases {
    /// The lock of the volume at `dir`.
    fn lock_of(&self, dir: &Path) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = super::lock(&self.locks);
        // Locks nobody holds or waits for are dropped, so the map stays as small as the
        // volumes in use.
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        locks.entry(dir.to_path_buf()).or_default().clone()
    }

    /// Takes the lease of every persistent volume in `preopens`, in the order of their host
    /// directories (so two instances never wait for each other's). When one is held,
    /// `make_room(dir)` is awaited once (to retire an idle holder), then the lease is waited
    /// for until `limit` has passed since the call.
    pub(super) async fn acquire<F, Fut>(
        &self,
        preopens: &[Preopen],
        limit: Duration,
        make_room: F,
    ) -> Result<VolumeLease, LeaseTimeout>
    where
        F: Fn(PathBuf) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let mut volumes: Vec<(&Path, &str)> = preopens
            .iter()
            .filter(|p| p.origin == MountOrigin::Persistent)
            .map(|p| (p.host.as_path(), p.guest.as_str()))
            .collect();
        volumes.sort();
        volumes.dedup_by(|a, b| a.0 == b.0);
        let started = tokio::time::Instant::now();
        let mut lease = VolumeLease::default();
        for (dir, mount) in volumes {
            let lock = self.lock_of(dir);
            let guard = match lock.clone().try_lock_owned() {
                Ok(guard) => guard,
                Err(_) => {
                    make_room(dir.to_path_buf()).await;
                    let left = limit.saturating_sub(started.elapsed());
                    tokio::time::timeout(left, lock.lock_owned())
                        .await
                        .map_err(|_| LeaseTimeout {
                            mount: mount.to_string(),
                            waited: limit,
                        })?
                }
            };
            lease.dirs.push(dir.to_path_buf());
            lease._guards.push(guard);
        }
        Ok(lease)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preopen(host: &Path, guest: &str, origin: MountOrigin) -> Preopen {
        Preopen {
            host: host.to_path_buf(),
            guest: guest.to_string(),
            writable: true,
            quota_bytes: None,
            origin,
        }
    }

    async fn nothing(_: PathBuf) {}

    #[tokio::test]
    async fn a_held_volume_is_waited_for_and_named_when_the_wait_ends() {
        let leases = VolumeLeases::default();
        let volume = [preopen(Path::new("/v/a"), "/data", MountOrigin::Persistent)];
        let first = leases
            .acquire(&volume, Duration::from_secs(1), nothing)
            .await
            .unwrap();
        assert!(first.holds(Path::new("/v/a")));
        let err = leases
            .acquire(&volume, Duration::from_millis(50), nothing)
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("persistent volume at /data"), "{text}");
        drop(first);
        let second = leases
            .acquire(&volume, Duration::from_millis(50), nothing)
            .await
            .unwrap();
        assert!(second.holds(Path::new("/v/a")));
    }

    #[tokio::test]
    async fn other_volumes_and_other_mounts_take_no_lease() {
        let leases = VolumeLeases::default();
        // A persistent volume beside the same shared and per-execution mounts.
        let mounts = |volume: &str| {
            [
                preopen(Path::new(volume), "/state", MountOrigin::Persistent),
                preopen(Path::new("/code"), "/opt/code", MountOrigin::Shared),
                preopen(Path::new("/x/eph"), "/tmp", MountOrigin::PerExecution),
            ]
        };
        let limit = Duration::from_millis(50);
        let a = leases
            .acquire(&mounts("/v/a"), limit, nothing)
            .await
            .unwrap();
        assert!(!a.holds(Path::new("/code")) && !a.holds(Path::new("/x/eph")));
        // Another volume: not waited for.
        let b = leases
            .acquire(&mounts("/v/b"), limit, nothing)
            .await
            .unwrap();
        assert!(b.holds(Path::new("/v/b")));
    }

    #[tokio::test]
    async fn make_room_is_asked_for_the_held_volume_and_can_free_it() {
        let leases = Arc::new(VolumeLeases::default());
        let volume = [preopen(Path::new("/v/a"), "/data", MountOrigin::Persistent)];
        let held = Arc::new(Mutex::new(Some(
            leases
                .acquire(&volume, Duration::from_secs(1), nothing)
                .await
                .unwrap(),
        )));
        let asked = Arc::new(Mutex::new(Vec::new()));
        let lease = leases
            .acquire(&volume, Duration::from_secs(5), |dir| {
                let (held, asked) = (held.clone(), asked.clone());
                async move {
                    asked.lock().unwrap().push(dir);
                    held.lock().unwrap().take(); // the idle holder retires
                }
            })
            .await
            .unwrap();
        assert!(lease.holds(Path::new("/v/a")));
        assert_eq!(*asked.lock().unwrap(), [PathBuf::from("/v/a")]);
    }
}
