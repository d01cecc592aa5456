//! The key check value that binds a local store to one master key, and opening a store with
//! it ([`LocalStore::open_checked`]): a store refuses any other key before a value is read or
//! written, and says which key id it expects.

use super::{KEY_CHECK_KEY, KeyId, LocalStore, MasterKey, NONCE_LEN, cipher};
use crate::race::{self, Attempt};
use async_nats::jetstream::kv;
use backon::Retryable;
use chacha20poly1305::aead::{Aead, AeadCore, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use futures::TryStreamExt;
use std::fmt;

/// What the key check value seals: public, so that opening it proves only that the key fits.
const KEY_CHECK_PLAINTEXT: &[u8] = b"keyloop local store key check v1";
/// First field of an encoded key check value, naming its format.
const KEY_CHECK_FORMAT: &str = "keyloop-key-check/1";

/// A store's key check value: the id of its key and [`KEY_CHECK_PLAINTEXT`] sealed under the
/// key, bound to that id. Encoded as one line of text, so `nats kv get` shows it plainly:
/// `keyloop-key-check/1 <key id> <hex of nonce || ciphertext+tag>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct KeyCheck {
    pub(super) key_id: KeyId,
    pub(super) sealed: Vec<u8>,
}

/// Why a key check value refuses a key (before the bucket's name is attached).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CheckRefusal {
    OtherKey(KeyId),
    DoesNotOpen,
}

impl KeyCheck {
    fn aad(key_id: KeyId) -> String {
        format!("{KEY_CHECK_KEY}.{key_id}")
    }

    pub(super) fn seal(key: &MasterKey) -> Self {
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

    pub(super) fn encode(&self) -> Vec<u8> {
        format!(
            "{KEY_CHECK_FORMAT} {} {}",
            self.key_id,
            hex::encode(&self.sealed)
        )
        .into_bytes()
    }

    pub(super) fn decode(bytes: &[u8]) -> Option<Self> {
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
    pub(super) fn verify(&self, key: &MasterKey) -> Result<(), CheckRefusal> {
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
        Self::open_checked_with(kv, key, None).await
    }

    /// As [`LocalStore::open_checked`], while the master key itself is rotated: `key` is the
    /// new key, `previous` the store's key until [`LocalStore::rekey`] has re-sealed every
    /// value. The store's check value may name either (before the re-key, or after it); values
    /// open under either, and are sealed under `key`.
    pub async fn open_checked_with(
        kv: kv::Store,
        key: &MasterKey,
        previous: Option<&MasterKey>,
    ) -> Result<Self, KeyCheckError> {
        let store = Self {
            cipher: cipher(key),
            previous: previous.map(cipher),
            kv,
        };
        // A lost race to create the check value means another process just recorded one:
        // read it again, at most a few times.
        let outcome = (|| store.check_key(key, previous))
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
    async fn check_key(
        &self,
        key: &MasterKey,
        previous: Option<&MasterKey>,
    ) -> Result<(), Attempt<KeyCheckError>> {
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
                // Being re-keyed: the store is still the previous key's.
                Err(CheckRefusal::OtherKey(_))
                    if previous.is_some_and(|p| check.verify(p).is_ok()) =>
                {
                    Ok(())
                }
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
}

/// The keys of the values in `kv` (`v.<credential>.<version>`), from the subjects of the
/// bucket's stream as its stream info lists them. Not `kv.keys()`: that creates a consumer,
/// which the shipped permissions do not let workers do on this bucket. A destroyed value's key
/// may still be listed (its purge marker); reading it finds nothing.
pub(super) async fn value_keys(kv: &kv::Store) -> Result<Vec<String>, KeyCheckError> {
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
