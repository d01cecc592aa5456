//! Least privilege: a nats-server started from the checked-in `deploy/nats/single.conf` (its
//! users and permissions included as they are) runs the whole loop with each keyloop process
//! connected as its role's user and no permissions violation; then each user is shown what it
//! may not do: a detector publishes leaks but no commands and reads no lifecycle event, an
//! orchestrator requests JIT credentials (and may PING the JIT service) but reads no leak, a
//! worker does nothing only ops may (delete, purge or create streams, replay the audit log),
//! and no user reads another's replies.

use crate::harness::{Env, Events, connect_as, gitleaks_report, nats_password, path_str};
use async_nats::jetstream;
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
        let mut sub = self.client.subscribe(pattern.to_owned()).await.unwrap();
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

    /// Nothing has been refused so far (after a round trip).
    async fn nothing_refused(&mut self) {
        self.client.flush().await.unwrap();
        if let Ok(error) = self.errors.try_recv() {
            panic!("{}: unexpected server error: {error}", self.user);
        }
    }
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

    // ops: the layout (again, through the CLI), then the fleet as `worker`.
    env.ok(&["init"]).await;
    let worker = env.worker_as(
        "worker",
        "fleet",
        &[
            "leak-responder",
            "rotator",
            "revoker",
            "sweeper",
            "jit-issuer",
            "scheduler",
            "--tick-interval",
            "1s",
        ],
    );
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
        let mut cmd = env.keyloop_as("orchestrator");
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
        let mut cmd = env.keyloop_as("orchestrator");
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
    let replay = env.ok(&["replay", "--json"]).await;
    assert!(replay.lines().count() > 10, "ops replays the audit log");
    let listed = env.ok(&["credential", "list"]).await;
    assert!(listed.contains("svc/least-privilege"), "{listed}");
    env.ok(&["credential", "show", "svc/least-privilege"]).await;

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
    let worker_log = worker.log_text();
    assert!(
        !worker_log.contains("Permissions Violation"),
        "{worker_log}"
    );

    let ops = connect_as(&url, "ops").await;
    let ops = &ops.client;
    let mut detector = Probe::connect(&url, "detector").await;
    let mut orchestrator = Probe::connect(&url, "orchestrator").await;
    let mut rogue = Probe::connect(&url, "worker").await;

    // An orchestrator's request, answered by the fleet: the reply carries a JIT token.
    let orchestrator_client = orchestrator.client.clone();
    let jit_request = |task: &str| {
        let request = IssueRequest {
            task_id: task.into(),
            agent_id: "a".into(),
            scope: "read".into(),
            ttl_secs: 60,
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

    // Nobody else reads an orchestrator's replies (its JIT tokens), nor the requests.
    detector
        .cannot_subscribe("_INBOX_orchestrator.>", jit_request("t-4"))
        .await;
    rogue
        .cannot_subscribe("_INBOX_orchestrator.>", jit_request("t-5"))
        .await;
    // Serving JIT requests is allowed in the queue group `jit-issuer` only: a plain
    // subscription would see every request beside the real issuers.
    rogue
        .cannot_subscribe("keyloop.jit.issue", jit_request("t-6"))
        .await;

    // The fleet stops (cleanly), so the streams hold still for what follows.
    assert!(worker.stop().await.success(), "the worker exits cleanly");
    let last_sequence = |stream: &'static str| {
        let js = env.bus.js.clone();
        async move {
            js.get_stream(stream)
                .await
                .unwrap()
                .info()
                .await
                .unwrap()
                .state
                .last_sequence
        }
    };
    let ops_publishes = |subject: &'static str| async move {
        ops.publish(subject, "probe".into()).await.unwrap();
        ops.flush().await.unwrap();
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
    let commands_before = last_sequence("KEYLOOP_COMMANDS").await;
    let ack = detector
        .js
        .publish("keyloop.cmd.revoke", "{}".into())
        .await
        .unwrap();
    detector.refused("Publish", "keyloop.cmd.revoke").await;
    assert!(
        ack.await.is_err(),
        "no stream acknowledges a refused publish"
    );
    assert_eq!(
        last_sequence("KEYLOOP_COMMANDS").await,
        commands_before,
        "nothing reached the commands stream"
    );
    detector.cannot_publish("keyloop.cmd.rotate").await;
    detector
        .cannot_publish("keyloop.lifecycle.revoked.svc")
        .await;
    detector
        .cannot_subscribe(
            "keyloop.lifecycle.>",
            ops_publishes("keyloop.lifecycle.probe.x"),
        )
        .await;
    detector
        .cannot_publish("$JS.API.CONSUMER.CREATE.KEYLOOP_LIFECYCLE")
        .await;
    detector
        .cannot_publish("$JS.API.STREAM.MSG.GET.KEYLOOP_LIFECYCLE")
        .await;
    detector.cannot_publish("$SRV.PING.keyloop-jit").await;

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
        let js = rogue.js.clone();
        async move {
            js.get_key_value("keyloop_inventory")
                .await
                .expect("a worker opens the inventory");
        }
    };
    orchestrator
        .cannot_subscribe("_INBOX_worker.>", worker_reply)
        .await;

    // A worker does nothing only ops may.
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
    ] {
        rogue.cannot_publish(subject).await;
    }
    rogue
        .cannot_subscribe(
            "keyloop.lifecycle.>",
            ops_publishes("keyloop.lifecycle.probe.y"),
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

    // ops creates the layout through node 1 once the cluster has elected a JetStream leader
    // (there is no event for that: the API answers "temporarily unavailable" until then).
    let ops = connect_as(nodes[0].url(), "ops").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match ops.topology.init(&ops.js).await {
            Ok(_) => break,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "cluster not ready yet");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("init on the cluster: {e}"),
        }
    }
    let mut events = ops.js.get_stream("KEYLOOP_EVENTS").await.unwrap();
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
    let worker = connect_as(nodes[2].url(), "worker").await;
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
    let ops_client = ops.client.clone();
    elsewhere
        .cannot_subscribe("keyloop.lifecycle.>", async move {
            ops_client
                .publish("keyloop.lifecycle.probe.z", "probe".into())
                .await
                .unwrap();
            ops_client.flush().await.unwrap();
        })
        .await;
}
