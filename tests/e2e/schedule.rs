//! The scheduler and sweeper: one tick per window whatever the number of replicas, and
//! scheduled rotation that keeps the previous version valid through its grace.

use crate::harness::{Env, Events, lifecycle, stream_messages};
use futures::StreamExt;
use keyloop_core::event::{CloudEvent, ScheduleTick};
use keyloop_core::{LifecycleKind, RevokeReason};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

#[tokio::test]
async fn three_scheduler_replicas_put_exactly_one_tick_per_window() {
    let env = Env::start().await;
    let mut wire = env
        .bus
        .client
        .subscribe("keyloop.schedule.tick")
        .await
        .unwrap();
    env.bus.client.flush().await.unwrap();
    let replicas: Vec<_> = (0..3)
        .map(|i| {
            env.worker(
                &format!("scheduler-{i}"),
                &["scheduler", "--tick-interval", "1s"],
            )
        })
        .collect();
    // Watch the wire (which sees every replica's publish, duplicates included) until three whole
    // windows have begun after all replicas were up.
    let mut published = 0;
    let mut windows = BTreeSet::new();
    while windows.len() < 4 {
        let msg = tokio::time::timeout(Duration::from_secs(10), wire.next())
            .await
            .expect("ticks keep coming")
            .unwrap();
        let tick: CloudEvent<ScheduleTick> = serde_json::from_slice(&msg.payload).unwrap();
        published += 1;
        windows.insert(tick.data.window_start);
    }
    for r in replicas {
        assert!(r.stop().await.success());
    }
    let stored: Vec<CloudEvent<ScheduleTick>> =
        stream_messages(&env.bus, &env.bus.topology.events_stream())
            .await
            .iter()
            .map(|m| serde_json::from_slice(&m.payload).unwrap())
            .collect();
    let mut per_window: BTreeMap<i64, usize> = BTreeMap::new();
    for t in &stored {
        *per_window.entry(t.data.window_start).or_default() += 1;
    }
    println!(
        "ticks published by 3 replicas: {published}+, stored: {}, windows: {per_window:?}",
        stored.len()
    );
    assert!(
        per_window.values().all(|&n| n == 1),
        "one tick per window: {per_window:?}"
    );
    let w: Vec<_> = per_window.keys().copied().collect();
    assert!(
        w.windows(2).all(|p| p[1] - p[0] == 1),
        "consecutive windows: {w:?}"
    );
    assert!(
        w.len() >= 4,
        "three whole windows and the one they started in: {w:?}"
    );
    assert!(
        published > windows.len(),
        "the replicas did publish duplicates ({published} for {} windows)",
        windows.len()
    );
}

