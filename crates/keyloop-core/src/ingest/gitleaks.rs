//! gitleaks JSON reports (`gitleaks detect --report-format json`, and `gitleaks git|dir` in
//! v8.19+): a top-level array of findings whose `Secret` is the plaintext. betterleaks (a
//! gitleaks fork) writes the same findings, as that array (`--report-format json`) or one per
//! line (`--report-format jsonl`): a betterleaks input whose first character is `{` is read
//! as lines.
//! Only `Secret`, `File`, `StartLine`, `Commit`, `Link` and `RuleID` are read (and
//! betterleaks' `Attributes` where those are empty); every other field (including `Match`,
//! which also holds the value) is ignored, so reports from any v8 release parse.

use super::json::{self, Document, LineOutcome, SecretField};
use super::sink::{Hashed, Sink};
use crate::leak::LeakLocation;
use serde::de::SeqAccess;
use serde_json::{Map, Value};
use std::io::Read;

const NO_SECRET: &str =
    "finding has no `Secret` (was the scan run with --redact?); rerun without --redact";

const REDACTED: &str = "`Secret` is redacted (the scan was run with --redact); rerun without \
                        --redact so the value can be fingerprinted";

/// Parses a gitleaks or betterleaks report (`tool` names which, for the detector), one finding
/// at a time.
pub(crate) fn parse(
    input: impl Read,
    sink: &mut Sink<'_>,
    tool: &'static str,
) -> Result<(), String> {
    if tool != "betterleaks" {
        return json::walk::<Report<false>>(input, sink);
    }
    let (first, input) = json::first_byte(input)?;
    if first != Some(b'{') {
        return json::walk::<Report<true>>(input, sink);
    }
    let expected = "one finding object per line (betterleaks --report-format jsonl)";
    json::lines(input, expected, sink, |object| {
        match finding(object, tool) {
            Ok(found) => LineOutcome::Finding(found),
            Err(reason) => LineOutcome::Rejected(reason),
        }
    })
}

/// The top-level value: an array of findings, or `null`; of betterleaks when `B`.
struct Report<const B: bool>;

impl<const B: bool> Document for Report<B> {
    const EXPECTED: &'static str = if B {
        "a JSON array of findings (betterleaks --report-format json) or one per line \
         (--report-format jsonl)"
    } else {
        "a JSON array of findings (gitleaks --report-format json)"
    };

    // gitleaks releases whose JSON writer lacks the empty-report guard encode a nil slice of
    // findings, that is a clean scan, as `null`.
    const NULL_IS_EMPTY: bool = true;

    fn array<'de, A: SeqAccess<'de>>(sink: &mut Sink<'_>, seq: A) -> Result<(), A::Error> {
        let tool = if B { "betterleaks" } else { "gitleaks" };
        json::each_element(seq, |index, mut item| {
            let found = json::kind(&item);
            let outcome = match item.as_object_mut() {
                Some(object) => finding(object, tool),
                None => Err(format!("expected a finding object, found {found}")),
            };
            sink.outcome(|| format!("finding {}", index + 1), outcome)
        })
    }
}

fn finding(object: &mut Map<String, Value>, tool: &str) -> Result<Hashed, String> {
    let secret = match json::take_secret(object, "Secret") {
        SecretField::Value(secret) => secret,
        SecretField::Missing | SecretField::Empty => return Err(NO_SECRET.into()),
        SecretField::NotAString(found) => {
            return Err(format!("`Secret` is {found}, expected a string"));
        }
    };
    if is_redacted(secret.expose()) {
        return Err(REDACTED.into());
    }
    let detector = match json::text(object, "RuleID") {
        Some(rule) => format!("{tool}:{rule}"),
        None => tool.to_owned(),
    };
    // betterleaks keeps the location in `Attributes` too (and may leave the old fields empty).
    let attributes = object.get("Attributes").and_then(Value::as_object);
    let attribute = |key: &str| attributes.and_then(|a| json::text(a, key));
    let location = LeakLocation {
        repo: None,
        file: json::text(object, "File").or_else(|| attribute("path")),
        line: json::line(object, "StartLine"),
        // Empty when the scan was not of git history (`--no-git`, `gitleaks dir`).
        commit: json::text(object, "Commit").or_else(|| attribute("git.sha")),
        // Set by gitleaks v8.19+ when the remote is a known platform.
        url: json::text(object, "Link").or_else(|| attribute("url")),
    };
    Ok(Hashed::of(&secret, detector, location))
}

