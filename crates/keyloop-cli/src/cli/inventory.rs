//! The grammar of `keyloop inventory …`.

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub(crate) enum InventoryCommand {
    /// Rebuild the inventory and check the fingerprint index from the lifecycle stream alone,
    /// and print how they differ from the live ones (exit 3 when they do).
    Rebuild {
        /// Compare only; write nothing (required: see the README).
        #[arg(long)]
        dry_run: bool,
    },
}
