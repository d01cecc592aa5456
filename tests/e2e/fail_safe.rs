//! Fail-safety beyond the fault matrix: a leaked value is made invalid at its target even when
//! its value cannot be read; a failed scheduled rotation is tried again later, and says when; a
//! revocation kept out by a busy claim is loud; two credentials never manage one role or one
//! secret.

use crate::harness::{Env, lifecycle, logs_in, single_role};
use keyloop_backends::{Faults, PostgresConfig, PostgresTarget};
use keyloop_core::event::{CloudEvent, RevokeCommand, RotateCommand};
use keyloop_core::{
    BackendSettings, Claim, CredentialId, LifecycleKind, Policy, RevokeReason, RotationReason,
    Secret, Stage, StoreKind, TargetKind,
};
use keyloop_nats::Change;
use keyloop_testkit::moto::TestMoto;
use keyloop_testkit::postgres::{TestPostgres, unique_name};
use keyloop_workers::ops::{self, Cause, Registration};
use keyloop_workers::{WorkerContext, revoker, rotator, sweeper};
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

fn cause() -> Cause {
    Cause {
        source: "keyloop/test".into(),
        ..Default::default()
    }
}

fn registration(id: &str, max_age: Option<u64>) -> Registration {
    Registration {
        id: id.parse().unwrap(),
        store: StoreKind::Local,
        target: TargetKind::None,
        policy: Policy {
            max_age_secs: max_age,
            grace_secs: 0,
            idle_revoke_after_secs: None,
            owner: None,
            ..Default::default()
        },
        settings: BackendSettings::default(),
    }
}

#[tokio::test]
async fn a_leaked_password_whose_stored_value_does_not_decrypt_is_still_killed_at_the_role() {
    let (env, pg) = tokio::join!(Env::start(), TestPostgres::start());
    let admin = pg.create_admin().await;
    env.set_env("KEYLOOP_POSTGRES_DSN", admin.clone());
    let id = "pg/undecryptable";
    let role = single_role(&env, &pg, id).await;
    let value = env
        .ok(&["credential", "reveal", id])
        .await
        .trim_end()
        .to_owned();
    assert!(logs_in(&pg, &role, &value).await);

    // The stored ciphertext no longer decrypts (corrupted or tampered with): the value cannot
    // be had, and the leak must be killed all the same.
    let cred = env.credential(id).await;
    let current = cred.current().unwrap().id;
    let kv = env
        .bus
        .kv(&env.bus.topology.secrets_bucket())
        .await
        .unwrap();
    let key = format!("v.{id}.{current}");
    let mut sealed = kv.get(&key).await.unwrap().unwrap().to_vec();
    let last = sealed.len() - 1;
    sealed[last] ^= 0xff;
    kv.put(&key, sealed.into()).await.unwrap();
    let mut ctx = WorkerContext::open(env.bus.clone(), Some(&env.master_key()))
        .await
        .unwrap();
    ctx.backends.postgres = Some(Arc::new(
        PostgresTarget::new(&PostgresConfig::new(Secret::from(admin))).unwrap(),
    ));
    let cmd = RevokeCommand {
        credential: id.parse().unwrap(),
        version: Some(current),
        reason: RevokeReason::Leak,
        op_id: "leak/test/undecryptable".into(),
        leak_published_at: Some(OffsetDateTime::now_utc()),
        then_rotate: false,
        note: None,
        released_by: None,
    };
    revoker::execute(&ctx, &cmd, &cause(), false)
        .await
        .expect("revoked although the value does not decrypt");
    assert!(
        !logs_in(&pg, &role, &value).await,
        "the leaked password is dead at the role"
    );
    let events = lifecycle(&env.bus).await;
    let revoked = events
        .iter()
        .find(|e| e.data.kind == LifecycleKind::Revoked)
        .expect("revoked");
    let detail = revoked.data.detail.as_deref().unwrap_or("");
    assert!(
        detail.contains("no login proved it dead") && detail.contains("does not decrypt"),
        "the event says the proof was not possible: {detail}"
    );
    assert!(!detail.contains(&value));
    assert!(
        !events
            .iter()
            .any(|e| e.data.kind == LifecycleKind::RevocationFailed)
    );
}

