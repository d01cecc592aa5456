//! Parsers for detectors' native report formats (`keyloop ingest FORMAT`). Each parser hashes
//! plaintext at the edge: a value goes from the input bytes into a [`Fingerprint`] and is
//! dropped (zeroized); only [`LeakFinding`]s leave this module.
//!
//! Reports are streamed: [`parse`] reads from any [`Read`] and hands each finding or rejection
//! to a callback as soon as it is reached (a line of a line format, an element of a document's
//! array), so memory is bounded by the largest entry, never by the report. No list of the
//! report's findings is ever built here; [`Repeats`] folds a value named many times in one
//! report into its first finding, in bounded memory too.
//!
//! [`Fingerprint`]: crate::Fingerprint

mod detect_secrets;
mod generic;
mod github;
mod gitleaks;
mod json;
mod repeats;
mod trufflehog;

pub use repeats::Repeats;

use crate::leak::LeakFinding;
use std::fmt;
use std::io::Read;
use std::ops::ControlFlow;
use std::str::FromStr;

/// A report format that `keyloop ingest` understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// gitleaks JSON report (`gitleaks detect --report-format json`): an array of findings.
    Gitleaks,
    /// TruffleHog v3 `--json`: one JSON object per line.
    Trufflehog,
    /// detect-secrets baseline JSON; carries only `hashed_secret` (SHA-1 hex).
    DetectSecrets,
    /// GitHub `secret_scanning_alert` webhook payload.
    Github,
    /// JSON lines with one of `secret`, `sha256`, `sha1`, plus optional location fields.
    Generic,
}

impl Format {
    /// Every format, in the order the CLI lists them.
    pub const ALL: [Format; 5] = [
        Self::Gitleaks,
        Self::Trufflehog,
        Self::DetectSecrets,
        Self::Github,
        Self::Generic,
    ];

    /// The name used on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Gitleaks => "gitleaks",
            Self::Trufflehog => "trufflehog",
            Self::DetectSecrets => "detect-secrets",
            Self::Github => "github",
            Self::Generic => "generic",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Self::ALL.iter().map(|f| f.name()).collect();
                format!(
                    "unknown format `{s}`; expected one of: {}",
                    names.join(", ")
                )
            })
    }
}

/// A finding that could not be used, and why. Never contains the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Where in the input: `finding 3`, `line 7`, `results["a.py"][0]`.
    pub position: String,
    /// Why it was rejected, in words an operator can act on.
    pub reason: String,
}

/// One entry of a report, handed on as the parser reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A usable finding.
    Finding(LeakFinding),
    /// An unusable entry, and why.
    Rejected(Rejected),
}

/// What a parse went through. The entries themselves went to the callback.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Findings handed on.
    pub findings: u64,
    /// Rejections handed on.
    pub rejected: u64,
    /// The callback asked to stop before the end of the report.
    pub stopped: bool,
}

/// The whole input is not a report of the named format.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("not a valid {format} report: {reason}")]
pub struct IngestError {
    /// The format that was expected.
    pub format: Format,
    /// What is wrong, without any secret value.
    pub reason: String,
}

/// Parses a report read from `input`, handing each entry to `on_entry` as soon as it is
/// reached, in input order; `on_entry` returns [`ControlFlow::Break`] to stop early (then
/// [`Summary::stopped`] is set). Entries that are individually unusable are
/// [`Entry::Rejected`]; an input that is not a report of `format` at all is an error.
///
/// Because entries are handed on as they come, a document that turns out to be malformed
/// further down (truncated, trailing text) has had its earlier entries handed on before the
/// error: they are findings all the same. The error says where the document broke.
///
/// Plaintext values are hashed as they are read and held only in a [`crate::Secret`] until
/// then; no rejection reason or error quotes the input.
pub fn parse(
    format: Format,
    input: impl Read,
    mut on_entry: impl FnMut(Entry) -> ControlFlow<()>,
) -> Result<Summary, IngestError> {
    let mut sink = Sink::new(&mut on_entry);
    match format {
        Format::Gitleaks => gitleaks::parse(input, &mut sink),
        Format::Trufflehog => trufflehog::parse(input, &mut sink),
        Format::DetectSecrets => detect_secrets::parse(input, &mut sink),
        Format::Github => github::parse(input, &mut sink),
        Format::Generic => generic::parse(input, &mut sink),
    }
    .map_err(|reason| IngestError { format, reason })?;
    Ok(Summary {
        findings: sink.findings,
        rejected: sink.rejected,
        stopped: sink.stopped,
    })
}

/// Where the format parsers hand their entries: the caller's callback, with counts and the
/// two ways a walk ends early (the callback stopped it; the document is not of the format).
pub(crate) struct Sink<'a> {
    emit: &'a mut dyn FnMut(Entry) -> ControlFlow<()>,
    findings: u64,
    rejected: u64,
    /// The callback asked to stop.
    stopped: bool,
    /// Why the whole document is refused, set by a visitor before it unwinds the
    /// deserializer (whose own message could quote the input).
    refused: Option<String>,
}

