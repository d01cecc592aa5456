//! Every message keyloop publishes is a CloudEvents 1.0 JSON envelope with the extension
//! attributes `correlationid` (the leak or operator request that started the chain) and
//! `causationid` (the message that caused this one). Ids are deterministic where a retried
//! step must produce the same event, so JetStream's `Nats-Msg-Id` dedup makes a redelivery
//! publish nothing new.

use crate::credential::{CredentialId, RevokeReason, RotationReason, Stage};
use crate::fingerprint::FingerprintTag;
use crate::leak::LeakFinding;
use crate::lease::{Lease, LeaseInfo};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// The CloudEvents spec version keyloop speaks.
pub const SPEC_VERSION: &str = "1.0";

/// Namespace for deterministic (v5) ids.
const ID_NAMESPACE: Uuid = Uuid::from_u128(0x6b65_796c_6f6f_7000_8000_0000_0000_0001);

/// A deterministic id for `name`: the same name gives the same id on every replica.
pub fn stable_id(name: &str) -> Uuid {
    Uuid::new_v5(&ID_NAMESPACE, name.as_bytes())
}

/// A CloudEvents 1.0 envelope around `data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CloudEvent<T> {
    /// Always `1.0`.
    pub specversion: String,
    /// Unique per event; deterministic for events a retried step may publish again.
    pub id: String,
    /// Who published it: `keyloop/<role>` or `keyloop/cli`.
    pub source: String,
    /// For example `dev.keyloop.credential.revoked`.
    #[serde(rename = "type")]
    pub ty: String,
    /// When it happened.
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub time: OffsetDateTime,
    /// The credential id, when the event is about one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Always `application/json`.
    pub datacontenttype: String,
    /// The leak, task or request that started the chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlationid: Option<String>,
    /// The id of the message that caused this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causationid: Option<String>,
    /// The proved actor who asked for what this event starts (a command sent by the control
    /// plane on someone's request); absent for what keyloop does by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// The payload.
    pub data: T,
}

impl<T> CloudEvent<T> {
    /// An envelope with `time` = now.
    pub fn new(id: impl Into<String>, source: &str, ty: impl Into<String>, data: T) -> Self {
        Self {
            specversion: SPEC_VERSION.into(),
            id: id.into(),
            source: source.into(),
            ty: ty.into(),
            time: OffsetDateTime::now_utc(),
            subject: None,
            datacontenttype: "application/json".into(),
            correlationid: None,
            causationid: None,
            actor: None,
            data,
        }
    }

    /// Sets the actor (see [`CloudEvent::actor`]).
    pub fn by(mut self, actor: Option<String>) -> Self {
        self.actor = actor;
        self
    }

    /// Sets the subject (credential id).
    pub fn with_subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// Sets correlation and causation ids.
    pub fn caused_by(mut self, correlation: Option<String>, causation: Option<String>) -> Self {
        self.correlationid = correlation;
        self.causationid = causation;
        self
    }
}

/// The type of a leak finding event.
pub const LEAK_DETECTED_TYPE: &str = "dev.keyloop.leak.detected";
/// The type of a revoke command.
pub const REVOKE_COMMAND_TYPE: &str = "dev.keyloop.cmd.revoke";
/// The type of a rotate command.
pub const ROTATE_COMMAND_TYPE: &str = "dev.keyloop.cmd.rotate";

/// `keyloop.leak.detected`: a finding, hashed at the edge.
pub type LeakDetected = CloudEvent<LeakFinding>;

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
    /// A destructive scope asked for approval.
    ApprovalRequested,
    /// An approval was granted.
    ApprovalGranted,
    /// An approval was denied.
    ApprovalDenied,
    /// A request was refused: its actor has no right to it (who, what, why).
    Denied,
    /// A credential was offboarded: every version revoked, nothing scheduled, history kept.
    Retired,
    /// A value was presented for verification and does not work: a revoked or leaked
    /// version, or no version of that credential at all (who tried it, which version).
    VerifyDenied,
}

