//! Publishing a report as it is parsed: a blocking thread parses it (see
//! [`keyloop_core::ingest::parse_choosing`]) and hands each entry over a bounded channel to the
//! publisher, which folds values already seen in this report into their first finding
//! ([`Repeats`]) and keeps at most [`MAX_ACKS_IN_FLIGHT`] publish acks outstanding. Memory is
//! bounded by those constants, whatever the size of the report (with `--wait`, see
//! [`super::wait`], one small record per finding and value is kept besides).

use super::wait::{Tracker, Watch};
use anyhow::{Context, Result, anyhow};
use async_nats::jetstream::context::PublishAckFuture;
use keyloop_core::LeakFinding;
use keyloop_core::event::{CloudEvent, LEAK_DETECTED_TYPE};
use keyloop_core::ingest::{self, Choice, Entry, Format, IngestError, Repeats, Summary};
use keyloop_nats::Bus;
use serde::Serialize;
use std::collections::VecDeque;
use std::io::Read;
use std::ops::ControlFlow;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

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
    /// This report's batch id (`batch-<uuid>`), carried by every finding and everything they
    /// cause: `keyloop replay --correlation ID` and `keyloop incident --report ID` gather the
    /// whole report.
    pub(crate) batch: String,
    /// The format the report was read as (`none`: an empty report read with `auto`).
    pub(crate) format: String,
    /// The format was read from the report (`auto`).
    pub(crate) format_detected: bool,
    /// Usable findings in the report.
    pub(crate) findings: u64,
    /// Credentials found inside findings' values (the password of a URI), published beside
    /// them.
    pub(crate) parts: u64,
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
    /// Every finding was rejected, and the report looks like one of this format.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) looks_like: Option<String>,
    /// With `--wait`: the outcome of each finding.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) outcomes: Option<super::wait::Outcomes>,
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

/// A report being parsed on a blocking thread, its entries arriving on a bounded channel.
pub(crate) struct Parsing {
    choice: Choice,
    format: oneshot::Receiver<Option<Format>>,
    entries: mpsc::Receiver<Entry>,
    parser: JoinHandle<Result<Summary, IngestError>>,
}

impl Parsing {
    /// Starts parsing `input`. The parser waits while [`PARSED_AHEAD`] entries are not taken,
    /// and stops when the receiving side is dropped.
    pub(crate) fn start(choice: Choice, input: impl Read + Send + 'static) -> Self {
        let (tx, entries) = mpsc::channel(PARSED_AHEAD);
        let (chosen, format) = oneshot::channel();
        let parser = tokio::task::spawn_blocking(move || {
            let on_format = |format| {
                let _ = chosen.send(format);
            };
            ingest::parse_choosing(choice, input, on_format, |entry| {
                match tx.blocking_send(entry) {
                    Ok(()) => ControlFlow::Continue(()),
                    Err(_) => ControlFlow::Break(()),
                }
            })
        });
        Self {
            choice,
            format,
            entries,
            parser,
        }
    }

    /// Entries parsed elsewhere (a webhook's body, checked whole before anything is published:
    /// `ingest serve`), handed to [`publish`] as a running parser's would be.
    pub(crate) fn of_entries(format: Format, entries: Vec<Entry>) -> Self {
        let (tx, rx) = mpsc::channel(PARSED_AHEAD);
        let (chosen, chosen_rx) = oneshot::channel();
        let _ = chosen.send(Some(format));
        let parser = tokio::spawn(async move {
            for entry in entries {
                if tx.send(entry).await.is_err() {
                    break;
                }
            }
            Ok(Summary::default())
        });
        Self {
            choice: Choice::Named(format),
            format: chosen_rx,
            entries: rx,
            parser,
        }
    }

    /// The error to report when the ingest cannot go on because of `other`: the report's own
    /// error if the parser already found one (the more useful message), else `other`.
    pub(crate) async fn error_or(self, name: &str, other: anyhow::Error) -> anyhow::Error {
        let Self {
            choice,
            entries,
            parser,
            ..
        } = self;
        drop(entries);
        match parser.await {
            Ok(Err(e)) => not_a_report(choice, name, &e, 0),
            _ => other,
        }
    }
}

/// The error for a report that is not of the format, saying what was already published.
fn not_a_report(choice: Choice, name: &str, e: &IngestError, stored: u64) -> anyhow::Error {
    let stored = match stored {
        0 => String::new(),
        n => format!(
            "; the {n} finding(s) before that point were published (ingesting the fixed report \
             again deduplicates them)"
        ),
    };
    let check = match choice {
        // Unless the reason already names the format the report looks like (or, with `auto`,
        // says none could be told).
        Choice::Named(format) if !e.reason.contains("looks like") => {
            format!("; check that FORMAT ({format}) names the tool that wrote the report")
        }
        _ => String::new(),
    };
    anyhow!("{name}: {e}{stored}{check}")
}

