//! When a rotation gives up: it is rolled back (or forward) as its record says, and
//! `rotation_failed`, a metric and the next attempt say so (see the module docs of `rotator`).

use super::finish;
use crate::context::WorkerContext;
use crate::error::{Error, ErrorKind};
use crate::ops::{self, Cause, RevokeVersion, backend, version_for_op};
use keyloop_core::event::RotateCommand;
use keyloop_core::{
    AtTarget, Credential, LifecycleData, LifecycleKind, PendingUndo, RevokeReason, RotationReason,
    RotationRetry, Secret, Stage,
};
use keyloop_nats::{Change, DueItem};
use time::OffsetDateTime;
use tracing::info;
use uuid::Uuid;

/// The rotation gave up with `error`. Its pending version (if it got that far) is retired as
/// the record says — rolled back — and when that cannot be done, the rotation is finished
/// instead if the new value is in hand and logs in (rolled forward; then this returns `Ok`).
/// Then `rotation_failed` says what failed and what state it left, a metric counts it, a
/// scheduled or leak rotation is filed to be tried again, and the error goes back to the
/// runtime (the DLQ).
pub(super) async fn give_up(
    ctx: &WorkerContext,
    cmd: &RotateCommand,
    cause: &Cause,
    error: Error,
    in_hand: Option<Secret>,
) -> Result<(), Error> {
    let version = version_for_op(&cmd.op_id);
    let outcome = match crate::claim::read_credential(ctx, &cmd.credential).await {
        Err(e) => {
            format!("its pending version could not be checked ({e}); the next rotation repairs it")
        }
        Ok(cred) => match cred.version(version) {
            Some(v) if v.stage == Stage::Pending => {
                let undo = cred.undo_of_pending(version);
                let retire = RevokeVersion {
                    credential: &cmd.credential,
                    version,
                    reason: RevokeReason::Superseded,
                    op: &cmd.op_id,
                    leak_published_at: None,
                    note: Some("its rotation failed".into()),
                };
                match ops::revoke_version(ctx, retire, cause).await {
                    Ok(_) => describe_rollback(&cred, version, undo),
                    Err(rollback) if v.at_target == AtTarget::Set => {
                        match roll_forward(ctx, cmd, cause, version, in_hand).await {
                            Ok(()) => {
                                tracing::warn!(credential = %cmd.credential, op = %cmd.op_id, %error, %rollback, "rotation rolled forward: the rollback failed, the new value works at the target and is current");
                                return Ok(());
                            }
                            Err(forward) => format!(
                                "it could neither roll back ({rollback}) nor forward ({forward}): pending version {version} is kept, nothing was destroyed, and the next rotation repairs it"
                            ),
                        }
                    }
                    Err(rollback) => format!(
                        "its pending version {version} could not be retired ({rollback}); the target never got it, and the next rotation retires it"
                    ),
                }
            }
            _ => "nothing to undo: it stopped before it created a new version".to_owned(),
        },
    };
    rotation_failed(ctx, cmd, cause, &error, &outcome).await;
    Err(error)
}

/// Words for the audit log on what a rollback did.
fn describe_rollback(cred: &Credential, version: Uuid, undo: PendingUndo) -> String {
    let current = cred
        .current()
        .map_or("no version".to_owned(), |v| format!("version {}", v.id));
    match undo {
        PendingUndo::Nothing => format!(
            "rolled back: the target never got the new value; {current} stays current and pending version {version} is retired"
        ),
        PendingUndo::Restore { holder } => format!(
            "rolled back: the account was given version {holder}'s value back; {current} stays current and pending version {version} is retired"
        ),
        PendingUndo::Invalidate => format!(
            "rolled back: the new value's account was disabled; {current} stays current and pending version {version} is retired"
        ),
    }
}

/// Finishes a rotation whose rollback failed, when the new value is in hand (or still in the
/// store) and logs in at the target: then the target already works with it, and making it
/// current is the safe way out.
async fn roll_forward(
    ctx: &WorkerContext,
    cmd: &RotateCommand,
    cause: &Cause,
    version: Uuid,
    in_hand: Option<Secret>,
) -> Result<(), Error> {
    let cred = crate::claim::read_credential(ctx, &cmd.credential).await?;
    let store = ctx.backends.store(cred.store)?;
    let target = ctx.backends.target(cred.target)?;
    let value = match in_hand {
        Some(v) => v,
        None => store
            .get(&cred, version)
            .await
            .map_err(|e| backend(e, "read the new value"))?
            .ok_or_else(|| {
                Error::msg(
                    ErrorKind::Permanent,
                    format!("the value of pending version {version} is not in its store"),
                )
            })?,
    };
    target
        .test(&cred, version, &value)
        .await
        .map_err(|e| backend(e, "test the new value at the target"))?;
    finish(ctx, cmd, cause, cred, version, &value).await
}

/// The rotation gave up: say so in the audit log (with `outcome`: the state it left), the log
/// and the metrics, and file the next attempt of a scheduled or leak rotation. Best effort: the
/// message goes to the DLQ anyway.
pub(super) async fn rotation_failed(
    ctx: &WorkerContext,
    cmd: &RotateCommand,
    cause: &Cause,
    error: &Error,
    outcome: &str,
) {
    keyloop_nats::metrics::global().rotation_failed();
    tracing::error!(credential = %cmd.credential, op = %cmd.op_id, %error, outcome, "rotation failed");
    let mut data = LifecycleData::new(
        LifecycleKind::RotationFailed,
        Some(cmd.credential.clone()),
        Some(version_for_op(&cmd.op_id)),
    );
    data.rotation_reason = Some(cmd.reason);
    data.detail = Some(format!("{error}; {outcome}"));
    if let Err(e) = cause.publish(ctx, &cmd.op_id, data).await {
        tracing::warn!(credential = %cmd.credential, error = %e, "could not publish rotation_failed");
    }
    if matches!(cmd.reason, RotationReason::Scheduled | RotationReason::Leak)
        && let Err(e) = schedule_retry(ctx, cmd, error).await
    {
        tracing::error!(credential = %cmd.credential, error = %e, "could not file the next attempt of a failed rotation; `keyloop rotate` it by hand");
    }
}

/// Records one more failure in a row and files the next attempt with the sweeper.
async fn schedule_retry(
    ctx: &WorkerContext,
    cmd: &RotateCommand,
    error: &Error,
) -> Result<(), Error> {
    let now = OffsetDateTime::now_utc();
    let op = cmd.op_id.as_str();
    let retry = crate::claim::update_credential(ctx, &cmd.credential, |c| {
        // One failure per operation: a redelivered give-up counts once.
        if c.rotation_retry.as_ref().is_some_and(|r| r.failed_op == op) {
            return Ok(Change::Keep(c.rotation_retry.clone()));
        }
        let failures = c.rotation_retry.as_ref().map_or(0, |r| r.failures) + 1;
        c.rotation_retry = Some(RotationRetry {
            reason: cmd.reason,
            failures,
            next_attempt_at: now + RotationRetry::delay_after(failures),
            last_error: error.to_string(),
            failed_op: op.to_owned(),
        });
        Ok(Change::Write(c.rotation_retry.clone()))
    })
    .await?;
    if let Some(r) = retry {
        ctx.due
            .schedule(
                DueItem::Rotate {
                    credential: cmd.credential.clone(),
                },
                r.next_attempt_at,
                now,
            )
            .await?;
        info!(credential = %cmd.credential, failures = r.failures, next_attempt_at = %r.next_attempt_at, "failed rotation will be tried again");
    }
    Ok(())
}
