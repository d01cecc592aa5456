//! The inventory (credentials, leases, the task → lease index) and the fingerprint index, all
//! JetStream KV buckets. Every change to a record is a compare-and-set on the entry's revision,
//! so replicas that race on one record serialize: the loser re-reads and re-decides, after a
//! short jittered pause (`cas_backoff`, backon).

use crate::error::{Error, ErrorKind};
use async_nats::jetstream::{self, kv};
use backon::{ExponentialBuilder, Retryable, RetryableWithContext};
use futures::{StreamExt, TryStreamExt};
use keyloop_core::{Credential, CredentialId, Lease};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use uuid::Uuid;

/// How many times a compare-and-set is tried in all before giving up after lost races
/// (transiently: the message will be redelivered).
pub(crate) const CAS_ATTEMPTS: usize = 32;

/// The pause before trying a lost compare-and-set again: a few milliseconds, jittered so
/// racing replicas fall out of step; [`CAS_ATTEMPTS`] tries in all, about half a second at most.
pub(crate) fn cas_backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(1))
        .with_max_delay(Duration::from_millis(10))
        .with_max_times(CAS_ATTEMPTS - 1)
        .with_jitter()
}

/// Why one compare-and-set attempt did not finish.
#[derive(Debug)]
pub(crate) enum Attempt {
    /// Another writer changed the entry between our read and our write: read and decide again.
    Raced,
    /// Anything else: returned as it is.
    Failed(Error),
}

impl From<Error> for Attempt {
    fn from(e: Error) -> Self {
        Self::Failed(e)
    }
}

/// The outcome of retried attempts as the caller's error:
/// `exhausted` when every one of the [`CAS_ATTEMPTS`] lost its race.
pub(crate) fn settle<T>(
    outcome: Result<T, Attempt>,
    exhausted: impl FnOnce() -> Error,
) -> Result<T, Error> {
    outcome.map_err(|e| match e {
        Attempt::Raced => exhausted(),
        Attempt::Failed(e) => e,
    })
}

fn credential_key(id: &CredentialId) -> String {
    format!("cred.{id}")
}

fn lease_key(id: Uuid) -> String {
    format!("lease.{id}")
}

/// Task ids become one KV key token: anything outside `[A-Za-z0-9_-]` is hex-escaped as `=XX`.
fn task_token(task_id: &str) -> String {
    let mut out = String::with_capacity(task_id.len());
    for b in task_id.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    out
}

/// What an update closure decided.
#[derive(Debug)]
pub enum Change<T> {
    /// Write the changed record, then return `T`.
    Write(T),
    /// Nothing to write (already in the wanted state); return `T`.
    Keep(T),
}

pub(crate) async fn read<T: DeserializeOwned>(
    kv: &kv::Store,
    key: &str,
) -> Result<Option<(T, u64)>, Error> {
    let entry = kv
        .entry(key.to_owned())
        .await
        .map_err(|e| Error::new(ErrorKind::Transient, format!("read {}/{key}", kv.name), e))?;
    match entry {
        Some(e) if e.operation == kv::Operation::Put => {
            let value = serde_json::from_slice(&e.value).map_err(|err| {
                Error::new(
                    ErrorKind::Permanent,
                    format!("entry {}/{key} is corrupt", kv.name),
                    err,
                )
            })?;
            Ok(Some((value, e.revision)))
        }
        _ => Ok(None),
    }
}

pub(crate) async fn create<T: Serialize>(
    kv: &kv::Store,
    key: &str,
    value: &T,
    what: &str,
) -> Result<u64, Error> {
    let bytes = serde_json::to_vec(value)
        .map_err(|e| Error::new(ErrorKind::Permanent, format!("encode {what}"), e))?;
    kv.create(key, bytes.into()).await.map_err(|e| {
        if e.kind() == kv::CreateErrorKind::AlreadyExists {
            Error::msg(
                ErrorKind::AlreadyExists,
                format!("{what} is already registered"),
            )
        } else {
            Error::new(ErrorKind::Transient, format!("create {}/{key}", kv.name), e)
        }
    })
}

