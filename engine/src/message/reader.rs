//! Path-aware reading of JSON objects: every getter reports problems at the exact JSON path
//! and keeps going, so one pass collects as many errors as it can.

use serde_json::{Map, Value};

use super::error::Errors;

/// `base.key`, or `base["key"]` when `key` is not a plain identifier; just `key` at the root.
pub(crate) fn key_path(base: &str, key: &str) -> String {
    let plain = key
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    match (base.is_empty(), plain) {
        (true, true) => key.to_owned(),
        (false, true) => format!("{base}.{key}"),
        (_, false) => format!("{base}[{}]", Value::from(key)),
    }
}

/// `base[i]`.
pub(crate) fn index_path(base: &str, i: usize) -> String {
    format!("{base}[{i}]")
}

/// Describes a JSON value for "expected X, got Y" messages, with a short excerpt.
pub(crate) fn describe(value: &Value) -> String {
    fn excerpt(value: &Value) -> String {
        let text = value.to_string();
        if text.chars().count() > 40 {
            let cut: String = text.chars().take(37).collect();
            format!("{cut}...")
        } else {
            text
        }
    }
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => format!("a boolean ({b})"),
        Value::Number(_) => format!("a number ({})", excerpt(value)),
        Value::String(_) => format!("a string ({})", excerpt(value)),
        Value::Array(a) => format!("an array of {} items", a.len()),
        Value::Object(_) => "an object".to_owned(),
    }
}

/// A JSON object being read, with the path it sits at.
pub(crate) struct Obj<'a> {
    path: String,
    map: &'a Map<String, Value>,
}

impl<'a> Obj<'a> {
    /// Reads `value` at `path` as an object whose keys must all be in `allowed`.
    ///
    /// Reports a type error (and returns `None`) when `value` is not an object, and one error
    /// per unknown key, at the key's path, with the matching hint from `hints` if any.
    pub(crate) fn new(
        errors: &mut Errors,
        path: &str,
        value: &'a Value,
        allowed: &[&str],
        hints: &[(&str, &str)],
    ) -> Option<Self> {
        let obj = Self::any_keys(errors, path, value)?;
        for key in obj.map.keys() {
            if !allowed.contains(&key.as_str()) {
                let hint = hints
                    .iter()
                    .find(|(k, _)| k == key)
                    .map(|(_, h)| format!(" ({h})"))
                    .unwrap_or_default();
                errors.push(
                    &key_path(path, key),
                    format!("unknown key{hint}; expected one of: {}", allowed.join(", ")),
                );
            }
        }
        Some(obj)
    }

    /// Reads `value` at `path` as an object with any keys.
    pub(crate) fn any_keys(errors: &mut Errors, path: &str, value: &'a Value) -> Option<Self> {
        match value {
            Value::Object(map) => Some(Self {
                path: path.to_owned(),
                map,
            }),
            other => {
                errors.push(path, format!("expected an object, got {}", describe(other)));
                None
            }
        }
    }