#[tokio::test]
async fn a_failed_scheduled_rotation_is_tried_again_later_each_time_and_show_says_when() {
    let env = Env::start().await;
    let healthy = env.context().await;
    let id: CredentialId = "svc/scheduled-retry".parse().unwrap();
    let cred = ops::register(&healthy, registration(id.as_str(), Some(3600)), &cause())
        .await
        .unwrap()
        .credential;
    let mut broken = env.context().await;
    broken.backends.faults = Some(Arc::new(Faults::parse("permanent=put_new").unwrap()));
    let scheduled = RotateCommand {
        credential: id.clone(),
        reason: RotationReason::Scheduled,
        op_id: format!("scheduled/{id}/{}", cred.versions[0].id),
    };
    let started = OffsetDateTime::now_utc();
    assert!(
        rotator::execute(&broken, &scheduled, &cause(), false)
            .await
            .is_err()
    );
    let retry = env.credential(id.as_str()).await.rotation_retry.unwrap();
    assert_eq!(retry.failures, 1);
    assert_eq!(retry.reason, RotationReason::Scheduled);
    let delay = retry.next_attempt_at - started;
    assert!(
        (59..=62).contains(&delay.whole_seconds()),
        "first retry about a minute later: {delay}"
    );
    // A redelivered failure of the same operation counts once.
    let _ = rotator::execute(&broken, &scheduled, &cause(), true).await;
    assert_eq!(
        env.credential(id.as_str())
            .await
            .rotation_retry
            .unwrap()
            .failures,
        1
    );
    let shown = env.ok(&["credential", "show", id.as_str()]).await;
    assert!(
        shown.contains("rotation failing: 1 in a row; next attempt"),
        "{shown}"
    );

    // When the attempt falls due, the sweeper issues it, under its own operation id.
    let stats = sweeper::sweep(&healthy, retry.next_attempt_at + Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(stats.commands, 1);
    let command = env
        .bus
        .js
        .get_stream(env.bus.topology.commands_stream())
        .await
        .unwrap()
        .get_last_raw_message_by_subject(&env.bus.topology.cmd_rotate())
        .await
        .unwrap();
    let retried: CloudEvent<RotateCommand> = serde_json::from_slice(&command.payload).unwrap();
    assert_eq!(retried.data.reason, RotationReason::Scheduled);
    assert_ne!(retried.data.op_id, scheduled.op_id);

    // It fails too: the next delay doubles.
    let second = OffsetDateTime::now_utc();
    assert!(
        rotator::execute(&broken, &retried.data, &cause(), false)
            .await
            .is_err()
    );
    let retry = env.credential(id.as_str()).await.rotation_retry.unwrap();
    assert_eq!(retry.failures, 2);
    assert!((119..=122).contains(&(retry.next_attempt_at - second).whole_seconds()));

    // Once the store works again, the retry rotates and the failures are forgotten.
    rotator::execute(&healthy, &retried.data, &cause(), false)
        .await
        .unwrap();
    let after = env.credential(id.as_str()).await;
    assert!(after.rotation_retry.is_none());
    assert_ne!(after.current().unwrap().id, cred.versions[0].id);
}

#[tokio::test]
async fn a_revocation_kept_out_by_a_busy_claim_on_its_last_delivery_reports_revocation_failed() {
    let env = Env::start().await;
    let ctx = env.context().await;
    let id: CredentialId = "svc/busy".parse().unwrap();
    ops::register(&ctx, registration(id.as_str(), None), &cause())
        .await
        .unwrap();
    // Another operation holds the claim, and keeps holding it.
    env.bus
        .inventory()
        .await
        .unwrap()
        .update(&id, |c| {
            c.claim = Some(Claim {
                op: "someone-else".into(),
                holder: "another-process".into(),
                deadline: OffsetDateTime::now_utc() + Duration::from_secs(3600),
                token: 1,
                beat: 0,
            });
            Ok(Change::Write(()))
        })
        .await
        .unwrap();
    let cmd = RevokeCommand {
        credential: id.clone(),
        version: None,
        reason: RevokeReason::Manual,
        op_id: "manual/busy".into(),
        leak_published_at: None,
        then_rotate: false,
        note: None,
        released_by: None,
    };
    let early = revoker::execute(&ctx, &cmd, &cause(), false).await;
    assert_eq!(early.unwrap_err().kind(), keyloop_workers::ErrorKind::Busy);
    assert!(
        !lifecycle(&env.bus)
            .await
            .iter()
            .any(|e| e.data.kind == LifecycleKind::RevocationFailed),
        "not the last delivery: it will be retried quietly"
    );
    let last = revoker::execute(&ctx, &cmd, &cause(), true).await;
    assert_eq!(last.unwrap_err().kind(), keyloop_workers::ErrorKind::Busy);
    let failed: Vec<_> = lifecycle(&env.bus)
        .await
        .into_iter()
        .filter(|e| e.data.kind == LifecycleKind::RevocationFailed)
        .collect();
    assert_eq!(failed.len(), 1);
    assert!(
        failed[0]
            .data
            .detail
            .as_deref()
            .unwrap_or("")
            .contains("busy with operation someone-else"),
        "{:?}",
        failed[0].data.detail
    );
    assert_eq!(
        env.credential(id.as_str()).await.versions[0].stage,
        Stage::Current
    );
}

#[tokio::test]
async fn two_credentials_on_one_role_or_one_secret_are_refused_and_the_refusal_leaves_nothing() {
    let (env, pg, moto) = tokio::join!(Env::start(), TestPostgres::start(), TestMoto::start());
    env.set_env("KEYLOOP_POSTGRES_DSN", pg.create_admin().await);
    for (k, v) in moto.env() {
        env.set_env(k, v);
    }
    let role = unique_name("shared");
    pg.superuser()
        .await
        .batch_execute(&format!("CREATE ROLE {role} LOGIN"))
        .await
        .unwrap();
    let pg_args = |id: &'static str, role: String, strategy: &'static str| {
        vec![
            "credential".to_owned(),
            "register".into(),
            id.into(),
            "--target".into(),
            "postgres".into(),
            "--role".into(),
            role,
            "--strategy".into(),
            strategy.into(),
        ]
    };
    let run = |args: Vec<String>| {
        let env = &env;
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            env.run(&args).await
        }
    };
    assert!(
        run(pg_args("pg/first", role.clone(), "single"))
            .await
            .status
            .success()
    );
    for (id, r, strategy) in [
        ("pg/second", role.clone(), "single"),
        // alternating on the same base takes <role>_a and <role>_b in the base role
        ("pg/third", role.clone(), "alternating"),
    ] {
        let out = run(pg_args(id, r, strategy)).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{id}: {stderr}");
        assert!(
            stderr.contains(&format!("PostgreSQL role \"{role}\""))
                && stderr.contains("already managed by credential pg/first"),
            "{id}: {stderr}"
        );
    }
    // `<base>_a` on its own, then alternating on `<base>`, which would take `<base>_a` over.
    let base = unique_name("pair");
    pg.superuser()
        .await
        .batch_execute(&format!(
            "CREATE ROLE {base} NOLOGIN; CREATE ROLE {base}_a LOGIN"
        ))
        .await
        .unwrap();
    assert!(
        run(pg_args("pg/fourth", format!("{base}_a"), "single"))
            .await
            .status
            .success()
    );
    let out = run(pg_args("pg/fifth", base.clone(), "alternating")).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("PostgreSQL role \"{base}_a\""))
            && stderr.contains("already managed by credential pg/fourth"),
        "{stderr}"
    );

    let secret = unique_name("prod/db");
    let aws = |id: &'static str, secret: &str| {
        vec![
            "credential".to_owned(),
            "register".into(),
            id.into(),
            "--store".into(),
            "aws-sm".into(),
            "--secret-id".into(),
            secret.to_owned(),
        ]
    };
    assert!(run(aws("aws/first", &secret)).await.status.success());
    let arn = moto
        .client()
        .await
        .describe_secret()
        .secret_id(&secret)
        .send()
        .await
        .unwrap()
        .arn()
        .unwrap()
        .to_owned();
    for other in [secret.clone(), arn] {
        let out = run(aws("aws/second", &other)).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{other}: {stderr}");
        assert!(
            stderr.contains("already managed by credential aws/first"),
            "{other}: {stderr}"
        );
    }

    // The refusals registered nothing and bound nothing: the ids are free for another role.
    let listed = env.ok(&["credential", "list", "--json"]).await;
    let ids: Vec<String> = listed
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].to_string())
        .collect();
    assert_eq!(
        ids,
        ["\"aws/first\"", "\"pg/first\"", "\"pg/fourth\""],
        "{listed}"
    );
    let other_role = unique_name("other");
    pg.superuser()
        .await
        .batch_execute(&format!("CREATE ROLE {other_role} LOGIN"))
        .await
        .unwrap();
    assert!(
        run(pg_args("pg/second", other_role, "single"))
            .await
            .status
            .success()
    );
}

