//! Which replayed messages are shown: by type, correlation (or batch), credential, lease, time,
//! with schedule ticks hidden unless asked. Pure, so every rule is unit-tested.

use super::row::{Replayed, Which};
use crate::cli::ReplayArgs;
use anyhow::{Result, bail};
use keyloop_core::LifecycleKind;
use std::collections::BTreeSet;
use time::OffsetDateTime;

/// The inbound types `--type` accepts beside the lifecycle kinds.
pub(crate) const INBOUND_TYPES: [&str; 5] = [
    "leak.detected",
    "task.started",
    "task.completed",
    "credential.used",
    "schedule.tick",
];

/// A lease id as given: a full UUID, or the last 8 hex the human output prints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IdMatch {
    Full(uuid::Uuid),
    Short(String),
}

impl IdMatch {
    /// Parses `text` (what `--lease` or a version flag was given).
    pub(crate) fn parse(what: &str, text: &str) -> Result<Self> {
        let text = text.trim();
        if let Ok(id) = text.parse::<uuid::Uuid>() {
            return Ok(Self::Full(id));
        }
        if text.len() == 8 && text.chars().all(|c| c.is_ascii_hexdigit()) {
            return Ok(Self::Short(text.to_ascii_lowercase()));
        }
        bail!(
            "{what} {text:?} is not an id: give the full id or the 8 hex characters the human output prints"
        )
    }

    /// Whether `id` is the one meant.
    pub(crate) fn matches(&self, id: &uuid::Uuid) -> bool {
        match self {
            Self::Full(full) => full == id,
            Self::Short(tail) => id.to_string().ends_with(tail.as_str()),
        }
    }
}

/// What a replay keeps.
#[derive(Debug, Clone, Default)]
pub(crate) struct Filter {
    types: BTreeSet<String>,
    ticks: bool,
    correlation: Option<String>,
    lease: Option<IdMatch>,
    until: Option<OffsetDateTime>,
}

impl Filter {
    /// The filter of `args`; an unknown `--type` is refused with the names that exist.
    pub(crate) fn from_args(args: &ReplayArgs) -> Result<Self> {
        let mut types = BTreeSet::new();
        for t in &args.types {
            let t = t.trim();
            let known = t == "dlq"
                || INBOUND_TYPES.contains(&t)
                || serde_json::from_value::<LifecycleKind>(serde_json::Value::String(t.into()))
                    .is_ok();
            if !known {
                bail!(
                    "--type {t}: not an event type; use a lifecycle kind (revoked, rotated, leak_matched, issued, approval_granted, … as in schemas/lifecycle.json), one of {}, or dlq",
                    INBOUND_TYPES.join(", ")
                );
            }
            types.insert(t.to_owned());
        }
        Ok(Self {
            ticks: args.ticks || types.contains("schedule.tick"),
            types,
            correlation: args.correlation.clone(),
            lease: args
                .lease
                .as_deref()
                .map(|l| IdMatch::parse("--lease", l))
                .transpose()?,
            until: args
                .until
                .as_deref()
                .map(|u| super::read::time_arg("until", u))
                .transpose()?,
        })
    }

    /// Whether `e` is shown. (`--credential` is applied while reading: see `read`.)
    pub(crate) fn keeps(&self, e: &Replayed) -> bool {
        if !self.types.is_empty() && !self.types.contains(&e.kind) {
            return false;
        }
        if e.kind == "schedule.tick" && !self.ticks {
            return false;
        }
        if let Some(until) = self.until
            && e.stored > until
        {
            return false;
        }
        if let Some(c) = &self.correlation {
            let c = Some(c.as_str());
            if e.correlation() != c && e.batch() != c && e.id() != c {
                return false;
            }
        }
        if let Some(lease) = &self.lease {
            let id = e
                .event
                .pointer("/data/lease/lease_id")
                .and_then(|v| v.as_str())
                .and_then(|v| v.parse::<uuid::Uuid>().ok());
            if e.which != Which::Lifecycle || !id.is_some_and(|id| lease.matches(&id)) {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(which: Which, subject: &str, body: serde_json::Value) -> Replayed {
        Replayed::new(
            which,
            "keyloop",
            1,
            OffsetDateTime::UNIX_EPOCH,
            subject.into(),
            body,
            None,
        )
    }

    fn filter(f: impl FnOnce(&mut ReplayArgs)) -> Filter {
        let mut args = ReplayArgs::default();
        f(&mut args);
        Filter::from_args(&args).unwrap()
    }

    #[test]
    fn ticks_are_hidden_unless_asked_for() {
        let tick = event(Which::Events, "keyloop.schedule.tick", json!({"id": "t"}));
        assert!(!filter(|_| {}).keeps(&tick));
        assert!(filter(|a| a.ticks = true).keeps(&tick));
        assert!(filter(|a| a.types = vec!["schedule.tick".into()]).keeps(&tick));
    }

    #[test]
    fn types_are_lifecycle_kinds_inbound_types_or_dlq_and_nothing_else() {
        let revoked = event(
            Which::Lifecycle,
            "keyloop.lifecycle.revoked.a",
            json!({"data": {"kind": "revoked"}}),
        );
        let leak = event(Which::Events, "keyloop.leak.detected", json!({}));
        let only = filter(|a| a.types = vec!["revoked".into(), "dlq".into()]);
        assert!(only.keeps(&revoked) && !only.keeps(&leak));
        let args = ReplayArgs {
            types: vec!["revokd".into()],
            ..Default::default()
        };
        let e = Filter::from_args(&args).unwrap_err().to_string();
        assert!(
            e.contains("--type revokd") && e.contains("leak.detected"),
            "{e}"
        );
    }

    #[test]
    fn a_correlation_matches_the_chain_its_batch_or_the_message_itself() {
        let f = filter(|a| a.correlation = Some("batch-1".into()));
        let in_batch = event(
            Which::Lifecycle,
            "keyloop.lifecycle.revoked.a",
            json!({"correlationid": "leak-1", "batchid": "batch-1", "data": {"kind": "revoked"}}),
        );
        let other = event(
            Which::Lifecycle,
            "keyloop.lifecycle.revoked.a",
            json!({"correlationid": "leak-2", "data": {"kind": "revoked"}}),
        );
        assert!(f.keeps(&in_batch) && !f.keeps(&other));
        let by_leak = filter(|a| a.correlation = Some("leak-1".into()));
        assert!(by_leak.keeps(&in_batch) && !by_leak.keeps(&other));
    }

    #[test]
    fn a_lease_is_matched_by_its_full_id_or_its_last_8_hex() {
        let id = uuid::Uuid::now_v7();
        let e = event(
            Which::Lifecycle,
            "keyloop.lifecycle.issued.-",
            json!({"data": {"kind": "issued", "lease": {"lease_id": id.to_string()}}}),
        );
        let tail = &id.to_string()[28..];
        assert!(filter(|a| a.lease = Some(id.to_string())).keeps(&e));
        assert!(filter(|a| a.lease = Some(tail.to_uppercase())).keeps(&e));
        assert!(!filter(|a| a.lease = Some("00000000".into())).keeps(&e));
        assert!(IdMatch::parse("--lease", "xyz").is_err());
    }
}
