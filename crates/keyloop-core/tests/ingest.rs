//! Property tests over every ingest format (`keyloop_core::ingest::parse`): arbitrary bytes and
//! structure-aware reports (the format's shape with values of any type, fields missing or
//! extra, huge numbers, odd unicode, damaged text) never panic; an input that is not a report
//! is an error that says why; every rejected entry has a position and a reason; and a secret
//! planted in the report's value fields, ignored fields, keys or wrong-typed places never
//! appears in anything `parse` hands on or returns. Valid reports give one finding per entry,
//! with the digests of its value. Case counts are the constants below.
//!
//! Then the streaming promise, for every format: a report far larger than the parser's buffer,
//! made up as it is read, has each finding handed on before much more than that finding has
//! been read, and a callback can stop the parse early.

#[path = "../../../tests/support/arbitrary_json.rs"]
mod arbitrary_json;

use arbitrary_json::{
    Json, Planted, boolean, damage, exact_object, free_text, label, lines, mostly, object, one_of,
    planted, text, unsigned, value, value_keyed,
};
use keyloop_core::ingest::{Entry, Format, IngestError, Rejected, Summary, parse};
use keyloop_core::{Fingerprint, LeakFinding};
use proptest::prelude::*;
use std::cell::Cell;
use std::io::Read;
use std::ops::ControlFlow;
use std::rc::Rc;

/// Cases of arbitrary bytes, per format.
const BYTES_CASES: u32 = 1024;
/// Cases of structure-aware reports (intact or damaged), per format.
const SHAPED_CASES: u32 = 2048;
/// Cases of valid reports, per format.
const VALID_CASES: u32 = 256;

/// The entries of one report, collected (the inputs of the properties are small).
#[derive(Debug, Default)]
struct Parsed {
    findings: Vec<LeakFinding>,
    parts: Vec<LeakFinding>,
    rejected: Vec<Rejected>,
}

/// Parses `input` and collects what is handed on, whatever the outcome.
fn collect(format: Format, input: &[u8]) -> (Parsed, Result<Summary, IngestError>) {
    let mut parsed = Parsed::default();
    let result = parse(format, input, |entry| {
        match entry {
            Entry::Finding(f) => parsed.findings.push(f),
            Entry::Part(p) => parsed.parts.push(p.finding),
            Entry::Rejected(r) => parsed.rejected.push(r),
        }
        ControlFlow::Continue(())
    });
    (parsed, result)
}

/// Parses `input`: whatever the outcome, it says why where it refuses, and shows no planted
/// secret anywhere, neither in the entries handed on (before an error too) nor in the error.
fn check(format: Format, input: &[u8], planted: &Planted) -> Option<Parsed> {
    let (parsed, result) = collect(format, input);
    for rejected in &parsed.rejected {
        assert!(!rejected.position.is_empty() && !rejected.reason.trim().is_empty());
    }
    let shown = format!("{parsed:?}");
    assert!(!planted.is_in(&shown), "{format} shows the secret: {shown}");
    match result {
        Err(e) => {
            assert_eq!(e.format, Some(format));
            assert!(!e.reason.trim().is_empty(), "an error says why");
            let shown = format!("{e} {e:?}");
            assert!(!planted.is_in(&shown), "{format} shows the secret: {shown}");
            None
        }
        Ok(summary) => {
            assert_eq!(summary.findings, parsed.findings.len() as u64);
            assert_eq!(summary.parts, parsed.parts.len() as u64);
            assert_eq!(summary.rejected, parsed.rejected.len() as u64);
            Some(parsed)
        }
    }
}

/// Arbitrary bytes with the planted secret spliced in somewhere.
fn spliced(mut bytes: Vec<u8>, at: prop::sample::Index, planted: &Planted) -> Vec<u8> {
    let at = at.index(bytes.len() + 1);
    bytes.splice(at..at, planted.value.bytes());
    bytes
}

