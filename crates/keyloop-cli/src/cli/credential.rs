//! The grammar of `keyloop credential …`.

use super::{OneOf, STORES, STRATEGIES, TARGETS};
use clap::{Args, Subcommand};
use keyloop_core::{BlastRadius, RotationStrategy, StoreKind, TargetKind, ValueFormat};

#[derive(Debug, Subcommand)]
pub(crate) enum CredentialCommand {
    /// Register a credential and give it its first value (through the control plane; or
    /// --local, in this process, for bootstrapping).
    Register(Box<RegisterArgs>),
    /// List the credentials you may see.
    List,
    /// Show a credential's versions (stages, times; never values).
    Show {
        /// Credential id, e.g. pg/app.
        id: String,
    },
    /// Print the current value on stdout, and nothing else; records `used` with who fetched it.
    #[command(alias = "reveal")]
    Fetch {
        /// Credential id.
        id: String,
        /// The previous value (during its grace) instead of the current one.
        #[arg(long)]
        previous: bool,
    },
    /// Whether a value (read from stdin, never the command line) is a live version of the
    /// credential: exit 0 if it works, 2 if not. A dead or unknown value is recorded
    /// (`verify_denied`, with who asked). For its owner, consumers and admins.
    Verify {
        /// Credential id.
        id: String,
    },
    /// Change a credential's owner or consumers (the actors allowed to fetch it).
    Update {
        /// Credential id.
        id: String,
        /// The owning actor (a NATS user); `""` removes it.
        #[arg(long)]
        owner: Option<String>,
        /// Allow this actor to fetch the value (repeatable).
        #[arg(long = "add-consumer")]
        add_consumers: Vec<String>,
        /// Stop allowing this actor (repeatable).
        #[arg(long = "remove-consumer")]
        remove_consumers: Vec<String>,
    },
    /// Offboard a credential: every version revoked, nothing scheduled, its history kept.
    Retire {
        /// Credential id.
        id: String,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: String,
    },
    /// Print each lifecycle event of a credential as it happens (rotations, revocations):
    /// how a service follows its secret. Runs until interrupted.
    Watch {
        /// Credential id.
        id: String,
    },
}

#[derive(Debug, Args)]
pub(crate) struct RegisterArgs {
    /// Credential id: path-like, e.g. pg/app or saas/stripe-payouts.
    pub(crate) id: String,
    /// Where values live: local (encrypted in NATS KV) or aws-sm (AWS Secrets Manager, from
    /// the standard AWS environment and credential chain).
    #[arg(long, default_value = "local", value_parser = OneOf::new(&STORES, StoreKind::name, "store", "stores"))]
    pub(crate) store: StoreKind,
    /// aws-sm: the secret's name or ARN; created when it does not exist, adopted when it does.
    /// Default: keyloop/<ID>.
    #[arg(long)]
    pub(crate) secret_id: Option<String>,
    /// The system that accepts the value: none, or postgres (a login role's password; needs
    /// --postgres-dsn / KEYLOOP_POSTGRES_DSN).
    #[arg(long, default_value = "none", value_parser = OneOf::new(&TARGETS, TargetKind::name, "target", "targets"))]
    pub(crate) target: TargetKind,
    /// postgres: the login role keyloop takes over (with --strategy alternating, the base
    /// name of ROLE_a and ROLE_b).
    #[arg(long)]
    pub(crate) role: Option<String>,
    /// postgres: single (one role, its password changed) or alternating (ROLE_a / ROLE_b in
    /// turn; the previous one stays valid during grace).
    #[arg(long, value_parser = OneOf::new(&STRATEGIES, RotationStrategy::name, "strategy", "strategies"))]
    pub(crate) strategy: Option<RotationStrategy>,
    /// Rotate when the current value is this old (e.g. 90d; from 1s to 3650d).
    #[arg(long)]
    pub(crate) max_age: Option<String>,
    /// How long the previous value stays valid after a scheduled rotation (e.g. 1h; from 0s
    /// to 365d, and no longer than --max-age).
    #[arg(long, default_value = "0s")]
    pub(crate) grace: String,
    /// The owning actor (a NATS user): it may show, fetch, rotate, revoke, update and retire
    /// the credential; also the team to page.
    #[arg(long)]
    pub(crate) owner: Option<String>,
    /// An actor allowed to fetch the value (repeatable).
    #[arg(long = "consumer")]
    pub(crate) consumers: Vec<String>,
    /// How much harm a misuse does: low, or high (policies may ask an approval before a
    /// manual action on it; see `keyloop policy default`).
    #[arg(long, default_value = "low", value_parser = OneOf::new(&BLAST_RADII, BlastRadius::name, "blast radius", "blast radii"))]
    pub(crate) blast_radius: BlastRadius,
    /// A label policies may test, `resource.tags.contains("pci")` (repeatable).
    #[arg(long = "tag")]
    pub(crate) tags: Vec<String>,
    /// Register in this process instead of through the control plane (bootstrapping: needs the
    /// master key and the backends' admin credentials here).
    #[arg(long)]
    pub(crate) local: bool,
    /// Revoke every live version when unused for this long (e.g. 30d; from 1s to 3650d).
    #[arg(long)]
    pub(crate) idle_revoke_after: Option<String>,
    /// How generated values are written, now and at every rotation: checksummed (klc_ + 30
    /// base62 + CRC32, found by `keyloop rules` scanners) or hex (kl_ + 64 hex, the original).
    /// Default: checksummed, which both targets accept.
    #[arg(long, value_parser = OneOf::new(&ValueFormat::ALL, ValueFormat::name, "value format", "value formats"))]
    pub(crate) value_format: Option<ValueFormat>,
}

const BLAST_RADII: [BlastRadius; 2] = [BlastRadius::Low, BlastRadius::High];
