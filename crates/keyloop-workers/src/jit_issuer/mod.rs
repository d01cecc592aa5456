//! jit-issuer: serves `<prefix>.jit.issue` and `<prefix>.token.verify` as request/reply in the
//! queue group `jit-issuer` (replies are never stored in a stream: the token travels once, in
//! the reply). The endpoints belong to the NATS service `<prefix>-jit` (async-nats's service
//! API), so `$SRV.PING`, `$SRV.INFO` and `$SRV.STATS` find every replica and count what it
//! served. The role's other half, revoking the leases of a finished task, is
//! [`crate::task_completed`]; what a request may get, and whether its workload identity token
//! proves who may ask, is decided by
//! [`JitPolicy::decide_under`](keyloop_core::JitPolicy::decide_under) with the workers' policy
//! engine.
//!
//! A lease's token is never stored anywhere: only its fingerprints, which is all verification
//! needs. Its expiry is enforced twice — verification compares `expires_at` with the clock, and
//! the sweeper expires it in the inventory — so a lease dies on time even if a completion never
//! arrives. A requester's identity token is never stored or published either: the lease
//! records the identity it proved.
//!
//! One file per endpoint: [`issue()`] (`issue.rs`), [`verify()`] (`verify.rs`); error counts
//! for STATS in `stats.rs`.

mod approval;
mod issue;
mod stats;
mod verify;

#[cfg(test)]
mod tests;

pub use issue::issue;
pub use verify::{UseLimiter, verify};

use crate::context::WorkerContext;
use crate::error::{Error, ErrorKind};
use async_nats::service::{Request, ServiceExt};
use futures::StreamExt;
use keyloop_core::identity::{IdentityVerifier, MAX_TOKEN_BYTES};
use keyloop_core::lease::{IssueRequest, ServiceError, VerifyRequest};
use keyloop_core::policy::PolicyEngine;
use keyloop_core::{JitPolicy, Secret};
use keyloop_nats::Topology;
use serde::Serialize;
use stats::ErrorReplies;
use std::sync::Arc;
use time::OffsetDateTime;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The CloudEvent `source` of everything the jit-issuer role publishes.
pub(crate) const SOURCE: &str = "keyloop/jit-issuer";
/// The queue group every replica serves requests in.
pub const QUEUE_GROUP: &str = "jit-issuer";
/// Largest request accepted: an identity token (at most [`MAX_TOKEN_BYTES`]; 1–2 KiB from
/// Kubernetes, GitHub or SPIFFE) and 4 KiB for the rest.
const MAX_REQUEST_BYTES: usize = MAX_TOKEN_BYTES + 4 * 1024;
/// Requests handled at once per replica.
const MAX_IN_FLIGHT: usize = 256;

fn service_error(code: &str, message: impl Into<String>) -> ServiceError {
    ServiceError {
        code: code.into(),
        message: message.into(),
        approval: None,
    }
}

/// Decodes a `jit.issue` request. The error names the position of what is wrong, never the
/// text: a request may carry anything.
pub fn decode_issue_request(payload: &[u8]) -> Result<IssueRequest, ServiceError> {
    check_size(payload)?;
    serde_json::from_slice(payload).map_err(|e| {
        service_error(
            "bad_request",
            format!(
                "expected {{task_id, scope, ttl_secs, agent_id?, identity_token?}} (schemas/jit.issue.request.json): error at line {} column {}",
                e.line(),
                e.column()
            ),
        )
    })
}

/// Decodes a `token.verify` request into the token it carries. The error never quotes the
/// payload, which is a token or something close to one.
pub fn decode_verify_request(payload: &[u8]) -> Result<Secret, ServiceError> {
    check_size(payload)?;
    serde_json::from_slice::<VerifyRequest>(payload)
        .map(|req| Secret::new(req.token))
        .map_err(|e| {
            service_error(
                "bad_request",
                format!(
                    "expected {{\"token\": ...}}: error at line {} column {}",
                    e.line(),
                    e.column()
                ),
            )
        })
}

fn check_size(payload: &[u8]) -> Result<(), ServiceError> {
    if payload.len() > MAX_REQUEST_BYTES {
        return Err(service_error(
            "bad_request",
            format!("request over {MAX_REQUEST_BYTES} bytes"),
        ));
    }
    Ok(())
}

#[derive(Serialize)]
struct ErrorReply<'a> {
    error: &'a ServiceError,
}

fn to_json<T: Serialize>(reply: &T) -> Vec<u8> {
    serde_json::to_vec(reply).expect("replies serialize")
}

