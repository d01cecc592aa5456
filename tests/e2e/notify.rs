//! The notify tier's outgoing webhook, against a real local HTTP receiver: a notify-tier issue
//! is posted once (an auto-tier one never, nor the history from before the notifier existed);
//! every retryable answer (5xx, 408, 429 with its `Retry-After`) is retried until the receiver
//! takes the post, under one idempotency key; a dead receiver never holds up an issue and gets
//! the post when it is back; a permanent refusal goes to the DLQ with a reason that names the
//! receiver's host and never its secret path; approvals are posted, on a secured server, with
//! the command that decides them.

use crate::harness::{Env, Worker, free_port, lifecycle};
use keyloop_core::LifecycleKind;
use keyloop_nats::Role;
use keyloop_testkit::receiver::{Received, Receiver};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

/// The webhook's path: a chat webhook's token lives there, so it must never be shown.
const SECRET_PATH: &str = "/services/T0KEYLOOP/B0TEST/n0t1fy-s3cr3t-path";

fn notifier(env: &Env, url: &str) -> Worker {
    env.worker("notifier", &["notifier", "--notify-webhook", url])
}

async fn start_task(env: &Env, task: &str, scope: &str) -> serde_json::Value {
    let out = env
        .ok(&[
            "task", "start", task, "--agent", "agent-7", "--scope", scope, "--ttl", "10m", "--json",
        ])
        .await;
    serde_json::from_str(out.trim()).unwrap()
}