impl LifecycleKind {
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
            Self::Denied => "denied",
            Self::Retired => "retired",
            Self::VerifyDenied => "verify_denied",
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

/// A command: an internal work item on `<prefix>.cmd.<SUBJECT>`, consumed by one worker role.
/// It knows its CloudEvent type, its subject and the operation it starts, so the one way to send
/// one (the workers' outbox, `WorkerContext::send_command`) derives its event id and `Nats-Msg-Id` the same way for every
/// command: from [`Command::dedup_key`], so a command sent again for the same operation is
/// dropped by the stream's dedup window.
pub trait Command: Serialize + DeserializeOwned {
    /// The CloudEvent type (`dev.keyloop.cmd.…`).
    const TYPE: &'static str;
    /// The subject after `<prefix>.cmd.` (`revoke`, `rotate`, `lease.revoke`).
    const SUBJECT: &'static str;

    /// The operation this command starts or resumes; every step and event derives its id from
    /// it.
    fn op_id(&self) -> &str;

    /// The CloudEvent `subject`: the credential id or lease token the command is about.
    fn about(&self) -> String;

    /// What makes two sends the same command: the operation id, and for a leak the minute it
    /// was published in — leaks of one version within a minute are one command, and a later
    /// leak of a version still live (its revocation failed) sends it again.
    fn dedup_key(&self) -> String {
        self.op_id().to_owned()
    }

    /// The command's event id (and `Nats-Msg-Id`): one scheme for every command.
    fn event_id(&self) -> String {
        stable_id(&format!("cmd/{}/{}", Self::SUBJECT, self.dedup_key())).to_string()
    }

    /// The command as the CloudEvent that carries it, sent by `source` as part of the chain
    /// `correlation`, caused by the message `causation`.
    fn into_event(
        self,
        source: &str,
        correlation: Option<String>,
        causation: Option<String>,
    ) -> CloudEvent<Self>
    where
        Self: Sized,
    {
        let (id, about) = (self.event_id(), self.about());
        CloudEvent::new(id, source, Self::TYPE, self)
            .with_subject(about)
            .caused_by(correlation, causation)
    }
}

/// Leaks of one live version published further apart than this send its revocation's command
/// again (for the same operation); closer together they send the same message, which the
/// commands stream drops. A minute outlasts a burst of findings and a healthy revocation by far,
/// and is short enough that a leak reported again after a failed revocation is acted on.
pub const LEAK_RESEND_AFTER_SECS: i64 = 60;

/// `op` and, for a leak, its window of [`LEAK_RESEND_AFTER_SECS`] (see [`Command::dedup_key`]).
fn leak_window_key(op: &str, leak_published_at: Option<OffsetDateTime>) -> String {
    match leak_published_at {
        Some(t) => format!(
            "{op}/{}",
            t.unix_timestamp().div_euclid(LEAK_RESEND_AFTER_SECS)
        ),
        None => op.to_owned(),
    }
}

impl Command for RevokeCommand {
    const TYPE: &'static str = REVOKE_COMMAND_TYPE;
    const SUBJECT: &'static str = "revoke";
    fn op_id(&self) -> &str {
        &self.op_id
    }
    fn about(&self) -> String {
        self.credential.to_string()
    }
    fn dedup_key(&self) -> String {
        leak_window_key(&self.op_id, self.leak_published_at)
    }
}

impl Command for RotateCommand {
    const TYPE: &'static str = ROTATE_COMMAND_TYPE;
    const SUBJECT: &'static str = "rotate";
    fn op_id(&self) -> &str {
        &self.op_id
    }
    fn about(&self) -> String {
        self.credential.to_string()
    }
}

impl Command for RevokeLeaseCommand {
    const TYPE: &'static str = REVOKE_LEASE_COMMAND_TYPE;
    const SUBJECT: &'static str = "lease.revoke";
    fn op_id(&self) -> &str {
        &self.op_id
    }
    fn about(&self) -> String {
        Lease::subject_token(self.lease)
    }
    fn dedup_key(&self) -> String {
        leak_window_key(&self.op_id, self.leak_published_at)
    }
}

/// `keyloop.cmd.revoke`: make versions of a credential invalid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeCommand {
    /// The credential.
    pub credential: CredentialId,
    /// The version to revoke; absent: every live version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<Uuid>,
    /// Why.
    pub reason: RevokeReason,
    /// Operation id; every step and event of this revocation derives its ids from it.
    pub op_id: String,
    /// For a leak: when the leak was published, to measure time-to-revoke.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<String>")]
    pub leak_published_at: Option<OffsetDateTime>,
    /// Issue a fresh current version once the revocation is durable (a leaked current version).
    #[serde(default)]
    pub then_rotate: bool,
    /// Free text for the audit log (the operator's `--reason`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The type of a lease revocation command.
pub const REVOKE_LEASE_COMMAND_TYPE: &str = "dev.keyloop.cmd.lease.revoke";
/// The type of a schedule tick.
pub const SCHEDULE_TICK_TYPE: &str = "dev.keyloop.schedule.tick";
/// The type of a task completion.
pub const TASK_COMPLETED_TYPE: &str = "dev.keyloop.task.completed";
/// The type of a credential use reported by a service.
pub const CREDENTIAL_USED_TYPE: &str = "dev.keyloop.credential.used";

/// `keyloop.cmd.lease.revoke`: end a JIT lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeLeaseCommand {
    /// The lease.
    pub lease: Uuid,
    /// Why (`task_completed`, `expired`, `leak`, `manual`).
    pub reason: RevokeReason,
    /// Operation id.
    pub op_id: String,
    /// For a leak: when the leak was published, to measure time-to-revoke.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<String>")]
    pub leak_published_at: Option<OffsetDateTime>,
}

