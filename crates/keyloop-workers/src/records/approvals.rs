//! Approvals and revocation budgets as the workers keep them: on NATS (the inventory bucket,
//! `keyloop_nats::approvals`) and in memory for unit tests.

use super::{Decide, decided, keep, through_nats};
use crate::error::{Error, ErrorKind};
use futures::future::BoxFuture;
use keyloop_core::policy::Approval;
use keyloop_nats::{Change, Inventory};
use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

/// Approvals, counted revocations and tripped breakers.
pub trait ApprovalRecords: Send + Sync + fmt::Debug {
    /// Stores a new approval; `AlreadyExists` if the id is taken.
    fn create_approval<'a>(&'a self, approval: &'a Approval) -> BoxFuture<'a, Result<(), Error>>;
    /// The approval, or `None`.
    fn approval<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Approval>, Error>>;
    /// Compare-and-set on the approval; `NotFound` when there is none.
    fn update_approval_with<'a>(
        &'a self,
        id: &'a str,
        decide: Decide<'a, Approval>,
    ) -> BoxFuture<'a, Result<(), Error>>;
    /// Every approval kept, oldest first.
    fn approvals(&self) -> BoxFuture<'_, Result<Vec<Approval>, Error>>;
    /// The approval after it changes, or as it stands after `timeout`.
    fn wait_approval<'a>(
        &'a self,
        id: &'a str,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Option<Approval>, Error>>;
    /// Counts revocation `key` against `target` in `window` unless `max` are counted already:
    /// `true` when it is within the budget (counted now or before), `false` when over it.
    fn count_revocation<'a>(
        &'a self,
        target: &'a str,
        window: i64,
        key: &'a str,
        max: u32,
    ) -> BoxFuture<'a, Result<bool, Error>>;
    /// The approval a tripped breaker of `target` waits for.
    fn breaker<'a>(&'a self, target: &'a str) -> BoxFuture<'a, Result<Option<String>, Error>>;
    /// Trips the breaker on `approval` unless it is tripped: the approval it waits for.
    fn trip_breaker<'a>(
        &'a self,
        target: &'a str,
        approval: &'a str,
    ) -> BoxFuture<'a, Result<String, Error>>;
    /// Releases the breaker if it waits for `approval`.
    fn release_breaker<'a>(
        &'a self,
        target: &'a str,
        approval: &'a str,
    ) -> BoxFuture<'a, Result<(), Error>>;
}

impl dyn ApprovalRecords {
    /// Applies `decide` to the approval with compare-and-set.
    pub async fn update_approval<T: Send>(
        &self,
        id: &str,
        mut decide: impl FnMut(&mut Approval) -> Result<Change<T>, Error> + Send,
    ) -> Result<T, Error> {
        let mut out = None;
        let mut step = |a: &mut Approval| Ok(keep(decide(a)?, &mut out));
        self.update_approval_with(id, &mut step).await?;
        decided(out)
    }
}

fn counted(window: &mut Vec<String>, key: &str, max: u32) -> Change<bool> {
    if window.iter().any(|k| k == key) {
        Change::Keep(true)
    } else if window.len() >= max as usize {
        Change::Keep(false)
    } else {
        window.push(key.to_owned());
        Change::Write(true)
    }
}

impl ApprovalRecords for Inventory {
    fn create_approval<'a>(&'a self, approval: &'a Approval) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            Inventory::create_approval(self, approval)
                .await
                .map_err(Error::from)
        })
    }
    fn approval<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Approval>, Error>> {
        Box::pin(async move { Inventory::approval(self, id).await.map_err(Error::from) })
    }
    fn update_approval_with<'a>(
        &'a self,
        id: &'a str,
        decide: Decide<'a, Approval>,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let mut refused = None;
            let result =
                Inventory::update_approval(self, id, through_nats(decide, &mut refused)).await;
            refused.map_or_else(|| result.map_err(Error::from), Err)
        })
    }
    fn approvals(&self) -> BoxFuture<'_, Result<Vec<Approval>, Error>> {
        Box::pin(async move { Inventory::approvals(self).await.map_err(Error::from) })
    }
    fn wait_approval<'a>(
        &'a self,
        id: &'a str,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Option<Approval>, Error>> {
        Box::pin(async move {
            Inventory::wait_approval(self, id, timeout)
                .await
                .map_err(Error::from)
        })
    }
    fn count_revocation<'a>(
        &'a self,
        target: &'a str,
        window: i64,
        key: &'a str,
        max: u32,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move {
            self.update_budget(target, window, |w| counted(&mut w.counted, key, max))
                .await
                .map_err(Error::from)
        })
    }
    fn breaker<'a>(&'a self, target: &'a str) -> BoxFuture<'a, Result<Option<String>, Error>> {
        Box::pin(async move {
            Ok(Inventory::breaker(self, target)
                .await
                .map_err(Error::from)?
                .map(|b| b.approval))
        })
    }
    fn trip_breaker<'a>(
        &'a self,
        target: &'a str,
        approval: &'a str,
    ) -> BoxFuture<'a, Result<String, Error>> {
        Box::pin(async move {
            Inventory::trip_breaker(self, target, approval)
                .await
                .map_err(Error::from)
        })
    }
    fn release_breaker<'a>(
        &'a self,
        target: &'a str,
        approval: &'a str,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            Inventory::release_breaker(self, target, approval)
                .await
                .map_err(Error::from)
        })
    }
}

