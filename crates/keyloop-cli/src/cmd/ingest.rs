//! `keyloop ingest FORMAT [FILE|-]`: a detector's native report in, leak events out. Values are
//! hashed by the parser before anything is published; the same finding ingested again has the
//! same message id and is dropped by the stream's dedup window.
//!
//! The report is streamed end to end: a blocking thread parses it (see
//! [`keyloop_core::ingest::parse`]) and hands each entry over a bounded channel to the
//! publisher, which folds values already seen in this report into their first finding
//! ([`Repeats`]) and keeps at most [`MAX_ACKS_IN_FLIGHT`] publish acks outstanding. Memory is
//! bounded by those constants, whatever the size of the report.

use crate::cli::{Global, IngestArgs};
use crate::output;
use anyhow::{Context, Result, anyhow};
use async_nats::jetstream::context::PublishAckFuture;
use keyloop_core::event::{CloudEvent, LEAK_DETECTED_TYPE};
use keyloop_core::ingest::{self, Entry, Format, IngestError, Repeats, Summary};
use keyloop_nats::Bus;
use serde::Serialize;
use std::collections::VecDeque;
use std::io::{IsTerminal, Read};
use std::ops::ControlFlow;
use std::path::Path;
use std::process::ExitCode;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Exit code when the report was read but some findings were rejected: a rejected finding may be
/// a live leak nobody acted on, so scripts must notice.
const EXIT_SOME_REJECTED: u8 = 3;

/// Publish acks awaited at most at once. async-nats lets a JetStream context have 5,000 acks
/// outstanding (`max_ack_inflight`) and then waits in `send_publish` for one to be awaited;
/// awaiting them only after publishing everything therefore hung any report of more than
/// 5,000 findings. A window well below that keeps the connection busy and memory flat.
const MAX_ACKS_IN_FLIGHT: usize = 256;

/// Entries the parser may run ahead of the publisher.
const PARSED_AHEAD: usize = 1_024;

/// How many leak ids and rejections the summary lists; the rest are only counted, so the
/// summary of a huge report stays small.
pub(crate) const LISTED: usize = 1_000;

/// When stderr is a terminal, a progress line every this many entries.
const PROGRESS_EVERY: u64 = 10_000;

/// What one ingest did.
#[derive(Debug, Default, Serialize)]
pub(crate) struct IngestReport {
    pub(crate) format: String,
    /// Usable findings in the report.
    pub(crate) findings: u64,
    /// Leak events stored.
    pub(crate) published: u64,
    /// Leak events the stream already had (the same finding ingested before).
    pub(crate) deduplicated: u64,
    /// Findings of a value found earlier in the same report: folded into that first finding's
    /// leak event, not published.
    pub(crate) repeated: u64,
    /// The first [`LISTED`] rejected findings.
    pub(crate) rejected: Vec<RejectedFinding>,
    /// Rejected findings beyond those listed.
    pub(crate) rejected_not_listed: u64,
    /// Ids of the first [`LISTED`] published (or deduplicated) leak events, in report order:
    /// the correlation ids to follow.
    pub(crate) leak_ids: Vec<String>,
    /// Leak ids beyond those listed.
    pub(crate) leak_ids_not_listed: u64,
}

