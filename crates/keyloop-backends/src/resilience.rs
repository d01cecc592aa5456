//! Wrappers every store and target goes through: in-process retries of transient failures
//! (backon, jittered, bounded), and — for tests and game days only — fault injection that makes
//! a share of calls fail transiently, or some operations fail permanently.
//!
//! A call still failing after its in-process retries is reported as it is: the consume runtime
//! then naks the message with a growing delay, and gives up into the DLQ after the bounded
//! number of deliveries.

use crate::{BackendError, Store, Target};
use backon::{ExponentialBuilder, Retryable};
use futures::future::BoxFuture;
use keyloop_core::Retry;
use keyloop_core::{Credential, RevokeReason, Secret};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    e.kind == Retry::Transient
}

/// The store and target operations faults can be injected into.
pub const OPERATIONS: [&str; 7] = [
    "put_new",
    "get",
    "promote",
    "destroy",
    "apply",
    "test",
    "invalidate",
];

/// What an injected crash does once the operation it follows has succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    /// The process aborts at once: no destructor, no flush, no ack — as `kill -9` would leave it.
    Abort,
    /// The call never returns (tests in one process drop the operation's future, which leaves
    /// the same state behind: the effect happened, nothing after it did).
    Hang,
}

/// Faults to inject, comma- or space-separated:
/// - `transient=0.3`: 30 % of all calls fail transiently;
/// - `permanent=apply,test`: those operations always fail permanently;
/// - `flaky=apply:4`: the first 4 calls of `apply` fail transiently, then it recovers (more
///   than the in-process attempts, so the message is retried by redelivery);
/// - `crash=apply`: the first `apply` that succeeds is followed by a crash ([`CrashMode`]);
/// - `seed=N`: the seed of the transient share.
#[derive(Debug)]
pub struct Faults {
    transient_per_million: u64,
    permanent: Vec<String>,
    flaky: Vec<(String, AtomicU64)>,
    crash_after: Vec<String>,
    crash_mode: CrashMode,
    crashed: AtomicBool,
    crash_seen: tokio::sync::Notify,
    state: AtomicU64,
    injected: AtomicU64,
}

/// A fault specification that could not be read.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid fault specification `{0}`: expected e.g. `transient=0.3`, `permanent=apply,invalidate`, `flaky=apply:4` or `crash=test` (operations: put_new, get, promote, destroy, apply, test, invalidate)"
)]
pub struct FaultSpecError(String);

impl Faults {
    /// Parses a specification (see the type's docs). Crashes abort the process.
    pub fn parse(spec: &str) -> Result<Self, FaultSpecError> {
        let err = || FaultSpecError(spec.chars().take(80).collect());
        let operation = |op: &str| {
            if OPERATIONS.contains(&op) {
                Ok(op.to_owned())
            } else {
                Err(err())
            }
        };
        let mut faults = Self {
            transient_per_million: 0,
            permanent: Vec::new(),
            flaky: Vec::new(),
            crash_after: Vec::new(),
            crash_mode: CrashMode::Abort,
            crashed: AtomicBool::new(false),
            crash_seen: tokio::sync::Notify::new(),
            state: AtomicU64::new(0x9E37_79B9_7F4A_7C15),
            injected: AtomicU64::new(0),
        };
        for part in spec
            .split_whitespace()
            .flat_map(|p| p.split(';'))
            .filter(|p| !p.is_empty())
        {
            match part.split_once('=') {
                Some(("transient", rate)) => {
                    let rate: f64 = rate.parse().map_err(|_| err())?;
                    if !(0.0..=1.0).contains(&rate) {
                        return Err(err());
                    }
                    faults.transient_per_million = (rate * 1e6) as u64;
                }
                Some(("permanent", ops)) => {
                    for op in ops.split(',') {
                        faults.permanent.push(operation(op)?);
                    }
                }
                Some(("flaky", ops)) => {
                    for item in ops.split(',') {
                        let (op, n) = item.split_once(':').ok_or_else(err)?;
                        let n: u64 = n.parse().map_err(|_| err())?;
                        faults.flaky.push((operation(op)?, AtomicU64::new(n)));
                    }
                }
                Some(("crash", ops)) => {
                    for op in ops.split(',') {
                        faults.crash_after.push(operation(op)?);
                    }
                }
                Some(("seed", seed)) => {
                    faults.state = AtomicU64::new(seed.parse().map_err(|_| err())?)
                }
                _ => return Err(err()),
            }
        }
        Ok(faults)
    }

