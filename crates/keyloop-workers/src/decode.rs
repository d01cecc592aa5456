//! Decoding inbound CloudEvents without echoing their content: a malformed message may carry a
//! plaintext value, so a decode error names the position and the category, never the text.

use keyloop_core::CloudEvent;
use keyloop_nats::HandlerError;
use serde::de::DeserializeOwned;

/// Decodes `payload` as a CloudEvent of `expected_type`; anything else is a permanent error.
pub(crate) fn cloud_event<T: DeserializeOwned>(
    payload: &[u8],
    expected_type: &str,
) -> Result<CloudEvent<T>, HandlerError> {
    let event: CloudEvent<T> = serde_json::from_slice(payload).map_err(|e| {
        HandlerError::permanent(format!(
            "malformed {expected_type} event: {} error at line {} column {} (expected a CloudEvents 1.0 JSON envelope; see schemas/)",
            category(&e),
            e.line(),
            e.column()
        ))
    })?;
    if event.ty != expected_type {
        // The type is a short attribute; cap it in case someone put a value there.
        let ty: String = event.ty.chars().take(64).collect();
        return Err(HandlerError::permanent(format!(
            "unknown event type `{ty}` on this subject (expected `{expected_type}`)"
        )));
    }
    if event.specversion != keyloop_core::event::SPEC_VERSION {
        return Err(HandlerError::permanent(format!(
            "unsupported CloudEvents specversion (expected {})",
            keyloop_core::event::SPEC_VERSION
        )));
    }
    Ok(event)
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

    #[test]
    fn decode_errors_never_echo_the_payload() {
        let payload = br#"{"specversion":"1.0","id":"x","source":"s","type":"dev.keyloop.leak.detected","time":"2026-01-01T00:00:00Z","datacontenttype":"application/json","data":{"secret":"hunter2-plaintext"}}"#;
        let err = cloud_event::<LeakFinding>(payload, "dev.keyloop.leak.detected").unwrap_err();
        assert!(!err.reason.contains("hunter2"), "{}", err.reason);
        assert!(err.reason.contains("schema"), "{}", err.reason);
    }
}
