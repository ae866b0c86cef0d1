//! Delegations: an owner lets other addresses post for it through its `security` aggregate, as
//! the network does. The aggregate's `authorizations` list holds objects
//! `{"address", "chain"?, "channels"?, "types"?, "post_types"?, "aggregate_keys"?}`: the
//! sender they name may post for the owner, on that chain only when `chain` is given, in those
//! channels, of those message types, POST content types and aggregate keys when the lists are
//! not empty. The `security` aggregate itself is written by its owner only.
//!
//! The aggregate's value is what the store merges from the owner's AGGREGATE messages
//! ([`crate::store::Store::security_authorizations`]); this module only judges one message
//! against it.

use serde_json::Value;

use super::verify::same_account;
use super::{Content, Message, MessageType};

/// The aggregate key that holds an owner's delegations.
pub const SECURITY_KEY: &str = "security";

/// Whether `msg` writes a `security` aggregate (which only its owner may do).
pub fn is_security_aggregate(msg: &Message) -> bool {
    msg.kind == MessageType::Aggregate && content_field(msg, "key") == Some(SECURITY_KEY)
}

/// Whether one of `authorizations` (an owner's security aggregate's list) lets `msg`'s sender
/// post `msg` for that owner.
pub fn authorizes(authorizations: &[Value], msg: &Message) -> bool {
    !is_security_aggregate(msg) && authorizations.iter().any(|a| allows(a, msg))
}

fn content_field<'a>(msg: &'a Message, name: &str) -> Option<&'a str> {
    match &msg.content {
        Content::Other(v) => v.get(name).and_then(Value::as_str),
        _ => None,
    }
}

fn allows(authorization: &Value, msg: &Message) -> bool {
    let Some(address) = authorization.get("address").and_then(Value::as_str) else {
        return false;
    };
    if !same_account(&msg.chain, address, &msg.sender) {
        return false;
    }
    let chain = authorization.get("chain").and_then(Value::as_str);
    if chain.is_some_and(|c| !c.is_empty() && c != msg.chain) {
        return false;
    }
    // An absent or empty list allows anything; a list that is not a list of strings, nothing.
    let within = |name: &str, value: Option<&str>| match authorization.get(name) {
        None | Some(Value::Null) => true,
        Some(Value::Array(list)) if list.is_empty() => true,
        Some(Value::Array(list)) => {
            value.is_some_and(|v| list.iter().any(|item| item.as_str() == Some(v)))
        }
        Some(_) => false,
    };
    within("channels", msg.channel.as_deref())
        && within("types", Some(msg.kind.as_str()))
        && (msg.kind != MessageType::Post || within("post_types", content_field(msg, "type")))
        && (msg.kind != MessageType::Aggregate
            || within("aggregate_keys", content_field(msg, "key")))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::message::build_inline;

    const OWNER: &str = "0x2c7536E3605D9C16a7a3D7b1898e529396a65c23";
    const DELEGATE: &str = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266";

    fn post(sender: &str, kind: &str, channel: Option<&str>) -> Message {
        let mut msg = build_inline(
            MessageType::Post,
            "ETH",
            sender,
            1.0,
            json!({"address": OWNER, "type": kind, "time": 1.0, "content": {}}),
        );
        msg.channel = channel.map(str::to_string);
        msg
    }

    #[test]
    fn an_authorization_is_limited_by_its_lists() {
        let open = [json!({"address": DELEGATE.to_lowercase()})];
        assert!(authorizes(&open, &post(DELEGATE, "note", None)));
        assert!(
            !authorizes(&open, &post(OWNER, "note", None)),
            "another sender"
        );
        let narrow = [json!({
            "address": DELEGATE, "chain": "ETH", "channels": ["APP"], "types": ["POST"],
            "post_types": ["note"],
        })];
        assert!(authorizes(&narrow, &post(DELEGATE, "note", Some("APP"))));
        assert!(!authorizes(&narrow, &post(DELEGATE, "note", Some("OTHER"))));
        assert!(!authorizes(&narrow, &post(DELEGATE, "chat", Some("APP"))));
        assert!(!authorizes(&narrow, &post(DELEGATE, "note", None)));
        let other_chain = [json!({"address": DELEGATE, "chain": "SOL"})];
        assert!(!authorizes(&other_chain, &post(DELEGATE, "note", None)));
        let malformed = [json!({"address": DELEGATE, "types": "POST"})];
        assert!(!authorizes(&malformed, &post(DELEGATE, "note", None)));
    }

    #[test]
    fn nobody_writes_an_owners_security_aggregate_for_it() {
        let msg = build_inline(
            MessageType::Aggregate,
            "ETH",
            DELEGATE,
            1.0,
            json!({"address": OWNER, "key": "security", "time": 1.0,
                   "content": {"authorizations": [{"address": DELEGATE}]}}),
        );
        assert!(is_security_aggregate(&msg));
        assert!(!authorizes(&[json!({"address": DELEGATE})], &msg));
    }
}
