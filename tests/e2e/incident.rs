//! Incident response from the event log after real flows: one report gets one batch id that
//! every finding and everything it causes carries; `keyloop incident` names the right
//! credential, version, time to revoke (from the first detection of the value) and the later
//! tries of the leaked value, as markdown, JSON and a well-formed HTML page; `keyloop replay`
//! filters by type, stream, lease (short ids too), hides ticks unless asked, shows DLQ entries
//! without their payload, and follows what is stored after it starts.

use crate::harness::{Env, Events, gitleaks_report, lifecycle, path_str};
use keyloop_core::{LifecycleEvent, LifecycleKind};
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

const WAIT: Duration = Duration::from_secs(30);

/// A gitleaks report with one finding per `(value, file)`, all in one commit.
fn report(findings: &[(&str, &str)]) -> Vec<u8> {
    let mut all = Vec::new();
    for (value, file) in findings {
        let one: Vec<serde_json::Value> =
            serde_json::from_slice(&gitleaks_report(value, file)).unwrap();
        all.extend(one);
    }
    serde_json::to_vec(&all).unwrap()
}

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not one JSON value ({e}): {out}"))
}

/// Every start tag has its end tag, in order: the page is well-formed XML.
fn assert_well_formed(page: &str) {
    let body = page
        .strip_prefix("<!DOCTYPE html>\n")
        .expect("an HTML5 doctype");
    let mut open: Vec<String> = Vec::new();
    let mut elements = 0;
    for token in xmlparser::Tokenizer::from(body) {
        match token.unwrap_or_else(|e| panic!("the HTML is not well-formed: {e}")) {
            xmlparser::Token::ElementStart { local, .. } => {
                open.push(local.as_str().to_owned());
                elements += 1;
            }
            xmlparser::Token::ElementEnd { end, .. } => match end {
                xmlparser::ElementEnd::Open => {}
                xmlparser::ElementEnd::Empty => {
                    open.pop();
                }
                xmlparser::ElementEnd::Close(_, name) => {
                    assert_eq!(
                        open.pop().as_deref(),
                        Some(name.as_str()),
                        "unbalanced </{name}>"
                    );
                }
            },
            _ => {}
        }
    }
    assert!(open.is_empty(), "unclosed elements: {open:?}");
    assert!(elements > 20, "a real page: {elements} elements");
}