/// Approvals, budgets and breakers in memory (unit tests).
#[derive(Debug, Default)]
pub struct MemoryApprovals {
    approvals: Mutex<HashMap<String, Approval>>,
    budgets: Mutex<HashMap<(String, i64), Vec<String>>>,
    breakers: Mutex<HashMap<String, String>>,
}

impl ApprovalRecords for MemoryApprovals {
    fn create_approval<'a>(&'a self, approval: &'a Approval) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let mut all = self.approvals.lock().expect("approvals lock");
            if all.contains_key(&approval.id) {
                return Err(Error::msg(
                    ErrorKind::AlreadyExists,
                    format!("approval {} exists", approval.id),
                ));
            }
            all.insert(approval.id.clone(), approval.clone());
            Ok(())
        })
    }
    fn approval<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Approval>, Error>> {
        Box::pin(async move {
            Ok(self
                .approvals
                .lock()
                .expect("approvals lock")
                .get(id)
                .cloned())
        })
    }
    fn update_approval_with<'a>(
        &'a self,
        id: &'a str,
        decide: Decide<'a, Approval>,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let mut all = self.approvals.lock().expect("approvals lock");
            let Some(stored) = all.get_mut(id) else {
                return Err(Error::msg(
                    ErrorKind::NotFound,
                    format!("approval {id} does not exist"),
                ));
            };
            let mut copy = stored.clone();
            if decide(&mut copy)? {
                *stored = copy;
            }
            Ok(())
        })
    }
    fn approvals(&self) -> BoxFuture<'_, Result<Vec<Approval>, Error>> {
        Box::pin(async move {
            let mut all: Vec<_> = self
                .approvals
                .lock()
                .expect("approvals lock")
                .values()
                .cloned()
                .collect();
            all.sort_by_key(|a| a.requested_at);
            Ok(all)
        })
    }
    fn wait_approval<'a>(
        &'a self,
        id: &'a str,
        _timeout: Duration,
    ) -> BoxFuture<'a, Result<Option<Approval>, Error>> {
        self.approval(id)
    }
    fn count_revocation<'a>(
        &'a self,
        target: &'a str,
        window: i64,
        key: &'a str,
        max: u32,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        Box::pin(async move {
            let mut budgets = self.budgets.lock().expect("budgets lock");
            let w = budgets.entry((target.to_owned(), window)).or_default();
            Ok(match counted(w, key, max) {
                Change::Write(v) | Change::Keep(v) => v,
            })
        })
    }
    fn breaker<'a>(&'a self, target: &'a str) -> BoxFuture<'a, Result<Option<String>, Error>> {
        Box::pin(async move {
            Ok(self
                .breakers
                .lock()
                .expect("breakers lock")
                .get(target)
                .cloned())
        })
    }
    fn trip_breaker<'a>(
        &'a self,
        target: &'a str,
        approval: &'a str,
    ) -> BoxFuture<'a, Result<String, Error>> {
        Box::pin(async move {
            Ok(self
                .breakers
                .lock()
                .expect("breakers lock")
                .entry(target.to_owned())
                .or_insert_with(|| approval.to_owned())
                .clone())
        })
    }
    fn release_breaker<'a>(
        &'a self,
        target: &'a str,
        approval: &'a str,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let mut breakers = self.breakers.lock().expect("breakers lock");
            if breakers.get(target).is_some_and(|a| a == approval) {
                breakers.remove(target);
            }
            Ok(())
        })
    }
}
