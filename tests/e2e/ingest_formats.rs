//! The report formats added for issue 15 through the real binary: a value found by each of
//! Kingfisher (JSON and JSON lines), secretlint, SARIF (gitleaks' and Kingfisher's) and
//! betterleaks is revoked; a password inside a TruffleHog URI is revoked; `auto` reads each;
//! empty reports exit 0; a wrong format names the right one; and `--wait` prints each
//! finding's outcome, run as the `detector` user of the checked-in server config.

use crate::harness::{Env, Events, path_str};
use keyloop_core::{LifecycleKind, Stage};
use serde_json::{Value, json};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

const FLEET: [&str; 3] = ["leak-responder", "revoker", "rotator"];

/// Writes a report of one finding of a value.
type Report = fn(&str) -> Vec<u8>;

/// `value` as a URI's user information may hold it: every byte but the unreserved ones
/// percent-encoded.
fn encoded(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn kingfisher_record(value: &str, file: &str) -> Value {
    json!({"rule": {"name": "Generic Secret", "id": "kingfisher.generic.1"},
        "finding": {"snippet": value, "fingerprint": "1", "confidence": "medium", "entropy": "4.1",
            "validation": {"status": "Not Attempted", "response": ""}, "language": "Shell",
            "line": 3, "column_start": 1, "column_end": 40, "path": file}})
}

fn sarif(tool: &str, value: &str, file: &str) -> Vec<u8> {
    let log = json!({"$schema": "https://json.schemastore.org/sarif-2.1.0.json", "version": "2.1.0",
        "runs": [{"tool": {"driver": {"name": tool, "rules": []}}, "results": [{
            "message": {"text": "generic-api-key has detected secret"}, "ruleId": "generic-api-key",
            "locations": [{"physicalLocation": {"artifactLocation": {"uri": file},
                "region": {"startLine": 3, "snippet": {"text": value}}}}],
            "partialFingerprints": {"commitSha": "0123456789abcdef0123456789abcdef01234567"}}]}]});
    serde_json::to_vec(&log).unwrap()
}

fn secretlint(value: &str, file: &str) -> Vec<u8> {
    let content = format!("# config\nAPI_TOKEN={value}\n");
    let start = content.find(value).unwrap();
    let units = |s: &str| s.encode_utf16().count();
    let range = [
        units(&content[..start]),
        units(&content[..start]) + units(value),
    ];
    let masked = "*".repeat(value.len());
    serde_json::to_vec(&json!([{"filePath": file, "sourceContent": content, "sourceContentType": "text",
        "messages": [{"data": {"TOKEN": masked}, "type": "message", "message": format!("found: {masked}"),
            "messageId": "x", "range": range, "loc": {"start": {"line": 2, "column": 10}, "end": {"line": 2, "column": 50}},
            "ruleId": "@secretlint/secretlint-rule-pattern", "severity": "error"}]}]))
    .unwrap()
}

/// Runs `keyloop ingest ARGS` with `report` on stdin (as `user`, or the env's user).
async fn ingest_stdin(
    env: &Env,
    user: Option<&str>,
    args: &[&str],
    report: &[u8],
) -> std::process::Output {
    let mut cmd = match user {
        Some(user) => env.keyloop_as(user),
        None => env.keyloop(),
    };
    let mut child = cmd
        .arg("ingest")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(report).await.unwrap();
    drop(stdin);
    child.wait_with_output().await.unwrap()
}

/// The one JSON object `ingest --json` prints.
fn json_of(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "ingest --json prints one JSON object ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Waits for credential `id`'s leaked version `version` to be revoked (`--wait` returns at
/// `leak_matched`, when the revocation is asked for), and checks it is.
async fn assert_revoked(env: &Env, events: &Events, id: &str, version: uuid::Uuid) {
    let subject = id.to_owned();
    events
        .wait(
            &format!("{id} revoked"),
            Duration::from_secs(10),
            move |evs| {
                evs.iter().any(|e| {
                    e.data.kind == LifecycleKind::Revoked
                        && e.subject.as_deref() == Some(subject.as_str())
                        && e.data.version == Some(version)
                })
            },
        )
        .await;
    let cred = env.credential(id).await;
    assert_eq!(
        cred.version(version).map(|v| v.stage),
        Some(Stage::Revoked),
        "{id}"
    );
}

/// The id of credential `id`'s current version.
async fn current(env: &Env, id: &str) -> uuid::Uuid {
    env.credential(id)
        .await
        .current()
        .expect("a current version")
        .id
}

#[tokio::test]
async fn a_value_found_by_each_new_format_is_revoked() {
    let env = Env::start().await;
    let _fleet = env.worker("fleet", &FLEET);
    let events = Events::subscribe(&env.bus).await;
    let cases: [(&str, &str, Report); 7] = [
        ("kingfisher", "kf/json", |v| {
            let report = json!({"findings": [kingfisher_record(v, "a.sh")], "metadata": {}});
            serde_json::to_vec(&report).unwrap()
        }),
        ("kingfisher", "kf/jsonl", |v| {
            format!(
                "{}\n{}\n",
                kingfisher_record(v, "b.sh"),
                json!({"audit": {}})
            )
            .into_bytes()
        }),
        ("secretlint", "sl/json", |v| secretlint(v, "/src/c.env")),
        ("sarif", "sarif/gitleaks", |v| sarif("gitleaks", v, "d.env")),
        ("sarif", "sarif/kingfisher", |v| {
            sarif("kingfisher", v, "e.env")
        }),
        ("betterleaks", "bl/jsonl", |v| {
            let line = json!({"RuleID": "generic-api-key", "Secret": v, "Match": "x",
                "Attributes": {"path": "f.env", "git.sha": "abc"}, "Tags": []});
            format!("{line}\n").into_bytes()
        }),
        ("auto", "auto/kingfisher", |v| {
            serde_json::to_vec(&json!({"findings": [kingfisher_record(v, "g.sh")]})).unwrap()
        }),
    ];
    for (format, id, report) in cases {
        let value = env.register_and_reveal(id).await;
        let version = current(&env, id).await;
        let out = ingest_stdin(&env, None, &[format, "--wait", "--json"], &report(&value)).await;
        let shown = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{format} {id}: {shown}");
        assert!(!shown.contains(&value), "{format}: the value is shown");
        let summary = json_of(&out);
        let outcome = &summary["outcomes"]["findings"][0];
        assert_eq!(outcome["outcome"], "matched", "{format} {id}: {summary}");
        assert_eq!(outcome["credential"], id, "{format}");
        assert_eq!(outcome["matched_by"], "the value");
        assert_revoked(&env, &events, id, version).await;
    }
}

#[tokio::test]
async fn a_password_inside_a_trufflehog_postgres_uri_is_revoked() {
    let env = Env::start().await;
    let _fleet = env.worker("fleet", &FLEET);
    let events = Events::subscribe(&env.bus).await;
    let id = "pg/app";
    let value = env.register_and_reveal(id).await;
    let version = current(&env, id).await;
    let uri = format!("postgres://app:{}@db:5432/x", encoded(&value));
    let line = json!({
        "SourceMetadata": {"Data": {"Git": {"commit": "abc123", "file": "deploy/db.env",
            "repository": "https://github.com/acme/app.git", "line": 2}}},
        "SourceID": 1, "SourceType": 16, "SourceName": "trufflehog - git", "DetectorType": 972,
        "DetectorName": "Postgres", "DecoderName": "PLAIN", "Verified": false, "Raw": uri,
        "RawV2": uri, "Redacted": "postgres://app:********@db:5432/x", "ExtraData": null,
        "StructuredData": null
    });
    let report = env.file("trufflehog.jsonl", format!("{line}\n").as_bytes());
    let out = env
        .run(&["ingest", "trufflehog", path_str(&report), "--wait"])
        .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The URI and the password in it were published; the password matched.
    assert!(stdout.contains("2 published"), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "finding 1 matched: {id} version {version} by the password in a URI, revoking"
        )),
        "{stdout}"
    );
    assert!(!stdout.contains(&value));
    assert_revoked(&env, &events, id, version).await;
}

