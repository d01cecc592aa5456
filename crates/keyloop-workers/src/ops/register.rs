//! Registering a credential: the record first, then the value, then the target; a failure
//! leaves the target as it was or fully taken over, and a registration run again finishes.

use super::{Cause, backend, due_after};
use crate::context::WorkerContext;
use crate::error::{Error, ErrorKind};
use keyloop_backends::{Store, Target};
use keyloop_core::{
    AtTarget, BackendSettings, Credential, CredentialId, Fingerprint, LifecycleData, LifecycleKind,
    Policy, Stage, StoreKind, TargetKind, ValueFormat, Version,
};
use keyloop_nats::{Change, DueItem, FingerprintRef};
use time::OffsetDateTime;
use uuid::Uuid;

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
    /// Store and target settings (secret id, role, strategy) and the value format (absent:
    /// the target's default, [`ValueFormat::default_for`]).
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
    mut reg: Registration,
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
        None => {
            // The record holds the format, so every rotation generates the same one: the
            // format asked for, else the one that suits the target.
            let format = ValueFormat::default_for(reg.target);
            reg.settings.value_format.get_or_insert(format);
            (record_registration(ctx, &reg).await?, false)
        }
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
    data.fingerprint = cred.versions[0].fingerprint.clone();
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
    // Run again without a value format, a registration finishes in the one recorded first.
    let format = reg.settings.value_format;
    let same_format = format.is_none_or(|f| f == existing.settings.value_format());
    let without_format = |s: &BackendSettings| BackendSettings {
        value_format: None,
        ..s.clone()
    };
    let same = existing.store == reg.store
        && existing.target == reg.target
        && without_format(&existing.settings) == without_format(&reg.settings)
        && same_format
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
        consumers: Vec::new(),
        retired: None,
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
    let generated = keyloop_backends::generate_value(cred.settings.value_format());
    let value = store
        .put_new(cred, version, generated)
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
    let fp = fingerprint.tag();
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
        // The record keeps only the value's tag, so its index keys come from the value, read
        // before it is destroyed. A value that cannot be read leaves them behind, pointing at
        // a version no record will have (every registration has a fresh version id): a leak
        // of that value, which never reached the target, is `leak_unmatched`.
        let keys = match store.get(&cred, version).await {
            Ok(value) => value.map(|v| Fingerprint::of(&v).index_keys()),
            Err(e) => {
                tracing::warn!(credential = %reg.id, error = %e, "could not read the unused first value of a failed registration to remove its fingerprints; they point at no version");
                None
            }
        };
        if let Err(e) = store.destroy(&cred, version).await {
            tracing::warn!(credential = %reg.id, error = %e, "could not destroy the unused first value of a failed registration; it never reached the target");
        }
        if let Some(keys) = keys {
            ctx.fingerprints.remove(&keys).await?;
        }
    }
    for key in reg.settings.bindings(reg.store, reg.target) {
        ctx.inventory.unbind(&key, &reg.id).await?;
    }
    ctx.inventory.remove(&reg.id).await
}
