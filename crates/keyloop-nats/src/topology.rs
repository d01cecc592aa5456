//! The NATS layout: stream, subject, consumer and bucket names under a configurable prefix, and
//! `init`, which creates or upgrades all of it. `init` is idempotent: running it on a live
//! system changes only what differs from the layout here.

use async_nats::jetstream::{self, consumer, kv, stream};
use keyloop_core::event::{Command, RevokeCommand, RevokeLeaseCommand, RotateCommand};
use std::time::Duration;

/// How long inbound events and lifecycle events are kept (the audit horizon).
pub const AUDIT_RETENTION: Duration = Duration::from_secs(400 * 24 * 3600);
/// Dedup window of the inbound stream: the same finding ingested again within it is dropped.
pub const EVENTS_DEDUP_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// Dedup window of the lifecycle stream: longer than any message's redelivery span
/// ([`GIVE_UP_AFTER`] deliveries, each at most [`ACK_WAIT`] or the longest nak delay apart).
/// The DLQ stream has the same window, so a DLQ copy written again (its stream acknowledgement
/// or the original's termination was lost) is stored once.
pub const LIFECYCLE_DEDUP_WINDOW: Duration = Duration::from_secs(2 * 3600);
/// How long a message may go without an ack or a progress signal before JetStream redelivers
/// it. Workers send progress every third of it while they work, so it bounds how long a crashed
/// worker's or a lost leader's messages wait, not how long an operation may take.
pub const ACK_WAIT: Duration = Duration::from_secs(10);
/// Deliveries a handler gets before the runtime gives a message up (then it goes to the DLQ).
/// High enough that workers crashing while holding a message (each crash costs it a delivery)
/// never exhaust it in practice; a handler's own transient failures back off exponentially
/// between them.
pub const GIVE_UP_AFTER: u64 = 20;
/// `max_deliver` of every consumer: unlimited (`-1`). The runtime gives up itself, at
/// [`GIVE_UP_AFTER`], and only terminates a message once its DLQ copy is stored. JetStream must
/// never give up first: a message it stops delivering is left in its stream with nobody to
/// dead-letter it (its max-deliveries advisory is core NATS, best effort), so a DLQ write that
/// failed on the last delivery, or a worker that stopped while the DLQ was down, would lose it.
/// With deliveries to spare, such a message comes back and the runtime dead-letters it without
/// running the handler again.
pub const MAX_DELIVER: i64 = -1;

/// The lifecycle kinds the notifier reads: `issued` (it posts those whose outcome is
/// `notify`), every approval and revocation-budget kind.
pub const NOTIFIED_KINDS: [&str; 7] = [
    "issued",
    "approval_requested",
    "approval_granted",
    "approval_denied",
    "approval_expired",
    "budget_tripped",
    "budget_released",
];

/// A worker role. Every role but the scheduler has one durable consumer shared by all its
/// replicas; the JIT issuer also serves request/reply subjects in a queue group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Matches leaks to versions and asks for revocation.
    LeakResponder,
    /// Runs the rotation protocol.
    Rotator,
    /// Makes versions and leases invalid and destroys their values.
    Revoker,
    /// Publishes one schedule tick per window.
    Scheduler,
    /// On each tick, turns due rotations, retirements, expiries and idle credentials into
    /// commands; records uses.
    Sweeper,
    /// Issues JIT leases, verifies tokens, and revokes a task's leases when it completes.
    JitIssuer,
    /// The control plane: registers, shows, rotates, revokes, retires and fetches credentials
    /// on behalf of proved actors (request/reply on `<prefix>.api.<actor>.<verb>`).
    Api,
    /// Posts notifications (notify-tier outcomes, approvals, revocation budgets) to an
    /// outgoing webhook.
    Notifier,
}

impl Role {
    /// Every role, in pipeline order.
    pub const ALL: [Role; 8] = [
        Self::LeakResponder,
        Self::Rotator,
        Self::Revoker,
        Self::Scheduler,
        Self::Sweeper,
        Self::JitIssuer,
        Self::Api,
        Self::Notifier,
    ];

    /// The roles that consume a stream (all but the scheduler).
    pub const CONSUMING: [Role; 6] = [
        Self::LeakResponder,
        Self::Rotator,
        Self::Revoker,
        Self::Sweeper,
        Self::JitIssuer,
        Self::Notifier,
    ];

