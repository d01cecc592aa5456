//! JSON plumbing shared by the format parsers: decoding the input bytes, parsing documents and
//! JSON lines into values whose strings are zeroized on drop, taking a plaintext field straight
//! into a [`Secret`], and describing what is wrong without ever quoting the input (a report's
//! text is full of secret values, so no reason built here contains any of it).

use super::{Parsed, Rejected};
use crate::leak::LeakFinding;
use crate::secret::Secret;
use serde::de::IgnoredAny;
use serde_json::{Map, Value};
use std::ops::{Deref, DerefMut};
use zeroize::Zeroize;

/// A parsed JSON value whose strings are all zeroized when it is dropped: a report holds
/// plaintext in fields we read (`Secret`, `Raw`) and in fields we ignore (`Match`, `RawV2`).
pub(crate) struct Scrubbed(Value);

impl Scrubbed {
    /// Parses one JSON text. The syntax is checked first with [`IgnoredAny`], which copies no
    /// string, so a malformed report fails before any of its values is copied into a `String`
    /// that a failed parse would drop without zeroizing.
    pub(crate) fn parse(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str::<IgnoredAny>(text)?;
        serde_json::from_str(text).map(Self)
    }
}

impl Deref for Scrubbed {
    type Target = Value;
    fn deref(&self) -> &Value {
        &self.0
    }
}

impl DerefMut for Scrubbed {
    fn deref_mut(&mut self) -> &mut Value {
        &mut self.0
    }
}

impl Drop for Scrubbed {
    fn drop(&mut self) {
        scrub(&mut self.0);
    }
}

