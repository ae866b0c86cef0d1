//! Message listing queries: Aleph's `GET /api/v0/messages.json` parameters, parsed once, and
//! run over the store (filtered, sorted by time, paginated). Served to other nodes by
//! [`crate::server::api`] and to programs by the guest API (`crate::host::api`).

use serde_json::Value;

use super::{Store, StoreError};
use crate::message::{Content, Message, MessageType};

/// Messages per page unless `pagination` says otherwise (Aleph's default).
pub const DEFAULT_PER_PAGE: usize = 20;

/// A message listing query, parsed from Aleph's parameters.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MessageQuery {
    /// Only these item hashes.
    pub hashes: Vec<String>,
    /// Only messages whose content's `ref` is one of these.
    pub refs: Vec<String>,
    /// Only messages whose content's `address` is one of these.
    pub owners: Vec<String>,
    /// Only messages sent by one of these.
    pub addresses: Vec<String>,
    /// Only messages of these types.
    pub types: Vec<MessageType>,
    /// Only messages on these channels.
    pub channels: Vec<String>,
    /// Only messages of these chains.
    pub chains: Vec<String>,
    /// Newest first (the default) or oldest first.
    pub newest_first: bool,
    /// Messages per page; 0 for all.
    pub per_page: usize,
    /// The page, from 1.
    pub page: usize,
}

impl MessageQuery {
    /// Parses the query's `(name, value)` pairs; unknown names are ignored, as Aleph does.
    pub fn parse(pairs: &[(String, String)]) -> Result<Self, String> {
        let mut q = MessageQuery {
            newest_first: true,
            per_page: DEFAULT_PER_PAGE,
            page: 1,
            ..MessageQuery::default()
        };
        for (name, value) in pairs {
            let list = || {
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
                    .map(String::from)
            };
            match name.as_str() {
                "hashes" => q.hashes.extend(list()),
                "refs" => q.refs.extend(list()),
                "owners" => q.owners.extend(list()),
                "addresses" => q.addresses.extend(list()),
                "channels" => q.channels.extend(list()),
                "chains" => q.chains.extend(list()),
                "msgType" | "msgTypes" | "message_type" | "message_types" => {
                    for t in list() {
                        let kind = MessageType::from_name(&t.to_ascii_uppercase())
                            .ok_or_else(|| format!("{name}: unknown message type {t:?}"))?;
                        q.types.push(kind);
                    }
                }
                "sort_order" | "sortOrder" => {
                    q.newest_first = match value.trim() {
                        "-1" => true,
                        "1" => false,
                        _ => return Err(format!("{name}: expected -1 or 1, got {value:?}")),
                    }
                }
                "sort_by" | "sortBy" if !matches!(value.trim(), "time" | "tx-time") => {
                    return Err(format!("{name}: expected time or tx-time, got {value:?}"));
                }
                "pagination" => {
                    q.per_page = value.trim().parse().map_err(|_| {
                        format!("{name}: expected a number of messages (0 for all), got {value:?}")
                    })?
                }
                "page" => {
                    q.page = value
                        .trim()
                        .parse()
                        .ok()
                        .filter(|p| *p >= 1)
                        .ok_or_else(|| {
                            format!("{name}: expected a page number from 1, got {value:?}")
                        })?
                }
                _ => {}
            }
        }
        Ok(q)
    }

    /// Whether `msg` passes every filter but `hashes` (applied when candidates are listed).
    pub fn matches(&self, msg: &Message) -> bool {
        let any = |wanted: &[String], have: Option<&str>| {
            wanted.is_empty() || have.is_some_and(|h| wanted.iter().any(|w| w == h))
        };
        (self.types.is_empty() || self.types.contains(&msg.kind))
            && any(&self.owners, owner(msg))
            && any(&self.addresses, Some(&msg.sender))
            && any(&self.refs, content_ref(msg))
            && any(&self.channels, msg.channel.as_deref())
            && any(&self.chains, Some(&msg.chain))
    }

    /// Lists, filters, sorts and paginates the stored messages; returns the page and the total.
    pub fn run(&self, store: &Store) -> Result<(Vec<Message>, usize), StoreError> {
        let candidates: Vec<String> = if !self.hashes.is_empty() {
            self.hashes.clone()
        } else if !self.refs.is_empty() && self.types == [MessageType::Store] {
            // The amend index lists exactly the STORE messages with a `ref`.
            let mut hashes = Vec::new();
            for r in &self.refs {
                hashes.extend(store.amend_hashes(r)?);
            }
            hashes
        } else {
            store.message_hashes()?
        };
        let mut seen = std::collections::HashSet::new();
        let mut found = Vec::new();
        for hash in candidates {
            if !seen.insert(hash.clone()) {
                continue;
            }
            match store.get_message(&hash) {
                Ok(msg) if self.matches(&msg) => found.push(msg),
                Ok(_) | Err(StoreError::NotFound { .. } | StoreError::BadHash(_)) => {}
                Err(e) => tracing::warn!("not listing stored message {hash}: {e}"),
            }
        }
        found.sort_by(|a, b| {
            a.time
                .total_cmp(&b.time)
                .then_with(|| a.item_hash.cmp(&b.item_hash))
        });
        if self.newest_first {
            found.reverse();
        }
        let total = found.len();
        let page = if self.per_page == 0 {
            found
        } else {
            found
                .into_iter()
                .skip(self.per_page.saturating_mul(self.page - 1))
                .take(self.per_page)
                .collect()
        };
        Ok((page, total))
    }
}

/// A message's owner: its content's `address`.
fn owner(msg: &Message) -> Option<&str> {
    match &msg.content {
        Content::Program(p) => Some(&p.address),
        Content::Store(s) => Some(&s.address),
        Content::Other(v) => v.get("address").and_then(Value::as_str),
    }
}

/// What a message refers to: its content's `ref`.
fn content_ref(msg: &Message) -> Option<&str> {
    match &msg.content {
        Content::Program(_) => None,
        Content::Store(s) => s.reference.as_deref(),
        Content::Other(v) => v.get("ref").and_then(Value::as_str),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn aleph_parameters_parse() {
        let q = MessageQuery::parse(&pairs(&[
            ("hashes", "a,b"),
            ("hashes", "c"),
            ("msgType", "STORE"),
            ("sort_order", "1"),
            ("pagination", "0"),
            ("page", "2"),
            ("unknown", "x"),
        ]))
        .unwrap();
        assert_eq!(q.hashes, ["a", "b", "c"]);
        assert_eq!(q.types, [MessageType::Store]);
        assert!(!q.newest_first);
        assert_eq!((q.per_page, q.page), (0, 2));
        let d = MessageQuery::parse(&[]).unwrap();
        assert!(d.newest_first);
        assert_eq!((d.per_page, d.page), (DEFAULT_PER_PAGE, 1));
    }

    #[test]
    fn bad_parameters_are_named() {
        for (k, v) in [
            ("msgType", "NOPE"),
            ("sort_order", "0"),
            ("sortBy", "size"),
            ("pagination", "-3"),
            ("page", "0"),
        ] {
            let e = MessageQuery::parse(&pairs(&[(k, v)])).unwrap_err();
            assert!(e.starts_with(k), "{e}");
        }
    }
}