    /// The role's name on the command line and as its durable consumer's name.
    pub const fn name(self) -> &'static str {
        match self {
            Self::LeakResponder => "leak-responder",
            Self::Rotator => "rotator",
            Self::Revoker => "revoker",
            Self::Scheduler => "scheduler",
            Self::Sweeper => "sweeper",
            Self::JitIssuer => "jit-issuer",
            Self::Api => "api",
            Self::Notifier => "notifier",
        }
    }

    /// Parses a role name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.name() == name)
    }
}

/// Names of everything keyloop keeps in NATS, under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    prefix: String,
    replicas: usize,
}

impl Default for Topology {
    fn default() -> Self {
        Self::new("keyloop")
    }
}

impl Topology {
    /// A layout under `prefix` (default `keyloop`): subjects `<prefix>.…`, streams
    /// `<PREFIX>_…`, buckets `<prefix>_…`.
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            replicas: 1,
        }
    }

    /// The same layout with streams and buckets replicated on `replicas` servers of a
    /// JetStream cluster (3 for production clusters; 1 on a single server).
    pub fn with_replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas.max(1);
        self
    }

    /// Stream and bucket replicas.
    pub fn replicas(&self) -> usize {
        self.replicas
    }

    /// The subject prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn stream_name(&self, suffix: &str) -> String {
        format!(
            "{}_{suffix}",
            self.prefix.to_ascii_uppercase().replace(['.', '-'], "_")
        )
    }

    fn bucket_name(&self, suffix: &str) -> String {
        format!("{}_{suffix}", self.prefix.replace(['.', '-'], "_"))
    }

    /// Inbound facts: leaks, tasks, schedule ticks, uses.
    pub fn events_stream(&self) -> String {
        self.stream_name("EVENTS")
    }
    /// Internal work items.
    pub fn commands_stream(&self) -> String {
        self.stream_name("COMMANDS")
    }
    /// The audit log.
    pub fn lifecycle_stream(&self) -> String {
        self.stream_name("LIFECYCLE")
    }
    /// What could not be processed.
    pub fn dlq_stream(&self) -> String {
        self.stream_name("DLQ")
    }

    /// Credentials and their versions.
    pub fn inventory_bucket(&self) -> String {
        self.bucket_name("inventory")
    }
    /// Digest → credential/version.
    pub fn fingerprint_bucket(&self) -> String {
        self.bucket_name("fingerprints")
    }
    /// The `local` store's encrypted values.
    pub fn secrets_bucket(&self) -> String {
        self.bucket_name("secrets")
    }
    /// Due-time index of the sweeper: `<minute>.<kind>.<item>` → due item.
    pub fn due_bucket(&self) -> String {
        self.bucket_name("due")
    }

    /// `<prefix>.leak.detected`.
    pub fn leak_detected(&self) -> String {
        format!("{}.leak.detected", self.prefix)
    }
    /// `<prefix>.cmd.revoke`.
    pub fn cmd_revoke(&self) -> String {
        self.command::<RevokeCommand>()
    }
    /// `<prefix>.cmd.rotate`.
    pub fn cmd_rotate(&self) -> String {
        self.command::<RotateCommand>()
    }
    /// `<prefix>.cmd.lease.revoke`.
    pub fn cmd_revoke_lease(&self) -> String {
        self.command::<RevokeLeaseCommand>()
    }
    /// The name of the NATS service `<prefix>-<what>`, in the characters a service name allows
    /// (letters, digits, `-`, `_`; anything else becomes `-`).
    pub fn service_name(&self, what: &str) -> String {
        let prefix: String = self
            .prefix
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        format!("{prefix}-{what}")
    }

    /// `<prefix>.api.<actor>.<verb>`: where `actor` asks the control plane for `verb`.
    pub fn api(&self, actor: &str, verb: &str) -> String {
        format!("{}.api.{actor}.{verb}", self.prefix)
    }

    /// `<prefix>.api.*.*`: every request to the control plane.
    pub fn api_requests(&self) -> String {
        format!("{}.api.*.*", self.prefix)
    }

    /// The actor and verb tokens of a request subject of [`Topology::api_requests`].
    pub fn api_parts<'s>(&self, subject: &'s str) -> Option<(&'s str, &'s str)> {
        let rest = subject.strip_prefix(&self.prefix)?.strip_prefix(".api.")?;
        let (actor, verb) = rest.split_once('.')?;
        (!actor.is_empty() && !verb.contains('.')).then_some((actor, verb))
    }

    /// `<prefix>.cmd.<C::SUBJECT>`: where commands of kind `C` go.
    pub fn command<C: Command>(&self) -> String {
        format!("{}.cmd.{}", self.prefix, C::SUBJECT)
    }
    /// `<prefix>.schedule.tick`.
    pub fn schedule_tick(&self) -> String {
        format!("{}.schedule.tick", self.prefix)
    }
    /// `<prefix>.task.completed`.
    pub fn task_completed(&self) -> String {
        format!("{}.task.completed", self.prefix)
    }
    /// `<prefix>.credential.used`.
    pub fn credential_used(&self) -> String {
        format!("{}.credential.used", self.prefix)
    }
    /// `<prefix>.jit.issue` (request/reply, queue group `jit-issuer`; never stored).
    pub fn jit_issue(&self) -> String {
        format!("{}.jit.issue", self.prefix)
    }
    /// `<prefix>.token.verify` (request/reply, queue group `jit-issuer`; never stored).
    pub fn token_verify(&self) -> String {
        format!("{}.token.verify", self.prefix)
    }
    /// `<prefix>.lifecycle.<kind>.<credential>`.
    pub fn lifecycle(&self, kind: &str, credential: &str) -> String {
        format!("{}.lifecycle.{kind}.{credential}", self.prefix)
    }
    /// `<prefix>.lifecycle.>`.
    pub fn lifecycle_all(&self) -> String {
        format!("{}.lifecycle.>", self.prefix)
    }
    /// `<prefix>.dlq.<role>`.
    pub fn dlq(&self, role: &str) -> String {
        format!("{}.dlq.{role}", self.prefix)
    }

    /// The stream a role consumes and its filter subjects (none for the scheduler and the api,
    /// which consume nothing).
    pub fn consumer_of(&self, role: Role) -> (String, Vec<String>) {
        match role {
            Role::LeakResponder => (self.events_stream(), vec![self.leak_detected()]),
            Role::Rotator => (self.commands_stream(), vec![self.cmd_rotate()]),
            Role::Revoker => (
                self.commands_stream(),
                vec![self.cmd_revoke(), self.cmd_revoke_lease()],
            ),
            Role::Sweeper => (
                self.events_stream(),
                vec![self.schedule_tick(), self.credential_used()],
            ),
            Role::JitIssuer => (self.events_stream(), vec![self.task_completed()]),
            Role::Notifier => (
                self.lifecycle_stream(),
                NOTIFIED_KINDS
                    .iter()
                    .map(|kind| format!("{}.lifecycle.{kind}.>", self.prefix))
                    .collect(),
            ),
            Role::Scheduler | Role::Api => (self.events_stream(), Vec::new()),
        }
    }

    fn streams(&self) -> Vec<stream::Config> {
        let p = &self.prefix;
        vec![
            stream::Config {
                name: self.events_stream(),
                description: Some(
                    "keyloop inbound facts: leaks, tasks, schedule ticks, uses".into(),
                ),
                subjects: vec![
                    format!("{p}.leak.>"),
                    format!("{p}.task.>"),
                    format!("{p}.schedule.>"),
                    format!("{p}.credential.used"),
                ],
                retention: stream::RetentionPolicy::Limits,
                max_age: AUDIT_RETENTION,
                duplicate_window: EVENTS_DEDUP_WINDOW,
                storage: stream::StorageType::File,
                num_replicas: self.replicas,
                ..Default::default()
            },
            stream::Config {
                name: self.commands_stream(),
                description: Some("keyloop work items".into()),
                subjects: vec![format!("{p}.cmd.>")],
                retention: stream::RetentionPolicy::WorkQueue,
                duplicate_window: LIFECYCLE_DEDUP_WINDOW,
                storage: stream::StorageType::File,
                num_replicas: self.replicas,
                ..Default::default()
            },
            stream::Config {
                name: self.lifecycle_stream(),
                description: Some("keyloop audit log: every state change, replayable".into()),
                subjects: vec![self.lifecycle_all()],
                retention: stream::RetentionPolicy::Limits,
                max_age: AUDIT_RETENTION,
                duplicate_window: LIFECYCLE_DEDUP_WINDOW,
                storage: stream::StorageType::File,
                num_replicas: self.replicas,
                ..Default::default()
            },
            stream::Config {
                name: self.dlq_stream(),
                description: Some(
                    "keyloop messages that could not be processed, with the reason".into(),
                ),
                subjects: vec![format!("{p}.dlq.>")],
                retention: stream::RetentionPolicy::Limits,
                max_age: AUDIT_RETENTION,
                duplicate_window: LIFECYCLE_DEDUP_WINDOW,
                storage: stream::StorageType::File,
                num_replicas: self.replicas,
                ..Default::default()
            },
        ]
    }

    fn buckets(&self) -> Vec<kv::Config> {
        vec![
            kv::Config {
                bucket: self.inventory_bucket(),
                description: "keyloop inventory: credentials and versions (compare-and-set)".into(),
                history: 5,
                storage: stream::StorageType::File,
                num_replicas: self.replicas,
                ..Default::default()
            },
            kv::Config {
                bucket: self.fingerprint_bucket(),
                description: "keyloop fingerprint index: digest -> credential/version".into(),
                history: 1,
                storage: stream::StorageType::File,
                num_replicas: self.replicas,
                ..Default::default()
            },
            kv::Config {
                bucket: self.due_bucket(),
                description: "keyloop due-time index: <minute>.<kind>.<item> -> due item".into(),
                history: 1,
                storage: stream::StorageType::File,
                num_replicas: self.replicas,
                ..Default::default()
            },
            kv::Config {
                bucket: self.secrets_bucket(),
                description: "keyloop local store: encrypted values".into(),
                history: 1,
                storage: stream::StorageType::File,
                num_replicas: self.replicas,
                ..Default::default()
            },
        ]
    }

    /// The durable consumer of a role.
    pub fn consumer_config(&self, role: Role) -> consumer::pull::Config {
        let (_, mut filters) = self.consumer_of(role);
        let (filter_subject, filter_subjects) = if filters.len() == 1 {
            (filters.remove(0), Vec::new())
        } else {
            (String::new(), filters)
        };
        consumer::pull::Config {
            durable_name: Some(role.name().to_owned()),
            description: Some(format!("keyloop {} (shared by all replicas)", role.name())),
            filter_subject,
            filter_subjects,
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: ACK_WAIT,
            max_deliver: MAX_DELIVER,
            max_ack_pending: 10_000,
            // The notifier announces what happens from now on: a first deployment into an
            // installation with history must not post a year of old approvals again.
            deliver_policy: if role == Role::Notifier {
                consumer::DeliverPolicy::New
            } else {
                consumer::DeliverPolicy::All
            },
            ..Default::default()
        }
    }

    /// Creates or upgrades streams, KV buckets and consumers. Idempotent.
    pub async fn init(&self, js: &jetstream::Context) -> Result<InitReport, InitError> {
        let mut report = InitReport::default();
        for cfg in self.streams() {
            let name = cfg.name.clone();
            js.create_or_update_stream(cfg)
                .await
                .map_err(|e| InitError::new(format!("stream {name}"), e))?;
            report.streams.push(name);
        }
        for cfg in self.buckets() {
            let name = cfg.bucket.clone();
            js.create_or_update_key_value(cfg)
                .await
                .map_err(|e| InitError::new(format!("KV bucket {name}"), e))?;
            report.buckets.push(name);
        }
        for role in Role::CONSUMING {
            let (stream, _) = self.consumer_of(role);
            let cfg = self.consumer_config(role);
            let stream_handle = js
                .get_stream(&stream)
                .await
                .map_err(|e| InitError::new(format!("stream {stream}"), e))?;
            stream_handle
                .create_consumer(cfg)
                .await
                .map_err(|e| InitError::new(format!("consumer {} on {stream}", role.name()), e))?;
            report.consumers.push(format!("{stream}/{}", role.name()));
        }
        Ok(report)
    }
}

/// What `init` created or checked.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct InitReport {
    /// Streams, by name.
    pub streams: Vec<String>,
    /// KV buckets, by name.
    pub buckets: Vec<String>,
    /// Consumers, as `STREAM/name`.
    pub consumers: Vec<String>,
}

/// `init` could not create or upgrade one piece.
#[derive(Debug, thiserror::Error)]
#[error("could not create or upgrade {what}: {source}")]
pub struct InitError {
    what: String,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl InitError {
    fn new(what: String, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self {
            what,
            source: Box::new(source),
        }
    }
}
