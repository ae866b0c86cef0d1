//! Item hashes: sha256 of inline and storage content, and the IPFS CIDs of ipfs content.

use data_encoding::BASE32_NOPAD;
use sha2::{Digest, Sha256};

/// Lower-case hex sha256 of `bytes` (the item hash of inline and storage content).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The two shapes an item hash can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashKind {
    /// 64 lower-case hex characters: sha256 of inline or storage content.
    Sha256,
    /// An IPFS CID: `Qm…` (CIDv0, 46 base58 characters) or `bafy…`/`bafk…` (CIDv1, base32).
    Cid,
}

const BASE58: &str = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

/// Whether `s` is a sha256 in hex (64 lower-case hex characters), as objects are named.
pub fn is_sha256(s: &str) -> bool {
    item_hash_kind(s) == Some(HashKind::Sha256)
}

/// Classifies `s` as an item hash, or `None` when it is neither a sha256 hex digest nor a CID.
pub fn item_hash_kind(s: &str) -> Option<HashKind> {
    if s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Some(HashKind::Sha256);
    }
    if s.len() == 46 && s.starts_with("Qm") && s.chars().all(|c| BASE58.contains(c)) {
        return Some(HashKind::Cid);
    }
    if (s.starts_with("bafy") || s.starts_with("bafk"))
        && (50..=128).contains(&s.len())
        && s.bytes().all(|b| matches!(b, b'a'..=b'z' | b'2'..=b'7'))
    {
        return Some(HashKind::Cid);
    }
    None
}

/// Whether `s` is a valid item hash (sha256 hex or IPFS CID).
pub fn is_item_hash(s: &str) -> bool {
    item_hash_kind(s).is_some()
}

/// The host label of a program: its item hash (64 hex digits) as lowercase unpadded base32
/// of the 32 bytes (52 characters). `None` for an item hash that is not a sha256 in hex.
pub fn host_label(item_hash: &str) -> Option<String> {
    let bytes = hex::decode(item_hash).ok().filter(|b| b.len() == 32)?;
    Some(BASE32_NOPAD.encode(&bytes).to_ascii_lowercase())
}

/// The item hash (64 lowercase hex digits) a host label names, if it is 52 base32
/// characters (any case, as DNS names are) of 32 bytes.
pub fn item_hash_of_label(label: &str) -> Option<String> {
    if label.len() != 52 {
        return None;
    }
    let bytes = BASE32_NOPAD
        .decode(label.to_ascii_uppercase().as_bytes())
        .ok()?;
    (bytes.len() == 32).then(|| hex::encode(bytes))
}
