//! Bad input on every subject a worker consumes: a malformed message, a CloudEvent of an unknown
//! type and a message over the runtime's size limit each land in `keyloop.dlq.<role>` with the
//! reason in a header (a reason that never shows the secret planted in the message), and the
//! fleet keeps serving valid input on every one of those subjects afterwards.

use crate::harness::{Env, Events, Stored, gitleaks_report, path_str, stream_messages};
use futures::StreamExt;
use keyloop_core::LifecycleKind;
use keyloop_core::event::{CREDENTIAL_USED_TYPE, CloudEvent, CredentialUsed};
use keyloop_nats::bus::{DLQ_REASON_HEADER, DLQ_SUBJECT_HEADER};
use keyloop_nats::runtime::MAX_MESSAGE_BYTES;
use keyloop_workers::decode::INBOUND_TYPES;
use std::collections::BTreeSet;
use std::time::Duration;

/// Every consumed subject, its event type and the role whose DLQ takes what it cannot use.
const CONSUMED: [(&str, &str, &str); 7] = [
    (
        "keyloop.leak.detected",
        "dev.keyloop.leak.detected",
        "leak-responder",
    ),
    (
        "keyloop.schedule.tick",
        "dev.keyloop.schedule.tick",
        "sweeper",
    ),
    (
        "keyloop.credential.used",
        "dev.keyloop.credential.used",
        "sweeper",
    ),
    (
        "keyloop.task.completed",
        "dev.keyloop.task.completed",
        "jit-issuer",
    ),
    ("keyloop.cmd.revoke", "dev.keyloop.cmd.revoke", "revoker"),
    ("keyloop.cmd.rotate", "dev.keyloop.cmd.rotate", "rotator"),
    (
        "keyloop.cmd.lease.revoke",
        "dev.keyloop.cmd.lease.revoke",
        "revoker",
    ),
];

/// Put into every bad message; must show up in no DLQ reason and no worker log line.
const PLANTED: &str = "FAKE-planted-bad-input-0001-never-printed";

/// The bad messages for one subject: (kind, payload, what the reason must say).
fn bad_messages(subject: &str, ty: &str) -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let malformed = format!(
        r#"{{"id":"bad-malformed-{subject}","specversion":"1.0","type":"{ty}","data":{{"secret":"{PLANTED}""#
    );
    let unknown = format!(
        r#"{{"specversion":"1.0","id":"bad-unknown-{subject}","source":"e2e","type":"com.example.{PLANTED}","time":"2026-11-29T00:00:00Z","datacontenttype":"application/json","data":{{"note":"{PLANTED}"}}}}"#
    );
    let padding = "x".repeat(MAX_MESSAGE_BYTES + 1024);
    let oversized = format!(
        r#"{{"specversion":"1.0","id":"bad-oversized-{subject}","source":"e2e","type":"{ty}","time":"2026-11-29T00:00:00Z","datacontenttype":"application/json","data":{{"secret":"{PLANTED}","padding":"{padding}"}}}}"#
    );
    let mut bad = vec![
        ("malformed", malformed.into_bytes(), "malformed"),
        ("unknown", unknown.into_bytes(), "unknown event type"),
        ("oversized", oversized.into_bytes(), "byte limit"),
    ];
    if subject == "keyloop.leak.detected" {
        // A plaintext value where a digest belongs: refused, never looked up or stored.
        let plaintext_digest = format!(
            r#"{{"specversion":"1.0","id":"bad-digest-{subject}","source":"e2e","type":"{ty}","time":"2026-11-29T00:00:00Z","datacontenttype":"application/json","data":{{"fingerprint":{{"sha256":"{PLANTED}"}},"detector":"e2e"}}}}"#
        );
        bad.push(("digest", plaintext_digest.into_bytes(), "schema"));
    }
    bad
}

