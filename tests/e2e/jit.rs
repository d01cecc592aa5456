//! JIT credentials: issued per task through request/reply, verified, revoked when the task
//! completes or expired by the sweeper when it never does; refused scopes; a sweep's work grows
//! with what is due, not with the number of leases; the issuer is a NATS service that PING,
//! INFO and STATS discover.

use crate::harness::{Env, Events, lifecycle};
use async_nats::service::{Info, PingResponse, Stats};
use keyloop_backends::MasterKey;
use keyloop_core::lease::{IssueReply, IssueRequest};
use keyloop_core::{JitPolicy, LifecycleKind, RevokeReason};
use keyloop_workers::WorkerContext;
use keyloop_workers::{jit_issuer, sweeper};
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;

const ALL_ROLES: [&str; 8] = [
    "leak-responder",
    "rotator",
    "revoker",
    "scheduler",
    "sweeper",
    "jit-issuer",
    "--tick-interval",
    "1s",
];

async fn start_task(env: &Env, task: &str, scope: &str, ttl: &str) -> serde_json::Value {
    let out = env
        .ok(&[
            "task", "start", task, "--agent", "agent-7", "--scope", scope, "--ttl", ttl, "--json",
        ])
        .await;
    serde_json::from_str(out.trim()).unwrap()
}

#[tokio::test]
async fn lease_works_until_its_task_completes_then_is_revoked_within_a_second() {
    let env = Env::start().await;
    let _w = env.worker("worker", &ALL_ROLES);
    let events = Events::subscribe(&env.bus).await;
    let lease = start_task(&env, "build-1842", "read", "10m").await;
    let token = lease["secret"].as_str().unwrap().to_owned();
    let lease_id: uuid::Uuid = lease["lease_id"].as_str().unwrap().parse().unwrap();
    assert!(token.starts_with("klt_"));
    assert!(env.verify(&token).await, "a fresh lease's token is valid");

    let completed = Instant::now();
    env.ok(&["task", "complete", "build-1842"]).await;
    events
        .wait("lease revoked", Duration::from_secs(1), |e| {
            e.iter().any(|e| {
                e.data.kind == LifecycleKind::Revoked
                    && e.data
                        .lease
                        .as_ref()
                        .is_some_and(|l| l.lease_id == lease_id)
            })
        })
        .await;
    assert!(
        !env.verify(&token).await,
        "the token is invalid once its task completed"
    );
    // token.verify answers for JIT tokens only: a managed credential's live value is checked
    // through the control plane, which knows who asks.
    let value = env.register_and_reveal("svc/not-a-token").await;
    assert!(
        !env.verify(&value).await,
        "token.verify says nothing of a managed value"
    );
    assert!(env.verify_value("svc/not-a-token", &value).await);

    // Trying the dead token again is on record, on the lease.
    events
        .wait(
            "verify_denied of the dead token",
            Duration::from_secs(5),
            |e| {
                e.iter().any(|e| {
                    e.data.kind == LifecycleKind::VerifyDenied
                        && e.data
                            .lease
                            .as_ref()
                            .is_some_and(|l| l.lease_id == lease_id)
                })
            },
        )
        .await;
    println!(
        "task.completed → lease revoked in {:?}",
        completed.elapsed()
    );

    let about: Vec<_> = lifecycle(&env.bus)
        .await
        .into_iter()
        .filter(|e| {
            e.data
                .lease
                .as_ref()
                .is_some_and(|l| l.lease_id == lease_id)
        })
        .collect();
    let kinds: Vec<_> = about.iter().map(|e| e.data.kind).collect();
    assert_eq!(
        kinds,
        [
            LifecycleKind::Issued,
            LifecycleKind::Used,
            LifecycleKind::Revoked,
            LifecycleKind::VerifyDenied
        ],
        "{kinds:?}"
    );
    assert_eq!(
        about[2].data.revoke_reason,
        Some(RevokeReason::TaskCompleted)
    );
    assert!(
        about
            .iter()
            .all(|e| e.correlationid.as_deref() == Some("build-1842"))
    );
    assert_eq!(
        about[0].subject.as_deref(),
        Some(format!("_lease-{lease_id}").as_str())
    );
}

