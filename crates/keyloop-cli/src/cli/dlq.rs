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
    /// Publish entries again to the subject each came from, so the role that gave it up gets
    /// it again (fix the cause first), and remove them from the DLQ. Through the control plane:
    /// the policy decides who may (admins by default), `dlq_retried` records it. Retrying an
    /// entry twice stores it once. Entries of the notifier (the audit log) are refused.
    /// Exit 3 when some entry was not retried.
    Retry(DlqPick),
    /// Remove entries without processing them; `dlq_purged` records each with its reason.
    /// Without --yes, shows what would be removed and exits 2. Exit 3 when some entry was not
    /// removed.
    Purge {
        #[command(flatten)]
        pick: DlqPick,
        /// Remove them (without it, nothing is removed).
        #[arg(long)]
        yes: bool,
    },
}

/// Which DLQ entries a retry or purge acts on.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["seqs", "all"])))]
pub(crate) struct DlqPick {
    /// DLQ sequences (`keyloop dlq list` prints them).
    pub(crate) seqs: Vec<u64>,
    /// Every entry (of --role, when given).
    #[arg(long, conflicts_with = "seqs")]
    pub(crate) all: bool,
    /// With --all: only the entries of this worker role.
    #[arg(long, requires = "all")]
    pub(crate) role: Option<String>,
}