impl IngestReport {
    /// Every rejected finding, listed or not.
    pub(crate) fn rejected_total(&self) -> u64 {
        self.rejected.len() as u64 + self.rejected_not_listed
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct RejectedFinding {
    pub(crate) position: String,
    pub(crate) reason: String,
}

/// How an ingest talks to the person running it.
pub(crate) struct Options {
    /// The report's name in messages: its path, or `stdin`.
    pub(crate) name: String,
    /// Print each rejection to stderr as it is found.
    pub(crate) show_rejections: bool,
    /// Print a progress line every [`PROGRESS_EVERY`] entries to stderr.
    pub(crate) progress: bool,
}

pub(crate) async fn run(g: &Global, args: IngestArgs) -> Result<ExitCode> {
    let format = args
        .format
        .context("name the report's FORMAT (see `keyloop ingest --help`)")?;
    let (input, name): (Box<dyn Read + Send>, String) = match args.file.as_deref() {
        None => (Box::new(std::io::stdin()), "stdin".to_owned()),
        Some(p) if p.as_os_str() == "-" => (Box::new(std::io::stdin()), "stdin".to_owned()),
        Some(p) => (
            Box::new(
                std::fs::File::open(p)
                    .with_context(|| format!("cannot read report {}", p.display()))?,
            ),
            p.display().to_string(),
        ),
    };
    let options = Options {
        name,
        show_rejections: !g.json,
        progress: std::io::stderr().is_terminal(),
    };
    // Parsing starts before connecting: a report that is not of the format fails at once,
    // with or without a server.
    let parsing = Parsing::start(format, input);
    let bus = match crate::config::connect(g).await {
        Ok(bus) => bus,
        Err(e) => return Err(parsing.error_or(format, &options.name, e).await),
    };
    let report = publish(&bus, format, parsing, &options).await?;
    let name = &options.name;
    if g.json {
        output::json_line(&report)?;
    } else {
        let repeated = match report.repeated {
            0 => String::new(),
            n => format!(", {n} repeated in the report (folded into their first finding)"),
        };
        output::line(format_args!(
            "{name}: {} published, {} deduplicated{repeated}, {} rejected",
            report.published,
            report.deduplicated,
            report.rejected_total()
        ))?;
    }
    if report.rejected_total() == 0 {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "error: {} finding(s) in {name} were rejected and not acted on; fix the report (reasons above) and ingest it again",
            report.rejected_total()
        );
        Ok(ExitCode::from(EXIT_SOME_REJECTED))
    }
}

/// Ingests a report file without printing anything (for `keyloop demo`).
pub(crate) async fn ingest_file(bus: &Bus, format: Format, path: &Path) -> Result<IngestReport> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot read report {}", path.display()))?;
    let options = Options {
        name: path.display().to_string(),
        show_rejections: false,
        progress: false,
    };
    publish(bus, format, Parsing::start(format, file), &options).await
}

/// A report being parsed on a blocking thread, its entries arriving on a bounded channel.
pub(crate) struct Parsing {
    entries: mpsc::Receiver<Entry>,
    parser: JoinHandle<Result<Summary, IngestError>>,
}

impl Parsing {
    /// Starts parsing `input`. The parser waits while [`PARSED_AHEAD`] entries are not taken,
    /// and stops when the receiving side is dropped.
    pub(crate) fn start(format: Format, input: impl Read + Send + 'static) -> Self {
        let (tx, entries) = mpsc::channel(PARSED_AHEAD);
        let parser = tokio::task::spawn_blocking(move || {
            ingest::parse(format, input, |entry| match tx.blocking_send(entry) {
                Ok(()) => ControlFlow::Continue(()),
                Err(_) => ControlFlow::Break(()),
            })
        });
        Self { entries, parser }
    }

    /// Entries parsed elsewhere (a webhook's body, checked whole before anything is published:
    /// `ingest serve`), handed to [`publish`] as a running parser's would be.
    pub(crate) fn of_entries(entries: Vec<Entry>) -> Self {
        let (tx, rx) = mpsc::channel(PARSED_AHEAD);
        let parser = tokio::spawn(async move {
            for entry in entries {
                if tx.send(entry).await.is_err() {
                    break;
                }
            }
            Ok(Summary::default())
        });
        Self {
            entries: rx,
            parser,
        }
    }

    /// The error to report when the ingest cannot go on because of `other`: the report's own
    /// error if the parser already found one (the more useful message), else `other`.
    async fn error_or(self, format: Format, name: &str, other: anyhow::Error) -> anyhow::Error {
        let Self { entries, parser } = self;
        drop(entries);
        match parser.await {
            Ok(Err(e)) => not_a_report(format, name, &e, 0),
            _ => other,
        }
    }
}

