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
//! A value that holds a URI or a connection string is handed on whole and, right after it,
//! each password in it as an [`Entry::Part`] of that finding (see `embedded.rs`): a managed
//! credential's value is the password, which a digest of the whole string never matches.
//!
//! [`Choice::Auto`] reads the format from the first bytes of the report (`detect.rs`); a named
//! format that does not fit is refused with the format the report looks like instead.
//!
//! One file per format (`gitleaks.rs`, `trufflehog.rs`, `kingfisher.rs`, `secretlint.rs`,
//! `sarif.rs`, `detect_secrets.rs`, `github.rs`, `generic.rs`), the JSON walkers they share in
//! `json/`, where entries go in `sink.rs`.
//!
//! [`Fingerprint`]: crate::Fingerprint

mod detect;
mod detect_secrets;
mod embedded;
mod generic;
mod github;
mod gitleaks;
mod json;

/// The JSON type of a value, with an article (`a number`, `an object`), for "expected …,
/// found …" messages that never quote the value itself.
pub use json::fields::kind as json_kind;
mod kingfisher;
mod repeats;
mod sarif;
mod secretlint;
mod sink;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
mod trufflehog;

pub use embedded::Embedded;
pub use repeats::Repeats;

use crate::leak::LeakFinding;
use detect::{Looks, Prefix};
use sink::Sink;
use std::fmt;
use std::io::Read;
use std::ops::ControlFlow;
use std::str::FromStr;

/// A report format that `keyloop ingest` understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// gitleaks JSON report (`gitleaks detect --report-format json`): an array of findings.
    Gitleaks,
    /// betterleaks JSON (gitleaks' shape) or JSON lines (`--report-format jsonl`).
    Betterleaks,
    /// TruffleHog v3 `--json`: one JSON object per line.
    Trufflehog,
    /// Kingfisher `--format json` (one report object per line) or `--format jsonl`.
    Kingfisher,
    /// secretlint `--format json`: an array of file results.
    Secretlint,
    /// SARIF 2.1.0 (gitleaks, betterleaks and Kingfisher `--format sarif`).
    Sarif,
    /// detect-secrets baseline JSON; carries only `hashed_secret` (SHA-1 hex).
    DetectSecrets,
    /// GitHub `secret_scanning_alert` webhook payload.
    Github,
    /// JSON lines with one of `secret`, `sha256`, `sha1`, plus optional location fields.
    Generic,
}

impl Format {
    /// Every format, in the order the CLI lists them.
    pub const ALL: [Format; 9] = [
        Self::Gitleaks,
        Self::Betterleaks,
        Self::Trufflehog,
        Self::Kingfisher,
        Self::Secretlint,
        Self::Sarif,
        Self::DetectSecrets,
        Self::Github,
        Self::Generic,
    ];

    /// The name used on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Gitleaks => "gitleaks",
            Self::Betterleaks => "betterleaks",
            Self::Trufflehog => "trufflehog",
            Self::Kingfisher => "kingfisher",
            Self::Secretlint => "secretlint",
            Self::Sarif => "sarif",
            Self::DetectSecrets => "detect-secrets",
            Self::Github => "github",
            Self::Generic => "generic",
        }
    }

    /// Whether a report that looks like `other` is one this format reads (betterleaks writes
    /// gitleaks' JSON).
    fn reads(self, other: Format) -> bool {
        self == other
            || matches!(
                (self, other),
                (Self::Gitleaks, Self::Betterleaks) | (Self::Betterleaks, Self::Gitleaks)
            )
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

/// The format to read a report as: named, or read from the report itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// Read the format from the first bytes of the report.
    Auto,
    /// This format.
    Named(Format),
}

impl Choice {
    /// `auto` and every format, in the order the CLI lists them.
    pub const ALL: [Choice; 10] = [
        Self::Auto,
        Self::Named(Format::Gitleaks),
        Self::Named(Format::Betterleaks),
        Self::Named(Format::Trufflehog),
        Self::Named(Format::Kingfisher),
        Self::Named(Format::Secretlint),
        Self::Named(Format::Sarif),
        Self::Named(Format::DetectSecrets),
        Self::Named(Format::Github),
        Self::Named(Format::Generic),
    ];

    /// The name used on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Named(format) => format.name(),
        }
    }
}

impl From<Format> for Choice {
    fn from(format: Format) -> Self {
        Self::Named(format)
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

/// What a [`Part`] is of the finding before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartOf {
    /// The password of a URI in the value.
    UriPassword,
    /// The password of a connection string in the value.
    ConnectionPassword,
    /// Another value the detector reported with the finding (TruffleHog's `RawV2`,
    /// `SecretParts`).
    Companion,
}

impl PartOf {
    /// What the part is, in words.
    pub const fn describe(self) -> &'static str {
        match self {
            Self::UriPassword => Embedded::UriPassword.describe(),
            Self::ConnectionPassword => Embedded::ConnectionPassword.describe(),
            Self::Companion => "another value reported with it",
        }
    }
}

/// A credential inside the value of the finding handed on just before it, with the same
/// detector and location: published as a leak of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// The leak of the part.
    pub finding: LeakFinding,
    /// What it is.
    pub of: PartOf,
}