pub(crate) async fn update<R, T>(
    kv: &kv::Store,
    key: &str,
    missing: impl Fn() -> Error,
    decide: impl FnMut(&mut R) -> Result<Change<T>, Error>,
) -> Result<T, Error>
where
    R: Serialize + DeserializeOwned + Clone,
{
    update_from(kv, key, missing, None, decide)
        .await
        .map(|(value, _)| value)
}

/// [`update`], whose first attempt decides on `known` (a record and its revision the caller
/// already holds: what its last write returned) instead of reading it: a compare-and-set
/// without a read when nothing changed since, and a read and a new decision when something
/// did. Returns the decision's value with the record as written (or kept) and its revision.
pub(crate) async fn update_from<R, T>(
    kv: &kv::Store,
    key: &str,
    missing: impl Fn() -> Error,
    known: Option<(R, u64)>,
    decide: impl FnMut(&mut R) -> Result<Change<T>, Error>,
) -> Result<(T, (R, u64)), Error>
where
    R: Serialize + DeserializeOwned + Clone,
{
    let missing = &missing;
    // `decide` is FnMut: backon hands it from one attempt to the next as their context, with
    // the known record, which only the first attempt uses.
    let (_, outcome) = (|(mut decide, known)| async move {
        let outcome = update_once(kv, key, missing, known, &mut decide).await;
        ((decide, None), outcome)
    })
    .retry(cas_backoff())
    .context((decide, known))
    .when(|e| matches!(e, Attempt::Raced))
    .await;
    settle(outcome, || lost_races(kv, key))
}

/// The error of a compare-and-set on `key` that lost every one of its [`CAS_ATTEMPTS`].
pub(crate) fn lost_races(kv: &kv::Store, key: &str) -> Error {
    Error::msg(
        ErrorKind::Transient,
        format!(
            "{}/{key}: compare-and-set lost {CAS_ATTEMPTS} races in a row",
            kv.name
        ),
    )
}

/// One read (unless `known` gives the record), decision and compare-and-set write of
/// [`update_from`].
async fn update_once<R, T>(
    kv: &kv::Store,
    key: &str,
    missing: &impl Fn() -> Error,
    known: Option<(R, u64)>,
    decide: &mut impl FnMut(&mut R) -> Result<Change<T>, Error>,
) -> Result<(T, (R, u64)), Attempt>
where
    R: Serialize + DeserializeOwned + Clone,
{
    let (mut record, revision) = match known {
        Some(known) => known,
        None => read::<R>(kv, key).await?.ok_or_else(missing)?,
    };
    // What is kept is the record as it was: a decision that changed it and then kept it must
    // not leave its change in what the caller holds.
    let before = record.clone();
    let value = match decide(&mut record)? {
        Change::Keep(v) => return Ok((v, (before, revision))),
        Change::Write(v) => v,
    };
    let bytes = serde_json::to_vec(&record)
        .map_err(|e| Error::new(ErrorKind::Permanent, format!("encode {key}"), e))?;
    match kv.update(key, bytes.into(), revision).await {
        Ok(written) => Ok((value, (record, written))),
        Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Err(Attempt::Raced),
        Err(e) => {
            Err(Error::new(ErrorKind::Transient, format!("update {}/{key}", kv.name), e).into())
        }
    }
}

