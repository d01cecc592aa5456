//! What every handler needs: the bus, the inventory and fingerprint index, and the backends a
//! credential may name. Built once per process and shared by all roles in it.

use crate::claim::{ClaimWatch, claim_fence};
use crate::error::{Error, ErrorKind};
use crate::ops::Cause;
use crate::records::memory::{MemoryDue, MemoryFingerprints, MemoryOutbox, MemoryRecords};
use crate::records::{ApprovalRecords, Due, Fingerprints, MemoryApprovals, Outbox, Records};
use keyloop_backends::{
    LocalStore, MasterKey, NoneTarget, ResilientStore, ResilientTarget, Store, Target,
};
use keyloop_core::event::Command;
use keyloop_core::{StoreKind, TargetKind};
use keyloop_nats::{Bus, Topology};
use std::sync::Arc;

/// How long a claim lasts once its holder stops renewing it (see `claim`). Only other
/// operations wait for it: the dead holder's own operation, redelivered, takes it over at once.
pub const DEFAULT_CLAIM_TTL: std::time::Duration = std::time::Duration::from_secs(15);

/// The stores and targets this process can reach. Set by the binary from its flags and
/// environment; tests may put their own implementations in.
#[derive(Debug, Clone, Default)]
pub struct Backends {
    /// The `local` store; `None` when no master key was given.
    pub local: Option<Arc<dyn Store>>,
    /// The `aws-sm` store; `None` when this process was not given one.
    pub aws_sm: Option<Arc<dyn Store>>,
    /// The `postgres` target; `None` when no admin DSN was given.
    pub postgres: Option<Arc<dyn Target>>,
    /// The `postgres` target again, for JIT leases on scopes with a `postgres_group` (their
    /// role operations are not part of the `Target` trait).
    pub jit_roles: Option<Arc<keyloop_backends::PostgresTarget>>,
    /// Faults to inject into every store and target call (tests and game days only).
    pub faults: Option<Arc<keyloop_backends::Faults>>,
}

impl Backends {
    /// The store of that kind (behind in-process retries, injected faults and the claim fence
    /// of the calling task), or an error that says how to configure it.
    pub fn store(&self, kind: StoreKind) -> Result<Arc<dyn Store>, Error> {
        let inner: Arc<dyn Store> = match kind {
            StoreKind::Local => self.local.clone().ok_or_else(|| {
                Error::msg(
                    ErrorKind::Permanent,
                    "the local store needs a master key: set KEYLOOP_MASTER_KEY or pass --master-key-file",
                )
            }),
            StoreKind::AwsSm => self.aws_sm.clone().ok_or_else(|| {
                Error::msg(
                    ErrorKind::Permanent,
                    "this process has no AWS Secrets Manager store configured (aws-sm)",
                )
            }),
        }?;
        Ok(Arc::new(
            ResilientStore::new(inner, self.faults.clone()).guarded(claim_fence()),
        ))
    }

    /// The target of that kind (behind in-process retries, injected faults and the claim fence
    /// of the calling task), or an error that says how to configure it.
    pub fn target(&self, kind: TargetKind) -> Result<Arc<dyn Target>, Error> {
        let inner: Arc<dyn Target> = match kind {
            TargetKind::None => Ok(Arc::new(NoneTarget) as Arc<dyn Target>),
            TargetKind::Postgres => self.postgres.clone().ok_or_else(|| {
                Error::msg(
                    ErrorKind::Permanent,
                    "the postgres target needs an admin connection: set KEYLOOP_POSTGRES_DSN or pass --postgres-dsn (a role with CREATEROLE and pg_signal_backend)",
                )
            }),
        }?;
        Ok(Arc::new(
            ResilientTarget::new(inner, self.faults.clone()).guarded(claim_fence()),
        ))
    }
}

/// Shared state of the workers in one process.
#[derive(Debug, Clone)]
pub struct WorkerContext {
    /// The NATS connection, for what needs one itself (the consume runtime, request/reply
    /// services); `None` in a context made in memory ([`WorkerContext::in_memory`]).
    pub bus: Option<Bus>,
    /// Names of streams, subjects and buckets.
    pub topology: Topology,
    /// Credentials, leases and bindings.
    pub inventory: Arc<dyn Records>,
    /// Digest → version or lease.
    pub fingerprints: Arc<dyn Fingerprints>,
    /// Due-time index of the sweeper.
    pub due: Arc<dyn Due>,
    /// The audit log and the command queue.
    pub outbox: Arc<dyn Outbox>,
    /// Stores and targets.
    pub backends: Backends,
    /// This process's identity in credential claims.
    pub holder: String,
    /// How long a claim lasts if its holder dies without releasing it.
    pub claim_ttl: std::time::Duration,
    /// Claims of other holders this process has seen, to tell when one stopped being renewed.
    pub claim_watch: Arc<ClaimWatch>,
    /// The revocation budget's windows this process has seen spent (see `budget::Spent`).
    pub budget_spent: Arc<crate::budget::Spent>,
    /// Approvals, revocation budgets and their breakers.
    pub approvals: Arc<dyn ApprovalRecords>,
    /// How long an approval stays open, and the revocation budget.
    pub approval_settings: ApprovalSettings,
}

