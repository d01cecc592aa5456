//! Revoking one version: invalid at the target (a pending one undone as its record says), its
//! value destroyed, recorded revoked, `revoked` published — in that order, so `revoked` is never
//! published for a value that still works.

use super::{Cause, backend};
use crate::context::WorkerContext;
use crate::error::{Error, ErrorKind};
use keyloop_backends::{Store, Target};
use keyloop_core::{
    AtTarget, Credential, CredentialId, LifecycleData, LifecycleKind, PendingUndo, RevokeReason,
    Stage,
};
use keyloop_nats::Change;
use time::OffsetDateTime;
use uuid::Uuid;

/// A revocation of one version, as part of operation `op`.
#[derive(Debug, Clone)]
pub struct RevokeVersion<'a> {
    /// The credential.
    pub credential: &'a CredentialId,
    /// The version.
    pub version: Uuid,
    /// Why.
    pub reason: RevokeReason,
    /// The operation; recorded on the version so a retry knows the change was its own.
    pub op: &'a str,
    /// When the leak that caused this was published, for `time_to_revoke_ms`.
    pub leak_published_at: Option<OffsetDateTime>,
    /// Free text for the audit log.
    pub note: Option<String>,
}

/// What [`revoke_version`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    /// This operation revoked it (now or on an earlier attempt); `revoked` is published.
    ByThisOperation,
    /// It was already revoked by another operation; nothing was done.
    Already,
    /// The credential has no such version.
    Unknown,
}

/// Makes a version invalid at its target, destroys its value, records it revoked and publishes
/// `revoked`. Idempotent: a retry after a crash at any point finishes the same revocation and
/// publishes the same event id.
///
/// Only what makes the version dead is waited for:
/// - its value is read only to prove the death with a login (not at all for a credential with no
///   target); when it cannot be read (a wrong master key, a store outage), the target
///   invalidates it anyway and the event says the proof was not possible;
/// - a pending version is undone as [`Credential::undo_of_pending`] decides from the recorded
///   steps: nothing at the target when the target never got it, and when its value replaced the
///   password of an account a live version still needs (a `single` rotation), that version's value
///   is given back to the account instead of disabling it — a failed rotation never locks a role
///   out (a leaked pending value whose account cannot be given back is disabled: dead first);
/// - destroying the stored copy comes after the target and does not hold the revocation up: a
///   copy that cannot be destroyed no longer works anywhere, and the event says it is left.
///
/// If the worker stops at any point, the version is still live in the inventory and the retry
/// does every step again: each is idempotent (a restored account is tested before it is set
/// again, `NOLOGIN` twice is one change, destroying what is gone succeeds).
pub async fn revoke_version(
    ctx: &WorkerContext,
    req: RevokeVersion<'_>,
    cause: &Cause,
) -> Result<Revoked, Error> {
    let cred = crate::claim::read_credential(ctx, req.credential).await?;
    let Some(version) = cred.version(req.version) else {
        return Ok(Revoked::Unknown);
    };
    if version.stage == Stage::Revoked && version.revoked_by.as_deref() != Some(req.op) {
        return Ok(Revoked::Already);
    }
    let mut notes = Vec::new();
    if version.stage != Stage::Revoked {
        let store = ctx.backends.store(cred.store)?;
        let target = ctx.backends.target(cred.target)?;
        let mut cred = cred.clone();
        let mut call_target = true;
        if version.stage == Stage::Pending {
            match cred.undo_of_pending(req.version) {
                PendingUndo::Nothing => {
                    // Never given to the target, or a rollback took it back. A leaked value that
                    // was briefly a password may have opened sessions: the target ends them.
                    call_target = version.at_target == AtTarget::RolledBack
                        && req.reason == RevokeReason::Leak;
                }
                PendingUndo::Restore { holder } => {
                    match restore(&cred, holder, store.as_ref(), target.as_ref()).await {
                        Ok(note) => {
                            notes.push(note);
                            cred = mark_rolled_back(ctx, req.credential, req.version).await?;
                            call_target = req.reason == RevokeReason::Leak;
                        }
                        Err(e) if req.reason == RevokeReason::Leak => {
                            tracing::warn!(credential = %req.credential, version = %req.version, error = %e, "cannot give the account its current value back; disabling it, since a leaked value must die first");
                            notes.push(format!("the account could not be given version {holder}'s value back ({e}), so it was disabled: rotate to give it a working value"));
                        }
                        Err(e) => return Err(e),
                    }
                }
                PendingUndo::Invalidate => {}
            }
        }
        if call_target {
            // The value is read only for the target's login that proves the death; a target
            // that holds no values has none, and no read to wait for.
            let value = if target.holds_values() {
                store.get(&cred, req.version).await
            } else {
                Ok(None)
            };
            let value = match value {
                Ok(value) => value,
                Err(e) => {
                    tracing::warn!(credential = %req.credential, version = %req.version, error = %e, "cannot read the value to prove its death; invalidating it anyway");
                    notes.push(format!(
                        "no login proved it dead: its value could not be read ({})",
                        backend(e, "read the value")
                    ));
                    None
                }
            };
            target
                .invalidate(&cred, req.version, value.as_ref(), req.reason)
                .await
                .map_err(|e| backend(e, "invalidate the version at its target"))?;
        }
        if let Err(e) = store.destroy(&cred, req.version).await {
            tracing::warn!(credential = %req.credential, version = %req.version, error = %e, "the revoked value's stored copy could not be destroyed; it no longer works at its target");
            notes.push(format!(
                "its stored copy is not destroyed ({}); it no longer works at the target",
                backend(e, "destroy")
            ));
        }
    }
    let now = OffsetDateTime::now_utc();
    let (reason, op) = (req.reason, req.op);
    let outcome = crate::claim::update_credential(ctx, req.credential, |c| {
        let Some(v) = c.version(req.version) else {
            return Ok(Change::Keep(None));
        };
        if v.stage == Stage::Revoked {
            return Ok(Change::Keep(Some(v.clone())));
        }
        c.revoke(req.version, reason, op, now);
        Ok(Change::Write(c.version(req.version).cloned()))
    })
    .await?;
    let Some(version) = outcome else {
        return Ok(Revoked::Unknown);
    };
    if version.revoked_by.as_deref() != Some(req.op) {
        return Ok(Revoked::Already);
    }
    let revoked_at = version.revoked_at.unwrap_or(now);
    let mut data = LifecycleData::new(
        LifecycleKind::Revoked,
        Some(req.credential.clone()),
        Some(req.version),
    );
    data.stage = Some(Stage::Revoked);
    data.revoke_reason = Some(version.revoke_reason.unwrap_or(req.reason));
    data.time_to_revoke_ms = req
        .leak_published_at
        .map(|t| (revoked_at - t).whole_milliseconds().max(0) as u64);
    // Why comes first in the detail (an operator's reason, or the step's); who is the cause's
    // actor, never free text.
    if let Some(note) = req.note {
        notes.insert(0, note);
    }
    if !notes.is_empty() {
        data.detail = Some(notes.join("; "));
    }
    cause
        .publish(ctx, &format!("{}/{}", req.op, req.version), data)
        .await?;
    if let Some(leaked) = req.leak_published_at {
        keyloop_nats::metrics::global()
            .revoked_after_leak(keyloop_nats::metrics::Revoked::Version, revoked_at - leaked);
    }
    Ok(Revoked::ByThisOperation)
}

