//! Kingfisher reports (`kingfisher scan --format json` or `--format jsonl`). Its JSON is one
//! report object per repository, one per line (`{"findings": [...], "access_map": …,
//! "metadata": …}`); its JSON lines are one finding record a line, then an `access_map` and an
//! `audit` line; releases before 1.70 wrote one pretty-printed array of records (or of
//! `{"id", "matches": [...]}`). All of these are read: a sequence of JSON documents, each a
//! report object, a record, or an array of records.
//!
//! A record is `{"rule": {"name", "id"}, "finding": {"snippet", "path", "line", "git_metadata",
//! …}}`; `finding.snippet` is the plaintext (`[REDACTED:…]` under `--redact`). The location
//! is `path` and `line`, and for history scans `git_metadata`'s `repository_url`,
//! `commit.id`, `file.path` and `file.url`.

use super::json::{self, Document, SecretField};
use super::sink::{Hashed, Sink};
use crate::leak::LeakLocation;
use serde::de::{IgnoredAny, MapAccess, SeqAccess};
use serde_json::{Map, Value};
use std::io::Read;

const EXPECTED: &str = "Kingfisher report objects (kingfisher scan --format json) or finding \
                        records one per line (--format jsonl)";

const REDACTED: &str = "`finding.snippet` is redacted (kingfisher was run with --redact); rerun \
                        without --redact so the value can be fingerprinted";

/// Parses Kingfisher JSON or JSON lines, one finding at a time.
pub(crate) fn parse(input: impl Read, sink: &mut Sink<'_>) -> Result<(), String> {
    json::walk_each::<Kingfisher>(input, sink)
}

/// One top-level document: a report object, a finding record, an array of records.
struct Kingfisher;

impl Document for Kingfisher {
    const EXPECTED: &'static str = EXPECTED;

    fn object<'de, A: MapAccess<'de>>(sink: &mut Sink<'_>, mut map: A) -> Result<(), A::Error> {
        // A record's fields are kept (a record is small); a report's `findings` are streamed;
        // the rest (`access_map`, `audit`, `metadata`) is skipped unread.
        let mut record = json::Scrubbed::object();
        let mut report = false;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "findings" => {
                    report = true;
                    map.next_value_seed(Records { sink: &mut *sink })?;
                }
                "rule" | "finding" | "id" | "matches" => {
                    let value = map.next_value::<json::Scrubbed>()?;
                    record.insert(key, value);
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let Some(record) = record.as_object_mut().filter(|r| !report && !r.is_empty()) else {
            // A report, or a line of the JSON lines that is not a finding (`audit`).
            return Ok(());
        };
        let flow = if record.contains_key("matches") {
            matches(sink, record)
        } else {
            let position = sink.findings + sink.rejected + 1;
            sink.outcome(|| format!("finding {position}"), finding(record))
        };
        flow.is_continue().then_some(()).ok_or_else(json::stop)
    }

    fn array<'de, A: SeqAccess<'de>>(sink: &mut Sink<'_>, seq: A) -> Result<(), A::Error> {
        records(sink, seq)
    }
}

/// The records of a pre-1.70 `{"id", "matches": [record, …]}`.
fn matches(sink: &mut Sink<'_>, record: &mut Map<String, Value>) -> std::ops::ControlFlow<()> {
    let Some(Value::Array(items)) = record.get_mut("matches") else {
        let position = sink.findings + sink.rejected + 1;
        return sink.reject(
            format!("finding {position}"),
            "`matches` is not an array of finding records".into(),
        );
    };
    for item in items {
        let position = sink.findings + sink.rejected + 1;
        let outcome = match item.as_object_mut() {
            Some(item) => finding(item),
            None => Err(format!(
                "expected a finding record, found {}",
                json::kind(item)
            )),
        };
        sink.outcome(|| format!("finding {position}"), outcome)?;
    }
    std::ops::ControlFlow::Continue(())
}

/// Hands on each record of an array as it is parsed.
fn records<'de, A: SeqAccess<'de>>(sink: &mut Sink<'_>, seq: A) -> Result<(), A::Error> {
    json::each_element(seq, |_, mut item| {
        let position = sink.findings + sink.rejected + 1;
        match item.as_object_mut() {
            Some(record) if record.contains_key("matches") => matches(sink, record),
            Some(record) => sink.outcome(|| format!("finding {position}"), finding(record)),
            None => {
                let found = json::kind(&item);
                sink.reject(
                    format!("finding {position}"),
                    format!("expected a finding record, found {found}"),
                )
            }
        }
    })
}

/// `findings` of a report object: an array of records.
struct Records<'s, 'a> {
    sink: &'s mut Sink<'a>,
}

impl<'de> serde::de::DeserializeSeed<'de> for Records<'_, '_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Records<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an array of finding records")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        records(self.sink, seq)
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        let found = json::drain_map(map)?;
        self.other(found)
    }

    json::scalars_are_other!();
}

