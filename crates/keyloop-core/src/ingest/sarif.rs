//! SARIF 2.1.0 logs (`--format sarif` of gitleaks, betterleaks and Kingfisher, or any tool):
//! `{"version", "runs": [{"tool": {"driver": {"name"}}, "results": [...]}]}`, each run's
//! results streamed one at a time.
//!
//! The plaintext is where the secret scanners put it: a result location's
//! `physicalLocation.region.snippet.text` (gitleaks and betterleaks: the secret; Kingfisher:
//! the match). No documented property bag of these tools carries it (Kingfisher's location
//! properties hold validation and `git_metadata`; gitleaks' `partialFingerprints` hold the
//! commit). A result without a snippet is rejected with what to do for the tool that wrote it:
//! secretlint's SARIF never has the value, so its JSON is the format to use.
//!
//! Locations: the artifact `uri`, `region.startLine`, gitleaks' `partialFingerprints.commitSha`
//! and Kingfisher's `git_metadata`. The detector is the driver's name and the `ruleId`
//! (`gitleaks:generic-api-key`); a run whose `tool` comes after its `results` (as Kingfisher
//! writes it) names its results `sarif:<ruleId>`.

use super::json::{self, Document, Found as JsonFound, SecretField, scalars_are_other};
use super::kingfisher;
use super::sink::{Hashed, Sink};
use crate::leak::LeakLocation;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;
use std::io::Read;
use std::ops::ControlFlow;

const EXPECTED: &str = "a SARIF 2.1.0 log (a JSON object with `runs`)";

/// Parses a SARIF log, one result at a time.
pub(crate) fn parse(input: impl Read, sink: &mut Sink<'_>) -> Result<(), String> {
    json::walk::<Sarif>(input, sink)
}

/// The top-level object; only `runs` is read.
struct Sarif;

impl Document for Sarif {
    const EXPECTED: &'static str = EXPECTED;

    fn object<'de, A: MapAccess<'de>>(sink: &mut Sink<'_>, mut map: A) -> Result<(), A::Error> {
        let mut runs = false;
        while let Some(key) = map.next_key::<String>()? {
            if key == "runs" {
                runs = true;
                map.next_value_seed(Runs { sink: &mut *sink })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        if !runs {
            return Err(json::refuse(
                sink,
                format!("no `runs`; expected {EXPECTED}"),
            ));
        }
        Ok(())
    }
}

/// `runs`: an array of runs.
struct Runs<'s, 'a> {
    sink: &'s mut Sink<'a>,
}

impl<'de> DeserializeSeed<'de> for Runs<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Runs<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of runs")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0;
        while seq
            .next_element_seed(Run {
                sink: &mut *self.sink,
                index,
            })?
            .is_some()
        {
            index += 1;
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        let found = json::drain_map(map)?;
        self.other(found)
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.other(JsonFound("null"))
    }

    scalars_are_other!();
}

impl Runs<'_, '_> {
    fn other<E: serde::de::Error>(self, found: JsonFound) -> Result<(), E> {
        let reason = format!("`runs` is {}, expected an array of runs", found.0);
        Err(json::refuse(self.sink, reason))
    }
}

/// One run: its `tool` (the driver's name) and its `results`, streamed.
struct Run<'s, 'a> {
    sink: &'s mut Sink<'a>,
    index: usize,
}

impl<'de> DeserializeSeed<'de> for Run<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Run<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a run")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut tool: Option<String> = None;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "tool" => {
                    let value = map.next_value::<json::Scrubbed>()?;
                    tool = value
                        .pointer("/driver/name")
                        .and_then(Value::as_str)
                        .map(tool_name);
                }
                "results" => {
                    let (sink, run) = (&mut *self.sink, self.index);
                    let tool = tool.as_deref();
                    map.next_value_seed(Results { sink, run, tool })?;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        self.other(JsonFound("an array"))
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.other(JsonFound("null"))
    }

    scalars_are_other!();
}