/// Where a value sits: mostly the planted secret, sometimes any value.
fn secret_field() -> BoxedStrategy<Json> {
    prop_oneof![
        6 => Just(Json::Planted),
        1 => Just(Json::Str("REDACTED".into())),
        1 => Just(Json::Str("   ".into())),
        2 => value(),
    ]
    .boxed()
}

/// A location or name field: a label mostly, else a value of another type (which parsers skip:
/// a location is optional). Never the planted secret as the string itself, since locations are
/// passed on by design.
fn place() -> BoxedStrategy<Json> {
    prop_oneof![
        12 => label(),
        1 => value().prop_filter("a location is not the secret", |v| {
            !matches!(v, Json::Planted)
        }),
    ]
    .boxed()
}

fn line_number() -> BoxedStrategy<Json> {
    prop_oneof![
        4 => unsigned(),
        1 => text("[0-9]{1,25}"),
        1 => text("-?[0-9]{1,4}(\\.[0-9])?"),
    ]
    .boxed()
}

fn gitleaks_finding() -> BoxedStrategy<Json> {
    object(vec![
        ("Description", place()),
        ("StartLine", mostly(line_number())),
        ("EndLine", mostly(line_number())),
        ("Match", free_text()),
        ("Secret", secret_field()),
        ("File", place()),
        ("Commit", place()),
        ("Link", place()),
        ("Entropy", mostly(arbitrary_json::number())),
        ("Author", free_text()),
        ("Message", free_text()),
        (
            "Tags",
            mostly(Just(Json::Array(vec![Json::Planted])).boxed()),
        ),
        ("RuleID", place()),
        ("Fingerprint", free_text()),
    ])
}

fn gitleaks_report() -> BoxedStrategy<Json> {
    prop_oneof![
        8 => proptest::collection::vec(
            prop_oneof![8 => gitleaks_finding(), 1 => value()],
            0..5,
        )
        .prop_map(Json::Array),
        1 => Just(Json::Raw("null".into())),
        1 => value(),
    ]
    .boxed()
}

fn trufflehog_finding() -> BoxedStrategy<Json> {
    let source = object(vec![
        ("repository", place()),
        ("file", place()),
        ("line", mostly(line_number())),
        ("commit", place()),
        ("link", place()),
        ("email", free_text()),
    ]);
    let data = exact_object(vec![(
        "Git",
        prop_oneof![6 => source, 1 => value()].boxed(),
    )]);
    object(vec![
        (
            "SourceMetadata",
            mostly(exact_object(vec![("Data", mostly(data))])),
        ),
        ("SourceType", mostly(unsigned())),
        ("DetectorType", mostly(unsigned())),
        ("DetectorName", place()),
        ("Verified", mostly(boolean())),
        ("Raw", secret_field()),
        ("RawV2", free_text()),
        ("Redacted", free_text()),
        ("ExtraData", value()),
    ])
}

fn trufflehog_log_line() -> BoxedStrategy<Json> {
    object(vec![
        ("level", mostly(one_of(&["info-0", "error"]))),
        ("msg", free_text()),
        ("error", free_text()),
    ])
}

fn trufflehog_report() -> BoxedStrategy<Json> {
    lines(prop_oneof![6 => trufflehog_finding(), 1 => trufflehog_log_line(), 1 => value()].boxed())
}

fn detect_secrets_entry() -> BoxedStrategy<Json> {
    object(vec![
        ("type", place()),
        ("filename", place()),
        (
            "hashed_secret",
            prop_oneof![
                4 => text("[0-9a-fA-F]{40}"),
                2 => Just(Json::Planted),
                1 => value(),
            ]
            .boxed(),
        ),
        ("is_verified", mostly(boolean())),
        ("line_number", mostly(line_number())),
    ])
}

