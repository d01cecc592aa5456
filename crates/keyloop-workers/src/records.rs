//! What the workers keep and publish besides values: the inventory (credentials, leases,
//! bindings), the fingerprint index, the due-time index, and the audit log and command queue —
//! each behind a small trait, implemented on NATS (the `keyloop-nats` types) for production and
//! in memory ([`memory`]) for unit tests of the protocols, which then run with no server.
//!
//! The traits are object-safe (boxed futures; `update` takes its closure as `&mut dyn FnMut`),
//! so a [`WorkerContext`](crate::WorkerContext) holds `Arc<dyn …>`; the generic conveniences
//! (`update::<T>`, `require`, `send_command::<C>`) are inherent methods on the trait objects.

mod approvals;
pub mod memory;

pub use approvals::{ApprovalRecords, MemoryApprovals};

use crate::error::{Error, ErrorKind};
use futures::future::BoxFuture;
use keyloop_core::event::{Command, LifecycleEvent};
use keyloop_core::{Credential, CredentialId, Lease};
use keyloop_nats::due::DueEntry;
use keyloop_nats::{
    Bus, Change, DueIndex, DueItem, FingerprintIndex, FingerprintRef, Inventory, Topology,
};
use std::fmt;
use time::OffsetDateTime;
use uuid::Uuid;

/// A decision on a record inside a compare-and-set: `true` to write the changed record.
pub type Decide<'a, R> = &'a mut (dyn FnMut(&mut R) -> Result<bool, Error> + Send);

/// Credentials, leases and the bindings of accounts to credentials (see `Inventory`).
pub trait Records: Send + Sync + fmt::Debug {
    /// The credential and its revision, or `None`.
    fn get<'a>(
        &'a self,
        id: &'a CredentialId,
    ) -> BoxFuture<'a, Result<Option<(Credential, u64)>, Error>>;
    /// Stores a new credential; `AlreadyExists` if the id is taken.
    fn create<'a>(&'a self, cred: &'a Credential) -> BoxFuture<'a, Result<u64, Error>>;
    /// Every credential, ordered by id.
    fn list(&self) -> BoxFuture<'_, Result<Vec<Credential>, Error>>;
    /// Removes a credential that took nothing over.
    fn remove<'a>(&'a self, id: &'a CredentialId) -> BoxFuture<'a, Result<(), Error>>;
    /// Compare-and-set on the credential: `decide` may run again after a lost race. Its first
    /// attempt decides on `known` (a record and revision the caller holds) instead of reading,
    /// where the implementation saves a read by it. Returns the record as written or kept.
    fn update_with<'a>(
        &'a self,
        id: &'a CredentialId,
        known: Option<(Credential, u64)>,
        decide: Decide<'a, Credential>,
    ) -> BoxFuture<'a, Result<(Credential, u64), Error>>;
    /// Binds an account or secret to a credential (see `Inventory::bind`).
    fn bind<'a>(
        &'a self,
        key: &'a str,
        credential: &'a CredentialId,
    ) -> BoxFuture<'a, Result<Option<CredentialId>, Error>>;
    /// Releases a binding held by `credential`.
    fn unbind<'a>(
        &'a self,
        key: &'a str,
        credential: &'a CredentialId,
    ) -> BoxFuture<'a, Result<(), Error>>;
    /// The lease, or `None`.
    fn lease(&self, id: Uuid) -> BoxFuture<'_, Result<Option<Lease>, Error>>;
    /// Stores a new lease.
    fn create_lease<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<(), Error>>;
    /// Indexes a lease under its task.
    fn index_lease_under_task<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<(), Error>>;
    /// Every lease issued for `task_id`.
    fn leases_of_task<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, Result<Vec<Uuid>, Error>>;
    /// Compare-and-set on the lease.
    fn update_lease_with<'a>(
        &'a self,
        id: Uuid,
        decide: Decide<'a, Lease>,
    ) -> BoxFuture<'a, Result<(), Error>>;
}

