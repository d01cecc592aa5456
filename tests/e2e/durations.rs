//! Durations are checked against their ranges before anything is connected to or written, and
//! a policy record out of range that reaches the sweeper anyway is refused, not acted on.

use crate::harness::{Env, lifecycle};
use keyloop_core::event::{CloudEvent, RotateCommand};
use keyloop_core::{Policy, StoreKind, TargetKind};
use keyloop_nats::{Change, DueItem};
use keyloop_workers::ops::{self, Cause, Registration};
use keyloop_workers::sweeper;
use std::time::Duration;
use time::OffsetDateTime;

/// Runs `keyloop ARGS`, expects a refusal (exit 1 or clap's 2, never a panic's 101) whose
/// stderr says each of `expect`, with nothing on stdout.
async fn refused(env: &Env, args: &[&str], expect: &[&str]) {
    let out = env.run(args).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        matches!(out.status.code(), Some(1 | 2)),
        "keyloop {args:?}: {} (a panic is 101)\n{stderr}",
        out.status
    );
    for e in expect {
        assert!(
            stderr.contains(e),
            "keyloop {args:?}: no `{e}` in\n{stderr}"
        );
    }
    assert!(out.stdout.is_empty(), "keyloop {args:?} printed data");
}

#[tokio::test]
async fn register_refuses_durations_out_of_range_with_the_range_and_registers_nothing() {
    let env = Env::start().await;
    let cases: [(&[&str], &str); 7] = [
        (
            &["--max-age", "0s"],
            "--max-age 0s is out of range: it must be from 1s to 3650d (10 years)",
        ),
        (
            &["--max-age", "100000000d"],
            "--max-age 100000000d is out of range: it must be from 1s to 3650d (10 years)",
        ),
        (
            &["--idle-revoke-after", "0s"],
            "--idle-revoke-after 0s is out of range: it must be from 1s to 3650d",
        ),
        (
            &["--grace", "400d"],
            "--grace 400d is out of range: it must be from 0s to 365d (1 year)",
        ),
        (
            &["--max-age", "1h", "--grace", "2h"],
            "--grace 2h is out of range: it must be from 0s to 1h (no longer than max-age)",
        ),
        (&["--max-age", "5x"], "--max-age: invalid duration `5x`"),
        (
            &["--max-age", "99999999999999999999999d"],
            "characters (not shown): too large",
        ),
    ];
    for (flags, expect) in cases {
        let mut args = vec!["credential", "register", "svc/bad"];
        args.extend_from_slice(flags);
        refused(
            &env,
            &args,
            &[expect, "register credential svc/bad (nothing registered)"],
        )
        .await;
    }
    assert_eq!(
        env.ok(&["credential", "list", "--json"]).await,
        "",
        "nothing registered"
    );
    assert!(lifecycle(&env.bus).await.is_empty(), "no event published");
    let secrets = env
        .bus
        .kv(&env.bus.topology.secrets_bucket())
        .await
        .unwrap();
    use futures::TryStreamExt;
    // The control plane recorded its key check when it opened the store; no value is stored.
    let keys: Vec<String> = secrets.keys().await.unwrap().try_collect().await.unwrap();
    assert!(
        keys.iter()
            .all(|k| k == keyloop_backends::local::KEY_CHECK_KEY),
        "no value stored: {keys:?}"
    );

    // The boundaries themselves are accepted.
    env.ok(&[
        "credential",
        "register",
        "svc/edges",
        "--max-age",
        "3650d",
        "--grace",
        "365d",
        "--idle-revoke-after",
        "1s",
    ])
    .await;
}

#[tokio::test]
async fn task_ttl_tick_interval_and_replay_windows_out_of_range_are_refused_before_anything_runs() {
    let env = Env::start().await;
    refused(
        &env,
        &[
            "task", "start", "t-1", "--agent", "a", "--scope", "read", "--ttl", "0s",
        ],
        &["--ttl 0s is out of range: it must be from 1s to 365d (1 year)"],
    )
    .await;
    refused(
        &env,
        &[
            "task",
            "start",
            "t-1",
            "--agent",
            "a",
            "--scope",
            "read",
            "--ttl",
            "100000000d",
        ],
        &["--ttl 100000000d is out of range"],
    )
    .await;
    for interval in ["0s", "2h"] {
        refused(
            &env,
            &["worker", "scheduler", "--tick-interval", interval],
            &[&format!(
                "--tick-interval {interval} is out of range: it must be from 1s to 1h"
            )],
        )
        .await;
    }
    refused(
        &env,
        &["replay", "--since", "100000000d"],
        &["replay window 100000000d is out of range: it must be from 0s to 3650d"],
    )
    .await;
    refused(
        &env,
        &["replay", "--until", "yesterday"],
        &["expected RFC 3339 (2026-11-29T10:00:00Z) or a duration ago (1h)"],
    )
    .await;
    let policy = env.file(
        "jit.json",
        br#"{"scopes": {"forever": {"tier": "auto", "max_ttl_secs": 18446744073709551615}}}"#,
    );
    refused(
        &env,
        &[
            "worker",
            "jit-issuer",
            "--jit-policy",
            policy.to_str().unwrap(),
        ],
        &["scope `forever`: max_ttl_secs 18446744073709551615 is out of range: it must be from 1s to 365d"],
    )
    .await;
    assert!(lifecycle(&env.bus).await.is_empty(), "nothing was issued");
    // The replay accepts what it always did.
    env.ok(&["replay", "--since", "1h", "--until", "2026-01-01T00:00:00Z"])
        .await;
}

