//! leak-responder: matches a leak finding's fingerprint to a credential version. A live match
//! publishes `leak_matched` and a `cmd.revoke` (then rotate, if the leaked version is current or
//! pending); a dead version gives `leak_inert`, an unknown digest `leak_unmatched`.
//!
//! One leaked version gets one revocation and at most one rotation, however many leaks name it
//! (findings in one report, several reports, several detectors): the revocation's operation id
//! derives from the credential and version alone ([`revocation_op`]), not from the leak, and so
//! does its command's message id within a minute (`keyloop_core::event::LEAK_RESEND_AFTER_SECS`). A second leak arriving
//! while the first one's command is queued publishes the same command, which `KEYLOOP_COMMANDS`
//! drops as a duplicate; one arriving after the version is revoked finds it dead and gives
//! `leak_inert`. A leak of a version still live a minute after an earlier one means that
//! revocation failed or is stuck, so its command is sent again, for the same operation: the
//! revoker recognizes a version it already revoked (`revoked_by`), and the rotation follow-up has
//! the same operation id (and message id), which the rotator finds done, so nothing happens
//! twice. The revocation's `time_to_revoke_ms` counts from the publish of the leak whose command
//! got through, the first one handled. Each leak is still a fact for the audit log: every match
//! publishes its own `leak_matched`, which names the one operation (`op_id`).
//!
//! Redelivery is harmless: the events have ids derived from the leak id and the version, the
//! command from the version and the leak's publish time, so a second pass publishes duplicates
//! that the streams drop.
//!
//! In a process that also runs the revoker (and the rotator), the revocation (and the
//! replacement) is done here, with no command between ([`in_process`]); the command is sent
//! only when that cannot be done now.

mod in_process;

pub use in_process::InProcess;

use crate::context::WorkerContext;
use crate::ops::Cause;
use crate::{decode, revoker};
use futures::FutureExt;
use keyloop_core::event::{CloudEvent, LEAK_DETECTED_TYPE, RevokeCommand};
use keyloop_core::event::{RevokeLeaseCommand, lease_event};
use keyloop_core::lease::LeaseState;
use keyloop_core::{
    Credential, CredentialId, LeakFinding, LifecycleData, LifecycleKind, RevokeReason, Stage,
    Version,
};
use keyloop_nats::{Delivery, FingerprintRef, Handler, HandlerError};
use std::sync::Arc;
use tracing::info;

const SOURCE: &str = "keyloop/leak-responder";

/// The one revocation operation of leaked version `version` of `credential`, whichever leak
/// asks for it (see the module docs).
pub fn revocation_op(credential: &CredentialId, version: uuid::Uuid) -> String {
    format!("leak-revoke/{credential}/{version}")
}

/// The one revocation operation of a leaked JIT lease, whichever leak asks for it.
pub fn lease_revocation_op(lease: uuid::Uuid) -> String {
    format!("leak-revoke-lease/{lease}")
}

/// The handler of `<prefix>.leak.detected`, in a process that also does `how`.
pub fn handler(ctx: Arc<WorkerContext>, how: InProcess) -> Handler {
    Arc::new(move |delivery| {
        let ctx = ctx.clone();
        async move { respond(&ctx, how, &delivery).await }.boxed()
    })
}