fn not_registered(id: &CredentialId) -> Error {
    Error::msg(
        ErrorKind::NotFound,
        format!("credential {id} is not registered (see `keyloop credential list`)"),
    )
}

/// Keeps a typed decision's value for the caller and tells `update_with` whether to write.
fn keep<T>(change: Change<T>, out: &mut Option<T>) -> bool {
    let (write, value) = match change {
        Change::Write(v) => (true, v),
        Change::Keep(v) => (false, v),
    };
    *out = Some(value);
    write
}

fn decided<T>(out: Option<T>) -> Result<T, Error> {
    out.ok_or_else(|| Error::msg(ErrorKind::Transient, "an update decided nothing"))
}

impl dyn Records {
    /// The credential, or a `NotFound` error that names it.
    pub async fn require(&self, id: &CredentialId) -> Result<(Credential, u64), Error> {
        self.get(id).await?.ok_or_else(|| not_registered(id))
    }

    /// Applies `decide` with compare-and-set (see `Inventory::update`).
    pub async fn update<T: Send>(
        &self,
        id: &CredentialId,
        decide: impl FnMut(&mut Credential) -> Result<Change<T>, Error> + Send,
    ) -> Result<T, Error> {
        self.update_from(id, None, decide)
            .await
            .map(|(value, _)| value)
    }

    /// [`Self::update`] from a record and revision the caller holds (what its last write
    /// returned): no read when nothing changed since. Returns the record as written or kept.
    pub async fn update_from<T: Send>(
        &self,
        id: &CredentialId,
        known: Option<(Credential, u64)>,
        mut decide: impl FnMut(&mut Credential) -> Result<Change<T>, Error> + Send,
    ) -> Result<(T, (Credential, u64)), Error> {
        let mut out = None;
        let mut step = |c: &mut Credential| Ok(keep(decide(c)?, &mut out));
        let record = self.update_with(id, known, &mut step).await?;
        Ok((decided(out)?, record))
    }

    /// Applies `decide` to the lease with compare-and-set.
    pub async fn update_lease<T: Send>(
        &self,
        id: Uuid,
        mut decide: impl FnMut(&mut Lease) -> Result<Change<T>, Error> + Send,
    ) -> Result<T, Error> {
        let mut out = None;
        let mut step = |l: &mut Lease| Ok(keep(decide(l)?, &mut out));
        self.update_lease_with(id, &mut step).await?;
        decided(out)
    }
}

/// A decision as `Inventory::update` takes it. A domain error from `decide` (a busy claim) is
/// not a NATS error: it is kept in `refused` while the NATS update unwinds, and the caller
/// returns it as it was.
fn through_nats<'d, R>(
    decide: Decide<'d, R>,
    refused: &'d mut Option<Error>,
) -> impl FnMut(&mut R) -> Result<Change<()>, keyloop_nats::Error> + 'd {
    move |r| match decide(r) {
        Ok(true) => Ok(Change::Write(())),
        Ok(false) => Ok(Change::Keep(())),
        Err(e) => {
            *refused = Some(e);
            Err(keyloop_nats::Error::msg(
                keyloop_nats::ErrorKind::Permanent,
                "the decision refused the change",
            ))
        }
    }
}

