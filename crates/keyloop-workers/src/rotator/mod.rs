//! rotator: `cmd.rotate` → the rotation protocol, each step recorded before the next so any
//! replica can resume after a crash:
//!
//! 1. `create_pending` — a value from the OS CSPRNG stored under a version id derived from the
//!    operation id, recorded `pending` (`at_target: not_set`), its fingerprints indexed,
//!    `rotation_started` published;
//! 2. `set` — a live previous version on the account the new value goes to (the role an
//!    `alternating` rotation reuses) is retired first, since the new password replaces its value
//!    there; then `at_target: set` is recorded and the value applied at the target;
//! 3. `test` — read back from the store (the local store's acknowledged write is its own proof)
//!    and tested at the target;
//! 4. `finish` — a live previous version is retired (`revoked`, `superseded`), the store
//!    promotes the new version (AWS Secrets Manager: `AWSCURRENT`), then pending → current and
//!    current → previous in one compare-and-set; `rotated` published.
//!
//! **If it stops anywhere.** A crash leaves the recorded state; the redelivered command resumes
//! it (every step checks the record; events have ids derived from the operation id). A rotation
//! that gives up (a permanent error, or a transient one on the last delivery) repairs what it
//! started before it reports `rotation_failed` (`give_up`): it *rolls back* — the pending
//! version is retired as the record says (`ops::revoke_version`): nothing to undo when the target
//! never got it; for a value set on the current version's own account (`single`), the current
//! value is given back and tested; an unused account of an `alternating` pair is disabled — or,
//! when the rollback itself cannot be done, it *rolls forward* if the new value is in hand and
//! logs in (finish). Never does a failed rotation disable an account a live version needs, or
//! destroy a value the target still accepts. If neither works, nothing is destroyed and the
//! pending version is repaired the same way by the next rotation, which retires any pending
//! version of another operation first — a crashed rotation never blocks the next one.
//!
//! A failed scheduled rotation (or the rotation after a leak, which leaves the credential
//! without a current version) is tried again later: the credential records the failures in a
//! row and the next attempt (`RotationRetry`), and the sweeper issues it when it falls due.

use crate::context::WorkerContext;
use crate::decode;
use crate::error::{Error, ErrorKind};
use crate::ops::{self, Cause, RevokeVersion, backend, version_for_op};
use futures::FutureExt;
use keyloop_core::event::RotateCommand;
use keyloop_core::{
    AtTarget, Credential, Fingerprint, LifecycleData, LifecycleKind, RevokeReason, Secret, Stage,
    Version,
};
use keyloop_nats::{Change, Delivery, FingerprintRef, Handler, HandlerError};
use std::sync::Arc;
use time::OffsetDateTime;
use tracing::info;
use uuid::Uuid;

mod failure;

use failure::{give_up, rotation_failed};

const SOURCE: &str = "keyloop/rotator";

/// The handler of `<prefix>.cmd.rotate`.
pub fn handler(ctx: Arc<WorkerContext>) -> Handler {
    Arc::new(move |delivery| {
        let ctx = ctx.clone();
        async move { rotate(&ctx, &delivery).await }.boxed()
    })
}

async fn rotate(ctx: &WorkerContext, delivery: &Delivery) -> Result<(), HandlerError> {
    let command = decode::command::<RotateCommand>(&delivery.message.payload)?;
    let cause = Cause::of(SOURCE, &command);
    execute(ctx, &command.data, &cause, delivery.last_attempt)
        .await
        .map_err(HandlerError::from)
}

/// Runs (or resumes) the rotation `cmd` holding the credential's claim. When it gives up (a
/// permanent error, or a transient one when `last_attempt`), it repairs what it started (see
/// `give_up`) and returns the error; `Ok` when the rotation finished, also by rolling forward.
pub async fn execute(
    ctx: &WorkerContext,
    cmd: &RotateCommand,
    cause: &Cause,
    last_attempt: bool,
) -> Result<(), Error> {
    let attempt = async {
        let mut in_hand = None;
        match run_rotation(ctx, cmd, cause, &mut in_hand).await {
            Err(e) if ops::gives_up(&e, last_attempt) => give_up(ctx, cmd, cause, e, in_hand).await,
            other => other,
        }
    };
    match crate::claim::with_claim(ctx, &cmd.credential, &cmd.op_id, attempt).await {
        Err(e) if e.kind() == ErrorKind::Busy && last_attempt => {
            rotation_failed(
                ctx,
                cmd,
                cause,
                &e,
                "it never started, so nothing changed: another operation held the credential on every delivery",
            )
            .await;
            Err(e)
        }
        other => other,
    }
}