/// Where published leaks are followed (`--wait`): the outcome subscription and the findings'
/// values.
pub(crate) struct Waiting<'w> {
    pub(crate) watch: &'w Watch,
    pub(crate) tracker: &'w mut Tracker,
}

/// Publishes the findings (and parts) of a report being parsed as `leak.detected` events, a
/// window of acks at a time, and sums up what happened. With `waiting`, each leak id is
/// expected by the watch before it is published, and each finding's values are tracked.
pub(crate) async fn publish(
    bus: &Bus,
    parsing: Parsing,
    options: &Options,
    mut waiting: Option<Waiting<'_>>,
) -> Result<IngestReport> {
    let Parsing {
        choice,
        format,
        mut entries,
        parser,
    } = parsing;
    let chosen = match format.await {
        Ok(chosen) => chosen,
        // The parser ended before it could choose: its error says why.
        Err(_) => {
            return match parser
                .await
                .context("the report parser stopped unexpectedly")?
            {
                Err(e) => Err(not_a_report(choice, &options.name, &e, 0)),
                Ok(_) => Err(anyhow!(
                    "{}: the report parser chose no format",
                    options.name
                )),
            };
        }
    };
    let mut report = IngestReport {
        format: chosen.map_or("none", Format::name).to_owned(),
        format_detected: choice == Choice::Auto,
        batch: format!("batch-{}", uuid::Uuid::now_v7().simple()),
        ..Default::default()
    };
    let subject = bus.topology.leak_detected();
    let source = format!("keyloop/ingest/{}", report.format);
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
        let (finding, part) = match entry {
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
            Entry::Finding(finding) => {
                report.findings += 1;
                if let Some(w) = waiting.as_mut() {
                    w.tracker.finding(&finding);
                }
                (finding, None)
            }
            Entry::Part(part) => {
                report.parts += 1;
                (part.finding, Some(part.of))
            }
        };
        if repeats.seen_before(&finding.fingerprint) {
            report.repeated += u64::from(part.is_none());
            if let Some(w) = waiting.as_mut() {
                w.tracker.repeat(&finding.fingerprint, part);
            }
            continue;
        }
        if in_flight.len() == MAX_ACKS_IN_FLIGHT
            && let Some((id, ack)) = in_flight.pop_front()
        {
            settle(&mut report, &subject, id, ack, waiting.as_ref()).await?;
        }
        let id = finding.dedup_key();
        if let Some(w) = waiting.as_mut() {
            // Expected before it is published: its outcome may come back at once.
            w.watch.expect(&id);
            w.tracker.value(&finding.fingerprint, &id, part);
        }
        let ack = send(bus, &subject, &source, &id, finding, &report).await?;
        in_flight.push_back((id, ack));
    }
    for (id, ack) in in_flight {
        settle(&mut report, &subject, id, ack, waiting.as_ref()).await?;
    }
    match parser
        .await
        .context("the report parser stopped unexpectedly")?
    {
        Ok(summary) => {
            report.looks_like = summary.looks_like.map(|f| f.name().to_owned());
            Ok(report)
        }
        Err(e) => Err(not_a_report(
            choice,
            &options.name,
            &e,
            report.published + report.deduplicated,
        )),
    }
}

/// Sends one leak event; its ack is awaited later.
async fn send(
    bus: &Bus,
    subject: &str,
    source: &str,
    id: &str,
    finding: LeakFinding,
    report: &IngestReport,
) -> Result<PublishAckFuture> {
    // Each leak starts its own trace (when traces are exported): the leak-responder, revoker
    // and rotator continue it from the `traceparent` this publish carries.
    let span = tracing::info_span!(parent: None, "leak", leak = id, batch = %report.batch);
    let (traceparent, headers) = {
        let _in = span.enter();
        let mut headers = async_nats::HeaderMap::new();
        keyloop_nats::trace::inject(&mut headers);
        (keyloop_nats::trace::current(), headers)
    };
    let mut event = CloudEvent::new(id.to_owned(), source, LEAK_DETECTED_TYPE, finding)
        .caused_by(Some(id.to_owned()), None)
        .in_batch(Some(report.batch.clone()));
    event.traceparent = traceparent;
    let payload = serde_json::to_vec(&event)?;
    let publish = async_nats::jetstream::message::PublishMessage::build()
        .payload(payload.into())
        .headers(headers)
        .message_id(id);
    bus.js
        .send_publish(subject.to_owned(), publish)
        .await
        .with_context(|| {
            format!(
                "publish leak {id} to {subject} ({} stored before it)",
                report.published + report.deduplicated
            )
        })
}

/// Waits for one publish ack and counts it. A leak the stream already had was handled when
/// it was first ingested: its outcome is not awaited.
async fn settle(
    report: &mut IngestReport,
    subject: &str,
    id: String,
    ack: PublishAckFuture,
    waiting: Option<&Waiting<'_>>,
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
        if let Some(w) = waiting {
            w.watch.already_ingested(&id);
        }
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
