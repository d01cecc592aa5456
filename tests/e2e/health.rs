//! The operations endpoint of a worker (`--metrics-addr`) against a real nats-server: `/readyz`
//! follows the NATS connection (503 with the reason while the server is gone, 200 once it is
//! back and the consumers are found again), `/healthz` stays 200 throughout, other paths are
//! 404, and `/metrics` carries the documented names after a real leak, and never a credential
//! id, version id or value.

use crate::faults::{metric, scrape};
use crate::harness::{Env, Events, free_port, gitleaks_report, http_get, path_str};
use keyloop_core::LifecycleKind;
use std::time::Duration;

/// Polls `path` until its status is `status` (within `within`); returns the body then.
async fn until_status(port: u16, path: &str, status: u16, within: Duration) -> String {
    let deadline = tokio::time::Instant::now() + within;
    let mut last = None;
    loop {
        if let Some(answer) = http_get(port, path).await {
            let body = String::from_utf8(answer.body).unwrap();
            if answer.status == status {
                return body;
            }
            last = Some((answer.status, body));
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} did not answer {status} within {within:?}; last answer: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn status_of(port: u16, path: &str) -> u16 {
    http_get(port, path)
        .await
        .unwrap_or_else(|| panic!("nothing answers {path} on port {port}"))
        .status
}

#[tokio::test]
async fn readyz_follows_the_nats_connection_while_healthz_stays_alive() {
    let mut env = Env::start().await;
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let _worker = env.worker(
        "probed",
        &["leak-responder", "revoker", "--metrics-addr", &addr],
    );
    assert_eq!(
        until_status(port, "/readyz", 200, Duration::from_secs(30)).await,
        "ready\n"
    );
    assert_eq!(status_of(port, "/healthz").await, 200);
    assert_eq!(status_of(port, "/nope").await, 404);
    assert_eq!(status_of(port, "/metrics/extra").await, 404);

    env.server.as_mut().unwrap().kill().await;
    let body = until_status(port, "/readyz", 503, Duration::from_secs(10)).await;
    assert!(body.contains("the NATS connection is down"), "{body}");
    assert_eq!(
        status_of(port, "/healthz").await,
        200,
        "alive while NATS is down"
    );
    let text = scrape(port).await;
    assert_eq!(metric(&text, "keyloop_nats_connected"), 0);

    env.server.as_mut().unwrap().resume().await;
    until_status(port, "/readyz", 200, Duration::from_secs(30)).await;
    assert_eq!(status_of(port, "/healthz").await, 200);
    assert_eq!(metric(&scrape(port).await, "keyloop_nats_connected"), 1);
}

#[tokio::test]
async fn readyz_names_a_consumer_deleted_under_a_running_worker_and_the_fix() {
    let env = Env::start().await;
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let _worker = env.worker("unbound", &["revoker", "--metrics-addr", &addr]);
    until_status(port, "/readyz", 200, Duration::from_secs(30)).await;
    let (stream, _) = env.bus.topology.consumer_of(keyloop_nats::Role::Revoker);
    env.bus
        .js
        .delete_consumer_from_stream("revoker", &stream)
        .await
        .unwrap();
    let body = until_status(port, "/readyz", 503, Duration::from_secs(10)).await;
    assert_eq!(
        body,
        "not ready:\n- consumer revoker on stream KEYLOOP_COMMANDS does not exist; run `keyloop init`\n"
    );
    env.bus.topology.init(&env.bus.js).await.unwrap();
    until_status(port, "/readyz", 200, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn metrics_after_a_leak_have_the_documented_names_and_no_credential_id_or_value() {
    let env = Env::start().await;
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let _worker = env.worker(
        "fleet",
        &[
            "leak-responder",
            "rotator",
            "revoker",
            "--metrics-addr",
            &addr,
        ],
    );
    let id = "svc/metered-payments";
    let value = env.register_and_reveal(id).await;
    let leaked = env.credential(id).await.current().unwrap().id;
    let events = Events::subscribe(&env.bus).await;
    let report = env.file("leak.json", &gitleaks_report(&value, "app.env"));
    env.ok(&["ingest", "gitleaks", path_str(&report)]).await;
    events
        .wait(
            "the leaked version revoked and rotated",
            Duration::from_secs(30),
            |e| {
                e.iter().any(|e| e.data.kind == LifecycleKind::Revoked)
                    && e.iter().any(|e| {
                        e.data.kind == LifecycleKind::Rotated
                            && e.data.rotation_reason == Some(keyloop_core::RotationReason::Leak)
                    })
            },
        )
        .await;
    until_status(port, "/readyz", 200, Duration::from_secs(30)).await;
    // The claim is released right after `rotated` is published.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while metric(&scrape(port).await, "keyloop_claims_held") != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a claim is still held"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let answer = http_get(port, "/metrics").await.unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.header("content-type"),
        Some(keyloop_nats::metrics::CONTENT_TYPE)
    );
    let text = String::from_utf8(answer.body).unwrap();
    assert!(
        metric(
            &text,
            "keyloop_time_to_revoke_seconds_count{kind=\"version\"}"
        ) >= 1,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "keyloop_rotation_duration_seconds_count{reason=\"leak\"}"
        ) >= 1
    );
    // The process runs the revoker and the rotator too, so the leak-responder revoked and
    // replaced the version itself: its one message is the leak.
    assert!(
        metric(
            &text,
            "keyloop_handler_duration_seconds_count{role=\"leak-responder\"}"
        ) >= 1
    );
    assert!(
        metric(
            &text,
            "keyloop_messages_total{role=\"leak-responder\",outcome=\"acked\"}"
        ) >= 1
    );
    assert_eq!(metric(&text, "keyloop_rotation_failed_total"), 0);
    assert_eq!(
        metric(&text, "keyloop_claims_held"),
        0,
        "no operation in flight"
    );
    // The probe has set the consumer gauges of the roles this process runs.
    for role in ["leak-responder", "rotator", "revoker"] {
        metric(
            &text,
            &format!("keyloop_consumer_pending{{role=\"{role}\"}}"),
        );
        metric(
            &text,
            &format!("keyloop_consumer_ack_pending{{role=\"{role}\"}}"),
        );
    }
    assert_eq!(metric(&text, "keyloop_dlq_messages"), 0);
    assert_eq!(metric(&text, "keyloop_nats_connected"), 1);
    assert!(
        text.contains(&format!(
            "keyloop_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
    let cred = env.credential(id).await;
    assert!(
        !text.contains("metered"),
        "no credential id in a metric:\n{text}"
    );
    assert!(!text.contains(&value), "no value in a metric");
    for v in &cred.versions {
        assert!(
            !text.contains(&v.id.to_string()),
            "no version id in a metric"
        );
    }
    assert!(!text.contains(&leaked.simple().to_string()));
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(
            line.starts_with("keyloop_"),
            "every name is prefixed: {line}"
        );
    }
}
