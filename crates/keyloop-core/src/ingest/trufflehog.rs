//! TruffleHog v3 `--json` output: one JSON object per line. A finding's plaintext is `Raw`;
//! `RawV2` (the secret with its identifier, or a URI whole) and `SecretParts` (the pieces of a
//! multi-part secret, by name) are read too when present, each value a part of the finding. A
//! URI or connection string in any of them yields its password as a part as well: TruffleHog's
//! `URI` and `Postgres` detectors report the whole `postgres://app:<password>@db:5432`. Its
//! location is under `SourceMetadata.Data.<SourceKind>` (`Git`, `Github`, `Filesystem`, …),
//! whose fields differ by source, so whichever of `repository`, `file`, `line`, `commit` and
//! `link` are present are used. TruffleHog's own log lines (`level`, `msg`, no `Raw`) may be
//! interleaved when stderr is captured too; they are skipped. A clean scan prints nothing,
//! which is a report without findings.

use super::json::{self, LineOutcome, SecretField};
use super::sink::{Hashed, Sink};
use crate::leak::LeakLocation;
use crate::secret::Secret;
use serde_json::{Map, Value};
use std::io::Read;

const EXPECTED: &str = "one JSON object per line (trufflehog --json)";

/// Parses TruffleHog JSON lines, one line at a time.
pub(crate) fn parse(input: impl Read, sink: &mut Sink<'_>) -> Result<(), String> {
    json::lines(input, EXPECTED, sink, finding)
}

fn finding(object: &mut Map<String, Value>) -> LineOutcome {
    let secret = match json::take_secret(object, "Raw") {
        SecretField::Value(secret) => secret,
        SecretField::Missing if is_log_line(object) => return LineOutcome::Skipped,
        SecretField::Missing => {
            return LineOutcome::Rejected(
                "object has no `Raw` (the secret) and is not a trufflehog log line".into(),
            );
        }
        SecretField::Empty => {
            return LineOutcome::Rejected("`Raw` is empty; there is nothing to fingerprint".into());
        }
        SecretField::NotAString(found) => {
            return LineOutcome::Rejected(format!("`Raw` is {found}, expected a string"));
        }
    };
    let detector = match json::text(object, "DetectorName") {
        Some(name) => format!("trufflehog:{name}"),
        None => "trufflehog".to_owned(),
    };
    let mut found = Hashed::of(&secret, detector, location(object));
    drop(secret);
    if let SecretField::Value(raw_v2) = json::take_secret(object, "RawV2") {
        found.with_companion(&raw_v2);
    }
    for part in secret_parts(object) {
        found.with_companion(&part);
    }
    LineOutcome::Finding(found)
}

/// The string values of `SecretParts` (an object of named parts, or an array of them), moved
/// out of the line; anything else there is ignored (the finding stands on `Raw`).
fn secret_parts(object: &mut Map<String, Value>) -> Vec<Secret> {
    let values: Vec<&mut Value> = match object.get_mut("SecretParts") {
        Some(Value::Object(parts)) => parts.values_mut().collect(),
        Some(Value::Array(parts)) => parts.iter_mut().collect(),
        _ => Vec::new(),
    };
    values
        .into_iter()
        .filter_map(|value| match value {
            Value::String(s) if !s.trim().is_empty() => Some(Secret::new(std::mem::take(s))),
            _ => None,
        })
        .collect()
}

fn is_log_line(object: &Map<String, Value>) -> bool {
    object.contains_key("level") || object.contains_key("msg")
}

