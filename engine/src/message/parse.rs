//! The validation point: raw bytes → JSON → envelope (final form or seed draft) → typed
//! content, plus the builder of new inline messages.

use serde_json::{Map, Value};

use super::error::{Errors, MessageError};
use super::hash::{HashKind, item_hash_kind, sha256_hex};
use super::model::{Content, ItemType, Message, MessageType, StoreContent};
use super::program::{Dialect, program_content};
use super::reader::{Obj, describe, json_equal};
use super::seed;

/// Longest channel name, in characters.
pub const MAX_CHANNEL_CHARS: usize = 128;

const ENVELOPE_KEYS: [&str; 15] = [
    "chain",
    "sender",
    "type",
    "channel",
    "time",
    "item_type",
    "item_content",
    "item_hash",
    "signature",
    "content",
    // Bookkeeping added by nodes and APIs: accepted and ignored.
    "confirmed",
    "confirmations",
    "size",
    "hash_type",
    "_id",
];

const MESSAGE_TYPES: &str = "POST, AGGREGATE, STORE, PROGRAM, INSTANCE, FORGET";

/// Parses and validates any Aleph message: the final envelope form, or the seed's
/// `vm-function` draft (normalised into an inline `PROGRAM` message, see [`build_inline`]).
///
/// This is the one place messages are validated; everything downstream trusts the result.
/// Never panics; on failure every problem found is reported with its JSON path.
pub fn parse(bytes: &[u8]) -> Result<Message, MessageError> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| MessageError::single("", format!("invalid JSON: {e}")))?;
    parse_value(&value)
}

/// Like [`parse`], for a document that is already JSON.
pub fn parse_value(value: &Value) -> Result<Message, MessageError> {
    if seed::is_seed_draft(value) {
        seed::parse_seed(value)
    } else {
        parse_envelope(value)
    }
}

/// Makes a new inline message: `item_content` is the compact JSON of `content`,
/// `item_hash` its sha256, `signature` and `channel` are `None`.
///
/// The result round-trips through [`Message::to_json`] and [`parse`] when `content` is valid
/// for `kind`. When it is not (or `time` is not finite), the content is kept as
/// [`Content::Other`] and [`parse`] of the result reports the problems; use
/// [`try_build_inline`] to get them directly.
pub fn build_inline(
    kind: MessageType,
    chain: &str,
    sender: &str,
    time: f64,
    content: Value,
) -> Message {
    let item_content = compact(&content);
    let item_hash = sha256_hex(item_content.as_bytes());
    match envelope_from_parts(kind, chain, sender, time, &item_content, &item_hash) {
        Ok(message) => message,
        Err(_) => Message {
            chain: chain.to_owned(),
            sender: sender.to_owned(),
            kind,
            channel: None,
            time,
            item_type: ItemType::Inline,
            item_hash,
            item_content: Some(item_content),
            signature: None,
            content: Content::Other(content),
            hash_verified: true,
        },
    }
}

/// Like [`build_inline`], but fails when the built message would not pass [`parse`].
pub fn try_build_inline(
    kind: MessageType,
    chain: &str,
    sender: &str,
    time: f64,
    content: Value,
) -> Result<Message, MessageError> {
    let item_content = compact(&content);
    let item_hash = sha256_hex(item_content.as_bytes());
    envelope_from_parts(kind, chain, sender, time, &item_content, &item_hash)
}

/// The network's canonical serialisation: compact JSON.
fn compact(value: &Value) -> String {
    // Serialising a `Value` to a string cannot fail (all keys are strings).
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned())
}

