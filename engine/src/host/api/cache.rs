//! The guest API's key-value cache (`/cache/…`): the rules for keys and patterns, the
//! [`CacheBackend`] trait every backend implements, the node's choice of backend
//! ([`CacheConfig`]), and the embedded backend ([`EmbeddedCache`], files in the node's store).
//! The Redis backend is [`super::redis::RedisCache`].
//!
//! Every operation names the program it acts for: a program sees only its own keys, whatever
//! the backend. Values expire after a time to live ([`CACHE_TTL`] unless the API says
//! otherwise); an expired value is gone (never read, listed or counted as deleted).

use std::fmt;
use std::future::Future;
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::message::sha256_hex;
use crate::store::Store;

/// How long a cached value lives: 7 days, as on aleph-vm.
pub const CACHE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The longest key, in characters.
pub const MAX_KEY_LEN: usize = 256;

/// The longest key pattern, in characters.
pub const MAX_PATTERN_LEN: usize = 256;

/// The rule a key must follow, as the 400 answer states it.
pub const KEY_RULE: &str = "a key is 1 to 256 of the characters A-Z a-z 0-9 _ (^\\w+$)";

/// The rule a key pattern must follow, as the 400 answer states it.
pub const PATTERN_RULE: &str = "a pattern is 1 to 256 of the characters A-Z a-z 0-9 _ ? * ^ - \
     (^[\\w?*^\\-]+$), where * matches any characters and ? any one character";

/// Whether `key` is a valid cache key: 1 to [`MAX_KEY_LEN`] ASCII word characters.
pub fn valid_key(key: &str) -> bool {
    (1..=MAX_KEY_LEN).contains(&key.len()) && key.bytes().all(is_word)
}

/// Whether `pattern` is a valid key pattern: 1 to [`MAX_PATTERN_LEN`] ASCII word characters
/// or `?`, `*`, `^`, `-`.
pub fn valid_pattern(pattern: &str) -> bool {
    (1..=MAX_PATTERN_LEN).contains(&pattern.len())
        && pattern
            .bytes()
            .all(|b| is_word(b) || matches!(b, b'?' | b'*' | b'^' | b'-'))
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Whether `key` matches the glob `pattern` as Redis matches the patterns [`valid_pattern`]
/// accepts: `*` any run of characters (none included), `?` exactly one, anything else itself.
pub fn glob_match(pattern: &str, key: &str) -> bool {
    let (p, k) = (pattern.as_bytes(), key.as_bytes());
    let (mut pi, mut ki) = (0, 0);
    // Where the last `*` was, and the key position it is matching up to.
    let mut star: Option<(usize, usize)> = None;
    while ki < k.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, ki));
                pi += 1;
            }
            Some(&c) if c == b'?' || c == k[ki] => {
                pi += 1;
                ki += 1;
            }
            _ => match star {
                // Let the last `*` take one more character and try again from there.
                Some((sp, sk)) => {
                    star = Some((sp, sk + 1));
                    pi = sp + 1;
                    ki = sk + 1;
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// A cache backend failed (I/O, the Redis server): the message says how. Guests see only
/// that the cache failed; the node logs this.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CacheError(pub String);

/// What a cache operation returns.
pub type CacheFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, CacheError>> + Send + 'a>>;

/// A store of values by (program, key), each with a time to live. Keys given to a backend are
/// valid ([`valid_key`], [`valid_pattern`]); `program` is the item hash of the program the
/// operation is for, and no operation ever reaches another program's keys.
pub trait CacheBackend: Send + Sync {
    /// The value of `key`, unless it is missing or expired.
    fn get<'a>(&'a self, program: &'a str, key: &'a str) -> CacheFuture<'a, Option<Vec<u8>>>;

    /// Sets `key` to `value`, replacing any value, for `ttl` from now.
    fn set<'a>(
        &'a self,
        program: &'a str,
        key: &'a str,
        value: Bytes,
        ttl: Duration,
    ) -> CacheFuture<'a, ()>;

    /// Deletes `key`; whether it was there (and not expired).
    fn delete<'a>(&'a self, program: &'a str, key: &'a str) -> CacheFuture<'a, bool>;

    /// The program's live keys that match the glob `pattern` ([`glob_match`]), in no
    /// particular order.
    fn keys<'a>(&'a self, program: &'a str, pattern: &'a str) -> CacheFuture<'a, Vec<String>>;

    /// What the backend is, for the node's logs (`embedded (DIR)`, `redis (URL)`).
    fn describe(&self) -> String;
}

