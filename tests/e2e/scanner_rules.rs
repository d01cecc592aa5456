//! A real secret scanner finds keyloop's values through `keyloop rules`: Kingfisher 2.14
//! (`scripts/install-kingfisher`, hash-pinned; found through `KEYLOOP_KINGFISHER`, then
//! `.tools/`) scans a tree with a planted value of each format and a lookalike, with the rules
//! `keyloop rules kingfisher` prints; its report goes to `keyloop ingest` and the planted
//! versions are revoked and rotated, each in its own format.
//!
//! Kingfisher's JSON report is not a format `keyloop ingest` reads, so the test turns each
//! finding into a line of the `generic` format (`{"secret", "file", "line", "detector"}`).
//! The scanner runs with `--no-validate --no-update-check --no-rule-cache` and its cache and
//! home inside the test's directory: it touches no network and nothing outside the test.

use crate::harness::{Env, Events, KEYLOOP, path_str};
use keyloop_core::value_format::is_valid_checksum;
use keyloop_core::{LifecycleKind, RevokeReason, Stage, ValueFormat};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The Kingfisher binary, or a failure that says how to install it.
fn kingfisher() -> PathBuf {
    let path = std::env::var_os("KEYLOOP_KINGFISHER")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../.tools/kingfisher/kingfisher/bin/kingfisher")
        });
    assert!(
        path.is_file(),
        "Kingfisher not found at {}: run scripts/install-kingfisher (or set KEYLOOP_KINGFISHER)",
        path.display()
    );
    path
}

/// Runs `kingfisher scan TREE` with the rules file `rules` and returns its JSON report.
async fn scan(scratch: &Path, rules: &Path, tree: &Path) -> serde_json::Value {
    let report = scratch.join("kingfisher.json");
    let out = tokio::process::Command::new(kingfisher())
        .args(["scan", path_str(tree), "--rules-path", path_str(rules)])
        .args([
            "--load-builtins",
            "false",
            "--no-validate",
            "--no-update-check",
        ])
        .args(["--no-rule-cache", "--format", "json", "-q", "--output"])
        .arg(&report)
        .env("HOME", scratch)
        .env("XDG_CACHE_HOME", scratch)
        .output()
        .await
        .expect("run kingfisher");
    // Kingfisher exits 200 when it found something, 0 when not.
    assert!(
        matches!(out.status.code(), Some(0 | 200)),
        "kingfisher failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&std::fs::read(&report).unwrap()).expect("kingfisher writes JSON")
}

/// `(rule id, secret, path, line)` of each finding in a Kingfisher report.
fn findings(report: &serde_json::Value) -> Vec<(String, String, String, u64)> {
    let mut found: Vec<_> = report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| {
            let d = &f["finding"];
            (
                f["rule"]["id"].as_str().unwrap().to_owned(),
                d["snippet"].as_str().unwrap().to_owned(),
                d["path"].as_str().unwrap().to_owned(),
                d["line"].as_u64().unwrap(),
            )
        })
        .collect();
    found.sort();
    found
}

/// The `keyloop rules TOOL` output, written to `file` in `dir`.
async fn rules_file(dir: &Path, tool: &str, file: &str) -> PathBuf {
    let out = tokio::process::Command::new(KEYLOOP)
        .args(["rules", tool])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "keyloop rules {tool}");
    let path = dir.join(file);
    std::fs::write(&path, out.stdout).unwrap();
    path
}

