//! The bound on the on-disk snapshot cache: last-use stamps and eviction.
//!
//! Every program version has its own snapshot (tens of MB), so a node that keeps running new
//! programs, amends and variables would fill its disk. A snapshot's file time is its last use
//! (set when a process builds or loads it); after each build the least recently used snapshots
//! are removed until the cache is within [`super::SnapshotConfig::cache_limit_bytes`]. Never
//! removed: the snapshots this process holds (mapped once, restored from memory), and prepared
//! interpreters (one per interpreter, made in about a minute).

use std::collections::HashSet;
use std::path::Path;
use std::time::SystemTime;

/// Marks the snapshot `key` in `dir` as used now.
pub(super) fn touch(dir: &Path, key: &str) {
    if let Err(e) = stamp(dir, key, SystemTime::now()) {
        tracing::debug!(key, "cannot stamp the snapshot's last use: {e}");
    }
}

/// Sets the last use of the snapshot `key` in `dir` to `used`.
fn stamp(dir: &Path, key: &str, used: SystemTime) -> std::io::Result<()> {
    std::fs::File::options()
        .write(true)
        .open(dir.join(format!("{key}.cwasm")))?
        .set_modified(used)
}

/// A cached snapshot: its key, last use and bytes on disk (module and metadata).
struct Entry {
    key: String,
    used: SystemTime,
    bytes: u64,
}

/// The snapshots cached in `dir`, least recently used first.
fn entries(dir: &Path) -> std::io::Result<Vec<Entry>> {
    let mut found = Vec::new();
    for item in std::fs::read_dir(dir)? {
        let item = item?;
        let name = item.file_name();
        let Some(key) = name.to_str().and_then(|n| n.strip_suffix(".cwasm")) else {
            continue;
        };
        if key.starts_with("prepared-") {
            continue;
        }
        let Ok(meta) = item.metadata() else { continue };
        let json = std::fs::metadata(dir.join(format!("{key}.json")))
            .map(|m| m.len())
            .unwrap_or(0);
        found.push(Entry {
            key: key.to_string(),
            used: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            bytes: meta.len() + json,
        });
    }
    found.sort_by(|a, b| a.used.cmp(&b.used).then_with(|| a.key.cmp(&b.key)));
    Ok(found)
}

/// Removes the least recently used snapshots in `dir`, other than those in `keep`, until the
/// rest take at most `limit` bytes; returns the keys removed.
pub(super) fn evict(dir: &Path, limit: u64, keep: &HashSet<String>) -> Vec<String> {
    let entries = match entries(dir) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!("cannot list the snapshot cache {}: {e}", dir.display());
            return Vec::new();
        }
    };
    let mut total: u64 = entries.iter().map(|e| e.bytes).sum();
    let mut removed = Vec::new();
    for entry in entries {
        if total <= limit {
            break;
        }
        if keep.contains(&entry.key) {
            continue;
        }
        super::build::forget(dir, &entry.key);
        total = total.saturating_sub(entry.bytes);
        tracing::info!(
            key = entry.key,
            bytes = entry.bytes,
            "removed a snapshot from the cache (least recently used)"
        );
        removed.push(entry.key);
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn snapshot(dir: &Path, key: &str, bytes: usize, age_s: u64) {
        std::fs::write(dir.join(format!("{key}.cwasm")), vec![0u8; bytes]).unwrap();
        std::fs::write(dir.join(format!("{key}.json")), b"{}").unwrap();
        stamp(dir, key, SystemTime::now() - Duration::from_secs(age_s)).unwrap();
    }

    fn cached(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn the_least_recently_used_snapshots_go_first_and_held_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        snapshot(d, "oldest-held", 100, 400);
        snapshot(d, "old", 100, 300);
        snapshot(d, "middle", 100, 200);
        snapshot(d, "new", 100, 100);
        std::fs::write(d.join("prepared-p.wasm"), vec![0u8; 1000]).unwrap();
        std::fs::write(d.join("prepared-p.cwasm"), vec![0u8; 1000]).unwrap();
        let keep: HashSet<String> = ["oldest-held".to_string()].into();
        // 4 × 102 bytes; a limit of 250 leaves two.
        let removed = evict(d, 250, &keep);
        assert_eq!(removed, ["old", "middle"]);
        assert_eq!(
            cached(d),
            [
                "new.cwasm",
                "new.json",
                "oldest-held.cwasm",
                "oldest-held.json",
                "prepared-p.cwasm",
                "prepared-p.wasm",
            ]
        );
        // Within the limit: nothing goes.
        assert!(evict(d, 250, &HashSet::new()).is_empty());
    }

    #[test]
    fn a_touched_snapshot_counts_as_just_used() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        snapshot(d, "a", 100, 300);
        snapshot(d, "b", 100, 200);
        touch(d, "a");
        assert_eq!(evict(d, 150, &HashSet::new()), ["b"]);
        assert!(d.join("a.cwasm").is_file() && d.join("a.json").is_file());
    }
}
