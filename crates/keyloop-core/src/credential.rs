//! Credentials and their versions: the inventory record that workers update with
//! compare-and-set, and the rules for moving a version between stages.

use crate::fingerprint::Fingerprint;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use time::OffsetDateTime;
use uuid::Uuid;

/// A credential id: path-like (`pg/app`, `saas/stripe-payouts`). Segments of ASCII letters,
/// digits, `_` and `-`, separated by single `/`; at most 128 characters. No dots, so an id is
/// always one NATS subject token and one KV key.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(try_from = "String", into = "String")]
pub struct CredentialId(String);

/// A credential id that breaks the rules of [`CredentialId`].
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid credential id `{0}`: use segments of letters, digits, `_` and `-` separated by `/` (for example `pg/app`), at most 128 characters"
)]
pub struct CredentialIdError(String);

impl CredentialId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for CredentialId {
    type Err = CredentialIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = !s.is_empty()
            && s.len() <= 128
            && s.split('/').all(|seg| {
                !seg.is_empty()
                    && seg
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            })
            && s.as_bytes()[0].is_ascii_alphanumeric();
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            // Truncate: an id is not secret, but a pasted secret in the wrong argument might be.
            Err(CredentialIdError(s.chars().take(40).collect()))
        }
    }
}

impl TryFrom<String> for CredentialId {
    type Error = CredentialIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<CredentialId> for String {
    fn from(id: CredentialId) -> Self {
        id.0
    }
}

impl fmt::Display for CredentialId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a credential's values live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum StoreKind {
    /// Encrypted in keyloop's own JetStream KV bucket.
    Local,
    /// AWS Secrets Manager: one secret per credential, one secret version per keyloop version,
    /// staged with the labels `AWSPENDING`, `AWSCURRENT` and `AWSPREVIOUS`.
    AwsSm,
}

impl StoreKind {
    /// The kind's name as it appears in JSON and on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::AwsSm => "aws-sm",
        }
    }
}

/// The system that accepts the credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TargetKind {
    /// Nothing outside keyloop checks the value (API tokens that services verify with keyloop).
    None,
    /// A PostgreSQL login role: the value is its password.
    Postgres,
}

impl TargetKind {
    /// The kind's name as it appears in JSON and on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Postgres => "postgres",
        }
    }
}

/// How a target account's password is rotated, as AWS documents the two strategies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RotationStrategy {
    /// One account; a rotation changes its password, so the old value stops working at once.
    #[default]
    Single,
    /// Two accounts (`<role>_a`, `<role>_b`) used in turn: a rotation sets the password of the
    /// one not in use, so the previous value keeps working on the other until it is retired.
    Alternating,
}

impl RotationStrategy {
    /// The strategy's name as it appears in JSON and on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Single => "single",
            Self::Alternating => "alternating",
        }
    }
}

/// Per-credential settings of its store and target. Empty for `local` + `none`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackendSettings {
    /// `aws-sm`: the secret's name or ARN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_id: Option<String>,
    /// `postgres`: the login role; with `alternating`, the base name of `<role>_a` and
    /// `<role>_b` (and the group role they are created in when they do not exist yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// `postgres`: how the role's password is rotated (default `single`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<RotationStrategy>,
}

