//! The grammar of `keyloop dlq …`.

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub(crate) enum DlqCommand {
    /// The DLQ entries, oldest first: sequence, time, role, original subject, deliveries,
    /// reason.
    List {
        /// Only the entries of this worker role (`revoker`, `leak-responder`, …).
        #[arg(long)]
        role: Option<String>,
        /// Only entries stored from this time on (RFC 3339, or this long ago: 2h).
        #[arg(long, value_parser = super::replay::replay_time)]
        since: Option<String>,
    },
    /// One entry: every header and its payload, with the values of keys that can hold a
    /// secret redacted (a payload that is not JSON is shown as its length and tag only).
    Show {
        /// The DLQ sequence (`keyloop dlq list` prints it).
        seq: u64,
    },
}
