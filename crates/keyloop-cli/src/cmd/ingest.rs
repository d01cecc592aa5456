//! `keyloop ingest FORMAT [FILE|-]`: a detector's native report in, leak events out. Values are
//! hashed by the parser before anything is published; the same finding ingested again has the
//! same message id and is dropped by the stream's dedup window.

use crate::cli::{Global, IngestArgs};
use crate::output;
use anyhow::{Context, Result, anyhow};
use keyloop_core::event::{CloudEvent, LEAK_DETECTED_TYPE};
use keyloop_core::ingest::{self, Format};
use keyloop_nats::Bus;
use serde::Serialize;
use std::io::Read;
use std::process::ExitCode;

/// Exit code when the report was read but some findings were rejected: a rejected finding may be
/// a live leak nobody acted on, so scripts must notice.
const EXIT_SOME_REJECTED: u8 = 3;

/// What one ingest did.
#[derive(Debug, Default, Serialize)]
pub(crate) struct IngestReport {
    pub(crate) format: String,
    pub(crate) published: usize,
    pub(crate) deduplicated: usize,
    pub(crate) rejected: Vec<RejectedFinding>,
    /// Ids of the published (or deduplicated) leak events: the correlation ids to follow.
    pub(crate) leak_ids: Vec<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct RejectedFinding {
    pub(crate) position: String,
    pub(crate) reason: String,
}

pub(crate) async fn run(g: &Global, args: IngestArgs) -> Result<ExitCode> {
    let format: Format = args.format.parse().map_err(|e: String| anyhow!(e))?;
    let (input, name) = match args.file.as_deref() {
        None => (read_stdin()?, "stdin".to_owned()),
        Some(p) if p.as_os_str() == "-" => (read_stdin()?, "stdin".to_owned()),
        Some(p) => (
            std::fs::read(p).with_context(|| format!("cannot read report {}", p.display()))?,
            p.display().to_string(),
        ),
    };
    // Parse before connecting: a bad report fails fast, with or without a server.
    let parsed = ingest::parse(format, &input).map_err(|e| {
        anyhow!("{name}: {e}; check that FORMAT ({format}) names the tool that wrote the report")
    })?;
    drop(input);
    let bus = crate::config::connect(g).await?;
    let report = publish(&bus, format, parsed).await?;
    if g.json {
        output::json_line(&report)?;
    } else {
        output::line(format_args!(
            "{name}: {} published, {} deduplicated, {} rejected",
            report.published,
            report.deduplicated,
            report.rejected.len()
        ))?;
        for r in &report.rejected {
            eprintln!("  rejected {}: {}", r.position, r.reason);
        }
    }
    if report.rejected.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "error: {} finding(s) in {name} were rejected and not acted on; fix the report (reasons above) and ingest it again",
            report.rejected.len()
        );
        Ok(ExitCode::from(EXIT_SOME_REJECTED))
    }
}

fn read_stdin() -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    std::io::stdin()
        .read_to_end(&mut buf)
        .context("cannot read the report from stdin")?;
    Ok(buf)
}

/// Publishes parsed findings as `leak.detected` events; each waits for its stream ack.
pub(crate) async fn publish(
    bus: &Bus,
    format: Format,
    parsed: ingest::Parsed,
) -> Result<IngestReport> {
    let mut report = IngestReport {
        format: format.to_string(),
        rejected: parsed
            .rejected
            .into_iter()
            .map(|r| RejectedFinding {
                position: r.position,
                reason: r.reason,
            })
            .collect(),
        ..Default::default()
    };
    let subject = bus.topology.leak_detected();
    let source = format!("keyloop/ingest/{format}");
    // Publish all, then await the acks together: one round trip per report, not per finding.
    let mut acks = Vec::with_capacity(parsed.findings.len());
    for finding in parsed.findings {
        let id = finding.dedup_key();
        let event = CloudEvent::new(id.clone(), &source, LEAK_DETECTED_TYPE, finding)
            .caused_by(Some(id.clone()), None);
        let payload = serde_json::to_vec(&event)?;
        let publish = async_nats::jetstream::message::PublishMessage::build()
            .payload(payload.into())
            .message_id(&id);
        let ack = bus
            .js
            .send_publish(subject.clone(), publish)
            .await
            .with_context(|| format!("publish leak {id} to {subject}"))?;
        acks.push((id, ack));
    }
    for (id, ack) in acks {
        let ack = ack.await.with_context(|| {
            format!("leak {id} was not stored on {subject} (is `keyloop init` done?)")
        })?;
        if ack.duplicate {
            report.deduplicated += 1;
        } else {
            report.published += 1;
        }
        report.leak_ids.push(id);
    }
    Ok(report)
}
