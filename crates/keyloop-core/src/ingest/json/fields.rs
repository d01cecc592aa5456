//! Reading the fields of a parsed finding: its plaintext moved into a [`Secret`] (never
//! copied), its location leniently.

use crate::secret::Secret;
use serde_json::{Map, Value};

/// The JSON type of a value, with an article, for "expected …, found …" reasons.
pub const fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// What a report holds where a plaintext value should be.
pub(crate) enum SecretField {
    /// The field is absent or null.
    Missing,
    /// The field is a string of only whitespace.
    Empty,
    /// The field is not a string; the JSON type is given.
    NotAString(&'static str),
    /// The value, moved out of the document (no copy is made).
    Value(Secret),
}

/// Moves the plaintext at `key` into a [`Secret`], leaving an empty string behind.
pub(crate) fn take_secret(object: &mut Map<String, Value>, key: &str) -> SecretField {
    match object.get_mut(key) {
        None | Some(Value::Null) => SecretField::Missing,
        Some(Value::String(s)) if s.trim().is_empty() => SecretField::Empty,
        Some(Value::String(s)) => SecretField::Value(Secret::new(std::mem::take(s))),
        Some(other) => SecretField::NotAString(kind(other)),
    }
}

/// A non-empty string at `key`; `None` when it is absent, null, empty or not a string.
/// Lenient on purpose: detectors' location fields vary across versions, and a location is
/// optional. Only for fields that never hold a secret.
pub(crate) fn text(object: &Map<String, Value>, key: &str) -> Option<String> {
    match object.get(key) {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// A 1-based line number at `key` (an integer, or a string of digits); `None` when it is
/// absent, zero (detectors use 0 for "unknown") or anything else.
pub(crate) fn line(object: &Map<String, Value>, key: &str) -> Option<u64> {
    let line = match object.get(key)? {
        Value::Number(n) => n.as_u64()?,
        Value::String(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    (line > 0).then_some(line)
}
