//! Each tool's rule, as printed, is read back and its regex run (with Rust's `regex`, whose
//! syntax for these patterns is the same as RE2's, Hyperscan's, Python's and JavaScript's)
//! against generated values in the places values end up, and against lookalikes.

use super::*;
use crate::cli::{Cli, Command, CredentialCommand};
use clap::Parser;
use keyloop_core::value_format::is_valid_checksum;
use regex::Regex;

/// The regexes a tool's printed rules hold, checksummed first, as Rust regexes whose group 1
/// is the value.
fn printed_regexes(tool: Tool) -> Vec<Regex> {
    let content = rules(tool).content;
    let between = |line: &str, open: &str, close: &str| -> Option<String> {
        let start = line.find(open)? + open.len();
        let end = start + line[start..].find(close)?;
        Some(line[start..end].to_owned())
    };
    let sources: Vec<String> = match tool {
        Tool::Gitleaks => content
            .lines()
            .filter_map(|l| between(l, "regex = '''", "'''"))
            .collect(),
        Tool::Kingfisher => content
            .lines()
            .filter_map(|l| between(l, "    pattern: '", "'"))
            .collect(),
        Tool::DetectSecrets => content
            .lines()
            .filter(|l| l.trim_start().starts_with("re.compile(r\"\\b"))
            .filter_map(|l| between(l, "re.compile(r\"", "\")"))
            .collect(),
        Tool::Secretlint => {
            let config: serde_json::Value = serde_json::from_str(&content).unwrap();
            config["rules"][0]["options"]["patterns"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    let js = p["patterns"][0].as_str().unwrap();
                    js.strip_prefix('/')
                        .unwrap()
                        .strip_suffix('/')
                        .unwrap()
                        .to_owned()
                })
                .collect()
        }
        Tool::GithubPattern => content
            .lines()
            .filter_map(|l| l.strip_prefix("Secret format: "))
            .map(|format| format!(r"(?:\A|[^0-9A-Za-z])({format})(?:\z|[^0-9A-Za-z])"))
            .collect(),
    };
    assert_eq!(sources.len(), 2, "{}: one rule per format", tool.name());
    sources.iter().map(|s| Regex::new(s).unwrap()).collect()
}

/// What each regex captures in `text`.
fn found(regex: &Regex, text: &str) -> Vec<String> {
    regex.captures_iter(text).map(|c| c[1].to_owned()).collect()
}

/// The places a value ends up in: config files, env files, URLs, JSON, code, line ends.
fn contexts(value: &str) -> Vec<String> {
    vec![
        value.to_owned(),
        format!("KEYLOOP_VALUE={value}\n"),
        format!("export TOKEN=\"{value}\""),
        format!("{{\"password\": \"{value}\"}}"),
        format!("postgres://app:{value}@db.internal:5432/app"),
        format!("  token: '{value}' # rotated by keyloop"),
        format!("let t = `{value}`;"),
        format!("{value}\r\n"),
    ]
}

#[test]
fn every_tools_rule_finds_generated_values_wherever_they_are_written() {
    let values: Vec<_> = (0..300)
        .map(|i| {
            let format = if i % 3 == 0 {
                ValueFormat::Hex
            } else {
                ValueFormat::Checksummed
            };
            (format, keyloop_backends::generate_value(format))
        })
        .collect();
    for tool in Tool::ALL {
        let regexes = printed_regexes(tool);
        for (format, value) in &values {
            let value = value.expose();
            let (own, other) = match format {
                ValueFormat::Checksummed => (&regexes[0], &regexes[1]),
                ValueFormat::Hex => (&regexes[1], &regexes[0]),
            };
            for text in contexts(value) {
                assert_eq!(found(own, &text), [value], "{}: {text}", tool.name());
                assert!(found(other, &text).is_empty(), "{}: {text}", tool.name());
            }
        }
    }
}

