//! Command-line grammar. Global flags are accepted before or after the subcommand.

use crate::cmd::rules::Tool;
use clap::builder::{PossibleValue, TypedValueParser};
use clap::{Args, Parser, Subcommand};
use keyloop_core::ingest::Choice;
use keyloop_core::{RotationStrategy, Secret, StoreKind, TargetKind};
use keyloop_nats::Role;
use std::ffi::OsStr;
use std::path::PathBuf;

mod credential;
mod dlq;
mod incident;
mod inventory;
mod nats;
mod replay;

pub(crate) use credential::{CredentialCommand, RegisterArgs};
pub(crate) use dlq::{DlqCommand, DlqPick};
pub(crate) use incident::IncidentArgs;
pub(crate) use inventory::InventoryCommand;
pub(crate) use nats::NatsArgs;
pub(crate) use replay::{ReplayArgs, ReplayStream};

/// keyloop — leaked means dead within milliseconds. Rotates, revokes and issues
/// non-human-identity credentials in one control loop on NATS JetStream.
#[derive(Debug, Parser)]
#[command(name = "keyloop", version)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: Global,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Flags every subcommand accepts.
#[derive(Debug, Args, Clone)]
pub(crate) struct Global {
    #[command(flatten)]
    pub(crate) conn: NatsArgs,
    /// Machine-readable output (JSON) wherever the output is data.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// Subject, stream and bucket prefix.
    #[arg(long, global = true, env = "KEYLOOP_PREFIX", default_value = "keyloop")]
    pub(crate) prefix: String,
    /// File holding the local store's master key (64 hex characters). Default: the
    /// KEYLOOP_MASTER_KEY variable, else `<data-dir>/master.key` when it exists.
    #[arg(long, global = true, env = "KEYLOOP_MASTER_KEY_FILE")]
    pub(crate) master_key_file: Option<PathBuf>,
    /// Where `keyloop up` keeps its nats-server store and dev master key.
    /// Default: $XDG_DATA_HOME/keyloop or ~/.local/share/keyloop.
    #[arg(long, global = true, env = "KEYLOOP_DATA_DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Admin connection of the postgres target (postgres://USER:PASSWORD@HOST:PORT/DB or
    /// key=value pairs); the role needs CREATEROLE and pg_signal_backend. Prefer the variable:
    /// a flag shows in the process list.
    #[arg(
        long,
        global = true,
        env = "KEYLOOP_POSTGRES_DSN",
        hide_env_values = true,
        value_parser = parse_secret
    )]
    pub(crate) postgres_dsn: Option<Secret>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run every worker in one process; starts a child nats-server when none answers at --nats.
    Up(RunArgs),
    /// Run only the named workers (run several processes to add replicas).
    Worker(WorkerArgs),
    /// Create or upgrade streams, consumers and KV buckets (idempotent).
    Init {
        /// Replicas of every stream and bucket (3 on a JetStream cluster).
        #[arg(long, default_value_t = 1)]
        replicas: usize,
    },
    /// Register, list, show and reveal credentials.
    #[command(subcommand)]
    Credential(CredentialCommand),
    /// Publish a detector's findings as leak events (values are hashed here, never published).
    Ingest(IngestArgs),
    /// Rotate a credential now.
    Rotate(RotateArgs),
    /// Revoke a credential's live versions (or one version).
    Revoke(RevokeArgs),
    /// Print lifecycle and inbound events in order.
    Replay(ReplayArgs),
    /// An incident report from the event log: detection, the matched credential, time to
    /// revoke from the first detection, rotation, every later use or try of the leaked value,
    /// the rest of the report, JIT leases (markdown; `--json`; `--html FILE`).
    Incident(IncidentArgs),
    /// Rebuild the inventory from the lifecycle stream and compare it with the live one.
    #[command(subcommand)]
    Inventory(InventoryCommand),
    /// Run recorded leaks through today's fingerprint index and inventory and say what would
    /// happen now (`--dry-run`: no effect).
    Redrive(crate::cmd::redrive::RedriveArgs),
    /// Read the dead-letter queue: what could not be processed, and why.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// The local store itself: rotate its master key (`store rekey`).
    #[command(subcommand)]
    Store(crate::cmd::store::StoreCommand),
    /// A self-contained tour: own nats-server, a leak, its revocation and rotation.
    Demo,
    /// Start and complete tasks: JIT credentials per task.
    #[command(subcommand)]
    Task(TaskCommand),
    /// Check a token (read from stdin): exit 0 when valid, 2 when not.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Publish a schedule tick now (the sweeper acts on what is due).
    Tick,
    /// Print rules that make a secret scanner find keyloop's values (`--json`: with usage).
    Rules {
        /// The scanner.
        #[arg(value_parser = OneOf::new(&Tool::ALL, Tool::name, "scanner", "scanners"))]
        tool: Tool,
    },
    /// Print the default policy or the policy schema, or check a policy file (`--policy`).
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// List, show, approve and deny requests the policy holds for approval.
    #[command(subcommand)]
    Approvals(ApprovalsCommand),
    /// Write the JSON Schemas of every event into DIR.
    Schemas {
        /// Output directory.
        dir: PathBuf,
    },
}

