//! The `postgres` target against a real PostgreSQL cluster with password authentication (one
//! per test, from `keyloop-testkit`): static rotation with both strategies and both value
//! formats, a leak that kills the password and the sessions that used it before `revoked` is
//! published, JIT roles, clear errors, and no plaintext password in the server's statement log,
//! events or worker logs.

use crate::harness::{Env, Events, gitleaks_report, lifecycle, logs_in, path_str, single_role};
use keyloop_backends::postgres::{JitRole, jit_role_name};
use keyloop_backends::{PostgresConfig, PostgresTarget, Target};
use keyloop_core::value_format::is_valid_checksum;
use keyloop_core::{LifecycleKind, RevokeReason, Secret, Stage, ValueFormat};
use keyloop_testkit::postgres::{TestPostgres, unique_name};
use keyloop_workers::WorkerContext;
use keyloop_workers::ops::{self, Cause, RevokeVersion, Revoked};
use std::sync::Arc;
use std::time::Duration;

const ALL_ROLES: [&str; 3] = ["leak-responder", "rotator", "revoker"];

/// A NATS env and a PostgreSQL cluster, with `keyloop` processes given a least-privileged
/// admin DSN (CREATEROLE + pg_signal_backend, not superuser).
async fn start() -> (Env, TestPostgres, String) {
    let (env, pg) = tokio::join!(Env::start(), TestPostgres::start());
    let admin = pg.create_admin().await;
    env.set_env("KEYLOOP_POSTGRES_DSN", admin.clone());
    (env, pg, admin)
}

async fn reveal(env: &Env, id: &str) -> String {
    env.ok(&["credential", "reveal", id])
        .await
        .trim_end()
        .to_owned()
}

/// An in-process worker context with the same backends a worker process has.
async fn context(env: &Env, admin: &str) -> WorkerContext {
    let mut ctx = WorkerContext::open(env.bus.clone(), Some(&env.master_key()))
        .await
        .unwrap();
    ctx.backends.postgres = Some(Arc::new(
        PostgresTarget::new(&PostgresConfig::new(Secret::from(admin))).unwrap(),
    ));
    ctx
}

/// No value appears in any of `texts` (server log, worker logs, events, CLI output).
fn assert_nowhere(values: &[String], texts: &[(&str, String)]) {
    for v in values {
        assert!(v.len() >= 20, "a real value: {v:?}");
        for (name, text) in texts {
            assert!(
                !text.contains(v.as_str()),
                "a plaintext password appears in {name}"
            );
        }
    }
}

async fn lifecycle_text(env: &Env) -> String {
    serde_json::to_string(&lifecycle(&env.bus).await).unwrap()
}

#[tokio::test]
async fn single_rotation_changes_the_password_and_the_old_one_fails() {
    let (env, pg, _admin) = start().await;
    let role = unique_name("app");
    pg.superuser()
        .await
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN PASSWORD 'set-by-a-human-before-keyloop'"
        ))
        .await
        .unwrap();
    let worker = env.worker("worker", &ALL_ROLES);
    let id = "pg/app-single";
    let registered = env
        .ok(&[
            "credential",
            "register",
            id,
            "--target",
            "postgres",
            "--role",
            &role,
        ])
        .await;
    // Taken over at registration: the password a human knew is dead.
    assert!(!logs_in(&pg, &role, "set-by-a-human-before-keyloop").await);
    let v1 = reveal(&env, id).await;
    // A postgres credential's values are checksummed unless asked otherwise, and PostgreSQL
    // takes them (through their SCRAM verifier) like any password.
    assert!(is_valid_checksum(&v1), "the default format for postgres");
    assert!(logs_in(&pg, &role, &v1).await, "the first value works");

    let rotated = env.ok(&["rotate", id]).await;
    let v2 = reveal(&env, id).await;
    assert_ne!(v1, v2);
    assert!(is_valid_checksum(&v2), "a rotation keeps the format");
    assert!(logs_in(&pg, &role, &v2).await, "the new password works");
    assert!(!logs_in(&pg, &role, &v1).await, "the old password fails");

    let cred = env.credential(id).await;
    assert_eq!(cred.versions.len(), 2);
    assert_eq!(cred.versions[0].stage, Stage::Previous);
    assert_eq!(cred.versions[1].stage, Stage::Current);
    assert!(
        cred.versions
            .iter()
            .all(|v| v.login.as_deref() == Some(role.as_str()))
    );

    let log = pg.log_text();
    assert!(
        log.contains("ALTER ROLE") && log.contains("SCRAM-SHA-256$4096:"),
        "the statement log shows verifiers, not passwords"
    );
    assert_nowhere(
        &[v1, v2],
        &[
            ("the PostgreSQL statement log", log),
            ("the worker log", worker.log_text()),
            ("the lifecycle stream", lifecycle_text(&env).await),
            ("CLI output", format!("{registered}{rotated}")),
        ],
    );
}

