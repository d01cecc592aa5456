//! `schemas/asyncapi.yaml`: every subject keyloop uses, as an AsyncAPI 3.0 document, generated
//! from the code: the addresses from [`Topology`] (default prefix), the payloads from the Rust
//! types' JSON Schemas, the lifecycle kinds and roles from their enums. `keyloop schemas DIR`
//! writes it; a test fails when the checked-in file drifts; CI validates it with the AsyncAPI
//! parser (`scripts/validate-asyncapi`).
//!
//! Each payload's schema is embedded with its definitions moved to `components.schemas` (a
//! name two types share gets the message's name appended), without `$schema`: the document's
//! default schema format is AsyncAPI's JSON Schema dialect.

use crate::topology::{NOTIFIED_KINDS, Role, Topology};
use keyloop_core::api::{self, ApiReply};
use keyloop_core::event::{
    CloudEvent, CredentialUsed, LifecycleData, LifecycleKind, RevokeCommand, RevokeLeaseCommand,
    RotateCommand, ScheduleTick, TaskCompleted,
};
use keyloop_core::leak::LeakFinding;
use keyloop_core::lease::{IssueReply, IssueRequest, ServiceError, VerifyReply, VerifyRequest};
use serde_json::{Map, Value, json};

/// A message: its id, a title, and its payload's schema.
struct Message {
    id: &'static str,
    summary: &'static str,
    payload: Value,
}

fn schema<T: schemars::JsonSchema>() -> Value {
    serde_json::to_value(schemars::schema_for!(T)).expect("schemas serialize")
}

/// Rewrites `#/$defs/N` references in `value` by `renames`.
fn rewrite_refs(value: &mut Value, renames: &Map<String, Value>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if k == "$ref"
                    && let Some(name) = v.as_str().and_then(|r| r.strip_prefix("#/$defs/"))
                {
                    let to = renames.get(name).and_then(Value::as_str).unwrap_or(name);
                    *v = Value::String(format!("#/components/schemas/{to}"));
                } else {
                    rewrite_refs(v, renames);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| rewrite_refs(v, renames)),
        _ => {}
    }
}

/// `value` with the definitions of every schema in it (a payload, or the members of a
/// `oneOf`) moved into `schemas`, innermost first.
fn hoist(value: &mut Value, id: &str, schemas: &mut Map<String, Value>) {
    match value {
        Value::Object(object) => {
            for v in object.values_mut() {
                hoist(v, id, schemas);
            }
            object.remove("$schema");
            let Some(Value::Object(defs)) = object.remove("$defs") else {
                return;
            };
            let mut renames = Map::new();
            for (name, def) in &defs {
                // The first free name, or the one holding this very definition.
                let target = std::iter::once(name.clone())
                    .chain((1..).map(|n| format!("{name}_{id}{n}")))
                    .find(|candidate| schemas.get(candidate).is_none_or(|same| same == def))
                    .expect("an unbounded list of names");
                renames.insert(name.clone(), Value::String(target));
            }
            for (name, mut def) in defs {
                rewrite_refs(&mut def, &renames);
                let target = renames[&name].as_str().unwrap_or(&name).to_owned();
                schemas.entry(target).or_insert(def);
            }
            rewrite_refs(value, &renames);
        }
        Value::Array(items) => items.iter_mut().for_each(|v| hoist(v, id, schemas)),
        _ => {}
    }
}

/// `message`'s payload with its definitions moved into `schemas`.
fn hoisted(message: &Message, schemas: &mut Map<String, Value>) -> Value {
    let mut payload = message.payload.clone();
    hoist(&mut payload, message.id, schemas);
    payload
}

