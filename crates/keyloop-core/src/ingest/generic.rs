//! keyloop's own JSON-lines format, for detectors without a parser here: each line is an object
//! with exactly one kind of value, either `secret` (the plaintext, hashed here) or `sha256`
//! and/or `sha1` (hex digests computed elsewhere), plus optional `repo`, `file`, `line`,
//! `commit`, `url` and `detector`. The format is ours, so it is strict: unknown fields and
//! wrongly typed fields are rejected rather than ignored.

use super::json::{self, LineOutcome, SecretField};
use super::sink::{Hashed, Sink};
use crate::fingerprint::Fingerprint;
use crate::leak::{LeakFinding, LeakLocation};
use crate::secret::Secret;
use serde_json::{Map, Value};
use std::io::Read;

const EXPECTED: &str = "one JSON object per line, each with `secret`, `sha256` or `sha1`";

const FIELDS: [&str; 9] = [
    "secret", "sha256", "sha1", "repo", "file", "line", "commit", "url", "detector",
];

/// Parses generic JSON lines, one line at a time.
pub(crate) fn parse(input: impl Read, sink: &mut Sink<'_>) -> Result<(), String> {
    json::lines(input, EXPECTED, sink, |object| match finding(object) {
        Ok(finding) => LineOutcome::Finding(finding),
        Err(reason) => LineOutcome::Rejected(reason),
    })
}

fn finding(object: &mut Map<String, Value>) -> Result<Hashed, String> {
    if let Some(name) = object.keys().find(|key| !FIELDS.contains(&key.as_str())) {
        return Err(unknown_field(name));
    }
    let detector = text(object, "detector")?.unwrap_or_else(|| "generic".to_owned());
    let location = LeakLocation {
        repo: text(object, "repo")?,
        file: text(object, "file")?,
        line: line(object)?,
        commit: text(object, "commit")?,
        url: text(object, "url")?,
    };
    Ok(match value(object)? {
        Reported::Plain(secret) => Hashed::of(&secret, detector, location),
        Reported::Digests(fingerprint) => Hashed::digests(LeakFinding {
            fingerprint,
            detector,
            location,
        }),
    })
}

/// What a line gives: the plaintext, or digests computed elsewhere.
enum Reported {
    Plain(Secret),
    Digests(Fingerprint),
}

fn value(object: &mut Map<String, Value>) -> Result<Reported, String> {
    let has_secret = is_set(object, "secret");
    if has_secret && (is_set(object, "sha256") || is_set(object, "sha1")) {
        return Err(
            "both `secret` and a digest are set; give either the plaintext `secret` or \
                    its `sha256`/`sha1` digests"
                .to_owned(),
        );
    }
    if has_secret {
        return match json::take_secret(object, "secret") {
            SecretField::Value(secret) => Ok(Reported::Plain(secret)),
            SecretField::Missing | SecretField::Empty => Err("`secret` is empty".to_owned()),
            SecretField::NotAString(found) => {
                Err(format!("`secret` is {found}, expected a string"))
            }
        };
    }
    let sha256 = text(object, "sha256")?;
    let sha1 = text(object, "sha1")?;
    if sha256.is_none() && sha1.is_none() {
        return Err(
            "needs one of `secret` (the plaintext), `sha256` or `sha1` (hex digests of it)"
                .to_owned(),
        );
    }
    // The error names the digest kind and lengths, never the text (which might be a value
    // pasted into the wrong field).
    Fingerprint::from_digests(sha256.as_deref(), sha1.as_deref())
        .map(Reported::Digests)
        .map_err(|e| e.to_string())
}

fn is_set(object: &Map<String, Value>, key: &str) -> bool {
    object.get(key).is_some_and(|value| !value.is_null())
}

/// A string field: absent, null and empty are `None`; any other type is rejected.
fn text(object: &Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!(
            "`{key}` is {}, expected a string",
            json::kind(other)
        )),
    }
}

fn line(object: &Map<String, Value>) -> Result<Option<u64>, String> {
    match object.get("line") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(0) => Err("`line` is 0; line numbers start at 1".to_owned()),
            Some(line) => Ok(Some(line)),
            None => Err("`line` is not a positive integer".to_owned()),
        },
        Some(other) => Err(format!(
            "`line` is {}, expected a positive integer",
            json::kind(other)
        )),
    }
}