#[tokio::test]
async fn an_incident_report_names_the_credential_version_time_to_revoke_and_later_tries() {
    let env = Env::start().await;
    let _w = env.worker("worker", &["leak-responder", "revoker", "rotator"]);
    let events = Events::subscribe(&env.bus).await;
    let value = env.register_and_reveal("svc/payments").await;
    let leaked_version = env.credential("svc/payments").await.versions[0].id;

    // One report, two findings: the managed value and one keyloop does not know.
    let path = env.file(
        "report.json",
        &report(&[
            (&value, "deploy/prod.env"),
            ("not-managed-Xy9Qv2", "notes.txt"),
        ]),
    );
    let ingested = json(
        &env.ok(&["ingest", "gitleaks", path_str(&path), "--json"])
            .await,
    );
    let batch = ingested["batch"].as_str().unwrap().to_owned();
    assert!(batch.starts_with("batch-"), "{ingested}");
    let leak_ids: Vec<String> = ingested["leak_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(leak_ids.len(), 2);
    events
        .wait("rotated after the leak", WAIT, |e| {
            e.iter().any(|e| e.data.kind == LifecycleKind::Rotated)
                && e.iter()
                    .any(|e| e.data.kind == LifecycleKind::LeakUnmatched)
        })
        .await;
    // Someone tries the dead value afterwards: on record, with who asked.
    assert!(!env.verify_value("svc/payments", &value).await);
    events
        .wait("verify_denied", WAIT, |e| {
            e.iter().any(|e| e.data.kind == LifecycleKind::VerifyDenied)
        })
        .await;

    // Everything the report caused carries its batch id.
    let stored = lifecycle(&env.bus).await;
    let caused: Vec<&LifecycleEvent> = stored
        .iter()
        .filter(|e| {
            e.correlationid
                .as_ref()
                .is_some_and(|c| leak_ids.contains(c))
        })
        .collect();
    assert!(
        caused.len() >= 4,
        "leak_matched, revoked, rotation_started, rotated, …"
    );
    for e in &caused {
        assert_eq!(
            e.batchid.as_deref(),
            Some(batch.as_str()),
            "{:?}",
            e.data.kind
        );
    }
    let replayed = env.ok(&["replay", "--correlation", &batch, "--json"]).await;
    let kinds: Vec<String> = replayed
        .lines()
        .filter_map(|l| json(l)["data"]["kind"].as_str().map(str::to_owned))
        .collect();
    for k in ["leak_matched", "leak_unmatched", "revoked", "rotated"] {
        assert!(
            kinds.iter().any(|x| x == k),
            "replay of the batch has {k}: {kinds:?}"
        );
    }

    let matched_leak = stored
        .iter()
        .find(|e| e.data.kind == LifecycleKind::LeakMatched)
        .unwrap()
        .correlationid
        .clone()
        .unwrap();
    let revoked = stored
        .iter()
        .find(|e| e.data.kind == LifecycleKind::Revoked)
        .unwrap();
    let report = json(
        &env.ok(&["incident", "--leak", &matched_leak, "--json"])
            .await,
    );
    let f = &report["findings"][0];
    assert_eq!(f["leak_id"], matched_leak.as_str());
    assert_eq!(f["outcome"], "matched");
    assert_eq!(f["credential"], "svc/payments");
    assert_eq!(f["version"], leaked_version.to_string());
    assert_eq!(f["stage"], "current");
    assert_eq!(f["batch"], batch.as_str());
    assert_eq!(f["location"]["file"], "deploy/prod.env");
    let detected: time::OffsetDateTime = time::OffsetDateTime::parse(
        f["first_detected_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let ttr = f["time_to_revoke_ms"].as_u64().unwrap();
    let expected = (revoked.time - detected).whole_milliseconds();
    assert!(
        (i128::from(ttr) - expected).abs() <= 1,
        "{ttr} ms against {expected}"
    );
    assert!(f["rotated_at"].is_string() && f["new_version"].is_string());
    let after = f["after"].as_array().unwrap();
    assert!(
        after
            .iter()
            .any(|a| a["kind"] == "verify_denied" && a["actor"].is_string()),
        "the later try is listed with its actor: {after:?}"
    );
    // The other finding of the same report, and what happened to it.
    let other = &report["findings"][1];
    assert_eq!(other["outcome"], "unmatched");
    assert_eq!(other["location"]["file"], "notes.txt");
    let text = serde_json::to_string(&report).unwrap();
    assert!(!text.contains(&value), "no value in the report");

    // For people: markdown that says the same.
    let md = env.ok(&["incident", "--leak", &matched_leak]).await;
    println!("{md}");
    assert!(
        md.starts_with(&format!("# Incident: leak {matched_leak}")),
        "{md}"
    );
    for needle in [
        "credential `svc/payments`",
        &format!("**{ttr} ms** after the first detection"),
        "verify_denied",
        "Same report or commit",
        "## Timeline",
    ] {
        assert!(md.contains(needle), "{needle} in:\n{md}");
    }
    // The whole report by its batch id, and an HTML page with the timeline drawn.
    let page = env.file("incident.html", b"");
    let by_batch = json(
        &env.ok(&[
            "incident",
            "--report",
            &batch,
            "--html",
            path_str(&page),
            "--json",
        ])
        .await,
    );
    assert_eq!(by_batch["findings"].as_array().unwrap().len(), 2);
    let html = std::fs::read_to_string(&page).unwrap();
    assert_well_formed(&html);
    assert!(html.contains("<svg") && html.contains("svc/payments") && !html.contains(&value));
    assert!(
        !html.contains("<script") && !html.contains("src=") && !html.contains("href="),
        "self-contained: no script, no external resource"
    );

    // By credential too; an unknown id is a clear refusal with its own exit code.
    let by_cred = json(
        &env.ok(&["incident", "--credential", "svc/payments", "--json"])
            .await,
    );
    assert_eq!(by_cred["findings"].as_array().unwrap().len(), 1);
    let out = env.run(&["incident", "--leak", "leak-0000"]).await;
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no leak event leak-0000") && err.contains("keyloop replay"),
        "{err}"
    );
}

#[tokio::test]
async fn replay_filters_by_type_stream_and_lease_hides_ticks_and_follows() {
    let env = Env::start().await;
    let _w = env.worker(
        "worker",
        &[
            "leak-responder",
            "revoker",
            "rotator",
            "jit-issuer",
            "sweeper",
        ],
    );
    let events = Events::subscribe(&env.bus).await;
    let value = env.register_and_reveal("svc/replayed").await;
    let path = env.file("r.json", &gitleaks_report(&value, "a.env"));
    env.ok(&["ingest", "gitleaks", path_str(&path)]).await;
    env.ok(&["tick"]).await;
    let lease = json(
        &env.ok(&[
            "task", "start", "t-replay", "--agent", "a", "--scope", "read", "--ttl", "5m", "--json",
        ])
        .await,
    );
    let lease_id = lease["lease_id"].as_str().unwrap().to_owned();
    // Garbage on a consumed subject: the DLQ keeps it with the reason.
    env.bus
        .client
        .publish(
            "keyloop.leak.detected",
            "{\"secret\": \"planted-5ecret\"".into(),
        )
        .await
        .unwrap();
    env.bus
        .client
        .publish(
            "keyloop.leak.detected",
            "{\"specversion\": \"1.0\", \"data\": {\"token\": \"planted-t0ken\"}}".into(),
        )
        .await
        .unwrap();
    events
        .wait("rotated", WAIT, |e| {
            e.iter().any(|e| e.data.kind == LifecycleKind::Rotated)
        })
        .await;
    let deadline = std::time::Instant::now() + WAIT;
    while env
        .ok(&["replay", "--stream", "dlq", "--json"])
        .await
        .lines()
        .count()
        < 2
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the garbage never reached the DLQ"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let human = env.ok(&["replay"]).await;
    let mut lines = human.lines();
    assert!(
        lines.next().unwrap().starts_with("TIME (UTC)"),
        "a header: {human}"
    );
    assert!(
        !human.contains("schedule.tick"),
        "ticks are hidden: {human}"
    );
    assert!(
        human.contains("leak.detected") && human.contains("dlq"),
        "{human}"
    );
    let with_ticks = env.ok(&["replay", "--ticks"]).await;
    assert!(with_ticks.contains("schedule.tick"), "{with_ticks}");

    let only: Vec<serde_json::Value> = env
        .ok(&["replay", "--type", "revoked", "--type", "rotated", "--json"])
        .await
        .lines()
        .map(json)
        .collect();
    assert!(!only.is_empty());
    assert!(
        only.iter()
            .all(|e| e["data"]["kind"] == "revoked" || e["data"]["kind"] == "rotated")
    );
    let out = env.run(&["replay", "--type", "revokd"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--type revokd"));

    let dlq = env.ok(&["replay", "--stream", "dlq", "--json"]).await;
    let entry = json(dlq.lines().next().unwrap());
    assert_eq!(entry["role"], "leak-responder");
    assert_eq!(entry["original_subject"], "keyloop.leak.detected");
    assert!(
        entry["reason"].as_str().unwrap().contains("malformed"),
        "{entry}"
    );
    assert!(
        !dlq.contains("planted-5ecret") && !dlq.contains("planted-t0ken"),
        "no DLQ payload is shown"
    );

    // `dlq list` and `dlq show`: the entries, and each with its secrets redacted.
    let listed: Vec<serde_json::Value> = env
        .ok(&["dlq", "list", "--role", "leak-responder", "--json"])
        .await
        .lines()
        .map(json)
        .collect();
    assert_eq!(listed.len(), 2, "{listed:?}");
    let human = env.ok(&["dlq", "list"]).await;
    assert!(
        human.starts_with("SEQ") && human.contains("keyloop.leak.detected"),
        "{human}"
    );
    assert!(
        env.ok(&["dlq", "list", "--role", "revoker"])
            .await
            .trim()
            .is_empty()
    );
    for entry in &listed {
        let seq = entry["sequence"].to_string();
        let shown = env.ok(&["dlq", "show", &seq, "--json"]).await;
        assert!(
            !shown.contains("planted-5ecret") && !shown.contains("planted-t0ken"),
            "{shown}"
        );
        let shown = json(&shown);
        assert_eq!(
            shown["headers"]["Keyloop-Original-Subject"],
            "keyloop.leak.detected"
        );
        let payload = &shown["payload"];
        assert!(
            payload["data"]["token"] == "[redacted]" || payload["not_json"]["bytes"].is_u64(),
            "{payload}"
        );
    }
    let out = env.run(&["dlq", "show", "999999"]).await;
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no DLQ entry 999999"));

    // A lease by its full id and by the 8 hex the human output prints.
    let short = &lease_id[lease_id.len() - 8..];
    let by_full = env.ok(&["replay", "--lease", &lease_id, "--json"]).await;
    let by_short = env.ok(&["replay", "--lease", short, "--json"]).await;
    assert_eq!(by_full, by_short);
    assert!(by_full.lines().count() >= 1 && by_full.contains("\"issued\""));
    assert!(
        env.ok(&["replay", "--type", "issued"])
            .await
            .contains(&format!("lease={short}"))
    );

    // --follow prints what is stored after it started.
    let mut follow = env
        .keyloop()
        .args(["replay", "--follow", "--type", "issued", "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = tokio::io::BufReader::new(follow.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(WAIT, out.next_line())
        .await
        .unwrap()
        .unwrap();
    assert!(first.unwrap().contains(&lease_id), "the history first");
    let later = json(
        &env.ok(&[
            "task", "start", "t-later", "--agent", "a", "--scope", "read", "--ttl", "5m", "--json",
        ])
        .await,
    );
    let next = tokio::time::timeout(WAIT, out.next_line())
        .await
        .expect("the new event while following")
        .unwrap()
        .unwrap();
    assert!(next.contains(later["lease_id"].as_str().unwrap()), "{next}");
    follow.kill().await.unwrap();
}

#[tokio::test]
async fn the_inventory_rebuilt_from_the_lifecycle_matches_and_a_tampered_record_is_found() {
    let env = Env::start().await;
    let _w = env.worker("worker", &["leak-responder", "revoker", "rotator"]);
    let events = Events::subscribe(&env.bus).await;
    let value = env.register_and_reveal("svc/rebuilt").await;
    env.register_and_reveal("svc/untouched").await;
    let path = env.file("r.json", &gitleaks_report(&value, "a.env"));
    env.ok(&["ingest", "gitleaks", path_str(&path)]).await;
    events
        .wait("rotated", WAIT, |e| {
            e.iter().any(|e| e.data.kind == LifecycleKind::Rotated)
        })
        .await;
    let clean = json(
        &env.ok(&["inventory", "rebuild", "--dry-run", "--json"])
            .await,
    );
    assert_eq!(clean["differences"], serde_json::json!([]), "{clean}");
    assert_eq!(clean["credentials"], 2);
    assert_eq!(clean["versions"], 3, "two first versions and one rotation");

    // A record changed behind the lifecycle's back: the current version made previous.
    let id: keyloop_core::CredentialId = "svc/untouched".parse().unwrap();
    let inventory = env.bus.inventory().await.unwrap();
    let tampered = inventory
        .update(&id, |c| {
            let v = c.versions.iter_mut().next().unwrap();
            v.stage = keyloop_core::Stage::Previous;
            Ok(keyloop_nats::Change::Write(v.id))
        })
        .await
        .unwrap();
    let out = env.run(&["inventory", "rebuild", "--dry-run"]).await;
    assert_eq!(out.status.code(), Some(3), "differences exit 3");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("svc/untouched"))
        .unwrap_or_else(|| panic!("the difference is listed: {text}"));
    assert!(
        line.contains(&tampered.to_string()[28..])
            && line.contains("stage")
            && line.contains("current")
            && line.contains("previous"),
        "{line}"
    );
    // Writing a rebuild back is refused: the lifecycle does not carry policies and settings.
    let out = env.run(&["inventory", "rebuild"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--dry-run"));
}

#[tokio::test]
async fn a_redrive_dry_run_says_what_would_happen_now_and_does_nothing() {
    let env = Env::start().await;
    // No leak-responder yet: the leaks are recorded and nothing acts on them.
    let value = env.register_and_reveal("svc/late").await;
    let path = env.file(
        "r.json",
        &report(&[(&value, "a.env"), ("not-managed-Qw3rty9", "b.env")]),
    );
    let ingested = json(
        &env.ok(&["ingest", "gitleaks", path_str(&path), "--json"])
            .await,
    );
    let batch = ingested["batch"].as_str().unwrap();
    let before = lifecycle(&env.bus).await.len();

    let out = env
        .ok(&["redrive", "--dry-run", "--report", batch, "--json"])
        .await;
    let rows: Vec<serde_json::Value> = out.lines().map(json).collect();
    assert_eq!(rows.len(), 2, "{out}");
    let version = env.credential("svc/late").await.versions[0].id.to_string();
    let managed = rows.iter().find(|r| r["credential"] == "svc/late").unwrap();
    assert_eq!(managed["now"], "would_revoke");
    assert_eq!(managed["version"], version.as_str());
    assert_eq!(managed["stage"], "current");
    assert_eq!(managed["then"], "none");
    let other = rows.iter().find(|r| r["credential"].is_null()).unwrap();
    assert_eq!(other["now"], "unmatched");
    assert!(!out.contains(&value));

    // Nothing happened: no event, and the value still works.
    assert_eq!(
        lifecycle(&env.bus).await.len(),
        before,
        "a dry run publishes nothing"
    );
    assert!(env.verify_value("svc/late", &value).await);
    let human = env.ok(&["redrive", "--dry-run", "--report", batch]).await;
    assert!(
        human.contains("would_revoke") && human.contains("1 would be revoked now"),
        "{human}"
    );
    let out = env.run(&["redrive", "--report", batch]).await;
    assert!(!out.status.success(), "only --dry-run");
}
