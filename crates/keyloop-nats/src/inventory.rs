//! The inventory (credentials and their versions) and the fingerprint index, both JetStream KV
//! buckets. Every change to a credential is a compare-and-set on the entry's revision, so
//! replicas that race on one credential serialize: the loser re-reads and re-decides.

use crate::error::{Error, ErrorKind};
use async_nats::jetstream::kv;
use futures::TryStreamExt;
use keyloop_core::{Credential, CredentialId};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use uuid::Uuid;

/// How many times a compare-and-set is retried after losing a race before giving up
/// (transiently: the message will be redelivered).
const CAS_ATTEMPTS: u32 = 32;

fn key_of(id: &CredentialId) -> String {
    format!("cred.{id}")
}

/// Credentials, one KV entry each.
#[derive(Clone, Debug)]
pub struct Inventory {
    kv: kv::Store,
}

/// What an update closure decided.
#[derive(Debug)]
pub enum Change<T> {
    /// Write the changed credential, then return `T`.
    Write(T),
    /// Nothing to write (already in the wanted state); return `T`.
    Keep(T),
}

impl Inventory {
    pub(crate) fn new(kv: kv::Store) -> Self {
        Self { kv }
    }

    /// The credential and its entry revision, or `None` if it is not registered.
    pub async fn get(&self, id: &CredentialId) -> Result<Option<(Credential, u64)>, Error> {
        let key = key_of(id);
        let entry = self.kv.entry(key.clone()).await.map_err(|e| {
            Error::new(
                ErrorKind::Transient,
                format!("read inventory entry {key}"),
                e,
            )
        })?;
        match entry {
            Some(e) if e.operation == kv::Operation::Put => {
                let cred = serde_json::from_slice(&e.value).map_err(|err| {
                    Error::new(
                        ErrorKind::Permanent,
                        format!("inventory entry {key} is not a credential"),
                        err,
                    )
                })?;
                Ok(Some((cred, e.revision)))
            }
            _ => Ok(None),
        }
    }

    /// The credential, or a `NotFound` error that names it.
    pub async fn require(&self, id: &CredentialId) -> Result<(Credential, u64), Error> {
        self.get(id).await?.ok_or_else(|| {
            Error::msg(
                ErrorKind::NotFound,
                format!("credential {id} is not registered (see `keyloop credential list`)"),
            )
        })
    }

    /// Stores a new credential; `AlreadyExists` if the id is taken.
    pub async fn create(&self, cred: &Credential) -> Result<u64, Error> {
        let key = key_of(&cred.id);
        let value = serde_json::to_vec(cred)
            .map_err(|e| Error::new(ErrorKind::Permanent, "encode credential", e))?;
        self.kv.create(&key, value.into()).await.map_err(|e| {
            if e.kind() == kv::CreateErrorKind::AlreadyExists {
                Error::msg(
                    ErrorKind::AlreadyExists,
                    format!("credential {} is already registered", cred.id),
                )
            } else {
                Error::new(
                    ErrorKind::Transient,
                    format!("create inventory entry {key}"),
                    e,
                )
            }
        })
    }

    /// Applies `decide` to the stored credential with compare-and-set, re-reading and
    /// re-deciding after a lost race. `decide` must be a pure function of the credential.
    pub async fn update<T>(
        &self,
        id: &CredentialId,
        decide: impl FnMut(&mut Credential) -> Result<Change<T>, Error>,
    ) -> Result<T, Error> {
        self.update_inner(id, None, decide).await
    }

    /// [`update`](Self::update) starting from `known`, a state of the credential the caller
    /// read with its revision, instead of reading it again. If the entry changed since, the
    /// compare-and-set fails and the loop re-reads and re-decides as `update` does, so the
    /// outcome is the same; only the read is saved when nothing raced.
    pub async fn update_from<T>(
        &self,
        id: &CredentialId,
        known: (Credential, u64),
        decide: impl FnMut(&mut Credential) -> Result<Change<T>, Error>,
    ) -> Result<T, Error> {
        self.update_inner(id, Some(known), decide).await
    }

    async fn update_inner<T>(
        &self,
        id: &CredentialId,
        mut known: Option<(Credential, u64)>,
        mut decide: impl FnMut(&mut Credential) -> Result<Change<T>, Error>,
    ) -> Result<T, Error> {
        let key = key_of(id);
        for attempt in 0..CAS_ATTEMPTS {
            let given = known.is_some();
            let (mut cred, revision) = match known.take() {
                Some(state) => state,
                None => self.require(id).await?,
            };
            let value = match decide(&mut cred)? {
                Change::Keep(v) => return Ok(v),
                Change::Write(v) => v,
            };
            let bytes = serde_json::to_vec(&cred)
                .map_err(|e| Error::new(ErrorKind::Permanent, "encode credential", e))?;
            match self.kv.update(&key, bytes.into(), revision).await {
                Ok(_) => return Ok(value),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    // A caller's state was merely stale: re-read at once. Otherwise we lost a
                    // race with another replica: back off a little, spread by attempt.
                    if !given {
                        let jitter = (revision.wrapping_mul(31) + u64::from(attempt)) % 5;
                        tokio::time::sleep(Duration::from_millis(u64::from(attempt) + jitter))
                            .await;
                    }
                }
                Err(e) => {
                    return Err(Error::new(
                        ErrorKind::Transient,
                        format!("update inventory entry {key}"),
                        e,
                    ));
                }
            }
        }
        Err(Error::msg(
            ErrorKind::Transient,
            format!("inventory entry {key}: compare-and-set lost {CAS_ATTEMPTS} races in a row"),
        ))
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
}

/// Where a fingerprint points.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FingerprintRef {
    /// The credential.
    pub credential: CredentialId,
    /// The version whose value has this digest.
    pub version: Uuid,
}

/// Digest → credential/version, for matching leaks without storing values.
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
        for key in keys {
            self.kv.put(key, value.clone().into()).await.map_err(|e| {
                Error::new(ErrorKind::Transient, format!("index fingerprint {key}"), e)
            })?;
        }
        Ok(())
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
