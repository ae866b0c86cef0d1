//! Canonical JSON: one serialisation of a JSON value for hashing and comparing — object keys
//! sorted by their bytes, no whitespace, serde_json's escaping and number forms. Receipts are
//! written in it, and a reproducible execution's random sources are keyed by the hash of its
//! trigger in it.

use serde_json::Value;

use super::sha256_hex;

/// The canonical serialisation of `value`.
pub fn canonical(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// The sha256 (hex) of the canonical form of `value`.
pub fn canonical_hash(value: &Value) -> String {
    sha256_hex(canonical(value).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_form_sorts_keys_and_has_no_whitespace() {
        let v = json!({"b": [1, {"z": null, "a": "x\"y"}], "a": true});
        assert_eq!(canonical(&v), r#"{"a":true,"b":[1,{"a":"x\"y","z":null}]}"#);
        assert_eq!(canonical_hash(&v), sha256_hex(canonical(&v).as_bytes()));
    }
}
