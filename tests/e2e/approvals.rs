//! Approvals on a secured server, with real NATS users as requester and approver: a
//! high-blast-radius revocation held until another admin approves (self-approval refused, a
//! non-admin refused, the value live until the grant, dead after it), deny with a reason,
//! expiry by the sweeper, a JIT approve-tier lease issued once after the grant (`task start
//! --wait`), N-of-M from a policy group, and the revocation budget tripping at N+1, holding
//! the rest as one approval, leak revocation going ahead regardless, and one grant releasing
//! the batch. Every check of a value is a real verification, not the inventory.

use crate::harness::{Env, Follower, gitleaks_report, path_str, with_stdin};
use keyloop_core::policy::{Approval, ApprovalState};
use keyloop_core::{LifecycleEvent, LifecycleKind, RevokeReason};
use std::process::Output;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

const WAIT: Duration = Duration::from_secs(30);

async fn as_user(env: &Env, user: &str, args: &[&str]) -> Output {
    env.api().await;
    env.keyloop_as(user).args(args).output().await.unwrap()
}

/// `keyloop token verify` as orchestrator-a (ops may not verify tokens): whether it works.
async fn token_works(env: &Env, token: &str) -> bool {
    let mut cmd = env.keyloop_as("orchestrator-a");
    cmd.args(["token", "verify"]);
    let out = with_stdin(cmd, token).await;
    match out.status.code() {
        Some(0) => true,
        Some(2) => false,
        _ => panic!("token verify failed: {}", stderr(&out)),
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json_line(out: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("not one JSON line ({e}): {text}\n{}", stderr(out)))
}

/// A secured env whose admins are `ops` and `orchestrator-b` (two real NATS users who may
/// approve), with a revoker and a rotator.
async fn two_admins() -> (Env, Vec<crate::harness::Worker>) {
    let env = Env::start_secured().await;
    env.set_env("KEYLOOP_API_ADMINS", "ops,orchestrator-b");
    let workers = vec![
        env.worker_as("revoker", "revoker", &["revoker"]),
        env.worker_as("rotator", "rotator", &["rotator"]),
    ];
    (env, workers)
}

fn of_kind<'a>(
    events: &'a [LifecycleEvent],
    kind: LifecycleKind,
    approval: &str,
) -> Vec<&'a LifecycleEvent> {
    events
        .iter()
        .filter(|e| {
            e.data.kind == kind && e.data.approval.as_ref().is_some_and(|a| a.id == approval)
        })
        .collect()
}

