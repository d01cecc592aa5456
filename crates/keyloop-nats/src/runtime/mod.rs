//! The consume runtime every worker shares: one durable pull consumer per role (shared by all
//! replicas, so a replica adds throughput), bounded concurrency, and one place that decides
//! what happens to a message after its handler ran:
//!
//! - `Ok` → ack. Handlers return only after their effects and lifecycle events are durable.
//! - a transient error → nak with a delay that grows with the delivery count (with jitter),
//!   until delivery [`ConsumeConfig::give_up_after`];
//! - a permanent error, or a transient one on that delivery → the message is copied to
//!   `<prefix>.dlq.<role>` with the reason, and terminated only once the copy is stored.
//!
//! The give-up is durable. While the DLQ cannot be written to, the message stays in hand for a
//! while ([`ConsumeConfig::dlq_hold`]): the write is retried with backoff and JetStream is told
//! the message is in progress, so nobody else gets it meanwhile. After that it is handed back
//! with a delay, so a long DLQ outage never ties up the permits that live messages (a
//! revocation) need. Consumers never run out of deliveries (`max_deliver` is unlimited,
//! see [`crate::topology::MAX_DELIVER`]), so a message handed back at shutdown, or held by a
//! worker that crashed or was killed, is delivered again; a delivery past the give-up point
//! goes straight to the DLQ without running the handler again. That also covers a message
//! that kills every worker holding it. (JetStream's own max-deliveries advisory, which this
//! runtime once listened to, is core NATS and best effort: nothing relies on it any more.)
//!
//! Shutdown stops pulling, hands back what was delivered but not started, and gives the
//! messages in hand [`ConsumeConfig::shutdown_grace`] to finish (a second, when the client has
//! lost its server: nothing can finish without it). What is still running then is abandoned
//! with a log line: it was not acked, so JetStream redelivers it after the ack wait, and
//! handlers are idempotent. Every wait on NATS at start and at stop is bounded or raced
//! against shutdown, so a worker stops within seconds even when its server is gone.
//!
//! One file per concern: `consume.rs` (the consume loop: finding the consumer, pulling,
//! shutdown), `process.rs` (one message: its handler and what then happens to it), `dlq.rs`
//! (the durable give-up), and here the types workers see.

mod consume;
mod dlq;
mod process;
#[cfg(test)]
mod tests;

use crate::error::Error;
use crate::topology::{ACK_WAIT, GIVE_UP_AFTER};
use async_nats::jetstream;
use futures::future::BoxFuture;
use keyloop_core::Retry;
use std::sync::Arc;
use std::time::Duration;

pub use consume::consume;

/// How long shutdown waits for the client to take or send one more ack, nak or flush: a
/// client cut off from its server takes nothing until it reconnects.
const STOP_IO_TIMEOUT: Duration = Duration::from_secs(1);

/// Largest inbound message a worker accepts; larger ones go to the DLQ unread.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// A message handed to a handler.
#[derive(Debug)]
pub struct Delivery {
    /// The JetStream message.
    pub message: jetstream::Message,
    /// 1 on first delivery.
    pub attempt: u64,
    /// True when a transient failure now will send the message to the DLQ (this delivery is
    /// the give-up point, [`ConsumeConfig::give_up_after`]).
    pub last_attempt: bool,
    /// When the message was stored in its stream (server time).
    pub published: time::OffsetDateTime,
    /// Its stream sequence.
    pub stream_sequence: u64,
}

/// A handler's failure: whether retrying can help, the reason for the DLQ and the log, and
/// the error it came from (kept for the log, never flattened away).
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct HandlerError {
    /// Transient: retry later. Permanent: DLQ now.
    pub kind: Retry,
    /// Words for the operator; never a secret value.
    pub reason: String,
    /// The underlying error, when there is one.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
    /// The soonest a retry may come, when the other side said so (an HTTP `Retry-After`): the
    /// nak delay is at least this, and at most [`MAX_RETRY_AFTER`].
    pub retry_after: Option<Duration>,
}

/// The longest delay a [`HandlerError::retry_after`] may ask for.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

impl HandlerError {
    /// A failure that will not go away by retrying (malformed message, unknown type).
    pub fn permanent(reason: impl Into<String>) -> Self {
        Self {
            kind: Retry::Permanent,
            reason: reason.into(),
            source: None,
            retry_after: None,
        }
    }

    /// A failure worth retrying (server or backend unavailable, lost race).
    pub fn transient(reason: impl Into<String>) -> Self {
        Self {
            kind: Retry::Transient,
            reason: reason.into(),
            source: None,
            retry_after: None,
        }
    }

    /// The failure `error`, classified `kind`, its text the reason.
    pub fn from_error(kind: Retry, error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self {
            kind,
            reason: error.to_string(),
            source: Some(Box::new(error)),
            retry_after: None,
        }
    }

    /// The same failure, retried no sooner than `after`.
    #[must_use]
    pub fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after.min(MAX_RETRY_AFTER));
        self
    }
}

impl From<Error> for HandlerError {
    fn from(e: Error) -> Self {
        Self::from_error(e.retry(), e)
    }
}

/// A worker's message handler.
pub type Handler =
    Arc<dyn Fn(Arc<Delivery>) -> BoxFuture<'static, Result<(), HandlerError>> + Send + Sync>;

/// How a role consumes.
#[derive(Debug, Clone)]
pub struct ConsumeConfig {
    /// Messages processed at once by this replica.
    pub concurrency: usize,
    /// First nak delay; doubled per delivery up to `max_retry_delay`.
    pub base_retry_delay: Duration,
    /// Longest nak delay.
    pub max_retry_delay: Duration,
    /// Deliveries the handler gets: a transient failure on the last one sends the message to
    /// the DLQ, and a later delivery (the last one ended without an outcome) goes there
    /// unhandled. Lowered to one less than the consumer's `max_deliver` when that is finite (a
    /// consumer made by an older `keyloop init`), so a delivery is always left for the DLQ.
    pub give_up_after: u64,
    /// How long shutdown waits for the messages in hand before abandoning them (unacked, so
    /// JetStream redelivers them after the ack wait).
    pub shutdown_grace: Duration,
    /// How long a message given up on is kept in hand while its DLQ copy cannot be written;
    /// then it is handed back (its next delivery, after the same delay, tries again), so a DLQ
    /// outage never holds more than a moment of this replica's concurrency.
    pub dlq_hold: Duration,
}

impl Default for ConsumeConfig {
    fn default() -> Self {
        Self {
            concurrency: 64,
            base_retry_delay: Duration::from_millis(200),
            max_retry_delay: Duration::from_secs(20),
            give_up_after: GIVE_UP_AFTER,
            shutdown_grace: Duration::from_secs(5),
            dlq_hold: ACK_WAIT,
        }
    }
}