#[tokio::test]
async fn scheduled_rotation_keeps_previous_valid_through_grace_then_retires_it() {
    let env = Env::start().await;
    let _w = env.worker(
        "worker",
        &[
            "leak-responder",
            "rotator",
            "revoker",
            "scheduler",
            "sweeper",
            "jit-issuer",
            "--tick-interval",
            "1s",
        ],
    );
    let events = Events::subscribe(&env.bus).await;
    env.ok(&[
        "credential",
        "register",
        "svc/rotating",
        "--max-age",
        "2s",
        "--grace",
        "2s",
    ])
    .await;
    let v1_value = env
        .ok(&["credential", "reveal", "svc/rotating"])
        .await
        .trim_end()
        .to_owned();
    let v1 = env.credential("svc/rotating").await.versions[0].id;
    assert!(env.verify_value("svc/rotating", &v1_value).await);

    events
        .wait("scheduled rotation", Duration::from_secs(10), |e| {
            e.iter().any(|e| {
                e.data.kind == LifecycleKind::Rotated && e.data.previous_version == Some(v1)
            })
        })
        .await;
    // During grace: both the previous and the new current value work.
    let v2_value = env
        .ok(&["credential", "reveal", "svc/rotating"])
        .await
        .trim_end()
        .to_owned();
    assert_ne!(v1_value, v2_value);
    // `credential show` says what falls due, as the sweeper computes it.
    let shown = env.ok(&["credential", "show", "svc/rotating"]).await;
    let record = env.credential("svc/rotating").await;
    let rfc = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let demoted = record.version(v1).unwrap().demoted_at.unwrap();
    let current = record.current().unwrap();
    for line in [
        format!(
            "grace ends: {} (version {} stops working then)",
            rfc(demoted + Duration::from_secs(2)),
            &v1.to_string()[28..]
        ),
        format!(
            "next rotation: {} (every 2s)",
            rfc(current.activated_at.unwrap() + Duration::from_secs(2))
        ),
        format!("last use: {}", rfc(record.last_used_at.unwrap())),
        "idle after: never (no idle policy)".to_owned(),
    ] {
        assert!(shown.contains(&line), "{line} in:\n{shown}");
    }
    assert!(
        env.verify_value("svc/rotating", &v1_value).await,
        "previous version is valid during grace"
    );
    assert!(
        env.verify_value("svc/rotating", &v2_value).await,
        "current version is valid"
    );

    events
        .wait("retirement after grace", Duration::from_secs(10), |e| {
            e.iter()
                .any(|e| e.data.kind == LifecycleKind::Revoked && e.data.version == Some(v1))
        })
        .await;
    assert!(
        !env.verify_value("svc/rotating", &v1_value).await,
        "previous version is invalid after grace"
    );
    assert!(
        env.verify_value("svc/rotating", &v2_value).await,
        "the value that followed it still works"
    );

    let stored: Vec<_> = lifecycle(&env.bus)
        .await
        .into_iter()
        .filter(|e| e.subject.as_deref() == Some("svc/rotating"))
        .collect();
    let rotated = stored
        .iter()
        .position(|e| e.data.kind == LifecycleKind::Rotated && e.data.previous_version == Some(v1))
        .unwrap();
    let retired = stored
        .iter()
        .position(|e| e.data.kind == LifecycleKind::Revoked && e.data.version == Some(v1))
        .unwrap();
    assert!(rotated < retired);
    assert_eq!(
        stored[retired].data.revoke_reason,
        Some(RevokeReason::GraceEnded)
    );
    let v1_record = env
        .credential("svc/rotating")
        .await
        .version(v1)
        .cloned()
        .unwrap();
    let grace = v1_record.revoked_at.unwrap() - v1_record.demoted_at.unwrap();
    assert!(
        grace >= Duration::from_secs(2),
        "previous version retired {grace} after demotion (grace 2 s)"
    );
}

#[tokio::test]
async fn a_due_entry_filed_again_in_its_own_minute_survives_the_removal_of_the_one_handled() {
    // A sub-minute max-age: the rotation the sweep issued finishes and files the next one under
    // the same key before the sweep removes the entry it handled. That must not lose it.
    let env = Env::start().await;
    let due = env.bus.due().await.unwrap();
    let item = keyloop_nats::DueItem::Rotate {
        credential: "svc/fast".parse().unwrap(),
    };
    let minute = time::OffsetDateTime::from_unix_timestamp(
        time::OffsetDateTime::now_utc().unix_timestamp() / 60 * 60,
    )
    .unwrap();
    let first = minute + Duration::from_secs(10);
    let key = due.schedule(item.clone(), first, first).await.unwrap();
    let handled = due
        .scan_minute(keyloop_nats::due::minute_of(first))
        .await
        .unwrap()
        .into_iter()
        .find(|(k, _)| *k == key)
        .unwrap()
        .1;
    let again = minute + Duration::from_secs(40);
    assert_eq!(due.schedule(item.clone(), again, first).await.unwrap(), key);
    due.remove(&key, &handled).await.unwrap();
    let left = due
        .scan_minute(keyloop_nats::due::minute_of(first))
        .await
        .unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].1.due_at, again, "the newer entry stays");
    // The entry as handled, when nothing replaced it, goes.
    due.remove(&key, &left[0].1).await.unwrap();
    assert!(
        due.scan_minute(keyloop_nats::due::minute_of(first))
            .await
            .unwrap()
            .is_empty()
    );
}