#[tokio::test]
async fn lease_without_completion_is_expired_by_the_first_tick_after_its_ttl() {
    let env = Env::start().await;
    let _w = env.worker("worker", &ALL_ROLES);
    let events = Events::subscribe(&env.bus).await;
    let lease = start_task(&env, "forgotten-task", "write", "2s").await;
    let token = lease["secret"].as_str().unwrap().to_owned();
    let lease_id: uuid::Uuid = lease["lease_id"].as_str().unwrap().parse().unwrap();
    let expires_at = OffsetDateTime::parse(
        lease["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert!(env.verify(&token).await);
    events
        .wait("lease expired", Duration::from_secs(6), |e| {
            e.iter().any(|e| {
                e.data.kind == LifecycleKind::Expired
                    && e.data
                        .lease
                        .as_ref()
                        .is_some_and(|l| l.lease_id == lease_id)
            })
        })
        .await;
    assert!(!env.verify(&token).await);
    let stored = lifecycle(&env.bus).await;
    let expired = stored
        .iter()
        .find(|e| e.data.kind == LifecycleKind::Expired)
        .unwrap();
    assert_eq!(expired.data.revoke_reason, Some(RevokeReason::Expired));
    let late = expired.time - expires_at;
    assert!(
        late >= Duration::ZERO && late < Duration::from_millis(2_500),
        "expired {late} after its expiry (ticks every 1 s)"
    );
}

#[tokio::test]
async fn refused_requests_say_why_and_issue_nothing() {
    let env = Env::start().await;
    let _w = env.worker("worker", &["jit-issuer"]);
    for (args, expect) in [
        (["--scope", "admin", "--ttl", "5m"], "approval"),
        (
            ["--scope", "read", "--ttl", "2h"],
            "refused, never shortened",
        ),
        (["--scope", "root", "--ttl", "5m"], "unknown scope"),
    ] {
        let mut all = vec!["task", "start", "t-1", "--agent", "a"];
        all.extend(args);
        let out = env.run(&all).await;
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expect), "{stderr}");
        assert!(out.stdout.is_empty(), "no token printed");
    }
    // The approve-tier request is held for approvers (`approval_requested`); nothing is issued.
    let events = lifecycle(&env.bus).await;
    assert!(
        events
            .iter()
            .all(|e| e.data.kind == keyloop_core::LifecycleKind::ApprovalRequested),
        "nothing was issued: {events:?}"
    );
}

/// Sends a service API request (`$SRV.<verb>.keyloop-jit`, or to one instance with
/// `.<id>` after it) and decodes the answer.
async fn discover<T: serde::de::DeserializeOwned>(env: &Env, verb: &str, instance: &str) -> T {
    let subject = format!("$SRV.{verb}.keyloop-jit{instance}");
    let reply = env
        .bus
        .client
        .request(subject.clone(), "".into())
        .await
        .unwrap_or_else(|e| panic!("{subject}: {e}"));
    serde_json::from_slice(&reply.payload).unwrap_or_else(|e| {
        panic!(
            "{subject}: {e}: {}",
            String::from_utf8_lossy(&reply.payload)
        )
    })
}