impl Records for Inventory {
    fn get<'a>(
        &'a self,
        id: &'a CredentialId,
    ) -> BoxFuture<'a, Result<Option<(Credential, u64)>, Error>> {
        Box::pin(async move { Inventory::get(self, id).await.map_err(Error::from) })
    }
    fn create<'a>(&'a self, cred: &'a Credential) -> BoxFuture<'a, Result<u64, Error>> {
        Box::pin(async move { Inventory::create(self, cred).await.map_err(Error::from) })
    }
    fn list(&self) -> BoxFuture<'_, Result<Vec<Credential>, Error>> {
        Box::pin(async move { Inventory::list(self).await.map_err(Error::from) })
    }
    fn remove<'a>(&'a self, id: &'a CredentialId) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move { Inventory::remove(self, id).await.map_err(Error::from) })
    }
    fn update_with<'a>(
        &'a self,
        id: &'a CredentialId,
        known: Option<(Credential, u64)>,
        decide: Decide<'a, Credential>,
    ) -> BoxFuture<'a, Result<(Credential, u64), Error>> {
        Box::pin(async move {
            let mut refused = None;
            let result =
                Inventory::update_from(self, id, known, through_nats(decide, &mut refused)).await;
            refused.map_or_else(|| result.map(|((), r)| r).map_err(Error::from), Err)
        })
    }
    fn bind<'a>(
        &'a self,
        key: &'a str,
        credential: &'a CredentialId,
    ) -> BoxFuture<'a, Result<Option<CredentialId>, Error>> {
        Box::pin(async move {
            Inventory::bind(self, key, credential)
                .await
                .map_err(Error::from)
        })
    }
    fn unbind<'a>(
        &'a self,
        key: &'a str,
        credential: &'a CredentialId,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            Inventory::unbind(self, key, credential)
                .await
                .map_err(Error::from)
        })
    }
    fn lease(&self, id: Uuid) -> BoxFuture<'_, Result<Option<Lease>, Error>> {
        Box::pin(async move { Inventory::lease(self, id).await.map_err(Error::from) })
    }
    fn create_lease<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            Inventory::create_lease(self, lease)
                .await
                .map_err(Error::from)
        })
    }
    fn index_lease_under_task<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            Inventory::index_lease_under_task(self, lease)
                .await
                .map_err(Error::from)
        })
    }
    fn leases_of_task<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, Result<Vec<Uuid>, Error>> {
        Box::pin(async move {
            Inventory::leases_of_task(self, task_id)
                .await
                .map_err(Error::from)
        })
    }
    fn update_lease_with<'a>(
        &'a self,
        id: Uuid,
        decide: Decide<'a, Lease>,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let mut refused = None;
            let result =
                Inventory::update_lease(self, id, through_nats(decide, &mut refused)).await;
            refused.map_or_else(|| result.map_err(Error::from), Err)
        })
    }
}

/// Digest → version or lease (see `FingerprintIndex`).
pub trait Fingerprints: Send + Sync + fmt::Debug {
    /// Points each of `keys` at `target`.
    fn put<'a>(
        &'a self,
        keys: &'a [String],
        target: &'a FingerprintRef,
    ) -> BoxFuture<'a, Result<(), Error>>;
    /// The first of `keys` that is indexed.
    fn lookup<'a>(
        &'a self,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<Option<FingerprintRef>, Error>>;
    /// Removes `keys`.
    fn remove<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Result<(), Error>>;
}

impl Fingerprints for FingerprintIndex {
    fn put<'a>(
        &'a self,
        keys: &'a [String],
        target: &'a FingerprintRef,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            FingerprintIndex::put(self, keys, target)
                .await
                .map_err(Error::from)
        })
    }
    fn lookup<'a>(
        &'a self,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<Option<FingerprintRef>, Error>> {
        Box::pin(async move {
            FingerprintIndex::lookup(self, keys)
                .await
                .map_err(Error::from)
        })
    }
    fn remove<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            FingerprintIndex::remove(self, keys)
                .await
                .map_err(Error::from)
        })
    }
}

/// The sweeper's due-time index (see `DueIndex`).
pub trait Due: Send + Sync + fmt::Debug {
    /// Files `item` as due at `due_at`; returns its key.
    fn schedule(
        &self,
        item: DueItem,
        due_at: OffsetDateTime,
        now: OffsetDateTime,
    ) -> BoxFuture<'_, Result<String, Error>>;
    /// Every entry of one minute bucket.
    fn scan_minute(&self, minute: i64) -> BoxFuture<'_, Result<Vec<(String, DueEntry)>, Error>>;
    /// Removes an entry if it is still `handled`.
    fn remove<'a>(
        &'a self,
        key: &'a str,
        handled: &'a DueEntry,
    ) -> BoxFuture<'a, Result<(), Error>>;
    /// The sweep cursor and its revision.
    fn cursor(&self) -> BoxFuture<'_, Result<Option<(i64, u64)>, Error>>;
    /// Moves the cursor forward.
    fn advance_cursor(
        &self,
        minute: i64,
        previous: Option<(i64, u64)>,
    ) -> BoxFuture<'_, Result<(), Error>>;
}

