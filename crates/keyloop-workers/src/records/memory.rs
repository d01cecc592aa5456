//! The records in memory, for unit tests of the worker protocols with no server: the same
//! compare-and-set on a revision as the KV buckets (a decision runs against a copy and is
//! written only if the revision did not move), the same dedup by message id as the streams.
//! Model: apalis' in-memory backend. Not for production: nothing here is durable.

use super::{Decide, Due, Fingerprints, Outbox, Records};
use crate::error::{Error, ErrorKind};
use futures::future::BoxFuture;
use keyloop_core::{Credential, CredentialId, Lease, LifecycleEvent};
use keyloop_nats::due::{DueEntry, minute_of};
use keyloop_nats::{DueItem, FingerprintRef};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use time::OffsetDateTime;
use uuid::Uuid;

/// Credentials, leases and bindings in memory.
#[derive(Debug, Default)]
pub struct MemoryRecords {
    credentials: Mutex<HashMap<CredentialId, (Credential, u64)>>,
    bindings: Mutex<HashMap<String, CredentialId>>,
    leases: Mutex<HashMap<Uuid, (Lease, u64)>>,
    tasks: Mutex<HashMap<String, Vec<Uuid>>>,
    revision: Mutex<u64>,
}

impl MemoryRecords {
    fn next_revision(&self) -> u64 {
        let mut r = self.revision.lock().expect("revision lock");
        *r += 1;
        *r
    }
}

/// One compare-and-set against a map entry: decide on a copy, write it if the revision is
/// still the one read.
fn cas<K: std::hash::Hash + Eq + Clone, R: Clone>(
    map: &Mutex<HashMap<K, (R, u64)>>,
    key: &K,
    revision: impl Fn() -> u64,
    missing: impl Fn() -> Error,
    decide: Decide<'_, R>,
) -> Result<(R, u64), Error> {
    for _ in 0..32 {
        let (mut copy, read) = map
            .lock()
            .expect("records lock")
            .get(key)
            .cloned()
            .ok_or_else(&missing)?;
        let before = copy.clone();
        if !decide(&mut copy)? {
            return Ok((before, read));
        }
        let mut map = map.lock().expect("records lock");
        match map.get_mut(key) {
            Some(entry) if entry.1 == read => {
                *entry = (copy, revision());
                return Ok(entry.clone());
            }
            Some(_) => continue,
            None => return Err(missing()),
        }
    }
    Err(Error::msg(
        ErrorKind::Transient,
        "compare-and-set lost 32 races in a row",
    ))
}