#[tokio::test]
async fn waits_longer_than_a_day_are_refused_with_the_range_instead_of_overflowing() {
    let env = Env::start().await;
    // A wait longer than a day would overflow the deadline arithmetic: refused, not a panic.
    env.ok(&["credential", "register", "svc/waits"]).await;
    for cmd in [
        &["rotate", "svc/waits", "--timeout", "18446744073709551615"][..],
        &[
            "revoke",
            "svc/waits",
            "--reason",
            "x",
            "--timeout",
            "100000000d",
        ],
    ] {
        refused(
            &env,
            cmd,
            &["--timeout", "is out of range: it must be from 1s to 1d"],
        )
        .await;
    }
}

/// Registers `id` in-process (local store, target none) with `policy`.
pub(crate) async fn register_with(
    ctx: &keyloop_workers::WorkerContext,
    id: &keyloop_core::CredentialId,
    policy: Policy,
) -> keyloop_core::Credential {
    let cause = Cause {
        source: "keyloop/test".into(),
        ..Cause::default()
    };
    let registration = Registration {
        id: id.clone(),
        store: StoreKind::Local,
        target: TargetKind::None,
        policy,
        settings: Default::default(),
    };
    ops::register(ctx, registration, &cause)
        .await
        .unwrap()
        .credential
}

/// Registers `id` in-process with a valid rotation policy, then overwrites its inventory
/// record with `max_age_secs` (as anyone with write access to the bucket could) and files a
/// rotation due now.
async fn tampered(env: &Env, id: &str, max_age_secs: u64) -> keyloop_workers::WorkerContext {
    let ctx = env.context().await;
    let id: keyloop_core::CredentialId = id.parse().unwrap();
    register_with(
        &ctx,
        &id,
        Policy {
            max_age_secs: Some(3_600),
            grace_secs: 0,
            idle_revoke_after_secs: None,
            owner: None,
            ..Default::default()
        },
    )
    .await;
    ctx.inventory
        .update(&id, |c| {
            c.policy.max_age_secs = Some(max_age_secs);
            Ok(Change::Write(()))
        })
        .await
        .unwrap();
    let now = OffsetDateTime::now_utc();
    ctx.due
        .schedule(DueItem::Rotate { credential: id }, now, now)
        .await
        .unwrap();
    ctx
}

/// The commands on `subject` still queued (nothing consumes them in an in-process test). The
/// commands stream is a work queue, which takes no ordered consumer: read it by sequence.
pub(crate) async fn commands_on<T: serde::de::DeserializeOwned>(
    env: &Env,
    subject: &str,
) -> Vec<T> {
    let stream = env
        .bus
        .js
        .get_stream(env.bus.topology.commands_stream())
        .await
        .unwrap();
    let state = stream.cached_info().state.clone();
    let mut out = Vec::new();
    if state.messages == 0 {
        return out;
    }
    for seq in state.first_sequence..=state.last_sequence {
        let Ok(msg) = stream.get_raw_message(seq).await else {
            continue; // deleted
        };
        if msg.subject.as_str() == subject {
            let event: CloudEvent<T> = serde_json::from_slice(&msg.payload).unwrap();
            out.push(event.data);
        }
    }
    out
}

async fn rotate_commands(env: &Env) -> Vec<RotateCommand> {
    commands_on(env, &env.bus.topology.cmd_rotate()).await
}

#[tokio::test]
async fn the_sweeper_refuses_a_zero_max_age_from_the_inventory_instead_of_rotating_every_tick() {
    let env = Env::start().await;
    let ctx = tampered(&env, "svc/zero", 0).await;
    let later = OffsetDateTime::now_utc() + Duration::from_secs(5);
    let stats = sweeper::sweep(&ctx, later).await.unwrap();
    assert_eq!(stats.commands, 0, "{stats:?}");
    assert!(rotate_commands(&env).await.is_empty(), "no rotation issued");
}

#[tokio::test]
async fn the_sweeper_survives_an_overflowing_max_age_from_the_inventory() {
    let env = Env::start().await;
    let ctx = tampered(&env, "svc/huge", u64::MAX).await;
    let later = OffsetDateTime::now_utc() + Duration::from_secs(5);
    // Before: `activated_at + max_age` panicked in the sweeper.
    let stats = sweeper::sweep(&ctx, later).await.unwrap();
    assert_eq!(stats.commands, 0, "{stats:?}");
    assert!(rotate_commands(&env).await.is_empty());
}
