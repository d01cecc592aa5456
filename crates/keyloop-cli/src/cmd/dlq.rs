//! `keyloop dlq list | show | retry | purge`: the dead-letter queue without hand-written
//! JetStream calls. `list` is `keyloop replay --stream dlq` with a role filter; `show` prints
//! one entry's headers and its payload; `retry` and `purge` ask the control plane, entry by
//! entry (see `keyloop_workers::api::dlq`). A DLQ payload is whatever someone published, a plaintext secret included,
//! so `show` redacts the values of keys that can hold one, at any depth, and shows a payload
//! that is not JSON as its length and tag only.

use crate::cli::{DlqCommand, DlqPick, Global, ReplayArgs, ReplayStream};
use crate::cmd::replay::filter::Filter;
use crate::cmd::replay::row::Replayed;
use crate::{api_client, config, output};
use anyhow::{Context, Result, anyhow};
use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use futures::StreamExt;
use keyloop_core::api::{DlqEntryRequest, DlqHandled, Verb};
use serde_json::{Value, json};
use std::process::ExitCode;

/// Exit code when the entry asked for is not in the DLQ.
const EXIT_NOT_FOUND: u8 = 4;
/// Exit code of a purge without `--yes`.
const EXIT_NOT_CONFIRMED: u8 = 2;
/// Exit code when some entry of a retry or purge was not done.
const EXIT_SOME_NOT_DONE: u8 = 3;

/// Keys whose values may be a secret (compared case-insensitively).
const SECRET_KEYS: [&str; 7] = [
    "secret",
    "value",
    "token",
    "password",
    "match",
    "raw",
    "credential_value",
];