/// Which cache backend the node uses (`serve --cache`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CacheConfig {
    /// Files in the node's store, under `cache/guest-cache/` (the default).
    #[default]
    Embedded,
    /// A Redis server: its URL (`redis://host:port[/db]`, `redis+unix:///path`,
    /// `unix:///path`), as aleph-vm's nodes use.
    Redis(String),
}

impl CacheConfig {
    /// Reads the option: `embedded` (or nothing), or a Redis URL (`redis://…`,
    /// `redis+unix://…`, `unix://…`). TLS (`rediss://`) is not supported.
    pub fn parse(option: &str) -> Result<Self, String> {
        let option = option.trim();
        if option.is_empty() || option == "embedded" {
            return Ok(CacheConfig::Embedded);
        }
        if option.starts_with("rediss://") {
            return Err(format!(
                "{option:?}: TLS connections to Redis (rediss://) are not supported; \
                 use redis:// or a unix socket"
            ));
        }
        if ["redis://", "redis+unix://", "unix://"]
            .iter()
            .any(|scheme| option.starts_with(scheme))
        {
            ::redis::Client::open(option)
                .map_err(|e| format!("{option:?} is not a usable Redis URL: {e}"))?;
            return Ok(CacheConfig::Redis(option.to_string()));
        }
        Err(format!(
            "{option:?}: expected `embedded` or a Redis URL (redis://host:port, \
             redis+unix:///path)"
        ))
    }

    /// The backend this option names. The embedded cache lives in `store`'s
    /// `cache/guest-cache/`; a Redis server is connected to and sent a `PING`, so a wrong URL
    /// is an error here, at start-up.
    pub async fn backend(&self, store: &Store) -> Result<Arc<dyn CacheBackend>, String> {
        match self {
            CacheConfig::Embedded => {
                let dir = store
                    .cache_dir(EMBEDDED_DIR)
                    .map_err(|e| format!("the embedded guest cache: {e}"))?;
                Ok(Arc::new(EmbeddedCache::new(dir)))
            }
            CacheConfig::Redis(url) => {
                let cache = super::redis::RedisCache::connect(url)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(Arc::new(cache))
            }
        }
    }
}

impl std::str::FromStr for CacheConfig {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        CacheConfig::parse(s)
    }
}

/// The option as given, a Redis password replaced by `***`.
impl fmt::Display for CacheConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CacheConfig::Embedded => f.write_str("embedded"),
            CacheConfig::Redis(url) => f.write_str(&super::redis::redacted(url)),
        }
    }
}

/// The directory of the embedded cache below the store's `cache/`.
pub const EMBEDDED_DIR: &str = "guest-cache";

/// The embedded backend: one file per value, `<dir>/<program>/<key>`.
///
/// A file holds one header line, `<expiry in ms since the epoch> <key>\n`, then the value's
/// bytes. It is written to a temporary file in the same directory and renamed into place, so a
/// reader sees the old value or the new one, never half of one. An expired value is treated as
/// missing and its file removed when it is next read or listed. A program or key name that is
/// not a plain file name (over 200 characters, or not alphanumeric) is stored under `~` and the
/// sha256 of the name; the header keeps the key itself.
#[derive(Debug, Clone)]
pub struct EmbeddedCache {
    dir: PathBuf,
    /// Held while a file is replaced or removed, so removing an expired value never removes a
    /// value written in the meantime.
    lock: Arc<Mutex<()>>,
}

/// Temporary files older than this are leftovers of a crash: a listing removes them.
const STALE_TMP: Duration = Duration::from_secs(3600);

/// The longest name kept as it is in the embedded cache's file names.
const MAX_PLAIN_NAME: usize = 200;

