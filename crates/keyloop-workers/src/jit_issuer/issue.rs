//! `jit.issue`: a lease decided by [`JitPolicy::decide`], recorded, announced, then handed out;
//! or a refusal, and for a refusal of who asked a `denied` event (who, what) first.
//!
//! Redelivery is harmless: a request is answered once (request/reply, nothing acked), a retried
//! request is a new lease with its own id, and a refusal repeated within a minute is recorded
//! once (its event id derives from who, what and the minute).

use super::{SOURCE, service_error};
use crate::context::WorkerContext;
use crate::error::Error;
use keyloop_core::event::{LifecycleData, LifecycleKind, lease_event, lifecycle_event};
use keyloop_core::identity::IdentityVerifier;
use keyloop_core::lease::{IssueReply, IssueRequest, LeaseState, Refusal, ServiceError};
use keyloop_core::policy::{Outcome, PolicyEngine};
use keyloop_core::{Fingerprint, JitPolicy, Lease};
use keyloop_nats::{DueItem, FingerprintRef};
use std::time::Duration;
use time::OffsetDateTime;
use tracing::warn;
use uuid::Uuid;

/// Refusals of one requester for one scope and task within this many seconds are one `denied`
/// event: a requester retrying in a loop (or flooding) does not grow the audit log.
const DENIED_WINDOW_SECS: i64 = 60;
/// How long a refusal waits for its `denied` event to be stored before it is answered anyway.
const DENIED_RECORD_TIMEOUT: Duration = Duration::from_secs(1);

/// Issues a lease for `req` under `policy` and `engine`, the requester's identity token checked
/// by `verifier`: decided by [`JitPolicy::decide_under`], recorded (lease, task index, fingerprint
/// index, expiry), `issued` published (its actor the proved identity, else the agent label),
/// and only then the token handed out. The `issued` event carries the outcome (`notify`: the
/// notification a notify-tier scope asks for) and the ids of the policies that decided. A refusal of who asked is recorded as `denied` before
/// it is answered.
pub async fn issue(
    ctx: &WorkerContext,
    engine: &PolicyEngine,
    policy: &JitPolicy,
    verifier: &IdentityVerifier,
    req: &IssueRequest,
    now: OffsetDateTime,
) -> Result<IssueReply, ServiceError> {
    let decision = match policy.decide_terms(engine, req, verifier, now) {
        Ok(decision) => decision,
        Err(refusal) => {
            record_denial(ctx, req, &refusal, now).await;
            return Err(refusal.into());
        }
    };
    let approval = match &decision.decision.outcome {
        Outcome::Approve(need) => {
            Some(super::approval::redeem(ctx, req, &decision, need, now).await?)
        }
        _ => None,
    };
    let issued = lease_for(ctx, req, decision, approval.as_ref(), now).await;
    if let (Err(_), Some(a)) = (&issued, &approval) {
        super::approval::give_back(ctx, a).await;
    }
    issued
}

