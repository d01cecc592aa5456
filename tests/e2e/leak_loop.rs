//! The leak → revoke → rotate loop through the CLI and a worker process, for each detector
//! format that carries or hashes the value; deduplication, unmatched and inert leaks; one
//! revocation and one rotation however many leaks name a version; bad input.

use crate::harness::{Env, Events, gitleaks_report, lifecycle, path_str, stream_messages};
use futures::StreamExt;
use keyloop_core::event::{CloudEvent, REVOKE_COMMAND_TYPE, RevokeCommand};
use keyloop_core::{Fingerprint, LifecycleEvent, LifecycleKind, RevokeReason, Secret, Stage};
use std::time::Duration;

const ALL_ROLES: [&str; 3] = ["leak-responder", "rotator", "revoker"];

/// Ingests `report` as `format` and returns the leak id it published.
async fn ingest(env: &Env, format: &str, report: &[u8]) -> serde_json::Value {
    let path = env.file(&format!("report-{format}-{}", uuid::Uuid::now_v7()), report);
    let out = env.ok(&["ingest", format, path_str(&path), "--json"]).await;
    serde_json::from_str(out.trim()).expect("ingest --json prints one JSON object")
}

/// Waits for the leak of `old_value` of credential `id` to be revoked and rotated, and checks
/// every promise of the loop.
async fn assert_leak_handled(env: &Env, events: &Events, id: &str, old_value: &str, leak_id: &str) {
    let old_version = env.credential(id).await.versions[0].id;
    let (id_s, leak) = (id.to_owned(), leak_id.to_owned());
    events
        .wait("revoked then rotated", Duration::from_secs(5), move |evs| {
            evs.iter().any(|e| {
                e.data.kind == LifecycleKind::Rotated
                    && e.subject.as_deref() == Some(id_s.as_str())
                    && e.correlationid.as_deref() == Some(leak.as_str())
            })
        })
        .await;

    let cred = env.credential(id).await;
    let old = cred.version(old_version).unwrap();
    assert_eq!(old.stage, Stage::Revoked);
    assert_eq!(old.revoke_reason, Some(RevokeReason::Leak));
    let current = cred.current().expect("a new current version");
    assert_ne!(current.id, old_version);
    assert_eq!(
        cred.versions
            .iter()
            .filter(|v| v.stage == Stage::Current)
            .count(),
        1
    );

    let stored = lifecycle(&env.bus).await;
    let about: Vec<_> = stored
        .iter()
        .filter(|e| e.subject.as_deref() == Some(id))
        .collect();
    let revoked = about
        .iter()
        .position(|e| e.data.kind == LifecycleKind::Revoked && e.data.version == Some(old_version))
        .expect("revoked event stored");
    let rotated = about
        .iter()
        .position(|e| e.data.kind == LifecycleKind::Rotated && e.data.version == Some(current.id))
        .expect("rotated event stored");
    assert!(
        revoked < rotated,
        "revoked must precede rotated in the audit log"
    );
    for i in [revoked, rotated] {
        assert_eq!(
            about[i].correlationid.as_deref(),
            Some(leak_id),
            "{:?}",
            about[i].data.kind
        );
    }
    let ttr = about[revoked]
        .data
        .time_to_revoke_ms
        .expect("revoked carries time_to_revoke_ms");
    assert!(ttr < 5_000, "time to revoke {ttr} ms");

    let new_value = env.ok(&["credential", "reveal", id]).await;
    assert_ne!(new_value.trim_end(), old_value);
    assert!(keyloop_core::value_format::is_valid_checksum(
        new_value.trim_end()
    ));
}

#[tokio::test]
async fn gitleaks_leak_of_current_version_is_revoked_before_rotated_and_replaced() {
    let env = Env::start().await;
    let _worker = env.worker("worker", &ALL_ROLES);
    let value = env.register_and_reveal("saas/stripe-payouts").await;
    env.ok(&["credential", "register", "pg/untouched"]).await;
    let events = Events::subscribe(&env.bus).await;

    let report = ingest(&env, "gitleaks", &gitleaks_report(&value, "deploy/.env")).await;
    assert_eq!(report["published"], 1);
    let leak_id = report["leak_ids"][0].as_str().unwrap();
    assert_leak_handled(&env, &events, "saas/stripe-payouts", &value, leak_id).await;

    // A revocation never hits what it was not aimed at.
    let untouched = env.credential("pg/untouched").await;
    assert_eq!(untouched.versions.len(), 1);
    assert_eq!(untouched.versions[0].stage, Stage::Current);
}

