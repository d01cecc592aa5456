//! The local store's master key, and its public name: a [`KeyId`] that messages and the key
//! check value show instead of the key.

use chacha20poly1305::XChaCha20Poly1305;
use chacha20poly1305::aead::{KeyInit, OsRng};
use hmac::{KeyInit as _, Mac};
use std::fmt;
use zeroize::Zeroizing;

/// HMAC message of [`KeyId::of`]: the id is only ever this one MAC, never of anything else.
const KEY_ID_LABEL: &[u8] = b"keyloop master key id v1";

/// The 256-bit key of the local store. Zeroized on drop; never printed.
#[derive(Clone)]
pub struct MasterKey(pub(super) Zeroizing<[u8; 32]>);

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

/// The public name of a master key: the first 8 bytes of HMAC-SHA256 under the key of a fixed
/// label, as 16 hex characters. Messages and the key check value name keys by it. Learning
/// anything about the key from it is as hard as breaking HMAC-SHA256, and testing a guessed
/// key against it costs what guessing a 256-bit key costs.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId([u8; 8]);

impl KeyId {
    /// The id of `key`.
    pub fn of(key: &MasterKey) -> Self {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.0.as_ref())
            .expect("HMAC takes a key of any length");
        mac.update(KEY_ID_LABEL);
        let tag = mac.finalize().into_bytes();
        let mut id = [0u8; 8];
        id.copy_from_slice(&tag[..8]);
        Self(id)
    }

    pub(super) fn parse(text: &str) -> Option<Self> {
        let mut id = [0u8; 8];
        hex::decode_to_slice(text, &mut id).ok()?;
        Some(Self(id))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}