#[test]
fn every_tools_rule_ignores_lookalikes_of_the_wrong_shape() {
    let value = keyloop_backends::generate_value(ValueFormat::Checksummed);
    let v = value.expose();
    let hex = keyloop_backends::generate_value(ValueFormat::Hex);
    let h = hex.expose();
    let lookalikes = [
        v.replacen("klc_", "klx_", 1),
        v.replacen("klc_", "KLC_", 1),
        v[..39].to_owned(),
        format!("{v}Z"),
        format!("x{v}"),
        format!("{}-{}", &v[..20], &v[21..]),
        h.replacen("kl_", "kx_", 1),
        h.to_uppercase(),
        h[..66].to_owned(),
        format!("{h}0"),
        format!("{}g", &h[..66]),
        "klt_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".to_owned(),
        "kl_jit_0123456789abcdef0123456789abcdef".to_owned(),
    ];
    for tool in Tool::ALL {
        for regex in printed_regexes(tool) {
            for l in &lookalikes {
                for text in contexts(l) {
                    assert!(found(&regex, &text).is_empty(), "{}: {text}", tool.name());
                }
            }
        }
    }
}

#[test]
fn a_wrong_checksum_has_the_shape_and_only_the_checksum_tells_it_apart() {
    // Tools without a CRC32 report the lookalike (ingest matches nothing for it); Kingfisher's
    // requirement and the detect-secrets plugin drop it. Here: the shape matches, the check
    // does not.
    let lookalike = example_lookalike();
    assert!(!is_valid_checksum(&lookalike));
    assert!(is_valid_checksum(&example_checksummed()));
    for tool in Tool::ALL {
        assert_eq!(
            found(&printed_regexes(tool)[0], &lookalike),
            [lookalike.as_str()]
        );
        let checks = rules(tool).rules[0].checks_checksum;
        assert_eq!(
            checks,
            matches!(tool, Tool::Kingfisher | Tool::DetectSecrets),
            "{}",
            tool.name()
        );
    }
    let kingfisher = rules(Tool::Kingfisher).content;
    assert!(kingfisher.contains("expected: '{{ body | crc32 | base62: 6 }}'"));
    assert!(kingfisher.contains(&format!(
        "negative_examples:\n      - 'KEYLOOP_VALUE={lookalike}'"
    )));
}

#[test]
fn the_json_form_names_the_regexes_the_file_holds() {
    for tool in Tool::ALL {
        let r = rules(tool);
        assert_eq!(r.tool, tool.name());
        let formats: Vec<_> = r.rules.iter().map(|f| f.format).collect();
        assert_eq!(formats, ["checksummed", "hex"]);
        for rule in &r.rules {
            let in_file = match tool {
                // JSON escapes each backslash.
                Tool::Secretlint => rule.regex.replace('\\', "\\\\"),
                _ => rule.regex.clone(),
            };
            assert!(
                r.content.contains(&in_file),
                "{}: {}",
                tool.name(),
                rule.regex
            );
        }
        let json = serde_json::to_value(&r).unwrap();
        for key in ["tool", "file", "usage", "rules", "content"] {
            assert!(json.get(key).is_some(), "{key}");
        }
    }
}

#[test]
fn examples_in_the_rules_are_valid_and_fixed_never_generated() {
    let example = example_checksummed();
    assert!(is_valid_checksum(&example));
    assert_eq!(example, example_checksummed(), "deterministic");
    assert!(example.starts_with("klc_0EXAMPLE1keyloop2value3format4"));
    assert_eq!(
        ValueFormat::recognize(&example_hex()),
        Some(ValueFormat::Hex)
    );
    assert!(rules(Tool::GithubPattern).content.contains(&example));
}

#[test]
fn value_formats_and_scanners_parse_by_name_and_unknown_ones_are_refused() {
    let parse =
        |args: &[&str]| Cli::try_parse_from(std::iter::once("keyloop").chain(args.iter().copied()));
    let cli = parse(&["credential", "register", "a/b", "--value-format", "hex"]).unwrap();
    let Command::Credential(CredentialCommand::Register(args)) = cli.command else {
        panic!("not a registration");
    };
    assert_eq!(args.value_format, Some(ValueFormat::Hex));
    let e = parse(&["credential", "register", "a/b", "--value-format", "b64"]).unwrap_err();
    assert!(
        e.to_string()
            .contains("unknown value format `b64`; value formats: hex, checksummed"),
        "{e}"
    );
    for tool in Tool::ALL {
        let cli = parse(&["rules", tool.name()]).unwrap();
        assert!(matches!(cli.command, Command::Rules { tool: t } if t == tool));
    }
    let e = parse(&["rules", "semgrep"]).unwrap_err();
    assert!(e.to_string().contains("unknown scanner `semgrep`; scanners: gitleaks, kingfisher, secretlint, detect-secrets, github-pattern"), "{e}");
}
