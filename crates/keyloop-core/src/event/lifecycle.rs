//! Lifecycle events: what happened to a credential, a version or a lease, on
//! `<prefix>.lifecycle.<kind>.<credential>`, and the payload every one of them carries.

use super::{CloudEvent, stable_id};
use crate::credential::{CredentialId, RevokeReason, RotationReason, Stage};
use crate::fingerprint::FingerprintTag;
use crate::lease::{Lease, LeaseInfo};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;
/// What a lifecycle event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LifecycleKind {
    /// A credential was registered with its first version.
    Created,
    /// A JIT credential was issued.
    Issued,
    /// A value was read or presented.
    Used,
    /// A pending version was created and stored.
    RotationStarted,
    /// A pending version became current.
    Rotated,
    /// A rotation gave up.
    RotationFailed,
    /// A version was made invalid at its target and its value destroyed.
    Revoked,
    /// A revocation gave up.
    RevocationFailed,
    /// A lease ended by its TTL.
    Expired,
    /// A leak matched a live version.
    LeakMatched,
    /// A leak matched nothing keyloop manages.
    LeakUnmatched,
    /// A leak matched a version that was already dead.
    LeakInert,
    /// A request the policy allows only after an approval is held until approvers decide
    /// (who asked, for what, why, until when).
    ApprovalRequested,
    /// An approver agreed: once per approver, the last one needed with the approval granted.
    ApprovalGranted,
    /// An approver refused, with the reason: the request is dropped.
    ApprovalDenied,
    /// Nobody decided before the approval's deadline: the request is dropped.
    ApprovalExpired,
    /// The revocation budget of a target was spent: further non-leak revocations of it are
    /// held as one approval.
    BudgetTripped,
    /// A tripped budget was released by an approval: the held revocations run.
    BudgetReleased,
    /// A request was refused: its actor has no right to it (who, what, why).
    Denied,
    /// A credential was offboarded: every version revoked, nothing scheduled, history kept.
    Retired,
    /// A value was presented for verification and does not work: a revoked or leaked
    /// version, or no version of that credential at all (who tried it, which version).
    VerifyDenied,
    /// A DLQ entry was published again to the subject it came from (who, which entry, where
    /// it went).
    DlqRetried,
    /// A DLQ entry was removed without being processed (who, which entry, its reason).
    DlqPurged,
}

impl LifecycleKind {
    /// Every kind.
    pub const ALL: [LifecycleKind; 23] = [
        Self::Created,
        Self::Issued,
        Self::Used,
        Self::RotationStarted,
        Self::Rotated,
        Self::RotationFailed,
        Self::Revoked,
        Self::RevocationFailed,
        Self::Expired,
        Self::LeakMatched,
        Self::LeakUnmatched,
        Self::LeakInert,
        Self::ApprovalRequested,
        Self::ApprovalGranted,
        Self::ApprovalDenied,
        Self::ApprovalExpired,
        Self::BudgetTripped,
        Self::BudgetReleased,
        Self::Denied,
        Self::Retired,
        Self::VerifyDenied,
        Self::DlqRetried,
        Self::DlqPurged,
    ];

    /// The name used in subjects and JSON (`rotation_started`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Issued => "issued",
            Self::Used => "used",
            Self::RotationStarted => "rotation_started",
            Self::Rotated => "rotated",
            Self::RotationFailed => "rotation_failed",
            Self::Revoked => "revoked",
            Self::RevocationFailed => "revocation_failed",
            Self::Expired => "expired",
            Self::LeakMatched => "leak_matched",
            Self::LeakUnmatched => "leak_unmatched",
            Self::LeakInert => "leak_inert",
            Self::ApprovalRequested => "approval_requested",
            Self::ApprovalGranted => "approval_granted",
            Self::ApprovalDenied => "approval_denied",
            Self::ApprovalExpired => "approval_expired",
            Self::BudgetTripped => "budget_tripped",
            Self::BudgetReleased => "budget_released",
            Self::Denied => "denied",
            Self::Retired => "retired",
            Self::VerifyDenied => "verify_denied",
            Self::DlqRetried => "dlq_retried",
            Self::DlqPurged => "dlq_purged",
        }
    }

    /// The CloudEvents type: `dev.keyloop.credential.<name>`.
    pub fn event_type(self) -> String {
        format!("dev.keyloop.credential.{}", self.name())
    }
}