    /// The same faults, with crashes that hang the call instead of aborting the process.
    pub fn hang_on_crash(mut self) -> Self {
        self.crash_mode = CrashMode::Hang;
        self
    }

    /// How many faults were injected so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }

    /// Resolves once an injected crash happened (with [`CrashMode::Hang`]).
    pub async fn crashed(&self) {
        let seen = self.crash_seen.notified();
        if self.crashed.load(Ordering::SeqCst) {
            return;
        }
        seen.await;
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
            ))
            .before_any_change());
        }
        let flaky = self.flaky.iter().any(|(p, left)| {
            p == op
                && left
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
        });
        let random =
            self.transient_per_million > 0 && self.next() % 1_000_000 < self.transient_per_million;
        if flaky || random {
            self.injected.fetch_add(1, Ordering::Relaxed);
            return Err(BackendError::transient(format!(
                "injected transient fault in {op} for credential {}",
                credential.id
            ))
            .before_any_change());
        }
        Ok(())
    }

    /// After `op` succeeded: crash if asked to, once.
    async fn after(&self, op: &str, credential: &Credential) {
        if !self.crash_after.iter().any(|p| p == op) || self.crashed.swap(true, Ordering::SeqCst) {
            return;
        }
        self.injected.fetch_add(1, Ordering::Relaxed);
        tracing::error!(credential = %credential.id, op, "injected crash right after {op}");
        match self.crash_mode {
            CrashMode::Abort => std::process::abort(),
            CrashMode::Hang => {
                self.crash_seen.notify_waiters();
                futures::future::pending::<()>().await;
            }
        }
    }
}

/// A check every call must pass before it reaches the backend (the worker's claim fence): it
/// returns why the call may not go ahead.
pub type CallGuard = Arc<dyn Fn(&Credential) -> Result<(), BackendError> + Send + Sync>;

/// A store or target behind in-process retries and, when configured, injected faults and a
/// guard checked before every call.
pub struct Resilient<T: ?Sized> {
    inner: Arc<T>,
    faults: Option<Arc<Faults>>,
    guard: Option<CallGuard>,
}

/// A store behind in-process retries and, when configured, injected faults.
pub type ResilientStore = Resilient<dyn Store>;
/// A target behind in-process retries and, when configured, injected faults.
pub type ResilientTarget = Resilient<dyn Target>;

impl<T: ?Sized> Resilient<T> {
    /// Wraps `inner`.
    pub fn new(inner: Arc<T>, faults: Option<Arc<Faults>>) -> Self {
        Self {
            inner,
            faults,
            guard: None,
        }
    }

    /// The same, with `guard` checked before every call (and not retried when it refuses).
    pub fn guarded(mut self, guard: CallGuard) -> Self {
        self.guard = Some(guard);
        self
    }

    /// Runs `attempt` (one call of the inner backend) after the guard, with fault injection in
    /// front of it and in-process retries of transient failures around both.
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
        let retried = (move || {
            // The fault is decided before the backend call is even made: a backend that does
            // its work when the call is made, not when it is awaited, must not get there.
            let call = match &self.faults {
                Some(f) => f.check(op, credential),
                None => Ok(()),
            }
            .map(|()| attempt());
            async move {
                let result = call?.await;
                if let (Some(f), Ok(_)) = (&self.faults, &result) {
                    f.after(op, credential).await;
                }
                result
            }
        })
        .retry(backoff())
        .when(is_transient);
        Box::pin(async move {
            if let Some(guard) = &self.guard {
                guard(credential)?;
            }
            retried.await
        })
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