/// `value` with every value under a secret-looking key replaced by `[redacted]`.
pub(crate) fn redact(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                let lower = k.to_ascii_lowercase();
                if SECRET_KEYS
                    .iter()
                    .any(|s| lower == *s || lower.ends_with(&format!("_{s}")))
                {
                    *v = Value::String("[redacted]".into());
                } else {
                    redact(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

/// The payload for people: redacted JSON, or its length and tag when it is not JSON.
fn shown_payload(bytes: &[u8]) -> Value {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(mut v) => {
            redact(&mut v);
            v
        }
        Err(_) => {
            let text = keyloop_core::Secret::new(String::from_utf8_lossy(bytes).into_owned());
            let tag = keyloop_core::Fingerprint::of(&text)
                .tag()
                .map(|t| t.to_string())
                .unwrap_or_default();
            json!({"not_json": {"bytes": bytes.len(), "tag": tag}})
        }
    }
}

pub(crate) async fn run(g: &Global, command: DlqCommand) -> Result<ExitCode> {
    let bus = config::connect(g).await?;
    match command {
        DlqCommand::List { role, since } => {
            let entries = listed(&bus, role.as_deref(), since).await?;
            if !g.json {
                if entries.is_empty() {
                    eprintln!(
                        "the DLQ holds nothing{}",
                        role.map(|r| format!(" of {r}")).unwrap_or_default()
                    );
                    return Ok(ExitCode::SUCCESS);
                }
                output::line(format_args!(
                    "{:<8} {:<23}  {:<16} {:<28} {:<10} REASON",
                    "SEQ", "STORED (UTC)", "ROLE", "ORIGINAL SUBJECT", "DELIVERIES"
                ))?;
            }
            for e in &entries {
                let d = e.dlq.clone().unwrap_or_default();
                if g.json {
                    output::json_line(&e.json())?;
                } else {
                    output::line(format_args!(
                        "{:<8} {:<23}  {:<16} {:<28} {:<10} {}",
                        e.sequence,
                        crate::cmd::replay::row::human_time(e.stored),
                        d.role,
                        d.original_subject,
                        d.deliveries,
                        d.reason
                    ))?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        DlqCommand::Retry(pick) => act(g, &bus, Verb::DlqRetry, pick).await,
        DlqCommand::Purge { pick, yes } => {
            if !yes {
                return unconfirmed(g, &bus, pick).await;
            }
            act(g, &bus, Verb::DlqPurge, pick).await
        }
        DlqCommand::Show { seq } => {
            let stream = bus.topology.dlq_stream();
            let handle = bus.js.get_stream(&stream).await.with_context(|| {
                format!("stream {stream} is not available (run `keyloop init`)")
            })?;
            let mut consumer = handle
                .create_consumer(OrderedConfig {
                    deliver_policy: DeliverPolicy::ByStartSequence {
                        start_sequence: seq,
                    },
                    ..Default::default()
                })
                .await
                .with_context(|| format!("read {stream}"))?;
            let pending = consumer
                .info()
                .await
                .with_context(|| format!("read {stream}"))?
                .num_pending;
            let found = if pending == 0 {
                None
            } else {
                let mut messages = consumer
                    .messages()
                    .await
                    .with_context(|| format!("read {stream}"))?;
                messages
                    .next()
                    .await
                    .transpose()
                    .map_err(|e| anyhow!("read {stream}: {e}"))?
            };
            let Some(msg) = found.filter(|m| m.info().is_ok_and(|i| i.stream_sequence == seq))
            else {
                eprintln!(
                    "error: no DLQ entry {seq} (it may have been removed; `keyloop dlq list` shows what there is)"
                );
                return Ok(ExitCode::from(EXIT_NOT_FOUND));
            };
            let info = msg.info().map_err(|e| anyhow!("read {stream}: {e}"))?;
            let headers: serde_json::Map<String, Value> = msg
                .headers
                .iter()
                .flat_map(|h| h.iter())
                .map(|(k, vs)| {
                    (
                        k.to_string(),
                        Value::String(
                            vs.iter()
                                .map(|v| v.to_string())
                                .collect::<Vec<_>>()
                                .join(", "),
                        ),
                    )
                })
                .collect();
            let entry = json!({
                "sequence": seq,
                "subject": msg.subject.to_string(),
                "stored": output::ts(info.published),
                "headers": headers,
                "payload": shown_payload(&msg.payload),
            });
            if g.json {
                output::json_line(&entry)?;
            } else {
                output::line(format_args!(
                    "DLQ entry {seq}, stored {} UTC on {}",
                    crate::cmd::replay::row::human_time(info.published),
                    msg.subject
                ))?;
                for (k, v) in &headers {
                    output::line(format_args!("  {k}: {}", v.as_str().unwrap_or_default()))?;
                }
                output::line(format_args!(
                    "  payload (values of secret-looking keys redacted):\n{}",
                    serde_json::to_string_pretty(&entry["payload"]).unwrap_or_default()
                ))?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The DLQ entries, oldest first, of `role` when given.
async fn listed(
    bus: &keyloop_nats::Bus,
    role: Option<&str>,
    since: Option<String>,
) -> Result<Vec<Replayed>> {
    let args = ReplayArgs {
        stream: ReplayStream::Dlq,
        since,
        ..Default::default()
    };
    let filter = Filter::from_args(&args)?;
    let progress = crate::cmd::replay::read::Progress::off();
    Ok(
        crate::cmd::replay::read::history(bus, &args, &filter, &progress)
            .await?
            .events
            .into_iter()
            .filter(|e| role.is_none_or(|r| e.dlq.as_ref().is_some_and(|d| d.role == r)))
            .collect(),
    )
}

/// The sequences `pick` names: the given ones, or every listed entry (of its role).
async fn picked(bus: &keyloop_nats::Bus, pick: &DlqPick) -> Result<Vec<u64>> {
    if !pick.all {
        return Ok(pick.seqs.clone());
    }
    Ok(listed(bus, pick.role.as_deref(), None)
        .await?
        .iter()
        .map(|e| e.sequence)
        .collect())
}

/// A purge without `--yes`: what it would remove, and how to.
async fn unconfirmed(g: &Global, bus: &keyloop_nats::Bus, pick: DlqPick) -> Result<ExitCode> {
    let seqs = picked(bus, &pick).await?;
    let wanted: std::collections::HashSet<u64> = seqs.iter().copied().collect();
    let entries: Vec<Replayed> = listed(bus, None, None)
        .await?
        .into_iter()
        .filter(|e| wanted.contains(&e.sequence))
        .collect();
    for e in &entries {
        let d = e.dlq.clone().unwrap_or_default();
        if g.json {
            output::json_line(&e.json())?;
        } else {
            eprintln!(
                "would purge {} ({}, {}): {}",
                e.sequence, d.role, d.original_subject, d.reason
            );
        }
    }
    eprintln!(
        "error: nothing removed: {} DLQ entr{} would be purged; run the same command with --yes to remove {} (each is recorded as dlq_purged)",
        entries.len(),
        if entries.len() == 1 { "y" } else { "ies" },
        if entries.len() == 1 { "it" } else { "them" }
    );
    Ok(ExitCode::from(EXIT_NOT_CONFIRMED))
}

/// Asks the control plane to retry or purge each picked entry, one line each.
async fn act(g: &Global, bus: &keyloop_nats::Bus, verb: Verb, pick: DlqPick) -> Result<ExitCode> {
    let seqs = picked(bus, &pick).await?;
    let done_word = if verb == Verb::DlqRetry {
        "retried"
    } else {
        "purged"
    };
    if seqs.is_empty() {
        eprintln!(
            "the DLQ holds nothing{}: nothing {done_word}",
            pick.role.map(|r| format!(" of {r}")).unwrap_or_default()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut failed = 0usize;
    for seq in &seqs {
        let result: Result<DlqHandled> =
            api_client::call(g, bus, verb, &DlqEntryRequest { seq: *seq }).await;
        match result {
            Ok(h) => {
                if g.json {
                    output::json_line(&json!({"seq": seq, "done": done_word, "entry": h}))?;
                } else {
                    let to = h
                        .republished
                        .as_ref()
                        .map(|r| {
                            format!(
                                " -> {} #{}{}",
                                r.stream,
                                r.sequence,
                                if r.duplicate {
                                    " (retried before: stored once)"
                                } else {
                                    ""
                                }
                            )
                        })
                        .unwrap_or_default();
                    output::line(format_args!(
                        "{done_word} {seq} ({}, {}){to}",
                        h.role, h.original_subject
                    ))?;
                }
            }
            Err(e) => {
                failed += 1;
                if g.json {
                    output::json_line(&json!({"seq": seq, "error": e.to_string()}))?;
                }
                eprintln!("error: DLQ entry {seq} not {done_word}: {e}");
            }
        }
    }
    if failed == 0 {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "{failed} of {} DLQ entr{} not {done_word} (see above); `keyloop dlq list` shows what is left",
        seqs.len(),
        if seqs.len() == 1 { "y" } else { "ies" }
    );
    Ok(ExitCode::from(EXIT_SOME_NOT_DONE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_looking_keys_are_redacted_at_any_depth_and_nothing_else() {
        let mut v = json!({"id": "x", "data": {"Secret": "s1", "list": [{"token": "t"}, {"db_password": "p"}], "file": "a.env"}, "Match": "m"});
        redact(&mut v);
        assert_eq!(
            v,
            json!({"id": "x", "data": {"Secret": "[redacted]", "list": [{"token": "[redacted]"}, {"db_password": "[redacted]"}], "file": "a.env"}, "Match": "[redacted]"})
        );
    }

    #[test]
    fn a_payload_that_is_not_json_is_shown_as_its_length_and_tag() {
        let shown = shown_payload(b"{\"secret\": \"hunter2");
        let text = shown.to_string();
        assert!(!text.contains("hunter2"), "{text}");
        assert_eq!(shown["not_json"]["bytes"], 19);
        assert!(
            shown["not_json"]["tag"]
                .as_str()
                .unwrap()
                .starts_with("fp:")
        );
    }
}
