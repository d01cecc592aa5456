//! Property tests over every decoder a worker runs on inbound input: the CloudEvent of each
//! consumed subject (`leak.detected`, `cmd.revoke`, `cmd.rotate`, `cmd.lease.revoke`,
//! `schedule.tick`, `task.completed`, `credential.used`) and the jit-issuer's requests
//! (`jit.issue`, `token.verify`).
//!
//! For each: arbitrary bytes, and structure-aware documents (the right shape with values of
//! any type, fields missing or extra, huge numbers, odd unicode, damaged text) never panic; a
//! rejection is permanent and says why; a secret planted anywhere in the input never appears in
//! the rejection. Valid documents decode. Case counts are the constants below (see the README's
//! "Bad input" section for the totals).

#[path = "../../../tests/support/arbitrary_json.rs"]
mod arbitrary_json;

use arbitrary_json::{
    Json, Planted, boolean, credential_id, damage, exact_object, free_text, mostly, object, one_of,
    planted, signed, text, timestamp, unsigned, uuid, value,
};
use keyloop_core::Retry;
use keyloop_core::event::{
    CREDENTIAL_USED_TYPE, CredentialUsed, LEAK_DETECTED_TYPE, REVOKE_COMMAND_TYPE,
    REVOKE_LEASE_COMMAND_TYPE, ROTATE_COMMAND_TYPE, RevokeCommand, RevokeLeaseCommand,
    RotateCommand, SCHEDULE_TICK_TYPE, ScheduleTick, TASK_COMPLETED_TYPE, TaskCompleted,
};
use keyloop_core::identity::IdentityVerifier;
use keyloop_core::{JitPolicy, LeakFinding};
use keyloop_workers::decode;
use keyloop_workers::jit_issuer;
use proptest::prelude::*;
use serde::de::DeserializeOwned;
use time::OffsetDateTime;

/// Cases of arbitrary bytes, per decoder.
const BYTES_CASES: u32 = 1024;
/// Cases of structure-aware documents (intact or damaged), per decoder.
const SHAPED_CASES: u32 = 2048;
/// Cases of valid documents, per decoder.
const VALID_CASES: u32 = 256;

/// For valid documents, which hold no planted secret.
fn no_secret() -> Planted {
    Planted {
        value: String::new(),
        marker: "\u{0}not planted".into(),
    }
}

/// Decodes `payload` as an event of `ty`: a rejection must be permanent, say why and not show
/// the planted secret. Returns whether it decoded.
fn check_event<T: DeserializeOwned>(payload: &[u8], ty: &str, planted: &Planted) -> bool {
    match decode::cloud_event::<T>(payload, ty) {
        Ok(_) => true,
        Err(e) => {
            assert_eq!(e.kind, Retry::Permanent, "{}", e.reason);
            assert!(!e.reason.trim().is_empty(), "a rejection says why");
            assert!(
                !planted.is_in(&e.reason) && !planted.is_in(&format!("{e:?}")),
                "the rejection shows the planted secret: {}",
                e.reason
            );
            false
        }
    }
}

const REVOKE_REASONS: &[&str] = &[
    "leak",
    "manual",
    "grace_ended",
    "superseded",
    "task_completed",
    "expired",
    "idle",
];
const ROTATION_REASONS: &[&str] = &["leak", "manual", "scheduled", "initial"];
const OTHER_TYPES: &[&str] = &[
    LEAK_DETECTED_TYPE,
    REVOKE_COMMAND_TYPE,
    ROTATE_COMMAND_TYPE,
    REVOKE_LEASE_COMMAND_TYPE,
    SCHEDULE_TICK_TYPE,
    TASK_COMPLETED_TYPE,
    CREDENTIAL_USED_TYPE,
    "dev.keyloop.credential.revoked",
    "com.example.unknown",
    "",
];

/// The envelope around `data`: valid attributes mostly, any value sometimes; the type is the
/// expected one mostly, another one (keyloop's, a stranger's, or the planted secret) sometimes.
fn envelope(ty: &'static str, data: BoxedStrategy<Json>) -> BoxedStrategy<Json> {
    let types = prop_oneof![
        12 => Just(Json::Str(ty.to_owned())),
        2 => one_of(OTHER_TYPES),
        1 => Just(Json::Planted),
    ]
    .boxed();
    object(vec![
        ("specversion", mostly(Just(Json::Str("1.0".into())).boxed())),
        ("id", free_text()),
        ("source", free_text()),
        ("type", mostly(types)),
        ("time", mostly(timestamp())),
        ("subject", free_text()),
        (
            "datacontenttype",
            mostly(Just(Json::Str("application/json".into())).boxed()),
        ),
        ("correlationid", free_text()),
        ("causationid", free_text()),
        ("data", mostly(data)),
    ])
}

