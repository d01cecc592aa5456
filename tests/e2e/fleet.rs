//! The fleet: operations on one credential serialize across replicas through the inventory
//! claim; a dead holder's claim lapses by the waiter's own clock, a renewed one never does, and
//! a holder whose claim was taken over is fenced off; SIGTERM finishes what is in hand and exits
//! 0.

use crate::harness::{Env, Events, lifecycle, stream_messages};
use keyloop_core::event::{CloudEvent, ROTATE_COMMAND_TYPE, RotateCommand};
use keyloop_core::{Claim, CredentialId, LifecycleKind, RotationReason, Stage};
use keyloop_nats::Change;
use std::collections::HashSet;
use std::time::{Duration, Instant};
use time::OffsetDateTime;

async fn rotate_command(env: &Env, credential: &str, op: &str) {
    let cmd = RotateCommand {
        credential: credential.parse().unwrap(),
        reason: RotationReason::Manual,
        op_id: op.into(),
    };
    let event = CloudEvent::new(op, "keyloop/test", ROTATE_COMMAND_TYPE, cmd)
        .caused_by(Some(op.into()), None);
    env.bus
        .publish_event(&env.bus.topology.cmd_rotate(), &event)
        .await
        .unwrap();
}

#[tokio::test]
async fn concurrent_rotations_of_one_credential_serialize_across_replicas() {
    let env = Env::start().await;
    env.register_all(["svc/contended".to_owned()]).await;
    let _workers: Vec<_> = (0..3)
        .map(|i| env.worker(&format!("w{i}"), &["rotator", "revoker"]))
        .collect();
    let events = Events::subscribe(&env.bus).await;
    const OPS: usize = 30;
    for i in 0..OPS {
        rotate_command(&env, "svc/contended", &format!("burst-{i:02}")).await;
    }
    events
        .wait("30 rotations", Duration::from_secs(30), |e| {
            e.iter()
                .filter(|e| e.data.kind == LifecycleKind::Rotated)
                .map(|e| e.correlationid.clone())
                .collect::<HashSet<_>>()
                .len()
                >= OPS
        })
        .await;

    // In the audit log each operation's events form one block: no other operation's event
    // falls between its rotation_started and its rotated.
    let stored = lifecycle(&env.bus).await;
    let mut open: Option<String> = None;
    let mut finished = HashSet::new();
    for e in stored.iter().filter(|e| {
        e.subject.as_deref() == Some("svc/contended") && e.data.kind != LifecycleKind::Created
    }) {
        let op = e.correlationid.clone().unwrap();
        match e.data.kind {
            LifecycleKind::RotationStarted => {
                assert!(open.is_none(), "{op} started while {open:?} was in flight");
                open = Some(op);
            }
            LifecycleKind::Rotated => {
                assert_eq!(open.as_deref(), Some(op.as_str()), "rotated out of turn");
                open = None;
                assert!(finished.insert(op));
            }
            _ => assert_eq!(
                open.as_deref(),
                Some(op.as_str()),
                "{:?} outside its operation",
                e.data.kind
            ),
        }
    }
    assert_eq!(finished.len(), OPS);
    let cred = env.credential("svc/contended").await;
    assert_eq!(
        cred.versions
            .iter()
            .filter(|v| v.stage == Stage::Current)
            .count(),
        1
    );
    assert_eq!(
        cred.versions
            .iter()
            .filter(|v| v.stage == Stage::Previous)
            .count(),
        1
    );
    assert_eq!(cred.versions.len(), OPS + 1);
    env.claim_released("svc/contended").await;
}

