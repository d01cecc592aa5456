//! Replicas share a role's durable consumer: two worker processes on one server split 200 leaks
//! over 200 credentials, and each credential is revoked and rotated exactly once.

use crate::harness::{Env, Events, lifecycle, path_str};
use keyloop_core::{LifecycleKind, Stage};
use std::collections::HashMap;
use std::time::Duration;

const N: usize = 200;

#[tokio::test]
async fn two_worker_processes_share_200_leaks_and_each_credential_is_handled_once() {
    let env = Env::start().await;
    let creds = env
        .register_all((0..N).map(|i| format!("fleet/svc-{i:03}")))
        .await;
    let report = env.generic_report("fleet.jsonl", creds.iter().map(|c| c.value.as_str()));

    let a = env.worker("worker-a", &["leak-responder", "rotator", "revoker"]);
    let b = env.worker("worker-b", &["leak-responder", "rotator", "revoker"]);
    let events = Events::subscribe(&env.bus).await;
    let out = env.ok(&["ingest", "generic", path_str(&report)]).await;
    assert!(out.contains(&format!("{N} published")), "{out}");
    events
        .wait("200 rotations", Duration::from_secs(60), |e| {
            let rotated: std::collections::HashSet<_> = e
                .iter()
                .filter(|e| e.data.kind == LifecycleKind::Rotated)
                .filter_map(|e| e.subject.clone())
                .collect();
            rotated.len() >= N
        })
        .await;

    let stored = lifecycle(&env.bus).await;
    let mut per_credential: HashMap<String, (usize, usize)> = HashMap::new();
    for e in &stored {
        let entry = per_credential
            .entry(e.subject.clone().unwrap_or_default())
            .or_default();
        match e.data.kind {
            LifecycleKind::Revoked => entry.0 += 1,
            LifecycleKind::Rotated => entry.1 += 1,
            _ => {}
        }
    }
    for i in 0..N {
        let id = format!("fleet/svc-{i:03}");
        assert_eq!(
            per_credential.get(&id),
            Some(&(1, 1)),
            "{id}: (revoked, rotated) events"
        );
        let cred = env.credential(&id).await;
        assert_eq!(
            cred.versions
                .iter()
                .filter(|v| v.stage == Stage::Current)
                .count(),
            1,
            "{id}"
        );
        assert_eq!(cred.versions[0].stage, Stage::Revoked, "{id}");
    }
    let (log_a, log_b) = (a.log_text(), b.log_text());
    let handled = |log: &str| {
        log.lines()
            .filter(|l| l.contains("revocation step done"))
            .count()
    };
    let (ha, hb) = (handled(&log_a), handled(&log_b));
    assert!(ha + hb >= N, "every revocation handled (a {ha}, b {hb})");
    assert!(ha > 0 && hb > 0, "both replicas took work (a {ha}, b {hb})");
    assert!(a.stop().await.success());
    assert!(b.stop().await.success());
}