/// A valid envelope of type `ty` around `data`.
fn valid_envelope(ty: &'static str, data: BoxedStrategy<Json>) -> BoxedStrategy<Json> {
    exact_object(vec![
        ("specversion", Just(Json::Str("1.0".into())).boxed()),
        ("id", text("[a-z0-9-]{1,36}")),
        ("source", text("keyloop/[a-z-]{1,16}")),
        ("type", Just(Json::Str(ty.to_owned())).boxed()),
        ("time", timestamp()),
        ("subject", credential_id()),
        (
            "datacontenttype",
            Just(Json::Str("application/json".into())).boxed(),
        ),
        ("correlationid", text("\\PC{1,40}")),
        ("data", data),
    ])
}

fn hex(len: usize) -> BoxedStrategy<Json> {
    let regex: &'static str = if len == 64 {
        "[0-9a-fA-F]{64}"
    } else {
        "[0-9a-fA-F]{40}"
    };
    text(regex)
}

fn leak_finding() -> BoxedStrategy<Json> {
    object(vec![
        (
            "fingerprint",
            mostly(object(vec![
                ("sha256", mostly(hex(64))),
                ("sha1", mostly(hex(40))),
            ])),
        ),
        ("detector", free_text()),
        (
            "location",
            mostly(object(vec![
                ("repo", free_text()),
                ("file", free_text()),
                ("line", mostly(unsigned())),
                ("commit", free_text()),
                ("url", free_text()),
            ])),
        ),
    ])
}

fn valid_leak_finding() -> BoxedStrategy<Json> {
    exact_object(vec![
        (
            "fingerprint",
            exact_object(vec![("sha256", hex(64)), ("sha1", hex(40))]),
        ),
        ("detector", text("\\PC{0,30}")),
        (
            "location",
            exact_object(vec![("file", text("\\PC{1,30}")), ("line", unsigned())]),
        ),
    ])
}

fn revoke_command() -> BoxedStrategy<Json> {
    object(vec![
        ("credential", mostly(credential_id())),
        ("version", mostly(uuid())),
        ("reason", mostly(one_of(REVOKE_REASONS))),
        ("op_id", free_text()),
        ("leak_published_at", mostly(timestamp())),
        ("then_rotate", mostly(boolean())),
        ("note", free_text()),
    ])
}

fn valid_revoke_command() -> BoxedStrategy<Json> {
    exact_object(vec![
        ("credential", credential_id()),
        ("version", uuid()),
        ("reason", one_of(REVOKE_REASONS)),
        ("op_id", text("\\PC{1,40}")),
        ("leak_published_at", timestamp()),
        ("then_rotate", Just(Json::Raw("true".into())).boxed()),
        ("note", text("\\PC{0,40}")),
    ])
}

fn rotate_command() -> BoxedStrategy<Json> {
    object(vec![
        ("credential", mostly(credential_id())),
        ("reason", mostly(one_of(ROTATION_REASONS))),
        ("op_id", free_text()),
    ])
}

fn valid_rotate_command() -> BoxedStrategy<Json> {
    exact_object(vec![
        ("credential", credential_id()),
        ("reason", one_of(ROTATION_REASONS)),
        ("op_id", text("\\PC{1,40}")),
    ])
}

fn revoke_lease_command() -> BoxedStrategy<Json> {
    object(vec![
        ("lease", mostly(uuid())),
        ("reason", mostly(one_of(REVOKE_REASONS))),
        ("op_id", free_text()),
        ("leak_published_at", mostly(timestamp())),
    ])
}

fn valid_revoke_lease_command() -> BoxedStrategy<Json> {
    exact_object(vec![
        ("lease", uuid()),
        ("reason", one_of(REVOKE_REASONS)),
        ("op_id", text("\\PC{1,40}")),
    ])
}

fn schedule_tick() -> BoxedStrategy<Json> {
    object(vec![
        ("window_start", mostly(signed())),
        ("window_secs", mostly(unsigned())),
    ])
}