    /// The object itself.
    pub(crate) fn map(&self) -> &'a Map<String, Value> {
        self.map
    }

    /// The path of `key` in this object.
    pub(crate) fn path(&self, key: &str) -> String {
        key_path(&self.path, key)
    }

    /// The value of `key`, treating `null` as absent.
    pub(crate) fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// Whether `key` is present with a non-null value.
    pub(crate) fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// The value of a required `key` (reports it missing otherwise).
    pub(crate) fn require(&self, errors: &mut Errors, key: &str) -> Option<&'a Value> {
        match self.map.get(key) {
            Some(v) if !v.is_null() => Some(v),
            Some(_) => {
                errors.push(&self.path(key), "is required and must not be null");
                None
            }
            None => {
                errors.push(&self.path(key), "is required but missing");
                None
            }
        }
    }

    fn typed<T>(
        &self,
        errors: &mut Errors,
        key: &str,
        value: &'a Value,
        expected: &str,
        convert: impl Fn(&'a Value) -> Option<T>,
    ) -> Option<T> {
        let converted = convert(value);
        if converted.is_none() {
            errors.push(
                &self.path(key),
                format!("expected {expected}, got {}", describe(value)),
            );
        }
        converted
    }

    /// A required string.
    pub(crate) fn req_str(&self, errors: &mut Errors, key: &str) -> Option<String> {
        let v = self.require(errors, key)?;
        self.typed(errors, key, v, "a string", |v| {
            v.as_str().map(str::to_owned)
        })
    }

    /// A required, non-empty string.
    pub(crate) fn req_nonempty_str(&self, errors: &mut Errors, key: &str) -> Option<String> {
        let s = self.req_str(errors, key)?;
        if s.is_empty() {
            errors.push(&self.path(key), "must not be empty");
            return None;
        }
        Some(s)
    }

    /// An optional string (`null` counts as absent).
    pub(crate) fn opt_str(&self, errors: &mut Errors, key: &str) -> Option<String> {
        let v = self.get(key)?;
        self.typed(errors, key, v, "a string", |v| {
            v.as_str().map(str::to_owned)
        })
    }

    /// A required boolean.
    pub(crate) fn req_bool(&self, errors: &mut Errors, key: &str) -> Option<bool> {
        let v = self.require(errors, key)?;
        self.typed(errors, key, v, "a boolean", Value::as_bool)
    }

    /// An optional boolean, `default` when absent or `null` (or invalid, after reporting).
    pub(crate) fn bool_or(&self, errors: &mut Errors, key: &str, default: bool) -> bool {
        match self.get(key) {
            Some(v) => self
                .typed(errors, key, v, "a boolean", Value::as_bool)
                .unwrap_or(default),
            None => default,
        }
    }

    /// A required timestamp: a finite, non-negative number of seconds.
    pub(crate) fn req_time(&self, errors: &mut Errors, key: &str) -> Option<f64> {
        let v = self.require(errors, key)?;
        let t = self.typed(
            errors,
            key,
            v,
            "a number (seconds since the epoch)",
            Value::as_f64,
        )?;
        if !t.is_finite() || t < 0.0 {
            errors.push(
                &self.path(key),
                format!("must be a non-negative time, got {t}"),
            );
            return None;
        }
        Some(t)
    }

    /// An integer in `min..=max` (`max` `None`: no upper bound), `default` when absent.
    ///
    /// `unit` is appended to the bounds in the message (e.g. `" MiB"`).
    pub(crate) fn uint_in(
        &self,
        errors: &mut Errors,
        key: &str,
        default: Option<u64>,
        min: u64,
        max: Option<u64>,
        unit: &str,
    ) -> Option<u64> {
        let v = match (self.get(key), default) {
            (Some(v), _) => v,
            (None, Some(d)) => return Some(d),
            (None, None) => self.require(errors, key)?,
        };
        let Value::Number(n) = v else {
            errors.push(
                &self.path(key),
                format!("expected an integer, got {}", describe(v)),
            );
            return None;
        };
        let rule = match max {
            Some(max) => format!("must be between {min} and {max}{unit}"),
            None => format!("must be at least {min}{unit}"),
        };
        if let Some(x) = n.as_u64() {
            if x >= min && max.is_none_or(|m| x <= m) {
                return Some(x);
            }
            errors.push(&self.path(key), format!("{rule}, got {x}"));
        } else if let Some(x) = n.as_i64() {
            errors.push(&self.path(key), format!("{rule}, got {x}"));
        } else {
            errors.push(
                &self.path(key),
                format!("expected an integer, got {}", describe(v)),
            );
        }
        None
    }

    /// A required name from a fixed set, looked up with `lookup`; `expected` lists the names.
    pub(crate) fn req_enum<T>(
        &self,
        errors: &mut Errors,
        key: &str,
        what: &str,
        expected: &str,
        lookup: impl Fn(&str) -> Option<T>,
    ) -> Option<T> {
        let s = self.req_str(errors, key)?;
        self.name(errors, key, &s, what, expected, lookup)
    }

    /// An optional name from a fixed set (`null` counts as absent).
    pub(crate) fn opt_enum<T>(
        &self,
        errors: &mut Errors,
        key: &str,
        what: &str,
        expected: &str,
        lookup: impl Fn(&str) -> Option<T>,
    ) -> Option<T> {
        let s = self.opt_str(errors, key)?;
        self.name(errors, key, &s, what, expected, lookup)
    }

    fn name<T>(
        &self,
        errors: &mut Errors,
        key: &str,
        s: &str,
        what: &str,
        expected: &str,
        lookup: impl Fn(&str) -> Option<T>,
    ) -> Option<T> {
        let found = lookup(s);
        if found.is_none() {
            errors.push(
                &self.path(key),
                format!("unknown {what} {s:?} (expected {expected})"),
            );
        }
        found
    }

    /// An optional array (`null` counts as absent).
    pub(crate) fn opt_array(&self, errors: &mut Errors, key: &str) -> Option<&'a Vec<Value>> {
        let v = self.get(key)?;
        self.typed(errors, key, v, "an array", Value::as_array)
    }

    /// An optional object (`null` counts as absent).
    pub(crate) fn opt_object(
        &self,
        errors: &mut Errors,
        key: &str,
    ) -> Option<&'a Map<String, Value>> {
        let v = self.get(key)?;
        self.typed(errors, key, v, "an object", Value::as_object)
    }

    /// An optional array of strings (`null` counts as absent, giving an empty list).
    pub(crate) fn string_list(&self, errors: &mut Errors, key: &str) -> Vec<String> {
        let Some(items) = self.opt_array(errors, key) else {
            return Vec::new();
        };
        let base = self.path(key);
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match item.as_str() {
                Some(s) => out.push(s.to_owned()),
                None => errors.push(
                    &index_path(&base, i),
                    format!("expected a string, got {}", describe(item)),
                ),
            }
        }
        out
    }
}

/// Whether two JSON values are equal as data: objects regardless of key order, and numbers
/// by value (`1` equals `1.0`), as Python's `json.loads` results compare.
pub(crate) fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            match (x.as_i64(), y.as_i64(), x.as_u64(), y.as_u64()) {
                (Some(p), Some(q), _, _) => p == q,
                (_, _, Some(p), Some(q)) => p == q,
                _ => x.as_f64() == y.as_f64(),
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_equal(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_equal(v, w)))
        }
        _ => a == b,
    }
}