/// The NATS service the jit-issuer replicas are instances of: `<prefix>-jit` (`keyloop-jit`
/// under the default prefix), so two keyloop deployments on one account are two services.
/// A character a service name may not hold (anything but `A-Z a-z 0-9 - _`) becomes `-`.
pub fn service_name(topology: &Topology) -> String {
    topology.service_name("jit")
}

/// The service's endpoints, named as INFO and STATS report them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    /// `<prefix>.jit.issue`.
    Issue,
    /// `<prefix>.token.verify`.
    Verify,
}

impl Endpoint {
    const fn name(self) -> &'static str {
        match self {
            Self::Issue => "jit-issue",
            Self::Verify => "token-verify",
        }
    }
}

/// Answers one request on `endpoint`: the reply's JSON, or the error to reply instead.
async fn answer(
    ctx: &WorkerContext,
    engine: &PolicyEngine,
    policy: &JitPolicy,
    verifier: &IdentityVerifier,
    limiter: &UseLimiter,
    endpoint: Endpoint,
    payload: &[u8],
) -> Result<Vec<u8>, ServiceError> {
    let now = OffsetDateTime::now_utc();
    match endpoint {
        Endpoint::Issue => {
            let req = decode_issue_request(payload)?;
            let result = issue(ctx, engine, policy, verifier, &req, now).await;
            match &result {
                Ok(r) => {
                    info!(lease = %r.lease_id, task = %req.task_id, agent = ?req.agent_id, scope = %req.scope, "lease issued")
                }
                // A bad_request's ids failed validation: they are not logged.
                Err(e) if e.code == "bad_request" => {
                    warn!(code = %e.code, reason = %e.message, "lease refused")
                }
                Err(e) => {
                    warn!(task = %req.task_id, code = %e.code, reason = %e.message, "lease refused")
                }
            }
            result.map(|reply| to_json(&reply))
        }
        Endpoint::Verify => {
            let token = decode_verify_request(payload)?;
            verify(ctx, &token, now, limiter)
                .await
                .map(|reply| to_json(&reply))
                .map_err(|e| service_error("unavailable", format!("could not verify: {e}; retry")))
        }
    }
}

/// One warning naming every scope without `identities`: whoever the NATS permissions let
/// publish `jit.issue` gets its leases, which an operator should know they chose.
fn warn_about_open_scopes(policy: &JitPolicy) {
    let open = policy.open_scopes();
    if !open.is_empty() {
        warn!(
            scopes = %open.join(", "),
            "JIT scopes without `identities` are open to every NATS user allowed to publish jit.issue; list the workload identities allowed to request each in the --jit-policy file"
        );
    }
}

/// The requests a replica is answering, and what answering one needs.
struct InHand {
    ctx: Arc<WorkerContext>,
    engine: Arc<PolicyEngine>,
    policy: Arc<JitPolicy>,
    verifier: Arc<IdentityVerifier>,
    limiter: Arc<UseLimiter>,
    errors: Arc<ErrorReplies>,
    /// At most [`MAX_IN_FLIGHT`] requests at once: the next waits for a permit, and the
    /// requests behind it wait in the subscription.
    permits: Arc<Semaphore>,
    tasks: tokio::task::JoinSet<()>,
}

impl InHand {
    /// Starts answering `request` (one without a reply subject is dropped: nobody waits).
    async fn take(&mut self, request: Request, endpoint: Endpoint) {
        while self.tasks.try_join_next().is_some() {}
        if request.message.reply.is_none() {
            return;
        }
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore is never closed");
        let (ctx, engine, policy, verifier, limiter, errors) = (
            self.ctx.clone(),
            self.engine.clone(),
            self.policy.clone(),
            self.verifier.clone(),
            self.limiter.clone(),
            self.errors.clone(),
        );
        let span = keyloop_nats::trace::request_span(
            request.message.subject.as_str(),
            request.message.headers.as_ref(),
        );
        self.tasks.spawn(tracing::Instrument::instrument(async move {
            let payload = &request.message.payload;
            let reply = answer(&ctx, &engine, &policy, &verifier, &limiter, endpoint, payload)
                .await
                .unwrap_or_else(|e| {
                    errors.count(endpoint, &e.code);
                    to_json(&ErrorReply { error: &e })
                });
            // Through the service API, so STATS counts it and its processing time.
            if let Err(e) = request.respond(Ok(reply.into())).await {
                warn!(error = %e, "could not send the reply; the requester will time out and retry");
            }
            drop(permit);
        }, span));
    }
}