fn valid_schedule_tick() -> BoxedStrategy<Json> {
    exact_object(vec![
        ("window_start", signed()),
        ("window_secs", unsigned()),
    ])
}

fn task_completed() -> BoxedStrategy<Json> {
    object(vec![("task_id", free_text())])
}

fn valid_task_completed() -> BoxedStrategy<Json> {
    exact_object(vec![("task_id", text("\\PC{0,40}"))])
}

fn credential_used() -> BoxedStrategy<Json> {
    object(vec![
        ("credential", mostly(credential_id())),
        ("version", mostly(uuid())),
        ("actor", free_text()),
    ])
}

fn valid_credential_used() -> BoxedStrategy<Json> {
    exact_object(vec![
        ("credential", credential_id()),
        ("version", uuid()),
        ("actor", text("\\PC{0,40}")),
    ])
}

/// Three properties for the decoder of one event type.
macro_rules! event_decoder_properties {
    ($module:ident, $payload:ty, $ty:expr, $shape:ident, $valid:ident) => {
        mod $module {
            use super::*;

            proptest! {
                #![proptest_config(ProptestConfig::with_cases(BYTES_CASES))]
                #[test]
                fn arbitrary_bytes_are_rejected_without_panic_or_echo(
                    p in planted(),
                    bytes in proptest::collection::vec(any::<u8>(), 0..512),
                    at in any::<prop::sample::Index>(),
                ) {
                    // Arbitrary bytes with the planted secret spliced in somewhere.
                    let mut input = bytes;
                    let at = at.index(input.len() + 1);
                    input.splice(at..at, p.value.bytes());
                    check_event::<$payload>(&input, $ty, &p);
                }
            }

            proptest! {
                #![proptest_config(ProptestConfig::with_cases(SHAPED_CASES))]
                #[test]
                fn shaped_events_decode_or_are_rejected_without_echo(
                    p in planted(),
                    doc in prop_oneof![8 => envelope($ty, $shape()), 1 => value()],
                    damage in damage(),
                ) {
                    check_event::<$payload>(&damage.apply(&doc, &p), $ty, &p);
                }
            }

            proptest! {
                #![proptest_config(ProptestConfig::with_cases(VALID_CASES))]
                #[test]
                fn valid_events_decode(doc in valid_envelope($ty, $valid())) {
                    let text = doc.render(&no_secret());
                    let decoded = decode::cloud_event::<$payload>(text.as_bytes(), $ty);
                    prop_assert!(decoded.is_ok(), "{text}: {:?}", decoded.err());
                }
            }
        }
    };
}

event_decoder_properties!(
    leak_detected,
    LeakFinding,
    LEAK_DETECTED_TYPE,
    leak_finding,
    valid_leak_finding
);
event_decoder_properties!(
    cmd_revoke,
    RevokeCommand,
    REVOKE_COMMAND_TYPE,
    revoke_command,
    valid_revoke_command
);
event_decoder_properties!(
    cmd_rotate,
    RotateCommand,
    ROTATE_COMMAND_TYPE,
    rotate_command,
    valid_rotate_command
);
event_decoder_properties!(
    cmd_lease_revoke,
    RevokeLeaseCommand,
    REVOKE_LEASE_COMMAND_TYPE,
    revoke_lease_command,
    valid_revoke_lease_command
);
event_decoder_properties!(
    schedule_tick_event,
    ScheduleTick,
    SCHEDULE_TICK_TYPE,
    schedule_tick,
    valid_schedule_tick
);
event_decoder_properties!(
    task_completed_event,
    TaskCompleted,
    TASK_COMPLETED_TYPE,
    task_completed,
    valid_task_completed
);
event_decoder_properties!(
    credential_used_event,
    CredentialUsed,
    CREDENTIAL_USED_TYPE,
    credential_used,
    valid_credential_used
);

/// An issue request is decoded, then checked against the default policy: a refusal at either
/// step says why and never shows the planted secret.
fn check_issue(payload: &[u8], planted: &Planted) -> bool {
    let shown = |code: &str, message: &str| {
        assert!(
            !code.is_empty() && !message.trim().is_empty(),
            "a refusal says why"
        );
        assert!(
            !planted.is_in(message) && !planted.is_in(code),
            "the refusal shows the planted secret: {message}"
        );
    };
    match jit_issuer::decode_issue_request(payload) {
        Err(e) => {
            shown(&e.code, &e.message);
            false
        }
        Ok(req) => match JitPolicy::default().decide(
            &req,
            &IdentityVerifier::default(),
            OffsetDateTime::now_utc(),
        ) {
            Ok(_) => true,
            Err(e) => {
                shown(e.code(), &e.to_string());
                false
            }
        },
    }
}

