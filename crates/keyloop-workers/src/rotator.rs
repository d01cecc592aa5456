//! rotator: `cmd.rotate` → the rotation protocol, each step recorded before the next so any
//! replica can resume after a crash:
//!
//! 1. `create_pending` — a value from the OS CSPRNG stored under a version id derived from the
//!    operation id, recorded `pending`, its fingerprints indexed, `rotation_started` published;
//! 2. `set` — applied at the target; a live previous version on the same target account (the
//!    role an `alternating` rotation reuses) is retired first, since the new password replaces
//!    its value there;
//! 3. `test` — read back from the store and tested at the target;
//! 4. `finish` — a live previous version is retired (`revoked`, `superseded`), the store
//!    promotes the new version (AWS Secrets Manager: `AWSCURRENT`), then pending → current and
//!    current → previous in one compare-and-set; `rotated` published.
//!
//! A pending version left by another, interrupted operation is retired first, so a crashed
//! rotation never blocks the next one. Redelivery is harmless: every step checks the recorded
//! state and events have ids derived from the operation id.

use crate::context::WorkerContext;
use crate::decode;
use crate::ops::{self, Cause, RevokeVersion, backend, version_for_op};
use futures::FutureExt;
use keyloop_core::event::{CloudEvent, ROTATE_COMMAND_TYPE, RotateCommand};
use keyloop_core::{Fingerprint, LifecycleData, LifecycleKind, RevokeReason, Stage, Version};
use keyloop_nats::{Change, Delivery, Error, ErrorKind, FingerprintRef, Handler, HandlerError};
use std::sync::Arc;
use time::OffsetDateTime;
use tracing::info;

const SOURCE: &str = "keyloop/rotator";

/// The handler of `<prefix>.cmd.rotate`.
pub fn handler(ctx: Arc<WorkerContext>) -> Handler {
    Arc::new(move |delivery| {
        let ctx = ctx.clone();
        async move { rotate(&ctx, &delivery).await }.boxed()
    })
}

async fn rotate(ctx: &WorkerContext, delivery: &Delivery) -> Result<(), HandlerError> {
    let command: CloudEvent<RotateCommand> =
        decode::cloud_event(&delivery.message.payload, ROTATE_COMMAND_TYPE)?;
    let cause = Cause {
        source: SOURCE.into(),
        correlation: command.correlationid.clone(),
        causation: Some(command.id.clone()),
    };
    let cmd = &command.data;
    let attempt = async {
        let result = run_rotation(ctx, cmd, &cause).await;
        match result {
            Err(e) if ops::gives_up(&e, delivery.last_attempt) => {
                rotation_failed(ctx, cmd, &cause, &e).await;
                Err(e)
            }
            other => other,
        }
    };
    ops::with_claim(ctx, &cmd.credential, &cmd.op_id, attempt)
        .await
        .map_err(HandlerError::from)
}

/// The rotation gave up (a permanent error, or the last delivery): say so in the audit log and
/// the metrics, and retire its pending version, so the next rotation starts clean. The current
/// version is untouched: it was never demoted. Best effort: the message goes to the DLQ anyway.
async fn rotation_failed(ctx: &WorkerContext, cmd: &RotateCommand, cause: &Cause, error: &Error) {
    keyloop_nats::metrics::global()
        .rotation_failed
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let version = version_for_op(&cmd.op_id);
    tracing::error!(credential = %cmd.credential, op = %cmd.op_id, %error, "rotation failed; the current version stays");
    let mut data = LifecycleData::new(
        LifecycleKind::RotationFailed,
        Some(cmd.credential.clone()),
        Some(version),
    );
    data.rotation_reason = Some(cmd.reason);
    data.detail = Some(error.to_string());
    if let Err(e) = cause.publish(ctx, &cmd.op_id, data).await {
        tracing::warn!(credential = %cmd.credential, error = %e, "could not publish rotation_failed");
    }
    let pending = matches!(
        ctx.inventory.get(&cmd.credential).await,
        Ok(Some((c, _))) if c.version(version).is_some_and(|v| v.stage == Stage::Pending)
    );
    if pending {
        let retire = RevokeVersion {
            credential: &cmd.credential,
            version,
            reason: RevokeReason::Superseded,
            op: &cmd.op_id,
            leak_published_at: None,
            note: Some("its rotation failed".into()),
        };
        if let Err(e) = ops::revoke_version(ctx, retire, cause).await {
            tracing::warn!(credential = %cmd.credential, %version, error = %e, "could not retire the failed rotation's pending version; the next rotation will");
        }
    }
}