fn messages() -> Vec<Message> {
    vec![
        Message {
            id: "leakDetected",
            summary: "A detector's finding: where a secret was seen and its fingerprints (never the value)",
            payload: schema::<CloudEvent<LeakFinding>>(),
        },
        Message {
            id: "taskCompleted",
            summary: "An agent task ended: its JIT leases are revoked",
            payload: schema::<CloudEvent<TaskCompleted>>(),
        },
        Message {
            id: "credentialUsed",
            summary: "A service used a credential (moves its idle clock)",
            payload: schema::<CloudEvent<CredentialUsed>>(),
        },
        Message {
            id: "scheduleTick",
            summary: "One tick per window: the sweeper turns what is due into commands",
            payload: schema::<CloudEvent<ScheduleTick>>(),
        },
        Message {
            id: "rotateCommand",
            summary: "Rotate a credential (work queue)",
            payload: schema::<CloudEvent<RotateCommand>>(),
        },
        Message {
            id: "revokeCommand",
            summary: "Revoke versions of a credential (work queue)",
            payload: schema::<CloudEvent<RevokeCommand>>(),
        },
        Message {
            id: "revokeLeaseCommand",
            summary: "Revoke a JIT lease (work queue)",
            payload: schema::<CloudEvent<RevokeLeaseCommand>>(),
        },
        Message {
            id: "lifecycleEvent",
            summary: "What happened to a credential, version or lease: the audit log",
            payload: schema::<CloudEvent<LifecycleData>>(),
        },
        Message {
            id: "dlqEntry",
            summary: "A message a role gave up on, as it was published, with why in its headers",
            payload: json!({
                "description": "The original message's payload, unchanged (any bytes).",
            }),
        },
        Message {
            id: "issueRequest",
            summary: "An orchestrator asks for a JIT credential for one task",
            payload: schema::<IssueRequest>(),
        },
        Message {
            id: "issueReply",
            summary: "The JIT credential (its token, once), or why not",
            payload: json!({"oneOf": [schema::<IssueReply>(), schema::<ServiceError>()]}),
        },
        Message {
            id: "verifyRequest",
            summary: "Is this JIT token live?",
            payload: schema::<VerifyRequest>(),
        },
        Message {
            id: "verifyReply",
            summary: "Whether the token is live, and its lease",
            payload: schema::<VerifyReply>(),
        },
        Message {
            id: "apiRequest",
            summary: "A request to the control plane; its shape is the verb's",
            payload: json!({"oneOf": [
                schema::<api::RegisterRequest>(),
                schema::<api::UpdateRequest>(),
                schema::<api::IdRequest>(),
                schema::<api::RevokeRequest>(),
                schema::<api::RetireRequest>(),
                schema::<api::FetchRequest>(),
                schema::<api::VerifyRequest>(),
                schema::<api::ApprovalsRequest>(),
                schema::<api::ApprovalIdRequest>(),
                schema::<api::DenyRequest>(),
                schema::<api::DlqEntryRequest>(),
            ]}),
        },
        Message {
            id: "apiReply",
            summary: "The control plane's answer: `ok` with the verb's result, or `error`",
            payload: schema::<ApiReply<Value>>(),
        },
    ]
}

