//! `keyloop ingest FORMAT [FILE|-]`: a detector's native report in, leak events out. Values are
//! hashed by the parser before anything is published; the same finding ingested again has the
//! same message id and is dropped by the stream's dedup window. `auto` reads the format from
//! the report; an empty report is a clean scan (exit 0) in every format.
//!
//! The report is streamed end to end (`publish.rs`); `--wait` follows each finding to its
//! outcome (`wait.rs`). Exit codes are the `EXIT_*` constants below, listed in the help.

mod publish;
mod wait;

pub(crate) use publish::{IngestReport, LISTED, Options, Parsing, publish};

use crate::cli::{Global, IngestArgs};
use crate::output;
use anyhow::{Context, Result};
use keyloop_core::LeakLocation;
use keyloop_core::ingest::{Choice, Format};
use keyloop_nats::Bus;
use publish::Waiting;
use std::io::{IsTerminal, Read};
use std::path::Path;
use std::process::ExitCode;
use wait::{Kind, Outcomes, Tracker, Watch};

/// Exit code when the report was read but some findings were rejected: a rejected finding may be
/// a live leak nobody acted on, so scripts must notice.
const EXIT_SOME_REJECTED: u8 = 3;

/// Exit code of `--wait` when an outcome did not arrive within `--timeout`.
const EXIT_TIMED_OUT: u8 = 4;

/// Exit code of `--fail-on-unmatched` when a finding matched no managed credential.
const EXIT_UNMATCHED: u8 = 5;

pub(crate) async fn run(g: &Global, args: IngestArgs) -> Result<ExitCode> {
    let choice = args
        .format
        .context("name the report's FORMAT (see `keyloop ingest --help`)")?;
    let wait = args.wait || args.fail_on_unmatched;
    let timeout = super::duration_arg(keyloop_core::duration::WAIT_TIMEOUT, &args.timeout)?;
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
    let parsing = Parsing::start(choice, input);
    let bus = match crate::config::connect(g).await {
        Ok(bus) => bus,
        Err(e) => return Err(parsing.error_or(&options.name, e).await),
    };
    let name = &options.name;
    let report = if wait {
        // Subscribed before the first leak is published.
        let watch = match Watch::subscribe(&bus).await {
            Ok(watch) => watch,
            Err(e) => return Err(parsing.error_or(name, e).await),
        };
        let mut tracker = Tracker::default();
        let waiting = Waiting {
            watch: &watch,
            tracker: &mut tracker,
        };
        let mut report = publish::publish(&bus, parsing, &options, Some(waiting)).await?;
        announce(g, name, &report);
        watch.wait(timeout).await;
        report.outcomes = Some(tracker.outcomes(&watch));
        report
    } else {
        let report = publish::publish(&bus, parsing, &options, None).await?;
        announce(g, name, &report);
        report
    };
    if g.json {
        output::json_line(&report)?;
    } else {
        let repeated = match report.repeated {
            0 => String::new(),
            n => format!(", {n} repeated in the report (folded into their first finding)"),
        };
        let parts = match report.parts {
            0 => String::new(),
            n => format!("; {n} password(s) found inside findings' values went with them"),
        };
        output::line(format_args!(
            "{name}: {} published, {} deduplicated{repeated}, {} rejected{parts}",
            report.published,
            report.deduplicated,
            report.rejected_total()
        ))?;
        if report.published + report.deduplicated > 0 {
            output::line(format_args!(
                "{name}: batch {} (the whole report: `keyloop incident --report {}`)",
                report.batch, report.batch
            ))?;
        }
        if let Some(outcomes) = &report.outcomes {
            print_outcomes(name, outcomes, timeout)?;
        }
    }
    if let Some(other) = &report.looks_like {
        eprintln!(
            "hint: every finding of {name} was rejected, and it looks like a {other} report \
             (use `keyloop ingest {other}`)"
        );
    }
    exit(name, &report, timeout, args.fail_on_unmatched)
}

/// Says on stderr which format `auto` chose.
fn announce(g: &Global, name: &str, report: &IngestReport) {
    if !report.format_detected || g.json {
        return;
    }
    if report.format == "none" {
        eprintln!("{name}: empty report (no findings)");
    } else {
        eprintln!(
            "{name}: read as a {} report (format detected from its first bytes)",
            report.format
        );
    }
}

