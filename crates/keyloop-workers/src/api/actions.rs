//! The api's destructive verbs — `rotate`, `revoke`, `retire` — each sent at once, or, when
//! the policy asks for an approval (a high-blast-radius credential under the default policy),
//! held: the request is stored as an approval (`approval_requested`) and the reply says so
//! (`Queued.approval`); it runs, with the operation id given in the reply, only once it is
//! granted (`approvals.rs`).

use super::{Api, api_error, retired};
use crate::approvals;
use crate::context::WorkerContext;
use crate::error::Error;
use crate::ops::Cause;
use keyloop_core::api::{ApiError, IdRequest, Queued, RetireRequest, RevokeRequest, Verb};
use keyloop_core::event::{RevokeCommand, RotateCommand};
use keyloop_core::policy::{Approval, Decision, Held, Outcome};
use keyloop_core::{
    CredentialId, LifecycleData, LifecycleKind, Retired, RevokeReason, RotationReason,
};
use keyloop_nats::Change;
use time::OffsetDateTime;

impl Api<'_> {
    pub(super) async fn rotate(&self, req: IdRequest) -> Result<Queued, ApiError> {
        let (cred, held) = self.authorized_or_held(Verb::Rotate, &req.id).await?;
        if cred.retired.is_some() {
            return Err(retired(&req.id));
        }
        let op_id = format!("manual-rotate/{}", uuid::Uuid::now_v7());
        let cmd = RotateCommand {
            credential: req.id.clone(),
            reason: RotationReason::Manual,
            op_id: op_id.clone(),
        };
        if let Some(decision) = held {
            return self
                .hold(
                    &req.id,
                    decision,
                    Held::Rotate(cmd),
                    op_id,
                    "manual rotation",
                )
                .await;
        }
        self.send_now(cmd, op_id).await
    }

    pub(super) async fn revoke(&self, req: RevokeRequest) -> Result<Queued, ApiError> {
        let (cred, held) = self.authorized_or_held(Verb::Revoke, &req.id).await?;
        if let Some(v) = req.version
            && cred.version(v).is_none()
        {
            return Err(ApiError::new(
                "not_found",
                format!("credential {} has no version {v}", req.id),
            ));
        }
        let op_id = format!("manual-revoke/{}", uuid::Uuid::now_v7());
        let cmd = RevokeCommand {
            credential: req.id.clone(),
            version: req.version,
            reason: RevokeReason::Manual,
            op_id: op_id.clone(),
            leak_published_at: None,
            then_rotate: req.rotate,
            note: Some(req.reason.clone()),
            released_by: None,
        };
        if let Some(decision) = held {
            return self
                .hold(&req.id, decision, Held::Revoke(cmd), op_id, &req.reason)
                .await;
        }
        self.send_now(cmd, op_id).await
    }

    /// Offboards (see [`retire_now`]), or holds the retirement for an approval.
    pub(super) async fn retire(&self, req: RetireRequest) -> Result<Queued, ApiError> {
        let (_, held) = self.authorized_or_held(Verb::Retire, &req.id).await?;
        let op_id = format!("retire/{}/{}", req.id, uuid::Uuid::now_v7());
        if let Some(decision) = held {
            let reason = req.reason.clone();
            return self
                .hold(
                    &req.id,
                    decision,
                    Held::Retire { reason },
                    op_id,
                    &req.reason,
                )
                .await;
        }
        retire_now(
            self.ctx,
            &self.cause(Some(op_id.clone())),
            &req.id,
            self.actor,
            &req.reason,
            &op_id,
        )
        .await
        .map_err(api_error)?;
        Ok(Queued {
            op_id,
            approval: None,
        })
    }

    /// Sends `cmd` at once under `op_id`, as this actor.
    async fn send_now<C: keyloop_core::event::Command>(
        &self,
        cmd: C,
        op_id: String,
    ) -> Result<Queued, ApiError> {
        self.ctx
            .send_command(&self.cause(Some(op_id.clone())), cmd)
            .await
            .map_err(api_error)?;
        Ok(Queued {
            op_id,
            approval: None,
        })
    }

    /// Holds `held` for the approval `decision` asks: stored, announced, answered with the
    /// approval id and the operation id it will run under.
    async fn hold(
        &self,
        credential: &CredentialId,
        decision: Decision,
        held: Held,
        op_id: String,
        reason: &str,
    ) -> Result<Queued, ApiError> {
        let Outcome::Approve(need) = decision.outcome else {
            unreachable!("held only for an approval");
        };
        let now = OffsetDateTime::now_utc();
        let id = format!("ap-{}", uuid::Uuid::now_v7());
        let mut approval = Approval::new(
            id.clone(),
            self.actor,
            credential.as_str(),
            reason,
            need,
            decision.policies,
            held,
            now,
            time::Duration::try_from(self.ctx.approval_settings.open_for)
                .unwrap_or(time::Duration::minutes(15)),
        );
        approval.correlation = Some(op_id.clone());
        self.ctx
            .approvals
            .create_approval(&approval)
            .await
            .map_err(api_error)?;
        approvals::announce_requested(self.ctx, &self.cause(Some(op_id.clone())), &approval, now)
            .await
            .map_err(api_error)?;
        tracing::info!(actor = self.actor, credential = %credential, approval = %id, action = %approval.action, "held for approval");
        Ok(Queued {
            op_id,
            approval: Some(id),
        })
    }
}

/// Offboards `id` as `by` for `reason` under `op_id`: the record says retired (so nothing
/// rotates or falls due again), the role or secret is free for another credential, `retired`
/// is published, and every live version is revoked by the revoker. The history stays.
pub(super) async fn retire_now(
    ctx: &WorkerContext,
    cause: &Cause,
    id: &CredentialId,
    by: &str,
    reason: &str,
    op_id: &str,
) -> Result<(), Error> {
    let now = OffsetDateTime::now_utc();
    let cred = crate::claim::update_credential(ctx, id, |c| {
        if c.retired.is_some() {
            return Ok(Change::Keep(c.clone()));
        }
        c.retired = Some(Retired {
            at: now,
            by: by.to_owned(),
            reason: reason.to_owned(),
        });
        c.rotation_retry = None;
        Ok(Change::Write(c.clone()))
    })
    .await?;
    for key in cred.settings.bindings(cred.store, cred.target) {
        ctx.inventory.unbind(&key, id).await?;
    }
    let mut data = LifecycleData::new(LifecycleKind::Retired, Some(id.clone()), None);
    data.detail = Some(reason.to_owned());
    cause.publish(ctx, op_id, data).await?;
    let cmd = RevokeCommand {
        credential: id.clone(),
        version: None,
        reason: RevokeReason::Manual,
        op_id: op_id.to_owned(),
        leak_published_at: None,
        then_rotate: false,
        note: Some(format!("retired: {reason}")),
        released_by: None,
    };
    ctx.send_command(cause, cmd).await
}
