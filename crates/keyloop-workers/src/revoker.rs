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
use keyloop_core::event::{RevokeCommand, RevokeLeaseCommand, RotateCommand};
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
    // The role consumes two kinds of command; each subject carries one (see `Command`).
    if delivery.message.subject.as_str() == ctx.topology.command::<RevokeLeaseCommand>() {
        return revoke_lease(ctx, delivery).await;
    }
    let command = decode::command::<RevokeCommand>(&delivery.message.payload)?;
    let cause = Cause::of(SOURCE, &command);
    let now = time::OffsetDateTime::now_utc();
    if !crate::budget::admit(ctx, &command.data, &cause, now, None).await? {
        info!(credential = %command.data.credential, op = %command.data.op_id, reason = command.data.reason.name(), "revocation held by the revocation budget for approval");
        return Ok(());
    }
    execute(ctx, &command.data, &cause, delivery.last_attempt)
        .await
        .map_err(HandlerError::from)
}

/// Revokes what `cmd` names holding the credential's claim, then asks for the rotation a
/// leaked current version needs. When it gives up (a permanent error, or a transient one —
/// also a claim another operation kept busy — when `last_attempt`), `revocation_failed` says so
/// loudly before the error goes back to the runtime (the DLQ): a leaked value may still work.
pub async fn execute(
    ctx: &WorkerContext,
    cmd: &RevokeCommand,
    cause: &Cause,
    last_attempt: bool,
) -> Result<(), crate::error::Error> {
    let attempt = async {
        let result = revoke_versions(ctx, cmd, cause).await;
        if let Err(e) = &result
            && ops::gives_up(e, last_attempt)
        {
            revocation_failed(ctx, cmd, cause, e).await;
        }
        result
    };
    match crate::claim::with_claim(ctx, &cmd.credential, &cmd.op_id, attempt).await {
        Err(e) if e.kind() == crate::error::ErrorKind::Busy && last_attempt => {
            revocation_failed(ctx, cmd, cause, &e).await;
            return Err(e);
        }
        other => other?,
    }
    if let Some(rotate) = replacement(cmd) {
        cause.send(ctx, rotate).await?;
    }
    Ok(())
}

/// The rotation that replaces what `cmd` revoked, when it asks for one. It is one operation
/// whoever asks for it: a leak and an operator's `revoke --rotate` of the same version (or two
/// leaks of it) ask for the same command, which JetStream and the rotator deduplicate.
pub fn replacement(cmd: &RevokeCommand) -> Option<RotateCommand> {
    cmd.then_rotate.then(|| RotateCommand {
        credential: cmd.credential.clone(),
        reason: RotationReason::Leak,
        op_id: match cmd.version {
            Some(version) => replacement_op(&cmd.credential, version),
            None => format!("{}/rotate", cmd.op_id),
        },
    })
}

/// The operation of the rotation that replaces revoked version `version` of `credential`.
pub fn replacement_op(credential: &keyloop_core::CredentialId, version: uuid::Uuid) -> String {
    format!("replace/{credential}/{version}")
}

/// `cmd.lease.revoke`: end one JIT lease (see `ops::end_lease`).
async fn revoke_lease(ctx: &WorkerContext, delivery: &Delivery) -> Result<(), HandlerError> {
    let command = decode::command::<RevokeLeaseCommand>(&delivery.message.payload)?;
    let cmd = &command.data;
    let cause = Cause::of(SOURCE, &command);
    let ended = ops::end_lease(
        ctx,
        cmd.lease,
        cmd.reason,
        &cmd.op_id,
        cmd.leak_published_at,
        &cause,
    )
    .await?;
    info!(lease = %cmd.lease, reason = cmd.reason.name(), ended, "lease revocation done");
    Ok(())
}

/// Revokes the versions a command names. The caller holds the credential's claim.
pub(crate) async fn revoke_versions(
    ctx: &WorkerContext,
    cmd: &RevokeCommand,
    cause: &Cause,
) -> Result<(), crate::error::Error> {
    let versions: Vec<_> = match cmd.version {
        Some(v) => vec![v],
        // Every live version, plus those this operation already revoked on an earlier attempt
        // (their events may not be out yet).
        None => crate::claim::read_credential(ctx, &cmd.credential)
            .await?
            .versions
            .iter()
            .filter(|v| {
                v.stage != Stage::Revoked || v.revoked_by.as_deref() == Some(cmd.op_id.as_str())
            })
            .map(|v| v.id)
            .collect(),
    };
    for version in versions {
        let outcome = ops::revoke_version(
            ctx,
            RevokeVersion {
                credential: &cmd.credential,
                version,
                reason: cmd.reason,
                op: &cmd.op_id,
                leak_published_at: cmd.leak_published_at,
                note: cmd.note.clone(),
            },
            cause,
        )
        .await?;
        info!(credential = %cmd.credential, %version, reason = cmd.reason.name(), ?outcome, "revocation step done");
    }
    Ok(())
}

/// The revocation gave up: the audit log, the log and the metrics say so loudly (a leaked value
/// may still work), and the message goes to the DLQ for an operator.
async fn revocation_failed(
    ctx: &WorkerContext,
    cmd: &RevokeCommand,
    cause: &Cause,
    error: &crate::error::Error,
) {
    keyloop_nats::metrics::global().revocation_failed();
    tracing::error!(credential = %cmd.credential, op = %cmd.op_id, reason = cmd.reason.name(), %error, "revocation failed; the version may still work at its target");
    let mut data = keyloop_core::LifecycleData::new(
        keyloop_core::LifecycleKind::RevocationFailed,
        Some(cmd.credential.clone()),
        cmd.version,
    );
    data.revoke_reason = Some(cmd.reason);
    data.detail = Some(error.to_string());
    if let Err(e) = cause.publish(ctx, &cmd.op_id, data).await {
        tracing::warn!(credential = %cmd.credential, error = %e, "could not publish revocation_failed");
    }
}
