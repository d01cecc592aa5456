//! Steps shared by workers and the CLI: generating a value, registering a credential, and
//! revoking one version (invalid at the target, value destroyed, inventory updated, `revoked`
//! published — in that order, so `revoked` is never published for a value that still works).

use crate::context::WorkerContext;
use keyloop_core::event::{lease_event, lifecycle_event, stable_id};
use keyloop_core::lease::LeaseState;
use keyloop_core::{
    BackendSettings, Credential, CredentialId, Fingerprint, LifecycleData, LifecycleKind, Policy,
    RevokeReason, Stage, StoreKind, TargetKind, Version,
};
use keyloop_nats::{Change, DueItem, Error, ErrorKind, FingerprintRef};
use std::time::Duration;
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
    /// Store and target settings (secret id, role, strategy).
    pub settings: BackendSettings,
}

/// Registers a credential with a first, current version and publishes `created`. The first
/// value is stored, set at the target, tested and promoted in the store before the credential
/// is recorded: registering a `postgres` credential takes the role over at once, so from then
/// on keyloop holds the only valid password.
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
    reg.settings
        .check(reg.store, reg.target)
        .map_err(|e| Error::msg(ErrorKind::Permanent, format!("credential {}: {e}", reg.id)))?;
    let store = ctx.backends.store(reg.store)?;
    let target = ctx.backends.target(reg.target)?;
    let version_id = Uuid::now_v7();
    let op = format!("register/{}/{version_id}", reg.id);
    let now = OffsetDateTime::now_utc();
    let mut cred = Credential {
        id: reg.id.clone(),
        store: reg.store,
        target: reg.target,
        policy: reg.policy,
        settings: reg.settings,
        versions: Vec::new(),
        created_at: now,
        last_used_at: None,
        claim: None,
    };
    let value = store
        .put_new(&cred, version_id, keyloop_backends::generate_value())
        .await
        .map_err(|e| backend(e, "store the first value"))?;
    let fingerprint = Fingerprint::of(&value);
    let login = cred.login_for_new_version();
    cred.versions.push(Version {
        id: version_id,
        stage: Stage::Current,
        fingerprint: fingerprint.clone(),
        created_by: op.clone(),
        login,
        created_at: now,
        activated_at: Some(now),
        demoted_at: None,
        revoked_at: None,
        revoke_reason: None,
        revoked_by: None,
    });
    let taken_over = async {
        target
            .apply(&cred, version_id, &value)
            .await
            .map_err(|e| backend(e, "apply the first value at the target"))?;
        target
            .test(&cred, version_id, &value)
            .await
            .map_err(|e| backend(e, "test the first value at the target"))?;
        store
            .promote(&cred, version_id, None)
            .await
            .map_err(|e| backend(e, "make the first value current in its store"))
    }
    .await;
    drop(value);
    if let Err(e) = taken_over {
        let _ = store.destroy(&cred, version_id).await;
        return Err(e);
    }
    if let Err(e) = ctx.inventory.create(&cred).await {
        // Lost a race with another registration of the same id: its value stays, ours goes.
        let _ = store.destroy(&cred, version_id).await;
        return Err(e);
    }
    ctx.fingerprints
        .put(
            &fingerprint.index_keys(),
            &FingerprintRef::Version {
                credential: reg.id.clone(),
                version: version_id,
            },
        )
        .await?;
    if let Some(max_age) = cred.policy.max_age_secs {
        let due = now + Duration::from_secs(max_age);
        ctx.due
            .schedule(
                DueItem::Rotate {
                    credential: reg.id.clone(),
                },
                due,
                now,
            )
            .await?;
    }
    if let Some(idle) = cred.policy.idle_revoke_after_secs {
        let due = now + Duration::from_secs(idle);
        ctx.due
            .schedule(
                DueItem::Idle {
                    credential: reg.id.clone(),
                },
                due,
                now,
            )
            .await?;
    }
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
    let (cred, _) = ctx.inventory.require(req.credential).await?;
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
            .get(&cred, req.version)
            .await
            .map_err(|e| backend(e, "read the value to revoke"))?;
        target
            .invalidate(&cred, req.version, value.as_ref(), req.reason)
            .await
            .map_err(|e| backend(e, "invalidate the version at its target"))?;
        drop(value);
        store
            .destroy(&cred, req.version)
            .await
            .map_err(|e| backend(e, "destroy the revoked value"))?;
    }
    let now = OffsetDateTime::now_utc();
    let (reason, op) = (req.reason, req.op);
    let outcome = ctx
        .inventory
        .update(req.credential, |c| {
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
                activated + Duration::from_secs(max_age),
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
                demoted_at + Duration::from_secs(credential.policy.grace_secs),
                now,
            )
            .await?;
    }
    Ok(())
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

