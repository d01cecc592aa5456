//! `keyloop dlq retry | purge` after real give-ups: a rotation asked for a credential before
//! it was registered is given up by the rotator; retried before the fix it comes back as a new
//! entry, retried after it the rotation runs; each retry and purge is recorded with its actor;
//! a retry is stored once however often the same entry is published again; a purge without
//! `--yes` removes nothing.

use crate::harness::{Env, Events};
use futures::StreamExt;
use keyloop_core::LifecycleKind;
use keyloop_core::RotationReason;
use keyloop_core::event::{CloudEvent, ROTATE_COMMAND_TYPE, RotateCommand};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("not one JSON value ({e}): {line}"))
}

/// The DLQ entries `keyloop dlq list --json` prints.
async fn listed(env: &Env) -> Vec<serde_json::Value> {
    env.ok(&["dlq", "list", "--json"])
        .await
        .lines()
        .map(json)
        .collect()
}

/// Waits for the next DLQ write.
async fn next_entry(dlq: &mut async_nats::Subscriber, worker: &crate::harness::Worker) {
    tokio::time::timeout(WAIT, dlq.next())
        .await
        .unwrap_or_else(|_| panic!("no DLQ entry; the worker's log:\n{}", worker.log_text()))
        .unwrap();
}

#[tokio::test]
async fn a_rotation_given_up_before_its_credential_existed_runs_when_retried_after_the_fix() {
    let env = Env::start().await;
    let w = env.worker("worker", &["leak-responder", "rotator", "revoker"]);
    env.api().await;
    let events = Events::subscribe(&env.bus).await;
    let mut dlq = env.bus.client.subscribe("keyloop.dlq.>").await.unwrap();
    env.bus.client.flush().await.unwrap();
    let op = "late-rotation-1";
    let cmd = RotateCommand {
        credential: "svc/late".parse().unwrap(),
        reason: RotationReason::Manual,
        op_id: op.to_owned(),
    };
    let ev = CloudEvent::new(op, "keyloop/test", ROTATE_COMMAND_TYPE, cmd)
        .caused_by(Some(op.into()), None);
    env.bus
        .publish_event(&env.bus.topology.cmd_rotate(), &ev)
        .await
        .unwrap();
    next_entry(&mut dlq, &w).await;
    let first = listed(&env).await;
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0]["role"], "rotator");
    assert_eq!(first[0]["original_subject"], "keyloop.cmd.rotate");
    let seq = first[0]["sequence"].as_u64().unwrap();

    // Retried before the cause is fixed: back in the DLQ as a new entry, the old one gone.
    let out = env.ok(&["dlq", "retry", &seq.to_string()]).await;
    assert!(
        out.starts_with(&format!(
            "retried {seq} (rotator, keyloop.cmd.rotate) -> KEYLOOP_COMMANDS #"
        )),
        "{out}"
    );
    next_entry(&mut dlq, &w).await;
    let again = listed(&env).await;
    assert_eq!(again.len(), 1, "{again:?}");
    let second = again[0]["sequence"].as_u64().unwrap();
    assert_ne!(second, seq, "the retried entry is removed");

    // The same entry published again twice (the control plane's code, as a retry whose
    // removal failed would run it again): stored once, given up once more.
    let entry = env.bus.dlq_entry(second).await.unwrap().expect("the entry");
    let once = env.bus.dlq_republish(&entry).await.unwrap();
    let twice = env.bus.dlq_republish(&entry).await.unwrap();
    assert!(!once.duplicate && twice.duplicate, "{once:?} {twice:?}");
    assert_eq!(once.sequence, twice.sequence);
    next_entry(&mut dlq, &w).await;
    let out = env.ok(&["dlq", "retry", &second.to_string()]).await;
    assert!(
        out.contains(&format!("#{} (retried before: stored once)", once.sequence)),
        "{out}"
    );
    let left = listed(&env).await;
    assert!(
        left.len() == 1 && left[0]["sequence"].as_u64() != Some(second),
        "one give-up of the one republished copy: {left:?}"
    );

    // The fix, then every rotator entry retried: the rotation the command asked for runs.
    env.ok(&["credential", "register", "svc/late", "--store", "local"])
        .await;
    let out = env
        .ok(&["dlq", "retry", "--all", "--role", "rotator", "--json"])
        .await;
    let done: Vec<serde_json::Value> = out.lines().map(json).collect();
    assert_eq!(done.len(), 1, "{out}");
    assert!(
        done.iter()
            .all(|d| d["done"] == "retried"
                && d["entry"]["republished"]["stream"] == "KEYLOOP_COMMANDS"),
        "{out}"
    );
    events
        .wait("the retried rotation ran", WAIT, |e| {
            e.iter().any(|e| {
                e.data.kind == LifecycleKind::Rotated && e.subject.as_deref() == Some("svc/late")
            })
        })
        .await;
    assert!(listed(&env).await.is_empty(), "nothing left in the DLQ");

    // Each retry is in the audit log, in the command's chain, by its actor, never with the
    // payload.
    let retried: Vec<serde_json::Value> = env
        .ok(&["replay", "--type", "dlq_retried", "--json"])
        .await
        .lines()
        .map(json)
        .collect();
    assert_eq!(retried.len(), 3, "{retried:?}");
    for r in &retried {
        assert_eq!(r["data"]["credential"], "svc/late", "{r}");
        assert_eq!(r["correlationid"], op, "{r}");
        assert!(r["data"]["actor"].is_string(), "{r}");
        let detail = r["data"]["detail"].as_str().unwrap();
        assert!(
            detail.contains(
                "of the rotator (keyloop.cmd.rotate) published again as KEYLOOP_COMMANDS #"
            ) && detail.contains("not registered"),
            "{detail}"
        );
    }

    // An entry that is no longer there: exit 3, and what to do.
    let out = env.run(&["dlq", "retry", &seq.to_string()]).await;
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("DLQ entry {seq} not retried"))
            && err.contains(&format!("no DLQ entry {seq}"))
            && err.contains("keyloop dlq list"),
        "{err}"
    );
}