impl BackendSettings {
    /// True when nothing is set (the `local` + `none` case), so the field is left out of JSON.
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }

    /// The strategy, `single` unless set.
    pub fn strategy(&self) -> RotationStrategy {
        self.strategy.unwrap_or_default()
    }

    /// The target accounts a credential's versions may belong to: `[role]` for `single`,
    /// `[<role>_a, <role>_b]` for `alternating`; empty without a role.
    pub fn logins(&self) -> Vec<String> {
        match (&self.role, self.strategy()) {
            (None, _) => Vec::new(),
            (Some(r), RotationStrategy::Single) => vec![r.clone()],
            (Some(r), RotationStrategy::Alternating) => vec![format!("{r}_a"), format!("{r}_b")],
        }
    }

    /// The inventory keys that bind what these settings manage outside keyloop — each
    /// PostgreSQL login role (with `alternating`, the base role too) and the AWS secret — to one
    /// credential, so two credentials never fight over one password. Roles are hex-encoded
    /// (any text is a valid role name); a secret is known by its name, also when given as an
    /// ARN (`arn:…:secret:NAME-AbCdEf`), and bound by a digest of it.
    pub fn bindings(&self, store: StoreKind, target: TargetKind) -> Vec<String> {
        use sha2::{Digest, Sha256};
        let mut keys = Vec::new();
        if target == TargetKind::Postgres {
            let mut roles = self.logins();
            if let Some(base) = &self.role
                && !roles.contains(base)
            {
                roles.push(base.clone());
            }
            keys.extend(
                roles
                    .iter()
                    .map(|r| format!("bind.postgres.{}", hex::encode(r.as_bytes()))),
            );
        }
        if store == StoreKind::AwsSm
            && let Some(id) = &self.secret_id
        {
            let name = secret_name(id);
            keys.push(format!(
                "bind.aws-sm.{}",
                hex::encode(Sha256::digest(name.as_bytes()))
            ));
        }
        keys
    }

    /// Checks that the settings fit the store and target they are for; the error says which
    /// flag to fix.
    pub fn check(&self, store: StoreKind, target: TargetKind) -> Result<(), SettingsError> {
        match store {
            StoreKind::AwsSm => match self.secret_id.as_deref() {
                None | Some("") => {
                    return Err(SettingsError(
                        "the aws-sm store needs a secret id (--secret-id NAME)".into(),
                    ));
                }
                Some(id) if id.len() > 2048 => {
                    return Err(SettingsError(
                        "--secret-id is longer than 2048 characters".into(),
                    ));
                }
                Some(_) => {}
            },
            StoreKind::Local if self.secret_id.is_some() => {
                return Err(SettingsError(
                    "--secret-id only applies to --store aws-sm".into(),
                ));
            }
            StoreKind::Local => {}
        }
        match target {
            TargetKind::Postgres => {
                let Some(role) = self.role.as_deref() else {
                    return Err(SettingsError(
                        "the postgres target needs a login role (--role NAME)".into(),
                    ));
                };
                // NAMEDATALEN is 64: names are at most 63 bytes, and `alternating` appends `_a`.
                let max = match self.strategy() {
                    RotationStrategy::Single => 63,
                    RotationStrategy::Alternating => 61,
                };
                if role.is_empty() || role.len() > max || role.contains('\0') {
                    return Err(SettingsError(format!(
                        "--role must be 1 to {max} bytes without NUL for strategy {}",
                        self.strategy().name()
                    )));
                }
                if role.starts_with("pg_") {
                    return Err(SettingsError(
                        "--role must not start with `pg_` (reserved for PostgreSQL's own roles)"
                            .into(),
                    ));
                }
            }
            TargetKind::None if self.role.is_some() || self.strategy.is_some() => {
                return Err(SettingsError(
                    "--role and --strategy only apply to --target postgres".into(),
                ));
            }
            TargetKind::None => {}
        }
        Ok(())
    }
}

/// The name of an AWS secret given by name or by ARN: a full ARN ends in `:secret:` and the
/// name with a dash and six characters AWS added.
fn secret_name(id: &str) -> &str {
    let Some(rest) = id
        .strip_prefix("arn:")
        .and_then(|a| a.split_once(":secret:"))
        .map(|(_, name)| name)
    else {
        return id;
    };
    match rest.rsplit_once('-') {
        Some((name, suffix))
            if suffix.len() == 6 && suffix.bytes().all(|b| b.is_ascii_alphanumeric()) =>
        {
            name
        }
        _ => rest,
    }
}

/// Store or target settings that do not fit (see [`BackendSettings::check`]).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct SettingsError(String);

/// How a credential is kept fresh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Rotate when the current version is this old (seconds). `None`: only on demand or leak.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_secs: Option<u64>,
    /// How long the previous version stays valid after a scheduled rotation (seconds).
    #[serde(default)]
    pub grace_secs: u64,
    /// Revoke when unused for this long (seconds). `None`: never for idleness.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_revoke_after_secs: Option<u64>,
    /// Team or person to page about this credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
}

impl Policy {
    /// Checks every duration against its bounds in [`crate::duration`]: `max_age` and
    /// `idle_revoke_after` from 1 s to 10 years, `grace` from 0 to 1 year and never longer
    /// than `max_age`. Registration calls it before anything is written; workers call it on a
    /// record read back from the inventory before acting on it, since anyone with write
    /// access to the bucket could have put a zero or an overflowing value there.
    pub fn validate(&self) -> Result<(), crate::duration::OutOfRange> {
        use crate::duration::{GRACE, IDLE_REVOKE_AFTER, MAX_AGE};
        if let Some(max_age) = self.max_age_secs {
            MAX_AGE.check(max_age)?;
        }
        if let Some(idle) = self.idle_revoke_after_secs {
            IDLE_REVOKE_AFTER.check(idle)?;
        }
        let grace = self
            .max_age_secs
            .map_or(GRACE, |max_age| GRACE.at_most(max_age, "max-age"));
        grace.check(self.grace_secs)?;
        Ok(())
    }
}