impl Records for MemoryRecords {
    fn get<'a>(
        &'a self,
        id: &'a CredentialId,
    ) -> BoxFuture<'a, Result<Option<(Credential, u64)>, Error>> {
        let found = self.credentials.lock().expect("lock").get(id).cloned();
        Box::pin(async move { Ok(found) })
    }

    fn create<'a>(&'a self, cred: &'a Credential) -> BoxFuture<'a, Result<u64, Error>> {
        Box::pin(async move {
            let revision = self.next_revision();
            let mut map = self.credentials.lock().expect("lock");
            if map.contains_key(&cred.id) {
                return Err(Error::msg(
                    ErrorKind::AlreadyExists,
                    format!("credential {} is already registered", cred.id),
                ));
            }
            map.insert(cred.id.clone(), (cred.clone(), revision));
            Ok(revision)
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<Credential>, Error>> {
        let mut all: Vec<_> = self
            .credentials
            .lock()
            .expect("lock")
            .values()
            .map(|(c, _)| c.clone())
            .collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        Box::pin(async move { Ok(all) })
    }

    fn remove<'a>(&'a self, id: &'a CredentialId) -> BoxFuture<'a, Result<(), Error>> {
        self.credentials.lock().expect("lock").remove(id);
        Box::pin(async { Ok(()) })
    }

    fn update_with<'a>(
        &'a self,
        id: &'a CredentialId,
        // Reads here cost nothing: every attempt reads.
        _known: Option<(Credential, u64)>,
        decide: Decide<'a, Credential>,
    ) -> BoxFuture<'a, Result<(Credential, u64), Error>> {
        let missing = || {
            Error::msg(
                ErrorKind::NotFound,
                format!("credential {id} is not registered (see `keyloop credential list`)"),
            )
        };
        let result = cas(
            &self.credentials,
            id,
            || self.next_revision(),
            missing,
            decide,
        );
        Box::pin(async move { result })
    }

    fn bind<'a>(
        &'a self,
        key: &'a str,
        credential: &'a CredentialId,
    ) -> BoxFuture<'a, Result<Option<CredentialId>, Error>> {
        Box::pin(async move {
            let registered =
                |id: &CredentialId| self.credentials.lock().expect("lock").contains_key(id);
            let mut bindings = self.bindings.lock().expect("lock");
            match bindings.get(key) {
                Some(holder) if holder != credential && registered(holder) => {
                    Ok(Some(holder.clone()))
                }
                _ => {
                    bindings.insert(key.to_owned(), credential.clone());
                    Ok(None)
                }
            }
        })
    }

    fn unbind<'a>(
        &'a self,
        key: &'a str,
        credential: &'a CredentialId,
    ) -> BoxFuture<'a, Result<(), Error>> {
        let mut bindings = self.bindings.lock().expect("lock");
        if bindings.get(key) == Some(credential) {
            bindings.remove(key);
        }
        Box::pin(async { Ok(()) })
    }

    fn lease(&self, id: Uuid) -> BoxFuture<'_, Result<Option<Lease>, Error>> {
        let found = self
            .leases
            .lock()
            .expect("lock")
            .get(&id)
            .map(|(l, _)| l.clone());
        Box::pin(async move { Ok(found) })
    }

    fn create_lease<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let revision = self.next_revision();
            let mut map = self.leases.lock().expect("lock");
            if map.contains_key(&lease.id) {
                return Err(Error::msg(
                    ErrorKind::AlreadyExists,
                    format!("lease {} is already registered", lease.id),
                ));
            }
            map.insert(lease.id, (lease.clone(), revision));
            Ok(())
        })
    }

    fn index_lease_under_task<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<(), Error>> {
        let mut tasks = self.tasks.lock().expect("lock");
        let ids = tasks.entry(lease.task_id.clone()).or_default();
        if !ids.contains(&lease.id) {
            ids.push(lease.id);
        }
        Box::pin(async { Ok(()) })
    }

    fn leases_of_task<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, Result<Vec<Uuid>, Error>> {
        let ids = self
            .tasks
            .lock()
            .expect("lock")
            .get(task_id)
            .cloned()
            .unwrap_or_default();
        Box::pin(async move { Ok(ids) })
    }

    fn update_lease_with<'a>(
        &'a self,
        id: Uuid,
        decide: Decide<'a, Lease>,
    ) -> BoxFuture<'a, Result<(), Error>> {
        let missing = || Error::msg(ErrorKind::NotFound, format!("lease {id} does not exist"));
        let result = cas(&self.leases, &id, || self.next_revision(), missing, decide).map(|_| ());
        Box::pin(async move { result })
    }
}

/// The fingerprint index in memory.
#[derive(Debug, Default)]
pub struct MemoryFingerprints {
    entries: Mutex<HashMap<String, FingerprintRef>>,
}

impl Fingerprints for MemoryFingerprints {
    fn put<'a>(
        &'a self,
        keys: &'a [String],
        target: &'a FingerprintRef,
    ) -> BoxFuture<'a, Result<(), Error>> {
        let mut entries = self.entries.lock().expect("lock");
        for key in keys {
            entries.insert(key.clone(), target.clone());
        }
        Box::pin(async { Ok(()) })
    }

    fn lookup<'a>(
        &'a self,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<Option<FingerprintRef>, Error>> {
        let entries = self.entries.lock().expect("lock");
        let found = keys.iter().find_map(|k| entries.get(k).cloned());
        Box::pin(async move { Ok(found) })
    }

    fn remove<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Result<(), Error>> {
        let mut entries = self.entries.lock().expect("lock");
        for key in keys {
            entries.remove(key);
        }
        Box::pin(async { Ok(()) })
    }
}

