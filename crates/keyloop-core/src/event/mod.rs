//! Every message keyloop publishes is a CloudEvents 1.0 JSON envelope with the extension
//! attributes `correlationid` (the leak or operator request that started the chain) and
//! `causationid` (the message that caused this one). Ids are deterministic where a retried
//! step must produce the same event, so JetStream's `Nats-Msg-Id` dedup makes a redelivery
//! publish nothing new.

mod command;
mod lifecycle;

pub use command::*;
pub use lifecycle::*;

use crate::leak::LeakFinding;
use schemars::JsonSchema;
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
    /// The report this chain belongs to (`batch-<uuid>`): `keyloop ingest` gives every report
    /// one, carried by all its findings and everything they cause, so one incident has one id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batchid: Option<String>,
    /// The proved actor who asked for what this event starts (a command sent by the control
    /// plane on someone's request); absent for what keyloop does by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// The W3C trace context of the span that published it (the CloudEvents
    /// distributed-tracing extension), when traces are recorded; the same as the message's
    /// `traceparent` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
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
            batchid: None,
            actor: None,
            traceparent: None,
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

    /// Sets the report (batch) id (see [`CloudEvent::batchid`]).
    pub fn in_batch(mut self, batch: Option<String>) -> Self {
        self.batchid = batch;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credential::{CredentialId, RevokeReason, RotationReason};

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
            released_by: None,
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
