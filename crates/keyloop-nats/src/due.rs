//! The sweeper's due-time index: a KV bucket keyed `<minute>.<kind>.<item>`, where `<minute>` is
//! the due time in whole minutes since the Unix epoch. A sweep reads only the minute buckets
//! between its cursor and now (see [`DueIndex::scan_minute`]), so the work of a tick is
//! O(minutes since the last sweep + items due in them), independent of the inventory's size.
//!
//! Entries are hints, not truth: the sweeper re-checks each item against the inventory before
//! acting, so a stale entry (a credential rotated early, a lease already revoked) costs one read
//! and is dropped.

use crate::error::{Error, ErrorKind};
use crate::inventory::scan;
use async_nats::jetstream::kv;
use keyloop_core::CredentialId;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// Seconds per due bucket.
pub const BUCKET_SECS: i64 = 60;

/// What falls due.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DueItem {
    /// The current version reaches `max_age`.
    Rotate {
        /// The credential.
        credential: CredentialId,
    },
    /// A previous version's grace ends.
    Retire {
        /// The credential.
        credential: CredentialId,
        /// The previous version.
        version: Uuid,
    },
    /// A lease reaches its expiry.
    Expire {
        /// The lease.
        lease: Uuid,
    },
    /// A credential may have been idle for `idle_revoke_after`.
    Idle {
        /// The credential.
        credential: CredentialId,
    },
    /// An approval reaches its deadline.
    ApprovalDeadline {
        /// The approval id.
        approval: String,
    },
}

impl DueItem {
    /// The part of its key after the minute: `<kind>.<item>`.
    pub fn key_suffix(&self) -> String {
        match self {
            Self::Rotate { credential } => format!("rotate.{credential}"),
            Self::Retire {
                credential,
                version,
            } => format!("retire.{credential}.{version}"),
            Self::Expire { lease } => format!("expire.{lease}"),
            Self::Idle { credential } => format!("idle.{credential}"),
            Self::ApprovalDeadline { approval } => format!("approval.{approval}"),
        }
    }
}

/// A stored entry: the item and when it is due.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DueEntry {
    /// What.
    pub item: DueItem,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub due_at: OffsetDateTime,
}

/// The minute bucket of a time.
pub fn minute_of(t: OffsetDateTime) -> i64 {
    t.unix_timestamp().div_euclid(BUCKET_SECS)
}

/// The due-time index.
#[derive(Clone, Debug)]
pub struct DueIndex {
    kv: kv::Store,
}

impl DueIndex {
    pub(crate) fn new(kv: kv::Store) -> Self {
        Self { kv }
    }

    /// Records that `item` is due at `due_at`. Never files an entry in a bucket before `now`'s,
    /// so a sweep that already passed that minute still sees it. Idempotent.
    pub async fn schedule(
        &self,
        item: DueItem,
        due_at: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<String, Error> {
        let minute = minute_of(due_at).max(minute_of(now));
        let key = format!("{minute}.{}", item.key_suffix());
        let value = serde_json::to_vec(&DueEntry { item, due_at })
            .map_err(|e| Error::new(ErrorKind::Permanent, "encode due entry", e))?;
        self.kv
            .put(&key, value.into())
            .await
            .map_err(|e| Error::new(ErrorKind::Transient, format!("schedule {key}"), e))?;
        Ok(key)
    }

    /// Every entry filed under `minute`.
    pub async fn scan_minute(&self, minute: i64) -> Result<Vec<(String, DueEntry)>, Error> {
        let mut out = Vec::new();
        for (key, bytes) in scan(&self.kv, &format!("{minute}.>")).await? {
            match serde_json::from_slice(&bytes) {
                Ok(entry) => out.push((key, entry)),
                Err(e) => tracing::warn!(%key, error = %e, "ignoring a corrupt due entry"),
            }
        }
        Ok(out)
    }

    /// Removes an entry once it is handled — only if it is still `handled`: an item filed
    /// again under the same key meanwhile (a rotation or an idle check due later in the same
    /// minute) is a new entry, and stays. A lost race leaves the entry; a stale one costs the
    /// next sweep one read.
    pub async fn remove(&self, key: &str, handled: &DueEntry) -> Result<(), Error> {
        let what = || format!("remove due entry {key}");
        let Some(current) = self
            .kv
            .entry(key.to_owned())
            .await
            .map_err(|e| Error::new(ErrorKind::Transient, what(), e))?
            .filter(|e| e.operation == kv::Operation::Put)
        else {
            return Ok(());
        };
        if serde_json::from_slice::<DueEntry>(&current.value)
            .ok()
            .as_ref()
            != Some(handled)
        {
            return Ok(());
        }
        match self
            .kv
            .purge_expect_revision(key, Some(current.revision))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == kv::PurgeErrorKind::WrongLastRevision => Ok(()),
            Err(e) => Err(Error::new(ErrorKind::Transient, what(), e)),
        }
    }

    /// The last minute every sweep has fully handled, and the entry's revision.
    pub async fn cursor(&self) -> Result<Option<(i64, u64)>, Error> {
        let entry = self
            .kv
            .entry("cursor")
            .await
            .map_err(|e| Error::new(ErrorKind::Transient, "read sweep cursor", e))?;
        Ok(entry
            .filter(|e| e.operation == kv::Operation::Put)
            .and_then(|e| {
                std::str::from_utf8(&e.value)
                    .ok()?
                    .parse()
                    .ok()
                    .map(|m| (m, e.revision))
            }))
    }

    /// Moves the cursor forward to `minute` (never back). A lost race means another sweeper
    /// moved it; that is fine.
    pub async fn advance_cursor(
        &self,
        minute: i64,
        previous: Option<(i64, u64)>,
    ) -> Result<(), Error> {
        let bytes = minute.to_string().into_bytes();
        let result = match previous {
            Some((m, _)) if m >= minute => return Ok(()),
            Some((_, revision)) => self
                .kv
                .update("cursor", bytes.into(), revision)
                .await
                .map(|_| ()),
            None => self
                .kv
                .create("cursor", bytes.into())
                .await
                .map(|_| ())
                .map_err(|e| {
                    kv::UpdateError::with_source(kv::UpdateErrorKind::WrongLastRevision, e)
                }),
        };
        match result {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(()),
            Err(e) => Err(Error::new(ErrorKind::Transient, "advance sweep cursor", e)),
        }
    }
}
