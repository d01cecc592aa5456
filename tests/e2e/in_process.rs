//! A leak revoked and replaced in the process that matched it (a worker running the
//! leak-responder with the revoker and the rotator): no command between, the same events; the
//! command path when the credential is busy or the roles run apart; and the fault matrix of
//! that path — every store and target operation on it × a permanent fault, a transient one
//! that outlasts the in-process retries, and a crash right after it succeeded (the process
//! aborts, a healthy one takes the leak over when it is delivered again) — for a PostgreSQL
//! `single` role. After every case the invariant is checked against the real cluster: the
//! leaked password no longer logs in (or `revocation_failed` says loudly that it may, with the
//! command in the DLQ), the current value, if any, logs in, nothing is pending, no claim is
//! left, and no event was stored twice.

use crate::harness::{
    Env, Events, gitleaks_report, lifecycle, logs_in, path_str, single_role, stream_messages,
};
use keyloop_core::{Claim, LifecycleEvent, LifecycleKind, Stage};
use keyloop_nats::Change;
use keyloop_testkit::postgres::TestPostgres;
use std::time::Duration;

const ALL_ROLES: [&str; 3] = ["leak-responder", "revoker", "rotator"];

/// Commands ever stored in the commands stream (a work queue: acked ones are gone, their
/// sequence numbers stay).
async fn commands_ever(env: &Env) -> u64 {
    env.stream_state(&env.bus.topology.commands_stream())
        .await
        .last_sequence
}

/// Ingests a gitleaks report naming `value`; returns the leak id.
async fn leak(env: &Env, value: &str) -> String {
    let name = format!("leak-{}.json", uuid::Uuid::now_v7().simple());
    let report = env.file(&name, &gitleaks_report(value, "deploy/.env"));
    let out = env
        .ok(&["ingest", "gitleaks", path_str(&report), "--json"])
        .await;
    let out: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    out["leak_ids"][0].as_str().unwrap().to_owned()
}

fn of_kind<'a>(
    events: &'a [LifecycleEvent],
    kind: LifecycleKind,
    id: &'a str,
) -> impl Iterator<Item = &'a LifecycleEvent> + 'a {
    events
        .iter()
        .filter(move |e| e.data.kind == kind && e.subject.as_deref() == Some(id))
}

#[tokio::test]
async fn a_leak_is_revoked_and_replaced_where_it_was_matched_and_by_command_when_the_roles_run_apart()
 {
    let env = Env::start().await;
    let together = env.worker("together", &ALL_ROLES);
    let (id, value) = ("saas/inproc", env.register_and_reveal("saas/inproc").await);
    let old = env.credential(id).await.versions[0].id;
    let events = Events::subscribe(&env.bus).await;
    let leak_id = leak(&env, &value).await;
    events
        .wait("rotated", Duration::from_secs(10), |e| {
            of_kind(e, LifecycleKind::Rotated, id).count() == 1
        })
        .await;
    env.wait_loop_idle(Duration::from_secs(10)).await;
    assert_eq!(
        commands_ever(&env).await,
        0,
        "no command between the leak and its replacement"
    );
    let stored = lifecycle(&env.bus).await;
    let revoked = of_kind(&stored, LifecycleKind::Revoked, id).collect::<Vec<_>>();
    let rotated = of_kind(&stored, LifecycleKind::Rotated, id).collect::<Vec<_>>();
    assert_eq!((revoked.len(), rotated.len()), (1, 1));
    // The same events as the revoker's and the rotator's, in the leak's chain; their direct
    // cause is the leak, since no command stood between.
    assert_eq!(revoked[0].source, "keyloop/revoker");
    assert_eq!(rotated[0].source, "keyloop/rotator");
    for e in [revoked[0], rotated[0]] {
        assert_eq!(e.correlationid.as_deref(), Some(leak_id.as_str()));
        assert_eq!(e.causationid.as_deref(), Some(leak_id.as_str()));
    }
    assert_eq!(revoked[0].data.version, Some(old));
    assert!(revoked[0].data.time_to_revoke_ms.is_some());
    let cred = env.credential(id).await;
    assert_eq!(cred.version(old).unwrap().stage, Stage::Revoked);
    assert!(cred.current().is_some_and(|c| c.id != old));
    assert!(cred.claim.is_none(), "the claim is released");
    let new_value = env.ok(&["credential", "reveal", id]).await;
    assert_ne!(new_value.trim_end(), value);
    together.stop().await;

    // The roles in separate processes: the leak-responder cannot revoke, so it sends the
    // command, and the revoker sends the rotation's.
    let _responder = env.worker("responder", &["leak-responder"]);
    let _revoker = env.worker("revoker", &["revoker"]);
    let _rotator = env.worker("rotator", &["rotator"]);
    let (apart, value) = ("saas/apart", env.register_and_reveal("saas/apart").await);
    leak(&env, &value).await;
    events
        .wait("rotated by command", Duration::from_secs(10), |e| {
            of_kind(e, LifecycleKind::Rotated, apart).count() == 1
        })
        .await;
    assert_eq!(commands_ever(&env).await, 2, "cmd.revoke, then cmd.rotate");
}

