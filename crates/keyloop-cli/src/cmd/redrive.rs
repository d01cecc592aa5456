//! `keyloop redrive --dry-run`: recorded leak events (a report, one leak, or a time range) run
//! through today's fingerprint index and inventory, saying what the leak-responder would do now
//! beside what it did then — with no effect at all (reads only: nothing is published or
//! written). A value registered after its leak shows up as `would revoke`. Leak-driven
//! revocations are never held by approvals or the revocation budget, so the policy adds no
//! condition. Reading the buckets needs a NATS user allowed to (`admin`).

use crate::cli::{Global, ReplayArgs};
use crate::{config, output};
use anyhow::{Context, Result, bail};
use keyloop_core::{LifecycleEvent, LifecycleKind, Stage};
use keyloop_nats::FingerprintRef;
use serde::Serialize;
use std::collections::HashMap;
use std::process::ExitCode;

/// `keyloop redrive`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["report", "leak", "since"])))]
pub(crate) struct RedriveArgs {
    /// Say what would happen; do nothing (required).
    #[arg(long)]
    pub(crate) dry_run: bool,
    /// The leaks of this report (batch id).
    #[arg(long)]
    pub(crate) report: Option<String>,
    /// This one leak.
    #[arg(long)]
    pub(crate) leak: Option<String>,
    /// The leaks stored from this time on (RFC 3339 or a duration ago).
    #[arg(long)]
    pub(crate) since: Option<String>,
    /// … up to this time.
    #[arg(long)]
    pub(crate) until: Option<String>,
}

/// What one leak would do now, and what it did then.
#[derive(Debug, Serialize)]
struct Redriven {
    leak_id: String,
    detector: String,
    /// `would_revoke`, `inert` (already dead), `unmatched`.
    now: &'static str,
    credential: Option<String>,
    version: Option<String>,
    lease: Option<String>,
    stage: Option<String>,
    /// The outcome recorded then (`leak_matched`, `leak_inert`, `leak_unmatched`, or `none`).
    then: String,
}

pub(crate) async fn run(g: &Global, args: RedriveArgs) -> Result<ExitCode> {
    if !args.dry_run {
        bail!(
            "redrive only runs as --dry-run: to act on a leak again, ingest its report again (a finding already handled is deduplicated) or retry its DLQ entry"
        );
    }
    let bus = config::connect(g).await?;
    let events = crate::cmd::replay::collect(
        &bus,
        &ReplayArgs {
            since: args.since.clone(),
            until: args.until.clone(),
            ..Default::default()
        },
    )
    .await?;
    let mut outcomes: HashMap<String, LifecycleKind> = HashMap::new();
    for e in events.iter().filter_map(|e| e.lifecycle()) {
        let LifecycleEvent {
            correlationid: Some(c),
            data,
            ..
        } = e
        else {
            continue;
        };
        if matches!(
            data.kind,
            LifecycleKind::LeakMatched | LifecycleKind::LeakInert | LifecycleKind::LeakUnmatched
        ) {
            outcomes.entry(c).or_insert(data.kind);
        }
    }
    let leaks: Vec<_> = events
        .iter()
        .filter_map(|e| e.leak())
        .filter(|l| {
            args.report
                .as_ref()
                .is_none_or(|b| l.batchid.as_deref() == Some(b.as_str()))
                && args.leak.as_ref().is_none_or(|id| &l.id == id)
        })
        .collect();
    if leaks.is_empty() {
        eprintln!(
            "error: no recorded leak matches (list them with `keyloop replay --type leak.detected`)"
        );
        return Ok(ExitCode::from(4));
    }
    let advice = "this NATS user may not read it: run as one that may (admin)";
    let index = bus
        .fingerprints()
        .await
        .with_context(|| format!("open the fingerprint index; {advice}"))?;
    let inventory = bus
        .inventory()
        .await
        .with_context(|| format!("open the inventory; {advice}"))?;
    let mut out = Vec::with_capacity(leaks.len());
    for leak in &leaks {
        let target = index
            .lookup(&leak.data.fingerprint.lookup_keys())
            .await
            .with_context(|| format!("look up leak {}; {advice}", leak.id))?;
        let mut r = Redriven {
            leak_id: leak.id.clone(),
            detector: leak.data.detector.clone(),
            now: "unmatched",
            credential: None,
            version: None,
            lease: None,
            stage: None,
            then: outcomes
                .get(&leak.id)
                .map_or("none", |k| k.name())
                .to_owned(),
        };
        match target {
            None => {}
            Some(FingerprintRef::Version {
                credential,
                version,
            }) => {
                let stage = inventory
                    .get(&credential)
                    .await
                    .with_context(|| format!("read credential {credential}; {advice}"))?
                    .and_then(|(c, _)| c.version(version).map(|v| v.stage));
                r.now = if stage.is_some_and(Stage::is_live) {
                    "would_revoke"
                } else {
                    "inert"
                };
                r.stage = stage.map(|s| s.name().to_owned());
                r.credential = Some(credential.to_string());
                r.version = Some(version.to_string());
            }
            Some(FingerprintRef::Lease { lease }) => {
                let active = inventory
                    .lease(lease)
                    .await
                    .with_context(|| format!("read lease {lease}; {advice}"))?
                    .is_some_and(|l| l.state == keyloop_core::LeaseState::Active);
                r.now = if active { "would_revoke" } else { "inert" };
                r.lease = Some(lease.to_string());
            }
        }
        out.push(r);
    }
    for r in &out {
        if g.json {
            output::json_line(r)?;
        } else {
            let what = match (&r.credential, &r.version, &r.lease) {
                (Some(c), Some(v), _) => format!(
                    "credential {c} version {} ({})",
                    &v[v.len() - 8..],
                    r.stage.as_deref().unwrap_or("gone")
                ),
                (_, _, Some(l)) => format!("lease {}", &l[l.len() - 8..]),
                _ => "nothing keyloop manages".to_owned(),
            };
            output::line(format_args!(
                "{:<40} now: {:<12} {what}; then: {}",
                r.leak_id, r.now, r.then
            ))?;
        }
    }
    if !g.json {
        let would = out.iter().filter(|r| r.now == "would_revoke").count();
        output::line(format_args!(
            "{} leak(s) re-driven with no effect: {would} would be revoked now (leak-driven revocations are never held for approval or by the revocation budget)",
            out.len()
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}
