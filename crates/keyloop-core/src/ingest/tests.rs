//! Tests across formats: every fixture parses (named and read with `auto`), no value is ever
//! shown, empty input is a clean scan, and errors name the format a report looks like.

use super::testing::{Parsed, parse_all as parse};
use super::*;

/// Every fixture, with its format and the fake plaintext values it holds.
const FIXTURES: [(Format, &[u8], &[&str]); 12] = [
    (
        Format::Gitleaks,
        include_bytes!("../../../../tests/fixtures/ingest/gitleaks.json"),
        &[
            "FAKE-gitleaks-generic-0001-not-a-real-key",
            "FAKE-gitleaks-webhook-0002-not-a-real-url",
        ],
    ),
    (
        Format::Trufflehog,
        include_bytes!("../../../../tests/fixtures/ingest/trufflehog.jsonl"),
        &[
            "FAKE-trufflehog-uri-0001",
            "FAKE-trufflehog-github-0002-not-a-real-token",
        ],
    ),
    (
        Format::DetectSecrets,
        include_bytes!("../../../../tests/fixtures/ingest/detect-secrets.json"),
        &[],
    ),
    (
        Format::Github,
        include_bytes!("../../../../tests/fixtures/ingest/github-webhook.json"),
        &["FAKE-github-adafruit-0001-not-a-real-key"],
    ),
    (
        Format::Github,
        include_bytes!("../../../../tests/fixtures/ingest/github-alerts.json"),
        &["FAKE-github-mailchimp-0002-not-a-real-key"],
    ),
    (
        Format::Generic,
        include_bytes!("../../../../tests/fixtures/ingest/generic.jsonl"),
        &["FAKE-generic-plaintext-0001"],
    ),
    (
        Format::Betterleaks,
        include_bytes!("../../../../tests/fixtures/ingest/betterleaks.jsonl"),
        &["FAKE-betterleaks-0001-not-a-real-token"],
    ),
    (
        Format::Kingfisher,
        include_bytes!("../../../../tests/fixtures/ingest/kingfisher.json"),
        &[
            "FAKE-kingfisher-aws-0001-not-a-real-key",
            "FAKE-kingfisher-pg-0002",
        ],
    ),
    (
        Format::Kingfisher,
        include_bytes!("../../../../tests/fixtures/ingest/kingfisher.jsonl"),
        &[
            "FAKE-kingfisher-aws-0001-not-a-real-key",
            "FAKE-kingfisher-pg-0002",
        ],
    ),
    (
        Format::Secretlint,
        include_bytes!("../../../../tests/fixtures/ingest/secretlint.json"),
        &[
            "FAKE-secretlint-pg-0001",
            "FAKE-secretlint-0002-not-a-real-token",
        ],
    ),
    (
        Format::Sarif,
        include_bytes!("../../../../tests/fixtures/ingest/gitleaks.sarif"),
        &[
            "FAKE-gitleaks-sarif-0001-not-a-real-key",
            "FAKE-gitleaks-sarif-0002",
        ],
    ),
    (
        Format::Sarif,
        include_bytes!("../../../../tests/fixtures/ingest/kingfisher.sarif"),
        &[
            "FAKE-kingfisher-aws-0001-not-a-real-key",
            "FAKE-kingfisher-pg-0002",
        ],
    ),
];