impl Records<'_, '_> {
    fn other<E: serde::de::Error>(self, found: json::Found) -> Result<(), E> {
        let reason = format!(
            "`findings` is {}, expected an array of finding records",
            found.0
        );
        Err(json::refuse(self.sink, reason))
    }
}

/// One record: `{"rule": {…}, "finding": {…}}`.
fn finding(record: &mut Map<String, Value>) -> Result<Hashed, String> {
    let rule = record
        .get("rule")
        .and_then(Value::as_object)
        .and_then(|rule| json::text(rule, "id").or_else(|| json::text(rule, "name")));
    let Some(Value::Object(finding)) = record.get_mut("finding") else {
        return Err("record has no `finding` object".into());
    };
    let secret = match json::take_secret(finding, "snippet") {
        SecretField::Value(secret) => secret,
        SecretField::Missing | SecretField::Empty => {
            return Err("`finding.snippet` (the secret) is missing or empty".into());
        }
        SecretField::NotAString(found) => {
            return Err(format!("`finding.snippet` is {found}, expected a string"));
        }
    };
    if secret.expose().starts_with("[REDACTED") {
        return Err(REDACTED.into());
    }
    let detector = match rule {
        Some(rule) => format!("kingfisher:{rule}"),
        None => "kingfisher".to_owned(),
    };
    Ok(Hashed::of(&secret, detector, location(finding)))
}

/// `path` and `line`, and `git_metadata` where the finding is in a repository's history.
pub(crate) fn location(finding: &Map<String, Value>) -> LeakLocation {
    let git = finding.get("git_metadata").and_then(Value::as_object);
    git_location(
        git,
        json::text(finding, "path"),
        json::line(finding, "line"),
    )
}

