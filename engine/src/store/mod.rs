//! The embedded content store: objects by sha256, messages by item hash, and ref resolution.
//!
//! A store is one directory:
//!
//! ```text
//! objects/sha256/<2 hex>/<sha256>   object bytes, re-hashed whenever they are read (for a
//!                                   file handed out by path: on its first use in a process and
//!                                   whenever its size, times or inode change)
//! messages/<item hash>.json         a validated message, in the final envelope form
//! amends/<ref>/<item hash>          marker: this STORE message amends <ref>
//! cache/                            derived data (compiled modules, unpacked archives); safe to delete
//! volumes/<owner>/<name>/           persistent volumes with `persistence: host`
//! tmp/                              scratch space; files are renamed from here into place
//! ```
//!
//! Every write lands in `tmp/` first and is renamed into its final name, so a crash mid-write
//! never leaves a half object under a real name. Nothing here deletes stored data.
//!
//! Submodules: [`remote`] fetches messages, amends and objects from another node's API and
//! stores them only once verified; [`prefetch`] knows what a program needs (its message, every
//! ref, the runtime's interpreter and bootstrap files) and fetches what is missing, once per
//! program; [`query`] lists stored messages the way Aleph's `GET /api/v0/messages.json` does.

pub mod prefetch;
pub mod query;
pub mod remote;

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::message::{
    self, Authenticity, Content, ItemType, Message, MessageError, MessageType, ObjectRef,
    SignatureError,
};

/// The environment variable that selects the store directory (`--store` wins over it).
pub const STORE_ENV: &str = "ALEPH_WASM_STORE";

/// What can go wrong while reading or writing the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An object or message that the caller asked for is not in the store.
    #[error("{what} {hash} is not in the store")]
    NotFound {
        /// What was looked up ("object", "message").
        what: &'static str,
        /// The hash that was looked up.
        hash: String,
    },
    /// An object's bytes no longer match the hash they are stored under.
    #[error("object {hash} is corrupt: its bytes hash to {actual}")]
    Corrupt {
        /// The hash the object is stored under.
        hash: String,
        /// The hash of the bytes found.
        actual: String,
    },
    /// A hash given by the caller is not a sha256 hex string.
    #[error("{0:?} is not a sha256 hash (64 lowercase hex characters)")]
    BadHash(String),
    /// A `ref` names a message that is not a STORE message.
    #[error("ref {reference} names a {kind} message, not a STORE message")]
    NotAStoreMessage {
        /// The ref.
        reference: String,
        /// The type of the message it names.
        kind: String,
    },
    /// A STORE message points at IPFS content, which the embedded store cannot hold.
    #[error(
        "ref {0} points at IPFS content, which this store does not hold (only `storage` objects)"
    )]
    Ipfs(String),
    /// A stored message failed validation when read back.
    #[error("stored message {hash} is invalid: {source}")]
    BadMessage {
        /// The message's item hash.
        hash: String,
        /// What is wrong with it.
        source: MessageError,
    },
    /// A message that is not from whom it says (a bad signature, an unsupported chain, content
    /// for another address) was offered for storage.
    #[error("message {hash} is refused: {source}")]
    Unauthentic {
        /// The message's item hash.
        hash: String,
        /// Why.
        source: Box<SignatureError>,
    },
    /// A message without a signature was offered to a store that refuses them.
    #[error(
        "message {0} is refused: it has no signature, and this store takes only signed messages \
         (`--unsigned trust` takes unsigned ones, for local development)"
    )]
    Unsigned(String),
    /// A message whose inline hash could not be checked was offered for storage.
    #[error(
        "message {0}: item_content is missing, so the inline item_hash cannot be checked; refusing to store it"
    )]
    Unverified(String),
    /// An I/O error, with the path it happened on.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// Attaches a path to an I/O error.
pub(crate) fn io_at(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A STORE message resolved to the object it names.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    /// The ref as written in the message.
    pub reference: String,
    /// The item hash of the STORE message actually used (differs from `reference` after an amend).
    pub message_hash: String,
    /// The sha256 of the file.
    pub file_hash: String,
    /// Where the (verified) file is.
    pub path: PathBuf,
}

/// How a store takes messages that come in without a signature ([`Store::put_message`]).
/// Signed messages are always verified, and refused when their signature does not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnsignedMessages {
    /// Taken, their sender trusted as written: local development, and nodes that exchange
    /// their own unsigned messages. The default of a store opened by the library.
    #[default]
    Trust,
    /// Refused with [`StoreError::Unsigned`]: a node of the network, where every message is
    /// signed. The default of `serve`.
    Refuse,
}

impl UnsignedMessages {
    /// `trust` or `refuse`.
    pub fn as_str(self) -> &'static str {
        match self {
            UnsignedMessages::Trust => "trust",
            UnsignedMessages::Refuse => "refuse",
        }
    }
}

/// The embedded content store, rooted at one directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    /// How messages without a signature are taken.
    unsigned: UnsignedMessages,
    /// Objects [`Store::verify_object`] hashed in this process, with the file's metadata then:
    /// a large object (an interpreter) is not hashed again on every execution while its file
    /// is unchanged.
    verified: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, FileStamp>>>,
    /// Messages [`Store::message`] parsed in this process, with their file's stamp then: a
    /// program served request after request is read and validated once, not per request.
    parsed: std::sync::Arc<std::sync::Mutex<ParsedMessages>>,
}

/// How many parsed messages a store keeps in memory, and how many bytes of message files they
/// may come from in all; past either, the least recently used go. A message file larger than
/// the byte bound is parsed on every read and never kept.
const PARSED_MESSAGES: usize = 1024;
const PARSED_MESSAGE_BYTES: u64 = 64 << 20;

/// Parsed messages by item hash: the stamp of the file each was parsed from, the message, and
/// when it was last used (a counter).
#[derive(Debug, Default)]
struct ParsedMessages {
    entries: std::collections::HashMap<String, (FileStamp, std::sync::Arc<Message>, u64)>,
    /// The sizes of the files the entries were parsed from, summed.
    bytes: u64,
    clock: u64,
}

