//! jit-issuer: serves `<prefix>.jit.issue` and `<prefix>.token.verify` as request/reply in the
//! queue group `jit-issuer` (replies are never stored in a stream: the token travels once, in
//! the reply). The role's other half, revoking the leases of a finished task, is
//! [`crate::task_completed`].
//!
//! A lease's token is never stored anywhere: only its fingerprints, which is all verification
//! needs. Its expiry is enforced twice — verification compares `expires_at` with the clock, and
//! the sweeper expires it in the inventory — so a lease dies on time even if a completion never
//! arrives.

use crate::context::WorkerContext;
use crate::ops::{self, Cause};
use futures::StreamExt;
use keyloop_core::event::{LifecycleData, LifecycleKind, lease_event};
use keyloop_core::lease::{
    IssueReply, IssueRequest, LeaseState, ServiceError, VerifyReply, VerifyRequest,
};
use keyloop_core::{Fingerprint, JitPolicy, Lease, Secret, Stage};
use keyloop_nats::{DueItem, Error, ErrorKind, FingerprintRef};
use serde::Serialize;
use std::collections::HashMap;
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
        ctx.bus.publish_lifecycle(&event),
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
    let keys = Fingerprint::of(token).index_keys();
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
                ctx.bus.publish_lifecycle(&event).await?;
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
                    correlation: None,
                    causation: None,
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

fn encode<T: Serialize>(result: Result<T, ServiceError>) -> Vec<u8> {
    match result {
        Ok(v) => serde_json::to_vec(&v),
        Err(e) => serde_json::to_vec(&ErrorReply { error: &e }),
    }
    .expect("replies serialize")
}

/// Serves issue and verify requests in the queue group until `shutdown`, then finishes the
/// requests in hand.
pub async fn serve(
    ctx: Arc<WorkerContext>,
    policy: JitPolicy,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let topo = &ctx.bus.topology;
    let client = ctx.bus.client.clone();
    let subscribe = |subject: String| {
        let client = client.clone();
        async move {
            client
                .queue_subscribe(subject.clone(), QUEUE_GROUP.into())
                .await
                .map_err(|e| Error::new(ErrorKind::Transient, format!("subscribe to {subject}"), e))
        }
    };
    let mut issues = subscribe(topo.jit_issue()).await?;
    let mut verifies = subscribe(topo.token_verify()).await?;
    info!(issue = %topo.jit_issue(), verify = %topo.token_verify(), group = QUEUE_GROUP, "jit-issuer serving");
    let policy = Arc::new(policy);
    let limiter = Arc::new(UseLimiter::default());
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut in_flight = tokio::task::JoinSet::new();
    loop {
        let (msg, is_issue) = tokio::select! {
            () = shutdown.cancelled() => break,
            Some(m) = issues.next() => (m, true),
            Some(m) = verifies.next() => (m, false),
            else => break,
        };
        while in_flight.try_join_next().is_some() {}
        let Some(reply_to) = msg.reply.clone() else {
            continue;
        };
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore is never closed");
        let (ctx, policy, limiter, client) =
            (ctx.clone(), policy.clone(), limiter.clone(), client.clone());
        in_flight.spawn(async move {
            let now = OffsetDateTime::now_utc();
            let reply = if is_issue {
                match decode_issue_request(&msg.payload) {
                    Ok(req) => {
                        let result = issue(&ctx, &policy, &req, now).await;
                        match &result {
                            Ok(r) => info!(lease = %r.lease_id, task = %req.task_id, agent = %req.agent_id, scope = %req.scope, "lease issued"),
                            // A bad_request's ids failed validation: they are not logged.
                            Err(e) if e.code == "bad_request" => warn!(code = %e.code, reason = %e.message, "lease refused"),
                            Err(e) => warn!(task = %req.task_id, code = %e.code, reason = %e.message, "lease refused"),
                        }
                        encode(result)
                    }
                    Err(e) => encode::<()>(Err(e)),
                }
            } else {
                match decode_verify_request(&msg.payload) {
                    Ok(token) => encode(verify(&ctx, &token, now, &limiter).await.map_err(|e| {
                        service_error("unavailable", format!("could not verify: {e}; retry"))
                    })),
                    Err(e) => encode::<()>(Err(e)),
                }
            };
            if let Err(e) = client.publish(reply_to, reply.into()).await {
                warn!(error = %e, "could not send the reply; the requester will time out and retry");
            }
            drop(permit);
        });
    }
    let _ = issues.unsubscribe().await;
    let _ = verifies.unsubscribe().await;
    while in_flight.join_next().await.is_some() {}
    info!("jit-issuer stopped serving");
    Ok(())
}