/// A version's place in the rotation protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Created and stored, not yet in use.
    Pending,
    /// The value services should use.
    Current,
    /// The value before the current one, still valid during grace.
    Previous,
    /// Invalid everywhere; its value is destroyed.
    Revoked,
}

impl Stage {
    /// Pending, current and previous versions are live: their values work somewhere.
    pub const fn is_live(self) -> bool {
        !matches!(self, Self::Revoked)
    }

    /// The stage's name as it appears in JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Current => "current",
            Self::Previous => "previous",
            Self::Revoked => "revoked",
        }
    }
}

/// Why a version was revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RevokeReason {
    /// A detector found the value outside where it belongs.
    Leak,
    /// An operator asked (`keyloop revoke`).
    Manual,
    /// The grace period of a previous version ended.
    GraceEnded,
    /// A newer rotation replaced the previous version before its grace ended.
    Superseded,
    /// The task a lease was issued for completed.
    TaskCompleted,
    /// A lease reached its expiry.
    Expired,
    /// The credential was unused for longer than `idle_revoke_after`.
    Idle,
}

impl RevokeReason {
    /// The reason's name as it appears in JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Leak => "leak",
            Self::Manual => "manual",
            Self::GraceEnded => "grace_ended",
            Self::Superseded => "superseded",
            Self::TaskCompleted => "task_completed",
            Self::Expired => "expired",
            Self::Idle => "idle",
        }
    }
}

/// Why a rotation was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RotationReason {
    /// A leaked version was revoked and the credential needs a fresh current value.
    Leak,
    /// An operator asked (`keyloop rotate`).
    Manual,
    /// The current version reached `max_age`.
    Scheduled,
    /// The credential was registered and needs its first value.
    Initial,
}

/// One value of a credential. The value itself lives only in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Version {
    /// Version id; deterministic from the operation that created it, so a retried step
    /// finds the version it already made.
    pub id: Uuid,
    /// Where it is in the protocol.
    pub stage: Stage,
    /// Digests of the value.
    pub fingerprint: Fingerprint,
    /// The operation that created it.
    pub created_by: String,
    /// The target account this version's value belongs to (a PostgreSQL role), when the
    /// credential has one; with `alternating` it tells which of the two roles it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login: Option<String>,
    /// When it was created.
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub created_at: OffsetDateTime,
    /// When it became current.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<String>")]
    pub activated_at: Option<OffsetDateTime>,
    /// When it became previous (grace starts here).
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<String>")]
    pub demoted_at: Option<OffsetDateTime>,
    /// When it was revoked.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<String>")]
    pub revoked_at: Option<OffsetDateTime>,
    /// Why it was revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoke_reason: Option<RevokeReason>,
    /// The operation that revoked it, so a retried revocation knows the change was its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_by: Option<String>,
    /// Whether the target may have been given this value. Recorded before the `set` step calls
    /// the target, so a failed or interrupted rotation knows whether the account's password may
    /// have changed; left out of JSON when `set` (every current and previous version).
    #[serde(default, skip_serializing_if = "AtTarget::is_set")]
    pub at_target: AtTarget,
}

/// Whether a version's value may be what its target account accepts: the fact a failed
/// rotation needs to repair the account without guessing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AtTarget {
    /// Stored, never given to the target: the account is as it was.
    NotSet,
    /// The `set` step began: the account may hold this value (the default, so a record
    /// written before this field existed is treated with caution).
    #[default]
    Set,
    /// Set, then a rollback gave the account back the value of the version that holds it and
    /// proved that one logs in: this value no longer works there.
    RolledBack,
}

impl AtTarget {
    /// True for [`AtTarget::Set`].
    pub fn is_set(&self) -> bool {
        *self == Self::Set
    }
}

impl Version {
    /// A new pending version, not yet given to its target.
    pub fn pending(
        id: Uuid,
        fingerprint: Fingerprint,
        created_by: impl Into<String>,
        login: Option<String>,
        at: OffsetDateTime,
    ) -> Self {
        Self {
            id,
            stage: Stage::Pending,
            fingerprint,
            created_by: created_by.into(),
            login,
            created_at: at,
            activated_at: None,
            demoted_at: None,
            revoked_at: None,
            revoke_reason: None,
            revoked_by: None,
            at_target: AtTarget::NotSet,
        }
    }

