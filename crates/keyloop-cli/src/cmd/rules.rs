//! `keyloop rules TOOL`: ready-to-use rules that make a secret scanner find keyloop's own
//! values — the `checksummed` format (`klc_` + 30 base62 + CRC32) and the original `hex` one
//! (`kl_` + 64 hex) — so its report can go to `keyloop ingest`. Generic detectors miss both
//! (detect-secrets' hex plugin skips them, secretlint has no rule, trufflehog strips the prefix).
//!
//! Every regex comes from [`ValueFormat::pattern`] with word boundaries, in the subset RE2
//! (gitleaks), Hyperscan (GitHub, Kingfisher), Rust, Python and JavaScript share. Where the tool
//! can compute a CRC32 (Kingfisher's checksum requirement, a detect-secrets plugin in Python)
//! the rule also checks the checksum, so a lookalike is not reported; elsewhere the prefix and
//! shape do the work, and `keyloop ingest` matches only values keyloop knows anyway.
//!
//! The examples in the rules are built from fixed bodies ([`checksummed_with_body`]), so they
//! are never a credential's value.

use crate::output;
use anyhow::Result;
use keyloop_core::ValueFormat;
use keyloop_core::value_format::checksummed_with_body;
use serde::Serialize;
use std::io::IsTerminal;
use std::process::ExitCode;

/// A scanner keyloop writes rules for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tool {
    /// gitleaks: a TOML config extending the default rules.
    Gitleaks,
    /// Kingfisher (MongoDB): a YAML rules file, with the CRC32 checked.
    Kingfisher,
    /// secretlint: a `.secretlintrc.json` using `@secretlint/secretlint-rule-pattern`.
    Secretlint,
    /// detect-secrets (Yelp): a plugin (Python file), with the CRC32 checked.
    DetectSecrets,
    /// GitHub secret scanning: the fields of a custom pattern.
    GithubPattern,
}

impl Tool {
    /// Every tool, in the order `--help` lists them.
    pub(crate) const ALL: [Tool; 5] = [
        Self::Gitleaks,
        Self::Kingfisher,
        Self::Secretlint,
        Self::DetectSecrets,
        Self::GithubPattern,
    ];

    /// The tool's name on the command line.
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Self::Gitleaks => "gitleaks",
            Self::Kingfisher => "kingfisher",
            Self::Secretlint => "secretlint",
            Self::DetectSecrets => "detect-secrets",
            Self::GithubPattern => "github-pattern",
        }
    }
}

/// What `keyloop rules TOOL --json` prints: the file and how to use it.
#[derive(Debug, Serialize)]
pub(crate) struct Rules {
    /// The tool.
    pub(crate) tool: &'static str,
    /// A file name for `content`.
    pub(crate) file: &'static str,
    /// How to run the tool with it, and how to feed its report to keyloop.
    pub(crate) usage: String,
    /// One entry per value format.
    pub(crate) rules: Vec<FormatRule>,
    /// The file itself (for `github-pattern`, the form's fields as text).
    pub(crate) content: String,
}

/// The rule for one value format.
#[derive(Debug, Serialize)]
pub(crate) struct FormatRule {
    /// `checksummed` or `hex`.
    pub(crate) format: &'static str,
    /// The regex as the tool gets it (GitHub: the secret format, without before/after).
    pub(crate) regex: String,
    /// Whether the tool itself checks the CRC32 (only `checksummed` has one).
    pub(crate) checks_checksum: bool,
}