/// Names the unknown field when it looks like a field name: short, lowercase ASCII, digits,
/// `_`, `-`, `.` (`token`, `sha-256`). Anything else is not echoed: a malformed line could have
/// a value where a key should be, and API keys are often 20 to 40 letters and digits of mixed
/// case, which a looser rule would print.
fn unknown_field(name: &str) -> String {
    let expected = FIELDS.map(|f| format!("`{f}`")).join(", ");
    let plausible = name.len() <= 16
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'.')
        });
    if plausible {
        format!("unknown field `{name}`; expected only {expected}")
    } else {
        format!("unknown field (name not shown: it is long or unusual); expected only {expected}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    const FIXTURE: &str = include_str!("../../../../tests/fixtures/ingest/generic.jsonl");

    fn parse(text: &str) -> Result<crate::ingest::testing::Parsed, String> {
        crate::ingest::testing::collect(|input, sink| super::parse(input, sink), text)
    }

    fn fingerprint(value: &str) -> Fingerprint {
        Fingerprint::of(&Secret::from(value))
    }

    #[test]
    fn generic_lines_yield_plaintext_and_digest_findings() {
        let parsed = parse(FIXTURE).expect("a valid report");
        assert!(parsed.rejected.is_empty(), "{:?}", parsed.rejected);
        assert_eq!(
            parsed.findings,
            vec![
                LeakFinding {
                    fingerprint: fingerprint("FAKE-generic-plaintext-0001"),
                    detector: "ci-scan:custom-rule".into(),
                    location: LeakLocation {
                        repo: Some("acme/payments".into()),
                        file: Some("deploy/values.yaml".into()),
                        line: Some(7),
                        commit: Some("5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f".into()),
                        url: Some("https://ci.example.invalid/scans/1881".into()),
                    },
                },
                LeakFinding {
                    fingerprint: Fingerprint {
                        sha1: None,
                        ..fingerprint("FAKE-generic-digest-0002")
                    },
                    detector: "vault-audit".into(),
                    location: LeakLocation {
                        repo: Some("acme/billing".into()),
                        ..LeakLocation::default()
                    },
                },
                LeakFinding {
                    fingerprint: Fingerprint {
                        sha256: None,
                        ..fingerprint("FAKE-generic-digest-0003")
                    },
                    detector: "generic".into(),
                    location: LeakLocation {
                        file: Some("notes/handover.txt".into()),
                        line: Some(2),
                        ..LeakLocation::default()
                    },
                },
            ]
        );
    }

    #[test]
    fn both_digests_together_are_accepted() {
        let both = fingerprint("FAKE-generic-0004");
        let line = format!(
            r#"{{"sha256":"{}","sha1":"{}"}}"#,
            both.sha256.as_deref().unwrap_or_default(),
            both.sha1.as_deref().unwrap_or_default()
        );
        let parsed = parse(&line).expect("a report");
        assert_eq!(parsed.findings[0].fingerprint, both);
    }

    #[test]
    fn invalid_lines_are_rejected_with_the_reason() {
        let input = [
            r#"{"secret":"FAKE-generic-0005","sha1":"c3ddb66952e85ae56f1f889f3ef6f7f6892c5add"}"#,
            r#"{"repo":"acme/x"}"#,
            r#"{"secret":"FAKE-generic-0006","token":"FAKE-generic-0007"}"#,
            r#"{"secret":"FAKE-generic-0008","line":"12"}"#,
            r#"{"secret":"FAKE-generic-0009","line":0}"#,
            r#"{"secret":"FAKE-generic-0010","line":-4}"#,
            r#"{"secret":"FAKE-generic-0011","repo":["a"]}"#,
            r#"{"sha256":"FAKE-generic-0012"}"#,
            r#"{"secret":12345}"#,
            r#"{"secret":"   "}"#,
            r#"{"secret":"FAKE-generic-0013","FAKE-generic-0014 looks like a value":1}"#,
            r#"{"secret":"FAKE-generic-0016","AKIAFAKE0017EXAMPLE":1}"#,
            r#"{"secret":"FAKE-generic-0018","0123456789abcdef0123456789abcdef":1}"#,
            "",
            r#"{"secret":"FAKE-generic-0015","detector":"ok"}"#,
        ]
        .join("\n");
        let parsed = parse(&input).expect("a report with one good line");
        assert_eq!(parsed.findings.len(), 1);
        assert_eq!(parsed.findings[0].detector, "ok");
        let reasons: Vec<_> = parsed
            .rejected
            .iter()
            .map(|r| {
                (
                    r.position.as_str(),
                    r.reason.split(';').next().unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(
            reasons,
            [
                ("line 1", "both `secret` and a digest are set"),
                (
                    "line 2",
                    "needs one of `secret` (the plaintext), `sha256` or `sha1` (hex digests of it)"
                ),
                ("line 3", "unknown field `token`"),
                ("line 4", "`line` is a string, expected a positive integer"),
                ("line 5", "`line` is 0"),
                ("line 6", "`line` is not a positive integer"),
                ("line 7", "`repo` is an array, expected a string"),
                (
                    "line 8",
                    "not a sha256 digest: expected 64 hex characters, got 17 characters"
                ),
                ("line 9", "`secret` is a number, expected a string"),
                ("line 10", "`secret` is empty"),
                (
                    "line 11",
                    "unknown field (name not shown: it is long or unusual)"
                ),
                (
                    "line 12",
                    "unknown field (name not shown: it is long or unusual)"
                ),
                (
                    "line 13",
                    "unknown field (name not shown: it is long or unusual)"
                ),
            ]
        );
    }

    #[test]
    fn malformed_generic_input_is_an_error() {
        let csv = parse("secret,repo\nFAKE-generic-0016,acme/x\n").expect_err("CSV");
        assert_eq!(
            csv,
            "no line is a JSON object; expected one JSON object per line, each with `secret`, \
             `sha256` or `sha1`"
        );
        assert!(!csv.contains("FAKE-generic-0016"));
        assert!(parse(r#"[{"secret":"FAKE-generic-0017"}]"#).is_err());
    }
}
