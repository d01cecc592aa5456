//! The `aws-sm` store against `moto_server` (one per test, from `keyloop-testkit`): staging
//! labels after rotations, creating and adopting secrets, an interrupted rotation resumed or
//! cleaned up, and `aws-sm` with the `postgres` target through a leak.

use crate::harness::{Env, Events, gitleaks_report, lifecycle, path_str};
use futures::future::BoxFuture;
use keyloop_backends::{AwsSecretsManager, BackendError, Store};
use keyloop_core::event::{CloudEvent, ROTATE_COMMAND_TYPE, RotateCommand};
use keyloop_core::{Credential, LifecycleKind, RevokeReason, RotationReason, Secret, Stage};
use keyloop_testkit::moto::TestMoto;
use keyloop_testkit::postgres::{TestPostgres, unique_name};
use keyloop_workers::WorkerContext;
use keyloop_workers::ops::{Cause, version_for_op};
use keyloop_workers::rotator::run_rotation;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use uuid::Uuid;

const ALL_ROLES: [&str; 3] = ["leak-responder", "rotator", "revoker"];

async fn start() -> (Env, TestMoto) {
    let (env, moto) = tokio::join!(Env::start(), TestMoto::start());
    for (k, v) in moto.env() {
        env.set_env(k, v);
    }
    (env, moto)
}

/// Labels by version id, as `DescribeSecret` reports them.
async fn labels(moto: &TestMoto, secret: &str) -> HashMap<String, Vec<String>> {
    moto.client()
        .await
        .describe_secret()
        .secret_id(secret)
        .send()
        .await
        .unwrap()
        .version_ids_to_stages()
        .cloned()
        .unwrap_or_default()
}

fn holders(labels: &HashMap<String, Vec<String>>, label: &str) -> Vec<String> {
    let mut ids: Vec<_> = labels
        .iter()
        .filter(|(_, ls)| ls.iter().any(|l| l == label))
        .map(|(id, _)| id.clone())
        .collect();
    ids.sort();
    ids
}

/// Exactly one AWSCURRENT (on `current`), AWSPREVIOUS only on `previous`, no AWSPENDING.
fn assert_staged(labels: &HashMap<String, Vec<String>>, current: Uuid, previous: Option<Uuid>) {
    assert_eq!(
        holders(labels, "AWSCURRENT"),
        [current.to_string()],
        "{labels:?}"
    );
    assert_eq!(
        holders(labels, "AWSPREVIOUS"),
        previous
            .map(|p| p.to_string())
            .into_iter()
            .collect::<Vec<_>>(),
        "{labels:?}"
    );
    assert!(holders(labels, "AWSPENDING").is_empty(), "{labels:?}");
}

/// What an application reads: the AWSCURRENT value. Asked for by label: moto answers a
/// request without one from a default version that `UpdateSecretVersionStage` does not move
/// (AWS itself defaults to AWSCURRENT).
async fn awscurrent(moto: &TestMoto, secret: &str) -> String {
    moto.client()
        .await
        .get_secret_value()
        .secret_id(secret)
        .version_stage("AWSCURRENT")
        .send()
        .await
        .unwrap()
        .secret_string()
        .unwrap()
        .to_owned()
}

async fn reveal(env: &Env, id: &str) -> String {
    env.ok(&["credential", "reveal", id])
        .await
        .trim_end()
        .to_owned()
}

#[tokio::test]
async fn rotation_leaves_one_awscurrent_awsprevious_on_the_old_version_and_no_awspending() {
    let (env, moto) = start().await;
    let worker = env.worker("worker", &ALL_ROLES);
    let id = "saas/api-token";
    let secret = unique_name("prod/api-token");
    let registered = env
        .ok(&[
            "credential",
            "register",
            id,
            "--store",
            "aws-sm",
            "--secret-id",
            &secret,
        ])
        .await;
    let v1 = env.credential(id).await.versions[0].id;
    assert_staged(&labels(&moto, &secret).await, v1, None);
    let first = reveal(&env, id).await;
    assert_eq!(awscurrent(&moto, &secret).await, first);

    env.ok(&["rotate", id]).await;
    let cred = env.credential(id).await;
    let v2 = cred.current().unwrap().id;
    assert_ne!(v1, v2);
    assert_staged(&labels(&moto, &secret).await, v2, Some(v1));
    let second = reveal(&env, id).await;
    assert_eq!(awscurrent(&moto, &secret).await, second);
    assert_ne!(first, second);

    env.ok(&["rotate", id]).await;
    let cred = env.credential(id).await;
    let v3 = cred.current().unwrap().id;
    let l = labels(&moto, &secret).await;
    assert_staged(&l, v3, Some(v2));
    assert!(
        l.get(&v1.to_string()).is_none_or(|ls| ls.is_empty()),
        "the superseded version has no labels: {l:?}"
    );
    assert_eq!(cred.version(v1).unwrap().stage, Stage::Revoked);

    // Without --secret-id the secret is keyloop/<id>; an existing secret is adopted.
    env.ok(&["credential", "register", "ci/deploy", "--store", "aws-sm"])
        .await;
    assert!(!labels(&moto, "keyloop/ci/deploy").await.is_empty());
    let adopted = unique_name("legacy/db");
    moto.client()
        .await
        .create_secret()
        .name(&adopted)
        .secret_string("legacy-value-somebody-pasted-long-ago")
        .send()
        .await
        .unwrap();
    env.ok(&[
        "credential",
        "register",
        "legacy/db",
        "--store",
        "aws-sm",
        "--secret-id",
        &adopted,
    ])
    .await;
    let ours = env.credential("legacy/db").await.versions[0].id;
    let l = labels(&moto, &adopted).await;
    assert_staged(&l, ours, None);
    assert_eq!(
        l.len(),
        2,
        "the legacy version is kept, without labels: {l:?}"
    );
    assert_ne!(
        awscurrent(&moto, &adopted).await,
        "legacy-value-somebody-pasted-long-ago"
    );

    let texts = [
        worker.log_text(),
        serde_json::to_string(&lifecycle(&env.bus).await).unwrap(),
        registered,
    ];
    for v in [&first, &second] {
        assert!(texts.iter().all(|t| !t.contains(v.as_str())));
    }
}

