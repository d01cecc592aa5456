//! Backend faults, injected by the worker's hidden `--inject-faults` flag: transient failures
//! are absorbed by in-process retries and nak backoff; a permanent one ends, after one delivery,
//! in `rotation_failed` / `revocation_failed`, a DLQ entry and a metric — and the credential keeps
//! its working current version.

use crate::harness::{
    Env, Events, Follower, free_port, gitleaks_report, http_get, lifecycle, path_str,
    stream_messages,
};
use keyloop_core::{LifecycleKind, Stage};
use std::collections::HashSet;
use std::time::Duration;

/// The worker's Prometheus text, once its endpoint answers (polled while the process starts).
pub(crate) async fn scrape(port: u16) -> String {
    for _ in 0..100 {
        if let Some(answer) = http_get(port, "/metrics").await {
            assert_eq!(answer.status, 200);
            return String::from_utf8(answer.body).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no metrics endpoint on port {port}");
}

/// Scrapes until `name` reaches `at_least`: the counter moves right after the DLQ write the test
/// saw, in another process.
async fn scrape_until(port: u16, name: &str, at_least: u64) -> String {
    for _ in 0..50 {
        let text = scrape(port).await;
        if metric(&text, name) >= at_least {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{name} never reached {at_least}");
}

pub(crate) fn metric(text: &str, line_start: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no metric {line_start} in:\n{text}"))
}

#[tokio::test]
async fn thirty_percent_transient_backend_faults_delay_but_never_stop_the_loop() {
    const N: usize = 60;
    let env = Env::start().await;
    let creds = env
        .register_all((0..N).map(|i| format!("svc/flaky-{i:02}")))
        .await;
    let report = env.generic_report("flaky.jsonl", creds.iter().map(|c| c.value.as_str()));
    let port = free_port();
    let port_arg = format!("127.0.0.1:{port}");
    let _w = env.worker(
        "flaky",
        &[
            "leak-responder",
            "rotator",
            "revoker",
            "--inject-faults",
            "transient=0.3",
            "--metrics-addr",
            &port_arg,
        ],
    );
    let follower = Follower::lifecycle(&env.bus).await;
    env.ok(&["ingest", "generic", path_str(&report)]).await;
    let rotated = |e: &[keyloop_core::LifecycleEvent]| {
        e.iter()
            .filter(|e| e.data.kind == LifecycleKind::Rotated)
            .filter_map(|e| e.subject.clone())
            .collect::<HashSet<_>>()
            .len()
    };
    follower
        .wait(
            "every credential rotated despite faults",
            Duration::from_secs(120),
            |e| rotated(e) >= N,
        )
        .await;

    let metrics = scrape(port).await;
    let retried = metric(
        &metrics,
        "keyloop_messages_total{role=\"revoker\",outcome=\"retried\"}",
    ) + metric(
        &metrics,
        "keyloop_messages_total{role=\"rotator\",outcome=\"retried\"}",
    ) + metric(
        &metrics,
        "keyloop_messages_total{role=\"leak-responder\",outcome=\"retried\"}",
    );
    println!(
        "{N} leaks through 30 % transient backend faults: all revoked and rotated; {retried} messages needed a redelivery after in-process retries"
    );
    for i in 0..N {
        let cred = env.credential(&format!("svc/flaky-{i:02}")).await;
        assert_eq!(cred.versions[0].stage, Stage::Revoked);
        assert_eq!(
            cred.versions
                .iter()
                .filter(|v| v.stage == Stage::Current)
                .count(),
            1
        );
    }
    assert!(
        stream_messages(&env.bus, &env.bus.topology.dlq_stream())
            .await
            .is_empty(),
        "no transient fault ends in the DLQ"
    );
    let stored = lifecycle(&env.bus).await;
    assert!(stored.iter().all(|e| !matches!(
        e.data.kind,
        LifecycleKind::RotationFailed | LifecycleKind::RevocationFailed
    )));
}

#[tokio::test]
async fn a_permanent_target_fault_ends_in_rotation_failed_the_dlq_and_a_metric_with_current_intact()
{
    let env = Env::start().await;
    let value = env.register_and_reveal("svc/broken-target").await;
    let original = env.credential("svc/broken-target").await.versions[0].id;
    let port = free_port();
    let port_arg = format!("127.0.0.1:{port}");
    let broken = env.worker(
        "broken",
        &[
            "rotator",
            "revoker",
            "--inject-faults",
            "permanent=apply",
            "--metrics-addr",
            &port_arg,
        ],
    );

    let mut dlq_watch = env.bus.client.subscribe("keyloop.dlq.>").await.unwrap();
    env.bus.client.flush().await.unwrap();
    let out = env.run(&["rotate", "svc/broken-target"]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("rotation of svc/broken-target failed")
            && stderr.contains("injected permanent fault in apply"),
        "{stderr}"
    );

    tokio::time::timeout(
        Duration::from_secs(5),
        futures::StreamExt::next(&mut dlq_watch),
    )
    .await
    .expect("a DLQ entry");
    let dlq = stream_messages(&env.bus, &env.bus.topology.dlq_stream()).await;
    assert_eq!(dlq.len(), 1, "one DLQ entry after one delivery");
    assert_eq!(dlq[0].subject, "keyloop.dlq.rotator");
    assert!(
        dlq[0]
            .headers
            .iter()
            .any(|(k, v)| k == "Keyloop-Deliveries" && v == "1"),
        "{:?}",
        dlq[0].headers
    );
    let metrics = scrape_until(
        port,
        "keyloop_messages_total{role=\"rotator\",outcome=\"dead_lettered\"}",
        1,
    )
    .await;
    assert_eq!(metric(&metrics, "keyloop_rotation_failed_total"), 1);

    // The credential still works on its original value; the failed rotation left nothing pending.
    let cred = env.credential("svc/broken-target").await;
    assert_eq!(cred.current().unwrap().id, original);
    assert!(cred.versions.iter().all(|v| v.stage != Stage::Pending));
    assert_eq!(
        env.ok(&["credential", "reveal", "svc/broken-target"])
            .await
            .trim_end(),
        value
    );
    assert!(broken.stop().await.success());

    // Once the target works again, the next rotation is not blocked by the failed one.
    let _healthy = env.worker("healthy", &["rotator", "revoker"]);
    env.ok(&["rotate", "svc/broken-target"]).await;
    let cred = env.credential("svc/broken-target").await;
    assert_ne!(cred.current().unwrap().id, original);
}

#[tokio::test]
async fn a_permanent_invalidation_fault_ends_in_revocation_failed_and_is_loud() {
    let env = Env::start().await;
    let port = free_port();
    let port_arg = format!("127.0.0.1:{port}");
    let _w = env.worker(
        "broken",
        &[
            "leak-responder",
            "rotator",
            "revoker",
            "--inject-faults",
            "permanent=invalidate",
            "--metrics-addr",
            &port_arg,
        ],
    );
    let value = env.register_and_reveal("svc/stuck").await;
    let events = Events::subscribe(&env.bus).await;
    let report = env.file("leak.json", &gitleaks_report(&value, "x.env"));
    env.ok(&["ingest", "gitleaks", path_str(&report)]).await;
    events
        .wait("revocation_failed", Duration::from_secs(10), |e| {
            e.iter()
                .any(|e| e.data.kind == LifecycleKind::RevocationFailed)
        })
        .await;
    let metrics = scrape_until(
        port,
        "keyloop_messages_total{role=\"revoker\",outcome=\"dead_lettered\"}",
        1,
    )
    .await;
    assert_eq!(metric(&metrics, "keyloop_revocation_failed_total"), 1);
    let dlq = stream_messages(&env.bus, &env.bus.topology.dlq_stream()).await;
    assert!(
        dlq.iter().any(|m| m.subject == "keyloop.dlq.revoker"),
        "the failed revocation is in the DLQ for an operator"
    );
    let stored = lifecycle(&env.bus).await;
    let failed = stored
        .iter()
        .find(|e| e.data.kind == LifecycleKind::RevocationFailed)
        .unwrap();
    assert!(
        failed
            .data
            .detail
            .as_deref()
            .unwrap_or("")
            .contains("injected permanent fault in invalidate")
    );
    assert!(
        !stored.iter().any(|e| e.data.kind == LifecycleKind::Revoked),
        "nothing claims the value is dead"
    );
}