fn detect_secrets_report() -> BoxedStrategy<Json> {
    // `results` keys are file names, which positions quote: they never hold the secret.
    let files = proptest::collection::vec(
        (
            label(),
            prop_oneof![
                6 => proptest::collection::vec(
                    prop_oneof![8 => detect_secrets_entry(), 1 => value()],
                    0..4,
                )
                .prop_map(Json::Array),
                1 => value(),
            ],
        ),
        0..4,
    )
    .prop_map(Json::Object)
    .boxed();
    prop_oneof![
        8 => object(vec![
            ("version", place()),
            ("plugins_used", value()),
            ("filters_used", value()),
            ("results", prop_oneof![8 => files, 1 => value_keyed(label())].boxed()),
            ("generated_at", free_text()),
        ]),
        1 => value(),
    ]
    .boxed()
}

fn github_alert() -> BoxedStrategy<Json> {
    let location = object(vec![
        ("path", place()),
        ("start_line", mostly(line_number())),
        ("commit_sha", place()),
        ("blob_url", free_text()),
    ]);
    object(vec![
        ("number", mostly(unsigned())),
        ("state", place()),
        ("secret_type", place()),
        ("secret_type_display_name", place()),
        ("secret", secret_field()),
        ("html_url", place()),
        ("first_location_detected", mostly(location.clone())),
        (
            "locations",
            mostly(
                proptest::collection::vec(exact_object(vec![("details", location)]), 0..3)
                    .prop_map(Json::Array)
                    .boxed(),
            ),
        ),
        ("resolution_comment", free_text()),
    ])
}

fn github_payload() -> BoxedStrategy<Json> {
    object(vec![
        ("action", place()),
        ("alert", mostly(github_alert())),
        ("repository", mostly(object(vec![("full_name", place())]))),
        ("sender", value()),
    ])
}

fn github_report() -> BoxedStrategy<Json> {
    let one = prop_oneof![3 => github_payload(), 2 => github_alert(), 1 => value()];
    prop_oneof![
        4 => one.clone(),
        4 => proptest::collection::vec(one, 0..4).prop_map(Json::Array),
        1 => value(),
    ]
    .boxed()
}

fn generic_line() -> BoxedStrategy<Json> {
    object(vec![
        ("secret", secret_field()),
        (
            "sha256",
            prop_oneof![4 => text("[0-9a-fA-F]{64}"), 1 => Just(Json::Planted), 1 => value()]
                .boxed(),
        ),
        (
            "sha1",
            prop_oneof![4 => text("[0-9a-fA-F]{40}"), 1 => Just(Json::Planted), 1 => value()]
                .boxed(),
        ),
        ("repo", place()),
        ("file", place()),
        ("line", mostly(line_number())),
        ("commit", place()),
        ("url", place()),
        ("detector", place()),
    ])
}

fn betterleaks_report() -> BoxedStrategy<Json> {
    prop_oneof![
        3 => gitleaks_report(),
        2 => lines(prop_oneof![8 => gitleaks_finding(), 1 => value()].boxed()),
    ]
    .boxed()
}

fn kingfisher_record() -> BoxedStrategy<Json> {
    let git = object(vec![
        ("repository_url", place()),
        (
            "commit",
            mostly(object(vec![
                ("id", place()),
                ("url", place()),
                ("date", place()),
            ])),
        ),
        (
            "file",
            mostly(object(vec![
                ("path", place()),
                ("url", place()),
                ("git_command", place()),
            ])),
        ),
    ]);
    let finding = object(vec![
        ("snippet", secret_field()),
        ("fingerprint", free_text()),
        ("confidence", place()),
        ("entropy", free_text()),
        (
            "validation",
            mostly(object(vec![("status", place()), ("response", free_text())])),
        ),
        ("language", place()),
        ("line", mostly(line_number())),
        ("column_start", mostly(unsigned())),
        ("path", place()),
        ("git_metadata", mostly(git)),
    ]);
    object(vec![
        (
            "rule",
            mostly(object(vec![("name", place()), ("id", place())])),
        ),
        ("finding", mostly(finding)),
    ])
}