impl Due for DueIndex {
    fn schedule(
        &self,
        item: DueItem,
        due_at: OffsetDateTime,
        now: OffsetDateTime,
    ) -> BoxFuture<'_, Result<String, Error>> {
        Box::pin(async move {
            DueIndex::schedule(self, item, due_at, now)
                .await
                .map_err(Error::from)
        })
    }
    fn scan_minute(&self, minute: i64) -> BoxFuture<'_, Result<Vec<(String, DueEntry)>, Error>> {
        Box::pin(async move {
            DueIndex::scan_minute(self, minute)
                .await
                .map_err(Error::from)
        })
    }
    fn remove<'a>(
        &'a self,
        key: &'a str,
        handled: &'a DueEntry,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            DueIndex::remove(self, key, handled)
                .await
                .map_err(Error::from)
        })
    }
    fn cursor(&self) -> BoxFuture<'_, Result<Option<(i64, u64)>, Error>> {
        Box::pin(async move { DueIndex::cursor(self).await.map_err(Error::from) })
    }
    fn advance_cursor(
        &self,
        minute: i64,
        previous: Option<(i64, u64)>,
    ) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            DueIndex::advance_cursor(self, minute, previous)
                .await
                .map_err(Error::from)
        })
    }
}

/// Where workers publish: the audit log (lifecycle events) and the command queue, both
/// deduplicated by message id.
pub trait Outbox: Send + Sync + fmt::Debug {
    /// Publishes a lifecycle event (its id is its dedup id), durably: inside a handler, stored
    /// before the handler's message is acked (`keyloop_nats::pipeline`), else before this returns.
    fn publish_lifecycle<'a>(
        &'a self,
        event: &'a LifecycleEvent,
    ) -> BoxFuture<'a, Result<(), Error>>;
    /// Publishes an encoded command on `subject` with `id` as its dedup id, durably (as
    /// [`Self::publish_lifecycle`]).
    fn publish_command<'a>(
        &'a self,
        subject: &'a str,
        id: &'a str,
        payload: Vec<u8>,
    ) -> BoxFuture<'a, Result<(), Error>>;
}

impl dyn Outbox {
    /// Sends `command` with `cause` (see `Bus::send_command`: the same event, id and subject).
    pub async fn send_command<C: Command>(
        &self,
        topology: &Topology,
        cause: &crate::ops::Cause,
        command: C,
    ) -> Result<(), Error> {
        let event = command
            .into_event(
                &cause.source,
                cause.correlation.clone(),
                cause.causation.clone(),
            )
            .by(cause.actor.clone())
            .in_batch(cause.batch.clone());
        let payload = serde_json::to_vec(&event).map_err(|e| {
            Error::new(
                ErrorKind::Permanent,
                format!("cannot encode command {}", event.id),
                e,
            )
        })?;
        self.publish_command(&topology.command::<C>(), &event.id, payload)
            .await
    }
}

impl Outbox for Bus {
    fn publish_lifecycle<'a>(
        &'a self,
        event: &'a LifecycleEvent,
    ) -> BoxFuture<'a, Result<(), Error>> {
        // Pipelined: inside a handler, awaited with its other publishes before the ack.
        Box::pin(async move {
            Bus::publish_lifecycle_pipelined(self, event)
                .await
                .map_err(Error::from)
        })
    }
    fn publish_command<'a>(
        &'a self,
        subject: &'a str,
        id: &'a str,
        payload: Vec<u8>,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            self.publish_pipelined(subject, id, async_nats::HeaderMap::new(), payload)
                .await
                .map_err(Error::from)
        })
    }
}