/// Runs (or resumes) the rotation `cmd.op_id` of `cmd.credential` to the end. The caller holds
/// the credential's claim (see `ops::with_claim`).
pub async fn run_rotation(
    ctx: &WorkerContext,
    cmd: &RotateCommand,
    cause: &Cause,
) -> Result<(), Error> {
    let id = &cmd.credential;
    let op = cmd.op_id.as_str();
    let new_version = version_for_op(op);
    let (cred, _) = ctx.inventory.require(id).await?;
    let store = ctx.backends.store(cred.store)?;
    let target = ctx.backends.target(cred.target)?;

    match cred.version(new_version).map(|v| v.stage) {
        Some(Stage::Current | Stage::Previous) => {
            // Finished on an earlier attempt; make sure its schedule and `rotated` are out.
            let activated = cred.version(new_version).and_then(|v| v.activated_at);
            let demoted = cred
                .versions
                .iter()
                .find(|v| {
                    v.stage == Stage::Previous
                        && v.demoted_at.is_some()
                        && v.demoted_at == activated
                })
                .map(|v| v.id);
            ops::schedule_after_rotation(ctx, &cred, demoted, OffsetDateTime::now_utc()).await?;
            return publish_rotated(ctx, cmd, cause, new_version, demoted).await;
        }
        Some(Stage::Revoked) => {
            info!(credential = %id, version = %new_version, "rotation's version was revoked before it finished (leaked mid-rotation?); nothing to do");
            return Ok(());
        }
        Some(Stage::Pending) | None => {}
    }

    // A pending version of another operation is an interrupted rotation: retire it so it can
    // never be promoted behind our back, and so it does not block this one.
    for stale in cred
        .versions
        .iter()
        .filter(|v| v.stage == Stage::Pending && v.id != new_version)
    {
        // Its operation may have died before announcing it: publish its `rotation_started`
        // under that operation's own step id (a duplicate if it was already out), so the audit
        // log has exactly one creation event for every version.
        let mut started = LifecycleData::new(
            LifecycleKind::RotationStarted,
            Some(id.clone()),
            Some(stale.id),
        );
        started.stage = Some(Stage::Pending);
        started.fingerprint = Some(stale.fingerprint.clone());
        cause.publish(ctx, &stale.created_by, started).await?;
        ops::revoke_version(
            ctx,
            RevokeVersion {
                credential: id,
                version: stale.id,
                reason: RevokeReason::Superseded,
                op,
                leak_published_at: None,
                note: Some(format!("abandoned pending version of {}", stale.created_by)),
            },
            cause,
        )
        .await?;
    }

    // 1. create_pending
    let value = store
        .put_new(&cred, new_version, keyloop_backends::generate_value())
        .await
        .map_err(|e| backend(e, "store the pending value"))?;
    let fingerprint = Fingerprint::of(&value);
    let now = OffsetDateTime::now_utc();
    let pending = Version {
        id: new_version,
        stage: Stage::Pending,
        fingerprint: fingerprint.clone(),
        created_by: op.to_owned(),
        login: None,
        created_at: now,
        activated_at: None,
        demoted_at: None,
        revoked_at: None,
        revoke_reason: None,
        revoked_by: None,
    };
    // Every read below reuses the state a write returned: while this operation holds the
    // claim, nothing else changes the versions (uses only touch `last_used_at`).
    let (recorded, mut cred) = ctx
        .inventory
        .update(id, |c| match c.version(new_version) {
            Some(v) => Ok(Change::Keep((v.stage, c.clone()))),
            None => {
                let mut pending = pending.clone();
                // Decided once, with the version's record: a retry uses the recorded login.
                pending.login = c.login_for_new_version();
                c.versions.push(pending);
                Ok(Change::Write((Stage::Pending, c.clone())))
            }
        })
        .await?;
    if recorded != Stage::Pending {
        // Promoted or revoked by a concurrent attempt while we were storing: nothing left to do.
        return Ok(());
    }
    ctx.fingerprints
        .put(
            &fingerprint.index_keys(),
            &FingerprintRef::Version {
                credential: id.clone(),
                version: new_version,
            },
        )
        .await?;
    let mut data = LifecycleData::new(
        LifecycleKind::RotationStarted,
        Some(id.clone()),
        Some(new_version),
    );
    data.stage = Some(Stage::Pending);
    data.fingerprint = Some(fingerprint);
    data.rotation_reason = Some(cmd.reason);
    cause.publish(ctx, op, data).await?;

    // 2. set. A previous version on the account the new value goes to stops working when it is
    // set there: retire it first, so the audit log says so before it happens.
    let mut retired_any = false;
    if let Some(login) = cred.version(new_version).and_then(|v| v.login.as_deref()) {
        for old in cred
            .versions
            .iter()
            .filter(|v| v.stage == Stage::Previous && v.login.as_deref() == Some(login))
        {
            ops::revoke_version(
                ctx,
                RevokeVersion {
                    credential: id,
                    version: old.id,
                    reason: RevokeReason::Superseded,
                    op,
                    leak_published_at: None,
                    note: Some(format!("its account {login} takes the new value")),
                },
                cause,
            )
            .await?;
            retired_any = true;
        }
    }
    if retired_any {
        cred = ctx.inventory.require(id).await?.0;
    }
    if cred.version(new_version).map(|v| v.stage) != Some(Stage::Pending) {
        info!(credential = %id, version = %new_version, "pending version was revoked before it was set (leaked mid-rotation?); nothing to do");
        return Ok(());
    }
    target
        .apply(&cred, new_version, &value)
        .await
        .map_err(|e| backend(e, "set the new value at the target"))?;
    // 3. test
    let stored = store
        .get(&cred, new_version)
        .await
        .map_err(|e| backend(e, "read back the pending value"))?;
    if stored.as_ref() != Some(&value) {
        return Err(Error::msg(
            ErrorKind::Transient,
            format!(
                "credential {id}: pending version {new_version} does not read back from its store"
            ),
        ));
    }
    drop(stored);
    target
        .test(&cred, new_version, &value)
        .await
        .map_err(|e| backend(e, "test the new value at the target"))?;

    // 4. finish: at most one previous version may be live, so retire the one a new demotion
    // would replace before the promotion is stored.
    let mut retired_previous = false;
    if cred.current().is_some()
        && let Some(old_previous) = cred.in_stage(Stage::Previous)
    {
        // If its grace is over anyway, this is the same retirement the sweeper would do: same
        // reason and operation id, so whichever runs first, one `revoked` (grace_ended) results.
        let grace = std::time::Duration::from_secs(cred.policy.grace_secs);
        let grace_over = old_previous
            .demoted_at
            .is_none_or(|d| d + grace <= OffsetDateTime::now_utc());
        let retire_op = format!("retire/{id}/{}", old_previous.id);
        let (reason, revoke_op) = if grace_over {
            (RevokeReason::GraceEnded, retire_op.as_str())
        } else {
            (RevokeReason::Superseded, op)
        };
        ops::revoke_version(
            ctx,
            RevokeVersion {
                credential: id,
                version: old_previous.id,
                reason,
                op: revoke_op,
                leak_published_at: None,
                note: None,
            },
            cause,
        )
        .await?;
        retired_previous = true;
    }
    if retired_previous {
        cred = ctx.inventory.require(id).await?.0;
    }
    if cred.version(new_version).map(|v| v.stage) == Some(Stage::Pending) {
        // The store first (AWS Secrets Manager: AWSCURRENT moves), then the inventory: a crash
        // in between leaves the version pending, and the retry promotes it again, harmlessly.
        store
            .promote(&cred, new_version, cred.current().map(|v| v.id))
            .await
            .map_err(|e| backend(e, "promote the new value in its store"))?;
    }
    let now = OffsetDateTime::now_utc();
    let (promotion, promoted_cred) = ctx
        .inventory
        .update(id, |c| {
            let p = c.promote(new_version, now);
            Ok(if p.promoted {
                Change::Write((p, c.clone()))
            } else {
                Change::Keep((p, c.clone()))
            })
        })
        .await?;
    if !promotion.promoted {
        let (cred, _) = ctx.inventory.require(id).await?;
        if let Some(v) = cred
            .version(new_version)
            .filter(|v| v.stage == Stage::Revoked)
        {
            // A revocation (a leak of the pending value?) won the race with this attempt, which
            // may have set the value at the target after the revocation invalidated it: make
            // sure it is dead there again.
            target
                .invalidate(
                    &cred,
                    new_version,
                    Some(&value),
                    v.revoke_reason.unwrap_or(RevokeReason::Superseded),
                )
                .await
                .map_err(|e| backend(e, "invalidate again a version revoked mid-rotation"))?;
            info!(credential = %id, version = %new_version, "pending version was revoked before it could be promoted");
            return Ok(());
        }
    }
    drop(value);
    ops::schedule_after_rotation(ctx, &promoted_cred, promotion.demoted, now).await?;
    publish_rotated(ctx, cmd, cause, new_version, promotion.demoted).await
}

async fn publish_rotated(
    ctx: &WorkerContext,
    cmd: &RotateCommand,
    cause: &Cause,
    version: uuid::Uuid,
    demoted: Option<uuid::Uuid>,
) -> Result<(), Error> {
    let mut data = LifecycleData::new(
        LifecycleKind::Rotated,
        Some(cmd.credential.clone()),
        Some(version),
    );
    data.stage = Some(Stage::Current);
    data.previous_version = demoted;
    data.rotation_reason = Some(cmd.reason);
    cause.publish(ctx, &cmd.op_id, data).await?;
    info!(credential = %cmd.credential, %version, reason = ?cmd.reason, "rotated");
    Ok(())
}
