//! Trying again an operation that lost a race to a concurrent writer: the loser reads what the
//! winner wrote and decides again, after a short jittered pause (backon), a few times at most.
//! Used where two attempts of one step (a redelivery, a second replica, a second registration)
//! can meet on one record: the key check value of the local store, a version of an AWS secret.

use backon::ExponentialBuilder;
use std::time::Duration;

/// Tries of one raced operation in all: a race is lost to a writer whose result the next read
/// sees, so a third loss in a row means the record keeps changing, which is worth an error.
const ATTEMPTS: usize = 3;

/// The pause between tries: a few milliseconds, jittered so the racers fall out of step.
pub(crate) fn backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(1))
        .with_max_delay(Duration::from_millis(10))
        .with_max_times(ATTEMPTS - 1)
        .with_jitter()
}

/// Why one try did not finish.
#[derive(Debug)]
pub(crate) enum Attempt<E> {
    /// Another writer got there between our read and our write: read and decide again.
    Raced,
    /// Anything else: returned as it is.
    Failed(E),
}

impl<E> Attempt<E> {
    /// Whether trying again can help (for backon's `when`).
    pub(crate) fn is_raced(&self) -> bool {
        matches!(self, Self::Raced)
    }
}

impl<E> From<E> for Attempt<E> {
    fn from(e: E) -> Self {
        Self::Failed(e)
    }
}

/// The outcome of the tries as the caller's error: `exhausted` when every one lost its race.
pub(crate) fn settle<T, E>(
    outcome: Result<T, Attempt<E>>,
    exhausted: impl FnOnce() -> E,
) -> Result<T, E> {
    outcome.map_err(|e| match e {
        Attempt::Raced => exhausted(),
        Attempt::Failed(e) => e,
    })
}