/// A store that never gets past the rotator's read-back after `set`: the worker running it
/// is as good as killed between `set` and `finish`.
#[derive(Debug)]
struct StopsAfterSet {
    inner: Arc<dyn Store>,
    reached: Arc<Notify>,
}

impl Store for StopsAfterSet {
    fn put_new<'a>(
        &'a self,
        c: &'a Credential,
        v: Uuid,
        value: Secret,
    ) -> BoxFuture<'a, Result<Secret, BackendError>> {
        self.inner.put_new(c, v, value)
    }

    fn get<'a>(
        &'a self,
        _: &'a Credential,
        _: Uuid,
    ) -> BoxFuture<'a, Result<Option<Secret>, BackendError>> {
        Box::pin(async move {
            self.reached.notify_one();
            futures::future::pending().await
        })
    }

    fn promote<'a>(
        &'a self,
        c: &'a Credential,
        v: Uuid,
        p: Option<Uuid>,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        self.inner.promote(c, v, p)
    }

    fn destroy<'a>(
        &'a self,
        c: &'a Credential,
        v: Uuid,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        self.inner.destroy(c, v)
    }
}

/// Runs rotation `op` of `id` in-process until it has set the new value, then kills it.
async fn rotate_until_set_then_kill(env: &Env, moto: &TestMoto, id: &str, op: &str) {
    let mut ctx = WorkerContext::open(env.bus.clone(), Some(&env.master_key()))
        .await
        .unwrap();
    let reached = Arc::new(Notify::new());
    ctx.backends.aws_sm = Some(Arc::new(StopsAfterSet {
        inner: Arc::new(AwsSecretsManager::new(moto.config())),
        reached: reached.clone(),
    }));
    let cmd = RotateCommand {
        credential: id.parse().unwrap(),
        reason: RotationReason::Manual,
        op_id: op.to_owned(),
    };
    let task = tokio::spawn(async move {
        run_rotation(
            &ctx,
            &cmd,
            &Cause {
                source: "keyloop/rotator".into(),
                ..Default::default()
            },
            &mut None,
        )
        .await
    });
    tokio::time::timeout(Duration::from_secs(10), reached.notified())
        .await
        .expect("the rotation reaches the step after set");
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
}

