//! Approvals and revocation budgets in the inventory bucket: `approval.<id>` holds an
//! [`Approval`] (what it holds, who asked, the grants), `budget.<target>.<window>` the
//! revocations counted against a target in one window, and `breaker.<target>` the approval a
//! tripped budget is waiting for. Every change is a compare-and-set, as for credentials, so
//! two approvers deciding at once, or two revokers counting at once, serialize.

use crate::error::{Error, ErrorKind};
use crate::inventory::{
    Attempt, Change, Inventory, cas_backoff, create, lost_races, read, scan, settle, update,
};
use async_nats::jetstream::kv;
use backon::RetryableWithContext;
use futures::StreamExt;
use keyloop_core::policy::Approval;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// An approval id is one key token: letters, digits, `-` and `_`, at most 128.
pub fn valid_approval_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn approval_key(id: &str) -> String {
    format!("approval.{id}")
}

/// The revocations counted against one target in one window (their operation ids, so a
/// redelivered command is not counted twice).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetWindow {
    /// Operation (and version) keys counted.
    pub counted: Vec<String>,
}

/// A tripped budget: the approval that holds the target's revocations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Breaker {
    /// The approval id.
    pub approval: String,
}

/// A target name as one key token (`postgres`, `store-aws-sm`): anything else is replaced.
fn target_token(target: &str) -> String {
    target
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl Inventory {
    /// Stores a new approval; `AlreadyExists` if its id is taken.
    pub async fn create_approval(&self, approval: &Approval) -> Result<(), Error> {
        create(
            &self.kv,
            &approval_key(&approval.id),
            approval,
            &format!("approval {}", approval.id),
        )
        .await
        .map(|_| ())
    }

    /// The approval, or `None`.
    pub async fn approval(&self, id: &str) -> Result<Option<Approval>, Error> {
        if !valid_approval_id(id) {
            return Ok(None);
        }
        Ok(read(&self.kv, &approval_key(id)).await?.map(|(a, _)| a))
    }

    /// Applies `decide` to the stored approval with compare-and-set; `NotFound` names it.
    pub async fn update_approval<T>(
        &self,
        id: &str,
        decide: impl FnMut(&mut Approval) -> Result<Change<T>, Error>,
    ) -> Result<T, Error> {
        let missing = || {
            Error::msg(
                ErrorKind::NotFound,
                format!("approval {id} does not exist (see `keyloop approvals list --all`)"),
            )
        };
        if !valid_approval_id(id) {
            return Err(missing());
        }
        update(&self.kv, &approval_key(id), missing, decide).await
    }

    /// Every approval kept, oldest first.
    pub async fn approvals(&self) -> Result<Vec<Approval>, Error> {
        let mut out = Vec::new();
        for (key, bytes) in scan(&self.kv, "approval.*").await? {
            let approval: Approval = serde_json::from_slice(&bytes).map_err(|e| {
                Error::new(
                    ErrorKind::Permanent,
                    format!("entry {}/{key} is corrupt", self.kv.name),
                    e,
                )
            })?;
            out.push(approval);
        }
        out.sort_by_key(|a| a.requested_at);
        Ok(out)
    }

    /// Waits up to `timeout` for the approval to change, then returns it as it stands.
    pub async fn wait_approval(
        &self,
        id: &str,
        timeout: Duration,
    ) -> Result<Option<Approval>, Error> {
        if !valid_approval_id(id) {
            return Ok(None);
        }
        let key = approval_key(id);
        let what = || format!("watch {}/{key}", self.kv.name);
        // Watch first, then read: a change between the two is seen by the watch.
        let mut watch = self
            .kv
            .watch(&key)
            .await
            .map_err(|e| Error::new(ErrorKind::Transient, what(), e))?;
        let before = self.approval(id).await?;
        let changed = async {
            while let Some(entry) = watch.next().await {
                let Ok(entry) = entry else { return };
                if entry.operation != kv::Operation::Put {
                    return;
                }
                if let Ok(now) = serde_json::from_slice::<Approval>(&entry.value)
                    && Some(&now) != before.as_ref()
                {
                    return;
                }
            }
        };
        if tokio::time::timeout(timeout, changed).await.is_err() {
            return Ok(before);
        }
        self.approval(id).await
    }

    /// Applies `decide` to the revocations counted against `target` in `window` (an empty
    /// window when none is stored), with compare-and-set.
    pub async fn update_budget<T>(
        &self,
        target: &str,
        window: i64,
        decide: impl FnMut(&mut BudgetWindow) -> Change<T>,
    ) -> Result<T, Error> {
        let key = format!("budget.{}.{window}", target_token(target));
        upsert(&self.kv, &key, decide).await
    }

    /// The approval a tripped budget of `target` waits for, or `None` (not tripped).
    pub async fn breaker(&self, target: &str) -> Result<Option<Breaker>, Error> {
        Ok(read(&self.kv, &breaker_key(target)).await?.map(|(b, _)| b))
    }

    /// Trips `target`'s breaker on `approval`, unless it is tripped already: the approval it
    /// waits for either way.
    pub async fn trip_breaker(&self, target: &str, approval: &str) -> Result<String, Error> {
        let wanted = approval.to_owned();
        upsert(
            &self.kv,
            &breaker_key(target),
            |b: &mut Option<Breaker>| match b {
                Some(b) => Change::Keep(b.approval.clone()),
                None => {
                    *b = Some(Breaker {
                        approval: wanted.clone(),
                    });
                    Change::Write(wanted.clone())
                }
            },
        )
        .await
    }

    /// Releases `target`'s breaker if it is tripped on `approval`.
    pub async fn release_breaker(&self, target: &str, approval: &str) -> Result<(), Error> {
        let key = breaker_key(target);
        match read::<Breaker>(&self.kv, &key).await? {
            Some((b, _)) if b.approval == approval => self
                .kv
                .delete(&key)
                .await
                .map_err(|e| Error::new(ErrorKind::Transient, format!("release {key}"), e)),
            _ => Ok(()),
        }
    }
}

fn breaker_key(target: &str) -> String {
    format!("breaker.{}", target_token(target))
}

/// Read (a missing entry is `R::default()`), decide, then create or compare-and-set; a lost
/// race reads and decides again.
async fn upsert<R, T>(
    kv: &kv::Store,
    key: &str,
    decide: impl FnMut(&mut R) -> Change<T>,
) -> Result<T, Error>
where
    R: Serialize + DeserializeOwned + Default,
{
    let (_, outcome) = (|mut decide: _| async move {
        let outcome = upsert_once(kv, key, &mut decide).await;
        (decide, outcome)
    })
    .retry(cas_backoff())
    .context(decide)
    .when(|e| matches!(e, Attempt::Raced))
    .await;
    settle(outcome, || lost_races(kv, key))
}

async fn upsert_once<R, T>(
    kv: &kv::Store,
    key: &str,
    decide: &mut impl FnMut(&mut R) -> Change<T>,
) -> Result<T, Attempt>
where
    R: Serialize + DeserializeOwned + Default,
{
    let stored = read::<R>(kv, key).await?;
    let revision = stored.as_ref().map(|(_, r)| *r);
    let mut record = stored.map(|(r, _)| r).unwrap_or_default();
    let value = match decide(&mut record) {
        Change::Keep(v) => return Ok(v),
        Change::Write(v) => v,
    };
    let bytes = serde_json::to_vec(&record)
        .map_err(|e| Error::new(ErrorKind::Permanent, format!("encode {key}"), e))?;
    let written = match revision {
        Some(revision) => kv
            .update(key, bytes.into(), revision)
            .await
            .map(|_| ())
            .map_err(|e| {
                if e.kind() == kv::UpdateErrorKind::WrongLastRevision {
                    Attempt::Raced
                } else {
                    Error::new(ErrorKind::Transient, format!("update {}/{key}", kv.name), e).into()
                }
            }),
        None => kv.create(key, bytes.into()).await.map(|_| ()).map_err(|e| {
            if e.kind() == kv::CreateErrorKind::AlreadyExists {
                Attempt::Raced
            } else {
                Error::new(ErrorKind::Transient, format!("create {}/{key}", kv.name), e).into()
            }
        }),
    };
    written.map(|()| value)
}