/// The current entries of `kv` whose keys match `filter` (NATS wildcards allowed), read with an
/// ordered consumer on the bucket's stream (last value per key). The cost grows with the number
/// of matching keys, not with the size of the bucket.
pub async fn scan(kv: &kv::Store, filter: &str) -> Result<Vec<(String, Vec<u8>)>, Error> {
    use jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
    let what = || format!("scan {}/{filter}", kv.name);
    let mut consumer = kv
        .stream
        .create_consumer(OrderedConfig {
            filter_subject: format!("{}{filter}", kv.prefix),
            deliver_policy: DeliverPolicy::LastPerSubject,
            ..Default::default()
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Transient, what(), e))?;
    let pending = consumer
        .info()
        .await
        .map_err(|e| Error::new(ErrorKind::Transient, what(), e))?
        .num_pending;
    let mut out = Vec::with_capacity(pending as usize);
    if pending == 0 {
        return Ok(out);
    }
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| Error::new(ErrorKind::Transient, what(), e))?;
    while let Some(msg) = messages.next().await {
        let msg = msg.map_err(|e| Error::new(ErrorKind::Transient, what(), e))?;
        let left = msg.info().map(|i| i.pending).unwrap_or(0);
        let deleted = msg
            .headers
            .as_ref()
            .and_then(|h| h.get("KV-Operation"))
            .is_some_and(|op| op.as_str() == "DEL" || op.as_str() == "PURGE");
        if !deleted {
            let key = msg
                .subject
                .as_str()
                .strip_prefix(kv.prefix.as_str())
                .unwrap_or("")
                .to_owned();
            out.push((key, msg.payload.to_vec()));
        }
        if left == 0 {
            break;
        }
    }
    Ok(out)
}

/// Credentials and leases, one KV entry each.
#[derive(Clone, Debug)]
pub struct Inventory {
    pub(crate) kv: kv::Store,
}

impl Inventory {
    pub(crate) fn new(kv: kv::Store) -> Self {
        Self { kv }
    }

    /// The credential and its entry revision, or `None` if it is not registered.
    pub async fn get(&self, id: &CredentialId) -> Result<Option<(Credential, u64)>, Error> {
        read(&self.kv, &credential_key(id)).await
    }

    /// The credential, or a `NotFound` error that names it.
    pub async fn require(&self, id: &CredentialId) -> Result<(Credential, u64), Error> {
        self.get(id).await?.ok_or_else(|| not_registered(id))
    }

    /// Stores a new credential; `AlreadyExists` if the id is taken.
    pub async fn create(&self, cred: &Credential) -> Result<u64, Error> {
        create(
            &self.kv,
            &credential_key(&cred.id),
            cred,
            &format!("credential {}", cred.id),
        )
        .await
    }

    /// Applies `decide` to the stored credential with compare-and-set, re-reading and
    /// re-deciding after a lost race. `decide` must be a pure function of the credential.
    pub async fn update<T>(
        &self,
        id: &CredentialId,
        decide: impl FnMut(&mut Credential) -> Result<Change<T>, Error>,
    ) -> Result<T, Error> {
        update(&self.kv, &credential_key(id), || not_registered(id), decide).await
    }

    /// [`Self::update`] from a record and revision the caller holds (see [`update_from`]):
    /// no read unless the record changed since. Returns the record as written or kept.
    pub async fn update_from<T>(
        &self,
        id: &CredentialId,
        known: Option<(Credential, u64)>,
        decide: impl FnMut(&mut Credential) -> Result<Change<T>, Error>,
    ) -> Result<(T, (Credential, u64)), Error> {
        let missing = || not_registered(id);
        update_from(&self.kv, &credential_key(id), missing, known, decide).await
    }

    /// Removes a credential's record: only for a registration that took nothing over (its
    /// target untouched), so no history is lost.
    pub async fn remove(&self, id: &CredentialId) -> Result<(), Error> {
        self.kv
            .delete(credential_key(id))
            .await
            .map_err(|e| Error::new(ErrorKind::Transient, format!("remove credential {id}"), e))
    }

    /// Binds the account or secret named by `key` (see `binding_key`) to `credential`, so no
    /// two credentials ever manage the same one. `Ok(None)`: bound to it now (or already);
    /// `Ok(Some(other))`: `other`, a registered credential, holds it. A binding left by a
    /// registration that died before recording its credential is taken over. Bind after the
    /// credential's record exists, so a concurrent registration never mistakes a binding for
    /// such a leftover.
    pub async fn bind(
        &self,
        key: &str,
        credential: &CredentialId,
    ) -> Result<Option<CredentialId>, Error> {
        let outcome = (|| self.bind_once(key, credential))
            .retry(cas_backoff())
            .when(|e| matches!(e, Attempt::Raced))
            .await;
        settle(outcome, || {
            Error::msg(
                ErrorKind::Transient,
                format!("binding {key} keeps changing under concurrent registrations; retry"),
            )
        })
    }