/// Writes a claim of another holder on `id`, as a worker elsewhere would have.
async fn foreign_claim(env: &Env, id: &CredentialId, deadline: OffsetDateTime, beat: u64) {
    env.bus
        .inventory()
        .await
        .unwrap()
        .update(id, |c| {
            c.claim_epoch = 7;
            c.claim = Some(Claim {
                op: "ghost-op".into(),
                holder: "worker-elsewhere".into(),
                deadline,
                token: 7,
                beat,
            });
            Ok(Change::Write(()))
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn a_dead_holders_claim_lapses_by_the_waiters_clock_whatever_its_deadline_says() {
    let env = Env::start().await;
    env.register_all(["svc/orphaned".to_owned()]).await;
    let id: CredentialId = "svc/orphaned".parse().unwrap();
    // Its deadline says a century: a holder's wall clock is not trusted.
    foreign_claim(
        &env,
        &id,
        OffsetDateTime::now_utc() + Duration::from_secs(100 * 365 * 86_400),
        0,
    )
    .await;
    let mut ctx = env.context().await;
    ctx.claim_ttl = Duration::from_secs(1);
    let started = Instant::now();
    let token = keyloop_workers::claim::with_claim(&ctx, &id, "next-op", async {
        Ok(env.credential("svc/orphaned").await.claim.unwrap().token)
    })
    .await
    .expect("the silent claim is taken over");
    assert!(
        started.elapsed() >= ctx.claim_ttl,
        "taken only after a whole TTL without a renewal: {:?}",
        started.elapsed()
    );
    assert_eq!(token, 8, "a new fencing token, above the dead holder's");
    println!(
        "a claim nobody renewed was taken over after {:?} (TTL {:?})",
        started.elapsed(),
        ctx.claim_ttl
    );
}

#[tokio::test]
async fn a_renewed_claim_is_never_taken_even_when_its_holders_clock_says_it_expired() {
    let env = Env::start().await;
    env.register_all(["svc/alive".to_owned()]).await;
    let id: CredentialId = "svc/alive".parse().unwrap();
    // A live holder whose wall clock is far behind: its deadline is long past, but it renews.
    let past = OffsetDateTime::UNIX_EPOCH;
    foreign_claim(&env, &id, past, 0).await;
    let renewer = {
        let bus = env.bus.clone();
        let id = id.clone();
        tokio::spawn(async move {
            let inventory = bus.inventory().await.unwrap();
            let mut every = tokio::time::interval(Duration::from_millis(200));
            loop {
                every.tick().await;
                let _ = inventory
                    .update(&id, |c| {
                        if let Some(k) = &mut c.claim {
                            k.beat += 1;
                        }
                        Ok(Change::Write(()))
                    })
                    .await;
            }
        })
    };
    let mut ctx = env.context().await;
    ctx.claim_ttl = Duration::from_secs(1);
    let outcome = keyloop_workers::claim::with_claim(&ctx, &id, "next-op", async { Ok(()) }).await;
    renewer.abort();
    assert_eq!(
        outcome.unwrap_err().kind(),
        keyloop_workers::ErrorKind::Busy,
        "a renewing holder keeps its claim"
    );
    assert_eq!(
        env.credential("svc/alive").await.claim.unwrap().holder,
        "worker-elsewhere"
    );
}

#[tokio::test]
async fn a_holder_whose_claim_was_taken_over_writes_nothing_and_calls_no_backend() {
    let env = Env::start().await;
    let registered = env.register_all(["svc/fenced".to_owned()]).await;
    let id: CredentialId = "svc/fenced".parse().unwrap();
    let ctx = env.context().await;
    let (taken_tx, taken_rx) = tokio::sync::oneshot::channel::<()>();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let holder = async {
        keyloop_workers::claim::with_claim(&ctx, &id, "slow-op", async {
            let _ = started_tx.send(());
            taken_rx.await.unwrap();
            // Another worker took the claim over while this one was stalled.
            let write = keyloop_workers::claim::update_credential(&ctx, &id, |c| {
                c.policy.owner = Some("written by a stale holder".into());
                Ok(Change::Write(()))
            })
            .await;
            let store = ctx.backends.store(keyloop_core::StoreKind::Local).unwrap();
            let cred = env.credential("svc/fenced").await;
            let read = store.get(&cred, registered[0].version).await;
            Ok((write, read))
        })
        .await
    };
    let thief = async {
        started_rx.await.unwrap();
        env.bus
            .inventory()
            .await
            .unwrap()
            .update(&id, |c| {
                c.claim_epoch += 1;
                let claim = c.claim.as_mut().unwrap();
                claim.holder = "the-worker-that-took-over".into();
                claim.token = c.claim_epoch;
                Ok(Change::Write(()))
            })
            .await
            .unwrap();
        taken_tx.send(()).unwrap();
    };
    let (outcome, ()) = tokio::join!(holder, thief);
    let (write, read) = outcome.unwrap();
    let write = write.unwrap_err();
    assert_eq!(write.kind(), keyloop_workers::ErrorKind::Busy);
    assert!(write.to_string().contains("lost its claim"), "{write}");
    let read = read.unwrap_err();
    assert!(read.message.contains("lost its claim"), "{}", read.message);
    let cred = env.credential("svc/fenced").await;
    assert_eq!(cred.policy.owner, None, "the stale write never landed");
    assert_eq!(
        cred.claim.unwrap().holder,
        "the-worker-that-took-over",
        "and the stale holder did not release the new holder's claim"
    );
}

#[tokio::test]
async fn sigterm_finishes_messages_in_hand_and_exits_zero() {
    let env = Env::start().await;
    const N: usize = 300;
    env.register_all((0..N).map(|i| format!("svc/s-{i:03}")))
        .await;
    let events = Events::subscribe(&env.bus).await;
    let first = env.worker("first", &["rotator", "revoker"]);
    for i in 0..N {
        rotate_command(&env, &format!("svc/s-{i:03}"), &format!("shutdown-{i:03}")).await;
    }
    events
        .wait("some rotations", Duration::from_secs(20), |e| {
            e.iter()
                .filter(|e| e.data.kind == LifecycleKind::Rotated)
                .count()
                >= 30
        })
        .await;
    let stopped = Instant::now();
    let status = first.stop().await;
    assert!(status.success(), "exit status {status}");
    println!("worker stopped {:?} after SIGTERM", stopped.elapsed());

    // Nothing half-done: no credential is left with a pending version.
    let inventory = env.bus.inventory().await.unwrap();
    let creds = inventory.list().await.unwrap();
    let half_done: Vec<_> = creds
        .iter()
        .filter(|c| c.versions.iter().any(|v| v.stage == Stage::Pending))
        .map(|c| c.id.to_string())
        .collect();
    assert!(half_done.is_empty(), "half-done rotations: {half_done:?}");
    let done_by_first = creds.iter().filter(|c| c.versions.len() == 2).count();

    let _second = env.worker("second", &["rotator", "revoker"]);
    events
        .wait("all rotations", Duration::from_secs(30), |e| {
            e.iter()
                .filter(|e| e.data.kind == LifecycleKind::Rotated)
                .map(|e| e.subject.clone())
                .collect::<HashSet<_>>()
                .len()
                >= N
        })
        .await;
    println!(
        "first worker finished {done_by_first} of {N} before SIGTERM; the second did the rest"
    );
    for c in inventory.list().await.unwrap() {
        assert_eq!(c.versions.len(), 2, "{} rotated exactly once", c.id);
    }
    assert!(
        stream_messages(&env.bus, &env.bus.topology.dlq_stream())
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn a_slow_operation_renews_its_claim_past_the_ttl() {
    let env = Env::start().await;
    env.register_all(["svc/slow".to_owned()]).await;
    let mut ctx = env.context().await;
    ctx.claim_ttl = Duration::from_millis(300);
    let ctx = std::sync::Arc::new(ctx);
    let id: keyloop_core::CredentialId = "svc/slow".parse().unwrap();
    let (started, running) = tokio::sync::oneshot::channel();
    let slow = {
        let (ctx, id) = (ctx.clone(), id.clone());
        tokio::spawn(async move {
            keyloop_workers::claim::with_claim(&ctx, &id, "slow-op", async {
                let _ = started.send(());
                // A backend call that takes four claim TTLs.
                tokio::time::sleep(Duration::from_millis(1_200)).await;
                Ok(())
            })
            .await
        })
    };
    running.await.unwrap();
    // Three TTLs in: without renewal the claim would have lapsed twice over.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let cred = env.credential("svc/slow").await;
    let claim = cred
        .claim
        .expect("the slow operation still holds its claim");
    assert_eq!(claim.op, "slow-op");
    assert!(
        claim.deadline > OffsetDateTime::now_utc(),
        "its deadline was pushed forward"
    );
    slow.await.unwrap().unwrap();
    assert!(
        env.credential("svc/slow").await.claim.is_none(),
        "released when done"
    );
}

#[tokio::test]
async fn racing_writers_of_one_record_each_land_once_after_losing_races() {
    let env = Env::start().await;
    env.register_all(["svc/raced".to_owned()]).await;
    let id: CredentialId = "svc/raced".parse().unwrap();
    let inventory = env.bus.inventory().await.unwrap();
    let (before, _) = inventory.require(&id).await.unwrap();
    const WRITERS: u64 = 12;
    let decisions = std::sync::atomic::AtomicU64::new(0);
    let writes = (0..WRITERS).map(|_| {
        inventory.update(&id, |c| {
            decisions.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            c.claim_epoch += 1;
            Ok(Change::Write(()))
        })
    });
    futures::future::try_join_all(writes).await.unwrap();
    let (after, _) = inventory.require(&id).await.unwrap();
    assert_eq!(
        after.claim_epoch,
        before.claim_epoch + WRITERS,
        "every write landed exactly once"
    );
    let decisions = decisions.into_inner();
    assert!(
        decisions > WRITERS,
        "the writers raced ({decisions} decisions): a loser read and decided again"
    );
}