/// A location from Kingfisher's `git_metadata` (also in its SARIF's location properties).
pub(crate) fn git_location(
    git: Option<&Map<String, Value>>,
    path: Option<String>,
    line: Option<u64>,
) -> LeakLocation {
    let part = |name: &str| git.and_then(|g| g.get(name)).and_then(Value::as_object);
    let (commit, file) = (part("commit"), part("file"));
    LeakLocation {
        repo: git.and_then(|g| json::text(g, "repository_url")),
        file: file.and_then(|f| json::text(f, "path")).or(path),
        line,
        commit: commit.and_then(|c| json::text(c, "id")),
        url: file.and_then(|f| json::text(f, "url")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::Fingerprint;
    use crate::ingest::PartOf;
    use crate::secret::Secret;

    const JSON: &str = include_str!("../../../../tests/fixtures/ingest/kingfisher.json");
    const JSONL: &str = include_str!("../../../../tests/fixtures/ingest/kingfisher.jsonl");

    fn parse(text: &str) -> Result<crate::ingest::testing::Parsed, String> {
        crate::ingest::testing::collect(|input, sink| super::parse(input, sink), text)
    }

    fn fingerprint(value: &str) -> Fingerprint {
        Fingerprint::of(&Secret::from(value))
    }

    #[test]
    fn kingfisher_json_and_jsonl_yield_the_same_findings_with_locations() {
        for report in [JSON, JSONL] {
            let parsed = parse(report).expect("a valid report");
            assert!(parsed.rejected.is_empty(), "{:?}", parsed.rejected);
            assert_eq!(parsed.findings.len(), 2);
            let aws = &parsed.findings[0];
            assert_eq!(
                aws.fingerprint,
                fingerprint("FAKE-kingfisher-aws-0001-not-a-real-key")
            );
            assert_eq!(aws.detector, "kingfisher:kingfisher.aws.2");
            assert_eq!(
                aws.location,
                LeakLocation {
                    file: Some("/work/acme/payments/config/aws.py".into()),
                    line: Some(14),
                    ..LeakLocation::default()
                }
            );
            let pg = &parsed.findings[1];
            assert_eq!(
                pg.location,
                LeakLocation {
                    repo: Some("https://github.com/acme/billing".into()),
                    file: Some("deploy/values.yaml".into()),
                    line: Some(7),
                    commit: Some("5d41402abc4b2a76b9719d911017c592ae1e2f3b".into()),
                    url: Some(
                        "https://github.com/acme/billing/blob/\
                         5d41402abc4b2a76b9719d911017c592ae1e2f3b/deploy/values.yaml#L7"
                            .into()
                    ),
                }
            );
            // The URI's password is a finding of its own, at the same place.
            assert_eq!(parsed.parts.len(), 1);
            assert_eq!(parsed.parts[0].of, PartOf::UriPassword);
            assert_eq!(
                parsed.parts[0].finding.fingerprint,
                fingerprint("FAKE-kingfisher-pg-0002")
            );
            assert_eq!(parsed.parts[0].finding.location, pg.location);
        }
    }

    #[test]
    fn several_reports_old_arrays_and_empty_reports_are_read() {
        let two = format!("{}{}", JSON, JSON.replace("0001", "0003"));
        assert_eq!(parse(&two).expect("two reports").findings.len(), 4);
        let old = r#"[
          {"id": "kingfisher.aws.2", "matches": [{"rule": {"name": "AWS", "id": "kingfisher.aws.2"},
            "finding": {"snippet": "FAKE-kingfisher-0004", "path": "a.py", "line": 3}}]},
          {"rule": {"name": "Slack", "id": "kingfisher.slack.1"},
            "finding": {"snippet": "FAKE-kingfisher-0005", "path": "b.py", "line": 9}}
        ]"#;
        let parsed = parse(old).expect("an old report");
        assert_eq!(parsed.findings.len(), 2);
        assert_eq!(parsed.findings[1].detector, "kingfisher:kingfisher.slack.1");
        for clean in [
            r#"{"findings":[],"metadata":{"findings":0}}"#,
            "[]",
            "{\"audit\":{\"summary\":{}}}\n",
        ] {
            let parsed = parse(clean).expect("a clean scan");
            assert!(
                parsed.findings.is_empty() && parsed.rejected.is_empty(),
                "{clean}"
            );
        }
    }

    #[test]
    fn redacted_missing_or_odd_snippets_are_rejected_with_advice() {
        let report = r#"{"findings":[
            {"rule":{"id":"a"},"finding":{"snippet":"[REDACTED:1a2b3c4]","path":"x"}},
            {"rule":{"id":"b"},"finding":{"path":"x"}},
            {"rule":{"id":"c"},"finding":{"snippet":42}},
            {"rule":{"id":"d"}},
            "FAKE-kingfisher-0006"
        ]}"#;
        let parsed = parse(report).expect("a report");
        let reasons: Vec<_> = parsed
            .rejected
            .iter()
            .map(|r| (r.position.as_str(), r.reason.as_str()))
            .collect();
        assert_eq!(
            reasons,
            [
                ("finding 1", REDACTED),
                (
                    "finding 2",
                    "`finding.snippet` (the secret) is missing or empty"
                ),
                (
                    "finding 3",
                    "`finding.snippet` is a number, expected a string"
                ),
                ("finding 4", "record has no `finding` object"),
                ("finding 5", "expected a finding record, found a string"),
            ]
        );
        assert!(!format!("{parsed:?}").contains("FAKE-kingfisher-0006"));
    }

    #[test]
    fn malformed_kingfisher_input_is_an_error_with_its_position() {
        let truncated = parse("{\"findings\":[{\"rule\":{\"id\":\"a\"},\"finding\":{\"snippet\":\"FAKE-kingfisher-0007")
            .expect_err("truncated");
        assert!(
            truncated.starts_with("not JSON (EOF while parsing"),
            "{truncated}"
        );
        assert!(truncated.contains("line 1 column"), "{truncated}");
        assert!(!truncated.contains("FAKE-kingfisher-0007"));
        let odd = parse(r#"{"findings":"FAKE-kingfisher-0008"}"#).expect_err("odd");
        assert_eq!(
            odd,
            "`findings` is a string, expected an array of finding records"
        );
        assert!(parse("Kingfisher found 2 secrets").is_err());
    }
}
