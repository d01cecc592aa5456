//! Commands (internal work items on `<prefix>.cmd.…`) and the other inputs the workers
//! consume: schedule ticks, task completions, credential uses.

use super::{CloudEvent, REVOKE_COMMAND_TYPE, ROTATE_COMMAND_TYPE, stable_id};
use crate::credential::{CredentialId, RevokeReason, RotationReason};
use crate::lease::Lease;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;
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
    /// The approval that released this revocation from a tripped revocation budget: it is
    /// not held again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_by: Option<String>,
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
