//! secretlint JSON (`secretlint --format json "**/*"`): an array with one result per file,
//! `{"filePath", "sourceContent", "sourceContentType", "messages": [...]}`, each message
//! `{"ruleId", "range": [start, end], "loc": {"start": {"line", "column"}}, "data", …}`.
//!
//! secretlint masks the value in `message` and `data` by default (since v10), but keeps the
//! file's text in `sourceContent`, and `range` is where the match is in it (in UTF-16 code
//! units, as JavaScript counts): the value is read from there. Without `sourceContent` (a
//! binary file, an older secretlint) the value is taken from `data` when it holds one string
//! that is not masked (`--no-maskSecrets`). Rules that match a whole connection string (the
//! database-connection-string rule) yield the password in it as a part too.

use super::json::{self, Document, Scrubbed};
use super::sink::{Hashed, Sink};
use crate::leak::LeakLocation;
use crate::secret::Secret;
use serde::de::SeqAccess;
use serde_json::{Map, Value};
use std::io::Read;
use std::ops::ControlFlow;

const EXPECTED: &str = "a JSON array of file results (secretlint --format json)";

const MASKED: &str = "the value is masked and the result has no `sourceContent` to read it \
                      from; rerun secretlint with --no-maskSecrets";

/// Parses secretlint JSON, one file result at a time.
pub(crate) fn parse(input: impl Read, sink: &mut Sink<'_>) -> Result<(), String> {
    json::walk::<Secretlint>(input, sink)
}

/// The top-level array of file results.
struct Secretlint;

impl Document for Secretlint {
    const EXPECTED: &'static str = EXPECTED;

    fn array<'de, A: SeqAccess<'de>>(sink: &mut Sink<'_>, seq: A) -> Result<(), A::Error> {
        json::each_element(seq, |index, mut result| file(sink, index, &mut result))
    }
}

/// The messages of one file result.
fn file(sink: &mut Sink<'_>, index: usize, result: &mut Scrubbed) -> ControlFlow<()> {
    let found = json::kind(result);
    let Some(result) = result.as_object_mut() else {
        return sink.reject(
            format!("results[{index}]"),
            format!("expected a file result object, found {found}"),
        );
    };
    let Some(Value::Array(messages)) = result.get("messages") else {
        return sink.reject(
            format!("results[{index}]"),
            "file result has no `messages` array".into(),
        );
    };
    let file = json::text(result, "filePath");
    let source = match result.get("sourceContent") {
        Some(Value::String(text)) => Some(text.as_str()),
        _ => None,
    };
    for (at, message) in messages.iter().enumerate() {
        let outcome = match message.as_object() {
            Some(message) => finding(message, source, file.clone()),
            None => Err(format!(
                "expected a message object, found {}",
                json::kind(message)
            )),
        };
        sink.outcome(|| format!("results[{index}].messages[{at}]"), outcome)?;
    }
    ControlFlow::Continue(())
}

fn finding(
    message: &Map<String, Value>,
    source: Option<&str>,
    file: Option<String>,
) -> Result<Hashed, String> {
    let secret = match source {
        Some(source) => {
            let range = message
                .get("range")
                .and_then(Value::as_array)
                .filter(|r| r.len() == 2)
                .and_then(|r| Some((r[0].as_u64()?, r[1].as_u64()?)))
                .ok_or("message has no `range` [start, end] of the value in `sourceContent`")?;
            match utf16_slice(source, range.0, range.1) {
                Some(value) if !value.trim().is_empty() => Secret::from(value),
                Some(_) => return Err("`range` is empty; there is nothing to fingerprint".into()),
                None => return Err("`range` is not within `sourceContent`".into()),
            }
        }
        None => from_data(message)?,
    };
    let detector = match json::text(message, "ruleId") {
        Some(rule) => format!("secretlint:{rule}"),
        None => "secretlint".to_owned(),
    };
    let line = message
        .get("loc")
        .and_then(|loc| loc.get("start"))
        .and_then(Value::as_object)
        .and_then(|start| json::line(start, "line"));
    let location = LeakLocation {
        file,
        line,
        ..LeakLocation::default()
    };
    Ok(Hashed::of(&secret, detector, location))
}

