//! The incident model, built from the event log alone (lifecycle and inbound events): pure,
//! so every rule is unit-tested. Times to revoke are counted from the first detection of the
//! leaked value (any leak event with the same digest), not from each leak id.

use crate::cmd::replay::filter::IdMatch;
use keyloop_core::event::LeakDetected;
use keyloop_core::{CredentialId, LeakLocation, LifecycleEvent, LifecycleKind};
use serde::Serialize;
use std::collections::HashMap;
use time::OffsetDateTime;

/// What the report is about.
#[derive(Debug, Clone)]
pub(crate) enum Selector {
    /// One finding, with the rest of its report and commit.
    Leak(String),
    /// A whole report (batch id).
    Report(String),
    /// Every leak of a credential.
    Credential(CredentialId),
    /// A JIT lease.
    Lease(IdMatch),
}

impl Selector {
    fn describe(&self) -> String {
        match self {
            Self::Leak(id) => format!("leak {id}"),
            Self::Report(b) => format!("report {b}"),
            Self::Credential(c) => format!("credential {c}"),
            Self::Lease(IdMatch::Full(id)) => format!("lease {id}"),
            Self::Lease(IdMatch::Short(tail)) => format!("lease …{tail}"),
        }
    }
}

/// A use or a try of a leaked value after its leak, from the audit log.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Attempt {
    #[serde(with = "time::serde::rfc3339")]
    pub(crate) time: OffsetDateTime,
    /// `used` (it worked), `verify_denied` (presented, did not work), `denied` (refused).
    pub(crate) kind: String,
    pub(crate) actor: Option<String>,
    pub(crate) detail: Option<String>,
}

/// One finding and what happened to the value it leaked.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Finding {
    pub(crate) leak_id: String,
    pub(crate) batch: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub(crate) detected_at: OffsetDateTime,
    pub(crate) detector: String,
    pub(crate) location: LeakLocation,
    /// The value's tag (`fp:…`), never a digest.
    pub(crate) fingerprint: String,
    /// The first detection of the same value, whichever report it came in.
    #[serde(with = "time::serde::rfc3339")]
    pub(crate) first_detected_at: OffsetDateTime,
    pub(crate) first_leak_id: String,
    /// `matched` (a live version: revoked), `inert` (already dead), `unmatched` (not a value
    /// keyloop manages), `pending` (no outcome in the log yet).
    pub(crate) outcome: String,
    pub(crate) credential: Option<String>,
    pub(crate) version: Option<String>,
    /// The stage the leaked version was in when it matched.
    pub(crate) stage: Option<String>,
    /// The credential's owner now (from the control plane; absent when it did not answer).
    pub(crate) owner: Option<String>,
    pub(crate) lease: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub(crate) revoked_at: Option<OffsetDateTime>,
    /// From the first detection of the value to its revocation.
    pub(crate) time_to_revoke_ms: Option<u64>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub(crate) rotated_at: Option<OffsetDateTime>,
    pub(crate) new_version: Option<String>,
    /// Every use and every try of the leaked version (or lease) after its first detection.
    pub(crate) after: Vec<Attempt>,
}

/// A JIT lease involved.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LeaseReport {
    pub(crate) lease_id: String,
    pub(crate) scope: String,
    pub(crate) task: String,
    pub(crate) agent: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub(crate) issued_at: Option<OffsetDateTime>,
    /// How it ended: `revoked` (and why) or `expired`, and when.
    pub(crate) ended: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub(crate) ended_at: Option<OffsetDateTime>,
    pub(crate) uses: Vec<Attempt>,
}

/// One line of the timeline.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Entry {
    #[serde(with = "time::serde::rfc3339")]
    pub(crate) time: OffsetDateTime,
    pub(crate) kind: String,
    pub(crate) about: String,
    pub(crate) text: String,
}

