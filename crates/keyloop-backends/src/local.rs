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

use crate::race::{self, Attempt};
use crate::{BackendError, Store};
use async_nats::jetstream::kv;
use backon::Retryable;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use futures::TryStreamExt;
use futures::future::BoxFuture;
use hmac::{KeyInit as _, Mac};
use keyloop_core::{Credential, CredentialId, Secret};
use std::fmt;
use uuid::Uuid;
use zeroize::{Zeroize, Zeroizing};

const FORMAT_V1: u8 = 1;
const NONCE_LEN: usize = 24;

/// The KV key of the key check value. Values live under `v.<credential>.<version>`, so no value
/// can take this key.
pub const KEY_CHECK_KEY: &str = "keycheck";
/// What the key check value seals: public, so that opening it proves only that the key fits.
const KEY_CHECK_PLAINTEXT: &[u8] = b"keyloop local store key check v1";
/// First field of an encoded key check value, naming its format.
const KEY_CHECK_FORMAT: &str = "keyloop-key-check/1";
/// HMAC message of [`KeyId::of`]: the id is only ever this one MAC, never of anything else.
const KEY_ID_LABEL: &[u8] = b"keyloop master key id v1";

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

    fn parse(text: &str) -> Option<Self> {
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

/// A store's key check value: the id of its key and [`KEY_CHECK_PLAINTEXT`] sealed under the
/// key, bound to that id. Encoded as one line of text, so `nats kv get` shows it plainly:
/// `keyloop-key-check/1 <key id> <hex of nonce || ciphertext+tag>`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KeyCheck {
    key_id: KeyId,
    sealed: Vec<u8>,
}

/// Why a key check value refuses a key (before the bucket's name is attached).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CheckRefusal {
    OtherKey(KeyId),
    DoesNotOpen,
}

impl KeyCheck {
    fn aad(key_id: KeyId) -> String {
        format!("{KEY_CHECK_KEY}.{key_id}")
    }

    fn seal(key: &MasterKey) -> Self {
        let key_id = KeyId::of(key);
        let cipher = cipher(key);
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let aad = Self::aad(key_id);
        let ciphertext = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: KEY_CHECK_PLAINTEXT,
                    aad: aad.as_bytes(),
                },
            )
            .expect("sealing 32 bytes cannot fail");
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&ciphertext);
        Self { key_id, sealed }
    }

    fn encode(&self) -> Vec<u8> {
        format!(
            "{KEY_CHECK_FORMAT} {} {}",
            self.key_id,
            hex::encode(&self.sealed)
        )
        .into_bytes()
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut fields = text.trim().split(' ');
        if fields.next()? != KEY_CHECK_FORMAT {
            return None;
        }
        let key_id = KeyId::parse(fields.next()?)?;
        let sealed = hex::decode(fields.next()?).ok()?;
        if fields.next().is_some() || sealed.len() <= NONCE_LEN {
            return None;
        }
        Some(Self { key_id, sealed })
    }

    /// Whether `key` is the key this check was sealed with: its id must match and the sealed
    /// plaintext must open with it (an id alone could be copied; the seal proves the key).
    fn verify(&self, key: &MasterKey) -> Result<(), CheckRefusal> {
        if KeyId::of(key) != self.key_id {
            return Err(CheckRefusal::OtherKey(self.key_id));
        }
        let (nonce, ciphertext) = self.sealed.split_at(NONCE_LEN);
        let aad = Self::aad(self.key_id);
        let plain = cipher(key)
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| CheckRefusal::DoesNotOpen)?;
        if plain != KEY_CHECK_PLAINTEXT {
            return Err(CheckRefusal::DoesNotOpen);
        }
        Ok(())
    }
}

fn cipher(key: &MasterKey) -> XChaCha20Poly1305 {
    XChaCha20Poly1305::new_from_slice(key.0.as_ref()).expect("32-byte key")
}