impl Run<'_, '_> {
    fn other<E: serde::de::Error>(self, found: JsonFound) -> Result<(), E> {
        let reason = format!("expected a run object, found {}", found.0);
        match self.sink.reject(format!("runs[{}]", self.index), reason) {
            ControlFlow::Continue(()) => Ok(()),
            ControlFlow::Break(()) => Err(json::stop()),
        }
    }
}

/// A run's `results`, one at a time.
struct Results<'s, 'a, 't> {
    sink: &'s mut Sink<'a>,
    run: usize,
    tool: Option<&'t str>,
}

impl<'de> DeserializeSeed<'de> for Results<'_, '_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Results<'_, '_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of results")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        let (sink, run, tool) = (self.sink, self.run, self.tool);
        json::each_element(seq, |index, mut result| {
            let position = format!("runs[{run}].results[{index}]");
            let found = json::kind(&result);
            match result.as_object_mut() {
                Some(result) => findings(sink, &position, tool, result),
                None => sink.reject(position, format!("expected a result object, found {found}")),
            }
        })
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        json::drain_map(map)?;
        self.other(JsonFound("an object"))
    }

    scalars_are_other!();
}

impl Results<'_, '_, '_> {
    fn other<E: serde::de::Error>(self, found: JsonFound) -> Result<(), E> {
        let reason = format!("`results` is {}, expected an array of results", found.0);
        match self.sink.reject(format!("runs[{}]", self.run), reason) {
            ControlFlow::Continue(()) => Ok(()),
            ControlFlow::Break(()) => Err(json::stop()),
        }
    }
}

/// The driver's name as a detector prefix: lowercase, and only when it is a plain name.
fn tool_name(name: &str) -> String {
    let lower = name.trim().to_ascii_lowercase();
    let plain = !lower.is_empty()
        && lower.len() <= 40
        && lower
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if plain { lower } else { "sarif".to_owned() }
}

/// The findings of one result: one per location with a snippet, or a rejection saying why
/// there is none.
fn findings(
    sink: &mut Sink<'_>,
    position: &str,
    tool: Option<&str>,
    result: &mut Map<String, Value>,
) -> ControlFlow<()> {
    let rule = json::text(result, "ruleId").or_else(|| {
        result
            .get("rule")
            .and_then(Value::as_object)
            .and_then(|r| json::text(r, "id"))
    });
    let detector = match rule {
        Some(rule) => format!("{}:{rule}", tool.unwrap_or("sarif")),
        None => tool.unwrap_or("sarif").to_owned(),
    };
    let commit = result
        .get("partialFingerprints")
        .and_then(Value::as_object)
        .and_then(|p| json::text(p, "commitSha"));
    let mut any = false;
    let mut redacted = false;
    if let Some(Value::Array(locations)) = result.get_mut("locations") {
        for location in locations.iter_mut() {
            let Some(location) = location.as_object_mut() else {
                continue;
            };
            let place = place(location, commit.clone());
            let Some(snippet) = location
                .get_mut("physicalLocation")
                .and_then(|p| p.get_mut("region"))
                .and_then(|r| r.get_mut("snippet"))
                .and_then(Value::as_object_mut)
            else {
                continue;
            };
            let secret = match json::take_secret(snippet, "text") {
                SecretField::Value(secret) => secret,
                _ => continue,
            };
            if is_redacted(secret.expose()) {
                redacted = true;
                continue;
            }
            any = true;
            // Several locations with a snippet are several places of one secret, or several
            // secrets: each is a finding (the same value is folded by `Repeats` later).
            sink.found(Hashed::of(&secret, detector.clone(), place))?;
        }
    }
    if any {
        return ControlFlow::Continue(());
    }
    sink.reject(position.to_owned(), no_value(tool, redacted))
}

