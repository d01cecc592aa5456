//! The `local` store: values encrypted with XChaCha20-Poly1305 under a 256-bit master key and
//! kept in a JetStream KV bucket. Each value is bound to its credential and version by the
//! AEAD's associated data, so a ciphertext copied to another key does not decrypt.
//!
//! Entry format: `0x01 || nonce (24 bytes) || ciphertext+tag`.
//!
//! A store is bound to one master key by its **key check value**, recorded under the reserved
//! key `keycheck` the first time the store is opened: the key's [`KeyId`] and a known
//! plaintext sealed under the key. [`LocalStore::open_checked`] refuses any other key, so a
//! worker or CLI started with the wrong one stops at once with both ids in the message, instead
//! of failing every revocation later (and writing values the rest of the fleet cannot read). A
//! store written before check values existed gets one only when the given key decrypts one of
//! its values. The check never holds or prints the key: its id is a truncated HMAC under the
//! key, which tells nothing about it, and the sealed plaintext is public.
//!
//! One file per concern: `key.rs` (the master key and its public id), `key_check.rs` (the key
//! check value, and opening a store with it), this file (sealing and opening values, the
//! [`Store`] steps).

mod key;
mod key_check;
mod rekey;
#[cfg(test)]
mod tests;

use crate::{BackendError, Store};
use async_nats::jetstream::kv;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use futures::future::BoxFuture;
use keyloop_core::{Credential, CredentialId, Secret};
use std::fmt;
use uuid::Uuid;
use zeroize::Zeroize;

pub use key::{KeyId, MasterKey, MasterKeyError};
pub use key_check::{Expected, KeyCheckError, KeyMismatch, Sealing};
pub use rekey::RekeyReport;

const FORMAT_V1: u8 = 1;
const NONCE_LEN: usize = 24;

/// The KV key of the key check value. Values live under `v.<credential>.<version>`, so no value
/// can take this key.
pub const KEY_CHECK_KEY: &str = "keycheck";

fn cipher(key: &MasterKey) -> XChaCha20Poly1305 {
    XChaCha20Poly1305::new_from_slice(key.0.as_ref()).expect("32-byte key")
}

/// Encrypted values in a KV bucket.
pub struct LocalStore {
    kv: kv::Store,
    cipher: XChaCha20Poly1305,
    /// While the master key itself is rotated: the key the store had, which still opens the
    /// values not yet re-sealed (see [`LocalStore::rekey`]). Nothing is sealed under it.
    previous: Option<XChaCha20Poly1305>,
}

impl fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalStore")
            .field("bucket", &self.kv.name)
            .finish_non_exhaustive()
    }
}

impl LocalStore {
    fn key(credential: &CredentialId, version: Uuid) -> String {
        format!("v.{credential}.{version}")
    }

    fn seal(&self, key: &str, value: &Secret) -> Result<Vec<u8>, BackendError> {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: value.expose().as_bytes(),
                    aad: key.as_bytes(),
                },
            )
            .map_err(|_| BackendError::permanent(format!("local store: cannot encrypt {key}")))?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(FORMAT_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// The plaintext of `entry` under `cipher`, if it opens.
    fn unseal(cipher: &XChaCha20Poly1305, key: &str, entry: &[u8]) -> Option<Vec<u8>> {
        let nonce = XNonce::from_slice(&entry[1..=NONCE_LEN]);
        cipher
            .decrypt(
                nonce,
                Payload {
                    msg: &entry[1 + NONCE_LEN..],
                    aad: key.as_bytes(),
                },
            )
            .ok()
    }

    fn open(&self, key: &str, entry: &[u8]) -> Result<Secret, BackendError> {
        if entry.len() < 1 + NONCE_LEN || entry[0] != FORMAT_V1 {
            return Err(BackendError::permanent(format!(
                "local store: entry {key} is not a keyloop v1 ciphertext"
            )));
        }
        let mut plain = Self::unseal(&self.cipher, key, entry)
            .or_else(|| {
                self.previous
                    .as_ref()
                    .and_then(|previous| Self::unseal(previous, key, entry))
            })
            .ok_or_else(|| {
                BackendError::permanent(format!(
                    "local store: entry {key} does not decrypt: wrong master key (KEYLOOP_MASTER_KEY / --master-key-file) or a tampered entry"
                ))
            })?;
        let text = String::from_utf8(std::mem::take(&mut plain)).map_err(|e| {
            let mut bytes = e.into_bytes();
            bytes.zeroize();
            BackendError::permanent(format!("local store: entry {key} is not UTF-8"))
        })?;
        Ok(Secret::new(text))
    }
}

impl Store for LocalStore {
    fn put_new<'a>(
        &'a self,
        credential: &'a Credential,
        version: Uuid,
        value: Secret,
    ) -> BoxFuture<'a, Result<Secret, BackendError>> {
        Box::pin(async move {
            let key = Self::key(&credential.id, version);
            let sealed = self.seal(&key, &value)?;
            match self.kv.create(&key, sealed.into()).await {
                Ok(_) => Ok(value),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    // An earlier attempt stored a value for this version: that one wins.
                    self.get(credential, version).await?.ok_or_else(|| {
                        BackendError::transient(format!(
                            "local store: {key} exists but cannot be read yet"
                        ))
                    })
                }
                Err(e) => Err(BackendError::transient(format!(
                    "local store: cannot write {key}: {e}"
                ))),
            }
        })
    }

    fn get<'a>(
        &'a self,
        credential: &'a Credential,
        version: Uuid,
    ) -> BoxFuture<'a, Result<Option<Secret>, BackendError>> {
        Box::pin(async move {
            let key = Self::key(&credential.id, version);
            let entry = self.kv.get(key.clone()).await.map_err(|e| {
                BackendError::transient(format!("local store: cannot read {key}: {e}"))
            })?;
            entry.map(|bytes| self.open(&key, &bytes)).transpose()
        })
    }

    fn destroy<'a>(
        &'a self,
        credential: &'a Credential,
        version: Uuid,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            let key = Self::key(&credential.id, version);
            // Purge, not delete: the ciphertext leaves the bucket's history too.
            self.kv.purge(&key).await.map_err(|e| {
                BackendError::transient(format!("local store: cannot destroy {key}: {e}"))
            })
        })
    }

    fn acknowledged_write_reads_back(&self) -> bool {
        true
    }
}
