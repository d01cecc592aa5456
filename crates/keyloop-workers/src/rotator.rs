//! rotator: `cmd.rotate` → the rotation protocol, each step recorded before the next so any
//! replica can resume after a crash:
//!
//! 1. `create_pending` — a value from the OS CSPRNG stored under a version id derived from the
//!    operation id, recorded `pending`, its fingerprints indexed, `rotation_started` published;
//! 2. `set` — applied at the target;
//! 3. `test` — read back from the store and tested at the target;
//! 4. `finish` — a live previous version is retired (`revoked`, `superseded`), then
//!    pending → current and current → previous in one compare-and-set; `rotated` published.
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
    run_rotation(ctx, &command.data, &cause)
        .await
        .map_err(HandlerError::from)
}

/// Runs (or resumes) the rotation `cmd.op_id` of `cmd.credential` to the end.
pub async fn run_rotation(
    ctx: &WorkerContext,
    cmd: &RotateCommand,
    cause: &Cause,
) -> Result<(), Error> {
    let id = &cmd.credential;
    let op = cmd.op_id.as_str();
    let new_version = version_for_op(op);
    let (cred, revision) = ctx.inventory.require(id).await?;
    let store = ctx.backends.store(cred.store)?;
    let target = ctx.backends.target(cred.target)?;

    match cred.version(new_version).map(|v| v.stage) {
        Some(Stage::Current | Stage::Previous) => {
            // Finished on an earlier attempt; make sure `rotated` is out.
            return publish_rotated(ctx, cmd, cause, new_version, None).await;
        }
        Some(Stage::Revoked) => {
            info!(credential = %id, version = %new_version, "rotation's version was revoked before it finished (leaked mid-rotation?); nothing to do");
            return Ok(());
        }
        Some(Stage::Pending) | None => {}
    }

    // A pending version of another operation is an interrupted rotation: retire it so it can
    // never be promoted behind our back, and so it does not block this one.
    let stale: Vec<_> = cred
        .versions
        .iter()
        .filter(|v| v.stage == Stage::Pending && v.id != new_version)
        .map(|v| (v.id, v.created_by.clone()))
        .collect();
    // Retiring changes the credential, so the state read above serves the pending version's
    // compare-and-set only when nothing was retired.
    let known = stale.is_empty().then_some((cred, revision));
    for (stale, created_by) in stale {
        ops::revoke_version(
            ctx,
            RevokeVersion {
                credential: id,
                version: stale,
                reason: RevokeReason::Superseded,
                op,
                leak_published_at: None,
                note: Some(format!("abandoned pending version of {created_by}")),
            },
            cause,
        )
        .await?;
    }

    // 1. create_pending
    let value = store
        .put_new(id, new_version, keyloop_backends::generate_value())
        .await
        .map_err(|e| backend(e, "store the pending value"))?;
    let fingerprint = Fingerprint::of(&value);
    let now = OffsetDateTime::now_utc();
    let pending = Version {
        id: new_version,
        stage: Stage::Pending,
        fingerprint: fingerprint.clone(),
        created_by: op.to_owned(),
        created_at: now,
        activated_at: None,
        demoted_at: None,
        revoked_at: None,
        revoke_reason: None,
        revoked_by: None,
    };
    let record = |c: &mut keyloop_core::Credential| match c.version(new_version) {
        Some(v) => Ok(Change::Keep(v.stage)),
        None => {
            c.versions.push(pending.clone());
            Ok(Change::Write(Stage::Pending))
        }
    };
    let recorded = match known {
        Some(state) => ctx.inventory.update_from(id, state, record).await?,
        None => ctx.inventory.update(id, record).await?,
    };
    if recorded != Stage::Pending {
        // Promoted or revoked by a concurrent attempt while we were storing: nothing left to do.
        return Ok(());
    }
    ctx.fingerprints
        .put(
            &fingerprint.index_keys(),
            &FingerprintRef {
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

    // 2. set, 3. test
    target
        .apply(id, new_version, &value)
        .await
        .map_err(|e| backend(e, "set the new value at the target"))?;
    let stored = store
        .get(id, new_version)
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
    target
        .test(id, new_version, &value)
        .await
        .map_err(|e| backend(e, "test the new value at the target"))?;
    drop((value, stored));

    // 4. finish: at most one previous version may be live, so retire the one a new demotion
    // would replace before the promotion is stored. The state read here serves that
    // retirement, or else the promotion's compare-and-set.
    let (cred, revision) = ctx.inventory.require(id).await?;
    let old_previous = cred
        .current()
        .and(cred.in_stage(Stage::Previous))
        .map(|v| v.id);
    let known = match old_previous {
        Some(old_previous) => {
            let req = RevokeVersion {
                credential: id,
                version: old_previous,
                reason: RevokeReason::Superseded,
                op,
                leak_published_at: None,
                note: None,
            };
            ops::revoke_version_from(ctx, req, cause, (cred, revision)).await?;
            None
        }
        None => Some((cred, revision)),
    };
    let now = OffsetDateTime::now_utc();
    let promote = |c: &mut keyloop_core::Credential| {
        let p = c.promote(new_version, now);
        Ok(if p.promoted {
            Change::Write(p)
        } else {
            Change::Keep(p)
        })
    };
    let promotion = match known {
        Some(state) => ctx.inventory.update_from(id, state, promote).await?,
        None => ctx.inventory.update(id, promote).await?,
    };
    if !promotion.promoted
        && ctx
            .inventory
            .require(id)
            .await?
            .0
            .version(new_version)
            .map(|v| v.stage)
            != Some(Stage::Current)
    {
        info!(credential = %id, version = %new_version, "pending version was revoked before it could be promoted");
        return Ok(());
    }
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
