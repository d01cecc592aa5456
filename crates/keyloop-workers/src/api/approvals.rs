//! The api's approval verbs: `approvals` (list), `approval` (show), `approve`, `deny`.
//!
//! Who may decide an approval is the policy's `approve` action on what it holds (the
//! credential, the JIT scope, or the inventory for a revocation batch), with the requester and
//! the held action in the context; the approval's own need adds the group its approvers must
//! be in and how many distinct ones. The requester never decides their own request. A grant
//! of a held rotation, revocation, retirement or batch runs it here, once (the approval is then
//! `used`); a JIT grant is redeemed by the requester asking again. An approve of a granted
//! approval whose action did not run (a crash between the grant and the run) runs it: the
//! commands are deduplicated by their operation ids, so nothing runs twice.

use super::{Api, api_error};
use crate::approvals::{announce, release_batch};
use keyloop_core::LifecycleKind;
use keyloop_core::api::{
    ApiError, ApprovalIdRequest, ApprovalsRequest, Decided, DenyRequest, Verb,
};
use keyloop_core::policy::{
    Action, Approval, ApprovalError, ApprovalState, CredentialAttrs, Decision, Held, PolicyRequest,
    Principal, RequestContext, Resource, Source, Transition,
};
use keyloop_nats::Change;
use time::OffsetDateTime;

/// The verdict asked for.
enum Verdict<'r> {
    Approve,
    Deny(&'r str),
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        "not_found",
        format!("approval {id} does not exist (see `keyloop approvals list --all`)"),
    )
}

fn approval_error(e: &ApprovalError) -> ApiError {
    let code = match e {
        ApprovalError::SelfApproval { .. } => "self_approval",
        ApprovalError::NotInGroup { .. } => "forbidden",
        ApprovalError::NotPending { .. } => "not_pending",
        ApprovalError::NoReason => "bad_request",
    };
    ApiError::new(code, e.to_string())
}

