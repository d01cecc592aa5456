//! Rotating the master key itself: every value re-sealed under the new key, then the store's
//! key check value swapped to it. Run while the processes that hold the key (rotator, revoker,
//! api) have the new key and the previous one (`KEYLOOP_MASTER_KEY_PREVIOUS`), so they read
//! both and write only the new one. Each value is rewritten by compare-and-set on its revision
//! (a value written meanwhile is read again); the bucket keeps one revision per key, so the old
//! ciphertext is gone once rewritten. Interrupted, it is run again: values already under the
//! new key are skipped. The check value moves last, and only when every value opened: from then
//! on a process with the previous key alone is refused.

use super::key_check::{KeyCheck, value_keys};
use super::{KEY_CHECK_KEY, LocalStore};
use crate::BackendError;
use async_nats::jetstream::kv;
use zeroize::Zeroize;

/// What a re-key did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RekeyReport {
    /// Values re-sealed under the new key now.
    pub resealed: usize,
    /// Values that were under it already (an earlier, interrupted run; or written since).
    pub already: usize,
    /// Keys (credential and version, never a value) that open under neither key.
    pub unreadable: Vec<String>,
    /// Whether the store's key check value now names the new key.
    pub check_swapped: bool,
}

impl LocalStore {
    /// Re-seals every value under this store's key; see the module docs. Needs the previous
    /// key ([`LocalStore::open_checked_with`]).
    pub async fn rekey(
        &self,
        new_key: &super::MasterKey,
        progress: &dyn Fn(usize, usize),
    ) -> Result<RekeyReport, BackendError> {
        let Some(previous) = &self.previous else {
            return Err(BackendError::permanent(
                "local store: a re-key needs the previous master key too (KEYLOOP_MASTER_KEY_PREVIOUS)",
            ));
        };
        let unavailable =
            |e: &dyn std::fmt::Display| BackendError::transient(format!("local store: {e}"));
        let keys = value_keys(&self.kv).await.map_err(|e| unavailable(&e))?;
        let mut report = RekeyReport::default();
        for (i, key) in keys.iter().enumerate() {
            progress(i, keys.len());
            loop {
                let Some(entry) = self.kv.entry(key).await.map_err(|e| unavailable(&e))? else {
                    break;
                };
                if entry.operation != kv::Operation::Put || entry.value.len() < 2 {
                    break; // destroyed: nothing to re-seal
                }
                if Self::unseal(&self.cipher, key, &entry.value).is_some() {
                    report.already += 1;
                    break;
                }
                let Some(mut plain) = Self::unseal(previous, key, &entry.value) else {
                    report.unreadable.push(key.clone());
                    break;
                };
                let text = String::from_utf8(std::mem::take(&mut plain));
                let sealed = match text {
                    Ok(text) => {
                        let secret = keyloop_core::Secret::new(text);
                        self.seal(key, &secret)
                    }
                    Err(e) => {
                        e.into_bytes().zeroize();
                        report.unreadable.push(key.clone());
                        break;
                    }
                }?;
                match self.kv.update(key, sealed.into(), entry.revision).await {
                    Ok(_) => {
                        report.resealed += 1;
                        break;
                    }
                    // Written (or destroyed) meanwhile: read it again.
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
                    Err(e) => return Err(unavailable(&e)),
                }
            }
        }
        progress(keys.len(), keys.len());
        if report.unreadable.is_empty() {
            self.kv
                .put(KEY_CHECK_KEY, KeyCheck::seal(new_key).encode().into())
                .await
                .map_err(|e| unavailable(&e))?;
            report.check_swapped = true;
        }
        Ok(report)
    }
}