/// Runs (or resumes) the rotation `cmd.op_id` of `cmd.credential` to the end. The caller holds
/// the credential's claim (see `claim::with_claim`). The new value, once created, is left in
/// `in_hand` for the give-up path.
pub async fn run_rotation(
    ctx: &WorkerContext,
    cmd: &RotateCommand,
    cause: &Cause,
    in_hand: &mut Option<Secret>,
) -> Result<(), Error> {
    let id = &cmd.credential;
    let op = cmd.op_id.as_str();
    let new_version = version_for_op(op);
    let cred = crate::claim::read_credential(ctx, id).await?;
    if cred.retired.is_some() {
        info!(credential = %id, "credential is retired; nothing to rotate");
        return Ok(());
    }
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
            info!(credential = %id, version = %new_version, "rotation's version was revoked before it finished (leaked mid-rotation, or rolled back); nothing to do");
            return Ok(());
        }
        Some(Stage::Pending) | None => {}
    }
    if let Some(registering) = cred
        .versions
        .iter()
        .find(|v| v.stage == Stage::Pending && ops::is_registration(&v.created_by))
    {
        return Err(Error::msg(
            ErrorKind::Permanent,
            format!(
                "credential {id} is not registered yet: its registration ({}) has not finished; run the same `keyloop credential register {id} …` again to finish it",
                registering.created_by
            ),
        ));
    }

    // A pending version of another operation is an interrupted or failed rotation: retire it
    // (undone at the target as its record says) so it can never be promoted behind our back,
    // and so it does not block this one.
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
        started.fingerprint = stale.fingerprint.clone();
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

    // 1. create_pending. Stopping after the store write leaves a value no record names: the
    // retry stores under the same version id, and gets this value back.
    let fresh = keyloop_backends::generate_value(cred.settings.value_format());
    let value = store
        .put_new(&cred, new_version, fresh)
        .await
        .map_err(|e| backend(e, "store the pending value"))?;
    *in_hand = Some(value.clone());
    let fingerprint = Fingerprint::of(&value);
    let pending = Version::pending(
        new_version,
        fingerprint.clone(),
        op,
        None,
        OffsetDateTime::now_utc(),
    );
    // Every read below reuses the state a write returned: while this operation holds the
    // claim, nothing else changes the versions (uses only touch `last_used_at`).
    let (recorded, cred) =
        crate::claim::update_credential(ctx, id, |c| match c.version(new_version) {
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
    data.fingerprint = fingerprint.tag();
    data.rotation_reason = Some(cmd.reason);
    cause.publish(ctx, op, data).await?;

    // 2. set. A previous version on the account the new value goes to stops working when it is
    // set there: retire it first, so the audit log says so before it happens.
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
        }
    }
    // Recorded before the target is called: from here on, a failure knows the account may hold
    // the new value and undoes it (see the module docs). A target that holds no values has
    // nothing to undo, and nothing is recorded.
    let (stage, cred) = if !target.holds_values() {
        let cred = crate::claim::read_credential(ctx, id).await?;
        (cred.version(new_version).map(|v| v.stage), cred)
    } else {
        set_at_target(ctx, id, new_version).await?
    };
    if stage != Some(Stage::Pending) {
        info!(credential = %id, version = %new_version, "pending version was revoked before it was set (leaked mid-rotation?); nothing to do");
        return Ok(());
    }
    target
        .apply(&cred, new_version, &value)
        .await
        .map_err(|e| backend(e, "set the new value at the target"))?;
    // 3. test. A store whose acknowledged write is its own proof (the local store) is not
    // read back; another one is.
    if !store.acknowledged_write_reads_back() {
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
    }
    target
        .test(&cred, new_version, &value)
        .await
        .map_err(|e| backend(e, "test the new value at the target"))?;

    // 4. finish
    finish(ctx, cmd, cause, cred, new_version, &value).await
}