#[tokio::test]
async fn detect_secrets_baseline_matches_by_sha1_alone() {
    let env = Env::start().await;
    let _worker = env.worker("worker", &ALL_ROLES);
    let value = env.register_and_reveal("ci/deploy-token").await;
    let events = Events::subscribe(&env.bus).await;
    let sha1 = Fingerprint::of(&Secret::from(value.as_str())).sha1.unwrap();
    let baseline = serde_json::json!({
        "version": "1.5.0", "plugins_used": [{"name": "KeywordDetector"}], "filters_used": [],
        "results": {"ci/deploy.sh": [{"type": "Secret Keyword", "filename": "ci/deploy.sh",
            "hashed_secret": sha1, "is_verified": false, "line_number": 9}]},
        "generated_at": "2026-11-29T00:00:00Z"
    });
    let report = ingest(
        &env,
        "detect-secrets",
        &serde_json::to_vec(&baseline).unwrap(),
    )
    .await;
    let leak_id = report["leak_ids"][0].as_str().unwrap();
    assert_leak_handled(&env, &events, "ci/deploy-token", &value, leak_id).await;
}

#[tokio::test]
async fn trufflehog_lines_are_matched_and_log_lines_skipped() {
    let env = Env::start().await;
    let _worker = env.worker("worker", &ALL_ROLES);
    let value = env.register_and_reveal("saas/github-bot").await;
    let events = Events::subscribe(&env.bus).await;
    let finding = serde_json::json!({
        "SourceMetadata": {"Data": {"Git": {"commit": "abc123", "file": "bot/config.yml",
            "repository": "https://github.com/acme/bot.git", "line": 4}}},
        "SourceID": 1, "SourceType": 16, "SourceName": "trufflehog - git", "DetectorType": 8,
        "DetectorName": "Github", "DecoderName": "PLAIN", "Verified": false, "Raw": value,
        "RawV2": "", "Redacted": "", "ExtraData": null, "StructuredData": null
    });
    let lines = format!(
        "{}\n{}\n",
        r#"{"level":"info-0","ts":"2026-11-29T00:00:00Z","logger":"trufflehog","msg":"running source"}"#,
        finding
    );
    let report = ingest(&env, "trufflehog", lines.as_bytes()).await;
    assert_eq!(report["published"], 1);
    assert_eq!(report["rejected"].as_array().unwrap().len(), 0);
    let leak_id = report["leak_ids"][0].as_str().unwrap();
    assert_leak_handled(&env, &events, "saas/github-bot", &value, leak_id).await;
}