#[tokio::test]
async fn worker_killed_between_set_and_finish_is_resumed_and_leaves_no_awspending() {
    let (env, moto) = start().await;
    let id = "saas/interrupted";
    let secret = unique_name("prod/interrupted");
    env.ok(&[
        "credential",
        "register",
        id,
        "--store",
        "aws-sm",
        "--secret-id",
        &secret,
    ])
    .await;
    let v1 = env.credential(id).await.versions[0].id;

    // 1. Killed mid-rotation: the new version is pending in the inventory and AWSPENDING.
    let op = "manual-rotate/killed-1";
    rotate_until_set_then_kill(&env, &moto, id, op).await;
    let pending = version_for_op(op);
    let cred = env.credential(id).await;
    assert_eq!(cred.version(pending).unwrap().stage, Stage::Pending);
    let l = labels(&moto, &secret).await;
    assert_eq!(holders(&l, "AWSPENDING"), [pending.to_string()]);
    assert_eq!(holders(&l, "AWSCURRENT"), [v1.to_string()]);

    // The command is delivered again (as JetStream would after the ack wait) to a worker
    // process: it resumes from the recorded step and finishes.
    let worker = env.worker("worker", &ALL_ROLES);
    let events = Events::subscribe(&env.bus).await;
    let cmd = RotateCommand {
        credential: id.parse().unwrap(),
        reason: RotationReason::Manual,
        op_id: op.to_owned(),
    };
    let event = CloudEvent::new(op, "keyloop/test", ROTATE_COMMAND_TYPE, cmd).with_subject(id);
    env.bus
        .publish_event(&env.bus.topology.cmd_rotate(), &event)
        .await
        .unwrap();
    events
        .wait("the resumed rotation", Duration::from_secs(10), |evs| {
            evs.iter()
                .any(|e| e.data.kind == LifecycleKind::Rotated && e.data.version == Some(pending))
        })
        .await;
    assert_staged(&labels(&moto, &secret).await, pending, Some(v1));
    assert_eq!(awscurrent(&moto, &secret).await, reveal(&env, id).await);

    // 2. Killed again, and never redelivered: the next rotation retires the abandoned pending
    // version instead of being blocked by it.
    let op2 = "manual-rotate/killed-2";
    rotate_until_set_then_kill(&env, &moto, id, op2).await;
    let abandoned = version_for_op(op2);
    assert_eq!(
        holders(&labels(&moto, &secret).await, "AWSPENDING"),
        [abandoned.to_string()]
    );
    env.ok(&["rotate", id]).await;
    let cred = env.credential(id).await;
    let v3 = cred.current().unwrap().id;
    let gone = cred.version(abandoned).unwrap();
    assert_eq!(gone.stage, Stage::Revoked);
    assert_eq!(gone.revoke_reason, Some(RevokeReason::Superseded));
    let l = labels(&moto, &secret).await;
    assert_staged(&l, v3, Some(pending));
    assert!(l[&abandoned.to_string()].is_empty(), "{l:?}");

    // 3. A crash between PutSecretValue and the inventory record leaves AWSPENDING on a version
    // keyloop never recorded: the next rotation takes the label over and then removes it.
    let orphan = Uuid::now_v7();
    moto.client()
        .await
        .put_secret_value()
        .secret_id(&secret)
        .client_request_token(orphan.to_string())
        .secret_string("orphaned-pending-value-0123456789")
        .version_stages("AWSPENDING")
        .send()
        .await
        .unwrap();
    env.ok(&["rotate", id]).await;
    let v4 = env.credential(id).await.current().unwrap().id;
    let l = labels(&moto, &secret).await;
    assert_staged(&l, v4, Some(v3));
    assert!(l[&orphan.to_string()].is_empty(), "{l:?}");
    drop(worker);
}

#[tokio::test]
async fn leak_of_a_postgres_password_kept_in_secrets_manager_changes_the_role_and_awscurrent() {
    let (env, moto) = start().await;
    let pg = TestPostgres::start().await;
    env.set_env("KEYLOOP_POSTGRES_DSN", pg.create_admin().await);
    let role = unique_name("billing");
    pg.superuser()
        .await
        .batch_execute(&format!("CREATE ROLE {role} LOGIN"))
        .await
        .unwrap();
    let id = "pg/billing";
    let secret = unique_name("prod/billing/db");
    env.ok(&[
        "credential",
        "register",
        id,
        "--store",
        "aws-sm",
        "--secret-id",
        &secret,
        "--target",
        "postgres",
        "--role",
        &role,
    ])
    .await;
    let worker = env.worker("worker", &ALL_ROLES);
    // What the application reads from Secrets Manager, and a session it opened with it.
    let leaked = awscurrent(&moto, &secret).await;
    let old_version = env.credential(id).await.versions[0].id;
    let session = pg.connect_as(&role, &leaked, "postgres").await.unwrap();

    let events = Events::subscribe(&env.bus).await;
    let report = env.file("leak.json", &gitleaks_report(&leaked, "k8s/billing.yaml"));
    env.ok(&["ingest", "gitleaks", path_str(&report)]).await;
    events
        .wait("revoked", Duration::from_secs(10), |evs| {
            evs.iter().any(|e| e.data.kind == LifecycleKind::Revoked)
        })
        .await;
    assert!(
        pg.connect_as(&role, &leaked, "postgres").await.is_err(),
        "the leaked password fails once `revoked` is out"
    );
    assert!(session.simple_query("SELECT 1").await.is_err());
    events
        .wait("rotated", Duration::from_secs(10), |evs| {
            evs.iter().any(|e| e.data.kind == LifecycleKind::Rotated)
        })
        .await;

    let fresh = awscurrent(&moto, &secret).await;
    assert_ne!(fresh, leaked, "AWSCURRENT holds the new value");
    pg.connect_as(&role, &fresh, "postgres")
        .await
        .expect("the new value logs in");
    let err = pg.connect_as(&role, &leaked, "postgres").await.unwrap_err();
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD)
    );
    let cred = env.credential(id).await;
    let current = cred.current().unwrap().id;
    let l = labels(&moto, &secret).await;
    assert_staged(&l, current, None);
    assert!(
        l[&old_version.to_string()].is_empty(),
        "the leaked version keeps no label: {l:?}"
    );
    for (name, text) in [
        ("the PostgreSQL statement log", pg.log_text()),
        ("the worker log", worker.log_text()),
        (
            "the lifecycle stream",
            serde_json::to_string(&lifecycle(&env.bus).await).unwrap(),
        ),
    ] {
        for v in [&leaked, &fresh] {
            assert!(!text.contains(v.as_str()), "a password appears in {name}");
        }
    }
}
