//! The grammar of `keyloop incident`.

use clap::{ArgGroup, Args};
use std::path::PathBuf;

#[derive(Debug, Args, Clone)]
#[command(group(ArgGroup::new("about").required(true).args(["leak", "report", "credential", "lease"])))]
pub(crate) struct IncidentArgs {
    /// The leak id (`leak-…`, printed by `keyloop ingest` and `replay`): that finding, and the
    /// other findings of its report or commit.
    #[arg(long)]
    pub(crate) leak: Option<String>,
    /// A report's batch id (`batch-…`, printed by `keyloop ingest`): every finding in it.
    #[arg(long)]
    pub(crate) report: Option<String>,
    /// Every leak of this credential.
    #[arg(long)]
    pub(crate) credential: Option<String>,
    /// A JIT lease (its id or the 8 hex the human output prints): its life and its leaks.
    #[arg(long)]
    pub(crate) lease: Option<String>,
    /// Only read the event log from this time on (RFC 3339, or this long ago: 30d).
    #[arg(long, value_parser = super::replay::replay_time)]
    pub(crate) since: Option<String>,
    /// Also write the report as a self-contained HTML page (timeline drawn) to FILE.
    #[arg(long, value_name = "FILE")]
    pub(crate) html: Option<PathBuf>,
}