fn kingfisher_report() -> BoxedStrategy<Json> {
    let records = || {
        proptest::collection::vec(prop_oneof![8 => kingfisher_record(), 1 => value()], 0..4)
            .prop_map(Json::Array)
            .boxed()
    };
    let report = object(vec![
        ("findings", mostly(records())),
        ("access_map", value()),
        ("metadata", value()),
    ]);
    prop_oneof![
        4 => lines(report),
        3 => lines(prop_oneof![6 => kingfisher_record(), 1 => exact_object(vec![("audit", value())])].boxed()),
        2 => records(),
        1 => value(),
    ]
    .boxed()
}

fn secretlint_message() -> BoxedStrategy<Json> {
    let offset = || {
        prop_oneof![4 => (0u64..80).prop_map(|n| Json::Raw(n.to_string())), 1 => value()].boxed()
    };
    object(vec![
        ("ruleId", place()),
        ("ruleParentId", place()),
        ("messageId", place()),
        ("message", free_text()),
        (
            "range",
            mostly(
                (offset(), offset())
                    .prop_map(|(a, b)| Json::Array(vec![a, b]))
                    .boxed(),
            ),
        ),
        (
            "loc",
            mostly(object(vec![(
                "start",
                mostly(object(vec![("line", mostly(line_number()))])),
            )])),
        ),
        ("data", mostly(object(vec![("TOKEN", secret_field())]))),
        ("severity", place()),
    ])
}

fn secretlint_report() -> BoxedStrategy<Json> {
    let file = object(vec![
        ("filePath", place()),
        (
            "sourceContent",
            prop_oneof![3 => Just(Json::Planted), 1 => free_text(), 1 => value()].boxed(),
        ),
        ("sourceContentType", mostly(one_of(&["text", "binary"]))),
        (
            "messages",
            mostly(
                proptest::collection::vec(
                    prop_oneof![8 => secretlint_message(), 1 => value()],
                    0..4,
                )
                .prop_map(Json::Array)
                .boxed(),
            ),
        ),
    ]);
    prop_oneof![
        8 => proptest::collection::vec(prop_oneof![8 => file, 1 => value()], 0..3).prop_map(Json::Array),
        1 => value(),
    ]
    .boxed()
}

fn sarif_result() -> BoxedStrategy<Json> {
    let region = object(vec![
        ("startLine", mostly(line_number())),
        ("startColumn", mostly(unsigned())),
        ("snippet", mostly(object(vec![("text", secret_field())]))),
    ]);
    let physical = object(vec![
        ("artifactLocation", mostly(object(vec![("uri", place())]))),
        ("region", mostly(region)),
    ]);
    let location = object(vec![
        ("physicalLocation", mostly(physical)),
        ("properties", value()),
    ]);
    object(vec![
        ("ruleId", place()),
        ("message", mostly(object(vec![("text", free_text())]))),
        (
            "locations",
            mostly(
                proptest::collection::vec(location, 0..3)
                    .prop_map(Json::Array)
                    .boxed(),
            ),
        ),
        (
            "partialFingerprints",
            mostly(object(vec![("commitSha", place())])),
        ),
    ])
}

fn sarif_report() -> BoxedStrategy<Json> {
    let run = object(vec![
        (
            "tool",
            mostly(object(vec![(
                "driver",
                mostly(object(vec![("name", place())])),
            )])),
        ),
        (
            "results",
            mostly(
                proptest::collection::vec(prop_oneof![8 => sarif_result(), 1 => value()], 0..4)
                    .prop_map(Json::Array)
                    .boxed(),
            ),
        ),
    ]);
    prop_oneof![
        8 => object(vec![
            ("$schema", place()),
            ("version", place()),
            ("runs", mostly(proptest::collection::vec(run, 0..3).prop_map(Json::Array).boxed())),
        ]),
        1 => value(),
    ]
    .boxed()
}