#[tokio::test]
async fn empty_reports_are_clean_scans_and_a_wrong_format_names_the_right_one() {
    let env = Env::start().await;
    for format in [
        "auto",
        "gitleaks",
        "betterleaks",
        "trufflehog",
        "kingfisher",
        "secretlint",
        "sarif",
        "detect-secrets",
        "github",
        "generic",
    ] {
        for empty in [&b""[..], b"  \n\t\n"] {
            let out = ingest_stdin(&env, None, &[format], empty).await;
            assert!(
                out.status.success(),
                "{format}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(String::from_utf8_lossy(&out.stdout).contains("0 published"));
        }
    }
    let kingfisher =
        serde_json::to_vec(&json!({"findings": [kingfisher_record("FAKE-x-0001", "a")]})).unwrap();
    let out = ingest_stdin(&env, None, &["gitleaks"], &kingfisher).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("this looks like a kingfisher report (use `keyloop ingest kingfisher`)"),
        "{stderr}"
    );
    assert!(!stderr.contains("gitleaks --report-format"), "{stderr}");
    let out = ingest_stdin(&env, None, &["auto", "--json"], &kingfisher).await;
    assert_eq!(json_of(&out)["format"], "kingfisher");
    assert_eq!(json_of(&out)["format_detected"], true);
    let out = ingest_stdin(&env, None, &["auto"], b"Found 2 secrets\n").await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot tell which tool wrote it"));
}

