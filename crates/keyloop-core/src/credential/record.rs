//! The credential record workers update with compare-and-set: its versions, claim, retry
//! state, and the rules for moving a version between stages.

use super::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

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
    /// Actors allowed to fetch its value (besides its owner and the admins; see `api`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consumers: Vec<String>,
    /// Offboarded: every version revoked, nothing scheduled; the record stays as history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired: Option<Retired>,
    /// Claims taken on this credential so far: the last claim's fencing token.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub claim_epoch: u64,
    /// Scheduled (or leak) rotations that failed in a row, and when the next one is tried;
    /// cleared by the next rotation that succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_retry: Option<RotationRetry>,
}

/// When and why a credential was offboarded, and by whom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Retired {
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub at: OffsetDateTime,
    /// The actor who asked.
    pub by: String,
    /// Why.
    pub reason: String,
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
mod stage_tests {
    use super::*;
    use crate::fingerprint::Fingerprint;
    use time::macros::datetime;
    use uuid::Uuid;

    fn version(id: u128, stage: Stage) -> Version {
        Version {
            id: Uuid::from_u128(id),
            stage,
            fingerprint: None,
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
                ..Default::default()
            },
            settings: BackendSettings::default(),
            versions,
            created_at: datetime!(2026-01-01 0:00 UTC),
            last_used_at: None,
            claim: None,
            consumers: Vec::new(),
            retired: None,
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
