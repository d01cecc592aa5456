//! Decoding inbound CloudEvents without echoing their content: a malformed message may carry a
//! plaintext value, so a decode error names the position and the category, never the text.
//!
//! The envelope is read first, so an event of another type is refused as such ("unknown event
//! type"), whatever its `data` holds; only then is `data` decoded into the expected payload.

use keyloop_core::CloudEvent;
use keyloop_core::event::{
    CREDENTIAL_USED_TYPE, LEAK_DETECTED_TYPE, REVOKE_COMMAND_TYPE, REVOKE_LEASE_COMMAND_TYPE,
    ROTATE_COMMAND_TYPE, SCHEDULE_TICK_TYPE, TASK_COMPLETED_TYPE,
};
use keyloop_nats::HandlerError;
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// The event types keyloop's workers consume. Only these are ever quoted in a rejection: any
/// other `type` attribute is input we do not know, and input may hold a secret.
pub const INBOUND_TYPES: [&str; 7] = [
    LEAK_DETECTED_TYPE,
    REVOKE_COMMAND_TYPE,
    ROTATE_COMMAND_TYPE,
    REVOKE_LEASE_COMMAND_TYPE,
    SCHEDULE_TICK_TYPE,
    TASK_COMPLETED_TYPE,
    CREDENTIAL_USED_TYPE,
];

/// The attributes checked before `data` is looked at; everything else is skipped unread.
#[derive(Deserialize)]
struct Envelope {
    specversion: String,
    #[serde(rename = "type")]
    ty: String,
}

/// Decodes `payload` as a CloudEvent of `expected_type`; anything else is a permanent error
/// whose reason quotes nothing from the payload except a known keyloop event type.
pub fn cloud_event<T: DeserializeOwned>(
    payload: &[u8],
    expected_type: &str,
) -> Result<CloudEvent<T>, HandlerError> {
    let malformed = |e: serde_json::Error| {
        HandlerError::permanent(format!(
            "malformed {expected_type} event: {} error at line {} column {} (expected a CloudEvents 1.0 JSON envelope; see schemas/)",
            category(&e),
            e.line(),
            e.column()
        ))
    };
    let envelope: Envelope = serde_json::from_slice(payload).map_err(malformed)?;
    if envelope.ty != expected_type {
        let reason = if INBOUND_TYPES.contains(&envelope.ty.as_str()) {
            format!(
                "wrong event type `{}` on this subject (expected `{expected_type}`)",
                envelope.ty
            )
        } else {
            format!(
                "unknown event type on this subject (expected `{expected_type}`; got a type of {} characters that is not keyloop's, not shown since an unrecognised attribute may hold anything)",
                envelope.ty.chars().count()
            )
        };
        return Err(HandlerError::permanent(reason));
    }
    if envelope.specversion != keyloop_core::event::SPEC_VERSION {
        return Err(HandlerError::permanent(format!(
            "unsupported CloudEvents specversion (expected {})",
            keyloop_core::event::SPEC_VERSION
        )));
    }
    serde_json::from_slice(payload).map_err(malformed)
}

/// Decodes `payload` as a command of kind `C` (see [`cloud_event`]).
pub fn command<C: keyloop_core::event::Command>(
    payload: &[u8],
) -> Result<CloudEvent<C>, HandlerError> {
    cloud_event(payload, C::TYPE)
}

fn category(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Io => "I/O",
        serde_json::error::Category::Syntax => "JSON syntax",
        serde_json::error::Category::Data => "schema (missing, unknown or mistyped field)",
        serde_json::error::Category::Eof => "truncated JSON",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyloop_core::LeakFinding;
    use keyloop_core::event::TaskCompleted;

    #[test]
    fn decode_errors_never_echo_the_payload() {
        let payload = br#"{"specversion":"1.0","id":"x","source":"s","type":"dev.keyloop.leak.detected","time":"2026-01-01T00:00:00Z","datacontenttype":"application/json","data":{"secret":"hunter2-plaintext"}}"#;
        let err = cloud_event::<LeakFinding>(payload, "dev.keyloop.leak.detected").unwrap_err();
        assert!(!err.reason.contains("hunter2"), "{}", err.reason);
        assert!(err.reason.contains("schema"), "{}", err.reason);
    }

    #[test]
    fn an_unknown_type_is_named_as_such_whatever_its_data_and_never_quoted() {
        let payload = br#"{"specversion":"1.0","id":"x","source":"s","type":"FAKE-secret-in-type-0001","time":"2026-01-01T00:00:00Z","datacontenttype":"application/json","data":[1,2,3]}"#;
        let err = cloud_event::<TaskCompleted>(payload, TASK_COMPLETED_TYPE).unwrap_err();
        assert!(
            err.reason.starts_with("unknown event type"),
            "{}",
            err.reason
        );
        assert!(!err.reason.contains("FAKE-secret"), "{}", err.reason);
        assert!(err.reason.contains("24 characters"), "{}", err.reason);
    }

    #[test]
    fn a_known_type_on_the_wrong_subject_is_named() {
        let payload = br#"{"specversion":"1.0","id":"x","source":"s","type":"dev.keyloop.cmd.rotate","time":"2026-01-01T00:00:00Z","datacontenttype":"application/json","data":{}}"#;
        let err = cloud_event::<TaskCompleted>(payload, TASK_COMPLETED_TYPE).unwrap_err();
        assert!(
            err.reason
                .starts_with("wrong event type `dev.keyloop.cmd.rotate`"),
            "{}",
            err.reason
        );
    }
}
