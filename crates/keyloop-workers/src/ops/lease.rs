//! Ending a JIT lease: its PostgreSQL role dropped first, then the lease recorded ended.

use super::{Cause, backend};
use crate::context::WorkerContext;
use crate::error::{Error, ErrorKind};
use keyloop_core::event::lease_event;
use keyloop_core::lease::LeaseState;
use keyloop_core::{LifecycleData, LifecycleKind, RevokeReason};
use keyloop_nats::Change;
use time::OffsetDateTime;
use uuid::Uuid;

/// Ends a lease: `revoked` (task completed, leak, operator) or `expired`. The state change in
/// the inventory is what makes the token invalid (verification reads it), and it is stored
/// before the event is published. Returns false when the lease had already ended by another
/// operation. Idempotent.
pub async fn end_lease(
    ctx: &WorkerContext,
    lease_id: Uuid,
    reason: RevokeReason,
    op: &str,
    leak_published_at: Option<OffsetDateTime>,
    cause: &Cause,
) -> Result<bool, Error> {
    // A lease that is a PostgreSQL role: the role goes first (sessions ended, objects
    // reassigned, role dropped), so the lease is never recorded ended while its role works.
    if let Some(lease) = ctx.inventory.lease(lease_id).await?
        && lease.state == LeaseState::Active
        && let Some(login) = &lease.login
    {
        let roles = ctx.backends.jit_roles.as_ref().ok_or_else(|| {
            Error::msg(
                ErrorKind::Permanent,
                format!("lease {lease_id} is PostgreSQL role {login}: this revoker needs the admin connection (KEYLOOP_POSTGRES_DSN / --postgres-dsn) to drop it"),
            )
        })?;
        roles.drop_jit_role(login).await.map_err(|e| {
            backend(
                e,
                &format!("drop PostgreSQL role {login} of lease {lease_id}"),
            )
        })?;
    }
    let now = OffsetDateTime::now_utc();
    let lease = ctx
        .inventory
        .update_lease(lease_id, |l| {
            if l.state != LeaseState::Active {
                return Ok(Change::Keep(l.clone()));
            }
            l.state = if reason == RevokeReason::Expired {
                LeaseState::Expired
            } else {
                LeaseState::Revoked
            };
            l.ended_at = Some(now);
            l.end_reason = Some(reason);
            l.ended_by = Some(op.to_owned());
            Ok(Change::Write(l.clone()))
        })
        .await?;
    // The revocation's span links to the request that issued the lease (another trace).
    if let Some(tp) = &lease.traceparent {
        keyloop_nats::trace::link_to(tp);
    }
    if lease.ended_by.as_deref() != Some(op) {
        return Ok(false);
    }
    let kind = if lease.state == LeaseState::Expired {
        LifecycleKind::Expired
    } else {
        LifecycleKind::Revoked
    };
    let mut data = LifecycleData::new(kind, None, None);
    data.revoke_reason = lease.end_reason;
    let ended_at = lease.ended_at.unwrap_or(now);
    data.time_to_revoke_ms =
        leak_published_at.map(|t| (ended_at - t).whole_milliseconds().max(0) as u64);
    let event = lease_event(&cause.source, &format!("{op}/{lease_id}"), data, &lease)
        .caused_by(cause.correlation.clone(), cause.causation.clone());
    ctx.outbox.publish_lifecycle(&event).await?;
    if let Some(leaked) = leak_published_at {
        keyloop_nats::metrics::global()
            .revoked_after_leak(keyloop_nats::metrics::Revoked::Lease, ended_at - leaked);
    }
    Ok(true)
}