/// `revoke ID --json` held for approval: its approval id and operation id.
async fn held_revoke(env: &Env, id: &str) -> (String, String) {
    let out = as_user(
        env,
        "ops",
        &["revoke", id, "--reason", "suspected compromise", "--json"],
    )
    .await;
    assert_eq!(out.status.code(), Some(3), "held, exit 3: {}", stderr(&out));
    let queued = json_line(&out);
    (
        queued["approval"]
            .as_str()
            .expect("an approval id")
            .to_owned(),
        queued["op_id"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn a_high_blast_radius_revocation_waits_for_another_admin_and_runs_once_granted() {
    let (env, _workers) = two_admins().await;
    let follower = Follower::lifecycle(&env.bus).await;
    env.ok(&[
        "credential",
        "register",
        "svc/vault",
        "--blast-radius",
        "high",
    ])
    .await;
    let value = env
        .ok(&["credential", "reveal", "svc/vault"])
        .await
        .trim_end()
        .to_owned();

    let (approval, op_id) = held_revoke(&env, "svc/vault").await;
    assert!(
        env.verify_value("svc/vault", &value).await,
        "held: the value still works"
    );

    // The requester may not approve their own request.
    let out = as_user(&env, "ops", &["approvals", "approve", &approval]).await;
    assert!(
        !out.status.success() && stderr(&out).contains("self_approval"),
        "{}",
        stderr(&out)
    );
    // A non-admin sees nothing and may not approve.
    let out = as_user(&env, "orchestrator-a", &["approvals", "list", "--json"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).trim().is_empty(),
        "orchestrator-a sees no approval"
    );
    let out = as_user(&env, "orchestrator-a", &["approvals", "approve", &approval]).await;
    assert!(!out.status.success(), "orchestrator-a may not approve");
    assert!(env.verify_value("svc/vault", &value).await, "still held");

    // The other admin sees it, with who asked and why, and approves.
    let out = as_user(&env, "orchestrator-b", &["approvals", "list", "--json"]).await;
    let listed: Approval = serde_json::from_slice(out.stdout.trim_ascii()).unwrap();
    assert_eq!(
        (listed.id.as_str(), listed.requester.as_str()),
        (approval.as_str(), "ops")
    );
    assert_eq!(listed.reason, "suspected compromise");
    assert_eq!(
        listed.policies,
        ["admins-do-everything", "high-blast-radius-needs-approval"]
    );
    let out = as_user(
        &env,
        "orchestrator-b",
        &["approvals", "approve", &approval, "--json"],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let decided = json_line(&out);
    assert_eq!(decided["approval"]["state"], "used", "{decided}");
    assert_eq!(decided["op_id"], op_id.as_str());

    follower
        .wait("the held revocation", WAIT, |e| {
            e.iter().any(|e| {
                e.data.kind == LifecycleKind::Revoked && e.correlationid.as_deref() == Some(&op_id)
            })
        })
        .await;
    assert!(
        !env.verify_value("svc/vault", &value).await,
        "revoked after the grant"
    );
    let events = follower.events();
    let requested = of_kind(&events, LifecycleKind::ApprovalRequested, &approval);
    let granted = of_kind(&events, LifecycleKind::ApprovalGranted, &approval);
    assert_eq!((requested.len(), granted.len()), (1, 1), "{events:#?}");
    assert_eq!(requested[0].data.actor.as_deref(), Some("ops"));
    assert_eq!(granted[0].data.actor.as_deref(), Some("orchestrator-b"));
    assert!(
        granted[0]
            .data
            .policies
            .contains(&"high-blast-radius-needs-approval".to_owned())
    );
    let revoked = events
        .iter()
        .find(|e| e.data.kind == LifecycleKind::Revoked)
        .unwrap();
    assert_eq!(
        revoked.data.actor.as_deref(),
        Some("ops"),
        "the revocation is the requester's"
    );
    // A grant is used once: approving again changes nothing.
    let out = as_user(&env, "orchestrator-b", &["approvals", "approve", &approval]).await;
    assert!(
        !out.status.success() && stderr(&out).contains("not_pending"),
        "{}",
        stderr(&out)
    );
    // `replay` shows who approved what.
    let replay = env.ok(&["replay", "--correlation", &op_id]).await;
    assert!(
        replay.contains("approval_granted")
            && replay.contains("actor=orchestrator-b")
            && replay.contains(&approval),
        "{replay}"
    );
}

#[tokio::test]
async fn a_denial_keeps_the_value_and_says_why_and_an_undecided_approval_expires() {
    let (env, _workers) = two_admins().await;
    env.set_env("KEYLOOP_APPROVAL_TTL", "2s");
    let _clock = env.worker_as("sweeper", "sweeper", &["sweeper", "--tick-interval", "1s"]);
    let _ticks = env.worker_as(
        "scheduler",
        "scheduler",
        &["scheduler", "--tick-interval", "1s"],
    );
    let follower = Follower::lifecycle(&env.bus).await;
    env.ok(&[
        "credential",
        "register",
        "svc/vault",
        "--blast-radius",
        "high",
    ])
    .await;
    let value = env
        .ok(&["credential", "reveal", "svc/vault"])
        .await
        .trim_end()
        .to_owned();

    let (denied, _) = held_revoke(&env, "svc/vault").await;
    let out = as_user(
        &env,
        "orchestrator-b",
        &[
            "approvals",
            "deny",
            &denied,
            "--reason",
            "change freeze",
            "--json",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(json_line(&out)["approval"]["state"], "denied");
    follower
        .wait("approval_denied", WAIT, |e| {
            !of_kind(e, LifecycleKind::ApprovalDenied, &denied).is_empty()
        })
        .await;
    let events = follower.events();
    let event = of_kind(&events, LifecycleKind::ApprovalDenied, &denied)[0];
    assert_eq!(event.data.detail.as_deref(), Some("change freeze"));
    assert_eq!(event.data.actor.as_deref(), Some("orchestrator-b"));
    assert!(
        env.verify_value("svc/vault", &value).await,
        "a denied revocation never runs"
    );

    // Nobody decides the next one: the sweeper expires it at its deadline.
    let (expiring, _) = held_revoke(&env, "svc/vault").await;
    follower
        .wait("approval_expired", WAIT, |e| {
            !of_kind(e, LifecycleKind::ApprovalExpired, &expiring).is_empty()
        })
        .await;
    let out = as_user(&env, "orchestrator-b", &["approvals", "approve", &expiring]).await;
    assert!(
        !out.status.success() && stderr(&out).contains("expired"),
        "{}",
        stderr(&out)
    );
    assert!(
        env.verify_value("svc/vault", &value).await,
        "an expired revocation never runs"
    );
    let out = as_user(&env, "ops", &["approvals", "show", &expiring, "--json"]).await;
    let shown: Approval = serde_json::from_slice(out.stdout.trim_ascii()).unwrap();
    assert_eq!(shown.state, ApprovalState::Expired);
}

/// `task start --scope admin` as orchestrator-a.
fn task_start(env: &Env, task: &str, wait: bool) -> tokio::process::Command {
    let mut cmd = env.keyloop_as("orchestrator-a");
    cmd.args([
        "task", "start", task, "--scope", "admin", "--ttl", "10m", "--json",
    ]);
    if wait {
        cmd.arg("--wait");
    }
    cmd
}

#[tokio::test]
async fn an_approve_tier_lease_is_issued_once_after_the_grant_to_a_requester_who_waits() {
    let (env, _workers) = two_admins().await;
    let _jit = env.worker_as("jit-issuer", "jit-issuer", &["jit-issuer"]);
    let follower = Follower::lifecycle(&env.bus).await;

    let out = task_start(&env, "deploy-7", false).output().await.unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let pending = json_line(&out);
    let approval = pending["approval"].as_str().unwrap().to_owned();
    // Asking again holds the same approval, not a second one.
    let again = json_line(&task_start(&env, "deploy-7", false).output().await.unwrap());
    assert_eq!(again["approval"], approval.as_str());

    let mut waiting = task_start(&env, "deploy-7", true)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Approve only once the requester is waiting on its pending approval.
    let mut progress = tokio::io::BufReader::new(waiting.stderr.take().unwrap()).lines();
    let line = tokio::time::timeout(WAIT, progress.next_line())
        .await
        .expect("a progress line")
        .unwrap()
        .unwrap_or_default();
    assert!(
        line.contains(&format!("waiting for approval {approval}")),
        "{line}"
    );
    let out = as_user(&env, "ops", &["approvals", "approve", &approval, "--json"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    // Granted; the waiting requester may already have redeemed it (`used`) by the time the
    // approver's reply reads it back.
    let state = json_line(&out)["approval"]["state"].clone();
    assert!(state == "granted" || state == "used", "{state}");
    let out = tokio::time::timeout(WAIT, waiting.wait_with_output())
        .await
        .expect("the waiting requester gets its answer")
        .unwrap();
    assert!(out.status.success(), "task start --wait failed");
    let lease = json_line(&out);
    let token = lease["secret"].as_str().unwrap();
    assert!(token_works(&env, token).await, "the granted lease works");
    let issued = follower.events();
    let issued: Vec<_> = issued
        .iter()
        .filter(|e| e.data.kind == LifecycleKind::Issued)
        .collect();
    assert_eq!(issued.len(), 1);
    assert_eq!(
        issued[0].data.approval.as_ref().map(|a| a.id.as_str()),
        Some(approval.as_str())
    );
    assert_eq!(issued[0].data.outcome.as_deref(), Some("approve"));
    assert!(
        !follower
            .events()
            .iter()
            .any(|e| serde_json::to_string(e).unwrap().contains(token)),
        "no event holds the token"
    );

    // The grant is spent: the same request again opens a new round, it gets no second lease.
    let out = task_start(&env, "deploy-7", false).output().await.unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let out = as_user(&env, "ops", &["approvals", "show", &approval, "--json"]).await;
    let shown: Approval = serde_json::from_slice(out.stdout.trim_ascii()).unwrap();
    assert_eq!(
        (shown.state, shown.grants.len()),
        (ApprovalState::Pending, 0)
    );
}

#[tokio::test]
async fn two_of_a_group_must_approve_and_outsiders_are_refused() {
    let (env, _workers) = two_admins().await;
    let policy = format!(
        "{}\n@id(\"admin-scope-two-sre\")\n@outcome(\"approve\")\n@approvers(\"2\")\n@group(\"sre\")\npermit (principal, action == Keyloop::Action::\"issue\", resource is Keyloop::Scope)\nwhen {{ resource.tier == \"approve\" }};\n\n@id(\"sre-approve\")\npermit (principal in Keyloop::Group::\"sre\", action == Keyloop::Action::\"approve\", resource);\n",
        keyloop_core::policy::DEFAULT_POLICY
    );
    let policy = env.file("policy.cedar", policy.as_bytes());
    env.set_env("KEYLOOP_POLICY", path_str(&policy));
    env.set_env("KEYLOOP_POLICY_GROUPS", "sre=orchestrator-a,orchestrator-b");
    let _jit = env.worker_as("jit-issuer", "jit-issuer", &["jit-issuer"]);
    let out = task_start(&env, "rollback-1", false)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let approval = json_line(&out)["approval"].as_str().unwrap().to_owned();

    // ops is an admin but not in sre: refused.
    let out = as_user(&env, "ops", &["approvals", "approve", &approval]).await;
    assert!(
        !out.status.success() && stderr(&out).contains("group sre"),
        "{}",
        stderr(&out)
    );
    let out = as_user(
        &env,
        "orchestrator-a",
        &["approvals", "approve", &approval, "--json"],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(json_line(&out)["approval"]["state"], "pending", "1 of 2");
    // The same approver twice is still one.
    as_user(&env, "orchestrator-a", &["approvals", "approve", &approval]).await;
    let out = task_start(&env, "rollback-1", false)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "not granted on one approver");
    let out = as_user(
        &env,
        "orchestrator-b",
        &["approvals", "approve", &approval, "--json"],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(json_line(&out)["approval"]["state"], "granted");
    let out = task_start(&env, "rollback-1", false)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(token_works(&env, json_line(&out)["secret"].as_str().unwrap()).await);
}

#[tokio::test]
async fn the_revocation_budget_trips_at_n_plus_one_holds_one_batch_and_never_holds_a_leak() {
    let env = Env::start_secured().await;
    env.set_env("KEYLOOP_REVOCATION_BUDGET", "3/1h");
    let follower = Follower::lifecycle(&env.bus).await;
    let ids: Vec<String> = (0..6).map(|i| format!("svc/idle-{i}")).collect();
    let mut values = Vec::new();
    for id in &ids {
        env.ok(&["credential", "register", id, "--idle-revoke-after", "1s"])
            .await;
        values.push(
            env.ok(&["credential", "reveal", id])
                .await
                .trim_end()
                .to_owned(),
        );
    }
    let _w = [
        env.worker_as("revoker", "revoker", &["revoker"]),
        env.worker_as("sweeper", "sweeper", &["sweeper", "--tick-interval", "1s"]),
        env.worker_as(
            "scheduler",
            "scheduler",
            &["scheduler", "--tick-interval", "1s"],
        ),
        env.worker_as("leak-responder", "leak-responder", &["leak-responder"]),
    ];
    // Six idle revocations of one target (the local store): three go ahead, the fourth trips
    // the budget, and the rest join its batch.
    follower
        .wait("the budget to trip and hold three", WAIT, |e| {
            let revoked = e
                .iter()
                .filter(|e| e.data.kind == LifecycleKind::Revoked)
                .count();
            let tripped = e
                .iter()
                .filter(|e| e.data.kind == LifecycleKind::BudgetTripped)
                .count();
            revoked == 3 && tripped == 1
        })
        .await;
    let events = follower.events();
    let tripped = events
        .iter()
        .find(|e| e.data.kind == LifecycleKind::BudgetTripped)
        .unwrap();
    let batch = tripped.data.approval.clone().unwrap();
    assert_eq!(batch.resource, "store-local");
    let held_batch = || async {
        let out = as_user(&env, "ops", &["approvals", "show", &batch.id, "--json"]).await;
        serde_json::from_slice::<Approval>(out.stdout.trim_ascii()).unwrap()
    };
    // Every idle revocation due is in the batch (the sweeper sends them all at once).
    let deadline = tokio::time::Instant::now() + WAIT;
    let held = loop {
        let a = held_batch().await;
        if let keyloop_core::policy::Held::RevokeBatch { commands, .. } = &a.held
            && commands.len() == 3
        {
            break commands.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "three held: {a:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let held_ids: Vec<String> = held.iter().map(|c| c.credential.to_string()).collect();
    let live: Vec<usize> = (0..6).filter(|i| held_ids.contains(&ids[*i])).collect();
    for &i in &live {
        assert!(
            env.verify_value(&ids[i], &values[i]).await,
            "{} is held, still live",
            ids[i]
        );
    }

    // A leak of a held credential is revoked at once, breaker or not.
    let leaked = live[0];
    let report = env.file(
        "leak.json",
        &gitleaks_report(&values[leaked], "deploy/.env"),
    );
    let out = as_user(
        &env,
        "detector",
        &["ingest", "gitleaks", path_str(&report), "--wait"],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    follower
        .wait("the leak's revocation", WAIT, |e| {
            e.iter().any(|e| {
                e.data.kind == LifecycleKind::Revoked
                    && e.data.revoke_reason == Some(RevokeReason::Leak)
                    && e.subject.as_deref() == Some(ids[leaked].as_str())
            })
        })
        .await;
    assert!(
        !env.verify_value(&ids[leaked], &values[leaked]).await,
        "the leaked value is dead"
    );
    assert!(
        env.verify_value(&ids[live[1]], &values[live[1]]).await,
        "the others stay held"
    );

    // One approval releases the batch.
    let out = as_user(&env, "ops", &["approvals", "approve", &batch.id, "--json"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    follower
        .wait("budget_released and every held revocation", WAIT, |e| {
            e.iter()
                .any(|e| e.data.kind == LifecycleKind::BudgetReleased)
                && live.iter().all(|&i| {
                    e.iter().any(|e| {
                        e.data.kind == LifecycleKind::Revoked
                            && e.subject.as_deref() == Some(ids[i].as_str())
                    })
                })
        })
        .await;
    for i in 0..6 {
        assert!(
            !env.verify_value(&ids[i], &values[i]).await,
            "{} revoked",
            ids[i]
        );
    }
    let tripped_count = follower
        .events()
        .iter()
        .filter(|e| e.data.kind == LifecycleKind::BudgetTripped)
        .count();
    assert_eq!(tripped_count, 1, "one trip, one batch");
}
