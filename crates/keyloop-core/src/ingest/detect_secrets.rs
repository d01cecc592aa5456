//! detect-secrets baselines (`detect-secrets scan > .secrets.baseline`): a JSON object whose
//! `results` maps each file name to its findings. detect-secrets never writes the plaintext,
//! only `hashed_secret`, the SHA-1 hex of it, so these findings carry a SHA-1 fingerprint only.

use super::json;
use super::{Parsed, Rejected};
use crate::fingerprint::Fingerprint;
use crate::leak::{LeakFinding, LeakLocation};
use serde_json::{Map, Value};

const EXPECTED: &str = "a detect-secrets baseline (a JSON object with `results`)";

/// Parses a detect-secrets baseline.
pub(crate) fn parse(text: &str) -> Result<Parsed, String> {
    let doc = json::document(text, EXPECTED)?;
    let Some(baseline) = doc.as_object() else {
        return Err(format!("expected {EXPECTED}, found {}", json::kind(&doc)));
    };
    let results = match baseline.get("results") {
        Some(Value::Object(results)) => results,
        None | Some(Value::Null) => {
            return Err(format!("no `results` object; expected {EXPECTED}"));
        }
        Some(other) => {
            return Err(format!(
                "`results` is {}, expected an object mapping file names to findings",
                json::kind(other)
            ));
        }
    };
    let mut parsed = Parsed::default();
    for (file, entries) in results {
        // JSON string syntax, so an odd file name cannot break the position apart.
        let quoted = serde_json::to_string(file).unwrap_or_else(|_| "\"?\"".to_owned());
        let Some(entries) = entries.as_array() else {
            parsed.rejected.push(Rejected {
                position: format!("results[{quoted}]"),
                reason: format!(
                    "expected an array of findings, found {}",
                    json::kind(entries)
                ),
            });
            continue;
        };
        for (index, entry) in entries.iter().enumerate() {
            match finding(file, entry) {
                Ok(finding) => parsed.findings.push(finding),
                Err(reason) => parsed.rejected.push(Rejected {
                    position: format!("results[{quoted}][{index}]"),
                    reason,
                }),
            }
        }
    }
    Ok(parsed)
}

fn finding(file: &str, entry: &Value) -> Result<LeakFinding, String> {
    let Some(entry) = entry.as_object() else {
        return Err(format!(
            "expected a finding object, found {}",
            json::kind(entry)
        ));
    };
    let fingerprint = fingerprint(entry)?;
    let detector = match json::text(entry, "type") {
        Some(kind) => format!("detect-secrets:{kind}"),
        None => "detect-secrets".to_owned(),
    };
    Ok(LeakFinding {
        fingerprint,
        detector,
        location: LeakLocation {
            repo: None,
            file: json::text(entry, "filename").or_else(|| Some(file.to_owned())),
            line: json::line(entry, "line_number"),
            commit: None,
            url: None,
        },
    })
}

fn fingerprint(entry: &Map<String, Value>) -> Result<Fingerprint, String> {
    match entry.get("hashed_secret") {
        Some(Value::String(digest)) => Fingerprint::from_digests(None, Some(digest))
            // The error names the expected and actual length, never the text.
            .map_err(|e| format!("`hashed_secret` is {e}")),
        None | Some(Value::Null) => Err("finding has no `hashed_secret`".to_owned()),
        Some(other) => Err(format!(
            "`hashed_secret` is {}, expected a SHA-1 hex string",
            json::kind(other)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    const FIXTURE: &str = include_str!("../../../../tests/fixtures/ingest/detect-secrets.json");

    /// What detect-secrets reports for a value: its SHA-1 and nothing else.
    fn sha1_only(value: &str) -> Fingerprint {
        Fingerprint {
            sha256: None,
            ..Fingerprint::of(&Secret::from(value))
        }
    }

    #[test]
    fn detect_secrets_baseline_yields_sha1_fingerprints_with_location() {
        let parsed = parse(FIXTURE).expect("a valid baseline");
        assert!(parsed.rejected.is_empty(), "{:?}", parsed.rejected);
        assert_eq!(
            parsed.findings,
            vec![
                LeakFinding {
                    fingerprint: sha1_only("FAKE-detect-secrets-keyword-0001"),
                    detector: "detect-secrets:Secret Keyword".into(),
                    location: LeakLocation {
                        file: Some("app/settings.py".into()),
                        line: Some(3),
                        ..LeakLocation::default()
                    },
                },
                LeakFinding {
                    fingerprint: sha1_only("FAKE-detect-secrets-basicauth-0002"),
                    detector: "detect-secrets:Basic Auth Credentials".into(),
                    location: LeakLocation {
                        file: Some("docs/setup.md".into()),
                        line: Some(41),
                        ..LeakLocation::default()
                    },
                },
            ]
        );
    }

    #[test]
    fn bad_hashed_secrets_are_rejected_by_position() {
        let baseline = r#"{"results": {
            "a.py": [
                {"type": "Hex High Entropy String", "hashed_secret": "FAKE-not-a-digest", "line_number": 1},
                {"type": "Secret Keyword", "line_number": 2},
                {"type": "Secret Keyword", "hashed_secret": 7},
                {"type": "Secret Keyword", "hashed_secret": "0A15AB47D0191A10113BCB900FDC7809AE877CF0"}
            ],
            "b \"quoted\".py": {"not": "a list"}
        }}"#;
        let parsed = parse(baseline).expect("a baseline");
        let rejected: Vec<_> = parsed
            .rejected
            .iter()
            .map(|r| (r.position.as_str(), r.reason.as_str()))
            .collect();
        assert_eq!(
            rejected,
            [
                (
                    r#"results["a.py"][0]"#,
                    "`hashed_secret` is not a sha1 digest: expected 40 hex characters, got 17 \
                     characters"
                ),
                (r#"results["a.py"][1]"#, "finding has no `hashed_secret`"),
                (
                    r#"results["a.py"][2]"#,
                    "`hashed_secret` is a number, expected a SHA-1 hex string"
                ),
                (
                    r#"results["b \"quoted\".py"]"#,
                    "expected an array of findings, found an object"
                ),
            ]
        );
        // Upper-case digests are normalized; the file comes from the key when `filename` is absent.
        assert_eq!(parsed.findings.len(), 1);
        assert_eq!(
            parsed.findings[0].fingerprint,
            sha1_only("FAKE-detect-secrets-keyword-0001")
        );
        assert_eq!(parsed.findings[0].location.file.as_deref(), Some("a.py"));
    }

    #[test]
    fn baseline_without_results_is_an_error() {
        let missing = parse(r#"{"version": "1.5.0", "plugins_used": []}"#).expect_err("no results");
        assert_eq!(
            missing,
            "no `results` object; expected a detect-secrets baseline (a JSON object with `results`)"
        );
        assert!(parse(r#"{"results": []}"#).is_err());
    }

    #[test]
    fn malformed_detect_secrets_input_is_an_error() {
        let array = parse("[]").expect_err("an array");
        assert_eq!(
            array,
            "expected a detect-secrets baseline (a JSON object with `results`), found an array"
        );
        assert!(parse(r#"{"results": {"#).is_err());
    }

    #[test]
    fn empty_results_is_a_clean_baseline() {
        let parsed = parse(r#"{"version": "1.5.0", "results": {}}"#).expect("a baseline");
        assert!(parsed.findings.is_empty() && parsed.rejected.is_empty());
    }
}
