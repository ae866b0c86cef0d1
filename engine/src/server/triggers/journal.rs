//! The node's record of message arrivals, which makes subscription delivery ordered and
//! restart-safe. Kept under the store root in `triggers/`:
//!
//! ```text
//! triggers/arrivals       item hashes, one a line, in the order the node first saw them
//! triggers/cursors.json   {program item hash: how many arrivals it has been through}
//! ```
//!
//! Every message that enters the store is appended once; a subscribed program walks the
//! arrivals from its cursor, so it gets matching messages in arrival order, and a cursor is
//! saved only after the message at it was handled — a restart resumes there (a message may be
//! delivered again, never skipped). Messages stored while the node was down are appended at
//! the next start, oldest file first. Losing these files loses no content, only the position:
//! everything in the store becomes history again.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

/// The journal's directory under the store root.
pub const DIR: &str = "triggers";
const ARRIVALS: &str = "arrivals";
const CURSORS: &str = "cursors.json";

/// The arrivals and the cursors, in memory and on disk.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    order: Vec<String>,
    index: HashMap<String, usize>,
    file: fs::File,
    cursors: BTreeMap<String, usize>,
}

fn is_item_hash_like(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

impl Journal {
    /// Opens (creating when needed) the journal of the store rooted at `root`. The flag is
    /// true when there was none yet.
    pub fn open(root: &Path) -> io::Result<(Journal, bool)> {
        let dir = root.join(DIR);
        fs::create_dir_all(&dir)?;
        let path = dir.join(ARRIVALS);
        let fresh = !path.exists();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        let mut order = Vec::new();
        let mut index = HashMap::new();
        for line in text.lines().map(str::trim) {
            if is_item_hash_like(line) && !index.contains_key(line) {
                index.insert(line.to_string(), order.len());
                order.push(line.to_string());
            }
        }
        let file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        if !text.is_empty() && !text.ends_with('\n') {
            // A line cut short by a crash: start the next one on a line of its own.
            (&file).write_all(b"\n")?;
        }
        let cursors = match fs::read(dir.join(CURSORS)) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(
                    "{}: {e}; starting without cursors",
                    dir.join(CURSORS).display()
                );
                BTreeMap::new()
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e),
        };
        Ok((
            Journal {
                dir,
                order,
                index,
                file,
                cursors,
            },
            fresh,
        ))
    }

    /// How many arrivals there are.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The item hash of arrival `i`.
    pub fn get(&self, i: usize) -> Option<&str> {
        self.order.get(i).map(String::as_str)
    }

    /// Whether `item_hash` has arrived.
    pub fn contains(&self, item_hash: &str) -> bool {
        self.index.contains_key(item_hash)
    }

    /// Where `item_hash` is among the arrivals.
    pub fn position(&self, item_hash: &str) -> Option<usize> {
        self.index.get(item_hash).copied()
    }

    /// Appends `item_hash` unless it has arrived before; returns its position when it is new.
    pub fn append(&mut self, item_hash: &str) -> io::Result<Option<usize>> {
        if self.contains(item_hash) || !is_item_hash_like(item_hash) {
            return Ok(None);
        }
        (&self.file).write_all(format!("{item_hash}\n").as_bytes())?;
        let at = self.order.len();
        self.index.insert(item_hash.to_string(), at);
        self.order.push(item_hash.to_string());
        Ok(Some(at))
    }

    /// The saved cursor of `program`.
    pub fn cursor(&self, program: &str) -> Option<usize> {
        self.cursors.get(program).copied()
    }

    /// Saves the cursor of `program` (atomically: a temporary file renamed over the old one).
    pub fn set_cursor(&mut self, program: &str, at: usize) -> io::Result<()> {
        if self.cursors.get(program) == Some(&at) {
            return Ok(());
        }
        self.cursors.insert(program.to_string(), at);
        let text = serde_json::to_vec_pretty(&self.cursors).map_err(io::Error::other)?;
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        tmp.write_all(&text)?;
        tmp.persist(self.dir.join(CURSORS)).map_err(|e| e.error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrivals_and_cursors_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, fresh) = Journal::open(dir.path()).unwrap();
        assert!(fresh && j.is_empty());
        assert_eq!(j.append("aa").unwrap(), Some(0));
        assert_eq!(j.append("bb").unwrap(), Some(1));
        assert_eq!(j.append("aa").unwrap(), None);
        assert_eq!(j.append("../x").unwrap(), None);
        j.set_cursor("prog", 1).unwrap();
        drop(j);
        // A crash cut the last line short.
        let path = dir.path().join(DIR).join(ARRIVALS);
        fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"c")
            .unwrap();
        let (mut j, fresh) = Journal::open(dir.path()).unwrap();
        assert!(!fresh);
        assert_eq!(j.len(), 3);
        assert_eq!(j.get(1), Some("bb"));
        assert_eq!(j.position("c"), Some(2));
        assert_eq!(j.cursor("prog"), Some(1));
        assert_eq!(j.append("dd").unwrap(), Some(3));
        drop(j);
        let (j, _) = Journal::open(dir.path()).unwrap();
        assert_eq!(j.get(3), Some("dd"), "{:?}", fs::read_to_string(&path));
    }
}