impl ParsedMessages {
    fn get(&mut self, item_hash: &str, stamp: &FileStamp) -> Option<std::sync::Arc<Message>> {
        self.clock += 1;
        let clock = self.clock;
        let (seen, msg, used) = self.entries.get_mut(item_hash)?;
        if seen != stamp {
            return None;
        }
        *used = clock;
        Some(msg.clone())
    }

    fn put(&mut self, stamp: FileStamp, msg: std::sync::Arc<Message>) {
        if stamp.len > PARSED_MESSAGE_BYTES {
            return;
        }
        self.remove(&msg.item_hash);
        while self.entries.len() >= PARSED_MESSAGES || self.bytes + stamp.len > PARSED_MESSAGE_BYTES
        {
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, (_, _, used))| *used)
                .map(|(hash, _)| hash.clone())
            else {
                break;
            };
            self.remove(&oldest);
        }
        self.clock += 1;
        self.bytes += stamp.len;
        self.entries
            .insert(msg.item_hash.clone(), (stamp, msg, self.clock));
    }

    fn remove(&mut self, item_hash: &str) {
        if let Some((stamp, _, _)) = self.entries.remove(item_hash) {
            self.bytes = self.bytes.saturating_sub(stamp.len);
        }
    }
}

/// One line that identifies this version of the file `meta` describes (size, times, inode):
/// any write or replacement changes it. A file hashed once can be trusted by a later process
/// while its line is unchanged.
pub(crate) fn file_stamp(meta: &fs::Metadata) -> String {
    FileStamp::of(meta).encode()
}

/// What identifies one version of a file: any write or replacement changes it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<std::time::SystemTime>,
    #[cfg(unix)]
    ctime: (i64, i64),
    #[cfg(unix)]
    inode: (u64, u64),
}

impl FileStamp {
    /// The stamp as one line of text (what `cache/verified/<sha256>` holds).
    fn encode(&self) -> String {
        let modified = self
            .modified
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(-1, |d| d.as_nanos() as i128);
        #[cfg(unix)]
        return format!(
            "{} {modified} {} {} {} {}",
            self.len, self.ctime.0, self.ctime.1, self.inode.0, self.inode.1
        );
        #[cfg(not(unix))]
        return format!("{} {modified}", self.len);
    }

    fn of(meta: &fs::Metadata) -> Self {
        #[cfg(unix)]
        use std::os::unix::fs::MetadataExt as _;
        FileStamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            #[cfg(unix)]
            ctime: (meta.ctime(), meta.ctime_nsec()),
            #[cfg(unix)]
            inode: (meta.dev(), meta.ino()),
        }
    }
}

impl Store {
    /// The default store directory: `$ALEPH_WASM_STORE`, else `<XDG data dir>/aleph-wasm`,
    /// else `./.aleph-wasm` when the platform has no data directory.
    pub fn default_root() -> PathBuf {
        if let Some(dir) = std::env::var_os(STORE_ENV).filter(|d| !d.is_empty()) {
            return PathBuf::from(dir);
        }
        dirs::data_dir()
            .map(|d| d.join("aleph-wasm"))
            .unwrap_or_else(|| PathBuf::from(".aleph-wasm"))
    }

