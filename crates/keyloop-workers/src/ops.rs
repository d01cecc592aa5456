//! Steps shared by workers and the CLI: generating a value, registering a credential, and
//! revoking one version (invalid at the target, value destroyed, inventory updated, `revoked`
//! published — in that order, so `revoked` is never published for a value that still works).

use crate::context::WorkerContext;
use keyloop_backends::{Store, Target};
use keyloop_core::event::{lease_event, lifecycle_event, stable_id};
use keyloop_core::lease::LeaseState;
use keyloop_core::{
    AtTarget, BackendSettings, Credential, CredentialId, Fingerprint, LifecycleData, LifecycleKind,
    PendingUndo, Policy, RevokeReason, Stage, StoreKind, TargetKind, Version,
};
use keyloop_nats::{Change, DueItem, Error, ErrorKind, FingerprintRef};
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
    /// The cause of what `source` does about `event`: the chain it belongs to, and the event
    /// itself as the direct cause.
    pub fn of<T>(source: &str, event: &keyloop_core::CloudEvent<T>) -> Self {
        Self {
            source: source.to_owned(),
            correlation: event.correlationid.clone(),
            causation: Some(event.id.clone()),
        }
    }

    /// Sends `command` with this cause (see `Bus::send_command`).
    pub async fn send<C: keyloop_core::event::Command>(
        &self,
        ctx: &WorkerContext,
        command: C,
    ) -> Result<(), Error> {
        ctx.bus
            .send_command(
                &self.source,
                command,
                self.correlation.clone(),
                self.causation.clone(),
            )
            .await
            .map(|_| ())
    }

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
    /// Store and target settings (secret id, role, strategy).
    pub settings: BackendSettings,
}

/// Operation ids of registrations start with this.
pub const REGISTER_OP_PREFIX: &str = "register/";

/// Whether `op` (a version's `created_by`) is a registration.
pub fn is_registration(op: &str) -> bool {
    op.starts_with(REGISTER_OP_PREFIX)
}

/// A registration that finished: the credential, with what the operator must know.
#[derive(Debug)]
pub struct Registered {
    /// The credential, its first version current.
    pub credential: Credential,
    /// True when this call finished a registration an earlier, interrupted one started.
    pub resumed: bool,
    /// Steps after the take-over that failed: the target accepts the value and keyloop holds
    /// it, so the credential is registered, but something needs a look (words, no value).
    pub warnings: Vec<String>,
}