/// The location of one result location: uri, start line, the commit, Kingfisher's git data.
fn place(location: &Map<String, Value>, commit: Option<String>) -> LeakLocation {
    let physical = location.get("physicalLocation").and_then(Value::as_object);
    let uri = physical
        .and_then(|p| p.get("artifactLocation"))
        .and_then(Value::as_object)
        .and_then(|a| json::text(a, "uri"));
    let line = physical
        .and_then(|p| p.get("region"))
        .and_then(Value::as_object)
        .and_then(|r| json::line(r, "startLine"));
    let git = location
        .get("properties")
        .and_then(|p| p.get("git_metadata"))
        .and_then(Value::as_object);
    let mut place = kingfisher::git_location(git, uri, line);
    place.commit = place.commit.or(commit);
    place
}

/// gitleaks and betterleaks `--redact` (`REDACTED`, or a prefix and `...`), Kingfisher's
/// `[REDACTED:…]`.
fn is_redacted(value: &str) -> bool {
    matches!(value, "REDACTED" | "REDACT")
        || value.ends_with("...")
        || value.starts_with("[REDACTED")
}

/// Why a result gives nothing to fingerprint, and what to do, for the tool that wrote it.
fn no_value(tool: Option<&str>, redacted: bool) -> String {
    match (tool, redacted) {
        (Some("kingfisher"), true) => {
            "the snippet is redacted (kingfisher was run with --redact); rerun without --redact"
                .into()
        }
        (_, true) => "the snippet is redacted (the scan was run with --redact); rerun without \
                      --redact so the value can be fingerprinted"
            .into(),
        (Some("secretlint"), false) => "secretlint's SARIF carries no secret value, only where \
                                        it is; run `secretlint --format json` and ingest that \
                                        with `keyloop ingest secretlint`"
            .into(),
        (Some("gitleaks" | "betterleaks"), false) => "result has no \
            `locations[].physicalLocation.region.snippet.text` (the secret); rerun the scan \
            without --redact, or ingest its JSON report"
            .into(),
        (Some(tool), false) => format!(
            "{tool}'s SARIF result carries no secret value (no \
             `locations[].physicalLocation.region.snippet.text`); have {tool} write JSON keyloop \
             reads (`keyloop ingest FORMAT`), or write its values as generic lines \
             (`keyloop ingest generic`)"
        ),
        (None, false) => "result carries no secret value (no \
                          `locations[].physicalLocation.region.snippet.text`); have the tool \
                          write a format keyloop reads, or generic lines (`keyloop ingest generic`)"
            .into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::Fingerprint;
    use crate::ingest::PartOf;
    use crate::secret::Secret;

    const GITLEAKS: &str = include_str!("../../../../tests/fixtures/ingest/gitleaks.sarif");
    const KINGFISHER: &str = include_str!("../../../../tests/fixtures/ingest/kingfisher.sarif");
    const SECRETLINT: &str = include_str!("../../../../tests/fixtures/ingest/secretlint.sarif");

    fn parse(text: &str) -> Result<crate::ingest::testing::Parsed, String> {
        crate::ingest::testing::collect(|input, sink| super::parse(input, sink), text)
    }

    fn fingerprint(value: &str) -> Fingerprint {
        Fingerprint::of(&Secret::from(value))
    }

    #[test]
    fn gitleaks_sarif_snippets_are_the_secrets() {
        let parsed = parse(GITLEAKS).expect("a valid log");
        assert!(parsed.rejected.is_empty(), "{:?}", parsed.rejected);
        assert_eq!(parsed.findings.len(), 2);
        let first = &parsed.findings[0];
        assert_eq!(
            first.fingerprint,
            fingerprint("FAKE-gitleaks-sarif-0001-not-a-real-key")
        );
        assert_eq!(first.detector, "gitleaks:generic-api-key");
        assert_eq!(
            first.location,
            LeakLocation {
                file: Some("config/settings.py".into()),
                line: Some(12),
                commit: Some("3f9c2a1b7e4d5c6f8a9b0c1d2e3f4a5b6c7d8e9f".into()),
                ..LeakLocation::default()
            }
        );
        // The second is a URI: its password is a part, the empty commit is no commit.
        assert_eq!(parsed.findings[1].location.commit, None);
        assert_eq!(parsed.parts.len(), 1);
        assert_eq!(parsed.parts[0].of, PartOf::UriPassword);
        assert_eq!(
            parsed.parts[0].finding.fingerprint,
            fingerprint("FAKE-gitleaks-sarif-0002")
        );
    }

    #[test]
    fn kingfisher_sarif_is_read_with_its_git_metadata() {
        let parsed = parse(KINGFISHER).expect("a valid log");
        assert!(parsed.rejected.is_empty(), "{:?}", parsed.rejected);
        assert_eq!(parsed.findings.len(), 2);
        // Kingfisher writes `results` before `tool`.
        assert_eq!(parsed.findings[0].detector, "sarif:AWS Secret Access Key");
        let pg = &parsed.findings[1].location;
        assert_eq!(pg.file.as_deref(), Some("deploy/values.yaml"));
        assert_eq!(
            pg.commit.as_deref(),
            Some("5d41402abc4b2a76b9719d911017c592ae1e2f3b")
        );
        assert_eq!(
            parsed.parts[0].finding.fingerprint,
            fingerprint("FAKE-kingfisher-pg-0002")
        );
    }

    #[test]
    fn sarif_without_values_is_rejected_with_what_to_do_for_its_tool() {
        let parsed = parse(SECRETLINT).expect("a valid log");
        assert!(parsed.findings.is_empty());
        assert_eq!(parsed.rejected.len(), 1);
        assert_eq!(parsed.rejected[0].position, "runs[0].results[0]");
        assert!(
            parsed.rejected[0]
                .reason
                .contains("run `secretlint --format json`"),
            "{}",
            parsed.rejected[0].reason
        );
        let codeql = r#"{"version":"2.1.0","runs":[{"tool":{"driver":{"name":"CodeQL"}},
            "results":[{"ruleId":"js/x","locations":[{"physicalLocation":{"artifactLocation":{"uri":"a.js"}}}]}]}]}"#;
        let reason = &parse(codeql).expect("a log").rejected[0].reason;
        assert!(
            reason.starts_with("codeql's SARIF result carries no secret value"),
            "{reason}"
        );
        let redacted = GITLEAKS.replace("FAKE-gitleaks-sarif-0001-not-a-real-key", "REDACTED");
        let parsed = parse(&redacted).expect("a log");
        assert_eq!(parsed.findings.len(), 1);
        assert!(parsed.rejected[0].reason.contains("rerun without --redact"));
    }

    #[test]
    fn empty_odd_and_malformed_logs() {
        for clean in [
            r#"{"version":"2.1.0","runs":[]}"#,
            r#"{"version":"2.1.0","runs":[{"tool":{"driver":{"name":"gitleaks"}},"results":[]}]}"#,
            r#"{"runs":[{"tool":{}}]}"#,
        ] {
            let parsed = parse(clean).expect("a clean scan");
            assert!(
                parsed.findings.is_empty() && parsed.rejected.is_empty(),
                "{clean}"
            );
        }
        let odd = r#"{"runs":[7,{"results":["FAKE-sarif-0003",{"locations":"x"}]}]}"#;
        let parsed = parse(odd).expect("a log");
        let positions: Vec<_> = parsed
            .rejected
            .iter()
            .map(|r| r.position.as_str())
            .collect();
        assert_eq!(
            positions,
            ["runs[0]", "runs[1].results[0]", "runs[1].results[1]"]
        );
        assert!(!format!("{parsed:?}").contains("FAKE-sarif-0003"));
        assert_eq!(
            parse(r#"{"version":"2.1.0"}"#).expect_err("no runs"),
            "no `runs`; expected a SARIF 2.1.0 log (a JSON object with `runs`)"
        );
        assert_eq!(
            parse(r#"{"runs":"FAKE-sarif-0004"}"#).expect_err("odd runs"),
            "`runs` is a string, expected an array of runs"
        );
        let cut = parse(r#"{"runs":[{"results":[{"locations":[{"physicalLocation":{"region":{"snippet":{"text":"FAKE-sarif-0005"#)
            .expect_err("truncated");
        assert!(cut.contains("line 1 column"), "{cut}");
        assert!(!cut.contains("FAKE-sarif-0005"));
    }
}
