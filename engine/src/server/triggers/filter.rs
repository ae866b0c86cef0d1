//! Message subscriptions (`on.message`, the seed's `on.aleph`): which messages a program asks
//! for. A subscription is an object; a message (its final-form JSON) matches it when every key
//! of the subscription is in the message with a matching value — objects are compared
//! recursively (the message may have more keys), anything else by equality. A program gets a
//! message when any of its subscriptions matches.

use serde_json::{Map, Value};

/// Whether `message` matches the subscription `filter`.
pub fn matches(filter: &Map<String, Value>, message: &Value) -> bool {
    filter
        .iter()
        .all(|(key, want)| message.get(key).is_some_and(|got| value_matches(want, got)))
}

/// Whether `message` matches any of `filters` (none: no message matches).
pub fn matches_any(filters: &[Map<String, Value>], message: &Value) -> bool {
    filters.iter().any(|f| matches(f, message))
}

fn value_matches(want: &Value, got: &Value) -> bool {
    match (want, got) {
        (Value::Object(want), Value::Object(_)) => matches(want, got),
        _ => want == got,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn filter(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn every_key_must_match_and_objects_match_recursively() {
        let msg = json!({
            "type": "POST", "sender": "0xabc", "channel": "TEST",
            "content": {"type": "note", "content": {"tag": "x", "n": 1}, "address": "0xabc"},
        });
        assert!(matches(&filter(json!({"type": "POST"})), &msg));
        assert!(matches(
            &filter(json!({"type": "POST", "content": {"content": {"tag": "x"}}})),
            &msg
        ));
        assert!(!matches(
            &filter(json!({"type": "POST", "channel": "OTHER"})),
            &msg
        ));
        assert!(!matches(
            &filter(json!({"content": {"content": {"tag": "y"}}})),
            &msg
        ));
        assert!(!matches(&filter(json!({"missing": "x"})), &msg));
        assert!(!matches(&filter(json!({"content": "note"})), &msg));
        assert!(!matches(&filter(json!({"type": {"nested": 1}})), &msg));
        // An empty subscription asks for every message.
        assert!(matches(&Map::new(), &msg));
        assert!(matches_any(
            &[
                filter(json!({"type": "STORE"})),
                filter(json!({"sender": "0xabc"}))
            ],
            &msg
        ));
        assert!(!matches_any(&[], &msg));
    }
}