/// The document, as a JSON value.
pub fn document() -> Value {
    let t = Topology::default();
    let mut schemas = Map::new();
    let mut components = Map::new();
    for m in messages() {
        let payload = hoisted(&m, &mut schemas);
        let mut message = json!({
            "name": m.id,
            "summary": m.summary,
            "contentType": "application/json",
            "payload": payload,
        });
        if m.id == "dlqEntry" {
            message["headers"] = json!({
                "type": "object",
                "properties": {
                    crate::bus::DLQ_REASON_HEADER: {"type": "string", "description": "Why the role gave it up (never a value)"},
                    crate::bus::DLQ_SUBJECT_HEADER: {"type": "string", "description": "The subject it was consumed from"},
                    crate::bus::DLQ_SEQUENCE_HEADER: {"type": "string", "description": "Its sequence in the stream it was consumed from"},
                    crate::bus::DLQ_DELIVERIES_HEADER: {"type": "string", "description": "How many times it was delivered"},
                },
            });
        }
        components.insert(m.id.to_owned(), message);
    }
    let msg = |id: &str| json!({ id: {"$ref": format!("#/components/messages/{id}")} });
    let kinds: Vec<&str> = LifecycleKind::ALL.iter().map(|k| k.name()).collect();
    let roles: Vec<&str> = Role::CONSUMING.iter().map(|r| r.name()).collect();
    let verbs: Vec<&str> = api::Verb::ALL.iter().map(|v| v.name()).collect();
    let channels = json!({
        "leakDetected": {"address": t.leak_detected(), "description": "Inbound leaks (stream KEYLOOP_EVENTS): detectors, `keyloop ingest`, webhooks.", "messages": msg("leakDetected")},
        "taskCompleted": {"address": t.task_completed(), "description": "Inbound (KEYLOOP_EVENTS).", "messages": msg("taskCompleted")},
        "credentialUsed": {"address": t.credential_used(), "description": "Inbound (KEYLOOP_EVENTS).", "messages": msg("credentialUsed")},
        "scheduleTick": {"address": t.schedule_tick(), "description": "Inbound (KEYLOOP_EVENTS); one per window, deduplicated by id.", "messages": msg("scheduleTick")},
        "rotateCommand": {"address": t.cmd_rotate(), "description": "Work queue (KEYLOOP_COMMANDS) of the rotator.", "messages": msg("rotateCommand")},
        "revokeCommand": {"address": t.cmd_revoke(), "description": "Work queue (KEYLOOP_COMMANDS) of the revoker.", "messages": msg("revokeCommand")},
        "revokeLeaseCommand": {"address": t.cmd_revoke_lease(), "description": "Work queue (KEYLOOP_COMMANDS) of the revoker.", "messages": msg("revokeLeaseCommand")},
        "lifecycle": {
            "address": t.lifecycle("{kind}", "{credential}"),
            "description": format!("The audit log (KEYLOOP_LIFECYCLE). `credential` is the credential id, `_lease-<id>` for a lease, or `_none`. The notifier reads {}.", NOTIFIED_KINDS.join(", ")),
            "parameters": {
                "kind": {"enum": kinds, "description": "What happened."},
                "credential": {"description": "The credential, lease or `_none`."},
            },
            "messages": msg("lifecycleEvent"),
        },
        "dlq": {
            "address": t.dlq("{role}"),
            "description": "What a role gave up on (KEYLOOP_DLQ); `keyloop dlq` reads, retries and purges it.",
            "parameters": {"role": {"enum": roles, "description": "The role that gave it up."}},
            "messages": msg("dlqEntry"),
        },
        "jitIssue": {"address": t.jit_issue(), "description": "Request/reply, queue group `jit-issuer`; never stored.", "messages": msg("issueRequest")},
        "jitIssueReply": {"address": null, "description": "The reply to a JIT request, on the requester's inbox.", "messages": msg("issueReply")},
        "tokenVerify": {"address": t.token_verify(), "description": "Request/reply, queue group `jit-issuer`; never stored.", "messages": msg("verifyRequest")},
        "tokenVerifyReply": {"address": null, "description": "The reply, on the requester's inbox.", "messages": msg("verifyReply")},
        "api": {
            "address": t.api("{actor}", "{verb}"),
            "description": "The control plane (`keyloop worker api`), request/reply in queue group `api`. The server lets each user publish only under its own `actor`.",
            "parameters": {
                "actor": {"description": "The NATS user asking (proved by the server's permissions)."},
                "verb": {"enum": verbs, "description": "What it asks."},
            },
            "messages": msg("apiRequest"),
        },
        "apiReply": {"address": null, "description": "The reply, on the requester's inbox.", "messages": msg("apiReply")},
    });
    let op = |action: &str, channel: &str, summary: &str| json!({"action": action, "channel": {"$ref": format!("#/channels/{channel}")}, "summary": summary});
    let mut operations = json!({
        "receiveLeak": op("receive", "leakDetected", "The leak-responder matches a leak and asks for its revocation."),
        "receiveTaskCompleted": op("receive", "taskCompleted", "The jit-issuer revokes the task's leases."),
        "receiveCredentialUsed": op("receive", "credentialUsed", "The sweeper records the use."),
        "sendScheduleTick": op("send", "scheduleTick", "The scheduler ticks."),
        "receiveScheduleTick": op("receive", "scheduleTick", "The sweeper turns what is due into commands."),
        "sendRotate": op("send", "rotateCommand", "The sweeper, revoker and api ask for rotations."),
        "receiveRotate": op("receive", "rotateCommand", "The rotator rotates."),
        "sendRevoke": op("send", "revokeCommand", "The leak-responder, sweeper and api ask for revocations."),
        "receiveRevoke": op("receive", "revokeCommand", "The revoker revokes."),
        "sendRevokeLease": op("send", "revokeLeaseCommand", "Lease revocations are asked for."),
        "receiveRevokeLease": op("receive", "revokeLeaseCommand", "The revoker revokes leases."),
        "sendLifecycle": op("send", "lifecycle", "Every role records what it did."),
        "sendDlq": op("send", "dlq", "A role gives a message up, with the reason."),
        "receiveJitIssue": op("receive", "jitIssue", "The jit-issuer decides and issues."),
        "receiveTokenVerify": op("receive", "tokenVerify", "The jit-issuer says whether a token is live."),
        "receiveApi": op("receive", "api", "The control plane answers."),
    });
    for (operation, reply) in [
        ("receiveJitIssue", "jitIssueReply"),
        ("receiveTokenVerify", "tokenVerifyReply"),
        ("receiveApi", "apiReply"),
    ] {
        operations[operation]["reply"] =
            json!({"channel": {"$ref": format!("#/channels/{reply}")}});
    }
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "keyloop",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Every NATS subject keyloop publishes or consumes, under the default prefix `keyloop` (`--prefix` changes it). Generated from the code by `keyloop schemas DIR`; do not edit.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "nats": {
                "host": "localhost:4222",
                "protocol": "nats",
                "description": "A nats-server with JetStream (deploy/nats/): TLS only, one user per role.",
            },
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": components, "schemas": schemas},
    })
}