/// The report.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Incident {
    pub(crate) about: String,
    pub(crate) findings: Vec<Finding>,
    pub(crate) leases: Vec<LeaseReport>,
    pub(crate) timeline: Vec<Entry>,
    /// Events read from the log to build it.
    pub(crate) events_read: usize,
}

/// Nothing in the log matches what was asked: what to check.
#[derive(Debug)]
pub(crate) struct NothingFound(pub(crate) String);

impl std::fmt::Display for NothingFound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn short(id: &uuid::Uuid) -> String {
    let s = id.to_string();
    s[s.len() - 8..].to_owned()
}

/// The digest a value is known by in leak events (SHA-256, else SHA-1).
fn value_key(leak: &LeakDetected) -> Option<String> {
    let f = &leak.data.fingerprint;
    f.sha256
        .clone()
        .map(|h| format!("sha256:{h}"))
        .or_else(|| f.sha1.clone().map(|h| format!("sha1:{h}")))
}

fn ms_between(from: OffsetDateTime, to: OffsetDateTime) -> u64 {
    u64::try_from((to - from).whole_milliseconds()).unwrap_or(0)
}

fn is_attempt(kind: LifecycleKind) -> bool {
    matches!(
        kind,
        LifecycleKind::Used | LifecycleKind::VerifyDenied | LifecycleKind::Denied
    )
}

fn attempt(e: &LifecycleEvent) -> Attempt {
    Attempt {
        time: e.time,
        kind: e.data.kind.name().to_owned(),
        actor: e.data.actor.clone().or_else(|| e.actor.clone()),
        detail: e.data.detail.clone(),
    }
}

fn lease_of(e: &LifecycleEvent) -> Option<uuid::Uuid> {
    e.data.lease.as_ref().map(|l| l.lease_id)
}

