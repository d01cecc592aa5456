//! The `local` store: values encrypted with XChaCha20-Poly1305 under a 256-bit master key and
//! kept in a JetStream KV bucket. Each value is bound to its credential and version by the
//! AEAD's associated data, so a ciphertext copied to another key does not decrypt.
//!
//! Entry format: `0x01 || nonce (24 bytes) || ciphertext+tag`.

use crate::{BackendError, Store};
use async_nats::jetstream::kv;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use futures::future::BoxFuture;
use keyloop_core::{Credential, CredentialId, Secret};
use std::fmt;
use uuid::Uuid;
use zeroize::{Zeroize, Zeroizing};

const FORMAT_V1: u8 = 1;
const NONCE_LEN: usize = 24;

/// The 256-bit key of the local store. Zeroized on drop; never printed.
#[derive(Clone)]
pub struct MasterKey(Zeroizing<[u8; 32]>);

/// A master key that could not be read.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid master key ({0}); expected 64 hex characters (32 bytes), for example from `openssl rand -hex 32`"
)]
pub struct MasterKeyError(&'static str);

impl MasterKey {
    /// Reads 64 hex characters (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Result<Self, MasterKeyError> {
        let text = text.trim();
        if text.len() != 64 {
            return Err(MasterKeyError("wrong length"));
        }
        let mut bytes = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text, bytes.as_mut()).map_err(|_| MasterKeyError("not hex"))?;
        Ok(Self(bytes))
    }

    /// A fresh random key from the OS CSPRNG.
    pub fn generate() -> Self {
        let key = XChaCha20Poly1305::generate_key(&mut OsRng);
        let mut bytes = Zeroizing::new([0u8; 32]);
        bytes.copy_from_slice(&key);
        Self(bytes)
    }

    /// The key as 64 hex characters, for writing a key file.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.0.as_ref()))
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey([redacted])")
    }
}

/// Encrypted values in a KV bucket.
pub struct LocalStore {
    kv: kv::Store,
    cipher: XChaCha20Poly1305,
}

impl fmt::Debug for LocalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalStore")
            .field("bucket", &self.kv.name)
            .finish_non_exhaustive()
    }
}

impl LocalStore {
    /// A store over `kv` (the `<prefix>_secrets` bucket) with `key`.
    pub fn new(kv: kv::Store, key: &MasterKey) -> Self {
        let cipher = XChaCha20Poly1305::new_from_slice(key.0.as_ref()).expect("32-byte key");
        Self { kv, cipher }
    }

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

    fn open(&self, key: &str, entry: &[u8]) -> Result<Secret, BackendError> {
        if entry.len() < 1 + NONCE_LEN || entry[0] != FORMAT_V1 {
            return Err(BackendError::permanent(format!(
                "local store: entry {key} is not a keyloop v1 ciphertext"
            )));
        }
        let nonce = XNonce::from_slice(&entry[1..=NONCE_LEN]);
        let mut plain = self
            .cipher
            .decrypt(nonce, Payload { msg: &entry[1 + NONCE_LEN..], aad: key.as_bytes() })
            .map_err(|_| {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_key_round_trips_and_never_prints() {
        let k = MasterKey::generate();
        let again = MasterKey::from_hex(&k.to_hex()).unwrap();
        assert_eq!(k.0.as_ref(), again.0.as_ref());
        assert_eq!(format!("{k:?}"), "MasterKey([redacted])");
        assert!(MasterKey::from_hex("abc").is_err());
        assert!(MasterKey::from_hex(&"zz".repeat(32)).is_err());
    }
}