/// Waits until the notifier's durable has nothing pending and nothing in hand: every event it
/// was given is settled (posted, retried to the end, or in the DLQ). A consumer's state has no
/// event to await, so it is read until it says so.
async fn settled(env: &Env) {
    let deadline = Instant::now() + WAIT;
    loop {
        let info = env
            .consumer_info(Role::Notifier)
            .await
            .expect("the notifier's durable");
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the notifier did not settle: {} pending, {} in hand",
            info.num_pending,
            info.num_ack_pending
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn kind_of(r: &Received) -> String {
    r.json()["keyloop"]["kind"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The body of the first post of a `kind` event, once it has come.
async fn posted(receiver: &Receiver, kind: &str) -> serde_json::Value {
    let posts = receiver
        .wait(&format!("{kind} posted"), WAIT, |r| {
            r.iter().any(|r| kind_of(r) == kind)
        })
        .await;
    posts.iter().find(|r| kind_of(r) == kind).unwrap().json()
}

fn assert_no_secret_path(worker: &Worker) {
    let log = worker.log_text();
    assert!(!log.is_empty(), "the notifier logged nothing");
    assert!(
        !log.contains("n0t1fy-s3cr3t-path") && !log.contains("T0KEYLOOP"),
        "the webhook's path is in the log"
    );
}

#[tokio::test]
async fn a_notify_tier_issue_is_posted_once_and_neither_an_auto_tier_issue_nor_old_history_is() {
    let env = Env::start().await;
    let receiver = Receiver::start().await;
    let _jit = env.worker("jit-issuer", &["jit-issuer"]);

    // An installation with history before the notifier's durable exists: an approval asked
    // for (approve tier). A first deployment of the notifier must not post it.
    let (stream, _) = env.bus.topology.consumer_of(Role::Notifier);
    env.bus
        .js
        .delete_consumer_from_stream(Role::Notifier.name(), &stream)
        .await
        .unwrap();
    let old = env
        .run(&[
            "task", "start", "old-1", "--agent", "a", "--scope", "admin", "--ttl", "5m",
        ])
        .await;
    assert_eq!(old.status.code(), Some(3), "held for approval");
    env.ok(&["init"]).await;

    let worker = notifier(&env, &receiver.url(SECRET_PATH));
    let auto = start_task(&env, "build-auto", "read").await;
    let notify = start_task(&env, "deploy-notify", "write").await;
    let token = notify["secret"].as_str().unwrap();

    let posts = receiver
        .wait("the notify-tier post", WAIT, |r| !r.is_empty())
        .await;
    settled(&env).await;
    let posts_now = receiver.received();
    assert_eq!(posts_now.len(), 1, "one post: {posts_now:?}");
    let post = &posts[0];
    assert_eq!(post.path, SECRET_PATH);
    assert_eq!(post.header("content-type"), Some("application/json"));
    let body = post.json();
    assert_eq!(body["keyloop"]["kind"], "issued");
    assert_eq!(body["keyloop"]["lease"], notify["lease_id"]);
    assert_ne!(body["keyloop"]["lease"], auto["lease_id"]);
    let text = body["text"].as_str().unwrap();
    assert!(
        text.contains("notify tier") && text.contains("deploy-notify"),
        "{text}"
    );
    assert_eq!(
        body["blocks"][0]["text"]["text"], text,
        "Slack blocks carry the text"
    );
    assert!(
        body["keyloop"]["policies"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "jit-tier-notify"),
        "the deciding policy is named: {body}"
    );
    // The idempotency key is the event's id, and that event is the stored `issued`.
    let event_id = body["keyloop"]["event_id"].as_str().unwrap();
    assert_eq!(post.header("idempotency-key"), Some(event_id));
    let issued = lifecycle(&env.bus)
        .await
        .into_iter()
        .find(|e| e.id == event_id)
        .expect("the posted event is in the lifecycle stream");
    assert_eq!(issued.data.kind, LifecycleKind::Issued);
    assert_eq!(issued.data.outcome.as_deref(), Some("notify"));
    let raw = String::from_utf8_lossy(&post.body);
    assert!(!raw.contains(token), "no token in the post");
    assert!(
        !raw.contains(&token[4..]),
        "no part of the token in the post"
    );
    assert_no_secret_path(&worker);
}

#[tokio::test]
async fn every_retryable_answer_is_retried_under_one_key_until_the_receiver_takes_the_post() {
    let env = Env::start().await;
    let receiver = Receiver::start().await;
    let _jit = env.worker("jit-issuer", &["jit-issuer"]);
    let worker = notifier(&env, &receiver.url(SECRET_PATH));
    // Each kind of answer a receiver gives when it cannot take the post now.
    receiver.answer(&[500, 502, 503, 408]);
    receiver.answer_retry_after(429, 2);

    start_task(&env, "deploy-retried", "write").await;
    let posts = receiver
        .wait("the post taken after five refusals", WAIT, |r| {
            r.iter().any(|r| r.status == 200)
        })
        .await;
    settled(&env).await;
    let statuses: Vec<_> = receiver.received().iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [500, 502, 503, 408, 429, 200],
        "retried until taken, then never again"
    );
    let keys: std::collections::BTreeSet<_> =
        posts.iter().map(|r| r.header("idempotency-key")).collect();
    assert_eq!(
        keys.len(),
        1,
        "one idempotency key for every attempt: {keys:?}"
    );
    assert!(keys.iter().all(Option::is_some));
    // The first retries come fast (the runtime's growing delay from 200 ms); the one after
    // `429 Retry-After: 2` waits at least the two seconds asked.
    let waited = posts[5].at - posts[4].at;
    assert!(
        waited >= Duration::from_secs(2),
        "Retry-After honoured: {waited:?}"
    );
    let first_retry = posts[1].at - posts[0].at;
    assert!(
        first_retry < Duration::from_secs(2),
        "no Retry-After, no long wait: {first_retry:?}"
    );
    let dlq = env.bus.js.get_stream(env.bus.topology.dlq_stream()).await;
    let dlq_messages = dlq.unwrap().info().await.unwrap().state.messages;
    assert_eq!(dlq_messages, 0, "nothing given up on");
    assert_no_secret_path(&worker);
}

#[tokio::test]
async fn a_dead_receiver_never_delays_an_issue_and_gets_the_post_once_it_is_back() {
    let env = Env::start().await;
    let _jit = env.worker("jit-issuer", &["jit-issuer"]);
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let worker = notifier(&env, &format!("http://{addr}{SECRET_PATH}"));

    // Nothing listens: every post fails to connect, and issues go on at their usual pace.
    let baseline = Instant::now();
    start_task(&env, "build-baseline", "read").await;
    let auto_took = baseline.elapsed();
    let started = Instant::now();
    let lease = start_task(&env, "deploy-while-down", "write").await;
    let notify_took = started.elapsed();
    assert!(
        lease["secret"].as_str().is_some(),
        "issued while the receiver is down"
    );
    println!("issue with the receiver down: notify tier {notify_took:?}, auto tier {auto_took:?}");
    assert!(
        notify_took < auto_took * 3 + Duration::from_millis(500),
        "a notify-tier issue waits for no post: {notify_took:?} against {auto_took:?}"
    );

    // The post has been tried and failed (redelivered) before the receiver comes back.
    let deadline = Instant::now() + WAIT;
    loop {
        let info = env.consumer_info(Role::Notifier).await.unwrap();
        if info.num_redelivered > 0 || info.delivered.consumer_sequence >= 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the notifier never tried the dead receiver"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let receiver = Receiver::start_on(addr).await;
    let posts = receiver
        .wait("the post once the receiver is back", WAIT, |r| {
            !r.is_empty()
        })
        .await;
    assert_eq!(posts[0].json()["keyloop"]["lease"], lease["lease_id"]);
    settled(&env).await;
    assert_eq!(receiver.received().len(), 1, "delivered once it could be");
    assert!(
        worker
            .log_text()
            .contains(&format!("http://{addr}: could not connect")),
        "the log says what failed, by host"
    );
    assert_no_secret_path(&worker);
}

#[tokio::test]
async fn a_refused_post_goes_to_the_dlq_with_a_reason_naming_the_host_only() {
    let env = Env::start().await;
    let receiver = Receiver::start().await;
    let _jit = env.worker("jit-issuer", &["jit-issuer"]);
    let mut dlq = env
        .bus
        .client
        .subscribe(env.bus.topology.dlq(Role::Notifier.name()))
        .await
        .unwrap();
    env.bus.client.flush().await.unwrap();
    let worker = notifier(&env, &receiver.url(SECRET_PATH));
    // Every 4xx that is not 408 or 429 says the request itself is wrong: retrying cannot help.
    let refusals = [400, 401, 403, 404, 410];
    receiver.answer(&refusals);
    for i in 0..refusals.len() {
        start_task(&env, &format!("deploy-refused-{i}"), "write").await;
    }

    let mut reasons = Vec::new();
    for _ in refusals {
        let copy = tokio::time::timeout(WAIT, futures::StreamExt::next(&mut dlq))
            .await
            .expect("a DLQ copy of each refused post")
            .unwrap();
        let reason = copy
            .headers
            .as_ref()
            .and_then(|h| h.get(keyloop_nats::bus::DLQ_REASON_HEADER))
            .map(|v| v.to_string())
            .unwrap_or_default();
        let event: keyloop_core::LifecycleEvent = serde_json::from_slice(&copy.payload).unwrap();
        assert_eq!(
            event.data.kind,
            LifecycleKind::Issued,
            "the original event, unchanged"
        );
        reasons.push(reason);
    }
    settled(&env).await;
    let posts = receiver.received();
    assert_eq!(
        posts.len(),
        refusals.len(),
        "each refusal tried once, never retried"
    );
    let host = receiver.url("");
    let mut refused: Vec<u16> = reasons
        .iter()
        .map(|reason| {
            assert!(
                reason.contains(&format!("the notify webhook {host} answered"))
                    && reason.contains("--notify-webhook"),
                "names the host and what to do: {reason}"
            );
            assert!(
                !reason.contains("n0t1fy") && !reason.contains("services"),
                "{reason}"
            );
            refusals
                .iter()
                .copied()
                .find(|s| reason.contains(&format!("answered {s}")))
                .unwrap_or_else(|| panic!("the status is named: {reason}"))
        })
        .collect();
    refused.sort_unstable();
    assert_eq!(
        refused, refusals,
        "one DLQ copy per refusal, each with its status"
    );
    assert_no_secret_path(&worker);

    // The notifier reads the audit log: its entries are never published again, only purged.
    env.api().await;
    let listed = env
        .ok(&["dlq", "list", "--role", "notifier", "--json"])
        .await;
    let seq = serde_json::from_str::<serde_json::Value>(listed.lines().next().unwrap()).unwrap()
        ["sequence"]
        .to_string();
    let out = env.run(&["dlq", "retry", &seq]).await;
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("never written twice")
            && err.contains(&format!("keyloop dlq purge {seq} --yes")),
        "{err}"
    );
    let purged = env
        .ok(&["dlq", "purge", "--all", "--role", "notifier", "--yes"])
        .await;
    assert_eq!(purged.lines().count(), refusals.len(), "{purged}");
    assert!(
        env.ok(&["dlq", "list"]).await.trim().is_empty(),
        "the DLQ is empty"
    );
}

#[tokio::test]
async fn approvals_are_posted_with_the_command_that_decides_them_by_the_notifier_user() {
    let env = Env::start_secured().await;
    env.set_env("KEYLOOP_API_ADMINS", "ops,orchestrator-b");
    let receiver = Receiver::start().await;
    let _jit = env.worker_as("jit-issuer", "jit-issuer", &["jit-issuer"]);
    let url = receiver.url(SECRET_PATH);
    let worker = env.worker_as(
        "notifier",
        "notifier",
        &["notifier", "--notify-webhook", &url],
    );

    let out = env
        .keyloop_as("orchestrator-a")
        .args([
            "task", "start", "deploy-9", "--scope", "admin", "--ttl", "10m", "--json",
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "held for approval");
    let pending: serde_json::Value =
        serde_json::from_slice(out.stdout.trim_ascii()).expect("one JSON line");
    let approval = pending["approval"].as_str().unwrap().to_owned();

    let asked = posted(&receiver, "approval_requested").await;
    assert_eq!(asked["keyloop"]["approval"], approval.as_str());
    let text = asked["text"].as_str().unwrap();
    assert!(
        text.contains(&format!("keyloop approvals approve {approval}"))
            && text.contains(&format!("keyloop approvals deny {approval} --reason"))
            && text.contains("asked by `"),
        "says who asked and how to decide: {text}"
    );

    env.api().await;
    let out = env
        .keyloop_as("orchestrator-b")
        .args(["approvals", "approve", &approval, "--json"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let granted = posted(&receiver, "approval_granted").await;
    assert_eq!(granted["keyloop"]["approval"], approval.as_str());
    assert_eq!(granted["keyloop"]["actor"], "orchestrator-b");
    settled(&env).await;
    let server_log =
        std::fs::read_to_string(env.server.as_ref().unwrap().dir().join("nats-server.log"))
            .unwrap_or_default();
    let refused: Vec<_> = server_log
        .lines()
        .filter(|l| l.contains("Violation") && l.contains("notifier"))
        .collect();
    assert!(
        refused.is_empty(),
        "the notifier needs what it is not given: {refused:?}"
    );
    assert_no_secret_path(&worker);
}