#[tokio::test]
async fn same_report_twice_revokes_nothing_more_and_unknown_or_dead_values_revoke_nothing() {
    let env = Env::start().await;
    let _worker = env.worker("worker", &ALL_ROLES);
    let value = env.register_and_reveal("saas/payments").await;
    let events = Events::subscribe(&env.bus).await;
    let report_bytes = gitleaks_report(&value, "a.env");
    let first = ingest(&env, "gitleaks", &report_bytes).await;
    let leak_id = first["leak_ids"][0].as_str().unwrap().to_owned();
    assert_leak_handled(&env, &events, "saas/payments", &value, &leak_id).await;

    let second = ingest(&env, "gitleaks", &report_bytes).await;
    assert_eq!(second["published"], 0);
    assert_eq!(second["deduplicated"], 1);

    // The dead value found somewhere else: a new leak, but the version is already revoked.
    let elsewhere = ingest(&env, "gitleaks", &gitleaks_report(&value, "b.env")).await;
    let inert_id = elsewhere["leak_ids"][0].as_str().unwrap().to_owned();
    // A value keyloop never issued.
    let unknown = ingest(
        &env,
        "generic",
        br#"{"secret":"not-a-keyloop-value-1234","repo":"acme/x"}"#,
    )
    .await;
    let unknown_id = unknown["leak_ids"][0].as_str().unwrap().to_owned();
    let (a, b) = (inert_id.clone(), unknown_id.clone());
    events
        .wait(
            "leak_inert and leak_unmatched",
            Duration::from_secs(5),
            move |evs| {
                let has = |kind, id: &str| {
                    evs.iter()
                        .any(|e| e.data.kind == kind && e.correlationid.as_deref() == Some(id))
                };
                has(LifecycleKind::LeakInert, &a) && has(LifecycleKind::LeakUnmatched, &b)
            },
        )
        .await;

    let stored = lifecycle(&env.bus).await;
    let count = |kind| stored.iter().filter(|e| e.data.kind == kind).count();
    assert_eq!(
        count(LifecycleKind::Revoked),
        1,
        "exactly one revocation in the audit log"
    );
    assert_eq!(count(LifecycleKind::Rotated), 1);
    assert_eq!(count(LifecycleKind::LeakMatched), 1);
    let cred = env.credential("saas/payments").await;
    assert_eq!(cred.versions.len(), 2);
}

#[tokio::test]
async fn malformed_reports_fail_ingest_with_a_reason_and_publish_nothing() {
    let env = Env::start().await;
    let bad = env.file("bad.json", b"{ this is not json");
    let out = env.run(&["ingest", "gitleaks", path_str(&bad)]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a valid gitleaks report"), "{stderr}");

    let out = env
        .run(&["ingest", "gitleaks", "/nonexistent/report.json"])
        .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read report"));

    let out = env.run(&["ingest", "nessus", path_str(&bad)]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown format"));

    // One good finding and one without a value: the good one is published, the run says so
    // and exits non-zero so a pipeline notices the rejected one.
    let mixed = env.file(
        "mixed.jsonl",
        b"{\"secret\":\"some-value-123\"}\n{\"repo\":\"acme/x\"}\n",
    );
    let out = env.run(&["ingest", "generic", path_str(&mixed)]).await;
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 published"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 2"));

    let events = stream_messages(&env.bus, &env.bus.topology.events_stream()).await;
    assert_eq!(events.len(), 1, "only the valid finding reached the bus");
}