/// The local store cannot be used with the master key given.
#[derive(Debug, thiserror::Error)]
pub enum KeyCheckError {
    /// The key is not the store's.
    #[error(transparent)]
    Mismatch(#[from] KeyMismatch),
    /// The bucket could not be read or written (unreachable server, no permission): retry.
    #[error("local store {bucket}: cannot check the master key: {message}")]
    Unavailable {
        /// The bucket.
        bucket: String,
        /// What failed.
        message: String,
    },
}

impl KeyCheckError {
    /// True when retrying may succeed (the bucket was unreachable); a mismatch never goes away.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}

/// The master key given is not the one the store's values are sealed with. Says which key the
/// store expects (its id, never the key) and which was given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct KeyMismatch {
    /// The `<prefix>_secrets` bucket.
    pub bucket: String,
    /// The id of the key given.
    pub given: KeyId,
    /// What the store holds instead.
    pub expected: Expected,
}

/// What a store expects, when it refuses a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// Its key check value names this key.
    Key(KeyId),
    /// Its key check value names the given key but does not open with it: it was tampered
    /// with or corrupted.
    CheckDoesNotOpen,
    /// Its key check value is not one keyloop wrote.
    UnreadableCheck,
    /// It was written before key check values existed, and none of its values decrypts with
    /// the given key.
    Unrecorded {
        /// How many values it holds.
        values: usize,
    },
}

impl KeyMismatch {
    fn describe(&self) -> String {
        let (bucket, given) = (&self.bucket, self.given);
        match self.expected {
            Expected::Key(expected) => format!(
                "wrong master key: the local store (bucket {bucket}) belongs to master key id {expected}, but the key given has id {given}; pass the key whose id is {expected}"
            ),
            Expected::CheckDoesNotOpen => format!(
                "the key check value of the local store (bucket {bucket}, key `{KEY_CHECK_KEY}`) names master key id {given}, the key given, but does not open with it: it was tampered with or corrupted; refusing the store until it is restored"
            ),
            Expected::UnreadableCheck => format!(
                "the key check value of the local store (bucket {bucket}, key `{KEY_CHECK_KEY}`) is not one keyloop wrote; refusing the store until it is restored"
            ),
            Expected::Unrecorded { values } => format!(
                "wrong master key: the local store (bucket {bucket}) holds {values} value(s) written before stores recorded their key, and none decrypts with the key given (id {given}); pass the master key they were written with (the store records it the first time it is opened with it)"
            ),
        }
    }
}