fn generic_report() -> BoxedStrategy<Json> {
    lines(prop_oneof![8 => generic_line(), 1 => value()].boxed())
}

/// A secret as a detector reports it: printable, not blank, not in gitleaks' redacted forms.
fn valid_secret() -> BoxedStrategy<String> {
    "[A-Za-z0-9+/=_:@-][\\PC]{6,60}[A-Za-z0-9]".boxed()
}

/// A valid report of `format` with one entry per value in `secrets` (a detect-secrets entry
/// carries the value's SHA-1 only), and the fingerprints the parser must find.
fn valid_report(format: Format, secrets: &[String]) -> (Json, Vec<Fingerprint>) {
    let s = |v: &str| Json::Str(v.to_owned());
    let raw = |v: &str| Json::Raw(v.to_owned());
    let obj = |fields: Vec<(&str, Json)>| {
        Json::Object(fields.into_iter().map(|(k, v)| (s(k), v)).collect())
    };
    let mut expected: Vec<Fingerprint> = secrets
        .iter()
        .map(|v| Fingerprint::of_bytes(v.as_bytes()))
        .collect();
    let doc = match format {
        Format::Gitleaks => Json::Array(
            secrets
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    obj(vec![
                        ("Secret", s(v)),
                        ("Match", s(&format!("token = {v}"))),
                        ("File", s(&format!("src/f{i}.py"))),
                        ("StartLine", raw(&(i + 1).to_string())),
                        ("RuleID", s("generic-api-key")),
                    ])
                })
                .collect(),
        ),
        Format::Trufflehog => Json::Lines(
            secrets
                .iter()
                .map(|v| {
                    obj(vec![
                        ("DetectorName", s("Generic")),
                        ("Raw", s(v)),
                        (
                            "SourceMetadata",
                            obj(vec![(
                                "Data",
                                obj(vec![("Filesystem", obj(vec![("file", s("a.env"))]))]),
                            )]),
                        ),
                    ])
                })
                .collect(),
            false,
        ),
        Format::DetectSecrets => {
            for fp in &mut expected {
                fp.sha256 = None;
            }
            let entries = secrets
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let sha1 = Fingerprint::of_bytes(v.as_bytes()).sha1.expect("sha1");
                    obj(vec![
                        ("type", s("Secret Keyword")),
                        ("hashed_secret", s(&sha1.to_uppercase())),
                        ("line_number", raw(&(i + 1).to_string())),
                    ])
                })
                .collect();
            obj(vec![("results", obj(vec![("a.py", Json::Array(entries))]))])
        }
        Format::Github => Json::Array(
            secrets
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    obj(vec![
                        ("action", s("created")),
                        (
                            "alert",
                            obj(vec![
                                ("number", raw(&(i + 1).to_string())),
                                ("secret_type", s("adafruit_io_key")),
                                ("secret", s(v)),
                            ]),
                        ),
                        ("repository", obj(vec![("full_name", s("acme/app"))])),
                    ])
                })
                .collect(),
        ),
        Format::Generic => Json::Lines(
            secrets
                .iter()
                .map(|v| obj(vec![("secret", s(v)), ("file", s("x.txt"))]))
                .collect(),
            true,
        ),
        Format::Betterleaks => Json::Lines(
            secrets
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    obj(vec![
                        ("RuleID", s("github-pat")),
                        ("Secret", s(v)),
                        ("Attributes", obj(vec![("path", s(&format!("f{i}.sh")))])),
                    ])
                })
                .collect(),
            false,
        ),
        Format::Kingfisher => obj(vec![(
            "findings",
            Json::Array(
                secrets
                    .iter()
                    .map(|v| {
                        obj(vec![
                            ("rule", obj(vec![("id", s("kingfisher.x.1"))])),
                            ("finding", obj(vec![("snippet", s(v)), ("line", raw("3"))])),
                        ])
                    })
                    .collect(),
            ),
        )]),
        Format::Secretlint => {
            // One file holding every value, each message's range in UTF-16 code units.
            let mut messages = Vec::new();
            let mut at = 0usize;
            for v in secrets {
                let len = v.encode_utf16().count();
                messages.push(obj(vec![
                    ("ruleId", s("r")),
                    (
                        "range",
                        Json::Array(vec![raw(&at.to_string()), raw(&(at + len).to_string())]),
                    ),
                ]));
                at += len + 1;
            }
            Json::Array(vec![obj(vec![
                ("filePath", s("a.env")),
                ("sourceContent", s(&secrets.join("\n"))),
                ("messages", Json::Array(messages)),
            ])])
        }
        Format::Sarif => {
            let results = secrets
                .iter()
                .map(|v| {
                    let region = obj(vec![
                        ("startLine", raw("2")),
                        ("snippet", obj(vec![("text", s(v))])),
                    ]);
                    obj(vec![
                        ("ruleId", s("generic-api-key")),
                        (
                            "locations",
                            Json::Array(vec![obj(vec![(
                                "physicalLocation",
                                obj(vec![("region", region)]),
                            )])]),
                        ),
                    ])
                })
                .collect();
            let tool = obj(vec![("driver", obj(vec![("name", s("gitleaks"))]))]);
            obj(vec![
                ("version", s("2.1.0")),
                (
                    "runs",
                    Json::Array(vec![obj(vec![
                        ("tool", tool),
                        ("results", Json::Array(results)),
                    ])]),
                ),
            ])
        }
    };
    (doc, expected)
}