#[tokio::test]
async fn a_purge_removes_only_with_yes_and_records_each_entry_with_its_reason() {
    let env = Env::start().await;
    let _w = env.worker("worker", &["leak-responder"]);
    env.api().await;
    let events = Events::subscribe(&env.bus).await;
    let mut dlq = env.bus.client.subscribe("keyloop.dlq.>").await.unwrap();
    env.bus.client.flush().await.unwrap();
    for garbage in [
        "{\"secret\": \"planted-5ecret\"",
        "not json at all: planted-t0ken",
    ] {
        env.bus
            .client
            .publish("keyloop.leak.detected", garbage.into())
            .await
            .unwrap();
    }
    for _ in 0..2 {
        tokio::time::timeout(WAIT, dlq.next())
            .await
            .expect("a DLQ entry")
            .unwrap();
    }
    let entries = listed(&env).await;
    assert_eq!(entries.len(), 2, "{entries:?}");
    let first = entries[0]["sequence"].as_u64().unwrap().to_string();

    let out = env.run(&["dlq", "purge", &first]).await;
    assert_eq!(out.status.code(), Some(2), "without --yes");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "would purge {first} (leak-responder, keyloop.leak.detected)"
        )) && err.contains("nothing removed")
            && err.contains("--yes"),
        "{err}"
    );
    assert_eq!(listed(&env).await.len(), 2, "nothing removed");

    let out = env.ok(&["dlq", "purge", &first, "--yes"]).await;
    assert!(
        out.starts_with(&format!("purged {first} (leak-responder")),
        "{out}"
    );
    assert_eq!(listed(&env).await.len(), 1);
    let out = env.ok(&["dlq", "purge", "--all", "--yes"]).await;
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(listed(&env).await.is_empty());
    let out = env.ok(&["dlq", "purge", "--all", "--yes"]).await;
    assert!(out.is_empty(), "nothing to purge: {out}");

    events
        .wait("both purges recorded", WAIT, |e| {
            e.iter()
                .filter(|e| e.data.kind == LifecycleKind::DlqPurged)
                .count()
                == 2
        })
        .await;
    let purged = env.ok(&["replay", "--type", "dlq_purged", "--json"]).await;
    assert_eq!(purged.lines().count(), 2, "{purged}");
    assert!(purged.contains("malformed"), "the reason is kept: {purged}");
    assert!(
        !purged.contains("planted-5ecret") && !purged.contains("planted-t0ken"),
        "never the payload: {purged}"
    );
    // Neither seqs nor --all: clap says what is missing.
    let out = env.run(&["dlq", "purge", "--yes"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--all"));
}