impl EmbeddedCache {
    /// The cache in `dir` (created when a value is first set).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        EmbeddedCache {
            dir: dir.into(),
            lock: Arc::default(),
        }
    }

    /// The directory the values are in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn program_dir(&self, program: &str) -> PathBuf {
        self.dir.join(file_name(program))
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the blocking pool with a clone of this cache.
    fn blocking<'a, T: Send + 'static>(
        &'a self,
        f: impl FnOnce(EmbeddedCache) -> io::Result<T> + Send + 'static,
    ) -> CacheFuture<'a, T> {
        let this = self.clone();
        Box::pin(async move {
            let dir = this.dir.clone();
            match tokio::task::spawn_blocking(move || f(this)).await {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(e)) => Err(CacheError(format!(
                    "the embedded cache in {}: {e}",
                    dir.display()
                ))),
                Err(e) => Err(CacheError(format!("the embedded cache's task failed: {e}"))),
            }
        })
    }

    fn get_blocking(&self, program: &str, key: &str) -> io::Result<Option<Vec<u8>>> {
        let path = self.program_dir(program).join(file_name(key));
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        match parse_entry(&bytes) {
            Some((expiry, stored_key, value)) if stored_key == key && expiry > now_ms() => {
                Ok(Some(value.to_vec()))
            }
            _ => {
                self.remove_dead(&path)?;
                Ok(None)
            }
        }
    }

    fn set_blocking(
        &self,
        program: &str,
        key: &str,
        value: &[u8],
        ttl: Duration,
    ) -> io::Result<()> {
        let dir = self.program_dir(program);
        std::fs::create_dir_all(&dir)?;
        let expiry = now_ms().saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        let mut tmp = tempfile::Builder::new().prefix(".tmp").tempfile_in(&dir)?;
        writeln!(tmp, "{expiry} {key}")?;
        tmp.write_all(value)?;
        let _guard = self.guard();
        tmp.persist(dir.join(file_name(key))).map_err(|e| e.error)?;
        Ok(())
    }

    fn delete_blocking(&self, program: &str, key: &str) -> io::Result<bool> {
        let path = self.program_dir(program).join(file_name(key));
        let _guard = self.guard();
        let live =
            matches!(read_header(&path)?, Some((expiry, k)) if k == key && expiry > now_ms());
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(live),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn keys_blocking(&self, program: &str, pattern: &str) -> io::Result<Vec<String>> {
        let dir = self.program_dir(program);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let now = now_ms();
        let mut keys = Vec::new();
        for entry in entries {
            let entry = entry?;
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                let stale = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > STALE_TMP);
                if stale {
                    let _ = std::fs::remove_file(&path);
                }
                continue;
            }
            match read_header(&path)? {
                Some((expiry, key)) if expiry > now && glob_match(pattern, &key) => keys.push(key),
                Some((expiry, _)) if expiry > now => {}
                Some(_) => self.remove_dead(&path)?,
                // Removed since the listing began.
                None => {}
            }
        }
        keys.sort();
        Ok(keys)
    }

    /// Removes the file at `path` if it still holds an expired or unreadable value.
    fn remove_dead(&self, path: &Path) -> io::Result<()> {
        let _guard = self.guard();
        match read_header(path) {
            Ok(Some((expiry, _))) if expiry > now_ms() => return Ok(()),
            Ok(None) => return Ok(()),
            _ => {}
        }
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

impl CacheBackend for EmbeddedCache {
    fn get<'a>(&'a self, program: &'a str, key: &'a str) -> CacheFuture<'a, Option<Vec<u8>>> {
        if let Err(e) = check(key) {
            return Box::pin(async move { Err(e) });
        }
        let (program, key) = (program.to_string(), key.to_string());
        self.blocking(move |c| c.get_blocking(&program, &key))
    }

    fn set<'a>(
        &'a self,
        program: &'a str,
        key: &'a str,
        value: Bytes,
        ttl: Duration,
    ) -> CacheFuture<'a, ()> {
        if let Err(e) = check(key) {
            return Box::pin(async move { Err(e) });
        }
        let (program, key) = (program.to_string(), key.to_string());
        self.blocking(move |c| c.set_blocking(&program, &key, &value, ttl))
    }

    fn delete<'a>(&'a self, program: &'a str, key: &'a str) -> CacheFuture<'a, bool> {
        if let Err(e) = check(key) {
            return Box::pin(async move { Err(e) });
        }
        let (program, key) = (program.to_string(), key.to_string());
        self.blocking(move |c| c.delete_blocking(&program, &key))
    }

    fn keys<'a>(&'a self, program: &'a str, pattern: &'a str) -> CacheFuture<'a, Vec<String>> {
        if !valid_pattern(pattern) {
            let e = CacheError(format!("invalid key pattern {pattern:?}: {PATTERN_RULE}"));
            return Box::pin(async move { Err(e) });
        }
        let (program, pattern) = (program.to_string(), pattern.to_string());
        self.blocking(move |c| c.keys_blocking(&program, &pattern))
    }

    fn describe(&self) -> String {
        format!("embedded ({})", self.dir.display())
    }
}