    /// Whether the target may accept this version's value: a live version that was set there
    /// (a pending one only once its `set` step began, and not after a rollback).
    pub fn may_work_at_target(&self) -> bool {
        self.stage.is_live() && self.at_target == AtTarget::Set
    }
}

/// A managed secret: its policy, its versions, and where it lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    /// The id.
    pub id: CredentialId,
    /// Where values live.
    pub store: StoreKind,
    /// Who accepts the value.
    pub target: TargetKind,
    /// Rotation and revocation policy.
    pub policy: Policy,
    /// The store's and target's settings for this credential (secret id, role, strategy).
    #[serde(default, skip_serializing_if = "BackendSettings::is_empty")]
    pub settings: BackendSettings,
    /// Every version, oldest first.
    pub versions: Vec<Version>,
    /// When it was registered.
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub created_at: OffsetDateTime,
    /// When a value of it was last read or presented (recorded at most about once a minute).
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<String>")]
    pub last_used_at: Option<OffsetDateTime>,
    /// The operation in flight on this credential, if any: at most one across the fleet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<Claim>,
    /// Claims taken on this credential so far: the last claim's fencing token.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub claim_epoch: u64,
    /// Scheduled (or leak) rotations that failed in a row, and when the next one is tried;
    /// cleared by the next rotation that succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_retry: Option<RotationRetry>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A scheduled rotation (or the rotation after a leak) failed: it is tried again, later each
/// time, until one succeeds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RotationRetry {
    /// Why the failed rotations were started (`scheduled`, or `leak` when the leaked current
    /// version was revoked and the credential waits for a new one).
    pub reason: RotationReason,
    /// Rotations that failed in a row.
    pub failures: u32,
    /// When the next one is tried.
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub next_attempt_at: OffsetDateTime,
    /// Why the last one failed (never a value).
    pub last_error: String,
    /// The operation that failed last, so a redelivered failure is counted once.
    pub failed_op: String,
}

impl RotationRetry {
    /// First delay after a failed scheduled rotation.
    pub const FIRST_DELAY: std::time::Duration = std::time::Duration::from_secs(60);
    /// Longest delay between two attempts.
    pub const MAX_DELAY: std::time::Duration = std::time::Duration::from_secs(6 * 3600);

    /// The delay before attempt `failures + 1`: one minute, doubled per failure, at most six
    /// hours, so a broken target is not hammered and a repaired one is picked up the same day.
    pub fn delay_after(failures: u32) -> std::time::Duration {
        let doublings = failures.saturating_sub(1).min(20);
        Self::FIRST_DELAY
            .saturating_mul(1u32 << doublings)
            .min(Self::MAX_DELAY)
    }
}

/// A worker's claim on a credential for one operation, until a deadline. Another operation
/// waits until it is released or expires; the same operation (redelivered after a crash) may
/// take it over at once, because every step is idempotent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Claim {
    /// The operation (`leak-…/…`, `manual-rotate/…`, `scheduled/…`).
    pub op: String,
    /// The worker process holding it.
    pub holder: String,
    /// When it lapses if not renewed, by the holder's clock: for people reading the record.
    /// Other workers never compare it with their own clocks (see `beat`).
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub deadline: OffsetDateTime,
    /// The fencing token: one more than the last claim's on this credential, so a holder that
    /// lost its claim can tell that every later write is no longer its own.
    #[serde(default)]
    pub token: u64,
    /// Renewals so far. A waiting worker that sees the same `(holder, token, beat)` for a whole
    /// claim TTL by its own monotonic clock takes the claim: the holder stopped renewing.
    #[serde(default)]
    pub beat: u64,
}

impl Credential {
    /// When the credential was last used, or registered if never.
    pub fn last_activity(&self) -> OffsetDateTime {
        self.last_used_at.unwrap_or(self.created_at)
    }

    /// The version with this id.
    pub fn version(&self, id: Uuid) -> Option<&Version> {
        self.versions.iter().find(|v| v.id == id)
    }

    /// The version with this id, for a change.
    pub fn version_mut(&mut self, id: Uuid) -> Option<&mut Version> {
        self.versions.iter_mut().find(|v| v.id == id)
    }

    /// The first version in this stage.
    pub fn in_stage(&self, stage: Stage) -> Option<&Version> {
        self.versions.iter().find(|v| v.stage == stage)
    }

    /// The current version, if the credential has one.
    pub fn current(&self) -> Option<&Version> {
        self.in_stage(Stage::Current)
    }