/// `--redact` replaces the value with `REDACTED` (`REDACT` before v8), and `--redact=N` keeps a
/// prefix followed by `...`; fingerprinting either would match nothing.
fn is_redacted(value: &str) -> bool {
    matches!(value, "REDACTED" | "REDACT") || value.ends_with("...")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::Fingerprint;
    use crate::leak::LeakFinding;
    use crate::secret::Secret;

    const FIXTURE: &str = include_str!("../../../../tests/fixtures/ingest/gitleaks.json");

    fn parse(text: &str) -> Result<crate::ingest::testing::Parsed, String> {
        crate::ingest::testing::collect(|input, sink| super::parse(input, sink, "gitleaks"), text)
    }

    fn fingerprint(value: &str) -> Fingerprint {
        Fingerprint::of(&Secret::from(value))
    }

    #[test]
    fn gitleaks_report_yields_hashed_findings_with_location() {
        let parsed = parse(FIXTURE).expect("a valid report");
        assert!(parsed.rejected.is_empty(), "{:?}", parsed.rejected);
        assert_eq!(
            parsed.findings,
            vec![
                LeakFinding {
                    fingerprint: fingerprint("FAKE-gitleaks-generic-0001-not-a-real-key"),
                    detector: "gitleaks:generic-api-key".into(),
                    location: LeakLocation {
                        repo: None,
                        file: Some("config/settings.py".into()),
                        line: Some(12),
                        commit: Some("3f9c2a1b7e4d5c6f8a9b0c1d2e3f4a5b6c7d8e9f".into()),
                        url: Some(
                            "https://github.com/acme/payments/blob/\
                             3f9c2a1b7e4d5c6f8a9b0c1d2e3f4a5b6c7d8e9f/config/settings.py#L12"
                                .into()
                        ),
                    },
                },
                LeakFinding {
                    fingerprint: fingerprint("FAKE-gitleaks-webhook-0002-not-a-real-url"),
                    detector: "gitleaks:slack-webhook-url".into(),
                    location: LeakLocation {
                        file: Some("deploy/.env.staging".into()),
                        line: Some(3),
                        ..LeakLocation::default()
                    },
                },
            ]
        );
    }

    #[test]
    fn empty_array_and_null_are_clean_scans() {
        for report in ["[]", " [ ]\n", "null\n"] {
            let parsed = parse(report).expect("a clean scan");
            assert!(parsed.findings.is_empty() && parsed.rejected.is_empty());
        }
    }

    #[test]
    fn redacted_or_missing_secrets_are_rejected_with_advice() {
        let report = r#"[
            {"RuleID": "a", "Secret": "REDACTED", "Match": "key = REDACTED"},
            {"RuleID": "b", "Secret": "FAKE-pa...", "File": "x"},
            {"RuleID": "c", "Secret": ""},
            {"RuleID": "d"},
            {"RuleID": "e", "Secret": 1234},
            "not a finding",
            {"Secret": "FAKE-gitleaks-norule-0003"}
        ]"#;
        let parsed = parse(report).expect("a report");
        let positions: Vec<_> = parsed
            .rejected
            .iter()
            .map(|r| r.position.as_str())
            .collect();
        assert_eq!(
            positions,
            [
                "finding 1",
                "finding 2",
                "finding 3",
                "finding 4",
                "finding 5",
                "finding 6"
            ]
        );
        assert!(
            parsed.rejected[..4]
                .iter()
                .all(|r| r.reason.contains("rerun without --redact"))
        );
        assert_eq!(
            parsed.rejected[4].reason,
            "`Secret` is a number, expected a string"
        );
        assert_eq!(
            parsed.rejected[5].reason,
            "expected a finding object, found a string"
        );
        assert_eq!(parsed.findings.len(), 1);
        assert_eq!(parsed.findings[0].detector, "gitleaks");
        assert_eq!(
            parsed.findings[0].fingerprint,
            fingerprint("FAKE-gitleaks-norule-0003")
        );
    }

    #[test]
    fn unknown_fields_and_odd_location_types_are_tolerated() {
        let report = r#"[{"Secret": "FAKE-gitleaks-0004", "RuleID": "r", "StartLine": "9",
            "File": 17, "Commit": null, "FutureField": {"nested": [1, 2]}}]"#;
        let parsed = parse(report).expect("a report");
        assert_eq!(
            parsed.findings[0].location,
            LeakLocation {
                line: Some(9),
                ..LeakLocation::default()
            }
        );
    }

    #[test]
    fn malformed_gitleaks_input_is_an_error() {
        let object = parse(r#"{"Secret": "FAKE-gitleaks-0005"}"#).expect_err("an object");
        assert_eq!(
            object,
            "expected a JSON array of findings (gitleaks --report-format json), found an object"
        );
        let truncated = parse(r#"[{"Secret": "FAKE-gitleaks-0006", "#).expect_err("truncated");
        assert!(
            truncated.starts_with("not JSON (EOF while parsing"),
            "{truncated}"
        );
        assert!(!truncated.contains("FAKE-gitleaks-0006"));
        assert!(parse("gitleaks found 2 leaks").is_err());
    }

    #[test]
    fn betterleaks_lines_and_attributes_are_read() {
        let lines = include_str!("../../../../tests/fixtures/ingest/betterleaks.jsonl");
        let parsed = crate::ingest::testing::collect(
            |input, sink| super::parse(input, sink, "betterleaks"),
            lines,
        )
        .expect("betterleaks lines");
        assert!(parsed.rejected.is_empty(), "{:?}", parsed.rejected);
        assert_eq!(parsed.findings[0].detector, "betterleaks:github-pat");
        assert_eq!(
            parsed.findings[0].location,
            LeakLocation {
                file: Some("ci/env.sh".into()),
                line: Some(4),
                commit: Some("9fceb02d0ae598e95dc970b74767f19372d61af8".into()),
                url: Some(
                    "https://github.com/acme/ci/blob/9fceb02d0ae598e95dc970b74767f19372d61af8/ci/env.sh#L4"
                        .into()
                ),
                ..LeakLocation::default()
            }
        );
        // gitleaks itself writes no JSON lines: an object is not a gitleaks report.
        assert!(parse(lines).is_err());
    }

    #[test]
    fn a_secret_that_is_a_connection_string_yields_its_password() {
        let report =
            r#"[{"RuleID":"x","Secret":"Server=db;User Id=app;Password=FAKE-gl-pw-0007;"}]"#;
        let parsed = parse(report).expect("a report");
        assert_eq!(parsed.parts.len(), 1);
        assert_eq!(
            parsed.parts[0].of,
            crate::ingest::PartOf::ConnectionPassword
        );
        assert_eq!(
            parsed.parts[0].finding.fingerprint,
            fingerprint("FAKE-gl-pw-0007")
        );
        assert_eq!(parsed.parts[0].finding.detector, "gitleaks:x");
    }
}