/// secretlint's SARIF: a valid log that carries no value.
const SECRETLINT_SARIF: &[u8] =
    include_bytes!("../../../../tests/fixtures/ingest/secretlint.sarif");

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
        (
            Format::Kingfisher,
            format!(
                r#"{{"findings":[{{"rule":{{"id":"{p}"}},"finding":{{"snippet":["{p}"]}}}}, "{p}"]}}"#
            ),
        ),
        (Format::Kingfisher, format!(r#"{{"findings":"{p}"}}"#)),
        (
            Format::Kingfisher,
            format!(r#"{{"rule":{{}},"finding":{{"snippet":"{p}""#),
        ),
        (
            Format::Secretlint,
            format!(
                r#"[{{"filePath":"a","sourceContent":"{p}","messages":[{{"range":[0,99]}}, "{p}"]}}]"#
            ),
        ),
        (Format::Secretlint, format!(r#"{{"sourceContent":"{p}"}}"#)),
        (
            Format::Sarif,
            format!(
                r#"{{"runs":[{{"results":[{{"locations":[{{"physicalLocation":{{"region":{{"snippet":{{"text":["{p}"]}}}}}}}}]}}, "{p}"]}}, "{p}"]}}"#
            ),
        ),
        (Format::Sarif, format!(r#"{{"runs":"{p}"}}"#)),
        (
            Format::Betterleaks,
            format!("{{\"Secret\":[\"{p}\"]}}\n{p}\n"),
        ),
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
        for choice in [Choice::Named(format), Choice::Auto] {
            let result = parse(choice, &input);
            let printed = everything_printed(&result);
            // Any fragment long enough to identify the value counts as a leak.
            assert!(
                !printed.contains("planted"),
                "{format} printed a secret: {printed}"
            );
        }
    }
}

#[test]
fn empty_input_is_a_clean_scan_and_binary_an_error_for_every_format() {
    for format in Format::ALL {
        for empty in [&b""[..], b" \n\r\n\t", b"\xEF\xBB\xBF\n"] {
            let parsed = parse(format, empty).unwrap_or_else(|e| panic!("{format}: {e}"));
            assert!(parsed.findings.is_empty() && parsed.rejected.is_empty());
        }
        let binary = parse(format, b"\x1f\x8b\x08\x00\xff\xfe").expect_err("gzip");
        assert!(binary.reason.contains("not UTF-8"), "{format}: {binary}");
    }
    let mut chosen = Some(Format::Generic);
    let summary = parse_choosing(
        Choice::Auto,
        &b"  \n"[..],
        |f| chosen = f,
        |_| ControlFlow::Continue(()),
    )
    .expect("an empty report");
    assert_eq!((chosen, summary), (None, Summary::default()));
}

#[test]
fn errors_name_the_format_and_what_was_expected() {
    let err = parse(Format::Gitleaks, br#"[{"Secret": 1}] trailing"#).expect_err("trailing");
    assert_eq!(
        err.to_string(),
        "not a valid gitleaks report: not JSON (trailing characters at line 1 column 17); \
         expected a JSON array of findings (gitleaks --report-format json)"
    );
}

#[test]
fn auto_reads_every_fixture_as_its_format() {
    for (format, input, _) in FIXTURES {
        let mut chosen = None;
        let mut auto = Parsed::default();
        let summary = parse_choosing(
            Choice::Auto,
            input,
            |f| chosen = f,
            |entry| {
                if let Entry::Finding(f) = entry {
                    auto.findings.push(f);
                }
                ControlFlow::Continue(())
            },
        )
        .unwrap_or_else(|e| panic!("{format}: {e}"));
        // betterleaks writes gitleaks' shape: either name reads it.
        assert!(
            chosen.is_some_and(|c| c.reads(format)),
            "{format}: {chosen:?}"
        );
        assert_eq!(summary.format, chosen);
        let named = parse(format, input).expect("a report");
        assert_eq!(auto.findings.len(), named.findings.len(), "{format}");
    }
    let err = parse(Choice::Auto, &b"Found 3 secrets"[..]).expect_err("text");
    assert_eq!(err.format, None);
    assert!(
        err.to_string().starts_with(
            "not a report keyloop can read: cannot tell which tool wrote it (it is not JSON); \
             name its format"
        ),
        "{err}"
    );
}

#[test]
fn a_report_of_another_format_is_named_instead_of_advice_for_the_wrong_tool() {
    let kingfisher = FIXTURES[7].1;
    let err = parse(Format::Gitleaks, kingfisher).expect_err("an object");
    assert_eq!(
        err.to_string(),
        "not a valid gitleaks report: this looks like a kingfisher report (use `keyloop ingest \
         kingfisher`)"
    );
    let sarif = parse(Format::Secretlint, FIXTURES[10].1).expect_err("an object");
    assert!(
        sarif.reason.contains("looks like a sarif report"),
        "{sarif}"
    );
    // Lines of another tool: each rejected, and the summary names the tool.
    let mut summary = None;
    let trufflehog = include_bytes!("../../../../tests/fixtures/ingest/trufflehog.jsonl");
    let result = parse_choosing(
        Format::Generic,
        &trufflehog[..],
        |_| {},
        |_| ControlFlow::Continue(()),
    );
    if let Ok(s) = result {
        summary = Some(s);
    }
    let summary = summary.expect("lines are read");
    assert_eq!(summary.findings, 0);
    assert_eq!(summary.looks_like, Some(Format::Trufflehog));
    // gitleaks and betterleaks read each other's JSON.
    let gitleaks = include_bytes!("../../../../tests/fixtures/ingest/gitleaks.json");
    assert_eq!(
        parse(Format::Betterleaks, gitleaks)
            .expect("read")
            .findings
            .len(),
        2
    );
}

#[test]
fn secretlint_sarif_is_read_and_every_result_rejected_with_advice() {
    let parsed = parse(Format::Sarif, SECRETLINT_SARIF).expect("a log");
    assert!(parsed.findings.is_empty());
    assert!(
        parsed.rejected[0]
            .reason
            .contains("keyloop ingest secretlint")
    );
}