/// The one unmasked string of `data`.
fn from_data(message: &Map<String, Value>) -> Result<Secret, String> {
    let strings: Vec<&str> = message
        .get("data")
        .and_then(Value::as_object)
        .map(|data| data.values().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    match strings.as_slice() {
        [value] if !value.trim().is_empty() && !value.chars().all(|c| c == '*') => {
            Ok(Secret::from(*value))
        }
        [] | [_] => Err(MASKED.into()),
        _ => Err(
            "the result has no `sourceContent`, and `data` holds several values; rerun \
                  secretlint on the file as text"
                .into(),
        ),
    }
}

/// `text[start..end]` where the offsets count UTF-16 code units; `None` when they are not
/// on character boundaries within `text`.
fn utf16_slice(text: &str, start: u64, end: u64) -> Option<&str> {
    if start > end {
        return None;
    }
    let (mut from, mut to) = (None, None);
    let mut units = 0u64;
    for (at, c) in text.char_indices().chain([(text.len(), '\0')]) {
        if units == start {
            from = Some(at);
        }
        if units == end {
            to = Some(at);
            break;
        }
        if units > end {
            break;
        }
        units += c.len_utf16() as u64;
    }
    text.get(from?..to?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::Fingerprint;
    use crate::ingest::PartOf;

    const FIXTURE: &str = include_str!("../../../../tests/fixtures/ingest/secretlint.json");

    fn parse(text: &str) -> Result<crate::ingest::testing::Parsed, String> {
        crate::ingest::testing::collect(|input, sink| super::parse(input, sink), text)
    }

    fn fingerprint(value: &str) -> Fingerprint {
        Fingerprint::of(&Secret::from(value))
    }

    #[test]
    fn masked_secretlint_results_are_read_from_the_source_at_their_range() {
        let parsed = parse(FIXTURE).expect("a valid report");
        assert!(parsed.rejected.is_empty(), "{:?}", parsed.rejected);
        let found: Vec<_> = parsed
            .findings
            .iter()
            .map(|f| (f.fingerprint.clone(), f.detector.as_str(), f.location.line))
            .collect();
        assert_eq!(
            found,
            [
                (
                    fingerprint(
                        "postgres://shop:FAKE-secretlint-pg-0001@db.example.invalid:5432/shop"
                    ),
                    "secretlint:@secretlint/secretlint-rule-database-connection-string",
                    Some(3)
                ),
                (
                    fingerprint("xoxb-FAKE-secretlint-0002-not-a-real-token"),
                    "secretlint:@secretlint/secretlint-rule-slack",
                    Some(4)
                ),
            ]
        );
        assert_eq!(
            parsed.findings[0].location.file.as_deref(),
            Some("/work/acme/shop/deploy/.env")
        );
        assert_eq!(parsed.parts.len(), 1);
        assert_eq!(parsed.parts[0].of, PartOf::UriPassword);
        assert_eq!(
            parsed.parts[0].finding.fingerprint,
            fingerprint("FAKE-secretlint-pg-0001")
        );
    }

    #[test]
    fn ranges_count_utf16_code_units() {
        let text = "é𝄞 key=FAKE-0003 ✓";
        // `é` is one unit, `𝄞` two, the space one: the value starts at unit 8.
        assert_eq!(utf16_slice(text, 8, 17), Some("FAKE-0003"));
        assert_eq!(utf16_slice(text, 0, 1), Some("é"));
        assert_eq!(utf16_slice(text, 1, 3), Some("𝄞"));
        assert_eq!(utf16_slice(text, 2, 3), None, "inside a surrogate pair");
        assert_eq!(utf16_slice(text, 18, 19), Some("✓"));
        assert_eq!(utf16_slice(text, 18, 20), None);
        assert_eq!(utf16_slice(text, 5, 4), None);
    }

    #[test]
    fn results_without_source_use_unmasked_data_or_are_rejected_with_advice() {
        let report = r#"[{"filePath":"a.bin","sourceContentType":"binary","messages":[
            {"ruleId":"r","range":[0,4],"data":{"TOKEN":"FAKE-secretlint-0004"}},
            {"ruleId":"r","range":[0,4],"data":{"TOKEN":"********"}},
            {"ruleId":"r","range":[0,4],"data":{"A":"x","B":"y"}}
        ]},{"filePath":"b.txt","sourceContent":"abc","messages":[
            {"ruleId":"r","range":[1,9]},
            {"ruleId":"r"},
            {"ruleId":"r","range":[1,1]},
            "FAKE-secretlint-0005"
        ]}, 7, {"filePath":"c"}]"#;
        let parsed = parse(report).expect("a report");
        assert_eq!(parsed.findings.len(), 1);
        assert_eq!(
            parsed.findings[0].fingerprint,
            fingerprint("FAKE-secretlint-0004")
        );
        let reasons: Vec<_> = parsed
            .rejected
            .iter()
            .map(|r| {
                (
                    r.position.as_str(),
                    r.reason.split(';').next().unwrap_or(""),
                )
            })
            .collect();
        assert_eq!(
            reasons,
            [
                (
                    "results[0].messages[1]",
                    "the value is masked and the result has no `sourceContent` to read it from"
                ),
                (
                    "results[0].messages[2]",
                    "the result has no `sourceContent`, and `data` holds several values"
                ),
                (
                    "results[1].messages[0]",
                    "`range` is not within `sourceContent`"
                ),
                (
                    "results[1].messages[1]",
                    "message has no `range` [start, end] of the value in `sourceContent`"
                ),
                ("results[1].messages[2]", "`range` is empty"),
                (
                    "results[1].messages[3]",
                    "expected a message object, found a string"
                ),
                (
                    "results[2]",
                    "expected a file result object, found a number"
                ),
                ("results[3]", "file result has no `messages` array"),
            ]
        );
        assert!(!format!("{parsed:?}").contains("FAKE-secretlint-0005"));
    }

    #[test]
    fn malformed_secretlint_input_is_an_error() {
        assert_eq!(
            parse(r#"{"filePath":"a","messages":[]}"#).expect_err("an object"),
            "expected a JSON array of file results (secretlint --format json), found an object"
        );
        let truncated =
            parse(r#"[{"filePath":"a","sourceContent":"FAKE-secretlint-0006"#).expect_err("cut");
        assert!(truncated.contains("line 1 column"), "{truncated}");
        assert!(!truncated.contains("FAKE-secretlint-0006"));
        let clean = parse("[]").expect("a clean scan");
        assert!(clean.findings.is_empty() && clean.rejected.is_empty());
    }
}