impl Api<'_> {
    /// What the policy says about the actor deciding `approval`.
    async fn may_decide(&self, approval: &Approval) -> Result<Decision, ApiError> {
        let mut context = RequestContext::new(OffsetDateTime::now_utc(), Source::Api);
        context.requested_action = match &approval.held {
            Held::RevokeBatch { .. } => Some(Action::Api(Verb::Revoke)),
            held => Action::parse(held.action()),
        };
        context.requester = Some(approval.requester.clone());
        let principal = Principal::actor(self.actor);
        let decision = match &approval.held {
            Held::Issue { scope, .. } => match self.scopes.scopes.get(scope) {
                Some(policy) => self.engine.decide(&PolicyRequest {
                    principal,
                    action: Action::Approve,
                    resource: Resource::Scope {
                        name: scope,
                        policy,
                    },
                    context,
                }),
                None => {
                    return Err(ApiError::new(
                        "not_found",
                        format!(
                            "approval {} is for JIT scope `{scope}`, which this api's --jit-policy does not have; run the api with the jit-issuer's --jit-policy",
                            approval.id
                        ),
                    ));
                }
            },
            Held::RevokeBatch { .. } => self.engine.decide(&PolicyRequest {
                principal,
                action: Action::Approve,
                resource: Resource::Inventory,
                context,
            }),
            _ => {
                let id = crate::approvals::credential_of(approval)
                    .ok_or_else(|| not_found(&approval.id))?;
                let Some((cred, _)) = self.ctx.inventory.get(&id).await.map_err(api_error)? else {
                    return Err(ApiError::new(
                        "not_found",
                        format!(
                            "approval {} is for credential {id}, which is no longer registered",
                            approval.id
                        ),
                    ));
                };
                self.engine.decide(&PolicyRequest {
                    principal,
                    action: Action::Approve,
                    resource: Resource::Credential(CredentialAttrs::from(&cred)),
                    context,
                })
            }
        };
        Ok(decision)
    }

    /// Whether the actor may see `approval`: it asked, or it may decide it.
    async fn may_see(&self, approval: &Approval) -> bool {
        approval.requester == self.actor
            || self
                .may_decide(approval)
                .await
                .is_ok_and(|d| d.allowed_now())
    }

    pub(super) async fn approvals(&self, req: ApprovalsRequest) -> Result<Vec<Approval>, ApiError> {
        let now = OffsetDateTime::now_utc();
        let mut out = Vec::new();
        for a in self.ctx.approvals.approvals().await.map_err(api_error)? {
            if (req.all || a.state_at(now) == ApprovalState::Pending) && self.may_see(&a).await {
                out.push(a);
            }
        }
        Ok(out)
    }

    pub(super) async fn approval(&self, req: ApprovalIdRequest) -> Result<Approval, ApiError> {
        match self
            .ctx
            .approvals
            .approval(&req.id)
            .await
            .map_err(api_error)?
        {
            Some(a) if self.may_see(&a).await => Ok(a),
            _ => Err(not_found(&req.id)),
        }
    }

    pub(super) async fn approve(&self, req: ApprovalIdRequest) -> Result<Decided, ApiError> {
        self.decide_approval(&req.id, Verdict::Approve).await
    }

    pub(super) async fn deny(&self, req: DenyRequest) -> Result<Decided, ApiError> {
        self.decide_approval(&req.id, Verdict::Deny(&req.reason))
            .await
    }

    async fn decide_approval(&self, id: &str, verdict: Verdict<'_>) -> Result<Decided, ApiError> {
        let Some(stored) = self.ctx.approvals.approval(id).await.map_err(api_error)? else {
            return Err(not_found(id));
        };
        if stored.requester != self.actor {
            let decision = self.may_decide(&stored).await?;
            if !decision.allowed_now() {
                return Err(self
                    .refuse(
                        Verb::Approve,
                        crate::approvals::credential_of(&stored).as_ref(),
                        Some(&decision),
                    )
                    .await);
            }
        }
        let now = OffsetDateTime::now_utc();
        // A grant whose action did not run yet (the api stopped in between): run it now.
        if matches!(verdict, Verdict::Approve)
            && stored.state_at(now) == ApprovalState::Granted
            && stored.requester != self.actor
        {
            return self.granted(stored).await;
        }
        let in_group = stored
            .need
            .group
            .as_ref()
            .is_none_or(|g| self.engine.groups().contains(g, self.actor));
        let actor = self.actor;
        let outcome = self
            .ctx
            .approvals
            .update_approval(id, |a| {
                let t = match verdict {
                    Verdict::Approve => a.approve(actor, in_group, now),
                    Verdict::Deny(reason) => a.deny(actor, in_group, reason, now),
                };
                Ok(match t {
                    Ok(Transition::Unchanged) => {
                        Change::Keep(Ok((Transition::Unchanged, a.clone())))
                    }
                    Ok(t) => Change::Write(Ok((t, a.clone()))),
                    Err(e) => Change::Keep(Err(e)),
                })
            })
            .await
            .map_err(api_error)?;
        let (transition, approval) = outcome.map_err(|e| approval_error(&e))?;
        let cause = self.cause(approval.correlation.clone());
        let announced = |kind, detail: String| {
            announce(self.ctx, &cause, kind, &approval, Some(actor), Some(detail))
        };
        match transition {
            Transition::Unchanged => {}
            Transition::Counted => announced(
                LifecycleKind::ApprovalGranted,
                format!(
                    "{} of {} approvals; waiting for more",
                    approval.grants.len(),
                    approval.need.approvers
                ),
            )
            .await
            .map_err(api_error)?,
            Transition::Granted => {
                announced(
                    LifecycleKind::ApprovalGranted,
                    format!(
                        "granted ({} of {}): {} {} runs once",
                        approval.grants.len(),
                        approval.need.approvers,
                        approval.action,
                        approval.resource
                    ),
                )
                .await
                .map_err(api_error)?;
                return self.granted(approval).await;
            }
            Transition::Denied => {
                release_batch(self.ctx, &approval)
                    .await
                    .map_err(api_error)?;
                let reason = approval
                    .denied
                    .as_ref()
                    .map(|(_, r)| r.clone())
                    .unwrap_or_default();
                announced(LifecycleKind::ApprovalDenied, reason)
                    .await
                    .map_err(api_error)?;
            }
            Transition::Expired => {
                release_batch(self.ctx, &approval)
                    .await
                    .map_err(api_error)?;
                announce(
                    self.ctx,
                    &cause,
                    LifecycleKind::ApprovalExpired,
                    &approval,
                    None,
                    Some("nobody decided in time: the request is dropped; ask again".into()),
                )
                .await
                .map_err(api_error)?;
                return Err(ApiError::new(
                    "not_pending",
                    format!(
                        "approval {id} expired at its deadline before this decision; nothing changed"
                    ),
                ));
            }
        }
        Ok(Decided {
            approval,
            op_id: None,
        })
    }

    /// Runs what a granted approval holds (see [`Self::run_granted`]), and answers with the
    /// approval as it stands after.
    async fn granted(&self, approval: Approval) -> Result<Decided, ApiError> {
        let op_id = self.run_granted(&approval).await?;
        let now = self
            .ctx
            .approvals
            .approval(&approval.id)
            .await
            .map_err(api_error)?;
        Ok(Decided {
            approval: now.unwrap_or(approval),
            op_id,
        })
    }

    /// Runs what a granted approval holds, as its requester asked it, and spends the grant.
    /// A JIT grant runs nothing here: the requester redeems it.
    async fn run_granted(&self, approval: &Approval) -> Result<Option<String>, ApiError> {
        let cause = crate::ops::Cause {
            actor: Some(approval.requester.clone()),
            ..self.cause(approval.correlation.clone())
        };
        let op_id = match &approval.held {
            Held::Issue { .. } => return Ok(None),
            Held::Rotate(cmd) => {
                self.ctx
                    .send_command(&cause, cmd.clone())
                    .await
                    .map_err(api_error)?;
                cmd.op_id.clone()
            }
            Held::Revoke(cmd) => {
                self.ctx
                    .send_command(&cause, cmd.clone())
                    .await
                    .map_err(api_error)?;
                cmd.op_id.clone()
            }
            Held::Retire { reason } => {
                let id = crate::approvals::credential_of(approval)
                    .ok_or_else(|| not_found(&approval.id))?;
                let op_id = approval
                    .correlation
                    .clone()
                    .unwrap_or_else(|| format!("retire/{id}/{}", approval.id));
                super::actions::retire_now(
                    self.ctx,
                    &cause,
                    &id,
                    &approval.requester,
                    reason,
                    &op_id,
                )
                .await
                .map_err(api_error)?;
                op_id
            }
            Held::RevokeBatch { target, commands } => {
                for cmd in commands {
                    // Sent again under an operation of its own: the held command's id is in
                    // the stream's dedup window and would be dropped as a repeat.
                    let mut cmd = cmd.clone();
                    cmd.op_id = format!("{}/released", cmd.op_id);
                    cmd.released_by = Some(approval.id.clone());
                    self.ctx
                        .send_command(&cause, cmd)
                        .await
                        .map_err(api_error)?;
                }
                release_batch(self.ctx, approval).await.map_err(api_error)?;
                keyloop_nats::metrics::global().budget_released();
                announce(
                    self.ctx,
                    &cause,
                    LifecycleKind::BudgetReleased,
                    approval,
                    Some(self.actor),
                    Some(format!(
                        "{} held revocation(s) of target {target} released",
                        commands.len()
                    )),
                )
                .await
                .map_err(api_error)?;
                format!("approval/{}", approval.id)
            }
        };
        let requester = approval.requester.clone();
        let now = OffsetDateTime::now_utc();
        self.ctx
            .approvals
            .update_approval(&approval.id, |a| {
                Ok(if a.redeem(&requester, now) {
                    Change::Write(())
                } else {
                    Change::Keep(())
                })
            })
            .await
            .map_err(api_error)?;
        Ok(Some(op_id))
    }
}
