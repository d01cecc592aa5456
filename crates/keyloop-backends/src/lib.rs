//! Where credential values live (`Store`) and the systems that accept them (`Target`), behind
//! two small traits so workers run the same rotation and revocation protocol on any backend.
//! Implemented here: the `local` store (values encrypted with XChaCha20-Poly1305 in a
//! JetStream KV bucket) and the `none` target.

pub mod local;
pub mod target;

use futures::future::BoxFuture;
use keyloop_core::{CredentialId, Secret};
use std::fmt;
use uuid::Uuid;

pub use local::{LocalStore, MasterKey, MasterKeyError};

/// A fresh credential value from the OS CSPRNG: `kl_` and 64 hex characters (256 bits).
pub fn generate_value() -> Secret {
    random_with_prefix("kl_")
}

/// A fresh JIT token from the OS CSPRNG: `klt_` and 64 hex characters (256 bits).
pub fn generate_token() -> Secret {
    random_with_prefix("klt_")
}

fn random_with_prefix(prefix: &str) -> Secret {
    use chacha20poly1305::aead::{OsRng, rand_core::RngCore};
    let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(bytes.as_mut());
    let mut text = String::with_capacity(prefix.len() + 64);
    text.push_str(prefix);
    text.push_str(&hex::encode(bytes.as_ref()));
    Secret::new(text)
}
pub use target::NoneTarget;

/// Whether retrying a backend call can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendErrorKind {
    /// Unreachable, throttled, timed out: retry.
    Transient,
    /// Misconfigured, refused, corrupt: retrying gives the same answer.
    Permanent,
}

/// A store or target call failed. The message names the credential and version and never
/// contains a value.
#[derive(Debug)]
pub struct BackendError {
    /// Retry or not.
    pub kind: BackendErrorKind,
    /// What failed, for whom, and what to do.
    pub message: String,
}

impl BackendError {
    /// A transient failure.
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            kind: BackendErrorKind::Transient,
            message: message.into(),
        }
    }

    /// A permanent failure.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            kind: BackendErrorKind::Permanent,
            message: message.into(),
        }
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for BackendError {}

/// Where a credential's values live. Every method is idempotent, because any step of the
/// rotation protocol may run again after a crash.
pub trait Store: Send + Sync + fmt::Debug {
    /// Stores `value` as `version` unless a value is already stored for it; returns the value
    /// that is stored now (the earlier one, if a previous attempt got this far).
    fn put_new<'a>(
        &'a self,
        credential: &'a CredentialId,
        version: Uuid,
        value: Secret,
    ) -> BoxFuture<'a, Result<Secret, BackendError>>;

    /// The value of `version`, or `None` if it was never stored or has been destroyed.
    fn get<'a>(
        &'a self,
        credential: &'a CredentialId,
        version: Uuid,
    ) -> BoxFuture<'a, Result<Option<Secret>, BackendError>>;

    /// Destroys the value of `version`. Destroying what is already gone succeeds.
    fn destroy<'a>(
        &'a self,
        credential: &'a CredentialId,
        version: Uuid,
    ) -> BoxFuture<'a, Result<(), BackendError>>;
}

/// The system that accepts a credential. Every method is idempotent.
pub trait Target: Send + Sync + fmt::Debug {
    /// Makes `value` valid at the target (the `set` step).
    fn apply<'a>(
        &'a self,
        credential: &'a CredentialId,
        version: Uuid,
        value: &'a Secret,
    ) -> BoxFuture<'a, Result<(), BackendError>>;

    /// Proves `value` works at the target (the `test` step).
    fn test<'a>(
        &'a self,
        credential: &'a CredentialId,
        version: Uuid,
        value: &'a Secret,
    ) -> BoxFuture<'a, Result<(), BackendError>>;

    /// Makes `version` invalid at the target and ends sessions that used it. When `value` is
    /// known the target proves it no longer works.
    fn invalidate<'a>(
        &'a self,
        credential: &'a CredentialId,
        version: Uuid,
        value: Option<&'a Secret>,
    ) -> BoxFuture<'a, Result<(), BackendError>>;
}