/// Refuses a key that is not valid (the routes never pass one: this keeps a bad key from ever
/// becoming a path).
fn check(key: &str) -> Result<(), CacheError> {
    if valid_key(key) {
        Ok(())
    } else {
        Err(CacheError(format!("invalid key {key:?}: {KEY_RULE}")))
    }
}

/// The file or directory name for a program or key: the name itself when it is plain and
/// short, else `~` and its sha256 (`~` is never in a plain name, so the two never meet).
fn file_name(name: &str) -> String {
    if !name.is_empty()
        && name.len() <= MAX_PLAIN_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        name.to_string()
    } else {
        format!("~{}", sha256_hex(name.as_bytes()))
    }
}

/// Milliseconds since the epoch, now.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A stored value's expiry, key and bytes; `None` when the file is not one of ours (a write
/// cut short by a crash).
fn parse_entry(bytes: &[u8]) -> Option<(u64, &str, &[u8])> {
    let end = bytes.iter().position(|&b| b == b'\n')?;
    let (expiry, key) = parse_header(&bytes[..end])?;
    Some((expiry, key, &bytes[end + 1..]))
}

fn parse_header(line: &[u8]) -> Option<(u64, &str)> {
    let line = std::str::from_utf8(line).ok()?;
    let (expiry, key) = line.split_once(' ')?;
    Some((expiry.parse().ok()?, key))
}

/// The header of the value file at `path`: `None` when there is no such file, an expiry of 0
/// when the file is not a value's.
fn read_header(path: &Path) -> io::Result<Option<(u64, String)>> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    // The header is at most 20 digits, a space, a key and a newline.
    let mut head = Vec::with_capacity(32 + MAX_KEY_LEN);
    io::Read::take(&mut file, (32 + MAX_KEY_LEN) as u64).read_to_end(&mut head)?;
    Ok(Some(
        head.iter()
            .position(|&b| b == b'\n')
            .and_then(|end| parse_header(&head[..end]))
            .map_or((0, String::new()), |(e, k)| (e, k.to_string())),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_patterns_follow_aleph_vm_rules() {
        for good in ["a", "A_9", "_", &"k".repeat(MAX_KEY_LEN)] {
            assert!(valid_key(good), "{good}");
        }
        for bad in [
            "",
            "a-b",
            "a b",
            "a/b",
            "../x",
            "é",
            "a:b",
            &"k".repeat(MAX_KEY_LEN + 1),
        ] {
            assert!(!valid_key(bad), "{bad}");
        }
        for good in ["*", "a?c", "^x-y*", "key_1"] {
            assert!(valid_pattern(good), "{good}");
        }
        for bad in ["", "[ab]", "a:*", "a\\*", "x y", "*/"] {
            assert!(!valid_pattern(bad), "{bad}");
        }
    }

    #[test]
    fn globs_match_like_redis() {
        let cases = [
            ("*", "anything", true),
            ("*", "", true),
            ("a*", "abc", true),
            ("a*", "bac", false),
            ("*c", "abc", true),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("^-", "^-", true),
            ("key", "key", true),
            ("key", "keys", false),
            ("*_1", "a_1_1", true),
        ];
        for (pattern, key, want) in cases {
            assert_eq!(glob_match(pattern, key), want, "{pattern} {key}");
        }
    }

    #[test]
    fn options_parse() {
        assert_eq!(CacheConfig::parse("").unwrap(), CacheConfig::Embedded);
        assert_eq!(
            CacheConfig::parse("embedded").unwrap(),
            CacheConfig::Embedded
        );
        assert_eq!(
            CacheConfig::parse("redis://127.0.0.1:6379").unwrap(),
            CacheConfig::Redis("redis://127.0.0.1:6379".into())
        );
        assert_eq!(
            "redis://localhost/2"
                .parse::<CacheConfig>()
                .unwrap()
                .to_string(),
            "redis://localhost/2"
        );
        for bad in ["memcached://x", "rediss://x:6380", "redis"] {
            let e = CacheConfig::parse(bad).unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn odd_names_become_hashed_file_names() {
        assert_eq!(file_name("abc_1"), "abc_1");
        let long = "k".repeat(MAX_PLAIN_NAME + 1);
        assert!(file_name(&long).starts_with('~'));
        assert!(file_name("../etc").starts_with('~'));
        assert_ne!(file_name(&long), file_name(&"k".repeat(MAX_PLAIN_NAME + 2)));
    }
}