/// Issues the lease a decision (and, for an approve-tier request, its redeemed `approval`)
/// allows.
async fn lease_for(
    ctx: &WorkerContext,
    req: &IssueRequest,
    decision: keyloop_core::lease::IssueDecision<'_>,
    approval: Option<&keyloop_core::policy::Approval>,
    now: OffsetDateTime,
) -> Result<IssueReply, ServiceError> {
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
    let actor = decision
        .identity
        .as_ref()
        .map(keyloop_core::identity::WorkloadIdentity::actor)
        .or_else(|| req.agent_id.clone());
    let lease = Lease {
        id: lease_id,
        task_id: req.task_id.clone(),
        identity: decision.identity,
        agent_id: req.agent_id.clone(),
        scope: req.scope.clone(),
        tier: scope.tier,
        fingerprint: fingerprint.tag(),
        state: LeaseState::Active,
        issued_at: now,
        expires_at: decision.expires_at,
        ended_at: None,
        end_reason: None,
        ended_by: None,
        login: login.clone(),
        traceparent: keyloop_nats::trace::current(),
    };
    let (keys, target) = (
        fingerprint.index_keys(),
        FingerprintRef::Lease { lease: lease.id },
    );
    let mut data = LifecycleData::new(LifecycleKind::Issued, None, None);
    data.actor = actor;
    data.outcome = Some(decision.decision.outcome.name().to_owned());
    data.policies = decision.decision.policies;
    data.approval = approval.map(keyloop_core::policy::Approval::info);
    let event = lease_event(SOURCE, &format!("issue/{}", lease.id), data, &lease)
        .caused_by(Some(req.task_id.clone()), None);
    // Everything else at once: one round trip instead of four before the reply.
    let rest = async {
        let (indexed, by_task, scheduled, published) = tokio::join!(
            ctx.fingerprints.put(&keys, &target),
            ctx.inventory.index_lease_under_task(&lease),
            ctx.due
                .schedule(DueItem::Expire { lease: lease.id }, lease.expires_at, now),
            ctx.outbox.publish_lifecycle(&event),
        );
        indexed.and(by_task).and(scheduled).and(published)
    };
    if let (Some((roles, group)), Some(name)) = (&jit_roles, &login) {
        // The lease is recorded before its PostgreSQL role exists, so a crash in between leaves
        // a lease whose expiry drops the role, never a role nobody tracks; and the role exists
        // before anything announces the lease.
        ctx.inventory
            .create_lease(&lease)
            .await
            .map_err(unavailable)?;
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
        rest.await.map_err(unavailable)?;
    } else {
        // A local token exists nowhere but in the reply, which waits for every record: they
        // are written together, the lease with the rest, in one round trip. A failure of any
        // answers `unavailable` and the token is never seen; what was written of it points at
        // a lease nobody holds, which its scheduled expiry (or nothing) ends.
        let (created, rest) = tokio::join!(ctx.inventory.create_lease(&lease), rest);
        created.and(rest).map_err(unavailable)?;
    }
    Ok(IssueReply {
        lease_id: lease.id,
        secret: token.expose().to_owned(),
        expires_at: lease.expires_at,
        tier: lease.tier,
        login,
        identity: lease.identity,
    })
}

/// Publishes `denied` for a refusal of who asked (identity required, invalid or not allowed):
/// the actor is who asked ([`Refusal::denied_actor`]: the proved identity, or `unverified
/// (<why>)`, never the token), the detail what was refused and why, the correlation the task.
/// It lands on `<prefix>.lifecycle.denied._none` (a refused request has no lease). Other
/// refusals (unknown scope, TTL, tier) are the request's terms, not its actor's rights: they
/// are answered only. The refusal waits for the event to be stored, at most
/// [`DENIED_RECORD_TIMEOUT`]: a failure to record is logged and the refusal answered anyway, so
/// a flood of refused requests cannot hold every in-flight slot while the audit log does not
/// answer (or the issuer's NATS user may not publish `denied`).
async fn record_denial(
    ctx: &WorkerContext,
    req: &IssueRequest,
    refusal: &Refusal,
    now: OffsetDateTime,
) {
    let Some(actor) = refusal.denied_actor() else {
        return;
    };
    let window = now.unix_timestamp().div_euclid(DENIED_WINDOW_SECS);
    let step = format!(
        "jit-denied/{}/{actor}/{}/{window}",
        req.scope,
        keyloop_core::event::stable_id(&req.task_id)
    );
    let mut data = LifecycleData::new(LifecycleKind::Denied, None, None);
    data.actor = Some(actor.clone());
    if let Refusal::PolicyDenied { policies, .. } = refusal {
        data.policies.clone_from(policies);
        data.outcome = Some("deny".into());
    }
    data.detail = Some(format!(
        "jit.issue of scope `{}` for task {} refused ({}): {refusal}",
        req.scope,
        req.task_id,
        refusal.code()
    ));
    let event = lifecycle_event(SOURCE, &step, data).caused_by(Some(req.task_id.clone()), None);
    match tokio::time::timeout(DENIED_RECORD_TIMEOUT, ctx.outbox.publish_lifecycle(&event)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            warn!(error = %e, actor = %actor, scope = %req.scope, "could not record a denied JIT request");
        }
        Err(_) => {
            warn!(actor = %actor, scope = %req.scope, "a denied JIT request was not recorded within {DENIED_RECORD_TIMEOUT:?}; answered anyway (may the jit-issuer's NATS user publish lifecycle denied events?)");
        }
    }
}