    /// Opens (creating when needed) the store at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        for sub in [
            "objects/sha256",
            "messages",
            "amends",
            "cache",
            "volumes",
            "tmp",
        ] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).map_err(io_at(&dir))?;
        }
        Ok(Store {
            root,
            unsigned: UnsignedMessages::default(),
            verified: Default::default(),
            parsed: Default::default(),
        })
    }

    /// The same store, taking messages without a signature as `unsigned` says.
    pub fn with_unsigned(mut self, unsigned: UnsignedMessages) -> Self {
        self.unsigned = unsigned;
        self
    }

    /// How this store takes messages without a signature.
    pub fn unsigned(&self) -> UnsignedMessages {
        self.unsigned
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A directory for derived, re-creatable data (`cache/<name>`), created on demand.
    pub fn cache_dir(&self, name: &str) -> Result<PathBuf, StoreError> {
        let dir = self.root.join("cache").join(name);
        fs::create_dir_all(&dir).map_err(io_at(&dir))?;
        Ok(dir)
    }

    /// The scratch directory; files made there can be renamed into the store atomically.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// The host directory of a persistent volume (`persistence: host`), created on demand.
    pub fn volume_dir(&self, owner: &str, name: &str) -> Result<PathBuf, StoreError> {
        let dir = self
            .root
            .join("volumes")
            .join(safe_component(owner))
            .join(safe_component(name));
        fs::create_dir_all(&dir).map_err(io_at(&dir))?;
        Ok(dir)
    }

    fn object_file(&self, hash: &str) -> Result<PathBuf, StoreError> {
        check_sha256(hash)?;
        Ok(self.root.join("objects/sha256").join(&hash[..2]).join(hash))
    }

    /// Stores `bytes`, returning their sha256.
    pub fn put_object(&self, bytes: &[u8]) -> Result<String, StoreError> {
        self.put_object_from(&mut io::Cursor::new(bytes))
            .map(|(h, _)| h)
    }

    /// Stores the file at `path` (streamed, never whole in memory); returns its sha256 and size.
    pub fn put_object_file(&self, path: &Path) -> Result<(String, u64), StoreError> {
        let mut file = fs::File::open(path).map_err(io_at(path))?;
        self.put_object_from(&mut file)
    }

    /// Stores what `reader` yields; returns its sha256 and size.
    pub fn put_object_from(&self, reader: &mut dyn Read) -> Result<(String, u64), StoreError> {
        let tmp_dir = self.tmp_dir();
        let mut tmp = tempfile::NamedTempFile::new_in(&tmp_dir).map_err(io_at(&tmp_dir))?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = reader.read(&mut buf).map_err(io_at(tmp.path()))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            tmp.write_all(&buf[..n]).map_err(io_at(tmp.path()))?;
            size += n as u64;
        }
        let hash = hex::encode(hasher.finalize());
        let dest = self.object_file(&hash)?;
        if dest.exists() && self.verify_object(&hash).is_ok() {
            return Ok((hash, size));
        }
        persist(tmp, &dest)?;
        Ok((hash, size))
    }

    /// Moves `tmp`, a finished file made in [`Store::tmp_dir`], into the store as the object
    /// `expected`, after hashing it again; returns its size. Bytes that do not hash to
    /// `expected` are never stored: the temporary file is deleted and the error is
    /// [`StoreError::Corrupt`].
    pub fn adopt_object(
        &self,
        tmp: tempfile::NamedTempFile,
        expected: &str,
    ) -> Result<u64, StoreError> {
        let dest = self.object_file(expected)?;
        let mut file = tmp.reopen().map_err(io_at(tmp.path()))?;
        let size = file.metadata().map_err(io_at(tmp.path()))?.len();
        let actual = sha256_reader(&mut file).map_err(io_at(tmp.path()))?;
        if actual != expected {
            return Err(StoreError::Corrupt {
                hash: expected.to_string(),
                actual,
            });
        }
        if dest.exists() && self.verify_object(expected).is_ok() {
            return Ok(size);
        }
        persist(tmp, &dest)?;
        Ok(size)
    }

    /// Where the object `hash` is (or would be) kept; its bytes are not verified.
    pub fn object_path(&self, hash: &str) -> Result<PathBuf, StoreError> {
        self.object_file(hash)
    }

    /// Whether an object is present (not verified).
    pub fn has_object(&self, hash: &str) -> bool {
        self.object_file(hash).map(|p| p.is_file()).unwrap_or(false)
    }

    /// Re-hashes a stored object and returns its path when the bytes still match. An object
    /// already hashed — in this process, or by an earlier one, which left the file's stamp in
    /// `cache/verified/` — is not hashed again while its file keeps the same size, times and
    /// inode (an interpreter of 26 MB is verified once, not per execution); any write or
    /// replacement (which changes the inode or the change time) makes it hashed again.
    pub fn verify_object(&self, hash: &str) -> Result<PathBuf, StoreError> {
        let path = self.object_file(hash)?;
        let mut file = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound {
                    what: "object",
                    hash: hash.to_string(),
                });
            }
            Err(e) => return Err(io_at(&path)(e)),
        };
        let stamp = file.metadata().map(|m| FileStamp::of(&m)).ok();
        let memo = |v: &mut std::collections::HashMap<String, FileStamp>| {
            stamp.is_some() && v.get(hash) == stamp.as_ref()
        };
        if memo(&mut lock_map(&self.verified)) {
            return Ok(path);
        }
        // Hashed by an earlier process, and the file unchanged since (same size, times and
        // inode): the stamp it left says so, and a one-shot run does not hash 26 MB again.
        let recorded = self.root.join("cache").join("verified").join(hash);
        if let Some(stamp) = &stamp
            && fs::read_to_string(&recorded).is_ok_and(|text| text == stamp.encode())
        {
            lock_map(&self.verified).insert(hash.to_string(), stamp.clone());
            return Ok(path);
        }
        let actual = sha256_reader(&mut file).map_err(io_at(&path))?;
        if actual != hash {
            lock_map(&self.verified).remove(hash);
            let _ = fs::remove_file(&recorded);
            return Err(StoreError::Corrupt {
                hash: hash.to_string(),
                actual,
            });
        }
        if let Some(stamp) = stamp {
            if let Ok(dir) = self.cache_dir("verified") {
                // Best effort: without the stamp the next process hashes the file again.
                let _ = self.write_atomic(&dir.join(hash), stamp.encode().as_bytes());
            }
            lock_map(&self.verified).insert(hash.to_string(), stamp);
        }
        Ok(path)
    }

    /// Reads a stored object, verifying its hash.
    pub fn read_object(&self, hash: &str) -> Result<Vec<u8>, StoreError> {
        let path = self.object_file(hash)?;
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound {
                    what: "object",
                    hash: hash.to_string(),
                });
            }
            Err(e) => return Err(io_at(&path)(e)),
        };
        let actual = message::sha256_hex(&bytes);
        if actual != hash {
            return Err(StoreError::Corrupt {
                hash: hash.to_string(),
                actual,
            });
        }
        Ok(bytes)
    }

    fn message_file(&self, item_hash: &str) -> Result<PathBuf, StoreError> {
        if item_hash.is_empty()
            || !item_hash.bytes().all(|b| b.is_ascii_alphanumeric())
            || item_hash.len() > 128
        {
            return Err(StoreError::BadHash(item_hash.to_string()));
        }
        Ok(self.root.join("messages").join(format!("{item_hash}.json")))
    }

    /// Stores a validated message that comes from outside (a file, a client, another node),
    /// and indexes it when it amends a STORE message.
    ///
    /// Refused: an inline message whose hash could not be checked; one that is not from whom
    /// it says ([`message::authenticate`]: a signature that does not verify, an unsupported
    /// chain, content for another address); one without a signature when this store refuses
    /// them ([`UnsignedMessages`]). Nothing is stored then. Returns what the signature
    /// established.
    pub fn put_message(&self, msg: &Message) -> Result<Authenticity, StoreError> {
        let authenticity = self.check_message(msg)?;
        if authenticity == Authenticity::Unsigned && self.unsigned == UnsignedMessages::Refuse {
            return Err(StoreError::Unsigned(msg.item_hash.clone()));
        }
        self.write_message(msg)?;
        Ok(authenticity)
    }

    /// Stores a message this node made itself (`store add`, `program create`, a runtime's
    /// manifest): checked as [`Store::put_message`] does, but taken without a signature
    /// whatever the store's [`UnsignedMessages`].
    pub fn put_own_message(&self, msg: &Message) -> Result<(), StoreError> {
        self.check_message(msg)?;
        self.write_message(msg)
    }

    /// The checks every stored message passes: its inline hash, and who it is from — its
    /// signature, and its content speaking for its sender or for an owner whose security
    /// aggregate here authorises the sender ([`message::delegation`]).
    fn check_message(&self, msg: &Message) -> Result<Authenticity, StoreError> {
        if msg.item_type == ItemType::Inline && !msg.hash_verified {
            return Err(StoreError::Unverified(msg.item_hash.clone()));
        }
        let unauthentic = |source| StoreError::Unauthentic {
            hash: msg.item_hash.clone(),
            source: Box::new(source),
        };
        let authenticity = message::verify::verify_signature(msg).map_err(unauthentic)?;
        match message::verify::check_owner(msg) {
            Ok(()) => Ok(authenticity),
            Err(refusal) => {
                let owner = message::verify::content_address(msg).unwrap_or_default();
                let authorizations = self.security_authorizations(owner)?;
                if message::delegation::authorizes(&authorizations, msg) {
                    Ok(authenticity)
                } else {
                    Err(unauthentic(refusal))
                }
            }
        }
    }

    /// The `authorizations` of `owner`'s `security` aggregate: its AGGREGATE messages stored
    /// here, their contents merged in time order (a later one replaces a key).
    pub fn security_authorizations(&self, owner: &str) -> Result<Vec<Value>, StoreError> {
        let mut parts = self.marked_messages(marker_hashes(&self.security_dir(owner))?)?;
        parts.sort_by(|a, b| {
            a.time
                .total_cmp(&b.time)
                .then_with(|| a.item_hash.cmp(&b.item_hash))
        });
        let mut merged = serde_json::Map::new();
        for msg in &parts {
            if let Content::Other(content) = &msg.content
                && let Some(Value::Object(update)) = content.get("content")
            {
                merged.extend(update.clone());
            }
        }
        Ok(match merged.remove("authorizations") {
            Some(Value::Array(list)) => list,
            _ => Vec::new(),
        })
    }

    /// Where the markers of `owner`'s security aggregate messages are (EVM addresses folded to
    /// lower case: one account, one directory).
    fn security_dir(&self, owner: &str) -> PathBuf {
        let owner = if message::verify::is_evm_address(owner) {
            owner.to_ascii_lowercase()
        } else {
            owner.to_string()
        };
        self.root
            .join("aggregates")
            .join(message::delegation::SECURITY_KEY)
            .join(safe_component(&owner))
    }

    fn write_message(&self, msg: &Message) -> Result<(), StoreError> {
        let dest = self.message_file(&msg.item_hash)?;
        let text = serde_json::to_vec_pretty(&msg.to_json()).map_err(|e| StoreError::Io {
            path: dest.clone(),
            source: io::Error::other(e),
        })?;
        // The amend marker goes first and the message file last: whoever sees the message
        // (a node polling the store) also sees it in the amends of its original. A marker
        // whose message is missing (a write in progress, or one cut short) is skipped.
        if let Content::Store(store) = &msg.content
            && let Some(original) = &store.reference
        {
            self.write_marker(&self.amends_dir(original), &msg.item_hash)?;
        }
        // Likewise an owner's security aggregate, indexed by the owner it speaks for.
        if message::delegation::is_security_aggregate(msg)
            && let Some(owner) = message::verify::content_address(msg)
        {
            self.write_marker(&self.security_dir(owner), &msg.item_hash)?;
        }
        self.write_atomic(&dest, &text)
    }

    /// Writes the index marker of message `item_hash` in `dir` (read by [`marker_hashes`]).
    fn write_marker(&self, dir: &Path, item_hash: &str) -> Result<(), StoreError> {
        fs::create_dir_all(dir).map_err(io_at(dir))?;
        self.write_atomic(&dir.join(safe_component(item_hash)), b"")
    }

    /// Where the markers of the amends of `original` are.
    fn amends_dir(&self, original: &str) -> PathBuf {
        self.root.join("amends").join(safe_component(original))
    }

    /// Whether a message is present (not validated).
    pub fn has_message(&self, item_hash: &str) -> bool {
        self.message_file(item_hash)
            .map(|p| p.is_file())
            .unwrap_or(false)
    }

    /// Reads a stored message back, validating it again (a copy of [`Store::message`]'s).
    pub fn get_message(&self, item_hash: &str) -> Result<Message, StoreError> {
        self.message(item_hash).map(|msg| Message::clone(&msg))
    }

    /// A stored message, validated, shared. Its file is read and validated once per process
    /// while the file keeps the same size, times and inode (a message file is only ever
    /// written whole, under a new inode); later calls only read its metadata. A file that
    /// has gone is `NotFound`, as on the first call.
    pub fn message(&self, item_hash: &str) -> Result<std::sync::Arc<Message>, StoreError> {
        let path = self.message_file(item_hash)?;
        let not_found = || StoreError::NotFound {
            what: "message",
            hash: item_hash.to_string(),
        };
        // The stamp is taken before the read: a file replaced in between is read again on the
        // next call, as its stamp has changed.
        let stamp = match fs::metadata(&path) {
            Ok(meta) => FileStamp::of(&meta),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(not_found()),
            Err(e) => return Err(io_at(&path)(e)),
        };
        if let Some(msg) = lock_map(&self.parsed).get(item_hash, &stamp) {
            return Ok(msg);
        }
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(not_found()),
            Err(e) => return Err(io_at(&path)(e)),
        };
        let msg = message::parse(&bytes).map_err(|source| StoreError::BadMessage {
            hash: item_hash.to_string(),
            source,
        })?;
        if msg.item_hash != item_hash {
            return Err(StoreError::Corrupt {
                hash: item_hash.to_string(),
                actual: msg.item_hash,
            });
        }
        let msg = std::sync::Arc::new(msg);
        lock_map(&self.parsed).put(stamp, msg.clone());
        Ok(msg)
    }

    /// Every stored message's item hash, sorted.
    pub fn message_hashes(&self) -> Result<Vec<String>, StoreError> {
        let dir = self.root.join("messages");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_at(&dir))? {
            let entry = entry.map_err(io_at(&dir))?;
            if let Some(hash) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
            {
                out.push(hash.to_string());
            }
        }
        out.sort();
        Ok(out)
    }

    /// The item hashes of the stored STORE messages that amend `original` (from any owner),
    /// sorted.
    pub fn amend_hashes(&self, original: &str) -> Result<Vec<String>, StoreError> {
        marker_hashes(&self.amends_dir(original))
    }

    /// The stored STORE messages that amend `original`, from any owner (a marker whose
    /// message is not stored yet is skipped).
    fn amends_of(&self, original: &str) -> Result<Vec<Message>, StoreError> {
        self.marked_messages(self.amend_hashes(original)?)
    }

    /// The stored messages of `hashes` (index markers); one not stored (yet) is skipped.
    fn marked_messages(&self, hashes: Vec<String>) -> Result<Vec<Message>, StoreError> {
        let mut out = Vec::new();
        for hash in hashes {
            match self.get_message(&hash) {
                Ok(msg) => out.push(msg),
                Err(StoreError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Resolves a `ref` to the STORE message to use, following `use_latest` to the newest amend
    /// from the original's owner (amends from anyone else are ignored).
    pub fn resolve_message(&self, r: &ObjectRef) -> Result<Message, StoreError> {
        let original = self.get_message(&r.reference)?;
        let Some(content) = original.store() else {
            return Err(StoreError::NotAStoreMessage {
                reference: r.reference.clone(),
                kind: format!("{:?}", original.kind).to_uppercase(),
            });
        };
        if !r.use_latest {
            return Ok(original);
        }
        let owner = content.address.clone();
        let newest = self
            .amends_of(&r.reference)?
            .into_iter()
            .filter(|m| {
                m.store()
                    .is_some_and(|s| message::verify::same_account(&m.chain, &s.address, &owner))
            })
            .max_by(|a, b| {
                a.time
                    .total_cmp(&b.time)
                    .then_with(|| a.item_hash.cmp(&b.item_hash))
            });
        Ok(newest.unwrap_or(original))
    }

    /// Resolves a `ref` all the way to a verified file.
    pub fn resolve(&self, r: &ObjectRef) -> Result<Resolved, StoreError> {
        let msg = self.resolve_message(r)?;
        let store = msg.store().ok_or_else(|| StoreError::NotAStoreMessage {
            reference: r.reference.clone(),
            kind: format!("{:?}", msg.kind).to_uppercase(),
        })?;
        if store.item_type == ItemType::Ipfs {
            return Err(StoreError::Ipfs(r.reference.clone()));
        }
        let path = self.verify_object(&store.item_hash)?;
        Ok(Resolved {
            reference: r.reference.clone(),
            message_hash: msg.item_hash.clone(),
            file_hash: store.item_hash.clone(),
            path,
        })
    }

    /// Stores a file and a STORE message for it, owned by `owner` and signed by `signer`
    /// (whose address `owner` must be) or by nobody. Returns the STORE message (its item hash
    /// is the file's `ref`).
    pub fn add_file(
        &self,
        path: &Path,
        owner: &str,
        time: f64,
        signer: Option<&message::Signer>,
    ) -> Result<Message, StoreError> {
        let (hash, size) = self.put_object_file(path)?;
        self.add_store_message(&hash, size, owner, time, signer)
    }

    /// Writes a STORE message for an object already in the store, owned by `owner` and signed
    /// by `signer` or by nobody.
    pub fn add_store_message(
        &self,
        file_hash: &str,
        size: u64,
        owner: &str,
        time: f64,
        signer: Option<&message::Signer>,
    ) -> Result<Message, StoreError> {
        let content = serde_json::json!({
            "address": owner,
            "time": time,
            "item_type": "storage",
            "item_hash": file_hash,
            "size": size,
        });
        let mut msg = message::build_inline(MessageType::Store, "ETH", owner, time, content);
        if let Some(signer) = signer {
            signer
                .sign(&mut msg)
                .map_err(|reason| StoreError::Unauthentic {
                    hash: msg.item_hash.clone(),
                    source: Box::new(SignatureError::Malformed {
                        chain: msg.chain.clone(),
                        reason,
                    }),
                })?;
        }
        self.put_own_message(&msg)?;
        Ok(msg)
    }

    /// Writes `bytes` to `dest` through a temporary file and a rename.
    pub(crate) fn write_atomic(&self, dest: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        let tmp_dir = self.tmp_dir();
        let mut tmp = tempfile::NamedTempFile::new_in(&tmp_dir).map_err(io_at(&tmp_dir))?;
        tmp.write_all(bytes).map_err(io_at(tmp.path()))?;
        persist(tmp, dest)
    }
}

/// The names of the index markers in `dir` (message item hashes), sorted; none when `dir`
/// does not exist.
fn marker_hashes(dir: &Path) -> Result<Vec<String>, StoreError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_at(dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_at(dir))?;
        if let Some(hash) = entry.file_name().to_str() {
            out.push(hash.to_string());
        }
    }
    out.sort();
    Ok(out)
}

/// Flushes a temporary file to disk and renames it to `dest`.
fn persist(tmp: tempfile::NamedTempFile, dest: &Path) -> Result<(), StoreError> {
    tmp.as_file().sync_all().map_err(io_at(tmp.path()))?;
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).map_err(io_at(parent))?;
    }
    tmp.persist(dest).map_err(|e| StoreError::Io {
        path: dest.to_path_buf(),
        source: e.error,
    })?;
    Ok(())
}

