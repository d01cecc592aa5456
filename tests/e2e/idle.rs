//! Idle revocation: a credential unused for `idle_revoke_after` is revoked with reason `idle`,
//! counting from its last use, however long after the window the sweep comes.

use crate::harness::{Env, Events};
use futures::StreamExt;
use keyloop_core::event::{CloudEvent, RevokeCommand, ScheduleTick};
use keyloop_core::{LifecycleKind, Policy, RevokeReason};
use keyloop_nats::DueItem;
use keyloop_nats::due::minute_of;
use keyloop_workers::ops::{self, Cause};
use keyloop_workers::sweeper;
use std::time::Duration;
use time::OffsetDateTime;

#[tokio::test]
async fn an_idle_check_refiled_within_its_own_minute_is_kept_and_revokes_after_the_window() {
    let env = Env::start().await;
    let ctx = env.context().await;
    let id: keyloop_core::CredentialId = "svc/idle-fast".parse().unwrap();
    let cause = Cause {
        source: "keyloop/test".into(),
        ..Cause::default()
    };
    let policy = Policy {
        max_age_secs: None,
        grace_secs: 0,
        idle_revoke_after_secs: Some(2),
        owner: None,
        ..Default::default()
    };
    let cred = crate::durations::register_with(&ctx, &id, policy).await;
    let window = Duration::from_secs(2);
    // The idle check falls due at registration + 2 s. A use just after registration moves the
    // earliest idle time a moment later, inside the same minute, so the sweep that finds the
    // check due must file it again under the very key it was read from.
    let due = cred.created_at + window;
    let minute_end = OffsetDateTime::from_unix_timestamp((minute_of(due) + 1) * 60).unwrap();
    let used = cred.created_at + (minute_end - due).min(time::Duration::MILLISECOND) / 2_i32;
    assert_eq!(
        minute_of(used + window),
        minute_of(due),
        "precondition: same key"
    );
    ops::record_use(&ctx, &id, Some(cred.versions[0].id), None, used, &cause)
        .await
        .unwrap();

    let first = sweeper::sweep(&ctx, due).await.unwrap();
    assert_eq!(first.commands, 0, "used since: not idle yet ({first:?})");
    let kept = ctx.due.scan_minute(minute_of(due)).await.unwrap();
    assert!(
        kept.iter().any(|(_, e)| e.item
            == DueItem::Idle {
                credential: id.clone()
            }
            && e.due_at == used + window),
        "the re-filed check is still in the index: {kept:?}"
    );

    // Long after the window (the sweep may come late), it is idle and revoked.
    let second = sweeper::sweep(&ctx, used + window * 30).await.unwrap();
    assert_eq!(second.commands, 1, "{second:?}");
    let revokes: Vec<RevokeCommand> =
        crate::durations::commands_on(&env, &env.bus.topology.cmd_revoke()).await;
    assert_eq!(revokes.len(), 1, "{revokes:?}");
    assert_eq!(revokes[0].credential, id);
    assert_eq!(revokes[0].reason, RevokeReason::Idle);
    assert_eq!(revokes[0].version, None, "every live version");
}

/// Waits for a `schedule.tick` of a window starting at `at_least` (Unix seconds) or later: the
/// scheduler's ticks are the test's clock.
async fn tick_at(ticks: &mut async_nats::Subscriber, at_least: i64) -> i64 {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ticks.next())
            .await
            .expect("the scheduler ticks every second")
            .unwrap();
        let tick: CloudEvent<ScheduleTick> = serde_json::from_slice(&msg.payload).unwrap();
        if tick.data.window_start >= at_least {
            return tick.data.window_start;
        }
    }
}

#[tokio::test]
async fn a_revealed_credential_left_unused_is_revoked_idle_two_seconds_after_its_last_use() {
    let env = Env::start().await;
    let mut ticks = env
        .bus
        .client
        .subscribe(env.bus.topology.schedule_tick())
        .await
        .unwrap();
    env.bus.client.flush().await.unwrap();
    let _w = env.worker(
        "worker",
        &[
            "scheduler",
            "sweeper",
            "revoker",
            "jit-issuer",
            "--tick-interval",
            "1s",
        ],
    );
    let events = Events::subscribe(&env.bus).await;
    // Start early in a minute, so that the re-filed check lands under its own key (the case
    // that used to be lost) rather than in the next minute's bucket.
    let mut start = tick_at(&mut ticks, 0).await;
    while start.rem_euclid(60) >= 50 {
        start = tick_at(&mut ticks, start + 1).await;
    }
    for id in ["svc/idle-used", "svc/idle-unused"] {
        env.ok(&["credential", "register", id, "--idle-revoke-after", "2s"])
            .await;
    }
    let registered = env.credential("svc/idle-used").await.created_at;
    // Use it in the second after the next tick: the sweeps between its first window's end and
    // the end of the window after the use find it used since, and must look again.
    tick_at(&mut ticks, registered.unix_timestamp() + 1).await;
    let value = env
        .ok(&["credential", "reveal", "svc/idle-used"])
        .await
        .trim_end()
        .to_owned();
    let used = env
        .credential("svc/idle-used")
        .await
        .last_used_at
        .expect("reveal records the use");
    assert!(
        used - registered < Duration::from_secs(2),
        "used within its first idle window"
    );

    events
        .wait("both revoked for idleness", Duration::from_secs(20), |e| {
            ["svc/idle-used", "svc/idle-unused"].iter().all(|id| {
                e.iter().any(|e| {
                    e.data.kind == LifecycleKind::Revoked
                        && e.subject.as_deref() == Some(*id)
                        && e.data.revoke_reason == Some(RevokeReason::Idle)
                })
            })
        })
        .await;
    let cred = env.credential("svc/idle-used").await;
    let revoked_at = cred.versions[0].revoked_at.unwrap();
    assert!(
        revoked_at - used >= Duration::from_secs(2),
        "revoked {} after its last use, idle window 2 s",
        revoked_at - used
    );
    assert!(
        !env.verify_value("svc/idle-used", &value).await,
        "the idle value no longer works"
    );
    let unused = env.credential("svc/idle-unused").await;
    assert!(unused.versions[0].revoked_at.unwrap() - unused.created_at >= Duration::from_secs(2));
}
