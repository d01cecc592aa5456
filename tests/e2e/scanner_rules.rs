//! Real secret scanners find keyloop's values through `keyloop rules`: Kingfisher 2.14 and
//! detect-secrets 1.5 (`scripts/install-kingfisher`, `scripts/install-detect-secrets`,
//! hash-pinned; found through `KEYLOOP_KINGFISHER` / `KEYLOOP_DETECT_SECRETS`, then `.tools/`)
//! scan a tree with a planted value of each format and a lookalike, with the rules keyloop
//! prints for them; their reports go to `keyloop ingest` and the planted versions are revoked
//! and rotated, each in its own format. Both drop the lookalike: their rules check the CRC32.
//!
//! Kingfisher's JSON report is not a format `keyloop ingest` reads, so the test turns each
//! finding into a line of the `generic` format (`{"secret", "file", "line", "detector"}`); the
//! detect-secrets baseline is ingested as it is. Kingfisher runs with `--no-validate
//! --no-update-check --no-rule-cache`, detect-secrets with `--no-verify`, both with their home
//! inside the test's directory: they touch no network and nothing outside the test.

use crate::harness::{Env, Events, KEYLOOP, path_str};
use keyloop_core::value_format::is_valid_checksum;
use keyloop_core::{Fingerprint, LifecycleKind, RevokeReason, Secret, Stage, ValueFormat};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A scanner installed by `script`: `$VAR`, else `default` under the repository root, or a
/// failure that says how to install it.
fn tool(var: &str, default: &str, script: &str) -> PathBuf {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(default)
    });
    assert!(
        path.is_file(),
        "{} not found: run {script} (or set {var})",
        path.display()
    );
    path
}

fn kingfisher() -> PathBuf {
    tool(
        "KEYLOOP_KINGFISHER",
        ".tools/kingfisher/kingfisher/bin/kingfisher",
        "scripts/install-kingfisher",
    )
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

/// Two credentials registered through the CLI, one per value format, and their values.
struct Planted {
    checksummed: String,
    hex: String,
    old_versions: [uuid::Uuid; 2],
}

const CHECKSUMMED_ID: &str = "svc/scanned";
const HEX_ID: &str = "svc/scanned-hex";

async fn register_both(env: &Env) -> Planted {
    let mut values = Vec::new();
    for (id, format) in [(CHECKSUMMED_ID, "checksummed"), (HEX_ID, "hex")] {
        env.ok(&["credential", "register", id, "--value-format", format])
            .await;
        let value = env.ok(&["credential", "reveal", id]).await;
        values.push(value.trim_end().to_owned());
    }
    let planted = Planted {
        checksummed: values[0].clone(),
        hex: values[1].clone(),
        old_versions: [
            env.credential(CHECKSUMMED_ID).await.versions[0].id,
            env.credential(HEX_ID).await.versions[0].id,
        ],
    };
    assert!(is_valid_checksum(&planted.checksummed));
    assert_eq!(ValueFormat::recognize(&planted.hex), Some(ValueFormat::Hex));
    planted
}

/// Ingests `report` as `format` and checks that both planted versions are revoked for the
/// leak and replaced by a value in their credential's own format.
async fn assert_ingest_revokes_both(env: &Env, format: &str, report: &[u8], planted: &Planted) {
    let events = Events::subscribe(&env.bus).await;
    let path = env.file(&format!("{format}.report"), report);
    let out = env.ok(&["ingest", format, path_str(&path), "--json"]).await;
    let ingested: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(ingested["published"], 2, "{ingested}");
    events
        .wait(
            "both planted versions rotated",
            Duration::from_secs(10),
            |evs| {
                [CHECKSUMMED_ID, HEX_ID].iter().all(|id| {
                    evs.iter().any(|e| {
                        e.data.kind == LifecycleKind::Rotated && e.subject.as_deref() == Some(*id)
                    })
                })
            },
        )
        .await;
    for (id, old_version, format) in [
        (
            CHECKSUMMED_ID,
            planted.old_versions[0],
            ValueFormat::Checksummed,
        ),
        (HEX_ID, planted.old_versions[1], ValueFormat::Hex),
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
        assert_ne!(new_value, planted.checksummed);
        assert_ne!(new_value, planted.hex);
    }
}

#[tokio::test]
async fn kingfisher_with_keyloops_rules_finds_planted_values_and_ingest_revokes_them() {
    let env = Env::start().await;
    let _worker = env.worker("worker", &["leak-responder", "rotator", "revoker"]);
    let planted = register_both(&env).await;
    let scratch = tempfile::tempdir().unwrap();
    let tree = scratch.path().join("repo");
    let lookalike = plant(&tree, &planted.checksummed, &planted.hex);
    let rules = rules_file(scratch.path(), "kingfisher", "keyloop.kingfisher.yaml").await;
    let report = scan(scratch.path(), &rules, &tree).await;
    let found = findings(&report);
    let at = |file: &str| format!("{}/{file}", tree.display());
    let rule = |id: &str| id.to_owned();
    assert_eq!(
        found,
        [
            (
                rule("keyloop.value.1"),
                planted.checksummed.clone(),
                at("deploy/app.env"),
                2
            ),
            (
                rule("keyloop.value.2"),
                planted.hex.clone(),
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
    assert_ingest_revokes_both(&env, "generic", lines.as_bytes(), &planted).await;
}

#[tokio::test]
async fn detect_secrets_with_keyloops_plugin_writes_a_baseline_that_ingest_revokes_from() {
    // detect-secrets 1.5.0 (scripts/install-detect-secrets, hash-pinned; KEYLOOP_DETECT_SECRETS,
    // then .tools/) with the plugin of `keyloop rules detect-secrets`: its baseline holds SHA-1
    // hashes only, and `keyloop ingest detect-secrets` reads it as it is.
    let env = Env::start().await;
    let _worker = env.worker("worker", &["leak-responder", "rotator", "revoker"]);
    let planted = register_both(&env).await;
    let scratch = tempfile::tempdir().unwrap();
    let tree = scratch.path().join("repo");
    let lookalike = plant(&tree, &planted.checksummed, &planted.hex);
    let plugin = rules_file(scratch.path(), "detect-secrets", "keyloop_detector.py").await;
    let out = tokio::process::Command::new(tool(
        "KEYLOOP_DETECT_SECRETS",
        ".tools/detect-secrets/bin/detect-secrets",
        "scripts/install-detect-secrets",
    ))
    .args(["scan", "--all-files", "--no-verify", "--plugin"])
    .arg(&plugin)
    .arg(".")
    .current_dir(&tree)
    .env("HOME", scratch.path())
    .output()
    .await
    .expect("run detect-secrets");
    assert!(
        out.status.success(),
        "detect-secrets failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let baseline: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let sha1 = |v: &str| Fingerprint::of(&Secret::from(v)).sha1.unwrap();
    let mut ours: Vec<_> = baseline["results"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|entries| entries.as_array().unwrap())
        .filter(|e| e["type"] == "keyloop credential value")
        .map(|e| e["hashed_secret"].as_str().unwrap().to_owned())
        .collect();
    ours.sort();
    let mut expected = vec![sha1(&planted.checksummed), sha1(&planted.hex)];
    expected.sort();
    assert_eq!(
        ours, expected,
        "both values, and not the lookalike {lookalike} (its checksum is wrong)"
    );
    assert_ingest_revokes_both(&env, "detect-secrets", &out.stdout, &planted).await;
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
