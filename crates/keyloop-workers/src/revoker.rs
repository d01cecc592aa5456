//! revoker: `cmd.revoke` → each named version made invalid at its target, its value destroyed,
//! recorded revoked and `revoked` published (see `ops::revoke_version`); then, for a leaked
//! current version, `cmd.rotate` so the credential gets a fresh working value.
//!
//! Redelivery is harmless: versions revoked by this operation are recognized by `revoked_by`,
//! events and the follow-up command have ids derived from the operation id.

use crate::context::WorkerContext;
use crate::decode;
use crate::ops::{self, Cause, RevokeVersion};
use futures::FutureExt;
use keyloop_core::event::{
    CloudEvent, REVOKE_COMMAND_TYPE, ROTATE_COMMAND_TYPE, RevokeCommand, RotateCommand, stable_id,
};
use keyloop_core::{RotationReason, Stage};
use keyloop_nats::{Delivery, Handler, HandlerError};
use std::sync::Arc;
use tracing::info;

const SOURCE: &str = "keyloop/revoker";

/// The handler of `<prefix>.cmd.revoke`.
pub fn handler(ctx: Arc<WorkerContext>) -> Handler {
    Arc::new(move |delivery| {
        let ctx = ctx.clone();
        async move { revoke(&ctx, &delivery).await }.boxed()
    })
}

async fn revoke(ctx: &WorkerContext, delivery: &Delivery) -> Result<(), HandlerError> {
    let command: CloudEvent<RevokeCommand> =
        decode::cloud_event(&delivery.message.payload, REVOKE_COMMAND_TYPE)?;
    let cmd = &command.data;
    let cause = Cause {
        source: SOURCE.into(),
        correlation: command.correlationid.clone(),
        causation: Some(command.id.clone()),
    };
    let (cred, revision) = ctx
        .inventory
        .require(&cmd.credential)
        .await
        .map_err(HandlerError::from)?;
    let versions: Vec<_> = match cmd.version {
        Some(v) => vec![v],
        // Every live version, plus those this operation already revoked on an earlier attempt
        // (their events may not be out yet).
        None => cred
            .versions
            .iter()
            .filter(|v| {
                v.stage != Stage::Revoked || v.revoked_by.as_deref() == Some(cmd.op_id.as_str())
            })
            .map(|v| v.id)
            .collect(),
    };
    // The first revocation starts from the state read above; each later one reads afresh,
    // since the one before changed the credential.
    let mut known = Some((cred, revision));
    for version in versions {
        let req = RevokeVersion {
            credential: &cmd.credential,
            version,
            reason: cmd.reason,
            op: &cmd.op_id,
            leak_published_at: cmd.leak_published_at,
            note: cmd.note.clone(),
        };
        let outcome = match known.take() {
            Some(state) => ops::revoke_version_from(ctx, req, &cause, state).await?,
            None => ops::revoke_version(ctx, req, &cause).await?,
        };
        info!(credential = %cmd.credential, %version, reason = cmd.reason.name(), ?outcome, "revocation step done");
    }
    if cmd.then_rotate {
        let op_id = format!("{}/rotate", cmd.op_id);
        let rotate = RotateCommand {
            credential: cmd.credential.clone(),
            reason: RotationReason::Leak,
            op_id: op_id.clone(),
        };
        let event = CloudEvent::new(
            stable_id(&format!("cmd/rotate/{op_id}")).to_string(),
            SOURCE,
            ROTATE_COMMAND_TYPE,
            rotate,
        )
        .with_subject(cmd.credential.to_string())
        .caused_by(cause.correlation.clone(), cause.causation.clone());
        ctx.bus
            .publish_event(&ctx.bus.topology.cmd_rotate(), &event)
            .await?;
    }
    Ok(())
}