/// Zeroizes every string in `value`. Object keys cannot be changed in place; they are field
/// names and file paths, not values. Depth is bounded by serde_json's recursion limit.
fn scrub(value: &mut Value) {
    match value {
        Value::String(s) => s.zeroize(),
        Value::Array(items) => items.iter_mut().for_each(scrub),
        Value::Object(fields) => fields.values_mut().for_each(scrub),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// The input as text: UTF-8 (a leading byte-order mark is allowed) and not blank.
pub(crate) fn decode(input: &[u8]) -> Result<&str, String> {
    if input.starts_with(&[0xFF, 0xFE]) || input.starts_with(&[0xFE, 0xFF]) {
        return Err("input is UTF-16 text; convert it to UTF-8 \
                    (PowerShell: `Out-File -Encoding utf8`)"
            .into());
    }
    const BOM: &[u8] = b"\xEF\xBB\xBF";
    let (skipped, body) = match input.strip_prefix(BOM) {
        Some(body) => (BOM.len(), body),
        None => (0, input),
    };
    let text = std::str::from_utf8(body).map_err(|e| {
        format!(
            "input is not UTF-8 text (invalid byte at offset {})",
            skipped + e.valid_up_to()
        )
    })?;
    if text.trim().is_empty() {
        return Err("empty input".into());
    }
    Ok(text)
}

/// Parses the whole input as one JSON document; `expected` names what the format looks like.
pub(crate) fn document(text: &str, expected: &str) -> Result<Scrubbed, String> {
    Scrubbed::parse(text).map_err(|e| {
        format!(
            "not JSON ({} at line {} column {}); expected {expected}",
            syntax_problem(&e),
            e.line(),
            e.column()
        )
    })
}

/// What happened to one object of a JSON-lines input.
pub(crate) enum LineOutcome {
    /// A usable finding.
    Finding(LeakFinding),
    /// An unusable entry, with the reason.
    Rejected(String),
    /// Not a finding at all (a log line); dropped silently.
    Skipped,
}

/// Parses JSON lines: each non-blank line is one object, handed to `on_object`. A line that is
/// not a JSON object is rejected; an input in which no line is a JSON object is not of this
/// format at all, and is an error naming `expected`.
pub(crate) fn lines(
    text: &str,
    expected: &str,
    mut on_object: impl FnMut(&mut Map<String, Value>) -> LineOutcome,
) -> Result<Parsed, String> {
    let mut parsed = Parsed::default();
    let mut objects = 0usize;
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let position = format!("line {}", index + 1);
        let mut value = match Scrubbed::parse(line) {
            Ok(value) => value,
            Err(e) => {
                let reason = format!("not JSON ({} at column {})", syntax_problem(&e), e.column());
                parsed.rejected.push(Rejected { position, reason });
                continue;
            }
        };
        let found = kind(&value);
        let Some(object) = value.as_object_mut() else {
            let reason = format!("expected a JSON object, found {found}");
            parsed.rejected.push(Rejected { position, reason });
            continue;
        };
        objects += 1;
        match on_object(object) {
            LineOutcome::Finding(finding) => parsed.findings.push(finding),
            LineOutcome::Rejected(reason) => parsed.rejected.push(Rejected { position, reason }),
            LineOutcome::Skipped => {}
        }
    }
    if objects == 0 {
        return Err(format!("no line is a JSON object; expected {expected}"));
    }
    Ok(parsed)
}

/// serde_json's description of a parse failure, without its position. Syntax and end-of-input
/// messages are fixed phrases ("expected value", "trailing characters"); data errors can quote
/// the input (`invalid type: string "…"`), so they are never passed through.
fn syntax_problem(err: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match err.classify() {
        Category::Syntax | Category::Eof => {
            let full = err.to_string();
            let position = format!(" at line {} column {}", err.line(), err.column());
            match full.strip_suffix(&position) {
                Some(phrase) => phrase.to_owned(),
                None => "malformed JSON".to_owned(),
            }
        }
        Category::Data => "unexpected value".to_owned(),
        Category::Io => "unreadable input".to_owned(),
    }
}

/// The JSON type of a value, with an article, for "expected …, found …" reasons.
pub(crate) const fn kind(value: &Value) -> &'static str {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_zeroized_when_the_document_is_dropped() {
        let mut doc = Scrubbed::parse(r#"{"a":["FAKE-value-0001",{"b":"FAKE-value-0002"}]}"#)
            .expect("valid JSON");
        scrub(&mut doc);
        assert_eq!(*doc, serde_json::json!({"a": ["", {"b": ""}]}));
    }

    #[test]
    fn taking_a_secret_leaves_an_empty_string_behind() {
        let mut doc = Scrubbed::parse(r#"{"Raw":"FAKE-value-0003"}"#).expect("valid JSON");
        let object = doc.as_object_mut().expect("an object");
        let SecretField::Value(secret) = take_secret(object, "Raw") else {
            panic!("expected a value");
        };
        assert_eq!(secret.expose(), "FAKE-value-0003");
        assert_eq!(object["Raw"], "");
    }

    #[test]
    fn syntax_errors_are_described_without_quoting_the_input() {
        let err = document(r#"{"Secret": "FAKE-value-0004" oops}"#, "something")
            .err()
            .expect("malformed");
        assert!(
            err.starts_with("not JSON (expected `,` or `}` at line 1 column"),
            "{err}"
        );
        assert!(!err.contains("FAKE-value-0004"));
        assert!(!err.contains("oops"));
    }

    #[test]
    fn decoding_rejects_non_utf8_utf16_and_blank_input() {
        let bom_offset = decode(b"\xEF\xBB\xBF[\xff]").expect_err("not UTF-8");
        assert_eq!(
            bom_offset,
            "input is not UTF-8 text (invalid byte at offset 4)"
        );
        assert_eq!(decode(b"  \n\t ").err().as_deref(), Some("empty input"));
        let bad = decode(b"[{\"Secret\":\"\xff\"}]").expect_err("not UTF-8");
        assert!(bad.contains("not UTF-8"), "{bad}");
        assert!(
            decode(b"\xFF\xFE[\0]\0")
                .expect_err("UTF-16")
                .contains("UTF-16")
        );
        assert_eq!(decode(b"\xEF\xBB\xBF[]").ok(), Some("[]"));
    }

    #[test]
    fn line_numbers_are_positive_integers_or_nothing() {
        let doc =
            Scrubbed::parse(r#"{"a":12,"b":"7","c":0,"d":-3,"e":1.5,"f":"x"}"#).expect("JSON");
        let object = doc.as_object().expect("an object");
        assert_eq!(line(object, "a"), Some(12));
        assert_eq!(line(object, "b"), Some(7));
        for key in ["c", "d", "e", "f", "missing"] {
            assert_eq!(line(object, key), None, "{key}");
        }
    }
}