/// `text` as a YAML key: bare when it is a plain word, else JSON-quoted.
fn key(text: &str) -> String {
    let plain = text
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if plain {
        text.to_owned()
    } else {
        Value::String(text.to_owned()).to_string()
    }
}

/// A scalar, or an empty container, on one line (JSON is YAML's flow style).
fn inline(value: &Value) -> Option<String> {
    match value {
        Value::Object(m) if !m.is_empty() => None,
        Value::Array(a) if !a.is_empty() => None,
        other => Some(other.to_string()),
    }
}

fn write_yaml(value: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match inline(v) {
                    Some(text) => out.push_str(&format!("{pad}{}: {text}\n", key(k))),
                    None => {
                        out.push_str(&format!("{pad}{}:\n", key(k)));
                        write_yaml(v, indent + 2, out);
                    }
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                match inline(item) {
                    Some(text) => out.push_str(&format!("{pad}- {text}\n")),
                    None => {
                        out.push_str(&format!("{pad}-\n"));
                        write_yaml(item, indent + 2, out);
                    }
                }
            }
        }
        other => out.push_str(&format!("{pad}{other}\n")),
    }
}

/// The document as YAML (block style, strings JSON-quoted).
pub fn yaml() -> String {
    let mut out =
        String::from("# Generated from the code by `keyloop schemas schemas`: do not edit.\n");
    write_yaml(&document(), 0, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checked_in_document_is_what_the_code_says() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas/asyncapi.yaml");
        let actual = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            actual == yaml(),
            "schemas/asyncapi.yaml is out of date with the code; run `cargo run -p keyloop-cli -- schemas schemas` and commit the result"
        );
    }

    #[test]
    fn every_reference_resolves_and_every_consumed_subject_is_a_channel() {
        let doc = document();
        let text = doc.to_string();
        for part in text.split("\"$ref\":\"").skip(1) {
            let target = part.split('"').next().unwrap();
            let pointer = target.strip_prefix('#').expect("a local reference");
            assert!(doc.pointer(pointer).is_some(), "{target} does not resolve");
        }
        assert!(!text.contains("$defs"), "every definition is hoisted");
        let addresses: Vec<&str> = doc["channels"]
            .as_object()
            .unwrap()
            .values()
            .filter_map(|c| c["address"].as_str())
            .collect();
        let t = Topology::default();
        for role in Role::CONSUMING {
            for subject in t.consumer_of(role).1 {
                // A `{parameter}` of the address takes any one token of the subject; the
                // subject's `>` any rest of the address.
                let covered = addresses.iter().any(|a| {
                    let (mut a, mut s) = (a.split('.'), subject.split('.'));
                    loop {
                        match (a.next(), s.next()) {
                            (None, None) => return true,
                            (Some(_), Some(">")) => return true,
                            (Some(x), Some(y)) if x == y || x.starts_with('{') => {}
                            _ => return false,
                        }
                    }
                });
                assert!(covered, "{subject} of {} has no channel", role.name());
            }
        }
    }

    #[test]
    fn yaml_quotes_what_is_not_a_plain_word() {
        let mut out = String::new();
        write_yaml(
            &json!({"$ref": "#/x", "a": [1, {"b": "c: d"}], "e": {}}),
            0,
            &mut out,
        );
        assert_eq!(
            out,
            "\"$ref\": \"#/x\"\na:\n  - 1\n  -\n    b: \"c: d\"\ne: {}\n"
        );
    }
}