/// The due-time index in memory: the same keys as the KV bucket (`<minute>.<kind>.<item>`).
#[derive(Debug, Default)]
pub struct MemoryDue {
    entries: Mutex<BTreeMap<String, DueEntry>>,
    cursor: Mutex<Option<(i64, u64)>>,
}

impl MemoryDue {
    /// Every entry, for tests to look at.
    pub fn entries(&self) -> Vec<(String, DueEntry)> {
        self.entries
            .lock()
            .expect("lock")
            .iter()
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect()
    }
}

impl Due for MemoryDue {
    fn schedule(
        &self,
        item: DueItem,
        due_at: OffsetDateTime,
        now: OffsetDateTime,
    ) -> BoxFuture<'_, Result<String, Error>> {
        let minute = minute_of(due_at).max(minute_of(now));
        let key = format!("{minute}.{}", item.key_suffix());
        self.entries
            .lock()
            .expect("lock")
            .insert(key.clone(), DueEntry { item, due_at });
        Box::pin(async move { Ok(key) })
    }

    fn scan_minute(&self, minute: i64) -> BoxFuture<'_, Result<Vec<(String, DueEntry)>, Error>> {
        let prefix = format!("{minute}.");
        let found = self
            .entries
            .lock()
            .expect("lock")
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect();
        Box::pin(async move { Ok(found) })
    }

    fn remove<'a>(
        &'a self,
        key: &'a str,
        handled: &'a DueEntry,
    ) -> BoxFuture<'a, Result<(), Error>> {
        let mut entries = self.entries.lock().expect("lock");
        if entries.get(key) == Some(handled) {
            entries.remove(key);
        }
        Box::pin(async { Ok(()) })
    }

    fn cursor(&self) -> BoxFuture<'_, Result<Option<(i64, u64)>, Error>> {
        let c = *self.cursor.lock().expect("lock");
        Box::pin(async move { Ok(c) })
    }

    fn advance_cursor(
        &self,
        minute: i64,
        previous: Option<(i64, u64)>,
    ) -> BoxFuture<'_, Result<(), Error>> {
        let mut c = self.cursor.lock().expect("lock");
        if *c == previous && previous.is_none_or(|(m, _)| m < minute) {
            *c = Some((minute, previous.map_or(1, |(_, r)| r + 1)));
        }
        Box::pin(async { Ok(()) })
    }
}

/// What was published, in order, deduplicated by message id like the streams.
#[derive(Debug, Default)]
pub struct MemoryOutbox {
    seen: Mutex<HashSet<String>>,
    lifecycle: Mutex<Vec<LifecycleEvent>>,
    commands: Mutex<Vec<(String, Vec<u8>)>>,
}

impl MemoryOutbox {
    /// The lifecycle events published so far (each id once).
    pub fn lifecycle(&self) -> Vec<LifecycleEvent> {
        self.lifecycle.lock().expect("lock").clone()
    }

    /// The commands published so far (each id once): subject and CloudEvent JSON.
    pub fn commands(&self) -> Vec<(String, Vec<u8>)> {
        self.commands.lock().expect("lock").clone()
    }

    fn first_time(&self, id: &str) -> bool {
        self.seen.lock().expect("lock").insert(id.to_owned())
    }
}

impl Outbox for MemoryOutbox {
    fn publish_lifecycle<'a>(
        &'a self,
        event: &'a LifecycleEvent,
    ) -> BoxFuture<'a, Result<(), Error>> {
        if self.first_time(&event.id) {
            self.lifecycle.lock().expect("lock").push(event.clone());
        }
        Box::pin(async { Ok(()) })
    }

    fn publish_command<'a>(
        &'a self,
        subject: &'a str,
        id: &'a str,
        payload: Vec<u8>,
    ) -> BoxFuture<'a, Result<(), Error>> {
        if self.first_time(id) {
            self.commands
                .lock()
                .expect("lock")
                .push((subject.to_owned(), payload));
        }
        Box::pin(async { Ok(()) })
    }
}