#[tokio::test]
async fn a_single_rotation_that_fails_after_the_new_password_was_set_leaves_the_role_working() {
    // With `permanent=test` (or `promote`) the give-up path once revoked the pending
    // version, which holds the role, and left it NOLOGIN: the revealed value stopped working.
    let (env, pg, _admin) = start().await;
    let id = "pg/rollback";
    let role = single_role(&env, &pg, id).await;
    let before = reveal(&env, id).await;
    for fault in ["permanent=test", "permanent=promote"] {
        let broken = env.worker("broken", &["rotator", "revoker", "--inject-faults", fault]);
        let out = env.run(&["rotate", id]).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{fault}: {stderr}");
        assert!(
            stderr.contains("rolled back") && stderr.contains("given version"),
            "{fault}: the failure says what state it left: {stderr}"
        );
        assert!(broken.stop().await.success());
        let now = reveal(&env, id).await;
        assert_eq!(now, before, "{fault}: the current version is unchanged");
        assert!(
            logs_in(&pg, &role, &now).await,
            "{fault}: the revealed value still logs in"
        );
        let cred = env.credential(id).await;
        assert!(cred.versions.iter().all(|v| v.stage != Stage::Pending));
    }
    let _healthy = env.worker("healthy", &ALL_ROLES);
    env.ok(&["rotate", id]).await;
    let after = reveal(&env, id).await;
    assert_ne!(after, before);
    assert!(logs_in(&pg, &role, &after).await);
    assert!(!logs_in(&pg, &role, &before).await);
}

#[tokio::test]
async fn a_worker_killed_right_after_setting_the_new_password_is_finished_by_another() {
    let (env, pg, _admin) = start().await;
    let id = "pg/crash";
    let role = single_role(&env, &pg, id).await;
    let before = reveal(&env, id).await;
    // `crash=apply` aborts the process right after ALTER ROLE returned, as kill -9 would.
    let mut doomed = env.worker(
        "doomed",
        &["rotator", "revoker", "--inject-faults", "crash=apply"],
    );
    let events = Events::subscribe(&env.bus).await;
    let out = env.run(&["rotate", id, "--no-wait"]).await;
    assert!(out.status.success());
    let status = tokio::time::timeout(Duration::from_secs(20), doomed.child.wait())
        .await
        .expect("the worker crashes")
        .unwrap();
    assert!(!status.success(), "aborted: {status:?}");
    // Between the crash and the resumption the role holds the new password, which the store
    // holds as the pending version: nothing is lost. Another worker resumes once the message
    // is redelivered (after the consumer's ack wait).
    assert!(!logs_in(&pg, &role, &before).await);
    let _replica = env.worker("replica", &ALL_ROLES);
    events
        .wait("rotated after the crash", Duration::from_secs(40), |e| {
            e.iter().any(|e| e.data.kind == LifecycleKind::Rotated)
        })
        .await;
    let after = reveal(&env, id).await;
    assert_ne!(after, before);
    assert!(
        logs_in(&pg, &role, &after).await,
        "the resumed rotation's value works"
    );
    let cred = env.credential(id).await;
    assert_eq!(
        cred.versions
            .iter()
            .filter(|v| v.stage == Stage::Current)
            .count(),
        1
    );
    assert!(cred.versions.iter().all(|v| v.stage != Stage::Pending));
}

