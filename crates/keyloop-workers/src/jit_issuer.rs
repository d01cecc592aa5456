//! jit-issuer: serves `<prefix>.jit.issue` and `<prefix>.token.verify` as request/reply in the
//! queue group `jit-issuer` (replies are never stored in a stream: the token travels once, in
//! the reply). The endpoints belong to the NATS service `<prefix>-jit` (async-nats's service
//! API), so `$SRV.PING`, `$SRV.INFO` and `$SRV.STATS` find every replica and count what it
//! served. The role's other half, revoking the leases of a finished task, is
//! [`crate::task_completed`]; what a request may get is decided by
//! [`JitPolicy::decide`](keyloop_core::JitPolicy::decide).
//!
//! A lease's token is never stored anywhere: only its fingerprints, which is all verification
//! needs. Its expiry is enforced twice — verification compares `expires_at` with the clock, and
//! the sweeper expires it in the inventory — so a lease dies on time even if a completion never
//! arrives.

use crate::context::WorkerContext;
use crate::error::{Error, ErrorKind};
use crate::ops::{self, Cause};
use async_nats::service::{Request, ServiceExt};
use futures::StreamExt;
use keyloop_core::event::{LifecycleData, LifecycleKind, lease_event};
use keyloop_core::lease::{
    IssueReply, IssueRequest, LeaseState, ServiceError, VerifyReply, VerifyRequest,
};
use keyloop_core::{Fingerprint, JitPolicy, Lease, Secret, Stage};
use keyloop_nats::{DueItem, FingerprintRef, Topology};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use time::OffsetDateTime;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

/// The CloudEvent `source` of everything the jit-issuer role publishes.
pub(crate) const SOURCE: &str = "keyloop/jit-issuer";
/// The queue group every replica serves requests in.
pub const QUEUE_GROUP: &str = "jit-issuer";
/// Largest request accepted.
const MAX_REQUEST_BYTES: usize = 4 * 1024;
/// Requests handled at once per replica.
const MAX_IN_FLIGHT: usize = 256;