fn envelope_from_parts(
    kind: MessageType,
    chain: &str,
    sender: &str,
    time: f64,
    item_content: &str,
    item_hash: &str,
) -> Result<Message, MessageError> {
    let mut map = Map::new();
    map.insert("chain".into(), chain.into());
    map.insert("sender".into(), sender.into());
    map.insert("type".into(), kind.as_str().into());
    map.insert("channel".into(), Value::Null);
    map.insert(
        "time".into(),
        serde_json::Number::from_f64(time).map_or(Value::Null, Value::Number),
    );
    map.insert("item_type".into(), "inline".into());
    map.insert("item_content".into(), item_content.into());
    map.insert("item_hash".into(), item_hash.into());
    map.insert("signature".into(), Value::Null);
    parse_envelope(&Value::Object(map))
}

/// Validates a final-form envelope and its content.
fn parse_envelope(value: &Value) -> Result<Message, MessageError> {
    let mut errors = Errors::default();
    let Some(obj) = Obj::new(&mut errors, "", value, &ENVELOPE_KEYS, &[]) else {
        return errors.finish(None);
    };
    let e = &mut errors;
    let chain = obj.req_nonempty_str(e, "chain");
    let sender = obj.req_nonempty_str(e, "sender");
    let kind = obj.req_enum(
        e,
        "type",
        "message type",
        MESSAGE_TYPES,
        MessageType::from_name,
    );
    let channel = obj.opt_str(e, "channel");
    if let Some(c) = &channel {
        let chars = c.chars().count();
        if chars > MAX_CHANNEL_CHARS {
            e.push(
                &obj.path("channel"),
                format!("must be at most {MAX_CHANNEL_CHARS} characters, got {chars}"),
            );
        }
    }
    let time = obj.req_time(e, "time");
    let item_type = obj.req_enum(
        e,
        "item_type",
        "item type",
        "inline, storage, ipfs",
        ItemType::from_name,
    );
    let item_hash = obj.req_str(e, "item_hash");
    let hash_ok = match (&item_hash, item_type) {
        (Some(h), Some(t)) => check_item_hash(e, &obj.path("item_hash"), h, t),
        _ => false,
    };
    let item_content = obj.opt_str(e, "item_content");
    let signature = obj.opt_str(e, "signature");
    bookkeeping(e, &obj);

    let mut hash_verified = false;
    let content_value: Option<Value> = match (item_type, &item_content) {
        (Some(ItemType::Inline), Some(text)) => {
            if let Some(h) = &item_hash
                && hash_ok
            {
                let actual = sha256_hex(text.as_bytes());
                if *h == actual {
                    hash_verified = true;
                } else {
                    e.push(
                        &obj.path("item_hash"),
                        format!(
                            "does not match the sha256 of item_content (item_hash is {h}, \
                             sha256(item_content) is {actual})"
                        ),
                    );
                }
            }
            match serde_json::from_str::<Value>(text) {
                Ok(parsed) => {
                    if let Some(given) = obj.get("content")
                        && !json_equal(given, &parsed)
                    {
                        e.push(
                            &obj.path("content"),
                            "does not match the parsed item_content",
                        );
                    }
                    Some(parsed)
                }
                Err(err) => {
                    e.push(
                        &obj.path("item_content"),
                        format!("is not valid JSON: {err}"),
                    );
                    None
                }
            }
        }
        (Some(ItemType::Inline), None) => {
            let given = obj.get("content").cloned();
            if given.is_none() {
                e.push(
                    &obj.path("item_content"),
                    "is required for an inline message (or give \"content\")",
                );
            }
            given
        }
        (Some(t), _) => {
            if item_content.is_some() {
                e.push(
                    &obj.path("item_content"),
                    format!("must be absent when item_type is {:?}", t.as_str()),
                );
            }
            let given = obj.get("content").cloned();
            if given.is_none() {
                e.push(
                    &obj.path("content"),
                    format!(
                        "is required: a {:?} message's content is stored elsewhere; fetch it \
                         and give it here",
                        t.as_str()
                    ),
                );
            }
            given
        }
        (None, _) => obj.get("content").cloned(),
    };

    let content = match (kind, &content_value) {
        (Some(kind), Some(v)) => typed_content(e, kind, v),
        _ => None,
    };

    let message = (|| {
        Some(Message {
            chain: chain?,
            sender: sender?,
            kind: kind?,
            channel,
            time: time?,
            item_type: item_type?,
            item_hash: item_hash?,
            item_content,
            signature,
            content: content?,
            hash_verified,
        })
    })();
    errors.finish(message)
}