#[tokio::test]
async fn wait_as_the_detector_user_prints_each_outcome_and_fails_on_unmatched() {
    let env = Env::start_secured().await;
    let fleet: Vec<_> = FLEET
        .iter()
        .map(|role| env.worker_as(role, role, &[role]))
        .collect();
    let events = Events::subscribe(&env.bus).await;
    let value = env.register_and_reveal("svc/waited").await;
    let version = current(&env, "svc/waited").await;
    let report = json!({"findings": [
        kingfisher_record(&value, "a.sh"),
        kingfisher_record("FAKE-unmanaged-0001-not-a-keyloop-value", "b.sh"),
    ]});
    let report = serde_json::to_vec(&report).unwrap();
    let args = ["kingfisher", "--wait", "--json", "--fail-on-unmatched"];
    let out = ingest_stdin(&env, Some("detector"), &args, &report).await;
    assert_eq!(
        out.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = json_of(&out);
    let outcomes = &summary["outcomes"];
    assert_eq!(
        (outcomes["matched"].clone(), outcomes["unmatched"].clone()),
        (json!(1), json!(1))
    );
    assert_eq!(outcomes["findings"][0]["credential"], "svc/waited");
    assert_eq!(outcomes["findings"][1]["outcome"], "unmatched");
    assert!(!summary.to_string().contains(&value));
    assert_revoked(&env, &events, "svc/waited", version).await;

    // Again: both leaks are in the stream already; nothing is awaited, nothing fails.
    let out = ingest_stdin(&env, Some("detector"), &args, &report).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json_of(&out)["outcomes"]["already_ingested"], 2);

    // No leak-responder: the outcome does not come, exit 4 after the timeout.
    for worker in fleet {
        assert!(worker.stop().await.success());
    }
    let fresh =
        serde_json::to_vec(&json!({"findings": [kingfisher_record("FAKE-late-0002", "c")]}))
            .unwrap();
    let out = ingest_stdin(
        &env,
        Some("detector"),
        &["auto", "--wait", "--timeout", "1s"],
        &fresh,
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("no outcome within 1s"), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("finding 1 timed out"));

    let log = std::fs::read_to_string(env.server.as_ref().unwrap().dir().join("nats-server.log"))
        .unwrap_or_default();
    let violations: Vec<_> = log.lines().filter(|l| l.contains("Violation")).collect();
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}