async fn respond(
    ctx: &WorkerContext,
    how: InProcess,
    delivery: &Delivery,
) -> Result<(), HandlerError> {
    let leak: CloudEvent<LeakFinding> =
        decode::cloud_event(&delivery.message.payload, LEAK_DETECTED_TYPE)?;
    let finding = &leak.data;
    if finding.fingerprint.is_empty() {
        // The id is not quoted: it is input, and the DLQ keeps the message for inspection.
        return Err(HandlerError::permanent(
            "leak event has no digest (sha256 or sha1) to match",
        ));
    }
    let cause = Cause {
        source: SOURCE.into(),
        // A leak starts its own chain: its id is the correlation id of everything that follows.
        correlation: Some(
            leak.correlationid
                .clone()
                .unwrap_or_else(|| leak.id.clone()),
        ),
        causation: Some(leak.id.clone()),
        batch: leak.batchid.clone(),
        actor: None,
    };
    let keys = finding.fingerprint.lookup_keys();
    let target = ctx.fingerprints.lookup(&keys).await?;
    let matched = match target {
        Some(FingerprintRef::Version {
            credential,
            version,
        }) => ctx
            .inventory
            .get(&credential)
            .await?
            .and_then(|(cred, revision)| {
                let version = cred.version(version).cloned()?;
                Some((cred, revision, version))
            }),
        Some(FingerprintRef::Lease { lease }) => {
            return respond_to_lease_leak(ctx, delivery, &leak, lease, &cause).await;
        }
        None => None,
    };
    let Some((cred, revision, version)) = matched else {
        info!(leak = %leak.id, fingerprint = %finding.fingerprint, "leak matches no managed credential");
        let mut data = LifecycleData::new(LifecycleKind::LeakUnmatched, None, None);
        // No tag: the value is not one keyloop generated and may be weak, and a tag would let
        // every reader of the audit log test guesses of it (the correlation id names the leak).
        data.detail = Some(finding.detector.clone());
        cause.publish(ctx, &leak.id, data).await?;
        return Ok(());
    };
    let step = format!("{}/{}", leak.id, version.id);
    let op = revocation_op(&cred.id, version.id);
    let resuming = resumes(&version, &op, delivery.attempt);
    if version.stage == Stage::Revoked && !resuming {
        info!(leak = %leak.id, credential = %cred.id, version = %version.id, "leaked version is already revoked");
        let mut data = LifecycleData::new(
            LifecycleKind::LeakInert,
            Some(cred.id.clone()),
            Some(version.id),
        );
        data.matched_stage = Some(Stage::Revoked);
        data.detail = Some(finding.detector.clone());
        cause.publish(ctx, &step, data).await?;
        return Ok(());
    }
    info!(leak = %leak.id, credential = %cred.id, version = %version.id, stage = version.stage.name(), "leak matched a live version; revoking");
    let mut data = LifecycleData::new(
        LifecycleKind::LeakMatched,
        Some(cred.id.clone()),
        Some(version.id),
    );
    data.matched_stage = Some(version.stage);
    // The version's tag, as `created` and `credential show` print it (a leak that reported
    // only the SHA-1 would otherwise have another one); never the leaked digest itself, which
    // is the live version's.
    data.fingerprint = version
        .fingerprint
        .clone()
        .or_else(|| finding.fingerprint.tag());
    data.detail = Some(finding.detector.clone());
    data.op_id = Some(op.clone());
    cause.publish(ctx, &step, data).await?;

    let command = RevokeCommand {
        credential: cred.id.clone(),
        version: Some(version.id),
        reason: RevokeReason::Leak,
        op_id: op.clone(),
        leak_published_at: Some(delivery.published),
        // A leaked current (or in-flight pending) value leaves the credential without a working
        // one: issue a fresh current right after. A leaked previous needs no replacement.
        then_rotate: if resuming {
            replacement_due(&cred, version.id)
        } else {
            matches!(version.stage, Stage::Current | Stage::Pending)
        },
        note: None,
        released_by: None,
    };
    if how.revoke
        && in_process::revoke(
            ctx,
            how,
            &command,
            &cause,
            (cred, revision),
            delivery.attempt > 1,
        )
        .await
    {
        return Ok(());
    }
    cause.send(ctx, command).await?;
    Ok(())
}

/// Whether a leak delivered again finds the revocation its operation names done recently: a
/// process that revoked in-process died (or an event's publish failed) before the leak was
/// acked, so `revoked`, the replacement or `leak_matched` may be missing. Then the chain is done
/// again — every step finds its work done and publishes its event again under the same id,
/// which the lifecycle stream drops if it has it — rather than `leak_inert`, which would leave
/// the replacement undone. Recently: well within the lifecycle stream's dedup window, so no
/// event is ever stored twice.
fn resumes(version: &Version, op: &str, attempt: u64) -> bool {
    let recent =
        time::OffsetDateTime::now_utc() - keyloop_nats::topology::LIFECYCLE_DEDUP_WINDOW / 2;
    attempt > 1
        && version.stage == Stage::Revoked
        && version.revoked_by.as_deref() == Some(op)
        && version.revoked_at.is_some_and(|at| at > recent)
}