/// `keyloop.schedule.tick`: one per window, whatever the number of scheduler replicas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleTick {
    /// Start of the window (Unix seconds); the tick's id and `Nats-Msg-Id` derive from it.
    pub window_start: i64,
    /// Window length in seconds.
    pub window_secs: u64,
}

/// `keyloop.task.completed`: revoke every lease of the task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskCompleted {
    /// The task.
    pub task_id: String,
}

/// `keyloop.credential.used`: a service used a credential (drives idle revocation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CredentialUsed {
    /// The credential.
    pub credential: CredentialId,
    /// The version, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<Uuid>,
    /// Who used it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
}

/// `keyloop.cmd.rotate`: give a credential a new current version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateCommand {
    /// The credential.
    pub credential: CredentialId,
    /// Why.
    pub reason: RotationReason,
    /// Operation id; the new version's id is derived from it, so a retried rotation resumes.
    pub op_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_id_derives_from_its_kind_its_operation_and_a_leaks_minute() {
        let at = |secs| OffsetDateTime::from_unix_timestamp(secs).unwrap();
        let revoke = |op: &str, leak: Option<OffsetDateTime>| RevokeCommand {
            credential: "saas/x".parse().unwrap(),
            version: None,
            reason: RevokeReason::Leak,
            op_id: op.into(),
            leak_published_at: leak,
            then_rotate: false,
            note: None,
        };
        let first = revoke("leak-revoke/saas/x/v", Some(at(1_800_000_000))).event_id();
        assert_eq!(
            first,
            revoke("leak-revoke/saas/x/v", Some(at(1_800_000_059))).event_id(),
            "leaks of one version within a minute: one command"
        );
        assert_ne!(
            first,
            revoke("leak-revoke/saas/x/v", Some(at(1_800_000_060))).event_id(),
            "a later leak sends it again"
        );
        assert_ne!(
            first,
            revoke("leak-revoke/saas/y/v", Some(at(1_800_000_000))).event_id()
        );
        assert_eq!(
            revoke("retire/x/v", None).event_id(),
            revoke("retire/x/v", None).event_id()
        );
        let rotate = RotateCommand {
            credential: "saas/x".parse().unwrap(),
            reason: RotationReason::Manual,
            op_id: "retire/x/v".into(),
        };
        assert_ne!(
            rotate.event_id(),
            revoke("retire/x/v", None).event_id(),
            "the kind is part of the id"
        );
    }

    #[test]
    fn lifecycle_ids_are_deterministic_per_step_and_kind() {
        let cred: CredentialId = "pg/app".parse().unwrap();
        let a = lifecycle_event(
            "keyloop/test",
            "op-1/v1",
            LifecycleData::new(LifecycleKind::Revoked, Some(cred.clone()), None),
        );
        let b = lifecycle_event(
            "keyloop/other",
            "op-1/v1",
            LifecycleData::new(LifecycleKind::Revoked, Some(cred.clone()), None),
        );
        let c = lifecycle_event(
            "keyloop/test",
            "op-1/v1",
            LifecycleData::new(LifecycleKind::Rotated, Some(cred), None),
        );
        assert_eq!(a.id, b.id);
        assert_ne!(a.id, c.id);
        assert_eq!(a.ty, "dev.keyloop.credential.revoked");
        assert_eq!(a.subject.as_deref(), Some("pg/app"));
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(json["specversion"], "1.0");
        assert_eq!(json["type"], "dev.keyloop.credential.revoked");
    }
}