/// The exit code, with what it means on stderr: rejected findings first, then outcomes that
/// did not come, then findings that matched nothing (`--fail-on-unmatched`).
fn exit(
    name: &str,
    report: &IngestReport,
    timeout: std::time::Duration,
    fail_on_unmatched: bool,
) -> Result<ExitCode> {
    if report.rejected_total() > 0 {
        eprintln!(
            "error: {} finding(s) in {name} were rejected and not acted on; fix the report \
             (reasons above) and ingest it again",
            report.rejected_total()
        );
        return Ok(ExitCode::from(EXIT_SOME_REJECTED));
    }
    let Some(outcomes) = &report.outcomes else {
        return Ok(ExitCode::SUCCESS);
    };
    if outcomes.timed_out > 0 {
        eprintln!(
            "error: no outcome within {}s for {} finding(s) of {name}; their leaks are stored \
             and will be handled when a leak-responder runs (`keyloop worker leak-responder`); \
             follow them with `keyloop replay --correlation LEAK_ID`. A detector user needs to \
             subscribe to keyloop.lifecycle.leak_matched.*, leak_unmatched.* and leak_inert.* \
             (deploy/nats/permissions.conf)",
            timeout.as_secs(),
            outcomes.timed_out
        );
        return Ok(ExitCode::from(EXIT_TIMED_OUT));
    }
    if fail_on_unmatched && outcomes.unmatched > 0 {
        eprintln!(
            "error: {} finding(s) of {name} matched no credential keyloop manages \
             (--fail-on-unmatched): they are leaks nobody revoked; rotate them by hand, or \
             register them with keyloop",
            outcomes.unmatched
        );
        return Ok(ExitCode::from(EXIT_UNMATCHED));
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints each finding's outcome and the counts.
fn print_outcomes(name: &str, outcomes: &Outcomes, timeout: std::time::Duration) -> Result<()> {
    for f in &outcomes.findings {
        let what = match (f.outcome, &f.credential, &f.lease) {
            (Kind::Matched, Some(c), _) => format!(
                ": {c}{} by {}, revoking",
                version(f.version),
                f.matched_by.unwrap_or("the value")
            ),
            (Kind::Matched, None, Some(l)) => format!(": JIT lease {l}, revoking"),
            (Kind::Inert, Some(c), _) => format!(": {c}{}, already revoked", version(f.version)),
            (Kind::Inert, None, Some(l)) => format!(": JIT lease {l}, already ended"),
            (Kind::Unmatched, ..) => ": no managed credential has this value".to_owned(),
            (Kind::TimedOut, ..) => format!(": no outcome within {}s", timeout.as_secs()),
            (Kind::AlreadyIngested, ..) => {
                ": published before, handled then (see `keyloop replay`)".to_owned()
            }
            _ => String::new(),
        };
        output::line(format_args!(
            "  finding {} {}{what} ({}{})",
            f.finding,
            f.outcome.word(),
            f.detector,
            place(&f.location)
        ))?;
    }
    if outcomes.findings_not_listed > 0 {
        output::line(format_args!(
            "  … and {} more finding(s) (counted below; --json lists the first {LISTED})",
            outcomes.findings_not_listed
        ))?;
    }
    output::line(format_args!(
        "{name}: {} matched, {} inert, {} unmatched, {} timed out, {} already ingested",
        outcomes.matched,
        outcomes.inert,
        outcomes.unmatched,
        outcomes.timed_out,
        outcomes.already_ingested
    ))
}

fn version(version: Option<uuid::Uuid>) -> String {
    version.map_or_else(String::new, |v| format!(" version {v}"))
}

/// ` at FILE:LINE` (or the repository, or the link), or nothing.
fn place(location: &LeakLocation) -> String {
    let at = match (&location.file, location.line) {
        (Some(file), Some(line)) => format!("{file}:{line}"),
        (Some(file), None) => file.clone(),
        (None, _) => match (&location.repo, &location.url) {
            (Some(repo), _) => repo.clone(),
            (None, Some(url)) => url.clone(),
            (None, None) => return String::new(),
        },
    };
    format!(" at {at}")
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
    let parsing = Parsing::start(Choice::Named(format), file);
    publish::publish(bus, parsing, &options, None).await
}