/// How long an approval stays open, and how many revocations a target takes per window before
/// the storm guard holds the rest for an approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalSettings {
    /// How long a pending approval waits for its approvers.
    pub open_for: std::time::Duration,
    /// The revocation budget; `None`: no storm guard.
    pub budget: Option<RevocationBudget>,
}

/// At most `max` revocations per target per `window` (leak-driven ones counted but never
/// held).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RevocationBudget {
    /// Revocations allowed per window.
    pub max: u32,
    /// The window.
    pub window: std::time::Duration,
}

impl Default for ApprovalSettings {
    fn default() -> Self {
        Self {
            open_for: std::time::Duration::from_secs(15 * 60),
            budget: Some(RevocationBudget {
                max: 100,
                window: std::time::Duration::from_secs(60),
            }),
        }
    }
}

impl WorkerContext {
    /// Opens the buckets (they must exist: `keyloop init`) and the local store when a master
    /// key is given; a key that is not the store's is refused ([`LocalStore::open_checked`]).
    pub async fn open(bus: Bus, master_key: Option<&MasterKey>) -> Result<Self, Error> {
        Self::open_with_previous(bus, master_key, None).await
    }

    /// As [`WorkerContext::open`], while the master key itself is rotated: values open under
    /// `master_key` or `previous` and are sealed under `master_key` (see
    /// `LocalStore::rekey`).
    pub async fn open_with_previous(
        bus: Bus,
        master_key: Option<&MasterKey>,
        previous: Option<&MasterKey>,
    ) -> Result<Self, Error> {
        let inventory = bus.inventory().await?;
        let approvals = inventory.clone();
        let fingerprints = bus.fingerprints().await?;
        let due = bus.due().await?;
        let local = match master_key {
            Some(key) => {
                let kv = bus.kv(&bus.topology.secrets_bucket()).await?;
                let local = LocalStore::open_checked_with(kv, key, previous)
                    .await
                    .map_err(|e| {
                        let kind = if e.is_transient() {
                            ErrorKind::Transient
                        } else {
                            ErrorKind::Permanent
                        };
                        Error::new(kind, "open the local store", e)
                    })?;
                Some(Arc::new(local) as Arc<dyn Store>)
            }
            None => None,
        };
        Ok(Self {
            topology: bus.topology.clone(),
            outbox: Arc::new(bus.clone()),
            bus: Some(bus),
            inventory: Arc::new(inventory),
            fingerprints: Arc::new(fingerprints),
            due: Arc::new(due),
            backends: Backends {
                local,
                ..Backends::default()
            },
            holder: new_holder(),
            claim_ttl: DEFAULT_CLAIM_TTL,
            claim_watch: Arc::default(),
            budget_spent: Arc::default(),
            approvals: Arc::new(approvals),
            approval_settings: ApprovalSettings::default(),
        })
    }

    /// A context whose records and outbox live in memory, with `backends`: the protocols run
    /// as in production, with no server (for unit tests).
    pub fn in_memory(backends: Backends) -> Self {
        Self {
            bus: None,
            topology: Topology::default(),
            inventory: Arc::new(MemoryRecords::default()),
            fingerprints: Arc::new(MemoryFingerprints::default()),
            due: Arc::new(MemoryDue::default()),
            outbox: Arc::new(MemoryOutbox::default()),
            backends,
            holder: new_holder(),
            claim_ttl: DEFAULT_CLAIM_TTL,
            claim_watch: Arc::default(),
            budget_spent: Arc::default(),
            approvals: Arc::new(MemoryApprovals::default()),
            approval_settings: ApprovalSettings::default(),
        }
    }

    /// The same records and backends as another process would have them: its own claim holder
    /// and claim watch (a replica, or a worker restarted after a crash).
    pub fn replica(&self) -> Self {
        Self {
            holder: new_holder(),
            claim_watch: Arc::default(),
            budget_spent: Arc::default(),
            ..self.clone()
        }
    }

    /// The NATS connection, for what cannot run without one.
    pub fn bus(&self) -> Result<&Bus, Error> {
        self.bus.as_ref().ok_or_else(|| {
            Error::msg(
                ErrorKind::Permanent,
                "this worker context has no NATS connection (made in memory)",
            )
        })
    }

    /// Sends `command` with `cause`: from its source, in its chain, by its actor (see
    /// `Command::into_event`).
    pub async fn send_command<C: Command>(&self, cause: &Cause, command: C) -> Result<(), Error> {
        self.outbox
            .send_command(&self.topology, cause, command)
            .await
    }
}

fn new_holder() -> String {
    format!("{}-{}", std::process::id(), uuid::Uuid::now_v7())
}