#[tokio::test]
async fn registering_again_with_the_same_settings_finishes_without_a_second_value() {
    // A registrar stopped after recording the value current but before its schedules and
    // `created` were out: the same registration run again completes it, once.
    let env = Env::start().await;
    let ctx = env.context().await;
    let first = ops::register(&ctx, registration("svc/twice", Some(3600)), &cause())
        .await
        .unwrap();
    assert!(!first.resumed);
    let again = ops::register(&ctx, registration("svc/twice", Some(3600)), &cause())
        .await
        .unwrap();
    assert!(again.resumed);
    assert_eq!(again.credential.versions, first.credential.versions);
    let created = lifecycle(&env.bus)
        .await
        .into_iter()
        .filter(|e| e.data.kind == LifecycleKind::Created)
        .count();
    assert_eq!(created, 1, "one created event for one registration");
    let other = ops::register(&ctx, registration("svc/twice", Some(60)), &cause()).await;
    assert_eq!(
        other.unwrap_err().kind(),
        keyloop_workers::ErrorKind::AlreadyExists,
        "other settings are another registration"
    );
}

#[tokio::test]
async fn a_leak_and_an_operator_revoking_the_same_version_ask_for_one_rotation() {
    let env = Env::start().await;
    let ctx = env.context().await;
    let id: CredentialId = "svc/raced".parse().unwrap();
    let cred = ops::register(&ctx, registration(id.as_str(), None), &cause())
        .await
        .unwrap()
        .credential;
    let version = cred.versions[0].id;
    let revoke = |op: &str, reason| RevokeCommand {
        credential: id.clone(),
        version: Some(version),
        reason,
        op_id: op.into(),
        leak_published_at: None,
        then_rotate: true,
        note: None,
        released_by: None,
    };
    // Whichever revokes first, the other finds the version revoked: both ask for the rotation
    // that replaces it, and that is one command.
    revoker::execute(
        &ctx,
        &revoke("leak-revoke/x", RevokeReason::Leak),
        &cause(),
        false,
    )
    .await
    .unwrap();
    revoker::execute(
        &ctx,
        &revoke("manual/y", RevokeReason::Manual),
        &cause(),
        false,
    )
    .await
    .unwrap();
    let commands = env
        .stream_state(&env.bus.topology.commands_stream())
        .await
        .messages;
    assert_eq!(commands, 1, "one rotate command for one revoked version");
}