#[tokio::test]
async fn malformed_leak_messages_go_to_the_dlq_with_a_reason_and_the_worker_keeps_going() {
    let env = Env::start().await;
    let _worker = env.worker("worker", &ALL_ROLES);
    let value = env.register_and_reveal("saas/after-poison").await;
    let events = Events::subscribe(&env.bus).await;
    let subject = env.bus.topology.leak_detected();
    let mut dlq_watch = env.bus.client.subscribe("keyloop.dlq.>").await.unwrap();
    env.bus.client.flush().await.unwrap();
    for poison in [
        &b"{\"hello\":\"world\"}"[..],
        b"not even json",
        br#"{"specversion":"1.0","id":"x1","source":"t","type":"dev.example.other","time":"2026-11-29T00:00:00Z","datacontenttype":"application/json","data":{"fingerprint":{},"detector":"t"}}"#,
    ] {
        env.bus.js.publish(subject.clone(), poison.to_vec().into()).await.unwrap().await.unwrap();
    }
    let report = ingest(&env, "gitleaks", &gitleaks_report(&value, "c.env")).await;
    let leak_id = report["leak_ids"][0].as_str().unwrap();
    assert_leak_handled(&env, &events, "saas/after-poison", &value, leak_id).await;

    // Wait for the three DLQ writes (they may land after the good leak's rotation).
    for _ in 0..3 {
        tokio::time::timeout(Duration::from_secs(5), dlq_watch.next())
            .await
            .expect("a DLQ message within 5 s")
            .expect("subscription open");
    }
    let dlq = stream_messages(&env.bus, &env.bus.topology.dlq_stream()).await;
    assert_eq!(dlq.len(), 3, "every poison message is in the DLQ: {dlq:?}");
    let reason = |m: &crate::harness::Stored| {
        m.headers
            .iter()
            .find(|(k, _)| k == "Keyloop-Dlq-Reason")
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert!(
        dlq.iter()
            .all(|m| m.subject == "keyloop.dlq.leak-responder")
    );
    assert!(dlq.iter().all(|m| {
        m.headers
            .iter()
            .any(|(k, v)| k == "Keyloop-Original-Subject" && v == &subject)
    }));
    // Handled concurrently, so find each by its payload (kept whole) rather than by order.
    let by_payload = |prefix: &[u8]| {
        let m = dlq
            .iter()
            .find(|m| m.payload.starts_with(prefix))
            .expect("poison message in the DLQ");
        reason(m)
    };
    let r = by_payload(b"{\"hello\"");
    assert!(r.contains("malformed") && r.contains("schema"), "{r}");
    let r = by_payload(b"not even json");
    assert!(r.contains("JSON syntax"), "{r}");
    let r = by_payload(b"{\"specversion\"");
    assert!(r.contains("unknown event type"), "{r}");
}

/// A gitleaks report with one finding of `secret` in each of `files`.
fn gitleaks_findings(secret: &str, files: &[&str]) -> Vec<u8> {
    let findings: Vec<serde_json::Value> = files
        .iter()
        .flat_map(|file| {
            let one: Vec<serde_json::Value> =
                serde_json::from_slice(&gitleaks_report(secret, file)).unwrap();
            one
        })
        .collect();
    serde_json::to_vec(&findings).unwrap()
}

/// Waits for `kind` about credential `id` to be seen `count` times.
async fn wait_for(events: &Events, what: &str, kind: LifecycleKind, id: &str, count: usize) {
    let id = id.to_owned();
    events
        .wait(what, Duration::from_secs(10), move |evs| {
            evs.iter()
                .filter(|e| e.data.kind == kind && e.subject.as_deref() == Some(id.as_str()))
                .count()
                >= count
        })
        .await;
}

/// Lets the loop settle so that the absence of a second revocation or rotation is observed, not
/// slept for: a marker credential is leaked and waited for through to its `rotated`, and then
/// the consumers of the three roles are waited for until none has a message pending or unacked
/// (a worker acks only after its events are stored).
async fn settle(env: &Env, events: &Events) {
    let marker = format!("saas/marker-{}", uuid::Uuid::now_v7().simple());
    let value = env.register_and_reveal(&marker).await;
    let report = env.file(
        &format!("{}.jsonl", marker.replace('/', "-")),
        format!("{{\"secret\":\"{value}\"}}\n").as_bytes(),
    );
    env.ok(&["ingest", "generic", path_str(&report)]).await;
    wait_for(
        events,
        "the marker's rotation",
        LifecycleKind::Rotated,
        &marker,
        1,
    )
    .await;
    env.wait_loop_idle(Duration::from_secs(10)).await;
}

/// The stored lifecycle events of kind `kind` about credential `id`.
fn of_kind<'a>(
    stored: &'a [LifecycleEvent],
    kind: LifecycleKind,
    id: &str,
) -> Vec<&'a LifecycleEvent> {
    stored
        .iter()
        .filter(|e| e.data.kind == kind && e.subject.as_deref() == Some(id))
        .collect()
}

#[tokio::test]
async fn a_report_naming_a_value_three_times_revokes_and_rotates_it_once() {
    let env = Env::start().await;
    let _worker = env.worker("worker", &ALL_ROLES);
    let id = "saas/thrice";
    let value = env.register_and_reveal(id).await;
    let events = Events::subscribe(&env.bus).await;

    let report = ingest(
        &env,
        "gitleaks",
        &gitleaks_findings(&value, &["a.env", "b/c.env", "d.env"]),
    )
    .await;
    assert_eq!(report["findings"], 3);
    assert_eq!(report["published"], 1, "one leak event per distinct value");
    assert_eq!(report["repeated"], 2);
    let leak_id = report["leak_ids"][0].as_str().unwrap();
    assert_leak_handled(&env, &events, id, &value, leak_id).await;
    settle(&env, &events).await;

    let stored = lifecycle(&env.bus).await;
    assert_eq!(of_kind(&stored, LifecycleKind::LeakMatched, id).len(), 1);
    assert_eq!(of_kind(&stored, LifecycleKind::Revoked, id).len(), 1);
    assert_eq!(of_kind(&stored, LifecycleKind::Rotated, id).len(), 1);
    assert_eq!(env.credential(id).await.versions.len(), 2);
}