/// Three properties for one format.
macro_rules! ingest_properties {
    ($module:ident, $format:expr, $shape:ident) => {
        mod $module {
            use super::*;

            proptest! {
                #![proptest_config(ProptestConfig::with_cases(BYTES_CASES))]
                #[test]
                fn arbitrary_bytes_are_refused_or_parsed_without_panic_or_echo(
                    p in planted(),
                    bytes in proptest::collection::vec(any::<u8>(), 0..512),
                    at in any::<prop::sample::Index>(),
                ) {
                    check($format, &spliced(bytes, at, &p), &p);
                }
            }

            proptest! {
                #![proptest_config(ProptestConfig::with_cases(SHAPED_CASES))]
                #[test]
                fn shaped_reports_are_parsed_or_refused_without_echo(
                    p in planted(),
                    doc in $shape(),
                    damage in damage(),
                ) {
                    check($format, &damage.apply(&doc, &p), &p);
                }
            }

            proptest! {
                #![proptest_config(ProptestConfig::with_cases(VALID_CASES))]
                #[test]
                fn valid_reports_give_one_finding_per_value_with_its_digests(
                    secrets in proptest::collection::vec(valid_secret(), 1..5),
                ) {
                    let (doc, expected) = valid_report($format, &secrets);
                    let none = Planted { value: String::new(), marker: "\u{0}none".into() };
                    let text = doc.render(&none);
                    let parsed = check($format, text.as_bytes(), &none);
                    let parsed = parsed.unwrap_or_else(|| panic!("{text}"));
                    prop_assert!(parsed.rejected.is_empty(), "{:?}", parsed.rejected);
                    let found: Vec<_> = parsed.findings.iter().map(|f| f.fingerprint.clone()).collect();
                    prop_assert_eq!(found, expected);
                }
            }
        }
    };
}

ingest_properties!(gitleaks, Format::Gitleaks, gitleaks_report);
ingest_properties!(trufflehog, Format::Trufflehog, trufflehog_report);
ingest_properties!(detect_secrets, Format::DetectSecrets, detect_secrets_report);
ingest_properties!(github, Format::Github, github_report);
ingest_properties!(generic, Format::Generic, generic_report);
ingest_properties!(betterleaks, Format::Betterleaks, betterleaks_report);
ingest_properties!(kingfisher, Format::Kingfisher, kingfisher_report);
ingest_properties!(secretlint, Format::Secretlint, secretlint_report);
ingest_properties!(sarif, Format::Sarif, sarif_report);

