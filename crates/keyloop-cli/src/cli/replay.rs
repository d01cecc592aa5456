//! The grammar of `keyloop replay` (and the time flags `keyloop incident` shares with it).

use clap::{Args, ValueEnum};
use keyloop_core::duration::{DurationError, REPLAY_AGO};

/// Which streams a replay reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub(crate) enum ReplayStream {
    /// Inbound facts: leaks, tasks, schedule ticks, uses (`KEYLOOP_EVENTS`).
    Events,
    /// The audit log: every state change (`KEYLOOP_LIFECYCLE`).
    Lifecycle,
    /// What could not be processed, with the reason (`KEYLOOP_DLQ`; payloads are not shown).
    Dlq,
    /// All three, merged by the time each message was stored.
    #[default]
    All,
}

#[derive(Debug, Args, Default, Clone)]
pub(crate) struct ReplayArgs {
    /// Start at this time (RFC 3339, e.g. 2026-11-29T10:00:00Z) or this long ago (e.g. 2h,
    /// at most 3650d).
    #[arg(long, value_parser = replay_time)]
    pub(crate) since: Option<String>,
    /// Stop at this time (RFC 3339) or this long ago.
    #[arg(long, value_parser = replay_time)]
    pub(crate) until: Option<String>,
    /// Only events about this credential (and the leaks that started them).
    #[arg(long)]
    pub(crate) credential: Option<String>,
    /// Only events of this correlation id: a leak id, an operation id, a task id, or a
    /// report's batch id (`batch-…`, printed by `keyloop ingest`: the whole report).
    #[arg(long)]
    pub(crate) correlation: Option<String>,
    /// Only events about this JIT lease (its id, or the 8 hex the human output prints).
    #[arg(long)]
    pub(crate) lease: Option<String>,
    /// Only events of this type (repeatable): a lifecycle kind (`revoked`, `leak_matched`,
    /// …), an inbound type (`leak.detected`, `task.completed`, `credential.used`,
    /// `schedule.tick`), or `dlq`.
    #[arg(long = "type", value_name = "TYPE")]
    pub(crate) types: Vec<String>,
    /// The streams to read.
    #[arg(long, value_enum, default_value_t = ReplayStream::All)]
    pub(crate) stream: ReplayStream,
    /// Show schedule ticks too (hidden unless asked: one a minute floods the rest).
    #[arg(long)]
    pub(crate) ticks: bool,
    /// After the history, keep printing new events as they are stored, until Ctrl-C.
    #[arg(long, conflicts_with = "until")]
    pub(crate) follow: bool,
}

/// Checks `--since`/`--until` the way the replay reads them: RFC 3339, or a duration ago
/// within [`REPLAY_AGO`] (a longer one would overflow the subtraction from now).
pub(super) fn replay_time(text: &str) -> Result<String, String> {
    use time::format_description::well_known::Rfc3339;
    if time::OffsetDateTime::parse(text, &Rfc3339).is_ok() {
        return Ok(text.to_owned());
    }
    match REPLAY_AGO.parse(text) {
        Ok(_) => Ok(text.to_owned()),
        Err(DurationError::OutOfRange(e)) => Err(e.to_string()),
        Err(_) => Err("expected RFC 3339 (2026-11-29T10:00:00Z) or a duration ago (1h)".into()),
    }
}