#[derive(Debug, Args)]
pub(crate) struct WorkerArgs {
    /// The roles to run.
    #[arg(required = true, value_parser = OneOf::new(&Role::ALL, Role::name, "worker role", "roles"))]
    pub(crate) roles: Vec<Role>,
    #[command(flatten)]
    pub(crate) run: RunArgs,
}

/// How workers run (`up` and `worker`).
#[derive(Debug, Args, Clone)]
pub(crate) struct RunArgs {
    /// Messages processed at once per role in this process.
    #[arg(long, default_value_t = 64)]
    pub(crate) concurrency: usize,
    /// The scheduler's window: one tick per window (from 1s to 1h).
    #[arg(long, default_value = "1m", env = "KEYLOOP_TICK_INTERVAL")]
    pub(crate) tick_interval: String,
    /// JIT policy file (JSON): {"scopes": {"read": {"tier": "auto", "max_ttl_secs": 3600}}};
    /// default: read (auto, 1h), write (notify, 1h), admin (approve, 15m), open to every NATS
    /// user allowed to publish jit.issue. To require a proved workload identity, trust its
    /// issuer ("issuers": [{"issuer": "https://token.actions.githubusercontent.com",
    /// "audiences": ["keyloop"], "jwks_file": "github-jwks.json"}], the JWKS path relative to
    /// the policy file; optional "token_leeway_secs", default 30, at most 300) and list who may
    /// ask for a scope ("identities": [{"issuer": "…", "subject": "repo:acme/api:*"}], a
    /// subject exact or a prefix ending in `*`).
    #[arg(long, env = "KEYLOOP_JIT_POLICY")]
    pub(crate) jit_policy: Option<PathBuf>,
    /// Policy file (Cedar) deciding every control-plane request and JIT issue: who may do
    /// what, and whether it is done at once, announced, or only after an approval (annotations
    /// @id, @outcome, @approvers, @group). Validated at start against the schema (`keyloop
    /// policy schema`); an error stops the workers with its line. Default: `keyloop policy
    /// default` (admins do everything, owners run their credentials, consumers read them, JIT
    /// scopes per their tier).
    #[arg(long, env = "KEYLOOP_POLICY")]
    pub(crate) policy: Option<PathBuf>,
    /// Serve /metrics (Prometheus), /healthz and /readyz on this address (e.g. 127.0.0.1:9464).
    #[arg(long, env = "KEYLOOP_METRICS_ADDR")]
    pub(crate) metrics_addr: Option<std::net::SocketAddr>,
    /// Inject backend faults, for tests and game days only: `transient=0.3`,
    /// `permanent=apply,invalidate` (store ops: put_new get promote destroy; target ops: apply
    /// test invalidate).
    #[arg(long, env = "KEYLOOP_INJECT_FAULTS", hide = true)]
    pub(crate) inject_faults: Option<String>,
    /// api role: the actors (NATS users) that may do everything through the control plane,
    /// comma-separated.
    #[arg(long, env = "KEYLOOP_API_ADMINS", value_delimiter = ',', default_values_t = keyloop_workers::DEFAULT_API_ADMINS.map(str::to_owned))]
    pub(crate) api_admins: Vec<String>,
    /// A group of actors the policy can name (`@group("sre")`, `principal in
    /// Keyloop::Group::"sre"`): `NAME=actor,actor`; repeat for more groups. `admins` is
    /// --api-admins.
    #[arg(
        long = "policy-group",
        env = "KEYLOOP_POLICY_GROUPS",
        value_delimiter = ';'
    )]
    pub(crate) policy_groups: Vec<String>,
    /// How long a request held for approval waits for its approvers (api, jit-issuer,
    /// revoker).
    #[arg(long, env = "KEYLOOP_APPROVAL_TTL", default_value = "15m")]
    pub(crate) approval_ttl: String,
    /// The storm guard: at most N revocations per target per window (`100/1m`), beyond
    /// which idle, scheduled and manual revocations of that target are held as one approval
    /// (leak-driven ones always go ahead); `off` to disable.
    #[arg(long, env = "KEYLOOP_REVOCATION_BUDGET", default_value = "100/1m")]
    pub(crate) revocation_budget: String,
    /// notifier role: post notify-tier outcomes, approvals and revocation budgets to this
    /// webhook (Slack-compatible JSON). The URL is a secret: only its host is ever logged.
    #[arg(long, env = "KEYLOOP_NOTIFY_WEBHOOK", hide_env_values = true)]
    pub(crate) notify_webhook: Option<String>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ApprovalsCommand {
    /// Pending approvals you asked for or may decide.
    List {
        /// Also the denied, used and expired ones.
        #[arg(long)]
        all: bool,
    },
    /// One approval: what it holds, who asked and why, until when, the grants so far.
    Show {
        /// The approval id.
        id: String,
    },
    /// Approve (never your own request). The last grant needed runs a held rotation,
    /// revocation, retirement or revocation batch; a JIT lease goes to its requester when it
    /// asks again.
    Approve {
        /// The approval id.
        id: String,
    },
    /// Deny, saying why: the request is dropped and the requester reads the reason.
    Deny {
        /// The approval id.
        id: String,
        /// Why (required).
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum PolicyCommand {
    /// Print the default policy (Cedar): what the workers decide without --policy.
    Default,
    /// Print the Cedar schema every policy file is validated against.
    Schema,
    /// Check a policy file as the workers do at start: exit 0 when valid, else every problem
    /// with its line.
    Check {
        /// The policy file (Cedar).
        file: PathBuf,
        /// The admins, as the workers' --api-admins (the `admins` group).
        #[arg(long, value_delimiter = ',', default_values_t = keyloop_workers::DEFAULT_API_ADMINS.map(str::to_owned))]
        api_admins: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum TaskCommand {
    /// Issue a JIT credential for a task: the token goes to stdout, once; the lease to stderr.
    Start {
        /// Task id.
        task: String,
        /// The agent that will use it: a label recorded with the lease (not proved).
        #[arg(long)]
        agent: Option<String>,
        /// A workload identity token (JWT) proving who asks: a Kubernetes projected
        /// service-account token, a GitHub Actions OIDC token, a SPIFFE JWT-SVID. Read at each
        /// call (a projected token is refreshed in place); `-` reads it from stdin. Needed by
        /// scopes that list `identities`.
        #[arg(long, env = "KEYLOOP_IDENTITY_TOKEN_FILE")]
        identity_token_file: Option<PathBuf>,
        /// Scope (read, write, admin by default).
        #[arg(long)]
        scope: String,
        /// Lifetime (e.g. 15m; from 1s to 365d); at most the scope's maximum.
        #[arg(long)]
        ttl: String,
        /// When the policy holds the request for an approval, wait for the decision (up to
        /// --wait-timeout) and print the lease once it is granted. Without it, a held request
        /// exits 3 with the approval id: run the same command again once it is granted.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits for approvers.
        #[arg(long, default_value = "15m")]
        wait_timeout: String,
    },
    /// Mark a task completed: every lease issued for it is revoked.
    Complete {
        /// Task id.
        task: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Whether the JIT token on stdin works now (exit 0) or not (exit 2).
    Verify,
}

/// What `keyloop ingest` exits with, for its help.
const INGEST_EXIT_CODES: &str = "Exit codes:
  0    every finding was published (and with --wait, every outcome came); an empty report
       (no findings) is a clean scan in every format
  1    error: the report is not of FORMAT (or, with auto, of any format), cannot be read,
       or the leaks could not be published
  2    usage error (unknown format or flag)
  3    some findings were rejected (reasons on stderr); the others were published
  4    --wait: some outcome did not arrive within --timeout
  5    --fail-on-unmatched: some finding matched no credential keyloop manages
  141  stdout was closed by its reader
When several apply, the first in this list wins (3, then 4, then 5).";

#[derive(Debug, Args)]
#[command(
    after_help = INGEST_EXIT_CODES,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub(crate) struct IngestArgs {
    /// The tool that wrote the report, or `auto` to tell it from the report's first bytes.
    #[arg(required = true, value_parser = OneOf::new(&Choice::ALL, Choice::name, "format", "formats"))]
    pub(crate) format: Option<Choice>,
    /// Report file; `-` or nothing reads stdin.
    pub(crate) file: Option<PathBuf>,
    /// Wait for each finding's outcome (matched, inert, unmatched) and print it.
    #[arg(long)]
    pub(crate) wait: bool,
    /// How long --wait waits for the outcomes, after the last leak is published (from 1s to
    /// 24h).
    #[arg(long, default_value = "30s")]
    pub(crate) timeout: String,
    /// Exit 5 when a finding matched no credential keyloop manages (implies --wait).
    #[arg(long)]
    pub(crate) fail_on_unmatched: bool,
    #[command(subcommand)]
    pub(crate) serve: Option<crate::cmd::ingest_serve::IngestCommand>,
}

#[derive(Debug, Args)]
pub(crate) struct RotateArgs {
    /// Credential id.
    pub(crate) id: String,
    /// Return once the command is queued instead of waiting for `rotated`.
    #[arg(long)]
    pub(crate) no_wait: bool,
    /// How long to wait for the outcome.
    #[arg(long, default_value = "30s")]
    pub(crate) timeout: String,
}

#[derive(Debug, Args)]
pub(crate) struct RevokeArgs {
    /// Credential id.
    pub(crate) id: String,
    /// Why (recorded in the audit log).
    #[arg(long)]
    pub(crate) reason: String,
    /// Revoke only this version (see `credential show`); default: every live version.
    #[arg(long)]
    pub(crate) version: Option<uuid::Uuid>,
    /// Issue a fresh current value once revoked.
    #[arg(long)]
    pub(crate) rotate: bool,
    /// Return once the command is queued instead of waiting for `revoked`.
    #[arg(long)]
    pub(crate) no_wait: bool,
    /// How long to wait for the outcome.
    #[arg(long, default_value = "30s")]
    pub(crate) timeout: String,
}

/// Every store, in the order `--help` lists them.
pub(super) const STORES: [StoreKind; 2] = [StoreKind::Local, StoreKind::AwsSm];
/// Every target, in the order `--help` lists them.
pub(super) const TARGETS: [TargetKind; 2] = [TargetKind::None, TargetKind::Postgres];
/// Every rotation strategy, in the order `--help` lists them.
pub(super) const STRATEGIES: [RotationStrategy; 2] =
    [RotationStrategy::Single, RotationStrategy::Alternating];

/// Parses a value that is one of a fixed set of names (a store, target, strategy, worker role
/// or report format) into its domain type: `--help` lists the names as possible values, and an
/// unknown one is refused by clap, before anything runs, with keyloop's words (`unknown worker
/// role `janitor`; roles: leak-responder, …`). The names are the domain types' own `name()`,
/// the ones they print and serialize, so the two cannot drift.
///
/// Not a `#[derive(ValueEnum)]`: that derive would have to sit on the domain types, which stay
/// free of clap, or on mirror enums repeating every name; and its error cannot say which kind
/// of value was unknown, which the scripts and tests that read these errors rely on.
#[derive(Clone)]
pub(crate) struct OneOf<T: 'static> {
    choices: &'static [T],
    name: fn(T) -> &'static str,
    /// What one value is, in the error: `worker role`.
    noun: &'static str,
    /// What the list is, in the error: `roles`.
    plural: &'static str,
}

impl<T: Copy> OneOf<T> {
    fn new(
        choices: &'static [T],
        name: fn(T) -> &'static str,
        noun: &'static str,
        plural: &'static str,
    ) -> Self {
        Self {
            choices,
            name,
            noun,
            plural,
        }
    }

    fn find(&self, text: &str) -> Result<T, String> {
        let name = self.name;
        self.choices
            .iter()
            .copied()
            .find(|&c| name(c) == text)
            .ok_or_else(|| {
                let names: Vec<_> = self.choices.iter().map(|&c| name(c)).collect();
                format!(
                    "unknown {} `{text}`; {}: {}",
                    self.noun,
                    self.plural,
                    names.join(", ")
                )
            })
    }
}

impl<T: Copy + Send + Sync + 'static> TypedValueParser for OneOf<T> {
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<T, clap::Error> {
        // A plain function parser is how clap words a refused value (`invalid value 'x' for
        // '--store <STORE>': …`, with usage and `--help` hint); delegating keeps that shape.
        let this = self.clone();
        (move |text: &str| this.find(text)).parse_ref(cmd, arg, value)
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(
            self.choices
                .iter()
                .map(|&c| PossibleValue::new((self.name)(c))),
        ))
    }
}

/// Holds a flag's value as a [`Secret`], so printing the parsed flags never shows it.
fn parse_secret(text: &str) -> Result<Secret, std::convert::Infallible> {
    Ok(Secret::from(text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyloop_core::ingest::Format;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("keyloop").chain(args.iter().copied()))
    }

    fn refusal(args: &[&str]) -> String {
        parse(args).expect_err("refused").to_string()
    }

    #[test]
    fn register_flags_parse_into_their_domain_kinds() {
        let cli = parse(&[
            "credential",
            "register",
            "pg/app",
            "--store",
            "aws-sm",
            "--target",
            "postgres",
            "--strategy",
            "alternating",
        ])
        .unwrap();
        let Command::Credential(CredentialCommand::Register(args)) = cli.command else {
            panic!("not a registration: {cli:?}");
        };
        assert_eq!(args.store, StoreKind::AwsSm);
        assert_eq!(args.target, TargetKind::Postgres);
        assert_eq!(args.strategy, Some(RotationStrategy::Alternating));
    }

    #[test]
    fn register_defaults_are_the_local_store_and_no_target() {
        let cli = parse(&["credential", "register", "svc/token"]).unwrap();
        let Command::Credential(CredentialCommand::Register(args)) = cli.command else {
            panic!("not a registration: {cli:?}");
        };
        assert_eq!(args.store, StoreKind::Local);
        assert_eq!(args.target, TargetKind::None);
        assert_eq!(args.strategy, None);
    }

    #[test]
    fn unknown_names_are_refused_with_what_was_unknown_and_every_accepted_name() {
        let cases: [(&[&str], &str); 5] = [
            (
                &["credential", "register", "a/b", "--store", "s3"],
                "unknown store `s3`; stores: local, aws-sm",
            ),
            (
                &["credential", "register", "a/b", "--target", "mysql"],
                "unknown target `mysql`; targets: none, postgres",
            ),
            (
                &["credential", "register", "a/b", "--strategy", "twice"],
                "unknown strategy `twice`; strategies: single, alternating",
            ),
            (
                &["worker", "janitor"],
                "unknown worker role `janitor`; roles: leak-responder, rotator, revoker, \
                 scheduler, sweeper, jit-issuer",
            ),
            (
                &["ingest", "nessus"],
                "unknown format `nessus`; formats: auto, gitleaks, betterleaks, trufflehog, \
                 kingfisher, secretlint, sarif, detect-secrets, github, generic",
            ),
        ];
        for (args, expected) in cases {
            let message = refusal(args);
            assert!(message.contains(expected), "{args:?}: {message}");
        }
    }

    #[test]
    fn every_role_and_format_is_accepted_by_its_own_name() {
        for role in Role::ALL {
            let cli = parse(&["worker", role.name()]).unwrap();
            let Command::Worker(args) = cli.command else {
                panic!("not a worker: {cli:?}");
            };
            assert_eq!(args.roles, [role]);
        }
        for format in Choice::ALL {
            let cli = parse(&["ingest", format.name()]).unwrap();
            let Command::Ingest(args) = cli.command else {
                panic!("not an ingest: {cli:?}");
            };
            assert_eq!(args.format, Some(format));
        }
        assert_eq!(Choice::ALL.len(), Format::ALL.len() + 1);
    }

    #[test]
    fn help_lists_the_accepted_names() {
        let help = refusal(&["worker", "--help"]);
        assert!(
            help.contains(
                "[possible values: leak-responder, rotator, revoker, scheduler, sweeper, jit-issuer, api, notifier]"
            ),
            "{help}"
        );
    }

    #[test]
    fn ingest_help_lists_every_exit_code_and_auto() {
        let help = refusal(&["ingest", "--help"]);
        for code in [
            "  0  ", "  1  ", "  2  ", "  3  ", "  4  ", "  5  ", "  141  ",
        ] {
            assert!(help.contains(code), "{code:?} in {help}");
        }
        assert!(help.contains("--fail-on-unmatched"), "{help}");
        assert!(help.contains("auto, gitleaks, betterleaks"), "{help}");
    }
}