fn header<'a>(m: &'a Stored, name: &str) -> Option<&'a str> {
    m.headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn bad_input_on_every_consumed_subject_goes_to_the_dlq_and_the_fleet_keeps_serving() {
    let env = Env::start().await;
    let worker = env.worker(
        "fleet",
        &[
            "leak-responder",
            "rotator",
            "revoker",
            "sweeper",
            "jit-issuer",
            "scheduler",
            "--tick-interval",
            "1s",
        ],
    );
    let covered: BTreeSet<_> = CONSUMED.iter().map(|(_, ty, _)| *ty).collect();
    assert_eq!(
        covered,
        INBOUND_TYPES.into_iter().collect(),
        "every inbound type is covered"
    );
    let mut dlq_watch = env.bus.client.subscribe("keyloop.dlq.>").await.unwrap();
    env.bus.client.flush().await.unwrap();

    let mut sent = 0;
    for (subject, ty, _) in CONSUMED {
        for (_, payload, _) in bad_messages(subject, ty) {
            assert!(
                payload.len() < 1024 * 1024,
                "under the server's max_payload"
            );
            env.bus
                .js
                .publish(subject, payload.into())
                .await
                .unwrap()
                .await
                .unwrap_or_else(|e| panic!("{subject} stores the bad message: {e}"));
            sent += 1;
        }
    }
    for i in 0..sent {
        tokio::time::timeout(Duration::from_secs(10), dlq_watch.next())
            .await
            .unwrap_or_else(|_| panic!("DLQ message {} of {sent} within 10 s", i + 1))
            .expect("subscription open");
    }

    let dlq = stream_messages(&env.bus, &env.bus.topology.dlq_stream()).await;
    assert_eq!(dlq.len(), sent, "every bad message is in the DLQ, once");
    for (subject, ty, role) in CONSUMED {
        for (kind, payload, says) in bad_messages(subject, ty) {
            let marker = format!("bad-{kind}-{subject}");
            let m = dlq
                .iter()
                .find(|m| {
                    header(m, DLQ_SUBJECT_HEADER) == Some(subject)
                        && String::from_utf8_lossy(&m.payload).contains(&marker)
                })
                .unwrap_or_else(|| panic!("{kind} message of {subject} in the DLQ"));
            assert_eq!(m.subject, format!("keyloop.dlq.{role}"), "{marker}");
            assert_eq!(m.payload, payload, "{marker}: the payload is kept whole");
            let reason = header(m, DLQ_REASON_HEADER).unwrap_or_default();
            assert!(
                reason.contains(says),
                "{marker}: reason `{reason}` says `{says}`"
            );
            assert!(!reason.contains(PLANTED), "{marker}: {reason}");
        }
    }

    // The fleet still serves valid input on every subject.
    let events = Events::subscribe(&env.bus).await;
    // leak.detected → cmd.revoke → cmd.rotate
    let value = env.register_and_reveal("svc/after-bad-input").await;
    let report = env.file("leak.json", &gitleaks_report(&value, "a.env"));
    env.ok(&["ingest", "gitleaks", path_str(&report)]).await;
    events
        .wait(
            "leaked value revoked and replaced",
            Duration::from_secs(10),
            |e| {
                e.iter().any(|e| {
                    e.data.kind == LifecycleKind::Rotated
                        && e.subject.as_deref() == Some("svc/after-bad-input")
                })
            },
        )
        .await;
    // cmd.rotate and cmd.revoke from an operator (each command waits for its outcome).
    env.ok(&["rotate", "svc/after-bad-input"]).await;
    env.ok(&["revoke", "svc/after-bad-input", "--reason", "e2e"])
        .await;
    // credential.used
    env.ok(&["credential", "register", "svc/used", "--store", "local"])
        .await;
    let used = CloudEvent::new(
        "used-after-bad-input",
        "e2e",
        CREDENTIAL_USED_TYPE,
        CredentialUsed {
            credential: "svc/used".parse().unwrap(),
            version: None,
            actor: Some("e2e".into()),
        },
    );
    env.bus
        .publish_event(&env.bus.topology.credential_used(), &used)
        .await
        .unwrap();
    events
        .wait("use recorded", Duration::from_secs(10), |e| {
            e.iter().any(|e| {
                e.data.kind == LifecycleKind::Used && e.subject.as_deref() == Some("svc/used")
            })
        })
        .await;
    // task.completed → cmd.lease.revoke; schedule.tick → expiry of a lease nobody completes.
    let start = |task: &'static str, ttl: &'static str| {
        let env = &env;
        async move {
            let out = env
                .ok(&[
                    "task", "start", task, "--agent", "a", "--scope", "read", "--ttl", ttl,
                    "--json",
                ])
                .await;
            let lease: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
            lease["lease_id"]
                .as_str()
                .unwrap()
                .parse::<uuid::Uuid>()
                .unwrap()
        }
    };
    let completed = start("t-completed", "10m").await;
    let forgotten = start("t-forgotten", "1s").await;
    env.ok(&["task", "complete", "t-completed"]).await;
    let lease_event = move |kind: LifecycleKind, lease: uuid::Uuid| {
        move |e: &[keyloop_core::LifecycleEvent]| {
            e.iter().any(|e| {
                e.data.kind == kind && e.data.lease.as_ref().is_some_and(|l| l.lease_id == lease)
            })
        }
    };
    events
        .wait(
            "completed task's lease revoked",
            Duration::from_secs(10),
            lease_event(LifecycleKind::Revoked, completed),
        )
        .await;
    events
        .wait(
            "forgotten lease expired by a tick",
            Duration::from_secs(10),
            lease_event(LifecycleKind::Expired, forgotten),
        )
        .await;

    let dlq = stream_messages(&env.bus, &env.bus.topology.dlq_stream()).await;
    assert_eq!(dlq.len(), sent, "valid input went nowhere near the DLQ");
    for m in stream_messages(&env.bus, &env.bus.topology.lifecycle_stream()).await {
        assert!(
            !String::from_utf8_lossy(&m.payload).contains(PLANTED),
            "nothing of the bad input reached the audit log: {}",
            m.subject
        );
    }
    let log = worker.log_text();
    assert!(log.contains("message sent to the DLQ"), "the log says so");
    assert!(
        !log.contains(PLANTED),
        "no log line shows the planted value"
    );
}
