//! Invariant 1: after the leak, rotation, revocation, reveal and unmatched flows, no value keyloop
//! issued appears in any stream message or header, in any KV value other than the encrypted
//! store (and not in plaintext there either), or in the workers' debug logs.

use crate::harness::{Env, Events, Wiretap, gitleaks_report, path_str, stream_messages};
use keyloop_core::LifecycleKind;
use std::time::Duration;

#[tokio::test]
async fn no_value_reaches_any_stream_kv_entry_or_log_line() {
    let env = Env::start().await;
    let worker = env.worker(
        "worker",
        &[
            "leak-responder",
            "rotator",
            "revoker",
            "sweeper",
            "jit-issuer",
        ],
    );
    let events = Events::subscribe(&env.bus).await;
    let wiretap = Wiretap::start(&env.bus).await;
    let mut values = Vec::new();

    // Leak of a current value, then of its replacement through a SHA-1-only report.
    let first = env.register_and_reveal("saas/leaky").await;
    values.push(first.clone());
    let report = env.file("r1.json", &gitleaks_report(&first, "x.env"));
    env.ok(&["ingest", "gitleaks", path_str(&report)]).await;
    events
        .wait("first rotation", Duration::from_secs(5), |e| {
            e.iter().any(|e| e.data.kind == LifecycleKind::Rotated)
        })
        .await;
    let second = env
        .ok(&["credential", "reveal", "saas/leaky"])
        .await
        .trim_end()
        .to_owned();
    values.push(second.clone());
    let generic = format!(
        "{{\"secret\":\"{second}\",\"repo\":\"acme/y\"}}\n{{\"secret\":\"unmanaged-value-xyz-123\"}}\n"
    );
    let report = env.file("r2.jsonl", generic.as_bytes());
    env.ok(&["ingest", "generic", path_str(&report)]).await;
    values.push("unmanaged-value-xyz-123".into());
    events
        .wait("second rotation", Duration::from_secs(5), |e| {
            e.iter()
                .filter(|e| e.data.kind == LifecycleKind::Rotated)
                .count()
                >= 2
        })
        .await;

    // Manual rotation and revocation of another credential.
    let other = env.register_and_reveal("pg/other").await;
    values.push(other);
    env.ok(&["rotate", "pg/other"]).await;
    values.push(
        env.ok(&["credential", "reveal", "pg/other"])
            .await
            .trim_end()
            .to_owned(),
    );
    env.ok(&["revoke", "pg/other", "--reason", "decommissioned"])
        .await;
    let third = env
        .ok(&["credential", "reveal", "saas/leaky"])
        .await
        .trim_end()
        .to_owned();
    values.push(third);
    assert!(values.iter().all(|v| v.len() >= 20));

    let streams = [
        env.bus.topology.events_stream(),
        env.bus.topology.lifecycle_stream(),
        env.bus.topology.dlq_stream(),
        format!("KV_{}", env.bus.topology.inventory_bucket()),
        format!("KV_{}", env.bus.topology.fingerprint_bucket()),
        format!("KV_{}", env.bus.topology.secrets_bucket()),
    ];
    let mut scanned = 0;
    for stream in &streams {
        for m in stream_messages(&env.bus, stream).await {
            scanned += 1;
            let text = String::from_utf8_lossy(&m.payload);
            for v in &values {
                assert!(
                    !text.contains(v.as_str()),
                    "a value appears in a message of {stream} ({})",
                    m.subject
                );
                assert!(
                    m.headers.iter().all(|(_, h)| !h.contains(v.as_str())),
                    "a value appears in a header in {stream}"
                );
            }
        }
    }
    assert!(scanned > 20, "scanned {scanned} stored messages");
    // The commands stream is a work queue (acked commands are gone), so check what crossed the
    // wire instead: every message published on the server during the flows.
    let wire = wiretap.messages().await;
    assert!(
        wire.iter().any(|m| m.subject == "keyloop.cmd.rotate"),
        "the wiretap saw commands"
    );
    // A value travels only as the reply to its fetch, to the fetching client's inbox (like a
    // JIT token), never on a keyloop subject, a stream or a KV key.
    for m in &wire {
        let text = String::from_utf8_lossy(&m.payload);
        for v in &values {
            assert!(
                !text.contains(v.as_str()) || m.subject.starts_with("_INBOX"),
                "a value crossed the wire on {}",
                m.subject
            );
        }
    }

    let log = worker.log_text();
    assert!(log.contains("rotated"), "the worker logged at debug level");
    for v in &values {
        assert!(
            !log.contains(v.as_str()),
            "a value appears in the worker log"
        );
    }
    assert!(worker.stop().await.success());
}
