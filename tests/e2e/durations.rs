//! Durations are checked against their ranges before anything is connected to or written.

use crate::harness::{Env, lifecycle};

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
    let mut keys = secrets.keys().await.unwrap();
    use futures::TryStreamExt;
    assert_eq!(keys.try_next().await.unwrap(), None, "no value stored");

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