fn service_error(code: &str, message: impl Into<String>) -> ServiceError {
    ServiceError {
        code: code.into(),
        message: message.into(),
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
                "expected {{task_id, agent_id, scope, ttl_secs}} (schemas/jit.issue.request.json): error at line {} column {}",
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

/// Issues a lease for `req` under `policy`: decided by [`JitPolicy::decide`], recorded (lease,
/// task index, fingerprint index, expiry), `issued` published, and only then the token handed
/// out.
pub async fn issue(
    ctx: &WorkerContext,
    policy: &JitPolicy,
    req: &IssueRequest,
    now: OffsetDateTime,
) -> Result<IssueReply, ServiceError> {
    let decision = policy.decide(req, now)?;
    let scope = decision.scope;
    let unavailable = |e: Error| {
        service_error(
            "unavailable",
            format!("could not record the lease: {e}; retry"),
        )
    };
    let jit_roles = match &scope.postgres_group {
        None => None,
        Some(group) => Some((
            ctx.backends.jit_roles.clone().ok_or_else(|| {
                service_error(
                    "unavailable",
                    format!(
                        "scope `{}` issues PostgreSQL roles, but this jit-issuer has no admin connection (KEYLOOP_POSTGRES_DSN / --postgres-dsn)",
                        req.scope
                    ),
                )
            })?,
            group.clone(),
        )),
    };
    let lease_id = Uuid::now_v7();
    let login = jit_roles
        .as_ref()
        .map(|_| keyloop_backends::postgres::jit_role_name(lease_id));
    let token = keyloop_backends::generate_token();
    let fingerprint = Fingerprint::of(&token);
    let lease = Lease {
        id: lease_id,
        task_id: req.task_id.clone(),
        agent_id: req.agent_id.clone(),
        scope: req.scope.clone(),
        tier: scope.tier,
        fingerprint: fingerprint.clone(),
        state: LeaseState::Active,
        issued_at: now,
        expires_at: decision.expires_at,
        ended_at: None,
        end_reason: None,
        ended_by: None,
        login: login.clone(),
    };
    // The lease is recorded, indexed and its expiry scheduled before any role exists, so a
    // crash in between leaves a lease whose expiry drops the role, never a role nobody tracks.
    ctx.inventory
        .create_lease(&lease)
        .await
        .map_err(unavailable)?;
    // A PostgreSQL lease's role exists before anything announces the lease.
    if let (Some((roles, group)), Some(name)) = (&jit_roles, &login) {
        let role = keyloop_backends::postgres::JitRole {
            name,
            group,
            valid_until: lease.expires_at,
        };
        roles.create_jit_role(&role, &token).await.map_err(|e| {
            service_error(
                "unavailable",
                format!("could not create the lease's PostgreSQL role: {e}"),
            )
        })?;
    }
    // Then everything else at once: one round trip instead of four before the reply.
    let (keys, target) = (
        fingerprint.index_keys(),
        FingerprintRef::Lease { lease: lease.id },
    );
    let mut data = LifecycleData::new(LifecycleKind::Issued, None, None);
    data.actor = Some(req.agent_id.clone());
    let event = lease_event(SOURCE, &format!("issue/{}", lease.id), data, &lease)
        .caused_by(Some(req.task_id.clone()), None);
    let (indexed, by_task, scheduled, published) = tokio::join!(
        ctx.fingerprints.put(&keys, &target),
        ctx.inventory.index_lease_under_task(&lease),
        ctx.due
            .schedule(DueItem::Expire { lease: lease.id }, lease.expires_at, now),
        ctx.outbox.publish_lifecycle(&event),
    );
    indexed.map_err(unavailable)?;
    by_task.map_err(unavailable)?;
    scheduled.map_err(unavailable)?;
    published.map_err(unavailable)?;
    Ok(IssueReply {
        lease_id: lease.id,
        secret: token.expose().to_owned(),
        expires_at: lease.expires_at,
        tier: lease.tier,
        login,
    })
}

/// Remembers which leases had a `used` event in the current interval, so a busy service
/// verifying the same token does not publish one per request.
#[derive(Debug, Default)]
pub struct UseLimiter {
    last: Mutex<HashMap<Uuid, i64>>,
}

impl UseLimiter {
    fn first_in_window(&self, id: Uuid, window: i64) -> bool {
        let mut last = self.last.lock().expect("use limiter lock");
        if last.len() > 100_000 {
            last.retain(|_, w| *w >= window);
        }
        last.insert(id, window) != Some(window)
    }
}

/// Checks a token (a lease's, or a managed credential's value): valid when its lease is active
/// and unexpired, or its version is current or previous. A valid use is recorded.
pub async fn verify(
    ctx: &WorkerContext,
    token: &Secret,
    now: OffsetDateTime,
    limiter: &UseLimiter,
) -> Result<VerifyReply, Error> {
    let keys = Fingerprint::of(token).lookup_keys();
    let window = now
        .unix_timestamp()
        .div_euclid(ops::USE_RECORD_INTERVAL_SECS);
    match ctx.fingerprints.lookup(&keys).await? {
        None => Ok(VerifyReply::invalid()),
        Some(FingerprintRef::Lease { lease }) => {
            let Some(lease) = ctx.inventory.lease(lease).await? else {
                return Ok(VerifyReply::invalid());
            };
            if !lease.is_valid_at(now) {
                return Ok(VerifyReply::invalid());
            }
            if limiter.first_in_window(lease.id, window) {
                let mut data = LifecycleData::new(LifecycleKind::Used, None, None);
                data.actor = Some("keyloop.token.verify".into());
                let event =
                    lease_event(SOURCE, &format!("used/{}/{window}", lease.id), data, &lease)
                        .caused_by(Some(lease.task_id.clone()), None);
                ctx.outbox.publish_lifecycle(&event).await?;
            }
            Ok(VerifyReply {
                valid: true,
                lease_id: Some(lease.id),
                scope: Some(lease.scope.clone()),
                expires_at: Some(lease.expires_at),
                ..VerifyReply::invalid()
            })
        }
        Some(FingerprintRef::Version {
            credential,
            version,
        }) => {
            let Some((cred, _)) = ctx.inventory.get(&credential).await? else {
                return Ok(VerifyReply::invalid());
            };
            let Some(v) = cred.version(version) else {
                return Ok(VerifyReply::invalid());
            };
            if !matches!(v.stage, Stage::Current | Stage::Previous) {
                return Ok(VerifyReply::invalid());
            }
            if limiter.first_in_window(version, window) {
                let cause = Cause {
                    source: SOURCE.into(),
                    ..Cause::default()
                };
                ops::record_use(
                    ctx,
                    &credential,
                    Some(version),
                    Some("keyloop.token.verify".into()),
                    now,
                    &cause,
                )
                .await?;
            }
            Ok(VerifyReply {
                valid: true,
                credential: Some(credential.to_string()),
                version: Some(version),
                stage: Some(v.stage),
                ..VerifyReply::invalid()
            })
        }
    }
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

/// Error replies (refusals, and `unavailable`) by endpoint and code, reported in STATS as each
/// endpoint's `data` (`{"error_replies": {"ttl_too_long": 2}}`). An error is answered with a
/// JSON body that says why (what requesters have always read), so the service API, which
/// counts only empty-bodied error replies, leaves `num_errors` at 0: this is where operators
/// see them.
#[derive(Debug, Default)]
struct ErrorReplies(Mutex<BTreeMap<(&'static str, String), u64>>);

impl ErrorReplies {
    fn count(&self, endpoint: Endpoint, code: &str) {
        let mut counts = self.0.lock().expect("error replies lock");
        *counts
            .entry((endpoint.name(), code.to_owned()))
            .or_default() += 1;
    }

    fn stats(&self, endpoint: &str) -> serde_json::Value {
        let counts = self.0.lock().expect("error replies lock");
        let by_code: BTreeMap<&str, u64> = counts
            .iter()
            .filter(|((name, _), _)| *name == endpoint)
            .map(|((_, code), n)| (code.as_str(), *n))
            .collect();
        serde_json::json!({ "error_replies": by_code })
    }
}

/// Answers one request on `endpoint`: the reply's JSON, or the error to reply instead.
async fn answer(
    ctx: &WorkerContext,
    policy: &JitPolicy,
    limiter: &UseLimiter,
    endpoint: Endpoint,
    payload: &[u8],
) -> Result<Vec<u8>, ServiceError> {
    let now = OffsetDateTime::now_utc();
    match endpoint {
        Endpoint::Issue => {
            let req = decode_issue_request(payload)?;
            let result = issue(ctx, policy, &req, now).await;
            match &result {
                Ok(r) => {
                    info!(lease = %r.lease_id, task = %req.task_id, agent = %req.agent_id, scope = %req.scope, "lease issued")
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

/// The requests a replica is answering, and what answering one needs.
struct InHand {
    ctx: Arc<WorkerContext>,
    policy: Arc<JitPolicy>,
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
        let (ctx, policy, limiter, errors) = (
            self.ctx.clone(),
            self.policy.clone(),
            self.limiter.clone(),
            self.errors.clone(),
        );
        self.tasks.spawn(async move {
            let reply = answer(&ctx, &policy, &limiter, endpoint, &request.message.payload)
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
        });
    }
}

/// Serves issue and verify requests as the NATS service [`service_name`], its endpoints in the
/// queue group [`QUEUE_GROUP`] on their usual subjects (a requester sees no difference), with
/// PING, INFO and STATS discovery on `$SRV.<verb>.<name>` from the service API. On `shutdown`
/// it stops taking requests and answering discovery, then answers the requests in hand and
/// those the server had already delivered to it.
pub async fn serve(
    ctx: Arc<WorkerContext>,
    policy: JitPolicy,
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
    info!(issue = %topo.jit_issue(), verify = %topo.token_verify(), group = QUEUE_GROUP, service = %name, "jit-issuer serving");
    let mut hand = InHand {
        ctx,
        policy: Arc::new(policy),
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
    info!("jit-issuer stopped serving");
    Ok(())
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn stats_report_each_endpoints_error_replies_by_code_and_none_of_the_others() {
        let errors = ErrorReplies::default();
        errors.count(Endpoint::Issue, "ttl_too_long");
        errors.count(Endpoint::Issue, "ttl_too_long");
        errors.count(Endpoint::Issue, "unknown_scope");
        errors.count(Endpoint::Verify, "bad_request");
        assert_eq!(
            errors.stats("jit-issue"),
            serde_json::json!({"error_replies": {"ttl_too_long": 2, "unknown_scope": 1}})
        );
        assert_eq!(
            errors.stats("token-verify"),
            serde_json::json!({"error_replies": {"bad_request": 1}})
        );
        assert_eq!(
            ErrorReplies::default().stats("jit-issue"),
            serde_json::json!({"error_replies": {}})
        );
    }
}
