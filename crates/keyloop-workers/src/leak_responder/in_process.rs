//! A leak revoked in the process that found it. When the leak-responder's process also runs
//! the revoker (and the rotator), it does their work itself instead of sending `cmd.revoke`
//! (and `cmd.rotate`) through the work queue: no command published, pulled and acked, no second
//! read of the record, and one claim of the credential for the revocation and its replacement,
//! taken by compare-and-set on the record the match just read.
//!
//! The command path stays for everything else, and for retries: when the claim is held by
//! anyone (another operation, or this one on another replica) or a step fails, the command is
//! sent as before and the revoker (or rotator) resumes from what is recorded — every step is
//! idempotent and keyed by the same operation id, so work done here is recognized there. A
//! process that dies in the middle leaves the claim naming the operation; the leak is delivered
//! again and the chain resumes (see `super::resumes`). The events are the same, with the same
//! ids and sources, as the revoker's and the rotator's: only their cause is the leak itself,
//! since no command stood between.

use crate::context::WorkerContext;
use crate::ops::Cause;
use crate::{budget, claim, revoker, rotator};
use keyloop_core::Credential;
use keyloop_core::event::RevokeCommand;
use keyloop_nats::Role;
use tracing::{info, warn};

/// What the process running the leak-responder also runs, and so does itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InProcess {
    /// The revoker: a leaked version is revoked here.
    pub revoke: bool,
    /// The rotator too: the revoked current version is replaced here.
    pub rotate: bool,
}

impl InProcess {
    /// What a process running `roles` does in-process.
    pub fn of(roles: &[Role]) -> Self {
        let revoke = roles.contains(&Role::Revoker);
        Self {
            revoke,
            rotate: revoke && roles.contains(&Role::Rotator),
        }
    }
}

/// The cause of what role `source` does here about the leak `cause` names.
fn as_role(cause: &Cause, source: &str) -> Cause {
    Cause {
        source: source.into(),
        ..cause.clone()
    }
}

/// Does what `command` asks here, holding the credential's claim, taken on `record` (as just
/// read) when nobody holds it — or, for a leak delivered again (`redelivered`), also when this
/// operation does (a process that died in the middle). `true` when done: revoked, and replaced
/// or handed to the rotator. `false` when not done here; the caller sends the command.
pub(super) async fn revoke(
    ctx: &WorkerContext,
    how: InProcess,
    command: &RevokeCommand,
    cause: &Cause,
    record: (Credential, u64),
    redelivered: bool,
) -> bool {
    let revoker_cause = as_role(cause, "keyloop/revoker");
    let now = time::OffsetDateTime::now_utc();
    match budget::admit(ctx, command, &revoker_cause, now, Some(&record.0)).await {
        // Held for approval (a leak never is): stored with the approval, nothing left here.
        Ok(false) => return true,
        Ok(true) => {}
        Err(e) => {
            warn!(credential = %command.credential, op = %command.op_id, error = %e, "cannot count the revocation in its budget here; sending it to the revoker");
            return false;
        }
    }
    let chain = async {
        revoker::revoke_versions(ctx, command, &revoker_cause).await?;
        let Some(rotate) = revoker::replacement(command) else {
            return Ok(());
        };
        if how.rotate {
            let mut in_hand = None;
            let rotator_cause = as_role(cause, "keyloop/rotator");
            match rotator::run_rotation(ctx, &rotate, &rotator_cause, &mut in_hand).await {
                Ok(()) => return Ok(()),
                // Its failure handling (roll back or forward, `rotation_failed`, the retry) is
                // the rotator's, on the command.
                Err(e) => {
                    warn!(credential = %command.credential, op = %rotate.op_id, error = %e, "the replacement did not finish in-process; the rotator resumes it");
                }
            }
        }
        revoker_cause.send(ctx, rotate).await
    };
    let take = claim::Take {
        known: Some(record),
        at_once: !redelivered,
    };
    match claim::with_claim_from(ctx, &command.credential, &command.op_id, take, chain).await {
        Ok(()) => true,
        Err(e) if e.kind() == crate::error::ErrorKind::Busy => {
            info!(credential = %command.credential, op = %command.op_id, reason = %e, "credential busy; sending the revocation to the revoker");
            false
        }
        Err(e) => {
            warn!(credential = %command.credential, op = %command.op_id, error = %e, "the revocation did not finish in-process; the revoker resumes it");
            false
        }
    }
}
