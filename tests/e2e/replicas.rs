//! Replicas share a role's durable consumer: two worker processes on one server split 200 leaks
//! over 200 credentials, and each credential is revoked and rotated exactly once.

use crate::harness::{Env, Events, lifecycle, path_str};
use keyloop_backends::MasterKey;
use keyloop_core::{LifecycleKind, Policy, Stage, StoreKind, TargetKind};
use keyloop_workers::WorkerContext;
use keyloop_workers::ops::{self, Cause, Registration};
use std::collections::HashMap;
use std::time::Duration;

const N: usize = 200;

#[tokio::test]
async fn two_worker_processes_share_200_leaks_and_each_credential_is_handled_once() {
    let env = Env::start().await;
    let key =
        MasterKey::from_hex(&std::fs::read_to_string(env.dir.path().join("master.key")).unwrap())
            .unwrap();
    let ctx = WorkerContext::open(env.bus.clone(), Some(&key))
        .await
        .unwrap();
    let cause = Cause {
        source: "keyloop/test".into(),
        ..Default::default()
    };
    let mut lines = String::new();
    for i in 0..N {
        let id: keyloop_core::CredentialId = format!("fleet/svc-{i:03}").parse().unwrap();
        let reg = Registration {
            id: id.clone(),
            store: StoreKind::Local,
            target: TargetKind::None,
            policy: Policy {
                max_age_secs: None,
                grace_secs: 0,
                idle_revoke_after_secs: None,
                owner: None,
            },
            settings: Default::default(),
        };
        let cred = ops::register(&ctx, reg, &cause).await.unwrap();
        let store = ctx.backends.store(StoreKind::Local).unwrap();
        let value = store
            .get(&cred, cred.versions[0].id)
            .await
            .unwrap()
            .unwrap();
        lines.push_str(
            &serde_json::json!({"secret": value.expose(), "file": format!("svc-{i}.env")})
                .to_string(),
        );
        lines.push('\n');
    }
    let report = env.file("fleet.jsonl", lines.as_bytes());
    drop(lines);

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