/// Builds the report about `selector` from `leaks` and `lifecycle` (each oldest first).
pub(crate) fn build(
    selector: &Selector,
    leaks: &[LeakDetected],
    lifecycle: &[LifecycleEvent],
) -> Result<Incident, NothingFound> {
    let mut by_chain: HashMap<&str, Vec<&LifecycleEvent>> = HashMap::new();
    for e in lifecycle {
        if let Some(c) = &e.correlationid {
            by_chain.entry(c.as_str()).or_default().push(e);
        }
    }
    let mut first_seen: HashMap<String, &LeakDetected> = HashMap::new();
    for leak in leaks {
        if let Some(key) = value_key(leak) {
            first_seen
                .entry(key)
                .and_modify(|f| {
                    if leak.time < f.time {
                        *f = leak;
                    }
                })
                .or_insert(leak);
        }
    }
    let chain_of =
        |leak: &LeakDetected| by_chain.get(leak.id.as_str()).cloned().unwrap_or_default();
    let in_scope: Vec<&LeakDetected> = match selector {
        Selector::Leak(id) => {
            let Some(primary) = leaks.iter().find(|l| &l.id == id) else {
                return Err(NothingFound(format!(
                    "no leak event {id} in the event log (list them with `keyloop replay --type leak.detected`)"
                )));
            };
            let commit = primary.data.location.commit.as_ref();
            let mut out = vec![primary];
            out.extend(leaks.iter().filter(|l| {
                l.id != primary.id
                    && ((primary.batchid.is_some() && l.batchid == primary.batchid)
                        || (commit.is_some() && l.data.location.commit.as_ref() == commit))
            }));
            out
        }
        Selector::Report(batch) => leaks
            .iter()
            .filter(|l| l.batchid.as_deref() == Some(batch.as_str()))
            .collect(),
        Selector::Credential(c) => leaks
            .iter()
            .filter(|l| {
                chain_of(l)
                    .iter()
                    .any(|e| e.data.credential.as_ref() == Some(c))
            })
            .collect(),
        Selector::Lease(m) => leaks
            .iter()
            .filter(|l| {
                chain_of(l)
                    .iter()
                    .any(|e| lease_of(e).is_some_and(|id| m.matches(&id)))
            })
            .collect(),
    };
    let mut lease_ids: Vec<uuid::Uuid> = Vec::new();
    if let Selector::Lease(m) = selector {
        lease_ids.extend(
            lifecycle
                .iter()
                .filter_map(lease_of)
                .filter(|id| m.matches(id)),
        );
    }
    let mut findings = Vec::new();
    let mut timeline = Vec::new();
    for leak in &in_scope {
        let chain = chain_of(leak);
        let first = value_key(leak)
            .and_then(|k| first_seen.get(&k).copied())
            .unwrap_or(leak);
        let outcome_event = chain.iter().find(|e| {
            matches!(
                e.data.kind,
                LifecycleKind::LeakMatched
                    | LifecycleKind::LeakInert
                    | LifecycleKind::LeakUnmatched
            )
        });
        let outcome = match outcome_event.map(|e| e.data.kind) {
            Some(LifecycleKind::LeakMatched) => "matched",
            Some(LifecycleKind::LeakInert) => "inert",
            Some(LifecycleKind::LeakUnmatched) => "unmatched",
            _ => "pending",
        };
        let credential = outcome_event.and_then(|e| e.data.credential.clone());
        let version = outcome_event.and_then(|e| e.data.version);
        let lease = outcome_event.and_then(|e| lease_of(e));
        if let Some(l) = lease
            && !lease_ids.contains(&l)
        {
            lease_ids.push(l);
        }
        // The same value, whoever's event it is: a version by (credential, version), a lease by id.
        let about_value = |e: &LifecycleEvent| match (lease, &credential, version) {
            (Some(l), _, _) => lease_of(e) == Some(l),
            (None, Some(c), Some(v)) => {
                e.data.credential.as_ref() == Some(c) && e.data.version == Some(v)
            }
            _ => false,
        };
        let revoked = lifecycle.iter().find(|e| {
            matches!(e.data.kind, LifecycleKind::Revoked | LifecycleKind::Expired) && about_value(e)
        });
        // The rotation the leak caused (same chain), or one that replaced the leaked version.
        let rotated = chain
            .iter()
            .copied()
            .find(|e| e.data.kind == LifecycleKind::Rotated && e.data.credential == credential)
            .or_else(|| {
                version.and_then(|v| {
                    lifecycle.iter().find(|e| {
                        e.data.kind == LifecycleKind::Rotated
                            && e.data.previous_version == Some(v)
                            && e.data.credential == credential
                    })
                })
            });
        let after: Vec<Attempt> = lifecycle
            .iter()
            .filter(|e| is_attempt(e.data.kind) && e.time >= first.time && about_value(e))
            .map(attempt)
            .collect();
        let about = credential
            .as_ref()
            .map(|c| c.to_string())
            .or_else(|| lease.map(|l| format!("lease {}", short(&l))))
            .unwrap_or_else(|| "-".into());
        let loc = &leak.data.location;
        timeline.push(Entry {
            time: leak.time,
            kind: "leak.detected".into(),
            about: about.clone(),
            text: format!(
                "{} found {} in {}{}",
                leak.data.detector,
                leak.data.fingerprint,
                [loc.repo.as_deref(), loc.file.as_deref()]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(":"),
                loc.line.map(|l| format!(":{l}")).unwrap_or_default()
            ),
        });
        for e in chain.iter().copied().chain(revoked).chain(rotated) {
            timeline.push(entry(e));
        }
        for e in lifecycle
            .iter()
            .filter(|e| is_attempt(e.data.kind) && e.time >= first.time && about_value(e))
        {
            timeline.push(entry(e));
        }
        findings.push(Finding {
            leak_id: leak.id.clone(),
            batch: leak.batchid.clone(),
            detected_at: leak.time,
            detector: leak.data.detector.clone(),
            location: loc.clone(),
            fingerprint: leak.data.fingerprint.to_string(),
            first_detected_at: first.time,
            first_leak_id: first.id.clone(),
            outcome: outcome.into(),
            credential: credential.as_ref().map(|c| c.to_string()),
            version: version.map(|v| v.to_string()),
            stage: outcome_event
                .and_then(|e| e.data.matched_stage)
                .map(|s| s.name().to_owned()),
            owner: None,
            lease: lease.map(|l| l.to_string()),
            revoked_at: revoked.map(|e| e.time),
            time_to_revoke_ms: revoked.map(|e| ms_between(first.time, e.time)),
            rotated_at: rotated.map(|e| e.time),
            new_version: rotated.and_then(|e| e.data.version).map(|v| v.to_string()),
            after,
        });
    }
    let leases: Vec<LeaseReport> = lease_ids
        .iter()
        .map(|id| lease_report(*id, lifecycle, &mut timeline))
        .collect();
    if findings.is_empty() && leases.is_empty() {
        return Err(NothingFound(format!(
            "nothing in the event log about {} (is the id right? `keyloop replay` lists what there is)",
            selector.describe()
        )));
    }
    timeline.sort_by_key(|e| e.time);
    timeline.dedup_by(|a, b| a.time == b.time && a.kind == b.kind && a.text == b.text);
    Ok(Incident {
        about: selector.describe(),
        findings,
        leases,
        timeline,
        events_read: leaks.len() + lifecycle.len(),
    })
}