#[tokio::test]
async fn the_same_value_in_two_reports_of_two_formats_is_revoked_and_rotated_once() {
    let env = Env::start().await;
    // Only the leak-responder at first, so that both leaks are matched while the version is
    // still live: each asks for its revocation, as concurrent findings do.
    let responder = env.worker("responder", &["leak-responder"]);
    let id = "saas/twice";
    let value = env.register_and_reveal(id).await;
    let old_version = env.credential(id).await.versions[0].id;
    let events = Events::subscribe(&env.bus).await;

    let first = ingest(&env, "gitleaks", &gitleaks_report(&value, "deploy/.env")).await;
    let generic = format!("{{\"secret\":\"{value}\",\"repo\":\"acme/ops\"}}\n");
    let second = ingest(&env, "generic", generic.as_bytes()).await;
    let leak_ids = [
        first["leak_ids"][0].as_str().unwrap().to_owned(),
        second["leak_ids"][0].as_str().unwrap().to_owned(),
    ];
    assert_ne!(leak_ids[0], leak_ids[1], "two leaks, one value");
    wait_for(
        &events,
        "both leaks matched",
        LifecycleKind::LeakMatched,
        id,
        2,
    )
    .await;

    let _workers = env.worker("workers", &["revoker", "rotator"]);
    wait_for(&events, "the rotation", LifecycleKind::Rotated, id, 1).await;
    settle(&env, &events).await;

    // What a leak of a still-live version a minute later sends: the same operation's command
    // under a new message id. The version is revoked by that operation: nothing happens again.
    let op = env
        .credential(id)
        .await
        .version(old_version)
        .unwrap()
        .revoked_by
        .clone();
    let resend = RevokeCommand {
        credential: id.parse().unwrap(),
        version: Some(old_version),
        reason: RevokeReason::Leak,
        op_id: op.expect("revoked by an operation"),
        leak_published_at: Some(time::OffsetDateTime::now_utc()),
        then_rotate: true,
        note: None,
        released_by: None,
    };
    let resend = CloudEvent::new(
        uuid::Uuid::now_v7().to_string(),
        "keyloop/test",
        REVOKE_COMMAND_TYPE,
        resend,
    )
    .with_subject(id.to_owned());
    env.bus
        .publish_event(&env.bus.topology.cmd_revoke(), &resend)
        .await
        .unwrap();
    settle(&env, &events).await;

    let stored = lifecycle(&env.bus).await;
    let matched = of_kind(&stored, LifecycleKind::LeakMatched, id);
    assert_eq!(matched.len(), 2, "each leak is a fact for the audit log");
    let revoked = of_kind(&stored, LifecycleKind::Revoked, id);
    assert_eq!(revoked.len(), 1, "one revocation: {revoked:?}");
    let rotated = of_kind(&stored, LifecycleKind::Rotated, id);
    assert_eq!(rotated.len(), 1, "one rotation: {rotated:?}");

    // Both matches point at the one operation, which is the one that revoked the version.
    let cred = env.credential(id).await;
    let old = cred.version(old_version).unwrap();
    assert_eq!(old.stage, Stage::Revoked);
    assert!(old.revoked_by.is_some());
    for m in &matched {
        assert_eq!(m.data.op_id, old.revoked_by, "{m:?}");
    }
    assert_eq!(cred.versions.len(), 2, "one value issued after the leak");
    // The revocation belongs to the leak whose command got through, and its time to revoke
    // counts from that leak's publish.
    let correlation = revoked[0].correlationid.clone().unwrap();
    assert!(leak_ids.contains(&correlation), "{correlation}");
    assert!(revoked[0].data.time_to_revoke_ms.is_some());
    assert_eq!(
        rotated[0].correlationid.as_deref(),
        Some(correlation.as_str())
    );
    drop(responder);
}
