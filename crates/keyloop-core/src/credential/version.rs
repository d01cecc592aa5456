//! A credential's versions: their stages and why they change, and whether the target may
//! accept a version's value.

use crate::fingerprint::{Fingerprint, FingerprintTag};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

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

impl RotationReason {
    /// The reason's name as it appears in JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Leak => "leak",
            Self::Manual => "manual",
            Self::Scheduled => "scheduled",
            Self::Initial => "initial",
        }
    }
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
    /// The tag of the value's digests, for people; none until the value is stored. The full
    /// digests are kept only in the fingerprint index (see [`FingerprintTag`]): whoever reads
    /// the inventory (the control plane's `show`) must not learn what a leak would match.
    /// Records written before tags existed held the digests here; they are read as their tag.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::fingerprint::optional_tag"
    )]
    pub fingerprint: Option<FingerprintTag>,
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
            fingerprint: fingerprint.tag(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotation_reasons_name_is_its_json_form() {
        use RotationReason::*;
        for reason in [Leak, Manual, Scheduled, Initial] {
            assert_eq!(
                serde_json::to_value(reason).unwrap(),
                serde_json::json!(reason.name())
            );
        }
    }
}
