//! Ingest of a report far beyond async-nats's 5,000 outstanding publish acks (a report of more
//! than 5,000 findings used to hang for ever): every finding reaches the stream, repeats of a
//! value in the report are folded into its first finding, and the summary stays small.

use crate::harness::{Env, path_str, stream_messages};
use keyloop_core::event::CloudEvent;
use keyloop_core::{Fingerprint, LeakFinding};
use std::collections::HashSet;
use std::time::Duration;

const FINDINGS: usize = 20_000;

/// How many leak ids the summary lists (`cmd/ingest/publish.rs`).
const LISTED: usize = 1_000;

#[tokio::test]
async fn a_report_of_20000_findings_is_published_whole_with_repeats_folded() {
    let env = Env::start().await;
    let values: Vec<String> = (0..FINDINGS)
        .map(|i| format!("FAKE-large-report-{i:06}"))
        .collect();
    // The first value twice more, further down: folded into its first finding.
    let lines = values
        .iter()
        .chain([&values[0], &values[0]])
        .map(String::as_str);
    let path = env.generic_report("large.jsonl", lines);

    let out = tokio::time::timeout(
        Duration::from_secs(120),
        env.run(&["ingest", "generic", path_str(&path), "--json"]),
    )
    .await
    .expect("an ingest of 20,000 findings finishes");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("ingest --json prints one JSON object");
    assert_eq!(report["findings"], FINDINGS + 2);
    assert_eq!(report["published"], FINDINGS);
    assert_eq!(report["deduplicated"], 0);
    assert_eq!(report["repeated"], 2);
    assert_eq!(report["rejected"].as_array().unwrap().len(), 0);
    let ids = report["leak_ids"].as_array().unwrap();
    assert_eq!(
        ids.len(),
        LISTED,
        "the summary lists a bounded number of ids"
    );
    assert_eq!(report["leak_ids_not_listed"], FINDINGS - LISTED);

    // Every distinct value is in the stream, once.
    let subject = env.bus.topology.leak_detected();
    let stored = stream_messages(&env.bus, &env.bus.topology.events_stream()).await;
    let leaks: Vec<CloudEvent<LeakFinding>> = stored
        .iter()
        .filter(|m| m.subject == subject)
        .map(|m| serde_json::from_slice(&m.payload).expect("a leak event"))
        .collect();
    assert_eq!(leaks.len(), FINDINGS);
    let sha256 = |v: &str| Fingerprint::of_bytes(v.as_bytes()).sha256.unwrap();
    let expected: HashSet<String> = values.iter().map(|v| sha256(v)).collect();
    let found: HashSet<String> = leaks
        .iter()
        .map(|e| e.data.fingerprint.sha256.clone().unwrap())
        .collect();
    assert_eq!(found, expected);
    // The repeated value's one event is its first finding, and the ids keep report order.
    let first = leaks
        .iter()
        .find(|e| e.data.fingerprint.sha256.as_deref() == Some(sha256(&values[0]).as_str()))
        .unwrap();
    assert_eq!(
        first.data.location.file.as_deref(),
        Some("large.jsonl-0.env")
    );
    assert_eq!(ids[0], first.id.as_str());
}