/// Gives the target account of `holder` that version's value back (the rollback of a value set
/// on the same account), unless it already logs in with it. Returns what was done, for the
/// audit log. The new value's death on that account follows: one account, one password.
///
/// A login that fails after the value was set again is reported, not fatal: the target
/// acknowledged the change, and undoing it would leave the account with no known password.
pub async fn restore(
    cred: &Credential,
    holder: Uuid,
    store: &dyn Store,
    target: &dyn Target,
) -> Result<String, Error> {
    let value = store
        .get(cred, holder)
        .await
        .map_err(|e| backend(e, &format!("read version {holder}'s value to give it back")))?
        .ok_or_else(|| {
            Error::msg(
                ErrorKind::Permanent,
                format!(
                    "credential {}: version {holder}'s value is gone from its store, so its account cannot be given it back",
                    cred.id
                ),
            )
        })?;
    if target.accepts(cred, holder, &value).await.unwrap_or(false) {
        return Ok(format!(
            "its account still accepts version {holder}, which stays in use (tested)"
        ));
    }
    target.apply(cred, holder, &value).await.map_err(|e| {
        backend(
            e,
            &format!("give the account version {holder}'s value back"),
        )
    })?;
    Ok(match target.test(cred, holder, &value).await {
        Ok(()) => format!("rolled back: its account has version {holder}'s value again (tested)"),
        Err(e) => format!(
            "rolled back: its account was given version {holder}'s value again, but the login test after it failed ({e})"
        ),
    })
}

/// Records that a rollback took `version`'s value off its account; returns the record.
async fn mark_rolled_back(
    ctx: &WorkerContext,
    credential: &CredentialId,
    version: Uuid,
) -> Result<Credential, Error> {
    crate::claim::update_credential(ctx, credential, |c| match c.version_mut(version) {
        Some(v) if v.stage == Stage::Pending && v.at_target == AtTarget::Set => {
            v.at_target = AtTarget::RolledBack;
            Ok(Change::Write(c.clone()))
        }
        _ => Ok(Change::Keep(c.clone())),
    })
    .await
}
