//! Wrappers every store and target goes through: in-process retries of transient failures
//! (backon, jittered, bounded), and — for tests and game days only — fault injection that makes
//! a share of calls fail transiently, or some operations fail permanently.
//!
//! A call still failing after its in-process retries is reported as it is: the consume runtime
//! then naks the message with a growing delay, and gives up into the DLQ after the bounded
//! number of deliveries.

use crate::{BackendError, BackendErrorKind, Store, Target};
use backon::{ExponentialBuilder, Retryable};
use futures::future::BoxFuture;
use keyloop_core::{Credential, RevokeReason, Secret};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use uuid::Uuid;

/// In-process attempts of one backend call (the first included).
const ATTEMPTS: usize = 3;

fn backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(10))
        .with_max_delay(Duration::from_millis(200))
        .with_max_times(ATTEMPTS - 1)
        .with_jitter()
}

fn is_transient(e: &BackendError) -> bool {
    e.kind == BackendErrorKind::Transient
}

/// Faults to inject: `transient=0.3` (30 % of calls fail transiently), `permanent=apply,test`
/// (those operations always fail permanently), comma- or space-separated.
#[derive(Debug)]
pub struct Faults {
    transient_per_million: u64,
    permanent: Vec<String>,
    state: AtomicU64,
    injected: AtomicU64,
}

/// A fault specification that could not be read.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid fault specification `{0}`: expected e.g. `transient=0.3` and/or `permanent=apply,invalidate`"
)]
pub struct FaultSpecError(String);

impl Faults {
    /// Parses a specification (see the type's docs).
    pub fn parse(spec: &str) -> Result<Self, FaultSpecError> {
        let err = || FaultSpecError(spec.chars().take(80).collect());
        let mut faults = Self {
            transient_per_million: 0,
            permanent: Vec::new(),
            state: AtomicU64::new(0x9E37_79B9_7F4A_7C15),
            injected: AtomicU64::new(0),
        };
        for part in spec.split_whitespace().flat_map(|p| p.split(';')) {
            match part.split_once('=') {
                Some(("transient", rate)) => {
                    let rate: f64 = rate.parse().map_err(|_| err())?;
                    if !(0.0..=1.0).contains(&rate) {
                        return Err(err());
                    }
                    faults.transient_per_million = (rate * 1e6) as u64;
                }
                Some(("permanent", ops)) => {
                    faults.permanent.extend(ops.split(',').map(str::to_owned))
                }
                Some(("seed", seed)) => {
                    faults.state = AtomicU64::new(seed.parse().map_err(|_| err())?)
                }
                _ => return Err(err()),
            }
        }
        Ok(faults)
    }

    /// How many faults were injected so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }

    /// splitmix64 over a shared counter: cheap, lock-free, reproducible from the seed.
    fn next(&self) -> u64 {
        let mut z = self
            .state
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn check(&self, op: &str, credential: &Credential) -> Result<(), BackendError> {
        if self.permanent.iter().any(|p| p == op) {
            self.injected.fetch_add(1, Ordering::Relaxed);
            return Err(BackendError::permanent(format!(
                "injected permanent fault in {op} for credential {}",
                credential.id
            )));
        }
        if self.transient_per_million > 0 && self.next() % 1_000_000 < self.transient_per_million {
            self.injected.fetch_add(1, Ordering::Relaxed);
            return Err(BackendError::transient(format!(
                "injected transient fault in {op} for credential {}",
                credential.id
            )));
        }
        Ok(())
    }
}

/// A store or target behind in-process retries and, when configured, injected faults.
pub struct Resilient<T: ?Sized> {
    inner: Arc<T>,
    faults: Option<Arc<Faults>>,
}

/// A store behind in-process retries and, when configured, injected faults.
pub type ResilientStore = Resilient<dyn Store>;
/// A target behind in-process retries and, when configured, injected faults.
pub type ResilientTarget = Resilient<dyn Target>;

impl<T: ?Sized> Resilient<T> {
    /// Wraps `inner`.
    pub fn new(inner: Arc<T>, faults: Option<Arc<Faults>>) -> Self {
        Self { inner, faults }
    }

    /// Runs `attempt` (one call of the inner backend) with fault injection in front of it and
    /// in-process retries of transient failures around both.
    fn call<'a, R, Fut>(
        &'a self,
        op: &'static str,
        credential: &'a Credential,
        mut attempt: impl FnMut() -> Fut + Send + 'a,
    ) -> BoxFuture<'a, Result<R, BackendError>>
    where
        T: Sync + Send,
        R: Send + 'a,
        Fut: std::future::Future<Output = Result<R, BackendError>> + Send + 'a,
    {
        Box::pin(
            (move || {
                let call = attempt();
                async move {
                    if let Some(f) = &self.faults {
                        f.check(op, credential)?;
                    }
                    call.await
                }
            })
            .retry(backoff())
            .when(is_transient),
        )
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for Resilient<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resilient")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl Store for Resilient<dyn Store> {
    fn put_new<'a>(
        &'a self,
        c: &'a Credential,
        v: Uuid,
        value: Secret,
    ) -> BoxFuture<'a, Result<Secret, BackendError>> {
        self.call("put_new", c, move || {
            self.inner.put_new(c, v, value.clone())
        })
    }

    fn get<'a>(
        &'a self,
        c: &'a Credential,
        v: Uuid,
    ) -> BoxFuture<'a, Result<Option<Secret>, BackendError>> {
        self.call("get", c, move || self.inner.get(c, v))
    }

    fn promote<'a>(
        &'a self,
        c: &'a Credential,
        v: Uuid,
        p: Option<Uuid>,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        self.call("promote", c, move || self.inner.promote(c, v, p))
    }

    fn destroy<'a>(
        &'a self,
        c: &'a Credential,
        v: Uuid,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        self.call("destroy", c, move || self.inner.destroy(c, v))
    }
}

impl Target for Resilient<dyn Target> {
    fn apply<'a>(
        &'a self,
        c: &'a Credential,
        v: Uuid,
        value: &'a Secret,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        self.call("apply", c, move || self.inner.apply(c, v, value))
    }

    fn test<'a>(
        &'a self,
        c: &'a Credential,
        v: Uuid,
        value: &'a Secret,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        self.call("test", c, move || self.inner.test(c, v, value))
    }

    fn invalidate<'a>(
        &'a self,
        c: &'a Credential,
        v: Uuid,
        value: Option<&'a Secret>,
        reason: RevokeReason,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        self.call("invalidate", c, move || {
            self.inner.invalidate(c, v, value, reason)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specifications_parse_and_bad_ones_say_what_is_expected() {
        let f = Faults::parse("transient=0.3 permanent=apply,test").unwrap();
        assert_eq!(f.transient_per_million, 300_000);
        assert_eq!(f.permanent, ["apply", "test"]);
        assert!(Faults::parse("transient=2").is_err());
        assert!(
            Faults::parse("chaos")
                .unwrap_err()
                .to_string()
                .contains("expected")
        );
    }

    #[test]
    fn the_transient_rate_is_roughly_the_configured_share() {
        let f = Faults::parse("transient=0.3").unwrap();
        let hits = (0..10_000)
            .filter(|_| f.next() % 1_000_000 < f.transient_per_million)
            .count();
        assert!((2_700..3_300).contains(&hits), "{hits}");
    }
}
