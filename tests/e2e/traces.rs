//! Traces across processes: with `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at a real OTLP/HTTP
//! receiver started by the test, one leak ingested by `keyloop ingest` and handled by the
//! leak-responder, revoker and rotator (one process each) is one trace: its root is the
//! ingest's `leak` span, and each worker's `message` span continues it from the `traceparent`
//! the message carried; the lifecycle events carry the same trace (the CloudEvents
//! distributed-tracing extension). Without the variable nothing is exported.

use crate::harness::{Env, Events, gitleaks_report, lifecycle, path_str};
use keyloop_core::LifecycleKind;
use keyloop_testkit::otlp;
use keyloop_testkit::receiver::Receiver;
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn one_leak_is_one_trace_across_ingest_and_every_worker() {
    let env = Env::start().await;
    let receiver = Receiver::start().await;
    env.set_env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url(""));
    env.set_env("OTEL_BSP_SCHEDULE_DELAY", "100");
    let _workers: Vec<_> = ["leak-responder", "revoker", "rotator"]
        .into_iter()
        .map(|role| env.worker(role, &[role]))
        .collect();
    let events = Events::subscribe(&env.bus).await;
    let value = env.register_and_reveal("svc/traced").await;
    let report = env.file("leak.json", &gitleaks_report(&value, "a.env"));
    env.ok(&["ingest", "gitleaks", path_str(&report)]).await;
    events
        .wait("the leak revoked and rotated", WAIT, |e| {
            e.iter()
                .any(|e| e.data.kind == LifecycleKind::Rotated && e.data.rotation_reason.is_some())
        })
        .await;

    let services = |spans: &[otlp::Span], trace: &str| -> BTreeSet<String> {
        spans
            .iter()
            .filter(|s| s.trace_id == trace)
            .map(|s| s.service.clone())
            .collect()
    };
    let wanted: BTreeSet<String> = [
        "keyloop-ingest",
        "keyloop-worker-leak-responder",
        "keyloop-worker-revoker",
        "keyloop-worker-rotator",
    ]
    .map(str::to_owned)
    .into();
    let spans = otlp::wait_for(
        &receiver,
        "the leak's trace from every process",
        WAIT,
        |spans| {
            spans
                .iter()
                .filter(|s| s.name == "leak")
                .any(|root| services(spans, &root.trace_id) == wanted)
        },
    )
    .await;
    let root = spans
        .iter()
        .find(|s| s.name == "leak" && services(&spans, &s.trace_id) == wanted)
        .unwrap();
    assert!(
        root.parent_id.is_empty(),
        "the ingest's leak span is the root: {root:?}"
    );
    let trace: Vec<&otlp::Span> = spans
        .iter()
        .filter(|s| s.trace_id == root.trace_id)
        .collect();
    let by_id: HashMap<&str, &otlp::Span> =
        trace.iter().map(|s| (s.span_id.as_str(), *s)).collect();
    eprintln!("trace {} ({} spans):", root.trace_id, trace.len());
    for s in &trace {
        eprintln!(
            "  {} {} <- {}: {}",
            s.service,
            s.name,
            s.parent_id,
            s.attributes.join(", ")
        );
    }
    for span in &trace {
        if span.span_id != root.span_id {
            assert!(
                by_id.contains_key(span.parent_id.as_str()),
                "every span of the trace hangs from another of it: {span:?}"
            );
        }
    }
    // Each worker's message span continues the one that published what it handles.
    for service in [
        "keyloop-worker-leak-responder",
        "keyloop-worker-revoker",
        "keyloop-worker-rotator",
    ] {
        let handled = trace
            .iter()
            .find(|s| s.service == service && s.name == "message")
            .unwrap_or_else(|| panic!("no message span of {service} in {trace:#?}"));
        let parent = by_id[handled.parent_id.as_str()];
        assert_ne!(
            parent.service, service,
            "{service}'s parent is in another process: {parent:?}"
        );
    }

    // The lifecycle events of the leak carry its trace.
    let recorded = lifecycle(&env.bus).await;
    let revoked = recorded
        .iter()
        .find(|e| {
            e.data.kind == LifecycleKind::Revoked && e.subject.as_deref() == Some("svc/traced")
        })
        .expect("a revoked event");
    let tp = revoked
        .traceparent
        .as_deref()
        .expect("the event carries its trace");
    assert_eq!(tp.split('-').nth(1), Some(root.trace_id.as_str()), "{tp}");
}

#[tokio::test]
async fn a_jit_issue_continues_the_requesters_trace_and_the_leases_revocation_links_to_it() {
    let env = Env::start().await;
    let receiver = Receiver::start().await;
    env.set_env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url(""));
    env.set_env("OTEL_BSP_SCHEDULE_DELAY", "100");
    let _jit = env.worker("jit-issuer", &["jit-issuer"]);
    let _revoker = env.worker("revoker", &["revoker"]);
    let events = Events::subscribe(&env.bus).await;
    env.ok(&[
        "task", "start", "t-traced", "--agent", "a", "--scope", "read", "--ttl", "5m",
    ])
    .await;
    env.ok(&["task", "complete", "t-traced"]).await;
    events
        .wait("the lease revoked", WAIT, |e| {
            e.iter()
                .any(|e| e.data.kind == LifecycleKind::Revoked && e.data.lease.is_some())
        })
        .await;
    let issued = |spans: &[otlp::Span]| {
        spans
            .iter()
            .find(|s| {
                s.service == "keyloop-worker-jit-issuer"
                    && s.name == "request"
                    && s.attributes.iter().any(|a| a.contains("keyloop.jit.issue"))
            })
            .cloned()
    };
    let spans = otlp::wait_for(&receiver, "the issue and the revocation", WAIT, |spans| {
        issued(spans).is_some_and(|issue| {
            let target = format!("{}-{}", issue.trace_id, issue.span_id);
            spans.iter().any(|s| s.links.contains(&target))
        })
    })
    .await;
    let issue = issued(&spans).unwrap();
    let requester = spans
        .iter()
        .find(|s| s.span_id == issue.parent_id)
        .expect("the issue's parent is exported");
    assert_eq!(requester.service, "keyloop-task", "{requester:?}");
    assert_eq!(requester.trace_id, issue.trace_id);
    let target = format!("{}-{}", issue.trace_id, issue.span_id);
    let revocation = spans.iter().find(|s| s.links.contains(&target)).unwrap();
    assert_eq!(
        revocation.service, "keyloop-worker-revoker",
        "{revocation:?}"
    );
}

#[tokio::test]
async fn without_an_endpoint_nothing_is_exported_and_no_event_carries_a_trace() {
    let env = Env::start().await;
    let _w = env.worker("worker", &["leak-responder", "revoker", "rotator"]);
    let events = Events::subscribe(&env.bus).await;
    let value = env.register_and_reveal("svc/untraced").await;
    let report = env.file("leak.json", &gitleaks_report(&value, "a.env"));
    env.ok(&["ingest", "gitleaks", path_str(&report)]).await;
    events
        .wait("the leak revoked", WAIT, |e| {
            e.iter().any(|e| e.data.kind == LifecycleKind::Revoked)
        })
        .await;
    assert!(
        lifecycle(&env.bus)
            .await
            .iter()
            .all(|e| e.traceparent.is_none())
    );
}