/// Nesting far beyond serde_json's recursion limit is a clear error, not a stack overflow.
#[test]
fn deeply_nested_reports_are_refused_by_every_format() {
    let p = Planted {
        value: "PLANTEDdeepnest0000000000000000".into(),
        marker: "PLANTEDdeepnest".into(),
    };
    for depth in [200, 100_000] {
        for (open, close) in [("[", "]"), ("{\"Secret\":", "}")] {
            let doc = format!(
                "{}\"{}\"{}",
                open.repeat(depth),
                p.value,
                close.repeat(depth)
            );
            for format in Format::ALL {
                let parsed = check(format, doc.as_bytes(), &p);
                assert!(
                    parsed.is_none_or(|p| p.findings.is_empty()),
                    "{format}: nothing usable in a nested document"
                );
            }
        }
    }
}

/// The value of finding `i` of a generated report: fixed width, so every entry has one length.
fn streamed_value(i: usize) -> String {
    format!("FAKE-streamed-{i:09}")
}

/// One entry of a generated report of `format` for value `i`, with the separator before it.
fn streamed_entry(format: Format, i: usize) -> String {
    let v = streamed_value(i);
    let sep = if i == 0 { "" } else { "," };
    match format {
        Format::Gitleaks => {
            format!(r#"{sep}{{"Secret":"{v}","File":"src/f{i:09}.py","StartLine":7,"RuleID":"r"}}"#)
        }
        Format::Trufflehog => format!("{{\"DetectorName\":\"Generic\",\"Raw\":\"{v}\"}}\n"),
        Format::DetectSecrets => {
            let sha1 = Fingerprint::of_bytes(v.as_bytes()).sha1.expect("sha1");
            format!(r#"{sep}{{"type":"Secret Keyword","hashed_secret":"{sha1}","line_number":3}}"#)
        }
        Format::Github => format!(
            r#"{sep}{{"action":"created","alert":{{"number":{},"secret_type":"x","secret":"{v}"}}}}"#,
            100_000_000 + i
        ),
        Format::Generic => format!("{{\"secret\":\"{v}\",\"file\":\"f{i:09}\"}}\n"),
        Format::Betterleaks => {
            format!(
                "{{\"Secret\":\"{v}\",\"File\":\"src/f{i:09}.py\",\"StartLine\":7,\"RuleID\":\"r\"}}\n"
            )
        }
        Format::Kingfisher => format!(
            r#"{sep}{{"rule":{{"id":"r"}},"finding":{{"snippet":"{v}","path":"f{i:09}","line":7}}}}"#
        ),
        Format::Secretlint => format!(
            r#"{sep}{{"filePath":"f{i:09}","sourceContent":"{v}","messages":[{{"ruleId":"r","range":[0,{}]}}]}}"#,
            v.len()
        ),
        Format::Sarif => format!(
            r#"{sep}{{"ruleId":"r","locations":[{{"physicalLocation":{{"artifactLocation":{{"uri":"f{i:09}"}},"region":{{"startLine":7,"snippet":{{"text":"{v}"}}}}}}}}]}}"#
        ),
    }
}

/// What a generated report of `format` opens and closes with.
fn streamed_frame(format: Format) -> (&'static str, &'static str) {
    match format {
        Format::Gitleaks | Format::Github | Format::Secretlint => ("[", "]"),
        Format::DetectSecrets => (r#"{"version":"1.5.0","results":{"a.py":["#, "]}}"),
        Format::Trufflehog | Format::Generic | Format::Betterleaks => ("", ""),
        Format::Kingfisher => (r#"{"findings":["#, "]}"),
        Format::Sarif => (
            r#"{"version":"2.1.0","runs":[{"tool":{"driver":{"name":"gitleaks"}},"results":["#,
            "]}]}",
        ),
    }
}

/// A report of `count` entries made up as it is read, one entry at a time: it never exists
/// whole, here or (if the parser streams) anywhere. `produced` counts the bytes handed out.
struct Generated {
    format: Format,
    count: usize,
    next: usize,
    chunk: Vec<u8>,
    at: usize,
    closed: bool,
    produced: Rc<Cell<u64>>,
}

impl Generated {
    fn new(format: Format, count: usize) -> Self {
        Self {
            format,
            count,
            next: 0,
            chunk: streamed_frame(format).0.as_bytes().to_vec(),
            at: 0,
            closed: false,
            produced: Rc::default(),
        }
    }
}

impl Read for Generated {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.chunk.len() {
            self.at = 0;
            if self.next < self.count {
                self.chunk = streamed_entry(self.format, self.next).into_bytes();
                self.next += 1;
            } else if !self.closed {
                self.chunk = streamed_frame(self.format).1.as_bytes().to_vec();
                self.closed = true;
            } else {
                return Ok(0);
            }
        }
        let n = out.len().min(self.chunk.len() - self.at);
        out[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        self.produced.set(self.produced.get() + n as u64);
        Ok(n)
    }
}

/// Findings per format in the streaming test: 1.5 to 3 MB of report each, 20 to 45 times the
/// parser's read buffer.
const STREAMED: usize = 25_000;

/// How far a parser may read ahead of the finding it hands on: its 64 KiB buffer and slack.
const READ_AHEAD: u64 = 64 * 1024 + 4096;

#[test]
fn every_format_hands_on_each_finding_before_reading_much_further() {
    for format in Format::ALL {
        let report = Generated::new(format, STREAMED);
        let produced = report.produced.clone();
        let entry_len = streamed_entry(format, 1).len() as u64;
        let opening = streamed_frame(format).0.len() as u64;
        let mut seen = 0usize;
        let summary = parse(format, report, |entry| {
            let Entry::Finding(finding) = entry else {
                panic!("{format}: a generated entry was rejected: {entry:?}");
            };
            // The whole report is never needed to hand on a finding: only the findings so
            // far, the next one and a buffer's worth of read-ahead have been read.
            let allowed = opening + (seen as u64 + 2) * entry_len + READ_AHEAD;
            assert!(
                produced.get() <= allowed,
                "{format}: finding {seen} handed on after {} bytes were read (at most {allowed})",
                produced.get()
            );
            if seen == 0 || seen == STREAMED - 1 {
                let mut expected = Fingerprint::of_bytes(streamed_value(seen).as_bytes());
                if format == Format::DetectSecrets {
                    expected.sha256 = None;
                }
                assert_eq!(finding.fingerprint, expected, "{format}: finding {seen}");
            }
            seen += 1;
            ControlFlow::Continue(())
        })
        .unwrap_or_else(|e| panic!("{format}: {e}"));
        assert_eq!(summary.findings, STREAMED as u64, "{format}");
        assert_eq!(summary.rejected, 0);
        assert!(!summary.stopped);
        assert!(
            produced.get() >= STREAMED as u64 * entry_len - 1,
            "{format}: the whole report was read"
        );
    }
}

#[test]
fn a_callback_that_stops_ends_the_parse_without_reading_the_rest() {
    for format in Format::ALL {
        let report = Generated::new(format, STREAMED);
        let produced = report.produced.clone();
        let mut seen = 0;
        let summary = parse(format, report, |_| {
            seen += 1;
            if seen == 10 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap_or_else(|e| panic!("{format}: {e}"));
        assert_eq!(summary.findings, 10, "{format}");
        assert!(summary.stopped, "{format}");
        assert!(
            produced.get() <= 2 * READ_AHEAD,
            "{format}: {} bytes read for 10 findings",
            produced.get()
        );
    }
}