fn lease_report(
    id: uuid::Uuid,
    lifecycle: &[LifecycleEvent],
    timeline: &mut Vec<Entry>,
) -> LeaseReport {
    let events: Vec<&LifecycleEvent> = lifecycle
        .iter()
        .filter(|e| lease_of(e) == Some(id))
        .collect();
    let info = events.iter().find_map(|e| e.data.lease.clone());
    let issued = events.iter().find(|e| e.data.kind == LifecycleKind::Issued);
    let ended = events
        .iter()
        .find(|e| matches!(e.data.kind, LifecycleKind::Revoked | LifecycleKind::Expired));
    for e in &events {
        timeline.push(entry(e));
    }
    LeaseReport {
        lease_id: id.to_string(),
        scope: info.as_ref().map(|l| l.scope.clone()).unwrap_or_default(),
        task: info.as_ref().map(|l| l.task_id.clone()).unwrap_or_default(),
        agent: info.as_ref().and_then(|l| l.agent_id.clone()),
        issued_at: issued.map(|e| e.time),
        ended: ended.map(|e| match e.data.revoke_reason {
            Some(r) => format!("{} ({})", e.data.kind.name(), r.name()),
            None => e.data.kind.name().to_owned(),
        }),
        ended_at: ended.map(|e| e.time),
        uses: events
            .iter()
            .filter(|e| is_attempt(e.data.kind))
            .map(|e| attempt(e))
            .collect(),
    }
}

fn entry(e: &LifecycleEvent) -> Entry {
    let d = &e.data;
    let about = d
        .credential
        .as_ref()
        .map(|c| c.to_string())
        .or_else(|| {
            d.lease
                .as_ref()
                .map(|l| format!("lease {}", short(&l.lease_id)))
        })
        .unwrap_or_else(|| "-".into());
    let mut text = Vec::new();
    if let Some(v) = d.version {
        text.push(format!("version {}", short(&v)));
    }
    if let Some(r) = d.revoke_reason {
        text.push(format!("reason {}", r.name()));
    }
    if let Some(p) = d.previous_version {
        text.push(format!("replacing {}", short(&p)));
    }
    if let Some(a) = d.actor.as_ref().or(e.actor.as_ref()) {
        text.push(format!("by {a}"));
    }
    if let Some(detail) = &d.detail {
        text.push(detail.clone());
    }
    Entry {
        time: e.time,
        kind: d.kind.name().to_owned(),
        about,
        text: text.join(", "),
    }
}