/// A tree like a repository: `checksummed` in an env file, `hex` in a URL in a YAML file, and
/// a lookalike of the checksummed format (its checksum wrong) in the docs.
fn plant(tree: &Path, checksummed: &str, hex: &str) -> String {
    let mut lookalike = checksummed.to_owned();
    let last = lookalike.pop().unwrap();
    lookalike.push(if last == 'Q' { 'R' } else { 'Q' });
    for (file, text) in [
        (
            "deploy/app.env",
            format!("APP_ENV=prod\nKEYLOOP_TOKEN={checksummed}\n"),
        ),
        (
            "config/db.yaml",
            format!("database:\n  url: postgres://app:{hex}@db.internal:5432/app\n"),
        ),
        (
            "docs/setup.md",
            format!("Set `KEYLOOP_TOKEN` to a value like `{lookalike}`.\n"),
        ),
    ] {
        let path = tree.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    lookalike
}

#[tokio::test]
async fn kingfisher_with_keyloops_rules_finds_planted_values_and_ingest_revokes_them() {
    let env = Env::start().await;
    let _worker = env.worker("worker", &["leak-responder", "rotator", "revoker"]);
    let register = |id: &'static str, format: &'static str| {
        let env = &env;
        async move {
            env.ok(&["credential", "register", id, "--value-format", format])
                .await;
            let value = env.ok(&["credential", "reveal", id]).await;
            value.trim_end().to_owned()
        }
    };
    let checksummed = register("svc/scanned", "checksummed").await;
    let hex = register("svc/scanned-hex", "hex").await;
    assert!(is_valid_checksum(&checksummed));
    assert_eq!(ValueFormat::recognize(&hex), Some(ValueFormat::Hex));

    let scratch = tempfile::tempdir().unwrap();
    let tree = scratch.path().join("repo");
    let lookalike = plant(&tree, &checksummed, &hex);
    let rules = rules_file(scratch.path(), "kingfisher", "keyloop.kingfisher.yaml").await;
    let report = scan(scratch.path(), &rules, &tree).await;
    let found = findings(&report);
    let at = |file: &str| format!("{}/{file}", tree.display());
    assert_eq!(
        found,
        [
            (
                "keyloop.value.1".to_owned(),
                checksummed.clone(),
                at("deploy/app.env"),
                2
            ),
            (
                "keyloop.value.2".to_owned(),
                hex.clone(),
                at("config/db.yaml"),
                2
            ),
        ],
        "each value once, and not the lookalike {lookalike} (its checksum is wrong)"
    );

    // Kingfisher's findings as `generic` lines: the plaintext is hashed by ingest, here.
    let lines: String = found
        .iter()
        .map(|(_, secret, file, line)| {
            let finding = serde_json::json!({
                "secret": secret, "file": file, "line": line, "detector": "kingfisher"
            });
            format!("{finding}\n")
        })
        .collect();
    let old = [
        env.credential("svc/scanned").await.versions[0].id,
        env.credential("svc/scanned-hex").await.versions[0].id,
    ];
    let events = Events::subscribe(&env.bus).await;
    let path = env.file("kingfisher.generic.jsonl", lines.as_bytes());
    let out = env
        .ok(&["ingest", "generic", path_str(&path), "--json"])
        .await;
    let ingested: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(ingested["published"], 2, "{ingested}");
    events
        .wait(
            "both planted versions rotated",
            Duration::from_secs(10),
            |evs| {
                ["svc/scanned", "svc/scanned-hex"].iter().all(|id| {
                    evs.iter().any(|e| {
                        e.data.kind == LifecycleKind::Rotated && e.subject.as_deref() == Some(*id)
                    })
                })
            },
        )
        .await;

    for (id, old_version, format) in [
        ("svc/scanned", old[0], ValueFormat::Checksummed),
        ("svc/scanned-hex", old[1], ValueFormat::Hex),
    ] {
        let cred = env.credential(id).await;
        let leaked = cred.version(old_version).unwrap();
        assert_eq!(leaked.stage, Stage::Revoked, "{id}");
        assert_eq!(leaked.revoke_reason, Some(RevokeReason::Leak), "{id}");
        assert_eq!(cred.settings.value_format(), format, "{id}");
        let new_value = env.ok(&["credential", "reveal", id]).await;
        let new_value = new_value.trim_end();
        assert_eq!(
            ValueFormat::recognize(new_value),
            Some(format),
            "{id}: the rotation keeps the credential's format"
        );
        assert_ne!(new_value, checksummed);
        assert_ne!(new_value, hex);
    }
}

#[tokio::test]
async fn the_gitleaks_rules_load_in_a_gitleaks_compatible_engine_and_find_both_formats() {
    // Kingfisher reads gitleaks' TOML rule format (`--rules-path` with a .toml file): the rules
    // of `keyloop rules gitleaks` parse and match there. gitleaks has no checksum check, so
    // the lookalike is reported too; ingest matches only values keyloop knows.
    let scratch = tempfile::tempdir().unwrap();
    let tree = scratch.path().join("repo");
    let checksummed = keyloop_backends::generate_value(ValueFormat::Checksummed);
    let hex = keyloop_backends::generate_value(ValueFormat::Hex);
    let lookalike = plant(&tree, checksummed.expose(), hex.expose());
    let rules = rules_file(scratch.path(), "gitleaks", "keyloop.gitleaks.toml").await;
    let report = scan(scratch.path(), &rules, &tree).await;
    let mut secrets: Vec<_> = findings(&report).into_iter().map(|f| f.1).collect();
    secrets.sort();
    let mut expected = vec![
        checksummed.expose().to_owned(),
        hex.expose().to_owned(),
        lookalike,
    ];
    expected.sort();
    assert_eq!(secrets, expected);
}