/// The location from `SourceMetadata.Data.<SourceKind>`; empty when there is none.
fn location(object: &Map<String, Value>) -> LeakLocation {
    let source = object
        .get("SourceMetadata")
        .and_then(|metadata| metadata.get("Data"))
        .and_then(Value::as_object)
        .and_then(|data| data.values().find_map(Value::as_object));
    let Some(source) = source else {
        return LeakLocation::default();
    };
    LeakLocation {
        repo: json::text(source, "repository"),
        file: json::text(source, "file"),
        line: json::line(source, "line"),
        commit: json::text(source, "commit"),
        url: json::text(source, "link"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::Fingerprint;
    use crate::ingest::PartOf;
    use crate::leak::LeakFinding;
    use crate::secret::Secret;

    const FIXTURE: &str = include_str!("../../../../tests/fixtures/ingest/trufflehog.jsonl");

    fn parse(text: &str) -> Result<crate::ingest::testing::Parsed, String> {
        crate::ingest::testing::collect(|input, sink| super::parse(input, sink), text)
    }

    fn fingerprint(value: &str) -> Fingerprint {
        Fingerprint::of(&Secret::from(value))
    }

    #[test]
    fn trufflehog_lines_yield_hashed_raw_values_and_skip_log_lines() {
        let parsed = parse(FIXTURE).expect("a valid report");
        assert!(parsed.rejected.is_empty(), "{:?}", parsed.rejected);
        assert_eq!(
            parsed.findings,
            vec![
                LeakFinding {
                    fingerprint: fingerprint(
                        "postgres://app:FAKE-trufflehog-uri-0001@db.example.invalid:5432/payments"
                    ),
                    detector: "trufflehog:URI".into(),
                    location: LeakLocation {
                        repo: Some("https://github.com/acme/payments.git".into()),
                        file: Some("services/api/db.py".into()),
                        line: Some(27),
                        commit: Some("9b1e0c7d2a3f4e5d6c7b8a9f0e1d2c3b4a5f6e7d".into()),
                        url: None,
                    },
                },
                LeakFinding {
                    fingerprint: fingerprint("FAKE-trufflehog-github-0002-not-a-real-token"),
                    detector: "trufflehog:Github".into(),
                    location: LeakLocation {
                        file: Some("/srv/app/.env".into()),
                        line: Some(4),
                        ..LeakLocation::default()
                    },
                },
            ]
        );
    }

    #[test]
    fn github_source_link_becomes_the_url() {
        let line = r#"{"SourceMetadata":{"Data":{"Github":{"link":"https://github.com/acme/web/blob/abc/app.js#L3","repository":"https://github.com/acme/web.git","commit":"abc","file":"app.js","line":3}}},"DetectorName":"Stripe","Raw":"FAKE-trufflehog-0003"}"#;
        let parsed = parse(line).expect("a report");
        let location = &parsed.findings[0].location;
        assert_eq!(
            location.url.as_deref(),
            Some("https://github.com/acme/web/blob/abc/app.js#L3")
        );
        assert_eq!(location.line, Some(3));
    }

    #[test]
    fn bad_lines_are_rejected_by_line_number() {
        let input = "\n\
            {\"DetectorName\":\"URI\",\"Raw\":\"FAKE-trufflehog-0004\"}\n\
            Found unverified result 🐷🔑❓ FAKE-trufflehog-0005\n\
            [1, 2]\n\
            {\"DetectorName\":\"URI\",\"Raw\":\"\"}\n\
            {\"DetectorName\":\"URI\"}\n\
            {\"DetectorName\":\"URI\",\"Raw\":42}\n";
        let parsed = parse(input).expect("a report with one good line");
        assert_eq!(parsed.findings.len(), 1);
        assert_eq!(parsed.findings[0].location, LeakLocation::default());
        let rejected: Vec<_> = parsed
            .rejected
            .iter()
            .map(|r| (r.position.as_str(), r.reason.as_str()))
            .collect();
        assert_eq!(
            rejected,
            [
                ("line 3", "not JSON (expected value at column 1)"),
                ("line 4", "expected a JSON object, found an array"),
                ("line 5", "`Raw` is empty; there is nothing to fingerprint"),
                (
                    "line 6",
                    "object has no `Raw` (the secret) and is not a trufflehog log line"
                ),
                ("line 7", "`Raw` is a number, expected a string"),
            ]
        );
    }

    #[test]
    fn only_log_lines_is_a_report_without_findings() {
        let parsed =
            parse(r#"{"level":"info-0","msg":"finished scanning","chunks":10}"#).expect("a report");
        assert!(parsed.findings.is_empty() && parsed.rejected.is_empty());
    }

    #[test]
    fn malformed_trufflehog_input_is_an_error() {
        let text = parse("Found unverified result\nRaw result: FAKE-trufflehog-0006\n")
            .expect_err("not JSON lines");
        assert_eq!(
            text,
            "no line is a JSON object; expected one JSON object per line (trufflehog --json)"
        );
        assert!(parse(r#"[{"Raw":"FAKE-trufflehog-0007"}]"#).is_err());
    }

    #[test]
    fn a_postgres_uri_yields_its_password_and_raw_v2_and_secret_parts_are_read() {
        let line = r#"{"DetectorName":"Postgres","Raw":"postgres://app:FAKE-th-pg-0008@db:5432","RawV2":"postgres://app:FAKE-th-pg-0008@db:5432/orders?sslmode=require","SecretParts":{"username":"app","password":"FAKE-th-pg-0008","key":"FAKE-th-part-0009"}}"#;
        let parsed = parse(line).expect("a report");
        assert_eq!(parsed.findings.len(), 1);
        let parts: Vec<_> = parsed
            .parts
            .iter()
            .map(|p| (p.of, p.finding.fingerprint.clone()))
            .collect();
        assert_eq!(
            parts,
            [
                (PartOf::UriPassword, fingerprint("FAKE-th-pg-0008")),
                (
                    PartOf::Companion,
                    fingerprint("postgres://app:FAKE-th-pg-0008@db:5432/orders?sslmode=require")
                ),
                // `SecretParts` in the report's order (the password is already there).
                (PartOf::Companion, fingerprint("app")),
                (PartOf::Companion, fingerprint("FAKE-th-part-0009")),
            ]
        );
        // The fixture's URI detector line has RawV2 equal to Raw: one part, its password.
        let fixture = parse(FIXTURE).expect("a report");
        assert_eq!(fixture.parts.len(), 1);
        assert_eq!(
            fixture.parts[0].finding.fingerprint,
            fingerprint("FAKE-trufflehog-uri-0001")
        );
        assert_eq!(
            fixture.parts[0].finding.location,
            fixture.findings[0].location
        );
        let odd = r#"{"Raw":"FAKE-th-0010","RawV2":7,"SecretParts":["FAKE-th-0011",3,""]}"#;
        let parsed = parse(odd).expect("a report");
        assert_eq!(parsed.parts.len(), 1);
        assert!(!format!("{parsed:?}").contains("FAKE-th-0011"));
    }

    #[test]
    fn an_empty_run_is_a_report_without_findings() {
        for clean in ["", "\n", "  \n\n"] {
            let parsed = parse(clean).expect("a clean run");
            assert!(parsed.findings.is_empty() && parsed.rejected.is_empty());
        }
    }
}