pub(crate) fn run(json: bool, tool: Tool) -> Result<ExitCode> {
    let rules = rules(tool);
    if json {
        output::json_line(&rules)?;
    } else {
        output::text(&rules.content)?;
        if std::io::stderr().is_terminal() {
            eprintln!("# save as {}; {}", rules.file, rules.usage);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The rules for `tool`.
pub(crate) fn rules(tool: Tool) -> Rules {
    let checksummed = bounded(ValueFormat::Checksummed);
    let hex = bounded(ValueFormat::Hex);
    let rule = |format: ValueFormat, regex: String, checks_checksum| FormatRule {
        format: format.name(),
        regex,
        checks_checksum,
    };
    match tool {
        Tool::Gitleaks => Rules {
            tool: tool.name(),
            file: "keyloop.gitleaks.toml",
            usage: "gitleaks detect --config keyloop.gitleaks.toml --report-format json --report-path leaks.json; keyloop ingest gitleaks leaks.json".into(),
            rules: vec![
                rule(ValueFormat::Checksummed, checksummed.clone(), false),
                rule(ValueFormat::Hex, hex.clone(), false),
            ],
            content: gitleaks(&checksummed, &hex),
        },
        Tool::Kingfisher => {
            let checksummed = kingfisher_checksummed();
            Rules {
                tool: tool.name(),
                file: "keyloop.kingfisher.yaml",
                usage: "kingfisher scan --rules-path keyloop.kingfisher.yaml --no-validate --format json PATH (convert its findings to `keyloop ingest generic` lines: {\"secret\", \"file\", \"line\"})".into(),
                content: kingfisher(&checksummed, &hex),
                rules: vec![
                    rule(ValueFormat::Checksummed, checksummed, true),
                    rule(ValueFormat::Hex, hex, false),
                ],
            }
        }
        Tool::Secretlint => Rules {
            tool: tool.name(),
            file: ".secretlintrc.json",
            usage: "npm install secretlint @secretlint/secretlint-rule-pattern; npx secretlint --secretlintrc .secretlintrc.json --format json \"**/*\" (each message's range locates the value)".into(),
            rules: vec![
                rule(ValueFormat::Checksummed, format!("/{checksummed}/"), false),
                rule(ValueFormat::Hex, format!("/{hex}/"), false),
            ],
            content: secretlint(&checksummed, &hex),
        },
        Tool::DetectSecrets => Rules {
            tool: tool.name(),
            file: "keyloop_detector.py",
            usage: "detect-secrets scan --plugin keyloop_detector.py > .secrets.baseline; keyloop ingest detect-secrets .secrets.baseline".into(),
            rules: vec![
                rule(ValueFormat::Checksummed, checksummed.clone(), true),
                rule(ValueFormat::Hex, hex.clone(), false),
            ],
            content: detect_secrets(&checksummed, &hex),
        },
        Tool::GithubPattern => Rules {
            tool: tool.name(),
            file: "keyloop.github-pattern.txt",
            usage: "Settings → Advanced Security → Custom patterns → New pattern (More options): one pattern per block; alerts export to `keyloop ingest github`".into(),
            rules: vec![
                rule(ValueFormat::Checksummed, ValueFormat::Checksummed.pattern().into(), false),
                rule(ValueFormat::Hex, ValueFormat::Hex.pattern().into(), false),
            ],
            content: github_pattern(),
        },
    }
}

/// The whole value as the scanner's one capture group, between word boundaries.
fn bounded(format: ValueFormat) -> String {
    format!(r"\b({})\b", format.pattern())
}

/// Kingfisher's form of the checksummed rule: the body and checksum captured by name, so its
/// `checksum` requirement can compare them (`{{ body | crc32 | base62: 6 }}`).
fn kingfisher_checksummed() -> String {
    r"\b(klc_(?P<body>[0-9A-Za-z]{30})(?P<checksum>[0-9A-Za-z]{6}))\b".into()
}

/// A checksummed example value (fixed body: no credential's value).
pub(crate) fn example_checksummed() -> String {
    checksummed_with_body("0EXAMPLE1keyloop2value3format4").expect("30 base62 characters")
}

/// The same example with its last character changed: a lookalike with a wrong checksum.
pub(crate) fn example_lookalike() -> String {
    let mut bad = example_checksummed();
    let last = bad.pop().expect("not empty");
    bad.push(if last == 'x' { 'y' } else { 'x' });
    bad
}

/// A hex example value (fixed: no credential's value; the SHA-256 of "keyloop rules
/// example", since Kingfisher drops obvious sequences like `0123456789abcdef` as placeholders).
pub(crate) fn example_hex() -> String {
    "kl_6b25502ed5014e65f1333bf0ef282b9779cc8a9328bacffccbe3ff3d9e470790".into()
}

fn gitleaks(checksummed: &str, hex: &str) -> String {
    format!(
        r#"# keyloop-generated credential values, for gitleaks (`keyloop rules gitleaks`).
# Use: gitleaks detect --config keyloop.gitleaks.toml --report-format json --report-path leaks.json
# then: keyloop ingest gitleaks leaks.json
# [extend] keeps gitleaks' default rules. gitleaks cannot check the CRC32 of a klc_ value;
# keyloop ingest only acts on values keyloop knows.
title = "keyloop"

[extend]
useDefault = true

[[rules]]
id = "keyloop-value-checksummed"
description = "keyloop credential value (klc_ + 30 base62 + CRC32)"
regex = '''{checksummed}'''
secretGroup = 1
entropy = 3.5
keywords = ["klc_"]
tags = ["keyloop", "checksummed"]

[[rules]]
id = "keyloop-value-hex"
description = "keyloop credential value (kl_ + 64 hex, the original format)"
regex = '''{hex}'''
secretGroup = 1
entropy = 3.0
keywords = ["kl_"]
tags = ["keyloop", "hex"]
"#
    )
}

fn kingfisher(checksummed: &str, hex: &str) -> String {
    let (example, lookalike, hex_example) =
        (example_checksummed(), example_lookalike(), example_hex());
    format!(
        r#"# keyloop-generated credential values, for Kingfisher (`keyloop rules kingfisher`).
# Use: kingfisher scan --rules-path keyloop.kingfisher.yaml --no-validate --format json PATH
# Check: kingfisher rules check --rules-path keyloop.kingfisher.yaml
# The checksummed rule reports a klc_ value only when its CRC32 checksum holds.
rules:
  - name: keyloop credential value (checksummed)
    id: keyloop.value.1
    pattern: '{checksummed}'
    pattern_requirements:
      checksum:
        actual:
          template: '{{{{ checksum }}}}'
          requires_capture: checksum
        expected: '{{{{ body | crc32 | base62: 6 }}}}'
    min_entropy: 3.5
    confidence: high
    examples:
      - 'KEYLOOP_VALUE={example}'
    negative_examples:
      - 'KEYLOOP_VALUE={lookalike}'
    references:
      - https://github.blog/2021-04-05-behind-githubs-new-authentication-token-formats/
  - name: keyloop credential value (hex)
    id: keyloop.value.2
    pattern: '{hex}'
    min_entropy: 3.0
    confidence: medium
    examples:
      - 'KEYLOOP_VALUE={hex_example}'
"#
    )
}

fn secretlint(checksummed: &str, hex: &str) -> String {
    let config = serde_json::json!({
        "rules": [{
            "id": "@secretlint/secretlint-rule-pattern",
            "options": {
                "patterns": [
                    {
                        "name": "keyloop credential value (checksummed)",
                        "patterns": [format!("/{checksummed}/")],
                    },
                    {
                        "name": "keyloop credential value (hex)",
                        "patterns": [format!("/{hex}/")],
                    },
                ],
            },
        }],
    });
    let mut text = serde_json::to_string_pretty(&config).expect("JSON serializes");
    text.push('\n');
    text
}

fn detect_secrets(checksummed: &str, hex: &str) -> String {
    format!(
        r#""""keyloop-generated credential values, for detect-secrets (`keyloop rules detect-secrets`).

Use: detect-secrets scan --plugin keyloop_detector.py > .secrets.baseline
then: keyloop ingest detect-secrets .secrets.baseline
A klc_ value is reported only when its CRC32 checksum holds; kl_ + 64 hex values (the
original format) have none to check.
"""
import re
import zlib

from detect_secrets.plugins.base import RegexBasedDetector

_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def keyloop_checksum(body):
    """The CRC32 of `body` as 6 base62 digits, most significant first, 0-padded."""
    n = zlib.crc32(body.encode("ascii"))
    digits = ""
    for _ in range(6):
        n, r = divmod(n, 62)
        digits = _BASE62[r] + digits
    return digits


def is_valid_checksum(value):
    """Whether `value` is klc_, 30 base62 characters and their 6-character checksum."""
    if not re.fullmatch(r"klc_[0-9A-Za-z]{{36}}", value):
        return False
    return keyloop_checksum(value[4:34]) == value[34:]


class KeyloopValueDetector(RegexBasedDetector):
    """keyloop-generated credential values (klc_ checksummed, kl_ hex)."""

    secret_type = "keyloop credential value"
    denylist = [
        re.compile(r"{checksummed}"),
        re.compile(r"{hex}"),
    ]

    def analyze_string(self, string):
        for match in super().analyze_string(string):
            if match.startswith("klc_") and not is_valid_checksum(match):
                continue
            yield match
"#
    )
}

fn github_pattern() -> String {
    let block = |name: &str, format: ValueFormat, test: &str| {
        format!(
            "Custom pattern name: {name}\nSecret format: {}\nBefore secret: \\A|[^0-9A-Za-z]\nAfter secret: \\z|[^0-9A-Za-z]\nTest string: KEYLOOP_VALUE={test}\n",
            format.pattern()
        )
    };
    format!(
        "# keyloop-generated credential values, for GitHub secret scanning (`keyloop rules github-pattern`).\n\
         # Settings → Advanced Security → Custom patterns → New pattern, under More options; one\n\
         # pattern per block. Export the alerts (REST API: secret-scanning/alerts) and feed them to\n\
         # `keyloop ingest github`. GitHub cannot check the CRC32; keyloop ingest only acts on\n\
         # values keyloop knows.\n\n{}\n{}",
        block(
            "keyloop credential value (checksummed)",
            ValueFormat::Checksummed,
            &example_checksummed()
        ),
        block(
            "keyloop credential value (hex)",
            ValueFormat::Hex,
            &example_hex()
        ),
    )
}

#[cfg(test)]
mod tests;