    /// The target account a new version should use: `None` without a role; the role for
    /// `single`; for `alternating` the role the current version does not use (or, with no
    /// current version, the one a live previous version does not use), so the previous value
    /// keeps working on its role until it is retired.
    pub fn login_for_new_version(&self) -> Option<String> {
        let logins = self.settings.logins();
        match logins.as_slice() {
            [] => None,
            [only] => Some(only.clone()),
            [a, b, ..] => {
                let in_use = self
                    .current()
                    .or_else(|| self.in_stage(Stage::Previous))
                    .and_then(|v| v.login.as_deref());
                Some(if in_use == Some(a.as_str()) {
                    b.clone()
                } else {
                    a.clone()
                })
            }
        }
    }

    /// The live version, other than `except`, whose value the target account `login` must keep
    /// accepting: the current version on that account, else a previous one (in its grace).
    pub fn holder_of(&self, login: &str, except: Uuid) -> Option<&Version> {
        let on = |stage| {
            self.versions
                .iter()
                .find(|v| v.id != except && v.stage == stage && v.login.as_deref() == Some(login))
        };
        on(Stage::Current).or_else(|| on(Stage::Previous))
    }

    /// What retiring the unfinished (pending) version `version` needs at the target, decided
    /// from what the inventory recorded before each step: never guessed, so a failed rotation
    /// never disables an account that a live version still needs.
    pub fn undo_of_pending(&self, version: Uuid) -> PendingUndo {
        let Some(v) = self.version(version) else {
            return PendingUndo::Nothing;
        };
        if self.target == TargetKind::None || v.at_target != AtTarget::Set {
            return PendingUndo::Nothing;
        }
        match v.login.as_deref() {
            Some(login) => match self.holder_of(login, version) {
                Some(holder) => PendingUndo::Restore { holder: holder.id },
                None => PendingUndo::Invalidate,
            },
            None => PendingUndo::Invalidate,
        }
    }

    /// Ids of the versions whose values still work somewhere.
    pub fn live_versions(&self) -> Vec<Uuid> {
        self.versions
            .iter()
            .filter(|v| v.stage.is_live())
            .map(|v| v.id)
            .collect()
    }

    /// Marks a version revoked by operation `op`. Returns false when it already was revoked
    /// (nothing changed).
    pub fn revoke(
        &mut self,
        version: Uuid,
        reason: RevokeReason,
        op: &str,
        at: OffsetDateTime,
    ) -> bool {
        match self.version_mut(version) {
            Some(v) if v.stage != Stage::Revoked => {
                v.stage = Stage::Revoked;
                v.revoked_at = Some(at);
                v.revoke_reason = Some(reason);
                v.revoked_by = Some(op.to_owned());
                true
            }
            _ => false,
        }
    }

    /// Promotes a pending version: the current one becomes previous. Returns the demoted
    /// version, if any. A previous version that is still live is returned in `superseded` so the
    /// caller revokes it at its target before the change is stored: at most one previous exists.
    pub fn promote(&mut self, pending: Uuid, at: OffsetDateTime) -> Promotion {
        let mut promotion = Promotion::default();
        if self.version(pending).map(|v| v.stage) != Some(Stage::Pending) {
            return promotion;
        }
        for v in &mut self.versions {
            match v.stage {
                Stage::Previous => promotion.superseded = Some(v.id),
                Stage::Current => {
                    v.stage = Stage::Previous;
                    v.demoted_at = Some(at);
                    promotion.demoted = Some(v.id);
                }
                _ => {}
            }
        }
        if let Some(v) = self.version_mut(pending) {
            v.stage = Stage::Current;
            v.activated_at = Some(at);
        }
        promotion.promoted = true;
        promotion
    }
}

/// What must happen at the target to retire a pending version (see
/// [`Credential::undo_of_pending`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingUndo {
    /// The target never got the value, or a rollback already took it back: nothing to undo.
    Nothing,
    /// The value may have replaced the password of an account that the live version `holder`
    /// needs: give the account `holder`'s value back (roll back), then retire the pending one.
    Restore {
        /// The version whose value the account must accept again.
        holder: Uuid,
    },
    /// The value may be the password of an account no live version needs: invalidate it there.
    Invalidate,
}

