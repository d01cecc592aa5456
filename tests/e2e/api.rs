//! The control plane (`keyloop worker api`) on a secured server, where each NATS user can only
//! speak as itself: the CLI holds no master key and no backend credentials; an actor is
//! refused what the rule table does not give it, and the refusal is recorded; a fetch records
//! who fetched which version; retiring offboards; `credential watch` follows a credential.

use crate::harness::{Env, Events, lifecycle};
use keyloop_core::{LifecycleKind, Stage};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

const WORKER_ROLES: [&str; 2] = ["rotator", "revoker"];

#[tokio::test]
async fn a_fetch_by_a_non_consumer_is_refused_and_recorded_and_a_consumer_fetch_names_its_actor() {
    let env = Env::start_secured().await;
    let _rotator = env.worker_as("rotator", "rotator", &["rotator"]);
    let _revoker = env.worker_as("revoker", "revoker", &["revoker"]);
    // ops registers, owning nothing special: it is an admin.
    env.ok(&["credential", "register", "svc/payments"]).await;

    // The orchestrator is not a consumer: refused, and the audit log says who tried what.
    let out = env
        .keyloop_as("orchestrator-a")
        .args(["credential", "fetch", "svc/payments"])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("orchestrator-a may not fetch svc/payments")
            && stderr.contains("forbidden"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
    let denied: Vec<_> = lifecycle(&env.bus)
        .await
        .into_iter()
        .filter(|e| e.data.kind == LifecycleKind::Denied)
        .collect();
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(denied[0].data.actor.as_deref(), Some("orchestrator-a"));
    assert_eq!(
        denied[0].data.credential.as_ref().map(|c| c.as_str()),
        Some("svc/payments")
    );

    // Nor can it speak as ops: the server drops the publish (a permissions violation), so no
    // reply ever comes.
    let orchestrator = async_nats::ConnectOptions::with_user_and_password(
        "orchestrator-a".into(),
        crate::harness::nats_password("orchestrator-a"),
    )
    .custom_inbox_prefix("_INBOX_orchestrator-a")
    .add_root_certificates(crate::harness::test_certs().ca())
    .require_tls(true)
    .connect(env.server.as_ref().unwrap().url())
    .await
    .unwrap();
    let forged = tokio::time::timeout(
        Duration::from_secs(1),
        orchestrator.request(
            "keyloop.api.ops.fetch",
            br#"{"id":"svc/payments"}"#.to_vec().into(),
        ),
    )
    .await;
    assert!(
        !matches!(forged, Ok(Ok(_))),
        "a request as ops from orchestrator got an answer"
    );
    // Made a consumer, it fetches; the use is recorded with its name and the version.
    env.ok(&[
        "credential",
        "update",
        "svc/payments",
        "--add-consumer",
        "orchestrator-a",
    ])
    .await;
    let out = env
        .keyloop_as("orchestrator-a")
        .args(["credential", "fetch", "svc/payments"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let value = String::from_utf8(out.stdout).unwrap();
    assert!(keyloop_core::value_format::is_valid_checksum(
        value.trim_end()
    ));
    let cred = env.credential("svc/payments").await;
    let used: Vec<_> = lifecycle(&env.bus)
        .await
        .into_iter()
        .filter(|e| e.data.kind == LifecycleKind::Used)
        .collect();
    assert!(
        used.iter()
            .any(|e| e.data.actor.as_deref() == Some("orchestrator-a")
                && e.data.version == cred.current().map(|v| v.id)),
        "{used:?}"
    );
    // A consumer reads; it does not rotate.
    let out = env
        .keyloop_as("orchestrator-a")
        .args(["rotate", "svc/payments"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("forbidden"));
}

#[tokio::test]
async fn the_actor_of_a_rotation_and_a_revocation_is_in_their_events() {
    let env = Env::start_secured().await;
    let _rotator = env.worker_as("rotator", "rotator", &["rotator"]);
    let _revoker = env.worker_as("revoker", "revoker", &["revoker"]);
    env.ok(&["credential", "register", "svc/audited"]).await;
    env.ok(&["rotate", "svc/audited"]).await;
    env.ok(&["revoke", "svc/audited", "--reason", "offboarding test"])
        .await;
    let events = lifecycle(&env.bus).await;
    for kind in [
        LifecycleKind::Created,
        LifecycleKind::Rotated,
        LifecycleKind::Revoked,
    ] {
        let e = events.iter().find(|e| e.data.kind == kind).unwrap();
        assert_eq!(e.data.actor.as_deref(), Some("ops"), "{kind:?}: {e:?}");
    }
    let revoked = events
        .iter()
        .rev()
        .find(|e| e.data.kind == LifecycleKind::Revoked)
        .unwrap();
    assert!(
        revoked
            .data
            .detail
            .as_deref()
            .unwrap_or("")
            .starts_with("offboarding test"),
        "the reason is the detail, not the actor: {revoked:?}"
    );
}

#[tokio::test]
async fn retiring_revokes_every_version_stops_rotation_and_keeps_the_history() {
    let env = Env::start().await;
    let _fleet = env.worker("fleet", &WORKER_ROLES);
    env.ok(&[
        "credential",
        "register",
        "svc/old-service",
        "--max-age",
        "1h",
    ])
    .await;
    env.ok(&["rotate", "svc/old-service"]).await;
    let events = Events::subscribe(&env.bus).await;
    env.ok(&[
        "credential",
        "retire",
        "svc/old-service",
        "--reason",
        "decommissioned",
    ])
    .await;
    events
        .wait("both versions revoked", Duration::from_secs(10), |e| {
            e.iter()
                .filter(|e| e.data.kind == LifecycleKind::Revoked)
                .count()
                >= 2
        })
        .await;
    let cred = env.credential("svc/old-service").await;
    assert!(cred.retired.is_some());
    assert_eq!(cred.versions.len(), 2, "the history stays");
    assert!(cred.versions.iter().all(|v| v.stage == Stage::Revoked));
    assert!(
        lifecycle(&env.bus)
            .await
            .iter()
            .any(|e| e.data.kind == LifecycleKind::Retired)
    );
    let out = env.run(&["rotate", "svc/old-service"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("retired"));
    let out = env.run(&["credential", "fetch", "svc/old-service"]).await;
    assert!(!out.status.success());
}

#[tokio::test]
async fn watch_prints_each_rotation_of_a_credential_as_it_happens() {
    let env = Env::start().await;
    let _fleet = env.worker("fleet", &WORKER_ROLES);
    env.ok(&["credential", "register", "svc/followed"]).await;
    let mut watch = env
        .keyloop()
        .args(["credential", "watch", "svc/followed", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    // The watcher is subscribed once a rotation shows up in its output: rotate until it does
    // (the first rotation may happen before it subscribed).
    let seen = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            env.ok(&["rotate", "svc/followed", "--no-wait"]).await;
            let next = tokio::time::timeout(Duration::from_secs(2), async {
                while let Some(line) = lines.next_line().await.unwrap() {
                    let e: keyloop_core::LifecycleEvent = serde_json::from_str(&line).unwrap();
                    if e.data.kind == LifecycleKind::Rotated {
                        return Some(e);
                    }
                }
                None
            })
            .await;
            if let Ok(Some(e)) = next {
                return e;
            }
        }
    })
    .await
    .expect("watch printed a rotation");
    assert_eq!(seen.subject.as_deref(), Some("svc/followed"));
    let _ = watch.kill().await;
}

/// `keyloop credential verify ID` as `actor`, with `value` on stdin: the exit code and stdout.
async fn verify_as(env: &Env, actor: &str, id: &str, value: &str) -> (Option<i32>, String) {
    let mut cmd = env.keyloop_as(actor);
    cmd.args(["credential", "verify", id]);
    let out = crate::harness::with_stdin(cmd, value).await;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains(value), "verify printed the value: {text}");
    (out.status.code(), text)
}

#[tokio::test]
async fn verifying_a_value_is_for_consumers_and_a_dead_one_is_recorded_with_who_tried_it() {
    let env = Env::start_secured().await;
    let _rotator = env.worker_as("rotator", "rotator", &["rotator"]);
    let _revoker = env.worker_as("revoker", "revoker", &["revoker"]);
    env.ok(&[
        "credential",
        "register",
        "svc/verified",
        "--consumer",
        "orchestrator-a",
    ])
    .await;
    let old = env
        .ok(&["credential", "fetch", "svc/verified"])
        .await
        .trim_end()
        .to_owned();
    let old_version = env.credential("svc/verified").await.current().unwrap().id;

    // A consumer: the live value works (a use with its name), a made-up one does not.
    let (code, out) = verify_as(&env, "orchestrator-a", "svc/verified", &old).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!("version {old_version} (current)")),
        "{out}"
    );
    let (code, out) = verify_as(&env, "orchestrator-a", "svc/verified", "kl_not-a-value").await;
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("not a version of svc/verified"), "{out}");

    // Not a consumer: refused before anything is looked up, and recorded as `denied`.
    let (code, out) = verify_as(&env, "orchestrator-b", "svc/verified", &old).await;
    assert_ne!(code, Some(0), "{out}");
    assert!(
        out.contains("orchestrator-b may not verify svc/verified"),
        "{out}"
    );

    // Revoked (a leak, say): the old value is dead, and whoever still presents it is on record.
    env.ok(&["revoke", "svc/verified", "--reason", "leaked in a test"])
        .await;
    let (code, out) = verify_as(&env, "orchestrator-a", "svc/verified", &old).await;
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains(&format!("version {old_version} is revoked")),
        "{out}"
    );

    let events = lifecycle(&env.bus).await;
    let used = events.iter().any(|e| {
        e.data.kind == LifecycleKind::Used
            && e.data.actor.as_deref() == Some("orchestrator-a")
            && e.data.version == Some(old_version)
    });
    assert!(used, "a verified live value is a use");
    let denied_verifications: Vec<_> = events
        .iter()
        .filter(|e| e.data.kind == LifecycleKind::VerifyDenied)
        .collect();
    assert_eq!(denied_verifications.len(), 2, "{denied_verifications:?}");
    assert!(denied_verifications.iter().all(|e| {
        e.data.actor.as_deref() == Some("orchestrator-a")
            && e.data.credential.as_ref().map(|c| c.as_str()) == Some("svc/verified")
    }));
    let dead = denied_verifications
        .iter()
        .find(|e| e.data.version == Some(old_version))
        .expect("the revoked version's attempt names the version");
    assert_eq!(dead.data.stage, Some(Stage::Revoked));
    assert!(events.iter().any(|e| {
        e.data.kind == LifecycleKind::Denied && e.data.actor.as_deref() == Some("orchestrator-b")
    }));
    let stored = serde_json::to_string(&events).unwrap();
    assert!(!stored.contains(&old), "a value reached the audit log");
}