/// The payload of every lifecycle event. Fields beyond `kind` are present when they apply to
/// the kind; none of them is ever a secret value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LifecycleData {
    /// What happened.
    pub kind: LifecycleKind,
    /// The credential, when one is concerned (absent for `leak_unmatched`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<CredentialId>,
    /// The version concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<Uuid>,
    /// The version's stage after the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<Stage>,
    /// The tag of the version's value (`created`, `rotation_started`) or of the leaked one
    /// (`leak_matched`, `leak_inert` of a lease): a short form for people that no leak can be
    /// built from, never a digest (see [`FingerprintTag`]). Events published before tags existed carried the full
    /// digests here; they are read as their tag.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::fingerprint::optional_tag"
    )]
    pub fingerprint: Option<FingerprintTag>,
    /// `rotated`: the version that went from current to previous.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_version: Option<Uuid>,
    /// `revoked`: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoke_reason: Option<RevokeReason>,
    /// `rotation_started`, `rotated`: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_reason: Option<RotationReason>,
    /// The stage a leaked version was in when it matched (`leak_matched`, `leak_inert`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched_stage: Option<Stage>,
    /// `revoked` by a leak: milliseconds from the leak's publish to the value being dead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_to_revoke_ms: Option<u64>,
    /// Failures, and the detector of a leak: words for the operator, never a value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Who or what asked (`leak-responder`, `cli`, an operator's free-text reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// The lease, for events about a JIT credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseInfo>,
    /// `leak_matched`: the revocation it asked for. There is one per leaked version (or
    /// lease), however many leaks name it, so every `leak_matched` of a version points at the
    /// same operation: the version's `revoked_by` once it is revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op_id: Option<String>,
    /// The ids of the policies that decided a request (`denied`, `issued`, approvals), as the
    /// workers' `--policy` names them (`@id`); empty on a deny no permit applied to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<String>,
    /// What the policy decided for the request this event records: `allow`, `notify` (an
    /// `issued` marked so is the notification the scope's tier asks for), `approve`, `deny`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// The approval an `approval_*` or `budget_*` event is about, or that a request's grant
    /// was redeemed from (`issued`, and what a released approval ran).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalInfo>,
}

/// The approval a lifecycle event is about: what was asked, by whom, and how far it got. Never
/// a value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalInfo {
    /// The approval id (`keyloop approvals show ID`).
    pub id: String,
    /// The action held (`issue`, `rotate`, `revoke`, `retire`, `fetch`, `revoke-batch`).
    pub action: String,
    /// What it is about: a credential id, a JIT scope, or a target for a batch.
    pub resource: String,
    /// Who asked (a proved actor, or the worker that held a batch).
    pub requester: String,
    /// Distinct approvers needed.
    pub approvers_needed: u32,
    /// Grants so far.
    pub grants: u32,
    /// The deadline.
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub expires_at: time::OffsetDateTime,
}

impl LifecycleData {
    /// A payload of this kind about this credential and version; the rest left empty.
    pub fn new(
        kind: LifecycleKind,
        credential: Option<CredentialId>,
        version: Option<Uuid>,
    ) -> Self {
        Self {
            kind,
            credential,
            version,
            stage: None,
            fingerprint: None,
            previous_version: None,
            revoke_reason: None,
            rotation_reason: None,
            matched_stage: None,
            time_to_revoke_ms: None,
            detail: None,
            actor: None,
            lease: None,
            op_id: None,
            policies: Vec::new(),
            outcome: None,
            approval: None,
        }
    }
}

/// A lifecycle event: `keyloop.lifecycle.<kind>.<credential>`.
pub type LifecycleEvent = CloudEvent<LifecycleData>;

/// The subject token used for lifecycle events that concern no credential.
pub const NO_CREDENTIAL_TOKEN: &str = "_none";

/// Builds a lifecycle event about a lease, on subject token `_lease-<id>`.
pub fn lease_event(
    source: &str,
    step: &str,
    mut data: LifecycleData,
    lease: &Lease,
) -> LifecycleEvent {
    data.lease = Some(LeaseInfo::from(lease));
    let mut ev = lifecycle_event(source, step, data);
    ev.subject = Some(Lease::subject_token(lease.id));
    ev
}

/// The subject token of a lifecycle event: the credential id, `_lease-<id>`, or `_none`.
pub fn subject_token(event: &LifecycleEvent) -> String {
    match (&event.data.credential, &event.data.lease) {
        (Some(c), _) => c.to_string(),
        (None, Some(l)) => Lease::subject_token(l.lease_id),
        (None, None) => NO_CREDENTIAL_TOKEN.to_owned(),
    }
}

/// Builds a lifecycle event whose id is derived from `step` (an operation id plus whatever makes
/// the step unique), so every replica that performs the step publishes the same event.
pub fn lifecycle_event(source: &str, step: &str, data: LifecycleData) -> LifecycleEvent {
    let id = stable_id(&format!("{step}/{}", data.kind.name()));
    let ty = data.kind.event_type();
    let subject = data.credential.as_ref().map(|c| c.to_string());
    let mut ev = CloudEvent::new(id.to_string(), source, ty, data);
    ev.subject = subject;
    ev
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_holds_every_kind_once() {
        let names: std::collections::HashSet<&str> =
            LifecycleKind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(names.len(), LifecycleKind::ALL.len());
        let schema = serde_json::to_value(schemars::schema_for!(LifecycleKind)).unwrap();
        let in_schema = schema.to_string().matches("\"const\"").count()
            + schema["enum"].as_array().map_or(0, Vec::len);
        assert_eq!(in_schema, LifecycleKind::ALL.len(), "{schema}");
        for kind in LifecycleKind::ALL {
            let json = serde_json::to_value(kind).unwrap();
            assert_eq!(json, kind.name());
        }
    }
}
