//! The client of another node's API: fetches messages, amends and objects, and stores them in
//! the local [`Store`] only once verified.
//!
//! It speaks the read-only subset of the Aleph API that aleph-vm uses and that
//! [`crate::server::api`] serves: `GET /api/v0/messages.json?hashes=…` (a message by item
//! hash), `…?msgType=STORE&refs=…&owners=…&sort_order=-1` (the owner's newest amends of a STORE
//! message) and `GET /api/v0/storage/raw/{sha256}` (an object's bytes).
//!
//! Nothing from the network is trusted:
//! - an object streams into a temporary file in the store's `tmp/` while it is hashed, and is
//!   stored ([`Store::adopt_object`], which hashes it again) only if its sha256 is the one asked
//!   for and it is no longer than expected;
//! - an inline message is stored only if the sha256 of its `item_content` is its item hash and
//!   it passes [`message::parse_value`]; a `storage` message only if its `content` is the JSON of
//!   the object its item hash names (fetched and hashed); `ipfs` messages are refused (no CID
//!   check here).
//!
//! A wrong hash is a [`RemoteError::HashMismatch`] naming the hash asked for and the hash of
//! what arrived; the bytes are dropped with their temporary file.

use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt as _;

use super::{Store, StoreError};
use crate::message::verify::same_account;
use crate::message::{self, Message, is_sha256, sha256_hex};
use crate::runtime::describe_http;

/// The path of the message listing, below the API's base URL.
pub const MESSAGES_PATH: &str = "/api/v0/messages.json";
/// The path prefix of raw objects (`/api/v0/storage/raw/{sha256}`), below the API's base URL.
pub const RAW_PATH: &str = "/api/v0/storage/raw/";

/// How another node is reached.
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// Longest wait for a TCP/TLS connection. By default 10 s.
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes of a response. By default 30 s.
    pub read_timeout: Duration,
    /// The largest object fetched, in bytes (a STORE message's `size`, when given, bounds it
    /// further). By default 4 GiB.
    pub max_object_bytes: u64,
    /// The largest message listing (or `storage` message content) read, in bytes. By default
    /// 16 MiB.
    pub max_listing_bytes: u64,
    /// How many of the newest amends one query asks for. By default 20.
    pub amends_per_query: u32,
}

impl Default for RemoteConfig {
    fn default() -> Self {
        RemoteConfig {
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            max_object_bytes: 4 << 30,
            max_listing_bytes: 16 << 20,
            amends_per_query: 20,
        }
    }
}

/// Why something could not be obtained from another node.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The API base URL is not an `http(s)://` URL.
    #[error("{0:?} is not an http:// or https:// URL")]
    BadUrl(String),
    /// The API does not have it.
    #[error("{what} {hash} is not on {api}")]
    NotFound {
        /// What was asked for (`message`, `object`).
        what: &'static str,
        /// Its hash.
        hash: String,
        /// The API asked.
        api: String,
    },
    /// What arrived does not hash to the hash asked for; it was not stored.
    #[error("{what} {expected} from {api} refused: hash mismatch, what arrived hashes to {actual}")]
    HashMismatch {
        /// What was asked for (`message`, `object`).
        what: &'static str,
        /// The hash asked for.
        expected: String,
        /// The sha256 of what arrived.
        actual: String,
        /// The API asked.
        api: String,
    },
    /// A message that cannot be verified or is not valid; it was not stored.
    #[error("message {hash} from {api} refused: {reason}")]
    BadMessage {
        /// The item hash asked for.
        hash: String,
        /// The API asked.
        api: String,
        /// What is wrong.
        reason: String,
    },
    /// An object or a listing larger than allowed; it was not stored.
    #[error("{what} {hash} from {api} refused: larger than {limit} bytes")]
    TooLarge {
        /// What was asked for (`object`, `listing`).
        what: &'static str,
        /// Its hash (or the query, for a listing).
        hash: String,
        /// The API asked.
        api: String,
        /// The limit in bytes.
        limit: u64,
    },
    /// The request failed or the API answered something unusable.
    #[error("{url}: {reason}")]
    Http {
        /// The URL requested.
        url: String,
        /// What went wrong (`HTTP 500`, `cannot connect: …`, `not JSON: …`).
        reason: String,
    },
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RemoteError {
    /// Whether the hash of something that arrived was wrong, or a message is not from whom
    /// it says (tampering or corruption in transit, a forgery), as opposed to something
    /// missing or unreachable.
    pub fn is_mismatch(&self) -> bool {
        matches!(
            self,
            RemoteError::HashMismatch { .. }
                | RemoteError::BadMessage { .. }
                | RemoteError::Store(StoreError::Unauthentic { .. })
        )
    }

    /// Whether a message was refused for who it is from: a signature that does not hold, or
    /// none where the store takes only signed messages.
    pub fn is_refused_message(&self) -> bool {
        matches!(
            self,
            RemoteError::Store(StoreError::Unauthentic { .. } | StoreError::Unsigned(_))
        )
    }
}

