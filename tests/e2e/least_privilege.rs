//! Least privilege: a nats-server started from the checked-in `deploy/nats/single.conf` (its
//! users and permissions included as they are) runs the whole loop with each keyloop process
//! connected as its role's user — one worker process per role — and no permissions violation;
//! then each user is shown what it may not do: a detector publishes leaks but no commands and
//! reads no lifecycle event; an orchestrator requests JIT credentials (and may PING the JIT
//! service) but reads no leak, and no other orchestrator's JIT reply; the leak-responder touches
//! no value and cannot ask for a rotation or claim a revocation; the sweeper reads no value; no
//! worker enumerates the fingerprint index or does what only admin may (create or change
//! streams) or nobody may (delete or purge them, replay the audit log); ops asks the control
//! plane as `ops` only and publishes no lifecycle event, writes no bucket, sends no command and
//! holds no JetStream API beyond its replays; admin holds the layout and reads nothing; and no
//! user reads another's replies.

use crate::harness::{Env, Events, connect_as, gitleaks_report, nats_password, path_str};
use async_nats::jetstream;
use futures::StreamExt;
use keyloop_core::LifecycleKind;
use keyloop_core::lease::IssueRequest;
use std::time::Duration;
use tokio::sync::mpsc;

/// A client connected as one user that records the errors the server sends it: a denied
/// publish or subscription is answered with `-ERR 'Permissions Violation for …'` (and
/// otherwise dropped), which async-nats hands to the event callback.
struct Probe {
    user: &'static str,
    client: async_nats::Client,
    js: jetstream::Context,
    errors: mpsc::UnboundedReceiver<String>,
}

impl Probe {
    async fn connect(url: &str, user: &'static str) -> Self {
        let (tx, errors) = mpsc::unbounded_channel();
        let client = async_nats::ConnectOptions::with_user_and_password(
            user.to_owned(),
            nats_password(user),
        )
        .custom_inbox_prefix(format!("_INBOX_{user}"))
        .add_root_certificates(crate::harness::test_certs().ca())
        .require_tls(true)
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    let _ = tx.send(e.to_string());
                }
            }
        })
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect as {user}: {e}"));
        let mut js = jetstream::new(client.clone());
        js.set_timeout(Duration::from_secs(2));
        Self {
            user,
            client,
            js,
            errors,
        }
    }

    /// Waits for the server to refuse `op` ("Publish" or "Subscription") on `subject`.
    async fn refused(&mut self, op: &str, subject: &str) {
        let expected = format!("Permissions Violation for {op} to \"{subject}\"");
        let user = self.user;
        let seen = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let error = self.errors.recv().await.expect("event callback alive");
                if error.contains(&expected) {
                    return;
                }
            }
        })
        .await;
        assert!(seen.is_ok(), "{user}: no `{expected}` within 5 s");
    }

    /// Publishes (a raw publish: the permission is on the subject, whatever the payload) and
    /// waits for the refusal.
    async fn cannot_publish(&mut self, subject: &str) {
        self.client
            .publish(subject.to_owned(), "{}".into())
            .await
            .unwrap();
        self.client.flush().await.unwrap();
        self.refused("Publish", subject).await;
    }

    /// Subscribes, waits for the refusal, then runs `traffic` (which returns once a message
    /// the pattern matches has been routed by the server) and shows that it did not arrive:
    /// after this connection's round trip the server would have written it before the PONG.
    async fn cannot_subscribe(&mut self, pattern: &str, traffic: impl Future<Output = ()>) {
        let sub = self.client.subscribe(pattern.to_owned()).await.unwrap();
        self.receives_nothing(sub, pattern, traffic).await;
    }

    /// [`Probe::cannot_subscribe`] in the queue group `queue`.
    async fn cannot_queue_subscribe(
        &mut self,
        subject: &str,
        queue: &str,
        traffic: impl Future<Output = ()>,
    ) {
        let sub = self
            .client
            .queue_subscribe(subject.to_owned(), queue.to_owned())
            .await
            .unwrap();
        self.receives_nothing(sub, subject, traffic).await;
    }

    async fn receives_nothing(
        &mut self,
        mut sub: async_nats::Subscriber,
        pattern: &str,
        traffic: impl Future<Output = ()>,
    ) {
        self.client.flush().await.unwrap();
        self.refused("Subscription", pattern).await;
        traffic.await;
        self.client.flush().await.unwrap();
        use futures::FutureExt;
        assert!(
            futures::StreamExt::next(&mut sub).now_or_never().is_none(),
            "{}: a message on {pattern} reached a refused subscription",
            self.user
        );
    }

    /// A JetStream publish to `subject` is refused: no stream acknowledges it, and `stream`
    /// (read through `js`, a connection that may) holds nothing new.
    async fn cannot_store(&mut self, subject: &str, stream: &str, js: &jetstream::Context) {
        let before = last_sequence(js, stream).await;
        let ack = self
            .js
            .publish(subject.to_owned(), "{}".into())
            .await
            .unwrap();
        self.refused("Publish", subject).await;
        assert!(
            ack.await.is_err(),
            "{}: a stream acknowledged a refused publish to {subject}",
            self.user
        );
        assert_eq!(
            last_sequence(js, stream).await,
            before,
            "{}: {subject} reached {stream}",
            self.user
        );
    }

    /// Nothing has been refused so far (after a round trip).
    async fn nothing_refused(&mut self) {
        self.client.flush().await.unwrap();
        if let Ok(error) = self.errors.try_recv() {
            panic!("{}: unexpected server error: {error}", self.user);
        }
    }
}