/// Registers a credential with a first, current version and publishes `created`; or finishes
/// an earlier registration of the same id and settings that stopped half-way (the CLI killed,
/// a target down).
///
/// Registering a `postgres` credential takes the role over: from then on keyloop holds the only
/// valid password. So the steps are recorded before they are taken — the record first (the
/// first version `pending`, `at_target: not_set`; the role and secret bound to this id, so no
/// other credential manages them), then the value stored, then `at_target: set`, then the
/// target — and a failure leaves one of two states, and says which:
/// - **the target as it was**: the failure came before the target was given the value (or the
///   target refuses it, so the change did not happen); the value and the record are removed and
///   nothing is registered;
/// - **fully taken over**: once the target accepts the value, the value is never destroyed and
///   the registration finishes; a later step that fails (the login test, the store's staging
///   label) is reported in [`Registered::warnings`].
///
/// When the target's state cannot be known (it is unreachable), nothing is destroyed: the error
/// says so, and running the same registration again finishes it.
pub async fn register(
    ctx: &WorkerContext,
    reg: Registration,
    cause: &Cause,
) -> Result<Registered, Error> {
    reg.settings
        .check(reg.store, reg.target)
        .map_err(|e| Error::msg(ErrorKind::Permanent, format!("credential {}: {e}", reg.id)))?;
    reg.policy
        .validate()
        .map_err(|e| Error::msg(ErrorKind::Permanent, format!("credential {}: {e}", reg.id)))?;
    let store = ctx.backends.store(reg.store)?;
    let target = ctx.backends.target(reg.target)?;
    let (cred, resumed) = match ctx.inventory.get(&reg.id).await? {
        Some((existing, _)) => (resumable(existing, &reg)?, true),
        None => (record_registration(ctx, &reg).await?, false),
    };
    let version =
        cred.versions.first().map(|v| v.id).ok_or_else(|| {
            Error::msg(ErrorKind::Permanent, "a registration record has no version")
        })?;
    let op = cred.versions[0].created_by.clone();
    let id = reg.id.clone();
    let take_over = async {
        let mut warnings = Vec::new();
        let result = take_over(
            ctx,
            &cred,
            version,
            store.as_ref(),
            target.as_ref(),
            &mut warnings,
        )
        .await;
        match result {
            Ok(cred) => Ok((cred, warnings)),
            Err((e, TargetState::AsItWas)) => {
                let undone = undo_registration(ctx, &reg, version, store.as_ref()).await;
                let left = match undone {
                    Ok(()) => "the target is as it was, and nothing is registered".to_owned(),
                    Err(u) => format!(
                        "the target is as it was; cleaning up failed ({u}): run the same registration again, or see `keyloop credential show {id}`"
                    ),
                };
                Err(Error::msg(e.kind(), format!("{e}; {left}")))
            }
            Err((e, TargetState::Unknown)) => Err(Error::msg(
                e.kind(),
                format!(
                    "{e}; the target may or may not have taken the new value, so it was kept (nothing destroyed): run the same `keyloop credential register {id} …` again to finish"
                ),
            )),
        }
    };
    let (cred, warnings) = if cred.versions[0].stage == Stage::Current {
        // Taken over on an earlier run: only the schedules and `created` (idempotent) remain.
        drop(take_over);
        (cred.clone(), Vec::new())
    } else {
        crate::claim::with_claim(ctx, &id, &op, take_over).await?
    };
    let now = OffsetDateTime::now_utc();
    if let Some(max_age) = cred.policy.max_age_secs {
        let activated = cred.versions[0].activated_at.unwrap_or(now);
        let due = due_after(&id, activated, max_age)?;
        ctx.due
            .schedule(
                DueItem::Rotate {
                    credential: id.clone(),
                },
                due,
                now,
            )
            .await?;
    }
    if let Some(idle) = cred.policy.idle_revoke_after_secs {
        let due = due_after(&id, cred.last_activity(), idle)?;
        ctx.due
            .schedule(
                DueItem::Idle {
                    credential: id.clone(),
                },
                due,
                now,
            )
            .await?;
    }
    let mut data = LifecycleData::new(LifecycleKind::Created, Some(id), Some(version));
    data.stage = Some(Stage::Current);
    data.fingerprint = Some(cred.versions[0].fingerprint.clone());
    if !warnings.is_empty() {
        data.detail = Some(warnings.join("; "));
    }
    cause.publish(ctx, &op, data).await?;
    Ok(Registered {
        credential: cred,
        resumed,
        warnings,
    })
}

/// What the target holds after a registration step failed.
enum TargetState {
    /// Not changed: safe to remove everything.
    AsItWas,
    /// Cannot be known: keep everything.
    Unknown,
}

/// An existing record this registration may finish: one whose only version is still its
/// registration's (pending, or current when the registrar stopped before its schedules and
/// `created` event were out), with the same store, target, settings and policy. Anything else
/// is already registered.
fn resumable(existing: Credential, reg: &Registration) -> Result<Credential, Error> {
    let unfinished = existing.versions.len() == 1
        && matches!(existing.versions[0].stage, Stage::Pending | Stage::Current)
        && is_registration(&existing.versions[0].created_by);
    if !unfinished {
        return Err(Error::msg(
            ErrorKind::AlreadyExists,
            format!(
                "credential {} is already registered (see `keyloop credential show {}`)",
                reg.id, reg.id
            ),
        ));
    }
    let same = existing.store == reg.store
        && existing.target == reg.target
        && existing.settings == reg.settings
        && existing.policy == reg.policy;
    if !same && existing.versions[0].stage == Stage::Current {
        return Err(Error::msg(
            ErrorKind::AlreadyExists,
            format!(
                "credential {} is already registered, with other settings (see `keyloop credential show {}`)",
                reg.id, reg.id
            ),
        ));
    }
    if !same {
        return Err(Error::msg(
            ErrorKind::AlreadyExists,
            format!(
                "an unfinished registration of credential {} has other settings (store {}, target {}, {:?}); run it again with the same flags to finish it",
                reg.id,
                existing.store.name(),
                existing.target.name(),
                existing.settings
            ),
        ));
    }
    Ok(existing)
}