    /// One attempt of [`Inventory::bind`]: create the binding, or read it and take it over.
    async fn bind_once(
        &self,
        key: &str,
        credential: &CredentialId,
    ) -> Result<Option<CredentialId>, Attempt> {
        match create(&self.kv, key, credential, &format!("binding {key}")).await {
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e.into()),
        }
        // Released between our create and this read: create it again.
        let Some((holder, revision)) = read::<CredentialId>(&self.kv, key).await? else {
            return Err(Attempt::Raced);
        };
        if &holder == credential {
            return Ok(None);
        }
        if self.get(&holder).await?.is_some() {
            return Ok(Some(holder));
        }
        let bytes = serde_json::to_vec(credential)
            .map_err(|e| Error::new(ErrorKind::Permanent, format!("encode {key}"), e))?;
        match self.kv.update(key, bytes.into(), revision).await {
            Ok(_) => Ok(None),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Err(Attempt::Raced),
            Err(e) => {
                Err(Error::new(ErrorKind::Transient, format!("take over binding {key}"), e).into())
            }
        }
    }

    /// Releases a binding if `credential` holds it.
    pub async fn unbind(&self, key: &str, credential: &CredentialId) -> Result<(), Error> {
        if let Some((holder, revision)) = read::<CredentialId>(&self.kv, key).await?
            && &holder == credential
        {
            self.kv
                .delete_expect_revision(key, Some(revision))
                .await
                .map_err(|e| Error::new(ErrorKind::Transient, format!("release {key}"), e))?;
        }
        Ok(())
    }

    /// Every registered credential, ordered by id.
    pub async fn list(&self) -> Result<Vec<Credential>, Error> {
        let keys: Vec<String> = self
            .kv
            .keys()
            .await
            .map_err(|e| Error::new(ErrorKind::Transient, "list inventory keys", e))?
            .try_collect()
            .await
            .map_err(|e| Error::new(ErrorKind::Transient, "list inventory keys", e))?;
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let Some(id) = key.strip_prefix("cred.").and_then(|s| s.parse().ok()) else {
                continue;
            };
            if let Some((cred, _)) = self.get(&id).await? {
                out.push(cred);
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// The lease, or `None`.
    pub async fn lease(&self, id: Uuid) -> Result<Option<Lease>, Error> {
        Ok(read(&self.kv, &lease_key(id)).await?.map(|(l, _)| l))
    }

    /// Stores a new lease (see [`Inventory::index_lease_under_task`] for its task index).
    pub async fn create_lease(&self, lease: &Lease) -> Result<(), Error> {
        create(
            &self.kv,
            &lease_key(lease.id),
            lease,
            &format!("lease {}", lease.id),
        )
        .await
        .map(|_| ())
    }

    /// Indexes a recorded lease under its task (see [`Inventory::leases_of_task`]).
    pub async fn index_lease_under_task(&self, lease: &Lease) -> Result<(), Error> {
        let key = format!("task.{}.{}", task_token(&lease.task_id), lease.id);
        self.kv
            .put(&key, bytes::Bytes::new())
            .await
            .map(|_| ())
            .map_err(|e| {
                Error::new(
                    ErrorKind::Transient,
                    format!("index lease {} under its task", lease.id),
                    e,
                )
            })
    }

    /// Applies `decide` to the stored lease with compare-and-set.
    pub async fn update_lease<T>(
        &self,
        id: Uuid,
        decide: impl FnMut(&mut Lease) -> Result<Change<T>, Error>,
    ) -> Result<T, Error> {
        let missing = || Error::msg(ErrorKind::NotFound, format!("lease {id} does not exist"));
        update(&self.kv, &lease_key(id), missing, decide).await
    }

    /// Ids of every lease issued for `task_id` (a scan of that task's index keys only).
    pub async fn leases_of_task(&self, task_id: &str) -> Result<Vec<Uuid>, Error> {
        let prefix = format!("task.{}.", task_token(task_id));
        Ok(scan(&self.kv, &format!("{prefix}*"))
            .await?
            .into_iter()
            .filter_map(|(key, _)| key.strip_prefix(&prefix).and_then(|id| id.parse().ok()))
            .collect())
    }
}

fn not_registered(id: &CredentialId) -> Error {
    Error::msg(
        ErrorKind::NotFound,
        format!("credential {id} is not registered (see `keyloop credential list`)"),
    )
}

/// Where a fingerprint points: a version of a credential, or a JIT lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FingerprintRef {
    /// A managed credential's version.
    Version {
        /// The credential.
        credential: CredentialId,
        /// The version whose value has this digest.
        version: Uuid,
    },
    /// A JIT lease's token.
    Lease {
        /// The lease.
        lease: Uuid,
    },
}