/// One entry of a report, handed on as the parser reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A usable finding.
    Finding(LeakFinding),
    /// A credential inside the finding handed on just before.
    Part(Part),
    /// An unusable entry, and why.
    Rejected(Rejected),
}

/// What a parse went through. The entries themselves went to the callback.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// The format the report was read as; `None` for an empty report read with
    /// [`Choice::Auto`].
    pub format: Option<Format>,
    /// Findings handed on.
    pub findings: u64,
    /// Parts handed on (beside their findings).
    pub parts: u64,
    /// Rejections handed on.
    pub rejected: u64,
    /// The callback asked to stop before the end of the report.
    pub stopped: bool,
    /// Every entry of a report of a named format was rejected, and the report looks like
    /// this other format.
    pub looks_like: Option<Format>,
}

/// The whole input is not a report of the named format (or, with [`Choice::Auto`], of any).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{}: {reason}", match format {
    Some(format) => format!("not a valid {format} report"),
    None => "not a report keyloop can read".to_owned(),
})]
pub struct IngestError {
    /// The format that was expected; `None` when none could be told from the input.
    pub format: Option<Format>,
    /// What is wrong, without any secret value.
    pub reason: String,
}

/// Parses a report read from `input`, handing each entry to `on_entry` as soon as it is
/// reached, in input order; `on_entry` returns [`ControlFlow::Break`] to stop early (then
/// [`Summary::stopped`] is set). Entries that are individually unusable are
/// [`Entry::Rejected`]; an input that is not a report of the format at all is an error. An
/// empty input (or only white space) is a report without findings, for every format.
///
/// Because entries are handed on as they come, a document that turns out to be malformed
/// further down (truncated, trailing text) has had its earlier entries handed on before the
/// error: they are findings all the same. The error says where the document broke.
///
/// Plaintext values are hashed as they are read and held only in a [`crate::Secret`] until
/// then; no rejection reason or error quotes the input.
pub fn parse(
    choice: impl Into<Choice>,
    input: impl Read,
    on_entry: impl FnMut(Entry) -> ControlFlow<()>,
) -> Result<Summary, IngestError> {
    parse_choosing(choice, input, |_| {}, on_entry)
}

/// [`parse`], telling `on_format` which format the report is read as before the first entry
/// (`None`: an empty report with [`Choice::Auto`]). With [`Choice::Auto`] the first bytes of
/// the input are read until they tell the format (a key of the first object, most often in
/// the first line).
pub fn parse_choosing(
    choice: impl Into<Choice>,
    input: impl Read,
    on_format: impl FnOnce(Option<Format>),
    mut on_entry: impl FnMut(Entry) -> ControlFlow<()>,
) -> Result<Summary, IngestError> {
    let choice = choice.into();
    let wrap = |format, reason| IngestError { format, reason };
    let (format, input) = match choice {
        Choice::Named(format) => (format, Prefix::recording(input)),
        Choice::Auto => {
            let input = Prefix::sniffing(input).map_err(|reason| wrap(None, reason))?;
            match input.looks() {
                Looks::Like(format) => (format, input),
                Looks::Empty => {
                    on_format(None);
                    return Ok(Summary::default());
                }
                Looks::Unknown(what) => return Err(wrap(None, unknown(what))),
            }
        }
    };
    on_format(Some(format));
    let mut sink = Sink::new(&mut on_entry);
    let mut input = input;
    let result = parse_format(format, &mut input, &mut sink);
    let looks_like = match input.looks() {
        Looks::Like(other) if !format.reads(other) => Some(other),
        _ => None,
    };
    if let Err(reason) = result {
        let reason = match looks_like {
            Some(other) => advice(other),
            None => reason,
        };
        return Err(wrap(Some(format), reason));
    }
    Ok(Summary {
        format: Some(format),
        findings: sink.findings,
        parts: sink.parts,
        rejected: sink.rejected,
        stopped: sink.stopped,
        looks_like: looks_like.filter(|_| sink.findings == 0 && sink.rejected > 0),
    })
}

fn parse_format(format: Format, input: impl Read, sink: &mut Sink<'_>) -> Result<(), String> {
    match format {
        Format::Gitleaks => gitleaks::parse(input, sink, "gitleaks"),
        Format::Betterleaks => gitleaks::parse(input, sink, "betterleaks"),
        Format::Trufflehog => trufflehog::parse(input, sink),
        Format::Kingfisher => kingfisher::parse(input, sink),
        Format::Secretlint => secretlint::parse(input, sink),
        Format::Sarif => sarif::parse(input, sink),
        Format::DetectSecrets => detect_secrets::parse(input, sink),
        Format::Github => github::parse(input, sink),
        Format::Generic => generic::parse(input, sink),
    }
}

/// The words for a report of a named format that looks like `other`.
fn advice(other: Format) -> String {
    format!("this looks like a {other} report (use `keyloop ingest {other}`)")
}

/// The words for a report whose format cannot be told, which looks like `what`.
fn unknown(what: &str) -> String {
    let names: Vec<_> = Format::ALL.iter().map(|f| f.name()).collect();
    format!(
        "cannot tell which tool wrote it ({what}); name its format: `keyloop ingest FORMAT` \
         with one of {}",
        names.join(", ")
    )
}