/// Records a new registration (its first version pending, not yet at the target) and binds
/// the role and secret it will manage; refuses an id, role or secret already managed.
async fn record_registration(ctx: &WorkerContext, reg: &Registration) -> Result<Credential, Error> {
    let version_id = Uuid::now_v7();
    let op = format!("{REGISTER_OP_PREFIX}{}/{version_id}", reg.id);
    let now = OffsetDateTime::now_utc();
    let mut cred = Credential {
        id: reg.id.clone(),
        store: reg.store,
        target: reg.target,
        policy: reg.policy.clone(),
        settings: reg.settings.clone(),
        versions: Vec::new(),
        created_at: now,
        last_used_at: None,
        claim: None,
        claim_epoch: 0,
        rotation_retry: None,
    };
    let login = cred.login_for_new_version();
    cred.versions.push(Version::pending(
        version_id,
        Fingerprint {
            sha256: None,
            sha1: None,
        },
        op,
        login,
        now,
    ));
    ctx.inventory.create(&cred).await.map_err(|e| {
        if e.kind() == ErrorKind::AlreadyExists {
            Error::msg(
                ErrorKind::AlreadyExists,
                format!(
                    "credential {} is already registered (see `keyloop credential show {}`)",
                    reg.id, reg.id
                ),
            )
        } else {
            e
        }
    })?;
    let mut bound = Vec::new();
    for key in reg.settings.bindings(reg.store, reg.target) {
        match ctx.inventory.bind(&key, &reg.id).await {
            Ok(None) => bound.push(key),
            outcome => {
                for key in &bound {
                    let _ = ctx.inventory.unbind(key, &reg.id).await;
                }
                let _ = ctx.inventory.remove(&reg.id).await;
                return Err(match outcome {
                    Ok(Some(other)) => Error::msg(
                        ErrorKind::AlreadyExists,
                        format!(
                            "credential {}: {} is already managed by credential {other}; two credentials on one {} would overwrite each other's values (see `keyloop credential show {other}`)",
                            reg.id,
                            describe_binding(&key, &reg.settings),
                            if key.starts_with("bind.postgres.") {
                                "role"
                            } else {
                                "secret"
                            },
                        ),
                    ),
                    Err(e) => e,
                    Ok(None) => unreachable!("handled above"),
                });
            }
        }
    }
    Ok(cred)
}

/// Words for a binding key: the role or the secret it stands for.
fn describe_binding(key: &str, settings: &BackendSettings) -> String {
    match key.strip_prefix("bind.postgres.") {
        Some(hex_role) => {
            let role = hex::decode(hex_role)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .unwrap_or_default();
            format!("PostgreSQL role {role:?}")
        }
        None => format!(
            "AWS secret {:?}",
            settings.secret_id.as_deref().unwrap_or("?")
        ),
    }
}

/// The registration's steps from wherever an earlier attempt stopped: store the value, index
/// it, record `at_target: set`, apply, test, promote in the store, record it current. Each step
/// is idempotent. An error comes with what the target holds.
async fn take_over(
    ctx: &WorkerContext,
    cred: &Credential,
    version: Uuid,
    store: &dyn Store,
    target: &dyn Target,
    warnings: &mut Vec<String>,
) -> Result<Credential, (Error, TargetState)> {
    let id = &cred.id;
    let fresh = cred.versions[0].at_target == AtTarget::NotSet;
    let before_target = |e: Error| {
        if fresh {
            (e, TargetState::AsItWas)
        } else {
            (e, TargetState::Unknown)
        }
    };
    let value = store
        .put_new(cred, version, keyloop_backends::generate_value())
        .await
        .map_err(|e| before_target(backend(e, "store the first value")))?;
    let fingerprint = Fingerprint::of(&value);
    ctx.fingerprints
        .put(
            &fingerprint.index_keys(),
            &FingerprintRef::Version {
                credential: id.clone(),
                version,
            },
        )
        .await
        .map_err(before_target)?;
    let fp = fingerprint.clone();
    let cred = crate::claim::update_credential(ctx, id, |c| match c.version_mut(version) {
        Some(v) if v.stage == Stage::Pending => {
            v.fingerprint = fp.clone();
            v.at_target = AtTarget::Set;
            Ok(Change::Write(c.clone()))
        }
        _ => Ok(Change::Keep(c.clone())),
    })
    .await
    .map_err(before_target)?;
    if let Err(e) = target.apply(&cred, version, &value).await {
        // A first attempt that never reached the target (no connection) changed nothing.
        if e.untouched && fresh {
            return Err((
                backend(e, "apply the first value at the target"),
                TargetState::AsItWas,
            ));
        }
        let e = backend(e, "apply the first value at the target");
        // Did the change happen anyway? Only the target can say.
        match target.accepts(&cred, version, &value).await {
            Ok(true) => warnings.push(format!(
                "applying the value reported an error ({e}) but the target accepts it"
            )),
            // The target refuses the only value this registration ever had: it was not taken.
            Ok(false) => return Err((e, TargetState::AsItWas)),
            Err(_) => return Err((e, TargetState::Unknown)),
        }
    }
    if let Err(e) = target.test(&cred, version, &value).await {
        warnings.push(format!(
            "the target took the value, but the login test after it failed ({}); fix the target and run `keyloop rotate {id}`",
            backend(e, "test")
        ));
    }
    if let Err(e) = store.promote(&cred, version, None).await {
        warnings.push(format!(
            "the store could not mark the value current ({}); `keyloop rotate {id}` once the store works again",
            backend(e, "promote")
        ));
    }
    drop(value);
    let now = OffsetDateTime::now_utc();
    crate::claim::update_credential(ctx, id, |c| match c.version_mut(version) {
        Some(v) if v.stage == Stage::Pending => {
            v.stage = Stage::Current;
            v.activated_at = Some(now);
            Ok(Change::Write(c.clone()))
        }
        _ => Ok(Change::Keep(c.clone())),
    })
    .await
    .map_err(|e| (e, TargetState::Unknown))
}