/// Checks the shape of `hash` for `item_type`; returns whether it is right.
fn check_item_hash(errors: &mut Errors, path: &str, hash: &str, item_type: ItemType) -> bool {
    let kind = item_hash_kind(hash);
    let ok = match item_type {
        ItemType::Inline | ItemType::Storage => kind == Some(HashKind::Sha256),
        ItemType::Ipfs => kind == Some(HashKind::Cid),
    };
    if !ok {
        let expected = match item_type {
            ItemType::Inline | ItemType::Storage => "a sha256 hash (64 lower-case hex characters)",
            ItemType::Ipfs => "an IPFS CID (\"Qm…\", 46 base58 characters, or \"bafy…\")",
        };
        errors.push(
            path,
            format!(
                "must be {expected} for item_type {:?}, got {hash:?}",
                item_type.as_str()
            ),
        );
    }
    ok
}

/// Type-checks the bookkeeping keys nodes add (their values are otherwise ignored).
fn bookkeeping(errors: &mut Errors, obj: &Obj<'_>) {
    if let Some(v) = obj.get("confirmed")
        && !v.is_boolean()
    {
        errors.push(
            &obj.path("confirmed"),
            format!("expected a boolean, got {}", describe(v)),
        );
    }
    obj.opt_array(errors, "confirmations");
    obj.opt_str(errors, "hash_type");
    if obj.has("size") {
        obj.uint_in(errors, "size", None, 0, None, " bytes");
    }
}

/// Reads the content of a message of type `kind`.
fn typed_content(errors: &mut Errors, kind: MessageType, value: &Value) -> Option<Content> {
    match kind {
        MessageType::Program => program_content(errors, "content", value, Dialect::Final)
            .map(|p| Content::Program(Box::new(p))),
        MessageType::Store => store_content(errors, "content", value).map(Content::Store),
        _ => Obj::any_keys(errors, "content", value).map(|_| Content::Other(value.clone())),
    }
}

/// Reads STORE content: known keys are typed, other keys are kept in `extra`.
fn store_content(errors: &mut Errors, path: &str, value: &Value) -> Option<StoreContent> {
    const KNOWN: [&str; 8] = [
        "address",
        "time",
        "item_type",
        "item_hash",
        "size",
        "content_type",
        "ref",
        "mime_type",
    ];
    let obj = Obj::any_keys(errors, path, value)?;
    let address = obj.req_nonempty_str(errors, "address");
    let time = obj.req_time(errors, "time");
    let item_type = obj
        .req_enum(
            errors,
            "item_type",
            "item type",
            "storage, ipfs",
            ItemType::from_name,
        )
        .filter(|t| {
            let stored = *t != ItemType::Inline;
            if !stored {
                errors.push(
                    &obj.path("item_type"),
                    "must be \"storage\" or \"ipfs\" for a stored file, got \"inline\"",
                );
            }
            stored
        });
    let item_hash = obj.req_str(errors, "item_hash");
    if let (Some(h), Some(t)) = (&item_hash, item_type) {
        check_item_hash(errors, &obj.path("item_hash"), h, t);
    }
    let size = if obj.has("size") {
        obj.uint_in(errors, "size", None, 0, None, " bytes")
    } else {
        None
    };
    let content_type = obj.opt_str(errors, "content_type");
    let reference = obj.opt_str(errors, "ref");
    let mime_type = obj.opt_str(errors, "mime_type");
    let extra = obj
        .map()
        .iter()
        .filter(|(k, _)| !KNOWN.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Some(StoreContent {
        address: address?,
        time: time?,
        item_type: item_type?,
        item_hash: item_hash?,
        size,
        content_type,
        reference,
        mime_type,
        extra,
    })
}