fn check_verify(payload: &[u8], planted: &Planted) -> bool {
    match jit_issuer::decode_verify_request(payload) {
        Ok(token) => {
            assert!(
                !planted.is_in(&format!("{token:?}")),
                "a token's Debug is redacted"
            );
            true
        }
        Err(e) => {
            assert!(!e.message.trim().is_empty(), "a refusal says why");
            assert!(!planted.is_in(&e.message), "{}", e.message);
            false
        }
    }
}

fn issue_request() -> BoxedStrategy<Json> {
    object(vec![
        ("task_id", free_text()),
        ("agent_id", free_text()),
        (
            "scope",
            prop_oneof![
                3 => one_of(&["read", "write", "admin"]),
                1 => free_text(),
            ]
            .boxed(),
        ),
        ("ttl_secs", mostly(unsigned())),
        // Mostly absent (null), else anything: a token that is not one is refused without
        // being quoted.
        (
            "identity_token",
            prop_oneof![3 => Just(Json::Raw("null".into())), 1 => free_text()].boxed(),
        ),
    ])
}

fn verify_request() -> BoxedStrategy<Json> {
    object(vec![("token", free_text())])
}

mod jit_requests {
    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(BYTES_CASES))]
        #[test]
        fn arbitrary_bytes_are_refused_without_panic_or_echo(
            p in planted(),
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
            at in any::<prop::sample::Index>(),
        ) {
            let mut input = bytes;
            let at = at.index(input.len() + 1);
            input.splice(at..at, p.value.bytes());
            check_issue(&input, &p);
            check_verify(&input, &p);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(SHAPED_CASES))]
        #[test]
        fn shaped_issue_requests_are_served_or_refused_without_echo(
            p in planted(),
            doc in issue_request(),
            damage in damage(),
        ) {
            check_issue(&damage.apply(&doc, &p), &p);
        }

        #[test]
        fn shaped_verify_requests_are_served_or_refused_without_echo(
            p in planted(),
            doc in verify_request(),
            damage in damage(),
        ) {
            check_verify(&damage.apply(&doc, &p), &p);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(VALID_CASES))]
        #[test]
        fn valid_issue_requests_pass(
            doc in exact_object(vec![
                ("task_id", text("[a-zA-Z0-9._/-]{1,128}")),
                ("agent_id", text("\\PC{1,32}")),
                ("scope", one_of(&["read", "write"])),
                ("ttl_secs", (1u64..=3600).prop_map(|n| Json::Raw(n.to_string())).boxed()),
            ])
        ) {
            let text = doc.render(&no_secret());
            prop_assert!(check_issue(text.as_bytes(), &no_secret()), "{text}");
        }
    }
}

/// Nesting far beyond serde_json's recursion limit is a clear rejection, not a stack overflow.
#[test]
fn deeply_nested_input_is_rejected_by_every_decoder() {
    let p = Planted {
        value: "PLANTEDdeepnest0000000000000000".into(),
        marker: "PLANTEDdeepnest".into(),
    };
    for depth in [200, 100_000] {
        for (open, close) in [("[", "]"), ("{\"a\":", "}")] {
            let mut doc = open.repeat(depth);
            doc.push_str(&format!("\"{}\"", p.value));
            doc.push_str(&close.repeat(depth));
            let envelope = format!(
                r#"{{"specversion":"1.0","id":"x","source":"s","type":"{LEAK_DETECTED_TYPE}","time":"2026-01-01T00:00:00Z","datacontenttype":"application/json","data":{doc}}}"#
            );
            for input in [doc.as_bytes(), envelope.as_bytes()] {
                assert!(!check_event::<LeakFinding>(input, LEAK_DETECTED_TYPE, &p));
                assert!(!check_event::<RevokeCommand>(
                    input,
                    REVOKE_COMMAND_TYPE,
                    &p
                ));
                assert!(!check_event::<TaskCompleted>(
                    input,
                    TASK_COMPLETED_TYPE,
                    &p
                ));
                assert!(!check_issue(input, &p));
                assert!(!check_verify(input, &p));
            }
        }
    }
}
