//! What every role that holds or decides approvals shares: announcing an approval's
//! transitions as lifecycle events (`approval_requested`, `approval_granted`,
//! `approval_denied`, `approval_expired`; `budget_tripped`, `budget_released`), filing its
//! deadline with the sweeper, and expiring it there.
//!
//! An approval's events land on `<prefix>.lifecycle.approval_<x>.<credential>` when it holds
//! an action on a credential, else on `<prefix>.lifecycle.approval_<x>._none`; every one
//! carries `data.approval` (id, action, resource, requester, approvers needed, grants so far,
//! deadline), the deciding policies and, as `actor`, who acted. To watch every approval:
//! `<prefix>.lifecycle.approval_*.>`.

use crate::context::WorkerContext;
use crate::error::{Error, ErrorKind};
use crate::ops::Cause;
use keyloop_core::policy::{Approval, Held};
use keyloop_core::{CredentialId, LifecycleData, LifecycleKind};
use keyloop_nats::{Change, DueItem};
use time::OffsetDateTime;
use tracing::info;

/// The credential an approval holds an action on, if any.
pub fn credential_of(approval: &Approval) -> Option<CredentialId> {
    match &approval.held {
        Held::Rotate(c) => Some(c.credential.clone()),
        Held::Revoke(c) => Some(c.credential.clone()),
        Held::Retire { .. } => approval.resource.parse().ok(),
        Held::Issue { .. } | Held::RevokeBatch { .. } => None,
    }
}

/// Publishes `kind` about `approval` as it stands, by `actor`, saying `detail`, in the chain of
/// the request that asked (its correlation). The event id derives from the approval, its round,
/// its grants and the actor, so a retried step publishes nothing new.
pub async fn announce(
    ctx: &WorkerContext,
    cause: &Cause,
    kind: LifecycleKind,
    approval: &Approval,
    actor: Option<&str>,
    detail: Option<String>,
) -> Result<(), Error> {
    let mut data = LifecycleData::new(kind, credential_of(approval), None);
    data.approval = Some(approval.info());
    data.policies.clone_from(&approval.policies);
    data.outcome = Some("approve".into());
    data.actor = actor.map(str::to_owned);
    data.detail = detail;
    let step = format!(
        "approval/{}/{}/{}/{}",
        approval.id,
        approval.requested_at.unix_timestamp_nanos(),
        approval.grants.len(),
        actor.unwrap_or("-")
    );
    let mut cause = cause.clone();
    if approval.correlation.is_some() {
        cause.correlation.clone_from(&approval.correlation);
    }
    cause.publish(ctx, &step, data).await
}

/// Announces a stored pending approval: its deadline filed with the sweeper (which expires it),
/// then `approval_requested` (who asked, for what, why, until when).
pub async fn announce_requested(
    ctx: &WorkerContext,
    cause: &Cause,
    approval: &Approval,
    now: OffsetDateTime,
) -> Result<(), Error> {
    ctx.due
        .schedule(
            DueItem::ApprovalDeadline {
                approval: approval.id.clone(),
            },
            approval.expires_at,
            now,
        )
        .await?;
    let detail = format!(
        "{} {} asked by {} ({}): needs {} by {}",
        approval.action,
        approval.resource,
        approval.requester,
        approval.reason,
        approval.need.describe(),
        approval
            .expires_at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    );
    announce(
        ctx,
        cause,
        LifecycleKind::ApprovalRequested,
        approval,
        Some(&approval.requester),
        Some(detail),
    )
    .await
}

/// Releases the breaker a revocation batch held (decided, expired or released, it no longer
/// waits, so later revocations count again). Nothing for any other approval.
pub async fn release_batch(ctx: &WorkerContext, approval: &Approval) -> Result<(), Error> {
    if let Held::RevokeBatch { target, .. } = &approval.held {
        ctx.approvals.release_breaker(target, &approval.id).await?;
    }
    Ok(())
}

/// Expires approval `id` if it is past its deadline undecided (or granted and not used):
/// `approval_expired` is published, and a tripped budget waiting for it is released without
/// running what it held. `false` when there was nothing to expire.
pub async fn expire(
    ctx: &WorkerContext,
    cause: &Cause,
    id: &str,
    now: OffsetDateTime,
) -> Result<bool, Error> {
    let expired = ctx
        .approvals
        .update_approval(id, |a| {
            Ok(if a.expire(now) {
                Change::Write(Some(a.clone()))
            } else {
                Change::Keep(None)
            })
        })
        .await;
    let approval = match expired {
        Ok(Some(a)) => a,
        Ok(None) => return Ok(false),
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    release_batch(ctx, &approval).await?;
    let detail = match &approval.held {
        Held::RevokeBatch { target, commands } => {
            format!(
                "nobody decided in time: the {} held revocation(s) of target {target} are dropped (what falls due again is held again)",
                commands.len()
            )
        }
        _ => "nobody decided in time: the request is dropped; ask again".to_owned(),
    };
    info!(approval = id, action = %approval.action, resource = %approval.resource, "approval expired");
    announce(
        ctx,
        cause,
        LifecycleKind::ApprovalExpired,
        &approval,
        None,
        Some(detail),
    )
    .await?;
    Ok(true)
}
