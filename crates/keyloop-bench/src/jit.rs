//! The JIT phase: `keyloop.jit.issue` served by a `keyloop worker jit-issuer` process, against a
//! raw request/reply on the same server answered by a bare responder (the least a JIT service
//! could do: receive, reply). Requests are sent one at a time, so each sample is one round trip.
//! The leases it issues stay live (TTL 60 s) for the sweep line.

use crate::drive::Percentiles;
use crate::fleet::Fleet;
use crate::report::JitFigures;
use crate::run::{Env, connect, say};
use anyhow::{Context, Result};
use keyloop_core::lease::{IssueReply, IssueRequest};
use keyloop_nats::Role;
use std::time::{Duration, Instant};

/// How long the issuer may take from pulling to answering requests.
const SERVE_TIMEOUT: Duration = Duration::from_secs(30);

/// A `read` request for task `task_id`, for `ttl_secs`.
pub(crate) fn issue_request(task_id: String, ttl_secs: u64) -> IssueRequest {
    IssueRequest {
        task_id,
        agent_id: Some("bench".into()),
        scope: "read".into(),
        ttl_secs,
        identity_token: None,
        approval: None,
        wait_secs: None,
    }
}

/// The JSON of a request live for a minute: longer than the phase and the sweep.
fn issue_body(task_id: String) -> Result<bytes::Bytes> {
    Ok(serde_json::to_vec(&issue_request(task_id, 60))?.into())
}

/// Times `requests` raw round trips, then as many issues through the jit-issuer.
pub(crate) async fn run(env: &Env<'_>) -> Result<JitFigures> {
    let requests = if env.plan.smoke { 50 } else { 2_000 };
    let client = connect(&env.url, "keyloop-bench-jit").await?;
    let raw = raw_round_trips(env, &client, requests).await?;

    let mut fleet = Fleet::start("keyloop-jit-issuer", 1, env.dir, || {
        let mut cmd = env.keyloop_command();
        cmd.args(["worker", "jit-issuer"]);
        cmd
    })?;
    let consumers = [(
        env.topology.consumer_of(Role::JitIssuer).0,
        Role::JitIssuer.name().to_owned(),
    )];
    fleet.wait_ready(&env.bus.js, &consumers).await?;
    wait_serving(env, &client).await?;
    say(&format!(
        "jit: {requests} issues through {} and as many raw request/replies",
        env.topology.jit_issue()
    ));
    let mut issued = Vec::with_capacity(requests);
    for i in 0..requests {
        let body = issue_body(format!("bench-{i}"))?;
        let t = Instant::now();
        let reply = client
            .request(env.topology.jit_issue(), body)
            .await
            .with_context(|| format!("request {}", env.topology.jit_issue()))?;
        issued.push(t.elapsed());
        // A refusal is a small error object, never a token: safe to show.
        anyhow::ensure!(
            serde_json::from_slice::<IssueReply>(&reply.payload).is_ok(),
            "jit-issuer refused a bench request: {}",
            String::from_utf8_lossy(&reply.payload)
                .chars()
                .take(200)
                .collect::<String>()
        );
    }
    fleet.stop().await;
    Ok(JitFigures {
        keyloop: Percentiles::of(issued),
        raw: Percentiles::of(raw),
        decision: Percentiles::of(decisions(requests.max(1_000))),
        live_leases: requests,
    })
}

/// The policy decision of `n` issue requests as the jit-issuer makes it for each
/// ([`keyloop_core::JitPolicy::decide_terms`] under the default Cedar policy), timed one by one:
/// what the policy engine adds to every `jit.issue`.
fn decisions(n: usize) -> Vec<Duration> {
    let engine = keyloop_core::policy::PolicyEngine::default_policy(
        keyloop_core::policy::Groups::with_admins(keyloop_workers::DEFAULT_API_ADMINS),
    );
    let policy = keyloop_core::JitPolicy::default();
    let verifier = keyloop_core::identity::IdentityVerifier::default();
    let now = time::OffsetDateTime::now_utc();
    (0..n)
        .map(|i| {
            let req = issue_request(format!("bench-decide-{i}"), 60);
            let t = Instant::now();
            let decided = policy.decide_terms(&engine, &req, &verifier, now);
            let spent = t.elapsed();
            std::hint::black_box(decided.is_ok());
            spent
        })
        .collect()
}

/// `requests` round trips to a queue subscription that replies at once, with a payload the
/// size of an issue request.
async fn raw_round_trips(
    env: &Env<'_>,
    client: &async_nats::Client,
    requests: usize,
) -> Result<Vec<Duration>> {
    let echo_subject = format!("{}.bench.echo", env.topology.prefix());
    let responder = connect(&env.url, "keyloop-bench-echo").await?;
    let mut sub = responder
        .queue_subscribe(echo_subject.clone(), "bench-echo".into())
        .await?;
    responder.flush().await?;
    let echo = tokio::spawn(async move {
        while let Some(msg) = futures::StreamExt::next(&mut sub).await {
            if let Some(reply) = msg.reply {
                let _ = responder.publish(reply, msg.payload).await;
            }
        }
    });
    // The responder's subscription was flushed, and still the first request has been seen to
    // find no responder on a loaded machine: wait until it answers, as for the jit-issuer.
    let tries = wait_answering(
        client,
        &echo_subject,
        "probe".into(),
        "the bench's own echo responder",
    )
    .await?;
    if tries > 1 {
        say(&format!(
            "jit: the echo responder answered after {tries} tries"
        ));
    }
    let mut raw = Vec::with_capacity(requests);
    for i in 0..requests {
        let body = issue_body(format!("bench-{i}"))?;
        let t = Instant::now();
        client
            .request(echo_subject.clone(), body)
            .await
            .with_context(|| format!("raw request/reply {i} of {requests} on {echo_subject}"))?;
        raw.push(t.elapsed());
    }
    echo.abort();
    Ok(raw)
}

/// Pulling is not serving: waits until the issuer's request subscription answers (a process's
/// start-up has no event to await).
async fn wait_serving(env: &Env<'_>, client: &async_nats::Client) -> Result<()> {
    let probe = issue_body("bench-probe".into())?;
    wait_answering(client, &env.topology.jit_issue(), probe, "the jit-issuer").await?;
    Ok(())
}

/// Sends `body` to `subject` until `who` answers (no responders is retried until
/// [`SERVE_TIMEOUT`]); returns how many tries it took.
async fn wait_answering(
    client: &async_nats::Client,
    subject: &str,
    body: bytes::Bytes,
    who: &str,
) -> Result<u32> {
    let deadline = Instant::now() + SERVE_TIMEOUT;
    let mut tries = 0;
    loop {
        tries += 1;
        match client.request(subject.to_owned(), body.clone()).await {
            Ok(_) => return Ok(tries),
            Err(e)
                if e.kind() == async_nats::RequestErrorKind::NoResponders
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(anyhow::anyhow!("{who} does not answer on {subject}: {e}")),
        }
    }
}