/// Longest an operation waits in-process for another operation's claim on the same credential
/// before giving the message back (nak) to be retried later.
const CLAIM_WAIT: Duration = Duration::from_secs(5);

/// A held claim on a credential; release it with [`ClaimGuard::release`] (if the holder dies
/// first, the claim lapses at its deadline).
#[derive(Debug)]
#[must_use = "release the claim when the operation is done"]
pub struct ClaimGuard {
    credential: CredentialId,
    op: String,
    holder: String,
}

/// Takes the credential's claim for operation `op`: at most one operation in flight per
/// credential across the fleet. Waits (with backoff, up to a few seconds) while another
/// operation holds it; then fails with `Busy`, and the message is retried later.
pub async fn claim(
    ctx: &WorkerContext,
    credential: &CredentialId,
    op: &str,
) -> Result<ClaimGuard, Error> {
    use backon::{ExponentialBuilder, Retryable};
    let attempt = || async {
        let now = OffsetDateTime::now_utc();
        let deadline = now + ctx.claim_ttl;
        ctx.inventory
            .update(credential, |c| {
                if let Some(existing) = &c.claim
                    && !existing.yields_to(op, now)
                {
                    return Err(Error::msg(
                        ErrorKind::Busy,
                        format!(
                            "credential {credential} is busy with operation {} (claim until {}); will retry",
                            existing.op, existing.deadline
                        ),
                    ));
                }
                c.claim = Some(keyloop_core::Claim { op: op.to_owned(), holder: ctx.holder.clone(), deadline });
                Ok(Change::Write(()))
            })
            .await
    };
    attempt
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(2))
                .with_max_delay(Duration::from_millis(250))
                .with_total_delay(Some(CLAIM_WAIT))
                .without_max_times()
                .with_jitter(),
        )
        .when(|e: &Error| e.kind() == ErrorKind::Busy)
        .await?;
    Ok(ClaimGuard {
        credential: credential.clone(),
        op: op.to_owned(),
        holder: ctx.holder.clone(),
    })
}

impl ClaimGuard {
    /// Pushes the deadline of the claim forward if it is still ours. A failure is logged: the
    /// next renewal tries again, and the deadline still has two thirds of the TTL to run.
    async fn renew(&self, ctx: &WorkerContext) {
        let deadline = OffsetDateTime::now_utc() + ctx.claim_ttl;
        let result = ctx
            .inventory
            .update(&self.credential, |c| match &mut c.claim {
                Some(k) if k.op == self.op && k.holder == self.holder => {
                    k.deadline = deadline;
                    Ok(Change::Write(()))
                }
                _ => Ok(Change::Keep(())),
            })
            .await;
        if let Err(e) = result {
            tracing::warn!(credential = %self.credential, op = %self.op, error = %e, "could not renew claim");
        }
    }

    /// Releases the claim if it is still ours. A failure here is harmless: the claim lapses.
    pub async fn release(self, ctx: &WorkerContext) {
        let result = ctx
            .inventory
            .update(&self.credential, |c| match &c.claim {
                Some(k) if k.op == self.op && k.holder == self.holder => {
                    c.claim = None;
                    Ok(Change::Write(()))
                }
                _ => Ok(Change::Keep(())),
            })
            .await;
        if let Err(e) = result {
            tracing::warn!(credential = %self.credential, op = %self.op, error = %e, "could not release claim; it lapses at its deadline");
        }
    }
}

/// Runs `operation` holding the credential's claim for `op`, and releases it afterwards
/// whatever the outcome. While it runs, the claim's deadline is pushed forward every third of
/// the claim TTL, so a slow backend call never lets another operation in; a holder that dies
/// stops renewing, and its claim lapses.
pub async fn with_claim<T, F>(
    ctx: &WorkerContext,
    credential: &CredentialId,
    op: &str,
    operation: F,
) -> Result<T, Error>
where
    F: std::future::Future<Output = Result<T, Error>>,
{
    let guard = claim(ctx, credential, op).await?;
    let renew = async {
        let mut every = tokio::time::interval(ctx.claim_ttl / 3);
        every.tick().await;
        loop {
            every.tick().await;
            guard.renew(ctx).await;
        }
    };
    let result = tokio::select! {
        result = operation => result,
        never = renew => never,
    };
    guard.release(ctx).await;
    result
}

/// Whether an operation that failed with `error` gives up now: a permanent error does at once,
/// a transient one on the message's last delivery. Messages about credentials that do not exist
/// are not failures of an operation (they go to the DLQ as bad input).
pub fn gives_up(error: &Error, last_attempt: bool) -> bool {
    error.kind() != ErrorKind::NotFound && (!error.is_transient() || last_attempt)
}