/// The error for a report that is not of `format`, saying what was already published.
fn not_a_report(format: Format, name: &str, e: &IngestError, stored: u64) -> anyhow::Error {
    let stored = match stored {
        0 => String::new(),
        n => format!(
            "; the {n} finding(s) before that point were published (ingesting the fixed report \
             again deduplicates them)"
        ),
    };
    anyhow!(
        "{name}: {e}{stored}; check that FORMAT ({format}) names the tool that wrote the report"
    )
}

/// Publishes the findings of a report being parsed as `leak.detected` events, a window of acks
/// at a time, and sums up what happened.
pub(crate) async fn publish(
    bus: &Bus,
    format: Format,
    parsing: Parsing,
    options: &Options,
) -> Result<IngestReport> {
    let Parsing {
        mut entries,
        parser,
    } = parsing;
    let mut report = IngestReport {
        format: format.to_string(),
        ..Default::default()
    };
    let subject = bus.topology.leak_detected();
    let source = format!("keyloop/ingest/{format}");
    let mut repeats = Repeats::new();
    let mut in_flight: VecDeque<(String, PublishAckFuture)> =
        VecDeque::with_capacity(MAX_ACKS_IN_FLIGHT);
    let mut read = 0u64;
    while let Some(entry) = entries.recv().await {
        read += 1;
        if options.progress && read.is_multiple_of(PROGRESS_EVERY) {
            eprintln!(
                "{}: {read} entries read: {} published, {} repeated, {} rejected so far",
                options.name,
                report.published + report.deduplicated,
                report.repeated,
                report.rejected_total()
            );
        }
        let finding = match entry {
            Entry::Rejected(r) => {
                if options.show_rejections {
                    eprintln!("  rejected {}: {}", r.position, r.reason);
                }
                if report.rejected.len() < LISTED {
                    report.rejected.push(RejectedFinding {
                        position: r.position,
                        reason: r.reason,
                    });
                } else {
                    report.rejected_not_listed += 1;
                }
                continue;
            }
            Entry::Finding(finding) => finding,
        };
        report.findings += 1;
        if repeats.seen_before(&finding.fingerprint) {
            report.repeated += 1;
            continue;
        }
        if in_flight.len() == MAX_ACKS_IN_FLIGHT
            && let Some((id, ack)) = in_flight.pop_front()
        {
            settle(&mut report, &subject, id, ack).await?;
        }
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
            .with_context(|| {
                format!(
                    "publish leak {id} to {subject} ({} stored before it)",
                    report.published + report.deduplicated
                )
            })?;
        in_flight.push_back((id, ack));
    }
    for (id, ack) in in_flight {
        settle(&mut report, &subject, id, ack).await?;
    }
    match parser
        .await
        .context("the report parser stopped unexpectedly")?
    {
        Ok(_) => Ok(report),
        Err(e) => Err(not_a_report(
            format,
            &options.name,
            &e,
            report.published + report.deduplicated,
        )),
    }
}

/// Waits for one publish ack and counts it.
async fn settle(
    report: &mut IngestReport,
    subject: &str,
    id: String,
    ack: PublishAckFuture,
) -> Result<()> {
    let ack = ack.await.with_context(|| {
        format!(
            "leak {id} was not stored on {subject} (is `keyloop init` done?); {} leak(s) were \
             stored before it: ingest the report again, they are deduplicated",
            report.published + report.deduplicated
        )
    })?;
    if ack.duplicate {
        report.deduplicated += 1;
    } else {
        report.published += 1;
    }
    if report.leak_ids.len() < LISTED {
        report.leak_ids.push(id);
    } else {
        report.leak_ids_not_listed += 1;
    }
    Ok(())
}
