//! Where credential values live (`Store`) and the systems that accept them (`Target`), behind
//! two small traits so workers run the same rotation and revocation protocol on any backend.
//! Implemented here: the `local` store (values encrypted with XChaCha20-Poly1305 in a
//! JetStream KV bucket), the `aws-sm` store (AWS Secrets Manager with staging labels), the
//! `none` target and the `postgres` target (login roles, and JIT roles for leases).
//!
//! Every call gets the whole [`Credential`] record, because backends need its settings (secret
//! id, role, strategy) and, for `postgres`, which version holds which role.

pub mod aws_sm;
pub mod local;
pub mod postgres;
mod race;
pub mod resilience;
pub mod target;

use futures::future::BoxFuture;
use keyloop_core::Retry;
use keyloop_core::{Credential, RevokeReason, Secret, ValueFormat};
use std::fmt;
use uuid::Uuid;

pub use aws_sm::{AwsSecretsManager, AwsSmConfig};
pub use local::{LocalStore, MasterKey, MasterKeyError};
pub use postgres::{PostgresConfig, PostgresTarget};

/// A fresh credential value in `format` from the OS CSPRNG (see
/// [`keyloop_core::value_format`]): `klc_` + 30 random base62 characters + their CRC32, or
/// `kl_` + 64 hex characters. Callers pass the credential's own format
/// (`settings.value_format()`), so every rotation keeps the format it was registered with.
pub fn generate_value(format: ValueFormat) -> Secret {
    format.generate(&mut os_random)
}

/// A fresh JIT token from the OS CSPRNG: `klt_` and 64 hex characters (256 bits).
pub fn generate_token() -> Secret {
    let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
    os_random(bytes.as_mut());
    let mut text = String::with_capacity(4 + 64);
    text.push_str("klt_");
    text.push_str(&hex::encode(bytes.as_ref()));
    Secret::new(text)
}

fn os_random(buf: &mut [u8]) {
    use chacha20poly1305::aead::{OsRng, rand_core::RngCore};
    OsRng.fill_bytes(buf);
}
pub use resilience::{
    CallGuard, FaultSpecError, Faults, Resilient, ResilientStore, ResilientTarget,
};
pub use target::NoneTarget;

/// A store or target call failed. The message names the credential and version and never
/// contains a value.
#[derive(Debug)]
pub struct BackendError {
    /// Whether retrying can help.
    pub kind: Retry,
    /// What failed, for whom, and what to do.
    pub message: String,
    /// True when the call failed before it could change anything (no connection, refused
    /// before any statement was sent): the backend is known to be as it was. False when that
    /// is not known.
    pub untouched: bool,
}

impl BackendError {
    /// A transient failure.
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            kind: Retry::Transient,
            message: message.into(),
            untouched: false,
        }
    }

    /// A permanent failure.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            kind: Retry::Permanent,
            message: message.into(),
            untouched: false,
        }
    }

    /// The same failure, known to have changed nothing.
    pub fn before_any_change(mut self) -> Self {
        self.untouched = true;
        self
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
    /// Stores `value` as `version` (staged as pending where the store has stages) unless a
    /// value is already stored for it; returns the value that is stored now (the earlier one,
    /// if a previous attempt got this far).
    fn put_new<'a>(
        &'a self,
        credential: &'a Credential,
        version: Uuid,
        value: Secret,
    ) -> BoxFuture<'a, Result<Secret, BackendError>>;

    /// The value of `version`, or `None` if it was never stored or has been destroyed.
    fn get<'a>(
        &'a self,
        credential: &'a Credential,
        version: Uuid,
    ) -> BoxFuture<'a, Result<Option<Secret>, BackendError>>;

    /// The `finish` step, called after the target accepted `version` and before the inventory
    /// records it current: readers of the store now get `version` as current and `previous`
    /// (the version being demoted, if any) as previous, and nothing as pending. Stores without
    /// stages (`local`) have nothing to do.
    fn promote<'a>(
        &'a self,
        credential: &'a Credential,
        version: Uuid,
        previous: Option<Uuid>,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        let _ = (credential, version, previous);
        Box::pin(async { Ok(()) })
    }

    /// Destroys the value of `version` (where the store cannot delete a value, it removes
    /// every stage from it so no reader finds it). Destroying what is already gone succeeds.
    fn destroy<'a>(
        &'a self,
        credential: &'a Credential,
        version: Uuid,
    ) -> BoxFuture<'a, Result<(), BackendError>>;

    /// Whether an acknowledged `put_new` is its own proof that the value reads back, so the
    /// rotation's `test` step need not read it (the local store: JetStream acknowledged the
    /// value this process sealed). Stores that do not say so are read back.
    fn acknowledged_write_reads_back(&self) -> bool {
        false
    }
}

/// The system that accepts a credential. Every method is idempotent.
pub trait Target: Send + Sync + fmt::Debug {
    /// Makes `value` valid at the target (the `set` step). `version` is in `credential`.
    fn apply<'a>(
        &'a self,
        credential: &'a Credential,
        version: Uuid,
        value: &'a Secret,
    ) -> BoxFuture<'a, Result<(), BackendError>>;

    /// Proves `value` works at the target (the `test` step).
    fn test<'a>(
        &'a self,
        credential: &'a Credential,
        version: Uuid,
        value: &'a Secret,
    ) -> BoxFuture<'a, Result<(), BackendError>>;

    /// Whether the target accepts `value` for `version` now: `Ok(false)` when it refuses it (a
    /// failed login), an error when it cannot tell. Used to find out, after a failure, what the
    /// target holds. Targets that check nothing accept everything.
    fn accepts<'a>(
        &'a self,
        credential: &'a Credential,
        version: Uuid,
        value: &'a Secret,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        Box::pin(async move { self.test(credential, version, value).await.map(|()| true) })
    }

    /// Makes `version` invalid at the target and ends sessions that used it. When `value` is
    /// known the target proves it no longer works. `reason` lets a target end sessions it
    /// cannot tell apart from others when the value leaked.
    fn invalidate<'a>(
        &'a self,
        credential: &'a Credential,
        version: Uuid,
        value: Option<&'a Secret>,
        reason: RevokeReason,
    ) -> BoxFuture<'a, Result<(), BackendError>>;

    /// Whether the target holds values at all. One that does not (`none`) has no login to
    /// prove a death with, so a revocation reads no value for it, and nothing at it to undo,
    /// so a rotation records nothing before its (no-op) `set`.
    fn holds_values(&self) -> bool {
        true
    }
}

/// Replaces every occurrence of each of `secrets` in `text` with `[redacted]`: a last line of
/// defence for messages built from other libraries' errors, which might quote what they got.
pub(crate) fn redact(text: impl Into<String>, secrets: &[&str]) -> String {
    let mut text = text.into();
    for s in secrets.iter().filter(|s| s.len() >= 4) {
        if text.contains(*s) {
            text = text.replace(*s, "[redacted]");
        }
    }
    text
}