#[tokio::test]
async fn leaked_password_fails_and_its_session_ends_before_revoked_is_published() {
    let (env, pg, _admin) = start().await;
    let role = unique_name("svc");
    pg.superuser()
        .await
        .batch_execute(&format!("CREATE ROLE {role} LOGIN"))
        .await
        .unwrap();
    let worker = env.worker("worker", &ALL_ROLES);
    let id = "pg/leaky";
    env.ok(&[
        "credential",
        "register",
        id,
        "--target",
        "postgres",
        "--role",
        &role,
    ])
    .await;
    let leaked = reveal(&env, id).await;
    let old_version = env.credential(id).await.versions[0].id;
    let session = pg.connect_as(&role, &leaked, "postgres").await.unwrap();
    session.simple_query("SELECT 1").await.unwrap();

    let events = Events::subscribe(&env.bus).await;
    let report = env.file("leak.json", &gitleaks_report(&leaked, "deploy/.env"));
    env.ok(&["ingest", "gitleaks", path_str(&report)]).await;
    events
        .wait("revoked", Duration::from_secs(10), |evs| {
            evs.iter().any(|e| {
                e.data.kind == LifecycleKind::Revoked && e.data.version == Some(old_version)
            })
        })
        .await;
    // Checked the moment `revoked` arrives: by then the password and the session are dead.
    assert!(
        !logs_in(&pg, &role, &leaked).await,
        "the leaked password fails"
    );
    assert!(
        session.simple_query("SELECT 1").await.is_err(),
        "the session opened with the leaked password was ended"
    );
    assert!(session.is_closed());

    events
        .wait("rotated", Duration::from_secs(10), |evs| {
            evs.iter().any(|e| e.data.kind == LifecycleKind::Rotated)
        })
        .await;
    let fresh = reveal(&env, id).await;
    assert_ne!(fresh, leaked);
    assert!(logs_in(&pg, &role, &fresh).await, "the replacement works");
    assert!(!logs_in(&pg, &role, &leaked).await);

    let cred = env.credential(id).await;
    let old = cred.version(old_version).unwrap();
    assert_eq!(old.stage, Stage::Revoked);
    assert_eq!(old.revoke_reason, Some(RevokeReason::Leak));
    let stored = lifecycle(&env.bus).await;
    let revoked = stored
        .iter()
        .position(|e| e.data.kind == LifecycleKind::Revoked)
        .unwrap();
    let rotated = stored
        .iter()
        .position(|e| e.data.kind == LifecycleKind::Rotated)
        .unwrap();
    assert!(revoked < rotated);
    assert!(
        pg.log_text()
            .contains("terminating connection due to administrator command"),
        "the server ended the session"
    );
    assert_nowhere(
        &[leaked, fresh],
        &[
            ("the PostgreSQL statement log", pg.log_text()),
            ("the worker log", worker.log_text()),
            ("the lifecycle stream", lifecycle_text(&env).await),
        ],
    );
}