/// Another node's API, and a client for it.
#[derive(Debug, Clone)]
pub struct Remote {
    api: String,
    client: reqwest::Client,
    config: RemoteConfig,
}

impl Remote {
    /// The API at `api` (`http://host:4020`, `https://api2.aleph.im`), default settings.
    pub fn new(api: &str) -> Result<Self, RemoteError> {
        Self::with_config(api, RemoteConfig::default())
    }

    /// The API at `api` with `config`.
    pub fn with_config(api: &str, config: RemoteConfig) -> Result<Self, RemoteError> {
        let url = reqwest::Url::parse(api.trim()).map_err(|_| RemoteError::BadUrl(api.into()))?;
        if !matches!(url.scheme(), "http" | "https")
            || url.host_str().is_none()
            || url.query().is_some()
        {
            return Err(RemoteError::BadUrl(api.into()));
        }
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.read_timeout)
            .user_agent(concat!("aleph-wasm/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| RemoteError::Http {
                url: api.into(),
                reason: describe_http(&e),
            })?;
        Ok(Remote {
            api: url.as_str().trim_end_matches('/').to_string(),
            client,
            config,
        })
    }

    /// The API's base URL, without a trailing slash.
    pub fn api(&self) -> &str {
        &self.api
    }

    /// How the API is reached.
    pub fn config(&self) -> &RemoteConfig {
        &self.config
    }

    /// Sends `GET url?query`; any status is returned.
    async fn get(
        &self,
        url: &str,
        query: &[(&str, &str)],
    ) -> Result<reqwest::Response, RemoteError> {
        self.client
            .get(url)
            .query(query)
            .send()
            .await
            .map_err(|e| RemoteError::Http {
                url: url.into(),
                reason: describe_http(&e),
            })
    }

    /// The `messages` of a listing query.
    async fn list(&self, query: &[(&str, &str)]) -> Result<Vec<Value>, RemoteError> {
        let url = format!("{}{MESSAGES_PATH}", self.api);
        let response = self.get(&url, query).await?;
        let status = response.status();
        if !status.is_success() {
            return Err(RemoteError::Http {
                url,
                reason: format!("HTTP {status}"),
            });
        }
        let bytes = self
            .read_small(response, &url, "listing", format!("{query:?}"))
            .await?;
        let mut body: Value = serde_json::from_slice(&bytes).map_err(|e| RemoteError::Http {
            url: url.clone(),
            reason: format!("the answer is not JSON: {e}"),
        })?;
        match body.get_mut("messages").map(Value::take) {
            Some(Value::Array(messages)) => Ok(messages),
            _ => Err(RemoteError::Http {
                url,
                reason: "the answer has no \"messages\" list".into(),
            }),
        }
    }

    /// Fetches the message `item_hash`, verifies it and stores it.
    pub async fn fetch_message(
        &self,
        store: &Store,
        item_hash: &str,
    ) -> Result<Message, RemoteError> {
        if !is_sha256(item_hash) {
            return Err(self.bad_message(
                item_hash,
                "only sha256 item hashes can be fetched and checked".into(),
            ));
        }
        let listed = self.list(&[("hashes", item_hash)]).await?;
        let Some(value) = listed
            .iter()
            .find(|m| m.get("item_hash").and_then(Value::as_str) == Some(item_hash))
        else {
            return Err(RemoteError::NotFound {
                what: "message",
                hash: item_hash.into(),
                api: self.api.clone(),
            });
        };
        let msg = self.verify_message(value, item_hash).await?;
        put_message(store, msg.clone()).await?;
        Ok(msg)
    }

    /// Takes in a message the API pushed (its message feed, `/api/ws0/messages`): checked
    /// exactly as a fetched one — inline: the sha256 of its `item_content` is its item hash;
    /// storage: its content is the object its item hash names, fetched from this API; then
    /// [`message::parse_value`] — and stored. `Ok(None)` when the store holds it already
    /// (nothing is checked or written again).
    pub async fn accept_message(
        &self,
        store: &Store,
        value: &Value,
    ) -> Result<Option<Message>, RemoteError> {
        let hash = value
            .get("item_hash")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !is_sha256(hash) {
            return Err(self.bad_message(
                hash,
                "only sha256 item hashes can be checked and stored".into(),
            ));
        }
        if store.has_message(hash) {
            return Ok(None);
        }
        let msg = self.verify_message(value, hash).await?;
        put_message(store, msg.clone()).await?;
        Ok(Some(msg))
    }

    /// Fetches the newest amends of the STORE message `original` by its owner, verifies and
    /// stores those not yet stored; returns how many were stored. Amends from anyone else are
    /// not stored (they could never be used).
    pub async fn fetch_amends(
        &self,
        store: &Store,
        original: &Message,
    ) -> Result<usize, RemoteError> {
        let Some(content) = original.store() else {
            return Ok(0);
        };
        let owner = content.address.as_str();
        let page = self.config.amends_per_query.to_string();
        let listed = self
            .list(&[
                ("msgType", "STORE"),
                ("refs", &original.item_hash),
                ("owners", owner),
                ("sort_order", "-1"),
                ("pagination", &page),
            ])
            .await?;
        // An amend sent by someone else stands only on the owner's delegations: get them first.
        let delegated = listed.iter().any(|v| {
            v.get("sender")
                .and_then(Value::as_str)
                .is_some_and(|sender| !same_account(&original.chain, sender, owner))
        });
        if delegated {
            self.fetch_security(store, owner).await?;
        }
        let amends = |msg: &Message| {
            msg.store().is_some_and(|s| {
                s.reference.as_deref() == Some(original.item_hash.as_str())
                    && same_account(&msg.chain, &s.address, owner)
            })
        };
        let what = format!("amend of {} by {owner}", original.item_hash);
        self.store_listed(store, &listed, &what, amends).await
    }

    /// Fetches `owner`'s `security` aggregate messages (its delegations), verifies and stores
    /// those not yet stored, oldest first; a refused one is skipped with a warning.
    async fn fetch_security(&self, store: &Store, owner: &str) -> Result<(), RemoteError> {
        let page = self.config.amends_per_query.to_string();
        let listed = self
            .list(&[
                ("msgType", "AGGREGATE"),
                ("addresses", owner),
                ("sort_order", "1"),
                ("pagination", &page),
            ])
            .await?;
        let what = format!("security aggregate of {owner}");
        let security = crate::message::delegation::is_security_aggregate;
        self.store_listed(store, &listed, &what, security).await?;
        Ok(())
    }

    /// Verifies and stores the `listed` messages not stored yet that are `what` (`wanted`);
    /// returns how many were stored. One refused (a forgery, an unsigned one) is skipped with
    /// a warning: it does not hide the others.
    async fn store_listed(
        &self,
        store: &Store,
        listed: &[Value],
        what: &str,
        wanted: impl Fn(&Message) -> bool,
    ) -> Result<usize, RemoteError> {
        let mut stored = 0;
        for value in listed {
            let Some(hash) = value.get("item_hash").and_then(Value::as_str) else {
                continue;
            };
            if !is_sha256(hash) || store.has_message(hash) {
                continue;
            }
            let msg = self.verify_message(value, hash).await?;
            if !wanted(&msg) {
                tracing::debug!(
                    "{}: {hash} is not the {what} asked for; not stored",
                    self.api
                );
                continue;
            }
            match put_message(store, msg).await {
                Ok(()) => stored += 1,
                Err(e) if e.is_refused_message() => {
                    tracing::warn!("{}: {what} {hash} not stored: {e}", self.api);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(stored)
    }

    /// Checks a listed message against the item hash it was asked for (or listed under) and
    /// validates it.
    async fn verify_message(&self, value: &Value, expected: &str) -> Result<Message, RemoteError> {
        match value.get("item_type").and_then(Value::as_str) {
            Some("inline") => {
                let Some(text) = value.get("item_content").and_then(Value::as_str) else {
                    return Err(self.bad_message(
                        expected,
                        "item_content is missing, so its hash cannot be checked".into(),
                    ));
                };
                let actual = sha256_hex(text.as_bytes());
                if actual != expected {
                    return Err(RemoteError::HashMismatch {
                        what: "message",
                        expected: expected.into(),
                        actual,
                        api: self.api.clone(),
                    });
                }
            }
            Some("storage") => {
                let bytes = self.fetch_small(expected).await?;
                let stored: Value = serde_json::from_slice(&bytes).map_err(|e| {
                    self.bad_message(expected, format!("its stored content is not JSON: {e}"))
                })?;
                if value.get("content") != Some(&stored) {
                    return Err(self.bad_message(
                        expected,
                        "content is not the JSON stored under its item hash".into(),
                    ));
                }
            }
            other => {
                return Err(self.bad_message(
                    expected,
                    format!(
                        "item_type {} cannot be checked here (only inline and storage)",
                        other.unwrap_or("(missing)")
                    ),
                ));
            }
        }
        let msg =
            message::parse_value(value).map_err(|e| self.bad_message(expected, e.to_string()))?;
        if msg.item_hash != expected {
            return Err(self.bad_message(
                expected,
                format!("the API answered with message {}", msg.item_hash),
            ));
        }
        Ok(msg)
    }

    fn bad_message(&self, hash: &str, reason: String) -> RemoteError {
        RemoteError::BadMessage {
            hash: hash.into(),
            api: self.api.clone(),
            reason,
        }
    }

    /// Sends `GET /api/v0/storage/raw/{sha256}`; a 404 is [`RemoteError::NotFound`].
    async fn get_raw(&self, sha256: &str) -> Result<(String, reqwest::Response), RemoteError> {
        let url = format!("{}{RAW_PATH}{sha256}", self.api);
        let response = self.get(&url, &[]).await?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(RemoteError::NotFound {
                what: "object",
                hash: sha256.into(),
                api: self.api.clone(),
            });
        }
        if !status.is_success() {
            return Err(RemoteError::Http {
                url,
                reason: format!("HTTP {status}"),
            });
        }
        Ok((url, response))
    }

    /// A small answer's body in memory, refused (naming `what` and `hash`) past
    /// `max_listing_bytes`.
    async fn read_small(
        &self,
        response: reqwest::Response,
        url: &str,
        what: &'static str,
        hash: String,
    ) -> Result<Vec<u8>, RemoteError> {
        let limit = self.config.max_listing_bytes;
        read_limited(response, limit, url)
            .await?
            .ok_or_else(|| RemoteError::TooLarge {
                what,
                hash,
                api: self.api.clone(),
                limit,
            })
    }

    /// A small object's bytes in memory (verified, not stored).
    async fn fetch_small(&self, sha256: &str) -> Result<Vec<u8>, RemoteError> {
        let (url, response) = self.get_raw(sha256).await?;
        let bytes = self
            .read_small(response, &url, "object", sha256.into())
            .await?;
        let actual = sha256_hex(&bytes);
        if actual != sha256 {
            return Err(RemoteError::HashMismatch {
                what: "object",
                expected: sha256.into(),
                actual,
                api: self.api.clone(),
            });
        }
        Ok(bytes)
    }

    /// Fetches the object `sha256` (at most `expected_size` bytes when given), verifies it and
    /// stores it. The bytes stream to a temporary file while hashed; the file enters the store
    /// only if the hash matches.
    pub async fn fetch_object(
        &self,
        store: &Store,
        sha256: &str,
        expected_size: Option<u64>,
    ) -> Result<(), RemoteError> {
        if !is_sha256(sha256) {
            return Err(StoreError::BadHash(sha256.into()).into());
        }
        let max = self.config.max_object_bytes;
        let too_large = |limit| RemoteError::TooLarge {
            what: "object",
            hash: sha256.into(),
            api: self.api.clone(),
            limit,
        };
        let limit = match expected_size {
            Some(size) if size > max => return Err(too_large(max)),
            Some(size) => size,
            None => max,
        };
        let (url, mut response) = self.get_raw(sha256).await?;
        if response.content_length().is_some_and(|len| len > limit) {
            return Err(too_large(limit));
        }
        let tmp_dir = store.tmp_dir();
        let tmp = tempfile::NamedTempFile::new_in(&tmp_dir).map_err(super::io_at(&tmp_dir))?;
        let path = tmp.path().to_path_buf();
        let io_err = |e| RemoteError::Store(super::io_at(&path)(e));
        let mut file = tokio::fs::File::from_std(tmp.reopen().map_err(io_err)?);
        let mut hasher = Sha256::new();
        let mut written = 0u64;
        while let Some(chunk) = response.chunk().await.map_err(|e| RemoteError::Http {
            url: url.clone(),
            reason: describe_http(&e),
        })? {
            written += chunk.len() as u64;
            if written > limit {
                return Err(too_large(limit));
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(io_err)?;
        }
        file.flush().await.map_err(io_err)?;
        drop(file);
        let actual = hex::encode(hasher.finalize());
        if actual != sha256 {
            return Err(RemoteError::HashMismatch {
                what: "object",
                expected: sha256.into(),
                actual,
                api: self.api.clone(),
            });
        }
        let root = store.root().to_path_buf();
        let store = store.clone();
        let expected = sha256.to_string();
        tokio::task::spawn_blocking(move || store.adopt_object(tmp, &expected))
            .await
            .map_err(|e| task_failed(root, e))??;
        Ok(())
    }
}

/// Stores a verified message off the async workers (it is written and synced to disk).
async fn put_message(store: &Store, msg: Message) -> Result<(), RemoteError> {
    let root = store.root().to_path_buf();
    let store = store.clone();
    tokio::task::spawn_blocking(move || store.put_message(&msg))
        .await
        .map_err(|e| task_failed(root, e))??;
    Ok(())
}

/// A storing task that did not finish (it panicked or the runtime is shutting down).
fn task_failed(root: std::path::PathBuf, e: tokio::task::JoinError) -> RemoteError {
    RemoteError::Store(StoreError::Io {
        path: root,
        source: std::io::Error::other(format!("the storing task failed: {e}")),
    })
}

/// The whole body, or `None` when it is longer than `limit` bytes.
async fn read_limited(
    mut response: reqwest::Response,
    limit: u64,
    url: &str,
) -> Result<Option<Vec<u8>>, RemoteError> {
    if response.content_length().is_some_and(|len| len > limit) {
        return Ok(None);
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| RemoteError::Http {
        url: url.into(),
        reason: describe_http(&e),
    })? {
        if (bytes.len() + chunk.len()) as u64 > limit {
            return Ok(None);
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_http_base_urls_are_accepted() {
        assert_eq!(
            Remote::new("http://127.0.0.1:4020/").unwrap().api(),
            "http://127.0.0.1:4020"
        );
        assert_eq!(
            Remote::new("https://api.example/prefix").unwrap().api(),
            "https://api.example/prefix"
        );
        for bad in ["ftp://x", "not a url", "http://x/?q=1", ""] {
            assert!(
                matches!(Remote::new(bad), Err(RemoteError::BadUrl(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn mismatches_name_the_hash_asked_for() {
        let e = RemoteError::HashMismatch {
            what: "object",
            expected: "a".repeat(64),
            actual: "b".repeat(64),
            api: "http://x".into(),
        };
        assert!(e.is_mismatch());
        let text = e.to_string();
        assert!(
            text.contains(&"a".repeat(64)) && text.contains("hash mismatch"),
            "{text}"
        );
    }
}