/// The sha256 hex digest of everything `reader` yields.
pub fn sha256_reader(reader: &mut dyn Read) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

fn check_sha256(hash: &str) -> Result<(), StoreError> {
    if message::is_sha256(hash) {
        Ok(())
    } else {
        Err(StoreError::BadHash(hash.to_string()))
    }
}

/// Makes a name safe as one path component: anything but `[A-Za-z0-9._-]` is hex-escaped,
/// and names made only of dots are escaped too.
fn safe_component(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02x}"));
        }
    }
    if out.is_empty() || out.bytes().all(|b| b == b'.') {
        out = out.replace('.', "%2e");
        out.insert(0, '%');
    }
    out
}

fn lock_map<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        (dir, store)
    }

    #[test]
    fn object_round_trip_and_corruption_detected() {
        let (_d, s) = store();
        let hash = s.put_object(b"hello").unwrap();
        assert_eq!(s.read_object(&hash).unwrap(), b"hello");
        let path = s.verify_object(&hash).unwrap();
        fs::write(&path, b"HELLO").unwrap();
        let err = s.read_object(&hash).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("corrupt"));
        // Storing the right bytes again repairs the object.
        s.put_object(b"hello").unwrap();
        assert_eq!(s.read_object(&hash).unwrap(), b"hello");
    }

    #[test]
    fn a_verified_object_changed_afterwards_is_hashed_again() {
        let (_d, s) = store();
        let hash = s.put_object(b"interpreter").unwrap();
        let path = s.verify_object(&hash).unwrap();
        // Unchanged: the remembered verification stands.
        assert_eq!(s.clone().verify_object(&hash).unwrap(), path);
        // Same length, new bytes, in place: the file's times change, so it is hashed again.
        std::thread::sleep(std::time::Duration::from_millis(5));
        fs::write(&path, b"INTERPRETER").unwrap();
        let err = s.verify_object(&hash).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        // And replaced by another file of the same length.
        s.put_object(b"interpreter").unwrap();
        s.verify_object(&hash).unwrap();
        let other = path.with_extension("other");
        fs::write(&other, b"Interpreter").unwrap();
        fs::rename(&other, &path).unwrap();
        assert!(matches!(
            s.verify_object(&hash),
            Err(StoreError::Corrupt { .. })
        ));
    }

    #[test]
    fn another_process_trusts_the_stamp_of_an_unchanged_verified_object_only() {
        let (d, s) = store();
        let hash = s.put_object(b"interpreter").unwrap();
        let path = s.verify_object(&hash).unwrap();
        let stamp = d.path().join("store/cache/verified").join(&hash);
        assert!(stamp.is_file(), "the verification left a stamp");
        // A new store on the same directory (what a new process opens) does not hash again:
        // it trusts the stamp while the file is unchanged.
        let later = Store::open(d.path().join("store")).unwrap();
        assert_eq!(later.verify_object(&hash).unwrap(), path);
        // Any change of the file (new bytes, same length) makes the next process hash it again.
        std::thread::sleep(std::time::Duration::from_millis(5));
        fs::write(&path, b"INTERPRETER").unwrap();
        let later = Store::open(d.path().join("store")).unwrap();
        assert!(matches!(
            later.verify_object(&hash),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(!stamp.exists(), "a failed verification removes the stamp");
        // A forged stamp for other bytes does not match the file's own stamp either.
        fs::write(&stamp, "11 0 0 0 0 0").unwrap();
        let later = Store::open(d.path().join("store")).unwrap();
        assert!(later.verify_object(&hash).is_err());
    }

    #[test]
    fn no_temporary_files_left_behind() {
        let (_d, s) = store();
        s.put_object(b"abc").unwrap();
        s.put_object(b"abc").unwrap();
        assert_eq!(fs::read_dir(s.tmp_dir()).unwrap().count(), 0);
    }

    #[test]
    fn only_a_temporary_file_with_the_expected_hash_is_adopted() {
        let (_d, s) = store();
        let good = message::sha256_hex(b"fetched");
        let mut tmp = tempfile::NamedTempFile::new_in(s.tmp_dir()).unwrap();
        tmp.write_all(b"fetched").unwrap();
        assert_eq!(s.adopt_object(tmp, &good).unwrap(), 7);
        assert_eq!(s.read_object(&good).unwrap(), b"fetched");

        let wanted = message::sha256_hex(b"wanted");
        let mut tmp = tempfile::NamedTempFile::new_in(s.tmp_dir()).unwrap();
        tmp.write_all(b"tampered").unwrap();
        let err = s.adopt_object(tmp, &wanted).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert!(!s.has_object(&wanted));
        assert!(!s.has_object(&message::sha256_hex(b"tampered")));
        assert_eq!(fs::read_dir(s.tmp_dir()).unwrap().count(), 0);
    }

    #[test]
    fn missing_object_and_bad_hash() {
        let (_d, s) = store();
        let err = s.read_object(&"0".repeat(64)).unwrap_err();
        assert!(matches!(err, StoreError::NotFound { .. }));
        assert!(matches!(
            s.read_object("../../etc/passwd").unwrap_err(),
            StoreError::BadHash(_)
        ));
        assert!(matches!(
            s.get_message("../x").unwrap_err(),
            StoreError::BadHash(_)
        ));
    }

    #[test]
    fn a_message_is_parsed_once_while_its_file_is_unchanged() {
        let (d, s) = store();
        let f = d.path().join("f");
        fs::write(&f, b"v1").unwrap();
        let msg = s.add_file(&f, "0xowner", 10.0, None).unwrap();
        let first = s.message(&msg.item_hash).unwrap();
        assert_eq!(*first, msg);
        // Unchanged: the same parsed message, shared (another handle on the store included).
        assert!(std::sync::Arc::ptr_eq(
            &first,
            &s.clone().message(&msg.item_hash).unwrap()
        ));
        assert_eq!(s.get_message(&msg.item_hash).unwrap(), msg);
        // Replaced by a corrupt file: read and validated again.
        let path = s.message_file(&msg.item_hash).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        let other = path.with_extension("other");
        fs::write(&other, text.replace("0xowner", "0xmallory")).unwrap();
        fs::rename(&other, &path).unwrap();
        let err = s.message(&msg.item_hash).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::BadMessage { .. } | StoreError::Corrupt { .. }
            ),
            "{err}"
        );
        // Gone: not found, as for a message never stored.
        fs::remove_file(&path).unwrap();
        assert!(matches!(
            s.message(&msg.item_hash).unwrap_err(),
            StoreError::NotFound { .. }
        ));
    }

    #[test]
    fn the_parsed_messages_kept_are_bounded_and_the_recently_used_stay() {
        let mut parsed = ParsedMessages::default();
        let stamp = |n: u64| FileStamp {
            len: n,
            modified: None,
            #[cfg(unix)]
            ctime: (0, 0),
            #[cfg(unix)]
            inode: (0, n),
        };
        let msg = |n: usize| {
            let content = serde_json::json!({
                "address": "0xowner", "time": n as f64, "item_type": "storage",
                "item_hash": "0".repeat(64),
            });
            std::sync::Arc::new(message::build_inline(
                MessageType::Store,
                "ETH",
                "0xowner",
                n as f64,
                content,
            ))
        };
        let first = msg(0);
        parsed.put(stamp(0), first.clone());
        for n in 1..PARSED_MESSAGES + 10 {
            // The first message is used all along; the others once, when put.
            assert!(parsed.get(&first.item_hash, &stamp(0)).is_some(), "at {n}");
            parsed.put(stamp(n as u64), msg(n));
        }
        assert_eq!(parsed.entries.len(), PARSED_MESSAGES);
        assert!(parsed.get(&msg(1).item_hash, &stamp(1)).is_none());
        // A different stamp (the file changed) is not a hit.
        assert!(parsed.get(&first.item_hash, &stamp(1)).is_none());
        // The bytes they come from are bounded too: one large file pushes out the oldest, and
        // a file past the bound is not kept at all.
        let kept = parsed.bytes;
        assert_eq!(
            kept,
            (1..PARSED_MESSAGES as u64 + 10)
                .rev()
                .take(PARSED_MESSAGES - 1)
                .sum::<u64>()
        );
        let large = msg(5000);
        parsed.put(stamp(PARSED_MESSAGE_BYTES - 100), large.clone());
        assert!(parsed.bytes <= PARSED_MESSAGE_BYTES, "{}", parsed.bytes);
        assert!(
            parsed
                .get(&large.item_hash, &stamp(PARSED_MESSAGE_BYTES - 100))
                .is_some()
        );
        assert!(parsed.entries.len() < PARSED_MESSAGES);
        let huge = msg(5001);
        parsed.put(stamp(PARSED_MESSAGE_BYTES + 1), huge.clone());
        assert!(
            parsed
                .get(&huge.item_hash, &stamp(PARSED_MESSAGE_BYTES + 1))
                .is_none()
        );
    }

    #[test]
    fn use_latest_follows_only_the_owners_amends() {
        let (d, s) = store();
        let f = d.path().join("f");
        fs::write(&f, b"v1").unwrap();
        let original = s.add_file(&f, "0xowner", 10.0, None).unwrap();
        let v2 = s.put_object(b"v2").unwrap();
        let v3 = s.put_object(b"v3").unwrap();
        let amend = |hash: &str, owner: &str, time: f64| {
            let content = serde_json::json!({
                "address": owner, "time": time, "item_type": "storage",
                "item_hash": hash, "ref": original.item_hash,
            });
            let m = message::build_inline(MessageType::Store, "ETH", owner, time, content);
            s.put_message(&m).unwrap();
            m
        };
        amend(&v2, "0xowner", 20.0);
        amend(&v3, "0xmallory", 30.0);
        let exact = ObjectRef {
            reference: original.item_hash.clone(),
            use_latest: false,
        };
        let latest = ObjectRef {
            reference: original.item_hash.clone(),
            use_latest: true,
        };
        assert_eq!(fs::read(s.resolve(&exact).unwrap().path).unwrap(), b"v1");
        assert_eq!(fs::read(s.resolve(&latest).unwrap().path).unwrap(), b"v2");
    }

    #[test]
    fn an_amend_is_indexed_before_its_message_is_visible() {
        let (d, s) = store();
        let f = d.path().join("f");
        fs::write(&f, b"v1").unwrap();
        let original = s.add_file(&f, "0xowner", 10.0, None).unwrap();
        let v2 = s.put_object(b"v2").unwrap();
        let content = serde_json::json!({
            "address": "0xowner", "time": 20.0, "item_type": "storage",
            "item_hash": v2, "ref": original.item_hash,
        });
        let m = message::build_inline(MessageType::Store, "ETH", "0xowner", 20.0, content);
        s.put_message(&m).unwrap();
        let latest = ObjectRef {
            reference: original.item_hash.clone(),
            use_latest: true,
        };
        assert_eq!(fs::read(s.resolve(&latest).unwrap().path).unwrap(), b"v2");
        // A marker whose message file is not there (yet, or ever) is skipped, not an error.
        fs::remove_file(s.message_file(&m.item_hash).unwrap()).unwrap();
        assert_eq!(s.amend_hashes(&original.item_hash).unwrap(), [m.item_hash]);
        assert_eq!(fs::read(s.resolve(&latest).unwrap().path).unwrap(), b"v1");
    }

    /// A store that takes only signed messages, and two accounts.
    fn signed_store() -> (tempfile::TempDir, Store, message::Signer, message::Signer) {
        let (d, s) = store();
        let owner = message::Signer::from_secret(&[1u8; 32]).unwrap();
        let mallory = message::Signer::from_secret(&[2u8; 32]).unwrap();
        (d, s.with_unsigned(UnsignedMessages::Refuse), owner, mallory)
    }

    fn store_amend(original: &str, file: &str, address: &str, sender: &str, time: f64) -> Message {
        let content = serde_json::json!({
            "address": address, "time": time, "item_type": "storage",
            "item_hash": file, "ref": original,
        });
        message::build_inline(MessageType::Store, "ETH", sender, time, content)
    }

    #[test]
    fn a_store_that_refuses_unsigned_messages_still_takes_its_own() {
        let (d, s, owner, _) = signed_store();
        let f = d.path().join("f");
        fs::write(&f, b"v1").unwrap();
        let hash = s.put_object(b"v2").unwrap();
        let unsigned = store_amend(
            &"a".repeat(64),
            &hash,
            owner.address(),
            owner.address(),
            5.0,
        );
        let err = s.put_message(&unsigned).unwrap_err();
        assert!(matches!(err, StoreError::Unsigned(_)), "{err}");
        assert!(err.to_string().contains("has no signature"), "{err}");
        assert!(!s.has_message(&unsigned.item_hash));
        // What the node makes itself goes in, unsigned or signed.
        let own = s.add_file(&f, owner.address(), 1.0, None).unwrap();
        assert!(own.signature.is_none() && s.has_message(&own.item_hash));
        let signed = s.add_file(&f, owner.address(), 2.0, Some(&owner)).unwrap();
        assert_eq!(
            message::authenticate(&signed).unwrap(),
            message::Authenticity::Signed { scheme: "EIP-191" }
        );
        // A signed message from outside goes in too.
        let mut amend = store_amend(&own.item_hash, &hash, owner.address(), owner.address(), 3.0);
        owner.sign(&mut amend).unwrap();
        s.put_message(&amend).unwrap();
        assert!(s.has_message(&amend.item_hash));
        // A store that trusts unsigned messages takes the unsigned one.
        let trusting = s.clone().with_unsigned(UnsignedMessages::Trust);
        trusting.put_message(&unsigned).unwrap();
    }

    #[test]
    fn forged_amends_are_refused_and_use_latest_keeps_the_owners_file() {
        let (d, s, owner, mallory) = signed_store();
        let f = d.path().join("f");
        fs::write(&f, b"v1").unwrap();
        let original = s.add_file(&f, owner.address(), 10.0, Some(&owner)).unwrap();
        let evil = s.put_object(b"evil").unwrap();
        let latest = ObjectRef {
            reference: original.item_hash.clone(),
            use_latest: true,
        };

        // Mallory signs an amend that speaks for the owner.
        let mut forged = store_amend(
            &original.item_hash,
            &evil,
            owner.address(),
            mallory.address(),
            20.0,
        );
        mallory.sign(&mut forged).unwrap();
        let err = s.put_message(&forged).unwrap_err();
        assert!(
            matches!(
                &err,
                StoreError::Unauthentic { source, .. }
                    if matches!(**source, SignatureError::NotTheOwner { .. })
            ),
            "{err}"
        );
        assert!(err.to_string().contains(&forged.item_hash), "{err}");
        // Mallory claims to be the owner, and signs with her own key.
        let mut claimed = store_amend(
            &original.item_hash,
            &evil,
            owner.address(),
            owner.address(),
            21.0,
        );
        claimed.signature = Some(
            mallory
                .sign_hex(message::verification_buffer(&claimed).as_bytes())
                .unwrap(),
        );
        let err = s.put_message(&claimed).unwrap_err();
        assert!(
            matches!(
                &err,
                StoreError::Unauthentic { source, .. }
                    if matches!(**source, SignatureError::WrongSigner { .. })
            ),
            "{err}"
        );
        for m in [&forged, &claimed] {
            assert!(!s.has_message(&m.item_hash));
        }
        assert!(s.amend_hashes(&original.item_hash).unwrap().is_empty());
        assert_eq!(fs::read(s.resolve(&latest).unwrap().path).unwrap(), b"v1");

        // The owner's own signed amend is followed.
        let v2 = s.put_object(b"v2").unwrap();
        let mut amend = store_amend(
            &original.item_hash,
            &v2,
            owner.address(),
            owner.address(),
            30.0,
        );
        owner.sign(&mut amend).unwrap();
        s.put_message(&amend).unwrap();
        assert_eq!(fs::read(s.resolve(&latest).unwrap().path).unwrap(), b"v2");
    }

    /// An AGGREGATE message of `sender` for `address`'s `key`, signed by `signer`.
    fn aggregate(
        signer: &message::Signer,
        address: &str,
        key: &str,
        content: serde_json::Value,
        time: f64,
    ) -> Message {
        let body =
            serde_json::json!({"address": address, "key": key, "time": time, "content": content});
        let mut msg =
            message::build_inline(MessageType::Aggregate, "ETH", signer.address(), time, body);
        signer.sign(&mut msg).unwrap();
        msg
    }

    #[test]
    fn an_owners_security_aggregate_lets_a_delegate_amend_its_files() {
        let (d, s, owner, mallory) = signed_store();
        let delegate = message::Signer::from_secret(&[3u8; 32]).unwrap();
        let f = d.path().join("f");
        fs::write(&f, b"v1").unwrap();
        let original = s.add_file(&f, owner.address(), 10.0, Some(&owner)).unwrap();
        let latest = ObjectRef {
            reference: original.item_hash.clone(),
            use_latest: true,
        };
        let v2 = s.put_object(b"v2").unwrap();
        let amend_by = |signer: &message::Signer, time: f64| {
            let mut m = store_amend(
                &original.item_hash,
                &v2,
                owner.address(),
                signer.address(),
                time,
            );
            signer.sign(&mut m).unwrap();
            m
        };
        // Before any delegation: refused.
        let early = amend_by(&delegate, 20.0);
        assert!(matches!(
            s.put_message(&early),
            Err(StoreError::Unauthentic { .. })
        ));

        // The owner authorises the delegate for STORE messages (lower-case address: one account).
        let auths = serde_json::json!({"authorizations": [
            {"address": delegate.address().to_lowercase(), "types": ["STORE"]},
        ]});
        s.put_message(&aggregate(&owner, owner.address(), "security", auths, 15.0))
            .unwrap();
        assert_eq!(s.security_authorizations(owner.address()).unwrap().len(), 1);
        let delegated = amend_by(&delegate, 21.0);
        s.put_message(&delegated).unwrap();
        assert_eq!(fs::read(s.resolve(&latest).unwrap().path).unwrap(), b"v2");

        // Only for the types it names; never for someone else; never the security aggregate.
        let post = {
            let body = serde_json::json!({"address": owner.address(), "type": "note", "time": 22.0, "content": {}});
            let mut m =
                message::build_inline(MessageType::Post, "ETH", delegate.address(), 22.0, body);
            delegate.sign(&mut m).unwrap();
            m
        };
        assert!(s.put_message(&post).is_err(), "a POST is not a STORE");
        assert!(s.put_message(&amend_by(&mallory, 23.0)).is_err());
        let takeover = serde_json::json!({"authorizations": [{"address": mallory.address()}]});
        let by_delegate = aggregate(&delegate, owner.address(), "security", takeover, 24.0);
        assert!(
            s.put_message(&by_delegate).is_err(),
            "a delegate rewrote the owner's delegations"
        );
        assert_eq!(s.security_authorizations(owner.address()).unwrap().len(), 1);

        // A later aggregate replaces the list: the delegation is withdrawn.
        let none = serde_json::json!({"authorizations": []});
        s.put_message(&aggregate(&owner, owner.address(), "security", none, 30.0))
            .unwrap();
        assert!(s.put_message(&amend_by(&delegate, 31.0)).is_err());
    }

    #[test]
    fn safe_component_never_escapes() {
        for name in ["..", ".", "", "a/b", "../x", "é"] {
            let c = safe_component(name);
            assert!(
                !c.contains('/') && c != ".." && c != "." && !c.is_empty(),
                "{c}"
            );
        }
    }
}