/// Serves issue and verify requests as the NATS service [`service_name`], its endpoints in the
/// queue group [`QUEUE_GROUP`] on their usual subjects (a requester sees no difference), with
/// PING, INFO and STATS discovery on `$SRV.<verb>.<name>` from the service API. Identity tokens
/// are checked by `verifier` (loaded from `policy.issuers`); `engine` decides each issue. On `shutdown` it stops taking
/// requests and answering discovery, then answers the requests in hand and those the server
/// had already delivered to it.
pub async fn serve(
    ctx: Arc<WorkerContext>,
    engine: Arc<PolicyEngine>,
    policy: JitPolicy,
    verifier: IdentityVerifier,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let topo = &ctx.topology;
    let client = ctx.bus()?.client.clone();
    let name = service_name(topo);
    let errors = Arc::new(ErrorReplies::default());
    let service = client
        .service_builder()
        .description(
            "keyloop JIT credentials: jit.issue issues a lease, token.verify checks a token",
        )
        .queue_group(QUEUE_GROUP)
        .stats_handler({
            let errors = errors.clone();
            move |endpoint, _| errors.stats(&endpoint)
        })
        .start(&name, env!("CARGO_PKG_VERSION"))
        .await
        .map_err(|e| {
            Error::new(
                ErrorKind::Transient,
                format!("start the NATS service {name}"),
                e,
            )
        })?;
    let add = |endpoint: Endpoint, subject: String| {
        let builder = service.endpoint_builder().name(endpoint.name());
        async move {
            builder
                .add(subject.clone())
                .await
                .map_err(|e| Error::new(ErrorKind::Transient, format!("subscribe to {subject}"), e))
        }
    };
    let mut issues = add(Endpoint::Issue, topo.jit_issue()).await?;
    let mut verifies = add(Endpoint::Verify, topo.token_verify()).await?;
    // "Serving" means the server has the subscriptions: a requester (or a test) reading the
    // log line may send at once.
    if let Err(e) = client.flush().await {
        warn!(error = %e, "could not confirm the subscriptions with the server; they are sent again on reconnect");
    }
    warn_about_open_scopes(&policy);
    info!(issue = %topo.jit_issue(), verify = %topo.token_verify(), group = QUEUE_GROUP, service = %name, issuers = ?verifier.issuer_names(), "jit-issuer serving");
    let mut hand = InHand {
        ctx,
        engine,
        policy: Arc::new(policy),
        verifier: Arc::new(verifier),
        limiter: Arc::default(),
        errors,
        permits: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        tasks: tokio::task::JoinSet::new(),
    };
    loop {
        let (request, endpoint) = tokio::select! {
            () = shutdown.cancelled() => break,
            Some(r) = issues.next() => (r, Endpoint::Issue),
            Some(r) = verifies.next() => (r, Endpoint::Verify),
            else => break,
        };
        hand.take(request, endpoint).await;
    }
    // Nothing new reaches this replica (other replicas take it) and discovery no longer lists
    // it. What the server delivered before the unsubscribe is in this process already and is
    // answered too: the endpoints' streams end after it.
    let _ = issues.stop().await;
    let _ = verifies.stop().await;
    let _ = service.stop().await;
    let mut delivered = futures::stream::select(
        issues.map(|r| (r, Endpoint::Issue)),
        verifies.map(|r| (r, Endpoint::Verify)),
    );
    while let Some((request, endpoint)) = delivered.next().await {
        hand.take(request, endpoint).await;
    }
    while hand.tasks.join_next().await.is_some() {}
    // The replies are in the client's write buffer: send them before this process goes, or a
    // request answered in its last moment never reaches its requester.
    if let Err(e) = client.flush().await {
        warn!(error = %e, "could not flush the last replies before stopping");
    }
    info!("jit-issuer stopped serving");
    Ok(())
}

#[cfg(test)]
mod naming_tests {
    use super::*;

    #[test]
    fn the_service_is_named_after_the_prefix_in_the_characters_a_service_name_allows() {
        assert_eq!(service_name(&Topology::default()), "keyloop-jit");
        assert_eq!(service_name(&Topology::new("acme_kl")), "acme_kl-jit");
        assert_eq!(
            service_name(&Topology::new("acme.keyloop")),
            "acme-keyloop-jit"
        );
        assert_eq!(service_name(&Topology::new("é*>")), "----jit");
    }
}
