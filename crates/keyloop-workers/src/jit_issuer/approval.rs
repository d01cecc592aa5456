//! `jit.issue` of a scope the policy allows only after an approval: the request is held as one
//! approval per requester and terms (scope, task, TTL), answered at once with
//! `approval_pending` and its id; approvers decide it on the api; the requester asks again
//! with the same terms (optionally waiting, `wait_secs`, for the decision) and gets the lease
//! once the approval is granted — a grant is redeemed once, by the requester that asked.
//!
//! The approval id derives from the requester and the terms, so a requester retrying in a loop
//! holds one approval, not one per retry. Denied stays denied (a new task id asks anew);
//! expired or used, the next request opens a fresh round under the same id.

use super::{SOURCE, service_error};
use crate::approvals;
use crate::context::WorkerContext;
use crate::error::{Error, ErrorKind};
use crate::ops::Cause;
use keyloop_core::lease::{IssueDecision, IssueRequest, ServiceError};
use keyloop_core::policy::{Approval, ApprovalNeed, ApprovalState, Held};
use keyloop_nats::Change;
use std::time::Duration;
use time::OffsetDateTime;

/// The longest a request waits for a decision before it is answered `approval_pending` again.
pub(super) const MAX_WAIT: Duration = Duration::from_secs(30);

/// The approval id of `requester` asking `req`'s terms.
pub(super) fn approval_id(requester: &str, req: &IssueRequest) -> String {
    let id = keyloop_core::event::stable_id(&format!(
        "jit-approval/{requester}/{}/{}/{}",
        req.scope, req.task_id, req.ttl_secs
    ));
    format!("jit-{}", id.simple())
}

fn unavailable(e: &Error) -> ServiceError {
    service_error(
        "unavailable",
        format!("could not read or record the approval: {e}; retry"),
    )
}

fn pending(a: &Approval) -> ServiceError {
    let mut e = service_error(
        "approval_pending",
        format!(
            "scope `{}` for task {} needs {} (policy {}); held as approval {} until {}: an approver runs `keyloop approvals approve {}`, then ask again with the same terms (`keyloop task start --wait` does), and the lease is issued once",
            a.resource,
            a.reason,
            a.need.describe(),
            a.policies.join(", "),
            a.id,
            a.expires_at
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            a.id
        ),
    );
    e.approval = Some(a.id.clone());
    e
}

/// The granted approval for `req`, redeemed now; or the answer to give instead: pending (the
/// approval opened or still waiting, after waiting up to `req.wait_secs`), denied, or a
/// mismatched approval id.
pub(super) async fn redeem(
    ctx: &WorkerContext,
    req: &IssueRequest,
    decided: &IssueDecision<'_>,
    need: &ApprovalNeed,
    now: OffsetDateTime,
) -> Result<Approval, ServiceError> {
    let requester = decided.requester().name;
    let id = approval_id(&requester, req);
    if let Some(asked) = &req.approval
        && asked != &id
    {
        return Err(service_error(
            "approval_mismatch",
            format!(
                "approval {asked} is not for this request: the requester, scope, task and TTL must be those it was asked with; ask without an approval id to see this request's"
            ),
        ));
    }
    let cause = Cause {
        source: SOURCE.into(),
        correlation: Some(req.task_id.clone()),
        causation: None,
        batch: None,
        actor: Some(requester.clone()),
    };
    let wait = Duration::from_secs(req.wait_secs.unwrap_or(0)).min(MAX_WAIT);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let now = now.max(OffsetDateTime::now_utc());
        let stored = ctx
            .approvals
            .approval(&id)
            .await
            .map_err(|e| unavailable(&e))?;
        let Some(stored) = stored else {
            let approval = fresh(ctx, &id, &requester, req, decided, need, now);
            match ctx.approvals.create_approval(&approval).await {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(unavailable(&e)),
            }
            approvals::announce_requested(ctx, &cause, &approval, now)
                .await
                .map_err(|e| unavailable(&e))?;
            return Err(pending(&approval));
        };
        match stored.state_at(now) {
            ApprovalState::Pending => {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    return Err(pending(&stored));
                }
                ctx.approvals
                    .wait_approval(&id, left)
                    .await
                    .map_err(|e| unavailable(&e))?;
            }
            ApprovalState::Granted => {
                let redeemed = ctx
                    .approvals
                    .update_approval(&id, |a| {
                        Ok(if a.redeem(&requester, now) {
                            Change::Write(Some(a.clone()))
                        } else {
                            Change::Keep(None)
                        })
                    })
                    .await
                    .map_err(|e| unavailable(&e))?;
                if let Some(a) = redeemed {
                    return Ok(a);
                }
            }
            ApprovalState::Denied => {
                let (by, why) = stored.denied.clone().unwrap_or_default();
                return Err(service_error(
                    "approval_denied",
                    format!(
                        "approval {id} for scope `{}` was denied by {by}: {why}; a new request needs a new task id",
                        req.scope
                    ),
                ));
            }
            ApprovalState::Expired | ApprovalState::Used => {
                // A lazily expired approval is announced as such before a new round opens.
                approvals::expire(ctx, &cause, &id, now)
                    .await
                    .map_err(|e| unavailable(&e))?;
                let round = fresh(ctx, &id, &requester, req, decided, need, now);
                let reopened = ctx
                    .approvals
                    .update_approval(&id, |a| {
                        Ok(
                            if matches!(
                                a.state_at(now),
                                ApprovalState::Expired | ApprovalState::Used
                            ) {
                                *a = round.clone();
                                Change::Write(true)
                            } else {
                                Change::Keep(false)
                            },
                        )
                    })
                    .await
                    .map_err(|e| unavailable(&e))?;
                if reopened {
                    approvals::announce_requested(ctx, &cause, &round, now)
                        .await
                        .map_err(|e| unavailable(&e))?;
                    return Err(pending(&round));
                }
            }
        }
    }
}

/// Gives a redeemed grant back after the lease could not be issued, so the requester's retry
/// finds it granted (best effort: the error is the caller's to report).
pub(super) async fn give_back(ctx: &WorkerContext, approval: &Approval) {
    let result = ctx
        .approvals
        .update_approval(&approval.id, |a| {
            Ok(if a.state == ApprovalState::Used {
                a.state = ApprovalState::Granted;
                Change::Write(())
            } else {
                Change::Keep(())
            })
        })
        .await;
    if let Err(e) = result {
        tracing::warn!(approval = %approval.id, error = %e, "could not give a redeemed grant back after a failed issue; the requester needs a new approval");
    }
}

/// A new pending round of `id`.
fn fresh(
    ctx: &WorkerContext,
    id: &str,
    requester: &str,
    req: &IssueRequest,
    decided: &IssueDecision<'_>,
    need: &ApprovalNeed,
    now: OffsetDateTime,
) -> Approval {
    let mut approval = Approval::new(
        id.to_owned(),
        requester,
        &req.scope,
        &format!("task {}", req.task_id),
        need.clone(),
        decided.decision.policies.clone(),
        Held::Issue {
            scope: req.scope.clone(),
            task_id: req.task_id.clone(),
            ttl_secs: req.ttl_secs,
        },
        now,
        time::Duration::try_from(ctx.approval_settings.open_for)
            .unwrap_or(time::Duration::minutes(15)),
    );
    approval.correlation = Some(req.task_id.clone());
    approval
}