#[tokio::test]
async fn a_leak_of_a_busy_credential_goes_to_the_revoker_by_command_and_is_revoked_once_free() {
    let env = Env::start().await;
    let _worker = env.worker("worker", &ALL_ROLES);
    let (id, value) = ("saas/busy", env.register_and_reveal("saas/busy").await);
    let ctx = keyloop_workers::WorkerContext::open(env.bus.clone(), None)
        .await
        .unwrap();
    let cred_id = id.parse().unwrap();
    // Another operation holds the claim (and would renew it: the revoker waits for it).
    let hold = |c: &mut keyloop_core::Credential| {
        c.claim_epoch += 1;
        c.claim = Some(Claim {
            op: "test/hold".into(),
            holder: "another-worker".into(),
            deadline: time::OffsetDateTime::now_utc() + Duration::from_secs(60),
            token: c.claim_epoch,
            beat: 0,
        });
        Ok(Change::Write(()))
    };
    ctx.inventory.update(&cred_id, hold).await.unwrap();
    let events = Events::subscribe(&env.bus).await;
    leak(&env, &value).await;
    events
        .wait("leak_matched", Duration::from_secs(10), |e| {
            of_kind(e, LifecycleKind::LeakMatched, id).count() == 1
        })
        .await;
    // The leak-responder did not wait for the claim: it handed the revocation over.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while commands_ever(&env).await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no cmd.revoke sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cred = env.credential(id).await;
    assert_eq!(cred.versions[0].stage, Stage::Current, "nothing done yet");
    assert_eq!(cred.claim.as_ref().unwrap().op, "test/hold");
    // The other operation ends: the revoker, retrying, gets the claim.
    ctx.inventory
        .update(&cred_id, |c| {
            c.claim = None;
            Ok(Change::Write(()))
        })
        .await
        .unwrap();
    events
        .wait("rotated", Duration::from_secs(30), |e| {
            of_kind(e, LifecycleKind::Rotated, id).count() == 1
        })
        .await;
    env.wait_loop_idle(Duration::from_secs(10)).await;
    let stored = lifecycle(&env.bus).await;
    assert_eq!(of_kind(&stored, LifecycleKind::Revoked, id).count(), 1);
    assert_eq!(of_kind(&stored, LifecycleKind::Rotated, id).count(), 1);
    let cred = env.credential(id).await;
    assert_eq!(cred.versions[0].stage, Stage::Revoked);
    assert!(cred.claim.is_none());
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Permanent,
    Transient,
    Crash,
}

/// The store and target operations of a leak's chain for a local-store PostgreSQL credential.
const OPERATIONS: [&str; 7] = [
    "invalidate",
    "get",
    "destroy",
    "put_new",
    "apply",
    "test",
    "promote",
];