    fn acknowledged_write_reads_back(&self) -> bool {
        self.inner.acknowledged_write_reads_back()
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

    /// A login, like `test`: the same faults apply.
    fn accepts<'a>(
        &'a self,
        c: &'a Credential,
        v: Uuid,
        value: &'a Secret,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        self.call("test", c, move || self.inner.accepts(c, v, value))
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

    fn holds_values(&self) -> bool {
        self.inner.holds_values()
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
            Faults::parse("permanent=aply").is_err(),
            "a typo is refused"
        );
        let f = Faults::parse("flaky=apply:2 crash=test").unwrap();
        assert_eq!(f.flaky[0].0, "apply");
        assert_eq!(f.crash_after, ["test"]);
        assert!(Faults::parse("flaky=apply").is_err());
        assert!(
            Faults::parse("chaos")
                .unwrap_err()
                .to_string()
                .contains("expected")
        );
    }

    #[test]
    fn a_flaky_operation_fails_transiently_the_given_number_of_times_then_recovers() {
        let f = Faults::parse("flaky=apply:2").unwrap();
        let c = credential();
        let kinds: Vec<_> = (0..4)
            .map(|_| f.check("apply", &c).map_err(|e| e.kind))
            .collect();
        assert_eq!(
            kinds,
            [Err(Retry::Transient), Err(Retry::Transient), Ok(()), Ok(())]
        );
        assert!(f.check("test", &c).is_ok());
        assert_eq!(f.injected(), 2);
    }

    /// A target that does its work when the call is made, before the future is awaited.
    #[derive(Debug, Default)]
    struct Eager {
        applied: AtomicU64,
    }

    impl Target for Eager {
        fn apply<'a>(
            &'a self,
            _: &'a Credential,
            _: Uuid,
            _: &'a Secret,
        ) -> BoxFuture<'a, Result<(), BackendError>> {
            self.applied.fetch_add(1, Ordering::SeqCst);
            Box::pin(async { Ok(()) })
        }
        fn test<'a>(
            &'a self,
            _: &'a Credential,
            _: Uuid,
            _: &'a Secret,
        ) -> BoxFuture<'a, Result<(), BackendError>> {
            Box::pin(async { Ok(()) })
        }
        fn invalidate<'a>(
            &'a self,
            _: &'a Credential,
            _: Uuid,
            _: Option<&'a Secret>,
            _: RevokeReason,
        ) -> BoxFuture<'a, Result<(), BackendError>> {
            Box::pin(async { Ok(()) })
        }
    }

    #[tokio::test]
    async fn an_injected_fault_stops_the_call_before_the_backend_is_reached() {
        let eager = Arc::new(Eager::default());
        let faults = Arc::new(Faults::parse("permanent=apply").unwrap());
        let target = ResilientTarget::new(eager.clone(), Some(faults));
        let c = credential();
        let e = target
            .apply(&c, Uuid::nil(), &Secret::from("kl_x"))
            .await
            .unwrap_err();
        assert!(e.untouched, "{e}");
        assert_eq!(eager.applied.load(Ordering::SeqCst), 0);
        let healthy = ResilientTarget::new(eager.clone(), None);
        healthy
            .apply(&c, Uuid::nil(), &Secret::from("kl_x"))
            .await
            .unwrap();
        assert_eq!(eager.applied.load(Ordering::SeqCst), 1);
    }

    fn credential() -> Credential {
        serde_json::from_value(serde_json::json!({
            "id": "svc/x", "store": "local", "target": "none",
            "policy": {"grace_secs": 0}, "versions": [],
            "created_at": "2026-01-01T00:00:00Z"
        }))
        .unwrap()
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
