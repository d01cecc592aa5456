//! Steps shared by workers and the CLI: generating a value, registering a credential, and
//! revoking one version (invalid at the target, value destroyed, inventory updated, `revoked`
//! published — in that order, so `revoked` is never published for a value that still works).

use crate::context::WorkerContext;
use keyloop_core::event::{lifecycle_event, stable_id};
use keyloop_core::{
    Credential, CredentialId, Fingerprint, LifecycleData, LifecycleKind, Policy, RevokeReason,
    Stage, StoreKind, TargetKind, Version,
};
use keyloop_nats::{Change, Error, ErrorKind, FingerprintRef};
use time::OffsetDateTime;
use uuid::Uuid;

/// Where an operation came from, carried into every event it publishes.
#[derive(Debug, Clone, Default)]
pub struct Cause {
    /// `keyloop/<role>` or `keyloop/cli`.
    pub source: String,
    /// The leak or request that started the chain.
    pub correlation: Option<String>,
    /// The message that caused this step.
    pub causation: Option<String>,
}

impl Cause {
    /// Publishes a lifecycle event for `step` with this cause. Its id is derived from `step`
    /// and the kind, so publishing again after a crash is deduplicated by the stream.
    pub async fn publish(
        &self,
        ctx: &WorkerContext,
        step: &str,
        data: LifecycleData,
    ) -> Result<(), Error> {
        let event = lifecycle_event(&self.source, step, data)
            .caused_by(self.correlation.clone(), self.causation.clone());
        ctx.bus.publish_lifecycle(&event).await.map(|_| ())
    }
}

/// What to register.
#[derive(Debug, Clone)]
pub struct Registration {
    /// The id.
    pub id: CredentialId,
    /// Where values live.
    pub store: StoreKind,
    /// Who accepts them.
    pub target: TargetKind,
    /// Rotation policy.
    pub policy: Policy,
}

/// Registers a credential with a first, current version and publishes `created`.
pub async fn register(
    ctx: &WorkerContext,
    reg: Registration,
    cause: &Cause,
) -> Result<Credential, Error> {
    if ctx.inventory.get(&reg.id).await?.is_some() {
        return Err(Error::msg(
            ErrorKind::AlreadyExists,
            format!(
                "credential {} is already registered (see `keyloop credential show {}`)",
                reg.id, reg.id
            ),
        ));
    }
    let store = ctx.backends.store(reg.store)?;
    let target = ctx.backends.target(reg.target)?;
    let version_id = Uuid::now_v7();
    let op = format!("register/{}/{version_id}", reg.id);
    let value = store
        .put_new(&reg.id, version_id, keyloop_backends::generate_value())
        .await
        .map_err(|e| backend(e, "store the first value"))?;
    target
        .apply(&reg.id, version_id, &value)
        .await
        .map_err(|e| backend(e, "apply the first value at the target"))?;
    let fingerprint = Fingerprint::of(&value);
    drop(value);
    let now = OffsetDateTime::now_utc();
    let cred = Credential {
        id: reg.id.clone(),
        store: reg.store,
        target: reg.target,
        policy: reg.policy,
        versions: vec![Version {
            id: version_id,
            stage: Stage::Current,
            fingerprint: fingerprint.clone(),
            created_by: op.clone(),
            created_at: now,
            activated_at: Some(now),
            demoted_at: None,
            revoked_at: None,
            revoke_reason: None,
            revoked_by: None,
        }],
        created_at: now,
    };
    if let Err(e) = ctx.inventory.create(&cred).await {
        // Lost a race with another registration of the same id: its value stays, ours goes.
        let _ = store.destroy(&reg.id, version_id).await;
        return Err(e);
    }
    ctx.fingerprints
        .put(
            &fingerprint.index_keys(),
            &FingerprintRef {
                credential: reg.id.clone(),
                version: version_id,
            },
        )
        .await?;
    let mut data = LifecycleData::new(LifecycleKind::Created, Some(reg.id), Some(version_id));
    data.stage = Some(Stage::Current);
    data.fingerprint = Some(fingerprint);
    cause.publish(ctx, &op, data).await?;
    Ok(cred)
}

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
pub async fn revoke_version(
    ctx: &WorkerContext,
    req: RevokeVersion<'_>,
    cause: &Cause,
) -> Result<Revoked, Error> {
    let known = ctx.inventory.require(req.credential).await?;
    revoke_version_from(ctx, req, cause, known).await
}

/// [`revoke_version`] from `known`, a state of the credential the caller read with its
/// revision: saves the two inventory reads (the check and the compare-and-set's) when nothing
/// changed the credential since. If something did, the compare-and-set re-reads and
/// re-decides, so the outcome is the same as [`revoke_version`]'s.
pub async fn revoke_version_from(
    ctx: &WorkerContext,
    req: RevokeVersion<'_>,
    cause: &Cause,
    known: (Credential, u64),
) -> Result<Revoked, Error> {
    let cred = &known.0;
    let Some(version) = cred.version(req.version) else {
        return Ok(Revoked::Unknown);
    };
    if version.stage == Stage::Revoked && version.revoked_by.as_deref() != Some(req.op) {
        return Ok(Revoked::Already);
    }
    if version.stage != Stage::Revoked {
        let store = ctx.backends.store(cred.store)?;
        let target = ctx.backends.target(cred.target)?;
        let value = store
            .get(req.credential, req.version)
            .await
            .map_err(|e| backend(e, "read the value to revoke"))?;
        target
            .invalidate(req.credential, req.version, value.as_ref())
            .await
            .map_err(|e| backend(e, "invalidate the version at its target"))?;
        drop(value);
        store
            .destroy(req.credential, req.version)
            .await
            .map_err(|e| backend(e, "destroy the revoked value"))?;
    }
    let now = OffsetDateTime::now_utc();
    let (reason, op) = (req.reason, req.op);
    let outcome = ctx
        .inventory
        .update_from(req.credential, known, |c| {
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
    data.actor = req.note;
    cause
        .publish(ctx, &format!("{}/{}", req.op, req.version), data)
        .await?;
    Ok(Revoked::ByThisOperation)
}

/// The id of the version a rotation creates: derived from the operation, so a retried
/// rotation finds the version it already made.
pub fn version_for_op(op: &str) -> Uuid {
    stable_id(&format!("version/{op}"))
}

pub(crate) fn backend(e: keyloop_backends::BackendError, step: &str) -> Error {
    let kind = match e.kind {
        keyloop_backends::BackendErrorKind::Transient => ErrorKind::Transient,
        keyloop_backends::BackendErrorKind::Permanent => ErrorKind::Permanent,
    };
    Error::msg(kind, format!("{step}: {e}"))
}
