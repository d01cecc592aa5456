//! detect-secrets baselines (`detect-secrets scan > .secrets.baseline`): a JSON object whose
//! `results` maps each file name to its findings. detect-secrets never writes the plaintext,
//! only `hashed_secret`, the SHA-1 hex of it, so these findings carry a SHA-1 fingerprint only.

use super::json::{self, Document, Found, scalars_are_other};
use super::sink::{Hashed, Sink};
use crate::fingerprint::Fingerprint;
use crate::leak::{LeakFinding, LeakLocation};
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;
use std::io::Read;
use std::ops::ControlFlow;

const EXPECTED: &str = "a detect-secrets baseline (a JSON object with `results`)";

const RESULTS_SHAPE: &str = "an object mapping file names to findings";

/// Parses a detect-secrets baseline, one finding at a time.
pub(crate) fn parse(input: impl Read, sink: &mut Sink<'_>) -> Result<(), String> {
    json::walk::<Baseline>(input, sink)
}

/// The top-level object; only `results` is read.
struct Baseline;

impl Document for Baseline {
    const EXPECTED: &'static str = EXPECTED;

    fn object<'de, A: MapAccess<'de>>(sink: &mut Sink<'_>, mut map: A) -> Result<(), A::Error> {
        let mut results = false;
        while let Some(key) = map.next_key::<String>()? {
            if key == "results" {
                results |= map.next_value_seed(Results { sink: &mut *sink })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        if !results {
            let reason = format!("no `results` object; expected {EXPECTED}");
            return Err(json::refuse(sink, reason));
        }
        Ok(())
    }
}

/// `results`: file name → findings. Its value says whether it was there at all (`null` is
/// the same as absent).
struct Results<'s, 'a> {
    sink: &'s mut Sink<'a>,
}

impl Results<'_, '_> {
    fn other<E: serde::de::Error>(self, found: Found) -> Result<bool, E> {
        let reason = format!("`results` is {}, expected {RESULTS_SHAPE}", found.0);
        Err(json::refuse(self.sink, reason))
    }
}

impl<'de> DeserializeSeed<'de> for Results<'_, '_> {
    type Value = bool;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Results<'_, '_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(RESULTS_SHAPE)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        while let Some(file) = map.next_key::<String>()? {
            map.next_value_seed(Entries {
                file: &file,
                sink: &mut *self.sink,
            })?;
        }
        Ok(true)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<bool, A::Error> {
        self.other(Found("an array"))
    }

    fn visit_unit<E>(self) -> Result<bool, E> {
        Ok(false)
    }

    scalars_are_other!();
}

/// The findings of one file, one at a time.
struct Entries<'f, 's, 'a> {
    file: &'f str,
    sink: &'s mut Sink<'a>,
}

impl Entries<'_, '_, '_> {
    fn other<E: serde::de::Error>(self, found: Found) -> Result<(), E> {
        let reason = format!("expected an array of findings, found {}", found.0);
        match self.sink.reject(position(self.file), reason) {
            ControlFlow::Continue(()) => Ok(()),
            ControlFlow::Break(()) => Err(json::stop()),
        }
    }
}

impl<'de> DeserializeSeed<'de> for Entries<'_, '_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Entries<'_, '_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of findings")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        let (file, sink) = (self.file, self.sink);
        json::each_element(seq, |index, entry| {
            sink.outcome(
                || format!("{}[{index}]", position(file)),
                finding(file, &entry).map(Hashed::digests),
            )
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        let found = json::drain_map(map)?;
        self.other(found)
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.other(Found("null"))
    }

    scalars_are_other!();
}

/// `results["<file>"]`, the file name in JSON string syntax so an odd name cannot break the
/// position apart.
fn position(file: &str) -> String {
    let quoted = serde_json::to_string(file).unwrap_or_else(|_| "\"?\"".to_owned());
    format!("results[{quoted}]")
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

    fn parse(text: &str) -> Result<crate::ingest::testing::Parsed, String> {
        crate::ingest::testing::collect(|input, sink| super::parse(input, sink), text)
    }

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