/// Digest → credential/version or lease, for matching leaks and verifying tokens without
/// storing values.
#[derive(Clone, Debug)]
pub struct FingerprintIndex {
    kv: kv::Store,
}

impl FingerprintIndex {
    pub(crate) fn new(kv: kv::Store) -> Self {
        Self { kv }
    }

    /// Records that each of `keys` (see `Fingerprint::index_keys`) points at `target`.
    /// Idempotent: writing the same pointer again changes nothing.
    pub async fn put(&self, keys: &[String], target: &FingerprintRef) -> Result<(), Error> {
        let value = serde_json::to_vec(target)
            .map_err(|e| Error::new(ErrorKind::Permanent, "encode fingerprint", e))?;
        let writes = keys.iter().map(|key| {
            let value = value.clone();
            async move {
                self.kv.put(key, value.into()).await.map_err(|e| {
                    Error::new(ErrorKind::Transient, format!("index fingerprint {key}"), e)
                })
            }
        });
        futures::future::try_join_all(writes).await.map(|_| ())
    }

    /// Removes `keys` (the digests of a value that never took effect anywhere).
    pub async fn remove(&self, keys: &[String]) -> Result<(), Error> {
        for key in keys {
            self.kv.purge(key).await.map_err(|e| {
                Error::new(ErrorKind::Transient, format!("remove fingerprint {key}"), e)
            })?;
        }
        Ok(())
    }

    /// Every entry: index key → where it points (for `keyloop inventory rebuild`'s check).
    pub async fn entries(&self) -> Result<Vec<(String, FingerprintRef)>, Error> {
        scan(&self.kv, ">")
            .await?
            .into_iter()
            .map(|(key, bytes)| {
                serde_json::from_slice(&bytes)
                    .map(|target| (key.clone(), target))
                    .map_err(|e| {
                        Error::new(
                            ErrorKind::Permanent,
                            format!("fingerprint entry {key} is corrupt"),
                            e,
                        )
                    })
            })
            .collect()
    }

    /// The first of `keys` that is indexed.
    pub async fn lookup(&self, keys: &[String]) -> Result<Option<FingerprintRef>, Error> {
        for key in keys {
            let value = self.kv.get(key.clone()).await.map_err(|e| {
                Error::new(
                    ErrorKind::Transient,
                    format!("look up fingerprint {key}"),
                    e,
                )
            })?;
            if let Some(bytes) = value {
                let target = serde_json::from_slice(&bytes).map_err(|e| {
                    Error::new(
                        ErrorKind::Permanent,
                        format!("fingerprint entry {key} is corrupt"),
                        e,
                    )
                })?;
                return Ok(Some(target));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_become_one_safe_key_token() {
        assert_eq!(task_token("build-42_a"), "build-42_a");
        assert_eq!(task_token("ci/run.7 x"), "ci=2Frun=2E7=20x");
    }
}