/// Whether the resumed chain still owes the credential its replacement: it has no current
/// version (the revoked one was current), or the replacement started and may not have said
/// `rotated` yet.
fn replacement_due(cred: &Credential, version: uuid::Uuid) -> bool {
    let replacement = crate::ops::version_for_op(&revoker::replacement_op(&cred.id, version));
    cred.current().is_none() || cred.version(replacement).is_some()
}

/// A leaked JIT token: revoke its lease if it still works, else `leak_inert`.
async fn respond_to_lease_leak(
    ctx: &WorkerContext,
    delivery: &Delivery,
    leak: &CloudEvent<LeakFinding>,
    lease_id: uuid::Uuid,
    cause: &Cause,
) -> Result<(), HandlerError> {
    let Some(lease) = ctx.inventory.lease(lease_id).await? else {
        return Err(HandlerError::transient(format!(
            "fingerprint index points at lease {lease_id}, which is not in the inventory yet"
        )));
    };
    let step = format!("{}/{lease_id}", leak.id);
    let op = lease_revocation_op(lease_id);
    let live = lease.state == LeaseState::Active;
    let kind = if live {
        LifecycleKind::LeakMatched
    } else {
        LifecycleKind::LeakInert
    };
    let mut data = LifecycleData::new(kind, None, None);
    data.fingerprint = leak.data.fingerprint.tag();
    data.detail = Some(leak.data.detector.clone());
    data.op_id = live.then(|| op.clone());
    let event = lease_event(SOURCE, &step, data, &lease)
        .caused_by(cause.correlation.clone(), cause.causation.clone());
    ctx.outbox.publish_lifecycle(&event).await?;
    if !live {
        return Ok(());
    }
    info!(leak = %leak.id, lease = %lease_id, task = %lease.task_id, "leak matched a live JIT lease; revoking");
    let command = RevokeLeaseCommand {
        lease: lease_id,
        reason: RevokeReason::Leak,
        op_id: op.clone(),
        leak_published_at: Some(delivery.published),
    };
    cause.send(ctx, command).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyloop_nats::Role;
    use time::OffsetDateTime;

    fn revoked_by(op: &str, at: OffsetDateTime) -> Version {
        let mut v = Version::pending(
            uuid::Uuid::now_v7(),
            keyloop_core::Fingerprint::of(&keyloop_core::Secret::from("v")),
            "create",
            None,
            at,
        );
        v.stage = Stage::Revoked;
        v.revoked_by = Some(op.to_owned());
        v.revoked_at = Some(at);
        v
    }

    #[test]
    fn only_a_leak_delivered_again_resumes_its_own_recent_revocation() {
        let now = OffsetDateTime::now_utc();
        let ours = revoked_by("leak-revoke/svc/x/1", now);
        assert!(resumes(&ours, "leak-revoke/svc/x/1", 2));
        // A first delivery finds the version dead: another leak of it is inert.
        assert!(!resumes(&ours, "leak-revoke/svc/x/1", 1));
        // Revoked by another operation (an operator, a rotation): inert.
        assert!(!resumes(&ours, "leak-revoke/svc/x/2", 2));
        // Long ago: its events may be past the stream's dedup window, so nothing is redone.
        let old = revoked_by("leak-revoke/svc/x/1", now - time::Duration::hours(2));
        assert!(!resumes(&old, "leak-revoke/svc/x/1", 2));
    }

    #[test]
    fn a_process_revokes_in_process_only_with_the_revoker_and_replaces_only_with_the_rotator_too() {
        use Role::*;
        let of = InProcess::of;
        assert_eq!(of(&[LeakResponder]), InProcess::default());
        assert_eq!(
            of(&[LeakResponder, Revoker]),
            InProcess {
                revoke: true,
                rotate: false
            }
        );
        assert_eq!(
            of(&[Rotator, LeakResponder, Revoker]),
            InProcess {
                revoke: true,
                rotate: true
            }
        );
        // A rotator without the revoker rotates nothing here: the revocation goes by command.
        assert_eq!(of(&[LeakResponder, Rotator]), InProcess::default());
    }
}