#[tokio::test]
async fn alternating_keeps_the_previous_role_working_until_it_is_retired() {
    let (env, pg, admin) = start().await;
    let base = unique_name("app");
    let (role_a, role_b) = (format!("{base}_a"), format!("{base}_b"));
    // The base role holds the application's privileges; keyloop creates <base>_a/_b in it.
    pg.superuser()
        .await
        .batch_execute(&format!("CREATE ROLE {base} NOLOGIN"))
        .await
        .unwrap();
    let worker = env.worker("worker", &ALL_ROLES);
    let id = "pg/app-alt";
    env.ok(&[
        "credential",
        "register",
        id,
        "--target",
        "postgres",
        "--role",
        &base,
        "--strategy",
        "alternating",
        "--grace",
        "1h",
        "--value-format",
        "hex",
    ])
    .await;
    let v1 = reveal(&env, id).await;
    assert_eq!(ValueFormat::recognize(&v1), Some(ValueFormat::Hex));
    assert!(logs_in(&pg, &role_a, &v1).await);

    env.ok(&["rotate", id]).await;
    let v2 = reveal(&env, id).await;
    assert_eq!(ValueFormat::recognize(&v2), Some(ValueFormat::Hex));
    let cred = env.credential(id).await;
    assert_eq!(cred.versions[0].login.as_deref(), Some(role_a.as_str()));
    assert_eq!(cred.versions[1].login.as_deref(), Some(role_b.as_str()));
    assert_eq!(cred.versions[0].stage, Stage::Previous);
    // During grace both roles log in.
    assert!(
        logs_in(&pg, &role_a, &v1).await,
        "previous still works on {role_a}"
    );
    assert!(
        logs_in(&pg, &role_b, &v2).await,
        "current works on {role_b}"
    );
    let member: bool = pg
        .superuser()
        .await
        .query_one("SELECT pg_has_role($1, $2, 'MEMBER')", &[&role_b, &base])
        .await
        .unwrap()
        .get(0);
    assert!(member, "{role_b} was created in the base role");

    // Grace ends (the sweeper does this when it falls due): only the current one logs in, and a
    // session still on the previous role is ended.
    let lingering = pg.connect_as(&role_a, &v1, "postgres").await.unwrap();
    let ctx = context(&env, &admin).await;
    let outcome = ops::revoke_version(
        &ctx,
        RevokeVersion {
            credential: &id.parse().unwrap(),
            version: cred.versions[0].id,
            reason: RevokeReason::GraceEnded,
            op: "grace/test",
            leak_published_at: None,
            note: None,
        },
        &Cause {
            source: "keyloop/test".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(outcome, Revoked::ByThisOperation);
    assert!(
        !logs_in(&pg, &role_a, &v1).await,
        "previous fails after grace"
    );
    assert!(lingering.simple_query("SELECT 1").await.is_err());
    assert!(logs_in(&pg, &role_b, &v2).await, "current still works");

    // The next rotation goes back to _a; the one after to _b, retiring v2's grace early.
    env.ok(&["rotate", id]).await;
    let v3 = reveal(&env, id).await;
    assert!(logs_in(&pg, &role_a, &v3).await);
    assert!(
        logs_in(&pg, &role_b, &v2).await,
        "v2 is previous now, in grace"
    );
    env.ok(&["rotate", id]).await;
    let v4 = reveal(&env, id).await;
    assert!(logs_in(&pg, &role_b, &v4).await);
    assert!(logs_in(&pg, &role_a, &v3).await);
    assert!(
        !logs_in(&pg, &role_b, &v2).await,
        "v2 was superseded on its role"
    );
    let cred = env.credential(id).await;
    let stages: Vec<_> = cred.versions.iter().map(|v| v.stage).collect();
    assert_eq!(
        stages,
        [
            Stage::Revoked,
            Stage::Revoked,
            Stage::Previous,
            Stage::Current
        ]
    );
    assert_eq!(
        cred.versions[1].revoke_reason,
        Some(RevokeReason::Superseded)
    );
    assert_nowhere(
        &[v1, v2, v3, v4],
        &[
            ("the PostgreSQL statement log", pg.log_text()),
            ("the worker log", worker.log_text()),
            ("the lifecycle stream", lifecycle_text(&env).await),
        ],
    );
}

#[tokio::test]
async fn jit_role_logs_in_until_dropped_and_its_valid_until_is_the_lease_expiry() {
    let pg = TestPostgres::start().await;
    let admin = pg.create_admin().await;
    let target = PostgresTarget::new(&PostgresConfig::new(Secret::from(admin.as_str()))).unwrap();
    let group = unique_name("scope_reports");
    let other_db = unique_name("db");
    let su = pg.superuser().await;
    su.batch_execute(&format!(
        "CREATE ROLE {group} NOLOGIN; GRANT CREATE ON SCHEMA public TO {group}"
    ))
    .await
    .unwrap();
    su.batch_execute(&format!("CREATE DATABASE {other_db}"))
        .await
        .unwrap();
    let su_other = pg
        .connect_as("postgres", &su_password(&pg), &other_db)
        .await
        .unwrap();
    su_other
        .batch_execute(&format!("GRANT CREATE ON SCHEMA public TO {group}"))
        .await
        .unwrap();

    let lease = uuid::Uuid::now_v7();
    let name = jit_role_name(lease);
    let password = keyloop_backends::generate_value(keyloop_core::ValueFormat::Hex);
    let expiry = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
    let role = JitRole {
        name: &name,
        group: &group,
        valid_until: expiry,
    };
    target.create_jit_role(&role, &password).await.unwrap();
    // A retried issue (same lease) changes nothing.
    target.create_jit_role(&role, &password).await.unwrap();

    let micros = |t: time::OffsetDateTime| t.unix_timestamp_nanos() / 1000;
    let valid_until = target.valid_until(&name).await.unwrap().unwrap().unwrap();
    assert_eq!(
        micros(valid_until),
        micros(expiry),
        "VALID UNTIL is the lease expiry"
    );
    assert!(logs_in(&pg, &name, password.expose()).await);
    let member: bool = su
        .query_one("SELECT pg_has_role($1, $2, 'MEMBER')", &[&name, &group])
        .await
        .unwrap()
        .get(0);
    assert!(member, "the JIT role is in the scope's group");

    // The task creates objects in two databases and keeps a session open.
    let session = pg
        .connect_as(&name, password.expose(), "postgres")
        .await
        .unwrap();
    session
        .batch_execute("CREATE TABLE task_output (x int)")
        .await
        .unwrap();
    let elsewhere = pg
        .connect_as(&name, password.expose(), &other_db)
        .await
        .unwrap();
    elsewhere
        .batch_execute("CREATE TABLE task_scratch (x int)")
        .await
        .unwrap();
    drop(elsewhere);

    // task.completed → revoke (the request/reply flow is in jit.rs; this is its backend step).
    let dropped = target.drop_jit_role(&name).await.unwrap();
    assert!(dropped.existed);
    assert!(dropped.sessions_ended >= 1);
    assert!(
        session.simple_query("SELECT 1").await.is_err(),
        "its session was ended"
    );
    assert!(!logs_in(&pg, &name, password.expose()).await);
    assert_eq!(
        target.valid_until(&name).await.unwrap(),
        None,
        "the role no longer exists"
    );
    let owner: String = su
        .query_one(
            "SELECT tableowner::text FROM pg_tables WHERE tablename = 'task_output'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        owner.starts_with("keyloop_admin"),
        "what it owned was handed to the admin: {owner}"
    );
    // Dropping again (a redelivered task.completed) succeeds and changes nothing.
    assert!(!target.drop_jit_role(&name).await.unwrap().existed);

    // VALID UNTIL is enforced by PostgreSQL itself: an expired lease's role cannot log in even
    // if keyloop never revoked it.
    let expired_name = jit_role_name(uuid::Uuid::now_v7());
    target
        .create_jit_role(
            &JitRole {
                name: &expired_name,
                group: &group,
                valid_until: time::OffsetDateTime::now_utc() - time::Duration::seconds(1),
            },
            &password,
        )
        .await
        .unwrap();
    assert!(!logs_in(&pg, &expired_name, password.expose()).await);
    target.drop_jit_role(&expired_name).await.unwrap();

    // Only JIT roles can be dropped this way.
    let refused = target.drop_jit_role("postgres").await.unwrap_err();
    assert!(
        refused.message.contains("not a JIT role"),
        "{}",
        refused.message
    );

    // A missing group is a clear error.
    let err = target
        .create_jit_role(
            &JitRole {
                name: &jit_role_name(uuid::Uuid::now_v7()),
                group: "no_such_group",
                valid_until: expiry,
            },
            &password,
        )
        .await
        .unwrap_err();
    assert!(
        err.message.contains("no_such_group") && err.message.contains("does not exist"),
        "{}",
        err.message
    );
    assert_nowhere(
        &[password.expose().to_owned()],
        &[
            ("the PostgreSQL statement log", pg.log_text()),
            ("an error", err.message),
        ],
    );
}

/// The superuser password of `pg`, from its DSN.
fn su_password(pg: &TestPostgres) -> String {
    let dsn = pg.superuser_dsn();
    let rest = dsn.strip_prefix("postgres://postgres:").unwrap();
    rest.split('@').next().unwrap().to_owned()
}

#[tokio::test]
async fn admin_problems_are_clear_errors_that_never_show_a_password() {
    let (env, pg, _admin) = start().await;
    let weak = unique_name("weak_admin");
    let weak_pw = "weak-admin-password-123456";
    let role = unique_name("app");
    pg.superuser()
        .await
        .batch_execute(&format!(
            "CREATE ROLE {weak} LOGIN PASSWORD '{weak_pw}'; CREATE ROLE {role} LOGIN"
        ))
        .await
        .unwrap();
    let register = |dsn: String, role: String| {
        let env = &env;
        async move {
            // A local registration: the admin DSN's problems are the CLI's to report.
            let out = env
                .keyloop_with_keys()
                .env("KEYLOOP_POSTGRES_DSN", dsn)
                .args([
                    "credential",
                    "register",
                    "--local",
                    "pg/x",
                    "--target",
                    "postgres",
                    "--role",
                ])
                .arg(role)
                .output()
                .await
                .unwrap();
            assert!(!out.status.success());
            String::from_utf8_lossy(&out.stderr).into_owned()
        }
    };

    let no_createrole = register(pg.dsn_for(&weak, weak_pw, "postgres"), role.clone()).await;
    assert!(
        no_createrole.contains("lacks CREATEROLE"),
        "{no_createrole}"
    );
    assert!(
        no_createrole.contains(&format!("ALTER ROLE \"{weak}\" CREATEROLE")),
        "{no_createrole}"
    );

    let wrong_password = register(
        pg.dsn_for(&weak, "not-the-password-987654", "postgres"),
        role.clone(),
    )
    .await;
    assert!(
        wrong_password.contains("cannot connect")
            && wrong_password.contains("check the user and password"),
        "{wrong_password}"
    );

    let closed_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let unreachable = register(
        format!("postgres://{weak}:{weak_pw}@127.0.0.1:{closed_port}/postgres"),
        role.clone(),
    )
    .await;
    assert!(unreachable.contains("cannot connect"), "{unreachable}");

    let missing_role = env
        .run(&[
            "credential",
            "register",
            "pg/y",
            "--target",
            "postgres",
            "--role",
            "no_such_role",
        ])
        .await;
    let missing_role = String::from_utf8_lossy(&missing_role.stderr).into_owned();
    assert!(
        missing_role.contains("no_such_role") && missing_role.contains("does not exist"),
        "{missing_role}"
    );

    let no_role = env
        .run(&["credential", "register", "pg/z", "--target", "postgres"])
        .await;
    assert!(String::from_utf8_lossy(&no_role.stderr).contains("--role"));

    for text in [&no_createrole, &wrong_password, &unreachable] {
        assert!(
            text.contains(&format!("postgres://{weak}:[redacted]@127.0.0.1:")),
            "{text}"
        );
    }
    assert_nowhere(
        &[weak_pw.to_owned(), "not-the-password-987654".to_owned()],
        &[(
            "stderr",
            format!("{no_createrole}{wrong_password}{unreachable}{missing_role}"),
        )],
    );
    // Nothing was registered by the failed attempts.
    assert!(
        env.bus
            .inventory()
            .await
            .unwrap()
            .list()
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn invalidating_a_version_whose_role_moved_on_leaves_the_current_password_alone() {
    // `single`: after a rotation the previous value is already dead; retiring it later must not
    // disable the role the current value uses.
    let (env, pg, admin) = start().await;
    let role = unique_name("app");
    pg.superuser()
        .await
        .batch_execute(&format!("CREATE ROLE {role} LOGIN"))
        .await
        .unwrap();
    let _worker = env.worker("worker", &ALL_ROLES);
    let id = "pg/app-retire";
    env.ok(&[
        "credential",
        "register",
        id,
        "--target",
        "postgres",
        "--role",
        &role,
    ])
    .await;
    env.ok(&["rotate", id]).await;
    let current = reveal(&env, id).await;
    let cred = env.credential(id).await;
    let session = pg.connect_as(&role, &current, "postgres").await.unwrap();
    let target = PostgresTarget::new(&PostgresConfig::new(Secret::from(admin.as_str()))).unwrap();
    target
        .invalidate(&cred, cred.versions[0].id, None, RevokeReason::GraceEnded)
        .await
        .unwrap();
    assert!(logs_in(&pg, &role, &current).await);
    session.simple_query("SELECT 1").await.unwrap();
}

#[tokio::test]
async fn a_jit_lease_on_a_postgres_scope_is_a_role_until_its_task_completes() {
    let (env, pg, _admin) = start().await;
    let group = unique_name("scope_reporting");
    pg.superuser()
        .await
        .batch_execute(&format!("CREATE ROLE {group} NOLOGIN"))
        .await
        .unwrap();
    let policy = serde_json::json!({"scopes": {
        "db-read": {"tier": "auto", "max_ttl_secs": 3600, "postgres_group": group},
        "read": {"tier": "auto", "max_ttl_secs": 3600}
    }});
    let policy_file = env.file("jit-policy.json", policy.to_string().as_bytes());
    let _w = env.worker(
        "worker",
        &[
            "revoker",
            "sweeper",
            "jit-issuer",
            "--jit-policy",
            path_str(&policy_file),
        ],
    );
    let events = Events::subscribe(&env.bus).await;

    let out = env
        .ok(&[
            "task",
            "start",
            "report-77",
            "--agent",
            "analyst",
            "--scope",
            "db-read",
            "--ttl",
            "30m",
            "--json",
        ])
        .await;
    let lease: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let login = lease["login"]
        .as_str()
        .expect("a PostgreSQL role to log in as")
        .to_owned();
    let token = lease["secret"].as_str().unwrap().to_owned();
    let expires_at = time::OffsetDateTime::parse(
        lease["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert!(
        logs_in(&pg, &login, &token).await,
        "the JIT role logs in with the token"
    );
    let su = pg.superuser().await;
    let row = su
        .query_one(
            "SELECT rolvaliduntil FROM pg_roles WHERE rolname = $1",
            &[&login],
        )
        .await
        .unwrap();
    let valid_until: time::OffsetDateTime = row.get(0);
    assert_eq!(
        valid_until.unix_timestamp(),
        expires_at.unix_timestamp(),
        "VALID UNTIL is the lease expiry"
    );
    let member: bool = su
        .query_one("SELECT pg_has_role($1, $2, 'MEMBER')", &[&login, &group])
        .await
        .unwrap()
        .get(0);
    assert!(member, "the role has the scope's group privileges");
    let session = pg.connect_as(&login, &token, "postgres").await.unwrap();

    env.ok(&["task", "complete", "report-77"]).await;
    events
        .wait("lease revoked", Duration::from_secs(10), |e| {
            e.iter()
                .any(|e| e.data.kind == LifecycleKind::Revoked && e.data.lease.is_some())
        })
        .await;
    assert!(
        !logs_in(&pg, &login, &token).await,
        "the role cannot log in after its task completed"
    );
    assert!(
        session.simple_query("SELECT 1").await.is_err(),
        "its open session was ended"
    );
    let exists: bool = su
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)",
            &[&login],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!exists, "the role no longer exists");
    assert!(
        !pg.log_text().contains(&token),
        "the token never reached the server's log"
    );
}