#[tokio::test]
async fn the_jit_service_answers_ping_and_info_and_its_stats_count_the_requests_served() {
    let env = Env::start().await;
    let worker = env.worker("worker", &["jit-issuer"]);
    // The CLI waits for an issuer to answer, and the service's discovery is up before its
    // endpoints: once a lease is issued, PING must answer at once.
    let lease = start_task(&env, "t-served-1", "read", "10m").await;

    let pong: PingResponse = discover(&env, "PING", "").await;
    assert_eq!(pong.kind, "io.nats.micro.v1.ping_response");
    assert_eq!(pong.name, "keyloop-jit");
    assert_eq!(pong.version, env!("CARGO_PKG_VERSION"));
    let info: Info = discover(&env, "INFO", &format!(".{}", pong.id)).await;
    let mut endpoints: Vec<_> = info
        .endpoints
        .iter()
        .map(|e| (e.name.as_str(), e.subject.as_str(), e.queue_group.as_str()))
        .collect();
    endpoints.sort_unstable();
    assert_eq!(
        endpoints,
        [
            ("jit-issue", "keyloop.jit.issue", "jit-issuer"),
            ("token-verify", "keyloop.token.verify", "jit-issuer"),
        ],
        "the endpoints keep their subjects and queue group"
    );

    // Two more issue requests (one refused) and one verification.
    start_task(&env, "t-served-2", "write", "10m").await;
    let refused = env
        .run(&[
            "task",
            "start",
            "t-refused",
            "--agent",
            "a",
            "--scope",
            "read",
            "--ttl",
            "2h",
        ])
        .await;
    assert!(!refused.status.success());
    assert!(env.verify(lease["secret"].as_str().unwrap()).await);

    let stats: Stats = discover(&env, "STATS", "").await;
    assert_eq!(stats.name, "keyloop-jit");
    assert_eq!(
        stats.id, pong.id,
        "one instance: the one that answered the PING"
    );
    let endpoint = |name: &str| {
        stats
            .endpoints
            .iter()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("STATS has no {name}: {:?}", stats.endpoints))
    };
    let (issue, verify) = (endpoint("jit-issue"), endpoint("token-verify"));
    assert_eq!(issue.requests, 3, "{issue:?}");
    assert_eq!(
        issue.data,
        Some(serde_json::json!({"error_replies": {"ttl_too_long": 1}})),
        "error replies are counted by code"
    );
    assert_eq!(verify.requests, 1, "{verify:?}");
    assert_eq!(verify.data, Some(serde_json::json!({"error_replies": {}})));
    assert_eq!(issue.errors + verify.errors, 0);

    // The service stops with the worker.
    assert!(worker.stop().await.success(), "the worker exits cleanly");
    let after = env
        .bus
        .client
        .request("$SRV.PING.keyloop-jit", "".into())
        .await;
    assert!(
        matches!(&after, Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders),
        "no instance answers once the worker stopped: {after:?}"
    );
}