/// One cell: the leaked password of a `single` role, with `fault` in `op` of the worker that
/// matches it. `Ok` with what happened, or `Err` with what is broken.
async fn cell(pg: &TestPostgres, admin: &str, op: &str, fault: Fault) -> Result<String, String> {
    let env = Env::start().await;
    env.set_env("KEYLOOP_POSTGRES_DSN", admin);
    let id = "pg/leaked";
    let role = single_role(&env, pg, id).await;
    let leaked = env
        .ok(&["credential", "reveal", id])
        .await
        .trim_end()
        .to_owned();
    let old = env.credential(id).await.versions[0].id;
    let spec = match fault {
        Fault::Permanent => format!("permanent={op}"),
        // More than the in-process attempts: the step fails, and the command path retries.
        Fault::Transient => format!("flaky={op}:3"),
        Fault::Crash => format!("crash={op}"),
    };
    let mut roles = ALL_ROLES.to_vec();
    roles.extend(["--inject-faults", &spec]);
    let mut faulty = env.worker("faulty", &roles);
    let events = Events::subscribe(&env.bus).await;
    leak(&env, &leaked).await;
    let mut crashed = false;
    let _healthy = if fault == Fault::Crash {
        // Aborted right after the operation (if the chain calls it); a healthy process gets
        // the leak again once its ack wait is over.
        crashed = tokio::time::timeout(Duration::from_secs(15), faulty.child.wait())
            .await
            .is_ok();
        Some(env.worker("healthy", &ALL_ROLES))
    } else {
        None
    };
    let ended = |e: &[LifecycleEvent]| {
        of_kind(e, LifecycleKind::Rotated, id).count() > 0
            || of_kind(e, LifecycleKind::RotationFailed, id).count() > 0
            || of_kind(e, LifecycleKind::RevocationFailed, id).count() > 0
    };
    events
        .wait("the chain's outcome", Duration::from_secs(45), ended)
        .await;
    env.wait_loop_idle(Duration::from_secs(30)).await;

    let stored = lifecycle(&env.bus).await;
    let count = |kind| of_kind(&stored, kind, id).count();
    let cred = env.credential(id).await;
    let mut broken = Vec::new();
    let revocation_failed = count(LifecycleKind::RevocationFailed) > 0;
    if logs_in(pg, &role, &leaked).await {
        let dlq = stream_messages(&env.bus, &env.bus.topology.dlq_stream()).await;
        if !revocation_failed || !dlq.iter().any(|m| m.subject.ends_with(".revoker")) {
            broken.push("the leaked password still logs in, and nothing says so".to_owned());
        }
    } else if revocation_failed {
        broken.push("revocation_failed, yet the leaked password is dead".to_owned());
    }
    let current: Vec<_> = cred
        .versions
        .iter()
        .filter(|v| v.stage == Stage::Current)
        .collect();
    match current.as_slice() {
        [] if revocation_failed => broken.push("the unrevoked version lost its stage".into()),
        [] => {
            if count(LifecycleKind::RotationFailed) == 0 || cred.rotation_retry.is_none() {
                broken.push("no current version, and no rotation_failed with a retry".into());
            }
        }
        [c] => {
            let value = env.ok(&["credential", "reveal", id]).await;
            if !logs_in(pg, &role, value.trim_end()).await {
                broken.push(format!("current version {} does not log in", c.id));
            }
            if c.id != old && count(LifecycleKind::Rotated) != 1 {
                broken.push("a new current version without one rotated".into());
            }
        }
        many => broken.push(format!("{} current versions", many.len())),
    }
    if cred.versions.iter().any(|v| v.stage == Stage::Pending) {
        broken.push("a version left pending".into());
    }
    if let Some(claim) = &cred.claim {
        broken.push(format!("claim of {} left on the record", claim.op));
    }
    for kind in [
        LifecycleKind::LeakMatched,
        LifecycleKind::Revoked,
        LifecycleKind::Rotated,
        LifecycleKind::RotationFailed,
        LifecycleKind::RevocationFailed,
    ] {
        let per_version = |v| {
            of_kind(&stored, kind, id)
                .filter(|e| e.data.version == Some(v))
                .count()
        };
        for v in cred.versions.iter().map(|v| v.id) {
            if per_version(v) > 1 {
                broken.push(format!("{} stored {} times", kind.name(), per_version(v)));
            }
        }
    }
    let outcome = format!(
        "{}{} revoked, {} rotated, {} rotation_failed, {} revocation_failed",
        if crashed { "crashed; " } else { "" },
        count(LifecycleKind::Revoked),
        count(LifecycleKind::Rotated),
        count(LifecycleKind::RotationFailed),
        count(LifecycleKind::RevocationFailed)
    );
    if broken.is_empty() {
        Ok(outcome)
    } else {
        Err(format!("{outcome}: {}", broken.join("; ")))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_fault_in_a_leak_handled_in_process_leaves_the_leaked_password_working_or_the_role_without_a_working_one()
 {
    use futures::StreamExt;
    let pg = TestPostgres::start().await;
    let admin = pg.create_admin().await;
    let cases: Vec<_> = OPERATIONS
        .iter()
        .flat_map(|op| [Fault::Permanent, Fault::Transient, Fault::Crash].map(|f| (*op, f)))
        .collect();
    let outcomes: Vec<_> = futures::stream::iter(cases)
        .map(|(op, fault)| {
            let (pg, admin) = (&pg, admin.as_str());
            async move { (op, fault, cell(pg, admin, op, fault).await) }
        })
        .buffer_unordered(7)
        .collect()
        .await;
    let mut broken = Vec::new();
    for (op, fault, outcome) in &outcomes {
        match outcome {
            Ok(o) => println!("{op:>10} {fault:?}: {o}"),
            Err(e) => {
                println!("{op:>10} {fault:?}: {e}  <-- BROKEN");
                broken.push(format!("{op} {fault:?}: {e}"));
            }
        }
    }
    let crashed = outcomes
        .iter()
        .filter(|(_, _, o)| o.as_ref().is_ok_and(|o| o.starts_with("crashed")))
        .count();
    println!("{crashed} of 7 crash cells crashed on the chain's path");
    assert!(
        broken.is_empty(),
        "{} broken cells:\n{}",
        broken.len(),
        broken.join("\n")
    );
}

#[tokio::test]
async fn a_compare_and_set_from_a_held_record_decides_once_when_fresh_and_again_when_stale() {
    let env = Env::start().await;
    let id = "saas/cas";
    env.register_and_reveal(id).await;
    let inventory = env.bus.inventory().await.unwrap();
    let cred_id = id.parse().unwrap();
    let (held, revision) = inventory.require(&cred_id).await.unwrap();
    // Sets the owner to `to`; its value is the owners it decided on, one per attempt.
    let owners = |to: &'static str| {
        let mut seen = Vec::new();
        move |c: &mut keyloop_core::Credential| {
            seen.push(c.policy.owner.clone());
            c.policy.owner = Some(to.into());
            Ok(Change::Write(seen.clone()))
        }
    };
    // Fresh: one decision on the held record, written at a later revision.
    let (seen, (written, second)) = inventory
        .update_from(&cred_id, Some((held.clone(), revision)), owners("a"))
        .await
        .unwrap();
    assert_eq!(seen, vec![None]);
    assert!(second > revision);
    assert_eq!(written.policy.owner.as_deref(), Some("a"));
    // Stale: the write on the old revision is refused; the stored record is read and decided on.
    let (seen, (written, third)) = inventory
        .update_from(&cred_id, Some((held, revision)), owners("b"))
        .await
        .unwrap();
    assert_eq!(seen, vec![None, Some("a".to_owned())]);
    let (stored, stored_revision) = inventory.require(&cred_id).await.unwrap();
    assert_eq!(
        (stored.policy.owner.as_deref(), stored_revision),
        (Some("b"), third)
    );
    assert_eq!(written.policy.owner, stored.policy.owner);
    // A decision that changes the record but keeps it hands back the record as stored.
    let ((), (kept, kept_revision)) = inventory
        .update_from(&cred_id, None, |c| {
            c.policy.owner = Some("never written".into());
            Ok(Change::Keep(()))
        })
        .await
        .unwrap();
    assert_eq!(
        (kept.policy.owner.as_deref(), kept_revision),
        (Some("b"), third)
    );
}