/// Who a store belongs to, as far as can be told without a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sealing {
    /// No values and no key check value: any key may claim it.
    Empty,
    /// Its key check value names this key.
    Key(KeyId),
    /// It holds values but no key check value (written before check values existed).
    Unrecorded,
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
    /// A store over `kv` (the `<prefix>_secrets` bucket) with `key`, once the bucket's key
    /// check value confirms it is the store's key, recording one on first use.
    ///
    /// - A key check value exists: the key must be the one it names and must open it.
    /// - None, and the bucket holds no values: this key's check value is recorded.
    /// - None, but the bucket holds values (written before check values existed): recorded
    ///   only if the key decrypts at least one of them; values that do not decrypt (written
    ///   under another key by a mis-configured process) are named in a warning.
    ///
    /// Concurrent first opens are safe: the check value is created at most once, and a loser
    /// checks its key against the winner's.
    pub async fn open_checked(kv: kv::Store, key: &MasterKey) -> Result<Self, KeyCheckError> {
        let store = Self {
            cipher: cipher(key),
            kv,
        };
        // A lost race to create the check value means another process just recorded one:
        // read it again, at most a few times.
        let outcome = (|| store.check_key(key))
            .retry(race::backoff())
            .when(Attempt::is_raced)
            .await;
        race::settle(outcome, || {
            store.unavailable("its key check value keeps changing")
        })?;
        Ok(store)
    }

    /// One try of [`LocalStore::open_checked`]: checks `key` against the recorded check
    /// value, or records one.
    async fn check_key(&self, key: &MasterKey) -> Result<(), Attempt<KeyCheckError>> {
        let given = KeyId::of(key);
        let mismatch = |expected| {
            KeyCheckError::from(KeyMismatch {
                bucket: self.kv.name.clone(),
                given,
                expected,
            })
        };
        if let Some(bytes) = self
            .kv
            .get(KEY_CHECK_KEY)
            .await
            .map_err(|e| self.unavailable(e))?
        {
            let check =
                KeyCheck::decode(&bytes).ok_or_else(|| mismatch(Expected::UnreadableCheck))?;
            return match check.verify(key) {
                Ok(()) => Ok(()),
                Err(CheckRefusal::OtherKey(id)) => Err(mismatch(Expected::Key(id)).into()),
                Err(CheckRefusal::DoesNotOpen) => Err(mismatch(Expected::CheckDoesNotOpen).into()),
            };
        }
        let survey = self.survey().await?;
        if survey.values > 0 && survey.readable == 0 {
            return Err(mismatch(Expected::Unrecorded {
                values: survey.values,
            })
            .into());
        }
        if !survey.unreadable.is_empty() {
            tracing::warn!(
                bucket = %self.kv.name,
                key_id = %given,
                unreadable = ?survey.unreadable,
                "recording this key for a store written before key check values: {} of {} values do not decrypt with it (written under another master key?); their credentials cannot be read by this fleet",
                survey.unreadable.len(),
                survey.values
            );
        }
        match self
            .kv
            .create(KEY_CHECK_KEY, KeyCheck::seal(key).encode().into())
            .await
        {
            Ok(_) => {
                tracing::info!(bucket = %self.kv.name, key_id = %given, "recorded the local store's key check value");
                Ok(())
            }
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Err(Attempt::Raced),
            Err(e) => Err(self.unavailable(e).into()),
        }
    }

    /// Who `kv` belongs to, read without a key: `keyloop up` asks before it creates a dev
    /// key, so that it never makes a second key for a store that already has one.
    pub async fn sealing(kv: &kv::Store) -> Result<Sealing, KeyCheckError> {
        let unavailable = |e: &dyn fmt::Display| KeyCheckError::Unavailable {
            bucket: kv.name.clone(),
            message: e.to_string(),
        };
        if let Some(bytes) = kv.get(KEY_CHECK_KEY).await.map_err(|e| unavailable(&e))? {
            return Ok(
                KeyCheck::decode(&bytes).map_or(Sealing::Unrecorded, |c| Sealing::Key(c.key_id))
            );
        }
        for key in value_keys(kv).await? {
            if kv.get(&key).await.map_err(|e| unavailable(&e))?.is_some() {
                return Ok(Sealing::Unrecorded);
            }
        }
        Ok(Sealing::Empty)
    }

    fn unavailable(&self, e: impl fmt::Display) -> KeyCheckError {
        KeyCheckError::Unavailable {
            bucket: self.kv.name.clone(),
            message: e.to_string(),
        }
    }

    /// Tries every value in the bucket with this store's key. Runs once per store, on the
    /// first open after an upgrade, so its cost (one read per value) is paid once.
    async fn survey(&self) -> Result<Survey, KeyCheckError> {
        let keys = value_keys(&self.kv).await?;
        let mut survey = Survey::default();
        for key in keys {
            let Some(entry) = self.kv.get(&key).await.map_err(|e| self.unavailable(e))? else {
                continue; // destroyed meanwhile
            };
            survey.values += 1;
            match self.open(&key, &entry) {
                Ok(_) => survey.readable += 1,
                Err(_) => survey.unreadable.push(key),
            }
        }
        Ok(survey)
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

/// The keys of the values in `kv` (`v.<credential>.<version>`), from the subjects of the
/// bucket's stream as its stream info lists them. Not `kv.keys()`: that creates a consumer,
/// which the shipped permissions do not let workers do on this bucket. A destroyed value's key
/// may still be listed (its purge marker); reading it finds nothing.
async fn value_keys(kv: &kv::Store) -> Result<Vec<String>, KeyCheckError> {
    let unavailable = |e: &dyn fmt::Display| KeyCheckError::Unavailable {
        bucket: kv.name.clone(),
        message: e.to_string(),
    };
    let mut subjects = kv
        .stream
        .info_with_subjects(format!("{}v.>", kv.prefix))
        .await
        .map_err(|e| unavailable(&e))?;
    let mut keys = Vec::new();
    while let Some((subject, _)) = subjects.try_next().await.map_err(|e| unavailable(&e))? {
        if let Some(key) = subject.strip_prefix(kv.prefix.as_str()) {
            keys.push(key.to_owned());
        }
    }
    keys.sort();
    Ok(keys)
}

/// What [`LocalStore::survey`] found.
#[derive(Debug, Default)]
struct Survey {
    values: usize,
    readable: usize,
    /// Keys (credential and version, never values) of the values that do not decrypt.
    unreadable: Vec<String>,
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

    #[test]
    fn a_key_id_is_stable_per_key_differs_between_keys_and_shows_nothing_of_the_key() {
        let (a, b) = (MasterKey::generate(), MasterKey::generate());
        let id = KeyId::of(&a);
        assert_eq!(id, KeyId::of(&MasterKey::from_hex(&a.to_hex()).unwrap()));
        assert_ne!(id, KeyId::of(&b));
        let shown = id.to_string();
        assert_eq!(shown.len(), 16);
        assert_eq!(KeyId::parse(&shown), Some(id));
        // Not a slice of the key, nor of its plain SHA-256.
        let key_hex = a.to_hex();
        assert!(!key_hex.contains(&shown));
        use sha2::Digest;
        let plain = hex::encode(sha2::Sha256::digest(a.0.as_ref()));
        assert!(!plain.contains(&shown));
    }

    #[test]
    fn a_known_test_vector_pins_the_key_id() {
        // HMAC-SHA256(key = bytes 0x00..=0x1f, "keyloop master key id v1"), first 8 bytes, as
        // Python's hmac module computes it. Pinned: changing the derivation would orphan every
        // store's check value.
        let key =
            MasterKey::from_hex("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
                .unwrap();
        assert_eq!(KeyId::of(&key).to_string(), "ce2dd2d801885826");
    }

    #[test]
    fn a_key_check_opens_with_its_key_only() {
        let (a, b) = (MasterKey::generate(), MasterKey::generate());
        let check = KeyCheck::seal(&a);
        let decoded = KeyCheck::decode(&check.encode()).unwrap();
        assert_eq!(decoded, check);
        assert_eq!(decoded.verify(&a), Ok(()));
        assert_eq!(
            decoded.verify(&b),
            Err(CheckRefusal::OtherKey(KeyId::of(&a)))
        );
    }

    #[test]
    fn a_key_check_with_a_copied_id_or_a_flipped_bit_does_not_open() {
        let (a, b) = (MasterKey::generate(), MasterKey::generate());
        // Someone writes b's seal under a's id: the id matches a, the seal does not open.
        let forged = KeyCheck {
            key_id: KeyId::of(&a),
            sealed: KeyCheck::seal(&b).sealed,
        };
        assert_eq!(forged.verify(&a), Err(CheckRefusal::DoesNotOpen));
        let mut flipped = KeyCheck::seal(&a);
        let last = flipped.sealed.len() - 1;
        flipped.sealed[last] ^= 1;
        assert_eq!(flipped.verify(&a), Err(CheckRefusal::DoesNotOpen));
    }

    #[test]
    fn a_key_check_holds_neither_the_key_nor_anything_unreadable() {
        let a = MasterKey::generate();
        let encoded = String::from_utf8(KeyCheck::seal(&a).encode()).unwrap();
        assert!(encoded.starts_with("keyloop-key-check/1 "), "{encoded}");
        assert!(!encoded.contains(a.to_hex().as_str()));
        assert_eq!(encoded.split(' ').count(), 3);
        for bad in [
            &b""[..],
            b"keyloop-key-check/1",
            b"keyloop-key-check/2 0011223344556677 00",
            b"keyloop-key-check/1 zz11223344556677 00",
            b"keyloop-key-check/1 0011223344556677 0011",
            b"keyloop-key-check/1 0011223344556677 00 extra",
            b"\xff\xfe",
        ] {
            assert_eq!(KeyCheck::decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_mismatch_names_both_key_ids_and_never_the_key() {
        let (a, b) = (MasterKey::generate(), MasterKey::generate());
        let m = KeyMismatch {
            bucket: "keyloop_secrets".into(),
            given: KeyId::of(&b),
            expected: Expected::Key(KeyId::of(&a)),
        };
        let text = m.to_string();
        assert!(text.contains(&KeyId::of(&a).to_string()), "{text}");
        assert!(text.contains(&KeyId::of(&b).to_string()), "{text}");
        assert!(text.contains("keyloop_secrets"), "{text}");
        assert!(!text.contains(a.to_hex().as_str()) && !text.contains(b.to_hex().as_str()));
        let legacy = KeyMismatch {
            expected: Expected::Unrecorded { values: 3 },
            ..m
        };
        assert!(legacy.to_string().contains("3 value(s)"), "{legacy}");
    }
}