#[tokio::test]
async fn a_sweep_over_10000_live_leases_with_10_due_touches_about_10_items() {
    let env = Env::start().await;
    let key = MasterKey::generate();
    let ctx = Arc::new(
        WorkerContext::open(env.bus.clone(), Some(&key))
            .await
            .unwrap(),
    );
    let policy = Arc::new(JitPolicy::default());
    let engine = Arc::new(keyloop_core::policy::PolicyEngine::default_policy(
        Default::default(),
    ));
    let now = OffsetDateTime::now_utc();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let permits = Arc::new(tokio::sync::Semaphore::new(64));
    for i in 0..10_000u32 {
        let (ctx, policy, engine, permit) = (
            ctx.clone(),
            policy.clone(),
            engine.clone(),
            permits.clone().acquire_owned().await.unwrap(),
        );
        tasks.spawn(async move {
            let ttl_secs = if i % 1_000 == 0 { 1 } else { 3_000 };
            let req = IssueRequest {
                task_id: format!("task-{i}"),
                agent_id: Some("a".into()),
                scope: "read".into(),
                ttl_secs,
                identity_token: None,
                approval: None,
                wait_secs: None,
            };
            jit_issuer::issue(&ctx, &engine, &policy, &Default::default(), &req, now)
                .await
                .unwrap();
            drop(permit);
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    println!("issued 10,000 leases in {:?}", started.elapsed());

    let sweep_started = Instant::now();
    let stats = sweeper::sweep(&ctx, now + Duration::from_secs(5))
        .await
        .unwrap();
    println!(
        "sweep over 10,000 live leases, 10 due: {stats:?} in {:?}",
        sweep_started.elapsed()
    );
    assert_eq!(stats.commands, 10, "the 10 due leases were expired");
    assert!(
        stats.entries_read <= 20,
        "a sweep reads about the due items, not the inventory: {stats:?}"
    );
    let again = sweeper::sweep(&ctx, now + Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        again.commands, 0,
        "a second sweep finds nothing new: {again:?}"
    );
}

#[tokio::test]
async fn a_leaked_jit_token_is_revoked_like_any_other_value() {
    let env = Env::start().await;
    let _w = env.worker("worker", &ALL_ROLES);
    let events = Events::subscribe(&env.bus).await;
    let lease = start_task(&env, "agent-run-5", "read", "30m").await;
    let token = lease["secret"].as_str().unwrap().to_owned();
    let lease_id: uuid::Uuid = lease["lease_id"].as_str().unwrap().parse().unwrap();
    let report = env.file(
        "leak.jsonl",
        format!("{{\"secret\":\"{token}\",\"url\":\"https://paste.example/x\"}}\n").as_bytes(),
    );
    env.ok(&["ingest", "generic", report.to_str().unwrap()])
        .await;
    events
        .wait("leaked lease revoked", Duration::from_secs(5), |e| {
            e.iter().any(|e| {
                e.data.kind == LifecycleKind::Revoked
                    && e.data.revoke_reason == Some(RevokeReason::Leak)
                    && e.data
                        .lease
                        .as_ref()
                        .is_some_and(|l| l.lease_id == lease_id)
            })
        })
        .await;
    assert!(!env.verify(&token).await);
    let stored = lifecycle(&env.bus).await;
    let revoked = stored
        .iter()
        .find(|e| e.data.kind == LifecycleKind::Revoked)
        .unwrap();
    assert!(revoked.data.time_to_revoke_ms.is_some());
    assert!(
        stored
            .iter()
            .any(|e| e.data.kind == LifecycleKind::LeakMatched)
    );
}

#[tokio::test]
async fn an_unused_credential_is_revoked_when_idle_and_reveal_counts_as_use() {
    let env = Env::start().await;
    let _w = env.worker("worker", &ALL_ROLES);
    let events = Events::subscribe(&env.bus).await;
    env.ok(&[
        "credential",
        "register",
        "svc/dormant",
        "--idle-revoke-after",
        "2s",
    ])
    .await;
    env.ok(&[
        "credential",
        "register",
        "svc/busy",
        "--idle-revoke-after",
        "1h",
    ])
    .await;
    env.ok(&["credential", "reveal", "svc/busy"]).await;
    assert!(
        env.credential("svc/busy").await.last_used_at.is_some(),
        "reveal records a use"
    );
    events
        .wait("idle revocation", Duration::from_secs(6), |e| {
            e.iter().any(|e| {
                e.data.kind == LifecycleKind::Revoked && e.subject.as_deref() == Some("svc/dormant")
            })
        })
        .await;
    let dormant = env.credential("svc/dormant").await;
    assert!(dormant.live_versions().is_empty());
    assert_eq!(dormant.versions[0].revoke_reason, Some(RevokeReason::Idle));
    assert_eq!(
        env.credential("svc/busy").await.live_versions().len(),
        1,
        "idle revocation hits only the idle credential"
    );
}

/// Sends `request` on `subject`; `None` when nothing serves the subject.
async fn request_or_no_responders(env: &Env, subject: String, request: Vec<u8>) -> Option<Vec<u8>> {
    match env
        .bus
        .client
        .request(subject.clone(), request.into())
        .await
    {
        Ok(reply) => Some(reply.payload.to_vec()),
        Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => None,
        Err(e) => panic!("{subject}: {e}"),
    }
}

#[tokio::test]
async fn on_sigterm_the_issuer_stops_taking_requests_and_still_answers_the_one_in_hand() {
    let (env, pg) = tokio::join!(
        Env::start(),
        keyloop_testkit::postgres::TestPostgres::start()
    );
    env.set_env("KEYLOOP_POSTGRES_DSN", pg.create_admin().await);
    let su = pg.superuser().await;
    su.batch_execute("CREATE ROLE scope_drain NOLOGIN")
        .await
        .unwrap();
    let policy = serde_json::json!({"scopes": {
        "db-read": {"tier": "auto", "max_ttl_secs": 3600, "postgres_group": "scope_drain"},
        "read": {"tier": "auto", "max_ttl_secs": 3600}
    }});
    let policy_file = env.file("jit-policy.json", policy.to_string().as_bytes());
    let worker = env.worker(
        "worker",
        &["jit-issuer", "--jit-policy", policy_file.to_str().unwrap()],
    );
    start_task(&env, "t-warm", "read", "10m").await; // the issuer serves

    // Hold the catalog's lock so the lease's CREATE ROLE waits: that request is in hand.
    let mut blocker = pg.superuser().await;
    let lock = blocker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE pg_catalog.pg_authid IN EXCLUSIVE MODE")
        .await
        .unwrap();
    let in_hand = {
        let (client, subject) = (env.bus.client.clone(), env.bus.topology.jit_issue());
        let request = IssueRequest {
            task_id: "t-in-hand".into(),
            agent_id: Some("a".into()),
            scope: "db-read".into(),
            ttl_secs: 600,
            identity_token: None,
            approval: None,
            wait_secs: None,
        };
        // Longer than the default 10 s: the lock wait, the stop and the checks below all
        // happen while this request is in hand, and a loaded CI machine is slow.
        tokio::spawn(async move {
            client
                .send_request(
                    subject,
                    async_nats::Request::new()
                        .payload(serde_json::to_vec(&request).unwrap().into())
                        .timeout(Some(Duration::from_secs(60))),
                )
                .await
        })
    };
    // No event says a statement waits on a lock; the server's activity view does.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = su
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%ROLE%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the lease's CREATE ROLE never waited on the lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let pid = worker.child.id().expect("the worker runs");
    let term = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    // The service goes (its PING no longer answers), and after it, the endpoints that were
    // unsubscribed first: a new request finds nobody, rather than a replica that drops it. A
    // PING that reached the service as it stopped is not answered: it is sent again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ping = env.bus.client.request("$SRV.PING.keyloop-jit", "".into());
        match tokio::time::timeout(Duration::from_secs(1), ping).await {
            Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => break,
            Ok(Err(e)) => panic!("PING: {e}"),
            Ok(Ok(_)) | Err(_) => {}
        }
        assert!(
            Instant::now() < deadline,
            "the service still answers PING after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let late = IssueRequest {
        task_id: "t-late".into(),
        agent_id: Some("a".into()),
        scope: "read".into(),
        ttl_secs: 60,
        identity_token: None,
        approval: None,
        wait_secs: None,
    };
    assert_eq!(
        request_or_no_responders(
            &env,
            env.bus.topology.jit_issue(),
            serde_json::to_vec(&late).unwrap()
        )
        .await,
        None,
        "a stopping issuer takes no new request"
    );

    lock.commit().await.unwrap();
    let reply = in_hand.await.unwrap().unwrap_or_else(|e| {
        panic!(
            "the request in hand is answered: {e}\n{}",
            worker.log_text()
        )
    });
    let reply: IssueReply = serde_json::from_slice(&reply.payload)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&reply.payload)));
    let login = reply.login.clone().expect("a PostgreSQL lease");
    pg.connect_as(&login, &reply.secret, "postgres")
        .await
        .expect("the lease answered during shutdown logs in");
    let log = worker.log_text();
    assert!(worker.stop().await.success(), "{log}");
    let log = std::fs::read_to_string(env.dir.path().join("worker.log")).unwrap();
    assert!(log.contains("jit-issuer stopped serving"), "{log}");
    assert!(!log.contains("abandoned"), "{log}");
}