impl<'a> Sink<'a> {
    pub(crate) fn new(emit: &'a mut dyn FnMut(Entry) -> ControlFlow<()>) -> Self {
        Self {
            emit,
            findings: 0,
            rejected: 0,
            stopped: false,
            refused: None,
        }
    }

    fn send(&mut self, entry: Entry) -> ControlFlow<()> {
        let flow = (self.emit)(entry);
        self.stopped |= flow.is_break();
        flow
    }

    /// Hands on a finding.
    pub(crate) fn finding(&mut self, finding: LeakFinding) -> ControlFlow<()> {
        self.findings += 1;
        self.send(Entry::Finding(finding))
    }

    /// Hands on a rejection.
    pub(crate) fn reject(&mut self, position: String, reason: String) -> ControlFlow<()> {
        self.rejected += 1;
        self.send(Entry::Rejected(Rejected { position, reason }))
    }

    /// Hands on a finding, or its rejection at `position` (only formatted when needed).
    pub(crate) fn outcome(
        &mut self,
        position: impl FnOnce() -> String,
        outcome: Result<LeakFinding, String>,
    ) -> ControlFlow<()> {
        match outcome {
            Ok(finding) => self.finding(finding),
            Err(reason) => self.reject(position(), reason),
        }
    }
}

/// Collecting parsers for tests, whose inputs are small.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// Every entry of one report.
    #[derive(Debug, Default)]
    pub(crate) struct Parsed {
        /// Usable findings, in input order.
        pub(crate) findings: Vec<LeakFinding>,
        /// Unusable entries, in input order.
        pub(crate) rejected: Vec<Rejected>,
    }

    impl Parsed {
        fn push(&mut self, entry: Entry) -> ControlFlow<()> {
            match entry {
                Entry::Finding(f) => self.findings.push(f),
                Entry::Rejected(r) => self.rejected.push(r),
            }
            ControlFlow::Continue(())
        }
    }

    /// Parses `input` with one format's `parse` and collects its entries.
    pub(crate) fn collect(
        parse: impl FnOnce(&[u8], &mut Sink<'_>) -> Result<(), String>,
        input: &str,
    ) -> Result<Parsed, String> {
        let mut parsed = Parsed::default();
        let mut push = |entry| parsed.push(entry);
        let mut sink = Sink::new(&mut push);
        parse(input.as_bytes(), &mut sink)?;
        Ok(parsed)
    }

    /// [`super::parse`], collected.
    pub(crate) fn parse_all(format: Format, input: &[u8]) -> Result<Parsed, IngestError> {
        let mut parsed = Parsed::default();
        super::parse(format, input, |entry| parsed.push(entry))?;
        Ok(parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{Parsed, parse_all as parse};
    use super::*;

    /// Every fixture, with its format and the fake plaintext values it holds.
    const FIXTURES: [(Format, &[u8], &[&str]); 6] = [
        (
            Format::Gitleaks,
            include_bytes!("../../../tests/fixtures/ingest/gitleaks.json"),
            &[
                "FAKE-gitleaks-generic-0001-not-a-real-key",
                "FAKE-gitleaks-webhook-0002-not-a-real-url",
            ],
        ),
        (
            Format::Trufflehog,
            include_bytes!("../../../tests/fixtures/ingest/trufflehog.jsonl"),
            &[
                "FAKE-trufflehog-uri-0001",
                "FAKE-trufflehog-github-0002-not-a-real-token",
            ],
        ),
        (
            Format::DetectSecrets,
            include_bytes!("../../../tests/fixtures/ingest/detect-secrets.json"),
            &[],
        ),
        (
            Format::Github,
            include_bytes!("../../../tests/fixtures/ingest/github-webhook.json"),
            &["FAKE-github-adafruit-0001-not-a-real-key"],
        ),
        (
            Format::Github,
            include_bytes!("../../../tests/fixtures/ingest/github-alerts.json"),
            &["FAKE-github-mailchimp-0002-not-a-real-key"],
        ),
        (
            Format::Generic,
            include_bytes!("../../../tests/fixtures/ingest/generic.jsonl"),
            &["FAKE-generic-plaintext-0001"],
        ),
    ];

    /// A value that the hostile inputs below put everywhere a parser might echo from.
    const PLANTED: &str = "FAKE-planted-0000-must-never-be-printed";

    /// Inputs that go wrong in every way we know, each with `PLANTED` in it.
    fn hostile_inputs() -> Vec<(Format, Vec<u8>)> {
        let p = PLANTED;
        let inputs = vec![
            (Format::Gitleaks, format!(r#"{{"Secret":"{p}"}}"#)),
            (Format::Gitleaks, format!(r#"[{{"Secret":"{p}", "#)),
            (
                Format::Gitleaks,
                format!(r#"[{{"Secret":"{p}"}}] trailing {p}"#),
            ),
            (
                Format::Gitleaks,
                format!(r#"["{p}", {{"Secret":["{p}"]}}, {{"Secret":"{p}..."}}]"#),
            ),
            (
                Format::Gitleaks,
                format!(r#"[{{"Secret":"{p}","StartLine":"{p}","File":{{"x":"{p}"}}}}]"#),
            ),
            (Format::Gitleaks, p.to_owned()),
            (Format::Trufflehog, format!("{p}\n{{\"Raw\":\"{p}\"\n")),
            (
                Format::Trufflehog,
                format!(r#"{{"Raw":"{p}"}}"#) + "\n" + p + "\n[\"" + p + "\"]",
            ),
            (
                Format::Trufflehog,
                format!(r#"{{"Raw":{{"v":"{p}"}},"RawV2":"{p}"}}"#),
            ),
            (
                Format::DetectSecrets,
                format!(r#"{{"results":{{"a":[{{"hashed_secret":"{p}"}},"{p}"]}}}}"#),
            ),
            (Format::DetectSecrets, format!(r#"{{"results":"{p}"}}"#)),
            (Format::DetectSecrets, format!(r#"["{p}"]"#)),
            (
                Format::Github,
                format!(r#"{{"alert":{{"secret":["{p}"],"secret_type":"x"}}}}"#),
            ),
            (Format::Github, format!(r#"{{"alert":"{p}"}}"#)),
            (
                Format::Github,
                format!(r#"[{{"secret":"{p}"}}, "{p}", {{"note":"{p}"}}]"#),
            ),
            (Format::Github, format!(r#"{{"note":"{p}"}}"#)),
            (
                Format::Generic,
                format!(r#"{{"secret":"{p}","sha1":"{p}"}}"#),
            ),
            (Format::Generic, format!(r#"{{"sha256":"{p}"}}"#)),
            (
                Format::Generic,
                format!(r#"{{"secret":"{p}","line":"{p}","repo":1}}"#),
            ),
            (
                Format::Generic,
                format!(r#"{{"secret":"{p}","{p} and more words":"{p}"}}"#),
            ),
            (Format::Generic, format!(r#"{{"secret":"{p}"#)),
            (Format::Generic, format!("secret={p}")),
        ];
        let mut inputs: Vec<_> = inputs
            .into_iter()
            .map(|(format, text)| (format, text.into_bytes()))
            .collect();
        for format in Format::ALL {
            let mut not_utf8 = format!(r#"[{{"Secret":"{p}"}}]"#).into_bytes();
            not_utf8.insert(3, 0xFF);
            inputs.push((format, not_utf8));
        }
        inputs
    }

    /// Everything a parse result can show a person or a log.
    fn everything_printed(result: &Result<Parsed, IngestError>) -> String {
        match result {
            Ok(parsed) => format!("{parsed:?}"),
            Err(e) => format!("{e} {e:?}"),
        }
    }

    #[test]
    fn every_fixture_parses_into_findings() {
        for (format, input, _) in FIXTURES {
            let parsed = parse(format, input).unwrap_or_else(|e| panic!("{format}: {e}"));
            assert!(!parsed.findings.is_empty(), "{format}");
            if format != Format::Github {
                assert!(
                    parsed.rejected.is_empty(),
                    "{format}: {:?}",
                    parsed.rejected
                );
            }
        }
    }

    #[test]
    fn secret_never_appears_in_rejection_reasons() {
        for (format, input, secrets) in FIXTURES {
            let printed = everything_printed(&parse(format, input));
            for secret in secrets {
                assert!(!printed.contains(secret), "{format} printed a secret");
            }
        }
        for (format, input) in hostile_inputs() {
            let result = parse(format, &input);
            let printed = everything_printed(&result);
            // Any fragment long enough to identify the value counts as a leak.
            assert!(
                !printed.contains("planted"),
                "{format} printed a secret: {printed}"
            );
        }
    }

    #[test]
    fn empty_and_non_utf8_input_is_an_error_for_every_format() {
        for format in Format::ALL {
            let empty = parse(format, b" \n\r\n\t").expect_err("empty");
            assert_eq!(
                empty,
                IngestError {
                    format,
                    reason: "empty input".into()
                }
            );
            let binary = parse(format, b"\x1f\x8b\x08\x00\xff\xfe").expect_err("gzip");
            assert!(binary.reason.contains("not UTF-8"), "{binary}");
        }
    }

    #[test]
    fn errors_name_the_format_and_what_was_expected() {
        let err = parse(Format::Gitleaks, br#"{"findings": []}"#).expect_err("an object");
        assert_eq!(
            err.to_string(),
            "not a valid gitleaks report: expected a JSON array of findings \
             (gitleaks --report-format json), found an object"
        );
    }
}