/// Removes what a registration that took nothing over left: its value, fingerprints,
/// bindings and record.
async fn undo_registration(
    ctx: &WorkerContext,
    reg: &Registration,
    version: Uuid,
    store: &dyn Store,
) -> Result<(), Error> {
    if let Some((cred, _)) = ctx.inventory.get(&reg.id).await? {
        if let Err(e) = store.destroy(&cred, version).await {
            tracing::warn!(credential = %reg.id, error = %e, "could not destroy the unused first value of a failed registration; it never reached the target");
        }
        let fp = &cred.versions[0].fingerprint;
        if fp.sha256.is_some() || fp.sha1.is_some() {
            ctx.fingerprints.remove(&fp.index_keys()).await?;
        }
    }
    for key in reg.settings.bindings(reg.store, reg.target) {
        ctx.inventory.unbind(&key, &reg.id).await?;
    }
    ctx.inventory.remove(&reg.id).await
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
///
/// Only what makes the version dead is waited for:
/// - its value is read only to prove the death with a login; when it cannot be read (a wrong
///   master key, a store outage), the target invalidates it anyway and the event says the proof
///   was not possible;
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
    let (cred, _) = ctx.inventory.require(req.credential).await?;
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
            let value = match store.get(&cred, req.version).await {
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
    data.actor = req.note;
    if !notes.is_empty() {
        data.detail = Some(notes.join("; "));
    }
    cause
        .publish(ctx, &format!("{}/{}", req.op, req.version), data)
        .await?;
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

/// How often a use is recorded per credential version: uses in between change nothing, so a
/// busy service does not turn every read into an inventory write and an audit event.
pub const USE_RECORD_INTERVAL_SECS: i64 = 60;

/// Records a use of `version` of `credential`: `last_used_at` moves forward (at most once per
/// [`USE_RECORD_INTERVAL_SECS`]) and one `used` event per version and interval is published
/// (its id derives from the interval, so replicas and redeliveries add nothing).
pub async fn record_use(
    ctx: &WorkerContext,
    credential: &CredentialId,
    version: Option<Uuid>,
    actor: Option<String>,
    at: OffsetDateTime,
    cause: &Cause,
) -> Result<(), Error> {
    let window = at.unix_timestamp().div_euclid(USE_RECORD_INTERVAL_SECS);
    let changed = ctx
        .inventory
        .update(credential, |c| {
            let stale = c
                .last_used_at
                .is_none_or(|t| t.unix_timestamp().div_euclid(USE_RECORD_INTERVAL_SECS) < window);
            if stale {
                c.last_used_at = Some(at);
                Ok(Change::Write(true))
            } else {
                Ok(Change::Keep(false))
            }
        })
        .await?;
    if changed {
        let mut data = LifecycleData::new(LifecycleKind::Used, Some(credential.clone()), version);
        data.actor = actor;
        let step = format!(
            "used/{credential}/{}/{window}",
            version.map(|v| v.to_string()).unwrap_or_default()
        );
        cause.publish(ctx, &step, data).await?;
    }
    Ok(())
}

/// After a rotation: the next one falls due at `max_age`, and the demoted version's grace ends
/// at `grace`. Idempotent.
pub async fn schedule_after_rotation(
    ctx: &WorkerContext,
    credential: &Credential,
    demoted: Option<Uuid>,
    now: OffsetDateTime,
) -> Result<(), Error> {
    if let Some(max_age) = credential.policy.max_age_secs {
        let activated = credential
            .current()
            .and_then(|v| v.activated_at)
            .unwrap_or(now);
        ctx.due
            .schedule(
                DueItem::Rotate {
                    credential: credential.id.clone(),
                },
                due_after(&credential.id, activated, max_age)?,
                now,
            )
            .await?;
    }
    if let Some(version) = demoted {
        let demoted_at = credential
            .version(version)
            .and_then(|v| v.demoted_at)
            .unwrap_or(now);
        let item = DueItem::Retire {
            credential: credential.id.clone(),
            version,
        };
        ctx.due
            .schedule(
                item,
                due_after(&credential.id, demoted_at, credential.policy.grace_secs)?,
                now,
            )
            .await?;
    }
    Ok(())
}

/// `at` plus `secs` of a credential's policy; a policy so far out of range that the sum
/// overflows is refused (registration validates policies; this guards records from elsewhere).
fn due_after(id: &CredentialId, at: OffsetDateTime, secs: u64) -> Result<OffsetDateTime, Error> {
    keyloop_core::duration::checked_after(at, secs).ok_or_else(|| {
        Error::msg(
            ErrorKind::Permanent,
            format!("credential {id}: a policy duration of {secs} s is out of range"),
        )
    })
}

/// Ends a lease: `revoked` (task completed, leak, operator) or `expired`. The state change in
/// the inventory is what makes the token invalid (verification reads it), and it is stored
/// before the event is published. Returns false when the lease had already ended by another
/// operation. Idempotent.
pub async fn end_lease(
    ctx: &WorkerContext,
    lease_id: Uuid,
    reason: RevokeReason,
    op: &str,
    leak_published_at: Option<OffsetDateTime>,
    cause: &Cause,
) -> Result<bool, Error> {
    // A lease that is a PostgreSQL role: the role goes first (sessions ended, objects
    // reassigned, role dropped), so the lease is never recorded ended while its role works.
    if let Some(lease) = ctx.inventory.lease(lease_id).await?
        && lease.state == LeaseState::Active
        && let Some(login) = &lease.login
    {
        let roles = ctx.backends.jit_roles.as_ref().ok_or_else(|| {
            Error::msg(
                ErrorKind::Permanent,
                format!("lease {lease_id} is PostgreSQL role {login}: this revoker needs the admin connection (KEYLOOP_POSTGRES_DSN / --postgres-dsn) to drop it"),
            )
        })?;
        roles.drop_jit_role(login).await.map_err(|e| {
            backend(
                e,
                &format!("drop PostgreSQL role {login} of lease {lease_id}"),
            )
        })?;
    }
    let now = OffsetDateTime::now_utc();
    let lease = ctx
        .inventory
        .update_lease(lease_id, |l| {
            if l.state != LeaseState::Active {
                return Ok(Change::Keep(l.clone()));
            }
            l.state = if reason == RevokeReason::Expired {
                LeaseState::Expired
            } else {
                LeaseState::Revoked
            };
            l.ended_at = Some(now);
            l.end_reason = Some(reason);
            l.ended_by = Some(op.to_owned());
            Ok(Change::Write(l.clone()))
        })
        .await?;
    if lease.ended_by.as_deref() != Some(op) {
        return Ok(false);
    }
    let kind = if lease.state == LeaseState::Expired {
        LifecycleKind::Expired
    } else {
        LifecycleKind::Revoked
    };
    let mut data = LifecycleData::new(kind, None, None);
    data.revoke_reason = lease.end_reason;
    let ended_at = lease.ended_at.unwrap_or(now);
    data.time_to_revoke_ms =
        leak_published_at.map(|t| (ended_at - t).whole_milliseconds().max(0) as u64);
    let event = lease_event(&cause.source, &format!("{op}/{lease_id}"), data, &lease)
        .caused_by(cause.correlation.clone(), cause.causation.clone());
    ctx.bus.publish_lifecycle(&event).await?;
    Ok(true)
}

/// Whether an operation that failed with `error` gives up now: a permanent error does at once,
/// a transient one on the message's last delivery. Messages about credentials that do not exist
/// are not failures of an operation (they go to the DLQ as bad input).
pub fn gives_up(error: &Error, last_attempt: bool) -> bool {
    error.kind() != ErrorKind::NotFound && (!error.is_transient() || last_attempt)
}