/// What [`Credential::promote`] changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Promotion {
    /// The pending version became current.
    pub promoted: bool,
    /// The version that went from current to previous.
    pub demoted: Option<Uuid>,
    /// A previous version that a newer one replaces; the caller revokes it.
    pub superseded: Option<Uuid>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_path_like_and_subject_safe() {
        for ok in ["pg/app", "saas/stripe-payouts", "a", "A_1/b-2/c"] {
            assert!(ok.parse::<CredentialId>().is_ok(), "{ok}");
        }
        for bad in ["", "/a", "a/", "a//b", "a.b", "a b", "a*", ">", "_x"] {
            assert!(bad.parse::<CredentialId>().is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod stage_tests {
    use super::*;
    use time::macros::datetime;

    fn version(id: u128, stage: Stage) -> Version {
        Version {
            id: Uuid::from_u128(id),
            stage,
            fingerprint: Fingerprint {
                sha256: None,
                sha1: None,
            },
            created_by: format!("op-{id}"),
            login: None,
            created_at: datetime!(2026-01-01 0:00 UTC),
            activated_at: None,
            demoted_at: None,
            revoked_at: None,
            revoke_reason: None,
            revoked_by: None,
            at_target: AtTarget::Set,
        }
    }

    fn credential(versions: Vec<Version>) -> Credential {
        Credential {
            id: "pg/app".parse().unwrap(),
            store: StoreKind::Local,
            target: TargetKind::None,
            policy: Policy {
                max_age_secs: None,
                grace_secs: 0,
                idle_revoke_after_secs: None,
                owner: None,
            },
            settings: BackendSettings::default(),
            versions,
            created_at: datetime!(2026-01-01 0:00 UTC),
            last_used_at: None,
            claim: None,
            claim_epoch: 0,
            rotation_retry: None,
        }
    }

    #[test]
    fn promoting_a_pending_version_demotes_current_and_reports_a_live_previous() {
        let mut c = credential(vec![
            version(1, Stage::Previous),
            version(2, Stage::Current),
            version(3, Stage::Pending),
        ]);
        let p = c.promote(Uuid::from_u128(3), datetime!(2026-01-02 0:00 UTC));
        assert!(p.promoted);
        assert_eq!(p.demoted, Some(Uuid::from_u128(2)));
        assert_eq!(p.superseded, Some(Uuid::from_u128(1)));
        assert_eq!(c.current().unwrap().id, Uuid::from_u128(3));
        // Promoting again changes nothing: the step is idempotent.
        let again = c.promote(Uuid::from_u128(3), datetime!(2026-01-03 0:00 UTC));
        assert!(!again.promoted);
    }

    #[test]
    fn revoking_twice_is_one_change() {
        let mut c = credential(vec![version(1, Stage::Current)]);
        let at = datetime!(2026-01-02 0:00 UTC);
        assert!(c.revoke(Uuid::from_u128(1), RevokeReason::Leak, "leak-1", at));
        assert!(!c.revoke(Uuid::from_u128(1), RevokeReason::Manual, "other", at));
        let v = c.version(Uuid::from_u128(1)).unwrap();
        assert_eq!(v.revoked_by.as_deref(), Some("leak-1"));
        assert!(c.current().is_none());
        assert!(c.live_versions().is_empty());
    }

    fn on_postgres(versions: &[(Stage, &str, AtTarget)]) -> Credential {
        let mut c = credential(
            versions
                .iter()
                .enumerate()
                .map(|(i, (stage, login, at))| Version {
                    login: Some((*login).to_owned()),
                    at_target: *at,
                    ..version(i as u128 + 1, *stage)
                })
                .collect(),
        );
        c.target = TargetKind::Postgres;
        c
    }

    #[test]
    fn a_pending_version_that_never_reached_the_target_needs_nothing_undone() {
        let c = on_postgres(&[
            (Stage::Current, "app", AtTarget::Set),
            (Stage::Pending, "app", AtTarget::NotSet),
        ]);
        assert_eq!(c.undo_of_pending(Uuid::from_u128(2)), PendingUndo::Nothing);
        let c = on_postgres(&[
            (Stage::Current, "app", AtTarget::Set),
            (Stage::Pending, "app", AtTarget::RolledBack),
        ]);
        assert_eq!(c.undo_of_pending(Uuid::from_u128(2)), PendingUndo::Nothing);
    }

    #[test]
    fn a_set_pending_version_on_the_current_versions_role_is_rolled_back_not_disabled() {
        // single: the new password replaced the current one's on the same role.
        let c = on_postgres(&[
            (Stage::Previous, "app", AtTarget::Set),
            (Stage::Current, "app", AtTarget::Set),
            (Stage::Pending, "app", AtTarget::Set),
        ]);
        assert_eq!(
            c.undo_of_pending(Uuid::from_u128(3)),
            PendingUndo::Restore {
                holder: Uuid::from_u128(2)
            }
        );
        // alternating: the pending value went to the role nobody live uses.
        let c = on_postgres(&[
            (Stage::Revoked, "app_a", AtTarget::Set),
            (Stage::Current, "app_b", AtTarget::Set),
            (Stage::Pending, "app_a", AtTarget::Set),
        ]);
        assert_eq!(
            c.undo_of_pending(Uuid::from_u128(3)),
            PendingUndo::Invalidate
        );
        // A previous version still in its grace on that role gets its value back.
        let c = on_postgres(&[
            (Stage::Previous, "app_a", AtTarget::Set),
            (Stage::Current, "app_b", AtTarget::Set),
            (Stage::Pending, "app_a", AtTarget::Set),
        ]);
        assert_eq!(
            c.undo_of_pending(Uuid::from_u128(3)),
            PendingUndo::Restore {
                holder: Uuid::from_u128(1)
            }
        );
        // A registration's first value has nothing to restore: the role was taken over.
        let c = on_postgres(&[(Stage::Pending, "app", AtTarget::Set)]);
        assert_eq!(
            c.undo_of_pending(Uuid::from_u128(1)),
            PendingUndo::Invalidate
        );
        // The `none` target accepts nothing by itself.
        let mut c = on_postgres(&[
            (Stage::Current, "app", AtTarget::Set),
            (Stage::Pending, "app", AtTarget::Set),
        ]);
        c.target = TargetKind::None;
        assert_eq!(c.undo_of_pending(Uuid::from_u128(2)), PendingUndo::Nothing);
    }

    #[test]
    fn records_without_the_target_field_are_treated_as_set() {
        let mut v = serde_json::to_value(version(1, Stage::Pending)).unwrap();
        assert!(v.get("at_target").is_none(), "set is the default, left out");
        v.as_object_mut().unwrap().remove("at_target");
        let back: Version = serde_json::from_value(v).unwrap();
        assert_eq!(back.at_target, AtTarget::Set);
        let fresh = Version::pending(
            Uuid::from_u128(9),
            Fingerprint {
                sha256: None,
                sha1: None,
            },
            "op",
            None,
            datetime!(2026-01-01 0:00 UTC),
        );
        assert_eq!(
            serde_json::to_value(&fresh).unwrap()["at_target"],
            "not_set"
        );
    }

    #[test]
    fn failed_scheduled_rotations_are_retried_later_each_time_up_to_six_hours() {
        let d: Vec<u64> = (1..=12)
            .map(|n| RotationRetry::delay_after(n).as_secs())
            .collect();
        assert_eq!(&d[..5], &[60, 120, 240, 480, 960]);
        assert!(d.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*d.last().unwrap(), 6 * 3600);
        assert_eq!(RotationRetry::delay_after(u32::MAX).as_secs(), 6 * 3600);
    }
}

#[cfg(test)]
mod settings_tests {
    use super::*;
    use time::macros::datetime;

    fn alternating(versions: &[(Stage, &str)]) -> Credential {
        Credential {
            id: "pg/app".parse().unwrap(),
            store: StoreKind::Local,
            target: TargetKind::Postgres,
            policy: Policy {
                max_age_secs: None,
                grace_secs: 0,
                idle_revoke_after_secs: None,
                owner: None,
            },
            settings: BackendSettings {
                secret_id: None,
                role: Some("app".into()),
                strategy: Some(RotationStrategy::Alternating),
            },
            versions: versions
                .iter()
                .enumerate()
                .map(|(i, (stage, login))| Version {
                    id: Uuid::from_u128(i as u128 + 1),
                    stage: *stage,
                    fingerprint: Fingerprint {
                        sha256: None,
                        sha1: None,
                    },
                    created_by: format!("op-{i}"),
                    login: Some((*login).to_owned()),
                    created_at: datetime!(2026-01-01 0:00 UTC),
                    activated_at: None,
                    demoted_at: None,
                    revoked_at: None,
                    revoke_reason: None,
                    revoked_by: None,
                    at_target: AtTarget::Set,
                })
                .collect(),
            created_at: datetime!(2026-01-01 0:00 UTC),
            last_used_at: None,
            claim: None,
            claim_epoch: 0,
            rotation_retry: None,
        }
    }

    #[test]
    fn alternating_versions_take_the_role_the_current_one_does_not_use() {
        assert_eq!(
            alternating(&[]).login_for_new_version().as_deref(),
            Some("app_a")
        );
        let c = alternating(&[(Stage::Current, "app_a")]);
        assert_eq!(c.login_for_new_version().as_deref(), Some("app_b"));
        let c = alternating(&[(Stage::Previous, "app_a"), (Stage::Current, "app_b")]);
        assert_eq!(c.login_for_new_version().as_deref(), Some("app_a"));
        // The current one leaked and was revoked: the live previous keeps its role.
        let c = alternating(&[(Stage::Previous, "app_a"), (Stage::Revoked, "app_b")]);
        assert_eq!(c.login_for_new_version().as_deref(), Some("app_b"));
    }

    #[test]
    fn single_uses_the_role_and_none_has_no_login() {
        let mut c = alternating(&[(Stage::Current, "app")]);
        c.settings.strategy = None;
        assert_eq!(c.login_for_new_version().as_deref(), Some("app"));
        c.settings = BackendSettings::default();
        assert_eq!(c.login_for_new_version(), None);
    }

    #[test]
    fn settings_are_checked_against_store_and_target() {
        let pg = |role: &str, strategy| BackendSettings {
            secret_id: None,
            role: Some(role.into()),
            strategy: Some(strategy),
        };
        let ok = pg("app", RotationStrategy::Alternating);
        assert!(ok.check(StoreKind::Local, TargetKind::Postgres).is_ok());
        assert!(ok.check(StoreKind::Local, TargetKind::None).is_err());
        assert!(
            ok.check(StoreKind::AwsSm, TargetKind::Postgres).is_err(),
            "aws-sm needs a secret id"
        );
        assert!(
            pg(&"r".repeat(62), RotationStrategy::Alternating)
                .check(StoreKind::Local, TargetKind::Postgres)
                .is_err()
        );
        assert!(
            pg(&"r".repeat(63), RotationStrategy::Single)
                .check(StoreKind::Local, TargetKind::Postgres)
                .is_ok()
        );
        assert!(
            pg("pg_monitor", RotationStrategy::Single)
                .check(StoreKind::Local, TargetKind::Postgres)
                .is_err()
        );
        assert!(
            BackendSettings::default()
                .check(StoreKind::Local, TargetKind::Postgres)
                .is_err()
        );
        let sm = BackendSettings {
            secret_id: Some("prod/app".into()),
            ..Default::default()
        };
        assert!(sm.check(StoreKind::AwsSm, TargetKind::None).is_ok());
        assert!(sm.check(StoreKind::Local, TargetKind::None).is_err());
    }

    #[test]
    fn every_managed_role_and_secret_is_bound_once_whatever_its_spelling() {
        let pg = |role: &str, strategy| BackendSettings {
            role: Some(role.into()),
            strategy,
            ..BackendSettings::default()
        };
        let single = pg("app", None).bindings(StoreKind::Local, TargetKind::Postgres);
        let alternating = pg("app", Some(RotationStrategy::Alternating))
            .bindings(StoreKind::Local, TargetKind::Postgres);
        assert_eq!(single, ["bind.postgres.617070"]);
        assert_eq!(alternating.len(), 3, "app_a, app_b and the base role app");
        assert!(alternating.contains(&single[0]), "both claim role app");
        let a = pg("app_a", None).bindings(StoreKind::Local, TargetKind::Postgres);
        assert!(alternating.contains(&a[0]));
        let aws = |id: &str| BackendSettings {
            secret_id: Some(id.into()),
            ..BackendSettings::default()
        };
        let by_name = aws("prod/db").bindings(StoreKind::AwsSm, TargetKind::None);
        let by_arn = aws("arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/db-Ab12Cd")
            .bindings(StoreKind::AwsSm, TargetKind::None);
        assert_eq!(by_name, by_arn);
        assert_ne!(
            by_name,
            aws("prod/db2").bindings(StoreKind::AwsSm, TargetKind::None)
        );
        assert!(
            BackendSettings::default()
                .bindings(StoreKind::Local, TargetKind::None)
                .is_empty()
        );
        for key in single.iter().chain(&alternating).chain(&by_name) {
            assert!(
                key.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
                "{key} is a valid KV key"
            );
        }
    }

    #[test]
    fn credentials_without_settings_keep_their_json_shape() {
        let c = alternating(&[]);
        let mut plain = c.clone();
        plain.settings = BackendSettings::default();
        plain.target = TargetKind::None;
        let json = serde_json::to_value(&plain).unwrap();
        assert!(json.get("settings").is_none());
        let back: Credential = serde_json::from_value(serde_json::to_value(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }
}