/// The sequence of the last message in `stream`.
async fn last_sequence(js: &jetstream::Context, stream: &str) -> u64 {
    js.get_stream(stream)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .last_sequence
}

/// A valid leak finding event (of a value nobody manages).
fn leak_event() -> Vec<u8> {
    let finding = keyloop_core::LeakFinding {
        fingerprint: keyloop_core::Fingerprint::of_bytes(b"FAKE-unmanaged-value-0001"),
        detector: "probe".into(),
        location: keyloop_core::LeakLocation::default(),
    };
    let event = keyloop_core::CloudEvent::new(
        uuid::Uuid::now_v7().to_string(),
        "probe",
        keyloop_core::event::LEAK_DETECTED_TYPE,
        finding,
    );
    serde_json::to_vec(&event).unwrap()
}

#[tokio::test]
async fn every_role_runs_the_loop_with_its_own_user_and_no_more() {
    let env = Env::start_secured().await;
    let url = env.server.as_ref().unwrap().url().to_owned();

    // admin: the layout (again, through the CLI), then the fleet: one process per role, each as
    // its role's user (every one is given the master key: those that touch no value must not
    // open the secrets bucket all the same).
    env.ok(&["init"]).await;
    let fleet: Vec<_> = [
        ("leak-responder", &[][..]),
        ("rotator", &[]),
        ("revoker", &[]),
        ("sweeper", &[]),
        ("jit-issuer", &[]),
        ("scheduler", &["--tick-interval", "1s"]),
    ]
    .into_iter()
    .map(|(role, flags)| {
        let args: Vec<&str> = std::iter::once(role).chain(flags.iter().copied()).collect();
        env.worker_as(role, role, &args)
    })
    .collect();
    let events = Events::subscribe(&env.bus).await;

    // ops registers; a detector's report leaks the value; the fleet revokes and rotates it.
    let value = env.register_and_reveal("svc/least-privilege").await;
    let report = env.file("leak.json", &gitleaks_report(&value, "a.env"));
    let out = env
        .keyloop_as("detector")
        .args(["ingest", "gitleaks", path_str(&report)])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "ingest as detector: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    events
        .wait("leak revoked and rotated", Duration::from_secs(10), |e| {
            e.iter().any(|e| {
                e.data.kind == LifecycleKind::Rotated
                    && e.subject.as_deref() == Some("svc/least-privilege")
            })
        })
        .await;
    // ops rotates, revokes, ticks and replays.
    env.ok(&["rotate", "svc/least-privilege"]).await;
    env.ok(&["revoke", "svc/least-privilege", "--reason", "test"])
        .await;
    env.ok(&["tick"]).await;

    // An orchestrator: a lease per task, verified, revoked on completion; another expires.
    let as_orchestrator = |args: &'static [&'static str]| {
        let mut cmd = env.keyloop_as("orchestrator-a");
        cmd.args(args);
        async move {
            let out = cmd.output().await.unwrap();
            assert!(
                out.status.success(),
                "{args:?} as orchestrator: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        }
    };
    let lease: serde_json::Value = serde_json::from_str(
        as_orchestrator(&[
            "task", "start", "t-1", "--agent", "a", "--scope", "read", "--ttl", "10m", "--json",
        ])
        .await
        .trim(),
    )
    .unwrap();
    let token = lease["secret"].as_str().unwrap().to_owned();
    let verify = |token: String| {
        let mut cmd = env.keyloop_as("orchestrator-a");
        cmd.args(["token", "verify"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        async move {
            use tokio::io::AsyncWriteExt;
            let mut child = cmd.spawn().unwrap();
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(token.as_bytes()).await.unwrap();
            drop(stdin);
            child.wait_with_output().await.unwrap().status.code()
        }
    };
    assert_eq!(
        verify(token.clone()).await,
        Some(0),
        "valid as orchestrator"
    );
    as_orchestrator(&["task", "complete", "t-1"]).await;
    // A request with an identity token that is not one is refused, and the refusal recorded
    // (`denied`, by the jit-issuer as its own user).
    let bad_token = env.file("bad-identity.jwt", b"not.a.jwt");
    let refused = env
        .keyloop_as("orchestrator-a")
        .args(["task", "start", "t-bad", "--scope", "read", "--ttl", "1m"])
        .arg("--identity-token-file")
        .arg(&bad_token)
        .output()
        .await
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("identity_invalid"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    events
        .wait("the refusal recorded", Duration::from_secs(10), |e| {
            e.iter().any(|e| {
                e.data.kind == LifecycleKind::Denied
                    && e.data
                        .actor
                        .as_deref()
                        .is_some_and(|a| a.starts_with("unverified"))
            })
        })
        .await;
    let short: serde_json::Value = serde_json::from_str(
        as_orchestrator(&[
            "task", "start", "t-2", "--agent", "a", "--scope", "read", "--ttl", "1s", "--json",
        ])
        .await
        .trim(),
    )
    .unwrap();
    let short_id: uuid::Uuid = short["lease_id"].as_str().unwrap().parse().unwrap();
    events
        .wait(
            "the short lease expired on a tick",
            Duration::from_secs(10),
            |e| {
                e.iter().any(|e| {
                    e.data.kind == LifecycleKind::Expired
                        && e.data
                            .lease
                            .as_ref()
                            .is_some_and(|l| l.lease_id == short_id)
                })
            },
        )
        .await;
    assert_eq!(verify(token).await, Some(2), "revoked with its task");

    // Schedules and uses: a credential rotated by the sweeper at its max age (the rotator files
    // the next rotation and the end of the grace in the due-time index), its previous version
    // retired when the grace ends; a service's `credential.used` of a credential nobody read
    // yet, recorded by the sweeper.
    env.ok(&[
        "credential",
        "register",
        "svc/scheduled",
        "--store",
        "local",
        "--max-age",
        "2s",
        "--grace",
        "2s",
    ])
    .await;
    let first = env.credential("svc/scheduled").await.versions[0].id;
    env.ok(&["credential", "register", "svc/used", "--store", "local"])
        .await;
    let used = keyloop_core::CloudEvent::new(
        "used-least-privilege",
        "e2e",
        keyloop_core::event::CREDENTIAL_USED_TYPE,
        keyloop_core::event::CredentialUsed {
            credential: "svc/used".parse().unwrap(),
            version: None,
            actor: Some("a service".into()),
        },
    );
    env.bus
        .publish_event(&env.bus.topology.credential_used(), &used)
        .await
        .expect("ops publishes a use");
    events
        .wait(
            "scheduled rotation, retirement and a recorded use",
            Duration::from_secs(20),
            |e| {
                e.iter()
                    .any(|e| e.data.kind == LifecycleKind::Revoked && e.data.version == Some(first))
                    && e.iter().any(|e| {
                        e.data.kind == LifecycleKind::Used
                            && e.subject.as_deref() == Some("svc/used")
                    })
            },
        )
        .await;
    let replay = env.ok(&["replay", "--json"]).await;
    assert!(replay.lines().count() > 10, "ops replays the audit log");
    let listed = env.ok(&["credential", "list"]).await;
    assert!(listed.contains("svc/least-privilege"), "{listed}");
    env.ok(&["credential", "show", "svc/least-privilege"]).await;

    // The DLQ by hand: a detector's garbage is given up by the leak-responder; ops retries it
    // (it is given up again) and purges what is left, through the control plane serving as its
    // own user.
    let mut given_up = {
        use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
        let dlq = env.bus.js.get_stream("KEYLOOP_DLQ").await.unwrap();
        dlq.create_consumer(OrderedConfig {
            deliver_policy: DeliverPolicy::New,
            ..Default::default()
        })
        .await
        .unwrap()
        .messages()
        .await
        .unwrap()
    };
    let mut next_given_up = async || {
        let m = tokio::time::timeout(Duration::from_secs(10), given_up.next())
            .await
            .expect("a DLQ entry")
            .unwrap()
            .unwrap();
        m.info().unwrap().stream_sequence
    };
    let detector_bus = connect_as(&url, "detector").await;
    detector_bus
        .client
        .publish("keyloop.leak.detected", "{\"not\": \"a leak\"".into())
        .await
        .unwrap();
    detector_bus.client.flush().await.unwrap();
    let first = next_given_up().await;
    let out = env.ok(&["dlq", "retry", &first.to_string()]).await;
    assert!(out.starts_with(&format!("retried {first}")), "{out}");
    let second = next_given_up().await;
    assert_ne!(first, second);
    let out = env.ok(&["dlq", "purge", "--all", "--yes"]).await;
    assert_eq!(
        out.trim(),
        format!("purged {second} (leak-responder, keyloop.leak.detected)")
    );
    assert!(env.ok(&["dlq", "list"]).await.trim().is_empty());

    // All of it ran without a single refusal.
    let server_log =
        std::fs::read_to_string(env.server.as_ref().unwrap().dir().join("nats-server.log"))
            .unwrap_or_default();
    let violations: Vec<_> = server_log
        .lines()
        .filter(|l| l.contains("Violation"))
        .collect();
    assert!(
        violations.is_empty(),
        "the loop needs permissions the config lacks:\n{}",
        violations.join("\n")
    );
    for worker in &fleet {
        let log = worker.log_text();
        assert!(!log.contains("Permissions Violation"), "{log}");
    }
    // Every worker user reads the DLQ's depth (the keyloop_dlq_messages gauge), never a message.
    let worker_users = crate::harness::NATS_USERS
        .iter()
        .filter(|u| keyloop_nats::Role::from_name(u).is_some());
    for user in worker_users {
        let bus = connect_as(&url, user).await;
        let mut dlq = bus
            .js
            .get_stream("KEYLOOP_DLQ")
            .await
            .unwrap_or_else(|e| panic!("{user} reads the DLQ's info: {e}"));
        dlq.info().await.unwrap();
    }

    // Lifecycle traffic for the subscriptions below to miss: the control plane may publish
    // any kind (it records manual actions).
    let api_bus = connect_as(&url, "api").await;
    let lifecycle_writer = &api_bus.client;
    let mut detector = Probe::connect(&url, "detector").await;
    let mut webhooks = Probe::connect(&url, "ingest").await;
    let mut orchestrator = Probe::connect(&url, "orchestrator-a").await;
    let mut other_orchestrator = Probe::connect(&url, "orchestrator-b").await;
    let mut responder = Probe::connect(&url, "leak-responder").await;
    let mut sweeper = Probe::connect(&url, "sweeper").await;
    let mut rogue = Probe::connect(&url, "rotator").await;
    let mut issuer = Probe::connect(&url, "jit-issuer").await;
    let mut scheduler = Probe::connect(&url, "scheduler").await;
    let mut api = Probe::connect(&url, "api").await;
    let mut operator = Probe::connect(&url, "ops").await;
    let mut admin = Probe::connect(&url, "admin").await;

    // An orchestrator's request, answered by the fleet: the reply carries a JIT token.
    let orchestrator_client = orchestrator.client.clone();
    let jit_request = |task: &str| {
        let request = IssueRequest {
            task_id: task.into(),
            agent_id: Some("a".into()),
            scope: "read".into(),
            ttl_secs: 60,
            identity_token: None,
            approval: None,
            wait_secs: None,
        };
        let client = orchestrator_client.clone();
        async move {
            let reply = client
                .request(
                    "keyloop.jit.issue",
                    serde_json::to_vec(&request).unwrap().into(),
                )
                .await
                .expect("an orchestrator gets a reply");
            let reply: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
            assert!(reply["secret"].is_string(), "{reply}");
        }
    };
    jit_request("t-3").await;
    orchestrator.nothing_refused().await;

    // An orchestrator may PING the JIT service to see an issuer is there, and that is all it
    // may ask the service API.
    let pong = orchestrator
        .client
        .request("$SRV.PING.keyloop-jit", "".into())
        .await
        .expect("the running jit-issuer answers an orchestrator's PING");
    let pong: async_nats::service::PingResponse = serde_json::from_slice(&pong.payload).unwrap();
    assert_eq!(pong.name, "keyloop-jit");
    orchestrator.nothing_refused().await;
    for subject in [
        "$SRV.PING",
        "$SRV.STATS.keyloop-jit",
        "$SRV.INFO.keyloop-jit",
    ] {
        orchestrator.cannot_publish(subject).await;
    }

    // Nobody else reads an orchestrator's replies (its JIT tokens), nor the requests: not
    // another orchestrator, which gets its own leases on its own inbox.
    other_orchestrator
        .cannot_subscribe("_INBOX_orchestrator-a.>", jit_request("t-4"))
        .await;
    let own = other_orchestrator
        .client
        .request(
            "keyloop.jit.issue",
            serde_json::to_vec(&IssueRequest {
                task_id: "b-1".into(),
                agent_id: Some("b".into()),
                scope: "read".into(),
                ttl_secs: 60,
                identity_token: None,
                approval: None,
                wait_secs: None,
            })
            .unwrap()
            .into(),
        )
        .await
        .expect("orchestrator B gets its own reply");
    let own: serde_json::Value = serde_json::from_slice(&own.payload).unwrap();
    assert!(own["secret"].is_string(), "{own}");
    other_orchestrator.nothing_refused().await;
    detector
        .cannot_subscribe("_INBOX_orchestrator-a.>", jit_request("t-5"))
        .await;
    rogue
        .cannot_subscribe("_INBOX_orchestrator-a.>", jit_request("t-6"))
        .await;
    // Serving JIT requests is allowed in the queue group `jit-issuer` only: a plain
    // subscription would see every request beside the real issuers, and only the jit-issuer
    // may join that group.
    issuer
        .cannot_subscribe("keyloop.jit.issue", jit_request("t-7"))
        .await;
    rogue
        .cannot_queue_subscribe("keyloop.jit.issue", "jit-issuer", jit_request("t-8"))
        .await;
    // The same for the control plane's requests (served in the queue group `api` only).
    api.cannot_subscribe("keyloop.api.*.*", async {}).await;
    api.cannot_subscribe("keyloop.api.>", async {}).await;

    // The fleet stops (cleanly), so the streams hold still for what follows.
    for worker in fleet {
        assert!(worker.stop().await.success(), "a worker exits cleanly");
    }
    let lifecycle_published = |subject: &'static str| async move {
        lifecycle_writer
            .publish(subject, "probe".into())
            .await
            .unwrap();
        lifecycle_writer.flush().await.unwrap();
    };

    // A detector publishes leaks (acknowledged by the stream) and nothing else.
    detector
        .js
        .publish("keyloop.leak.detected", leak_event().into())
        .await
        .unwrap()
        .await
        .expect("a detector's leak is stored");
    detector.nothing_refused().await;
    detector
        .cannot_store("keyloop.cmd.revoke", "KEYLOOP_COMMANDS", &env.layout().js)
        .await;
    detector.cannot_publish("keyloop.cmd.rotate").await;
    detector
        .cannot_publish("keyloop.lifecycle.revoked.svc")
        .await;
    detector
        .cannot_subscribe(
            "keyloop.lifecycle.>",
            lifecycle_published("keyloop.lifecycle.used.probe-x"),
        )
        .await;
    detector
        .cannot_publish("$JS.API.CONSUMER.CREATE.KEYLOOP_LIFECYCLE")
        .await;
    detector
        .cannot_publish("$JS.API.STREAM.MSG.GET.KEYLOOP_LIFECYCLE")
        .await;
    detector.cannot_publish("$SRV.PING.keyloop-jit").await;

    // The webhook receiver (`ingest serve`) publishes leaks and looks tokens up in the
    // fingerprint index by key; it cannot list or write the index, send a command, record a
    // lifecycle event or read one.
    webhooks
        .js
        .publish("keyloop.leak.detected", leak_event().into())
        .await
        .unwrap()
        .await
        .expect("a webhook's leak is stored");
    webhooks.nothing_refused().await;
    for subject in [
        "keyloop.cmd.revoke",
        "keyloop.lifecycle.revoked.svc",
        "$KV.keyloop_fingerprints.v1.sha256.probe",
        "$JS.API.CONSUMER.CREATE.KV_keyloop_fingerprints",
        "$JS.API.DIRECT.GET.KV_keyloop_inventory.$KV.keyloop_inventory.cred.svc",
        "$JS.API.DIRECT.GET.KV_keyloop_secrets.$KV.keyloop_secrets.probe",
        "keyloop.api.ingest.list",
    ] {
        webhooks.cannot_publish(subject).await;
    }
    webhooks
        .cannot_subscribe(
            "keyloop.lifecycle.>",
            lifecycle_published("keyloop.lifecycle.used.probe-w"),
        )
        .await;

    // An orchestrator reads no leak: not live, not from the stream.
    let leak_published = {
        let js = detector.js.clone();
        async move {
            js.publish("keyloop.leak.detected", leak_event().into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    };
    orchestrator
        .cannot_subscribe("keyloop.leak.>", leak_published)
        .await;
    for subject in [
        "$JS.API.CONSUMER.CREATE.KEYLOOP_EVENTS",
        "$JS.API.DIRECT.GET.KEYLOOP_EVENTS",
        "$JS.API.STREAM.MSG.GET.KEYLOOP_EVENTS",
        "keyloop.leak.detected",
        "keyloop.cmd.revoke",
    ] {
        orchestrator.cannot_publish(subject).await;
    }
    let worker_reply = {
        let js = responder.js.clone();
        async move {
            js.get_key_value("keyloop_inventory")
                .await
                .expect("the leak-responder opens the inventory");
        }
    };
    orchestrator
        .cannot_subscribe("_INBOX_leak-responder.>", worker_reply)
        .await;

    // The leak-responder asks for revocations and nothing more: it cannot write a value (no
    // stream stores it), ask for a rotation, say a version was revoked or rotated, write the
    // inventory, or read a value.
    responder
        .cannot_store(
            "$KV.keyloop_secrets.probe",
            "KV_keyloop_secrets",
            &env.layout().js,
        )
        .await;
    responder
        .cannot_store("keyloop.cmd.rotate", "KEYLOOP_COMMANDS", &env.layout().js)
        .await;
    for subject in [
        "keyloop.lifecycle.revoked.svc",
        "keyloop.lifecycle.rotated.svc",
        "$KV.keyloop_inventory.cred.svc",
        "$KV.keyloop_fingerprints.sha256.probe",
        "$JS.API.STREAM.INFO.KV_keyloop_secrets",
        "$JS.API.DIRECT.GET.KV_keyloop_secrets.$KV.keyloop_secrets.probe",
        "keyloop.dlq.revoker",
    ] {
        responder.cannot_publish(subject).await;
    }

    // The sweeper reads no value and writes no fingerprint or lease; the scheduler only ticks.
    for subject in [
        "$JS.API.STREAM.INFO.KV_keyloop_secrets",
        "$JS.API.DIRECT.GET.KV_keyloop_secrets.$KV.keyloop_secrets.probe",
        "$KV.keyloop_secrets.probe",
        "$KV.keyloop_fingerprints.sha256.probe",
        "$KV.keyloop_inventory.lease.probe",
        "keyloop.lifecycle.revoked.svc",
    ] {
        sweeper.cannot_publish(subject).await;
    }
    for subject in [
        "keyloop.cmd.rotate",
        "keyloop.lifecycle.used.svc",
        "$KV.keyloop_due.probe",
        "$JS.API.DIRECT.GET.KV_keyloop_inventory.$KV.keyloop_inventory.cred.svc",
    ] {
        scheduler.cannot_publish(subject).await;
    }
    // Only the rotator, revoker and api touch values: not the jit-issuer either, which writes
    // no credential record and records no other lifecycle kind.
    for subject in [
        "$JS.API.DIRECT.GET.KV_keyloop_secrets.$KV.keyloop_secrets.probe",
        "$KV.keyloop_inventory.cred.svc",
        "keyloop.lifecycle.revoked.svc",
        "keyloop.lifecycle.created.svc",
    ] {
        issuer.cannot_publish(subject).await;
    }

    // The fingerprint index's keys are the digests of live values: no worker may list them
    // (that takes a consumer on the bucket), only look up a digest it already has.
    for probe in [&mut responder, &mut rogue, &mut issuer, &mut api] {
        for subject in [
            "$JS.API.CONSUMER.CREATE.KV_keyloop_fingerprints",
            "$JS.API.CONSUMER.CREATE.KV_keyloop_fingerprints.probe",
            "$JS.API.STREAM.MSG.GET.KV_keyloop_fingerprints",
            "$JS.API.DIRECT.GET.KV_keyloop_fingerprints",
        ] {
            probe.cannot_publish(subject).await;
        }
    }

    // ops asks the control plane as `ops` and nothing else: it publishes no lifecycle event
    // (it cannot forge the audit log, not even a use), writes no bucket, sends no command,
    // reads no value, speaks for no other actor, and changes, purges or deletes no stream.
    for subject in [
        "keyloop.lifecycle.used.svc",
        "keyloop.lifecycle.created.svc",
        "keyloop.lifecycle.revoked.svc",
        "keyloop.lifecycle.rotated.svc",
        "keyloop.lifecycle.leak_matched.svc",
        "keyloop.cmd.revoke",
        "keyloop.cmd.rotate",
        "keyloop.api.orchestrator-a.fetch",
        "keyloop.api.admin.fetch",
        "keyloop.jit.issue",
        "$KV.keyloop_inventory.cred.svc",
        "$KV.keyloop_secrets.probe",
        "$KV.keyloop_fingerprints.sha256.probe",
        "$JS.API.DIRECT.GET.KV_keyloop_secrets.$KV.keyloop_secrets.probe",
        "$JS.API.DIRECT.GET.KV_keyloop_inventory.$KV.keyloop_inventory.cred.svc",
        "$JS.API.STREAM.INFO.KV_keyloop_secrets",
        "$JS.API.CONSUMER.CREATE.KV_keyloop_fingerprints",
        "$JS.API.CONSUMER.CREATE.KEYLOOP_COMMANDS.rogue",
        "$JS.API.CONSUMER.DELETE.KEYLOOP_EVENTS.leak-responder",
        "$JS.API.CONSUMER.CREATE.KEYLOOP_EVENTS.sweeper",
        "$JS.API.STREAM.CREATE.KEYLOOP_ROGUE",
        "$JS.API.STREAM.UPDATE.KEYLOOP_LIFECYCLE",
        "$JS.API.STREAM.DELETE.KEYLOOP_LIFECYCLE",
        "$JS.API.STREAM.PURGE.KEYLOOP_LIFECYCLE",
        "$JS.API.STREAM.MSG.DELETE.KEYLOOP_LIFECYCLE",
        "$JS.API.STREAM.MSG.GET.KEYLOOP_LIFECYCLE",
        // The DLQ is changed through the control plane only (`dlq retry | purge`).
        "$JS.API.STREAM.MSG.DELETE.KEYLOOP_DLQ",
        "$JS.API.STREAM.PURGE.KEYLOOP_DLQ",
        "keyloop.cmd.rotate",
    ] {
        operator.cannot_publish(subject).await;
    }
    // What it may do (the loop above ran its tick, requests and replays), it does without a
    // refusal: a replay's ordered consumer on the audit log.
    operator
        .js
        .get_stream("KEYLOOP_LIFECYCLE")
        .await
        .expect("ops looks the audit log up")
        .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
        .await
        .expect("ops replays the audit log with an ordered consumer");
    operator.nothing_refused().await;
    // The unnamed create subject that ordered consumers use cannot take over a worker's
    // durable consumer either: the server refuses a durable name on it.
    let hijack = serde_json::json!({
        "stream_name": "KEYLOOP_EVENTS",
        "config": {
            "durable_name": "leak-responder",
            "deliver_policy": "all",
            "ack_policy": "none",
            "filter_subject": "keyloop.>",
        },
    });
    let reply = operator
        .client
        .request(
            "$JS.API.CONSUMER.CREATE.KEYLOOP_EVENTS",
            serde_json::to_vec(&hijack).unwrap().into(),
        )
        .await
        .expect("the JetStream API answers");
    let reply: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert!(reply["error"].is_object(), "{reply}");
    let mut kept: jetstream::consumer::PullConsumer = responder
        .js
        .get_consumer_from_stream("leak-responder", "KEYLOOP_EVENTS")
        .await
        .unwrap();
    let kept = kept.info().await.unwrap().config.clone();
    let filters = if kept.filter_subjects.is_empty() {
        vec![kept.filter_subject.clone()]
    } else {
        kept.filter_subjects.clone()
    };
    assert_eq!(
        filters,
        env.bus
            .topology
            .consumer_of(keyloop_nats::Role::LeakResponder)
            .1,
        "the leak-responder's consumer is as init made it"
    );
    assert_eq!(kept.ack_policy, jetstream::consumer::AckPolicy::Explicit);
    operator.nothing_refused().await;

    // admin holds the layout and nothing else: no message of any stream, no value, no
    // bucket entry, no request, no deletion or purge.
    for subject in [
        "keyloop.lifecycle.used.svc",
        "keyloop.cmd.revoke",
        "keyloop.api.admin.list",
        "keyloop.api.ops.list",
        "keyloop.leak.detected",
        "keyloop.schedule.tick",
        "$KV.keyloop_secrets.probe",
        "$JS.API.DIRECT.GET.KV_keyloop_secrets.$KV.keyloop_secrets.probe",
        "$JS.API.STREAM.MSG.GET.KEYLOOP_LIFECYCLE",
        "$JS.API.CONSUMER.CREATE.KEYLOOP_LIFECYCLE",
        "$JS.API.CONSUMER.CREATE.KEYLOOP_LIFECYCLE.rogue",
        "$JS.API.CONSUMER.DELETE.KEYLOOP_EVENTS.leak-responder",
        "$JS.API.STREAM.DELETE.KEYLOOP_LIFECYCLE",
        "$JS.API.STREAM.PURGE.KEYLOOP_DLQ",
        "$JS.API.STREAM.MSG.DELETE.KEYLOOP_COMMANDS",
        "$JS.API.STREAM.CREATE.KEYLOOP_ROGUE",
    ] {
        admin.cannot_publish(subject).await;
    }
    admin
        .cannot_subscribe(
            "keyloop.lifecycle.>",
            lifecycle_published("keyloop.lifecycle.used.probe-z"),
        )
        .await;
    // Nobody but the control plane speaks for `ops`: not an orchestrator.
    orchestrator.cannot_publish("keyloop.api.ops.fetch").await;

    // A worker (the rotator, which may do the most of them) does nothing only admin may.
    for subject in [
        "$JS.API.STREAM.DELETE.KEYLOOP_LIFECYCLE",
        "$JS.API.STREAM.PURGE.KEYLOOP_LIFECYCLE",
        "$JS.API.STREAM.PURGE.KEYLOOP_DLQ",
        "$JS.API.STREAM.UPDATE.KEYLOOP_EVENTS",
        "$JS.API.STREAM.CREATE.KEYLOOP_ROGUE",
        "$JS.API.STREAM.MSG.DELETE.KEYLOOP_LIFECYCLE",
        "$JS.API.STREAM.MSG.DELETE.KEYLOOP_COMMANDS",
        "$JS.API.STREAM.MSG.GET.KEYLOOP_EVENTS",
        "$JS.API.CONSUMER.CREATE.KEYLOOP_LIFECYCLE",
        "$JS.API.CONSUMER.DURABLE.CREATE.KEYLOOP_EVENTS.rogue",
        "$JS.API.CONSUMER.DELETE.KEYLOOP_EVENTS.leak-responder",
        "$JS.API.STREAM.MSG.GET.KEYLOOP_DLQ",
        "keyloop.leak.detected",
        "keyloop.jit.issue",
        "$SRV.PING.keyloop-jit",
        "keyloop.cmd.revoke",
        "keyloop.lifecycle.leak_matched.svc",
    ] {
        rogue.cannot_publish(subject).await;
    }
    rogue
        .cannot_subscribe(
            "keyloop.lifecycle.>",
            lifecycle_published("keyloop.lifecycle.used.probe-y"),
        )
        .await;
    let audit = env
        .bus
        .js
        .get_stream("KEYLOOP_LIFECYCLE")
        .await
        .expect("the audit log is still there")
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert!(audit > 10, "and still full: {audit} events");
}

/// Three loopback ports nobody listens on (bound, then released for the servers).
fn free_ports() -> [u16; 3] {
    let listeners: Vec<_> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    [0, 1, 2].map(|i| listeners[i].local_addr().unwrap().port())
}

#[tokio::test]
async fn a_three_node_cluster_boots_from_the_checked_in_configs_with_the_same_permissions() {
    let route_ports = free_ports();
    let mut env: Vec<(String, String)> = crate::harness::nats_password_env();
    env.push((
        "KEYLOOP_NATS_ROUTE_PASSWORD".into(),
        "test-route-password".into(),
    ));
    for (i, port) in route_ports.iter().enumerate() {
        env.push((
            format!("KEYLOOP_NATS_ROUTE_{}", i + 1),
            format!("nats-route://route:test-route-password@127.0.0.1:{port}"),
        ));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut nodes = Vec::new();
    for (i, port) in route_ports.iter().enumerate() {
        let config = crate::harness::deploy_nats_dir().join(format!("cluster-node{}.conf", i + 1));
        let cluster = format!("nats://127.0.0.1:{port}");
        nodes.push(
            keyloop_testkit::TestServer::start_with_config(
                &config,
                &env,
                &["--cluster".to_owned(), cluster],
            )
            .await,
        );
    }

    // admin creates the layout through node 1 once the cluster has elected a JetStream leader
    // (there is no event for that: the API answers "temporarily unavailable" until then).
    let admin = connect_as(nodes[0].url(), "admin").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match admin.topology.init(&admin.js).await {
            Ok(_) => break,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "cluster not ready yet");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("init on the cluster: {e}"),
        }
    }
    let mut events = admin.js.get_stream("KEYLOOP_EVENTS").await.unwrap();
    let cluster = events.info().await.unwrap().cluster.clone();
    let cluster = cluster.expect("a clustered stream");
    assert_eq!(cluster.name.as_deref(), Some("keyloop"));

    // A detector publishes through node 2; a worker pulls it through node 3 from its consumer.
    let mut detector = Probe::connect(nodes[1].url(), "detector").await;
    detector
        .js
        .publish("keyloop.leak.detected", leak_event().into())
        .await
        .unwrap()
        .await
        .expect("stored by the cluster");
    detector.nothing_refused().await;
    let worker = connect_as(nodes[2].url(), "leak-responder").await;
    let consumer: jetstream::consumer::PullConsumer = worker
        .js
        .get_consumer_from_stream("leak-responder", "KEYLOOP_EVENTS")
        .await
        .expect("a worker finds its consumer on any node");
    let mut batch = consumer
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .unwrap();
    let message = futures::StreamExt::next(&mut batch)
        .await
        .expect("the leak")
        .unwrap();
    assert_eq!(message.subject.as_str(), "keyloop.leak.detected");
    message.ack().await.unwrap();

    // And what a detector may not do, it may not do on any node.
    let mut elsewhere = Probe::connect(nodes[2].url(), "detector").await;
    elsewhere.cannot_publish("keyloop.cmd.revoke").await;
    let api = connect_as(nodes[0].url(), "api").await;
    let api_client = api.client.clone();
    elsewhere
        .cannot_subscribe("keyloop.lifecycle.>", async move {
            api_client
                .publish("keyloop.lifecycle.used.probe-z", "probe".into())
                .await
                .unwrap();
            api_client.flush().await.unwrap();
        })
        .await;
}