/// Records that the pending version's value is about to be set at the target (unless it is no
/// longer pending); returns its stage and the record.
async fn set_at_target(
    ctx: &WorkerContext,
    id: &keyloop_core::CredentialId,
    new_version: Uuid,
) -> Result<(Option<Stage>, Credential), Error> {
    crate::claim::update_credential(ctx, id, |c| {
        let stage = c.version(new_version).map(|v| v.stage);
        match c.version_mut(new_version) {
            Some(v) if v.stage == Stage::Pending && v.at_target == AtTarget::NotSet => {
                v.at_target = AtTarget::Set;
                Ok(Change::Write((stage, c.clone())))
            }
            _ => Ok(Change::Keep((stage, c.clone()))),
        }
    })
    .await
}

/// The `finish` step: the previous version a new demotion would replace is retired (at most
/// one previous is live), the store promotes the new version, then the inventory does (pending
/// → current, current → previous, failures in a row cleared) and `rotated` is published. A
/// crash between the store and the inventory leaves the version pending; the retry promotes it
/// again, harmlessly.
async fn finish(
    ctx: &WorkerContext,
    cmd: &RotateCommand,
    cause: &Cause,
    mut cred: Credential,
    new_version: Uuid,
    value: &Secret,
) -> Result<(), Error> {
    let id = &cmd.credential;
    let op = cmd.op_id.as_str();
    let store = ctx.backends.store(cred.store)?;
    let target = ctx.backends.target(cred.target)?;
    if cred.current().is_some()
        && let Some(old_previous) = cred.in_stage(Stage::Previous)
    {
        // If its grace is over anyway, this is the same retirement the sweeper would do: same
        // reason and operation id, so whichever runs first, one `revoked` (grace_ended) results.
        let grace_over = old_previous.demoted_at.is_none_or(|d| {
            keyloop_core::duration::checked_after(d, cred.policy.grace_secs)
                .is_some_and(|end| end <= OffsetDateTime::now_utc())
        });
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
        cred = crate::claim::read_credential(ctx, id).await?;
    }
    if cred.version(new_version).map(|v| v.stage) == Some(Stage::Pending) {
        store
            .promote(&cred, new_version, cred.current().map(|v| v.id))
            .await
            .map_err(|e| backend(e, "promote the new value in its store"))?;
    }
    let now = OffsetDateTime::now_utc();
    let (promotion, promoted_cred) = crate::claim::update_credential(ctx, id, |c| {
        let p = c.promote(new_version, now);
        if p.promoted {
            c.rotation_retry = None;
            Ok(Change::Write((p, c.clone())))
        } else {
            Ok(Change::Keep((p, c.clone())))
        }
    })
    .await?;
    if !promotion.promoted
        && let Some(v) = promoted_cred
            .version(new_version)
            .filter(|v| v.stage == Stage::Revoked)
    {
        // A revocation (a leak of the pending value?) won the race with this attempt, which
        // may have set the value at the target after the revocation invalidated it: make sure
        // it is dead there again.
        target
            .invalidate(
                &promoted_cred,
                new_version,
                Some(value),
                v.revoke_reason.unwrap_or(RevokeReason::Superseded),
            )
            .await
            .map_err(|e| backend(e, "invalidate again a version revoked mid-rotation"))?;
        info!(credential = %id, version = %new_version, "pending version was revoked before it could be promoted");
        return Ok(());
    }
    ops::schedule_after_rotation(ctx, &promoted_cred, promotion.demoted, now).await?;
    if let Some(v) = promoted_cred
        .version(new_version)
        .filter(|_| promotion.promoted)
    {
        keyloop_nats::metrics::global().rotated(cmd.reason.name(), now - v.created_at);
    }
    publish_rotated(ctx, cmd, cause, new_version, promotion.demoted).await
}

async fn publish_rotated(
    ctx: &WorkerContext,
    cmd: &RotateCommand,
    cause: &Cause,
    version: Uuid,
    demoted: Option<Uuid>,
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
