//! The consume runtime every worker shares: one durable pull consumer per role (shared by all
//! replicas, so a replica adds throughput), bounded concurrency, and one place that decides
//! what happens to a message after its handler ran:
//!
//! - `Ok` → ack. Handlers return only after their effects and lifecycle events are durable.
//! - a transient error → nak with a delay that grows with the delivery count (with jitter),
//!   until the last allowed delivery;
//! - a permanent error, or a transient one on the last delivery → the message is copied to
//!   `<prefix>.dlq.<role>` with the reason and then terminated. If the DLQ publish fails the
//!   message is nak'ed instead: nothing is dropped.
//!
//! Shutdown stops pulling, finishes the messages in hand, then returns.

use crate::bus::{
    Bus, DLQ_DELIVERIES_HEADER, DLQ_REASON_HEADER, DLQ_SEQUENCE_HEADER, DLQ_SUBJECT_HEADER,
};
use crate::error::{Error, ErrorKind};
use crate::topology::{ACK_WAIT, MAX_DELIVER, Role};
use async_nats::HeaderMap;
use async_nats::jetstream::consumer::pull::MessagesErrorKind;
use async_nats::jetstream::{self, AckKind};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

/// Idle heartbeat of pull requests: a dead server or consumer leader is noticed after two.
const PULL_HEARTBEAT: Duration = Duration::from_secs(2);
/// Lifetime of one pull request.
const PULL_EXPIRES: Duration = Duration::from_secs(10);

/// Largest inbound message a worker accepts; larger ones go to the DLQ unread.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// A message handed to a handler.
#[derive(Debug)]
pub struct Delivery {
    /// The JetStream message.
    pub message: jetstream::Message,
    /// 1 on first delivery.
    pub attempt: u64,
    /// True when a transient failure now will send the message to the DLQ.
    pub last_attempt: bool,
    /// When the message was stored in its stream (server time).
    pub published: time::OffsetDateTime,
    /// Its stream sequence.
    pub stream_sequence: u64,
}

/// A handler's failure: whether retrying can help, and the reason for the DLQ and the log.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct HandlerError {
    /// Transient: retry later. Permanent: DLQ now.
    pub kind: ErrorKind,
    /// Words for the operator; never a secret value.
    pub reason: String,
}

impl HandlerError {
    /// A failure that will not go away by retrying (malformed message, unknown type).
    pub fn permanent(reason: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Permanent,
            reason: reason.into(),
        }
    }

    /// A failure worth retrying (server or backend unavailable, lost race).
    pub fn transient(reason: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Transient,
            reason: reason.into(),
        }
    }
}

impl From<Error> for HandlerError {
    fn from(e: Error) -> Self {
        let kind = if e.is_transient() {
            ErrorKind::Transient
        } else {
            ErrorKind::Permanent
        };
        Self {
            kind,
            reason: e.to_string(),
        }
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
}

impl Default for ConsumeConfig {
    fn default() -> Self {
        Self {
            concurrency: 64,
            base_retry_delay: Duration::from_millis(200),
            max_retry_delay: Duration::from_secs(20),
        }
    }
}

/// Counters of one consume loop, for metrics and tests.
#[derive(Debug, Default)]
pub struct ConsumeStats {
    /// Messages acked.
    pub acked: AtomicU64,
    /// Messages nak'ed for a retry.
    pub retried: AtomicU64,
    /// Messages sent to the DLQ.
    pub dead_lettered: AtomicU64,
}

/// Runs `handler` over the durable consumer of `role` until `shutdown` is cancelled, then
/// finishes the messages in hand. The consumer must exist (`keyloop init`).
pub async fn consume(
    bus: Bus,
    role: Role,
    config: ConsumeConfig,
    handler: Handler,
    stats: Arc<ConsumeStats>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let (stream_name, _) = bus.topology.consumer_of(role);
    let consumer: jetstream::consumer::PullConsumer = bus
        .js
        .get_consumer_from_stream(role.name(), &stream_name)
        .await
        .map_err(|e| {
            Error::new(
                ErrorKind::NotFound,
                format!(
                    "consumer {} on stream {stream_name} (run `keyloop init`)",
                    role.name()
                ),
                e,
            )
        })?;
    info!(role = role.name(), stream = %stream_name, concurrency = config.concurrency, "worker consuming");

    // A message whose deliveries all ended without an outcome (every worker holding it died)
    // is dropped by JetStream with only an advisory: catch it and put it in the DLQ.
    let exhausted = tokio::spawn(watch_exhausted(bus.clone(), role, shutdown.clone()));

    let permits = Arc::new(Semaphore::new(config.concurrency));
    let mut in_flight = JoinSet::new();
    let config = Arc::new(config);
    let mut handed_back = 0u64;
    // The outer loop survives broker faults: a pull stream that ends or keeps failing (leader
    // change, server restart, consumer recreated by `init`) is opened again with backoff; it
    // never takes the worker down.
    let mut reopen_delay = Duration::from_millis(100);
    'open: while !shutdown.is_cancelled() {
        let opened = consumer
            .stream()
            .max_messages_per_batch(config.concurrency)
            .heartbeat(PULL_HEARTBEAT)
            .expires(PULL_EXPIRES)
            .messages()
            .await;
        let mut messages = match opened {
            Ok(m) => m,
            Err(e) => {
                warn!(role = role.name(), error = %e, retry_in_ms = reopen_delay.as_millis() as u64, "cannot pull from consumer; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => break 'open,
                    () = tokio::time::sleep(reopen_delay) => {}
                }
                reopen_delay = (reopen_delay * 2).min(Duration::from_secs(5));
                continue 'open;
            }
        };
        let mut consecutive_errors = 0u32;
        loop {
            let permit = tokio::select! {
                () = shutdown.cancelled() => break,
                p = permits.clone().acquire_owned() => p.expect("semaphore is never closed"),
            };
            let next = tokio::select! {
                () = shutdown.cancelled() => break,
                next = messages.next() => next,
            };
            while in_flight.try_join_next().is_some() {}
            let message = match next {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    consecutive_errors += 1;
                    warn!(role = role.name(), error = %e, consecutive_errors, "pull consumer hiccup");
                    let fatal = matches!(
                        e.kind(),
                        MessagesErrorKind::ConsumerDeleted
                            | MessagesErrorKind::RequestLimitExceeded
                    );
                    if fatal || consecutive_errors >= 3 {
                        continue 'open;
                    }
                    continue;
                }
                None => {
                    warn!(role = role.name(), "pull stream ended; reopening");
                    continue 'open;
                }
            };
            consecutive_errors = 0;
            reopen_delay = Duration::from_millis(100);
            let (bus, handler, stats, config) =
                (bus.clone(), handler.clone(), stats.clone(), config.clone());
            in_flight.spawn(async move {
                process(&bus, role, &config, &handler, &stats, message).await;
                drop(permit);
            });
        }
        // Shutdown: messages already delivered to this client but not started are handed back
        // at once (nak without delay), so another replica takes them now instead of after the
        // ack wait.
        while let Some(Some(Ok(m))) = messages.next().now_or_never() {
            let _ = m.ack_with(AckKind::Nak(None)).await;
            handed_back += 1;
        }
        break;
    }
    if handed_back > 0 {
        info!(
            role = role.name(),
            handed_back, "shutdown: handed back messages not yet started"
        );
    }
    // Then every message in hand finishes: none is half-done.
    let pending = in_flight.len();
    if pending > 0 {
        info!(
            role = role.name(),
            pending, "shutdown: finishing messages in hand"
        );
    }
    while in_flight.join_next().await.is_some() {}
    // Acks are buffered by the client: send them before the process exits, or the messages
    // just finished would be redelivered.
    if let Err(e) = bus.client.flush().await {
        warn!(role = role.name(), error = %e, "could not flush the last acks; those messages will be redelivered (harmless)");
    }
    exhausted.abort();
    info!(role = role.name(), "worker stopped");
    Ok(())
}

async fn process(
    bus: &Bus,
    role: Role,
    config: &ConsumeConfig,
    handler: &Handler,
    stats: &ConsumeStats,
    message: jetstream::Message,
) {
    let (attempt, stream_sequence, published) = match message.info() {
        Ok(info) => (
            info.delivered.max(1) as u64,
            info.stream_sequence,
            info.published,
        ),
        Err(_) => (1, 0, time::OffsetDateTime::now_utc()),
    };
    let subject = message.subject.to_string();
    let span = info_span!("message", role = role.name(), %subject, seq = stream_sequence, attempt);
    async move {
        let size = message.payload.len();
        let delivery = Arc::new(Delivery {
            message,
            attempt,
            last_attempt: attempt >= MAX_DELIVER as u64,
            published,
            stream_sequence,
        });
        let outcome = if size > MAX_MESSAGE_BYTES {
            Err(HandlerError::permanent(format!(
                "message of {size} bytes is over the {MAX_MESSAGE_BYTES}-byte limit"
            )))
        } else {
            // Tell JetStream the message is being worked on, so a short ack wait (fast
            // redelivery after a crash or failover) never redelivers a slow but live operation.
            let work = handler(delivery.clone());
            tokio::pin!(work);
            let mut progress = tokio::time::interval(ACK_WAIT / 3);
            progress.tick().await;
            loop {
                tokio::select! {
                    outcome = &mut work => break outcome,
                    _ = progress.tick() => {
                        let _ = delivery.message.ack_with(AckKind::Progress).await;
                    }
                }
            }
        };
        let message = &delivery.message;
        match outcome {
            Ok(()) => {
                if let Err(e) = message.ack().await {
                    // The effects are durable and idempotent; a lost ack only means a redelivery.
                    warn!(error = %e, "ack failed; the message will be redelivered and is idempotent");
                }
                stats.acked.fetch_add(1, Ordering::Relaxed);
                crate::metrics::global().role(role).acked.fetch_add(1, Ordering::Relaxed);
                debug!("done");
            }
            Err(e) if e.kind == ErrorKind::Transient && !delivery.last_attempt => {
                let delay = retry_delay(config, attempt, stream_sequence);
                warn!(reason = %e.reason, retry_in_ms = delay.as_millis() as u64, "transient failure; will retry");
                let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
                stats.retried.fetch_add(1, Ordering::Relaxed);
                crate::metrics::global().role(role).retried.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                let reason = if e.kind == ErrorKind::Transient {
                    format!("gave up after {attempt} deliveries: {}", e.reason)
                } else {
                    e.reason
                };
                match dead_letter(bus, role, &delivery, &reason).await {
                    Ok(()) => {
                        error!(%reason, "message sent to the DLQ");
                        let _ = message.ack_with(AckKind::Term).await;
                        stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                        crate::metrics::global().role(role).dead_lettered.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(dlq_err) => {
                        error!(%reason, error = %dlq_err, "could not write to the DLQ; will retry the message");
                        let delay = retry_delay(config, attempt, stream_sequence);
                        let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
                    }
                }
            }
        }
    }
    .instrument(span)
    .await;
}

/// Listens (one replica per role, through a queue group) for JetStream's max-deliveries
/// advisories of the role's consumer, and moves each such message to the DLQ with the reason;
/// on the work-queue stream the original is then deleted, so nothing lingers or vanishes.
async fn watch_exhausted(bus: Bus, role: Role, shutdown: CancellationToken) {
    #[derive(serde::Deserialize)]
    struct Advisory {
        stream_seq: u64,
        deliveries: u64,
    }
    let (stream_name, _) = bus.topology.consumer_of(role);
    let subject = format!(
        "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream_name}.{}",
        role.name()
    );
    let group = format!("keyloop-{}-exhausted", role.name());
    let Ok(mut advisories) = bus.client.queue_subscribe(subject.clone(), group).await else {
        warn!(%subject, "cannot watch for exhausted messages");
        return;
    };
    loop {
        let msg = tokio::select! {
            () = shutdown.cancelled() => return,
            m = advisories.next() => match m { Some(m) => m, None => return },
        };
        let Ok(advisory) = serde_json::from_slice::<Advisory>(&msg.payload) else {
            continue;
        };
        let seq = advisory.stream_seq;
        let Ok(stream) = bus.js.get_stream_no_info(&stream_name).await else {
            continue;
        };
        let Ok(original) = stream.get_raw_message(seq).await else {
            continue; // acked late or already removed: nothing lost
        };
        let reason = format!(
            "delivered {} times without an outcome: every worker holding it stopped (crashed or killed) before finishing",
            advisory.deliveries
        );
        let mut headers = HeaderMap::new();
        headers.insert(DLQ_REASON_HEADER, reason.as_str());
        headers.insert(DLQ_SUBJECT_HEADER, original.subject.as_str());
        headers.insert(DLQ_SEQUENCE_HEADER, seq.to_string().as_str());
        headers.insert(
            DLQ_DELIVERIES_HEADER,
            advisory.deliveries.to_string().as_str(),
        );
        let msg_id = format!("dlq/{stream_name}/{seq}");
        match bus
            .publish_raw(
                &bus.topology.dlq(role.name()),
                &msg_id,
                headers,
                original.payload.to_vec(),
            )
            .await
        {
            Ok(_) => {
                error!(role = role.name(), seq, %reason, "message sent to the DLQ");
                if stream_name == bus.topology.commands_stream() {
                    let _ = stream.delete_message(seq).await;
                }
            }
            Err(e) => {
                error!(role = role.name(), seq, error = %e, "could not move an exhausted message to the DLQ; it stays in its stream")
            }
        }
    }
}

/// Exponential delay with jitter derived from the message, so a burst of failures spreads out.
fn retry_delay(config: &ConsumeConfig, attempt: u64, seq: u64) -> Duration {
    let exp = config
        .base_retry_delay
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(config.max_retry_delay);
    let jitter_pct = (seq.wrapping_mul(2_654_435_761) ^ attempt) % 25; // 0..25 %
    exp + exp * jitter_pct as u32 / 100
}

async fn dead_letter(
    bus: &Bus,
    role: Role,
    delivery: &Delivery,
    reason: &str,
) -> Result<(), Error> {
    let message = &delivery.message;
    let mut headers = HeaderMap::new();
    // Header values must be one line.
    headers.insert(
        DLQ_REASON_HEADER,
        reason.replace(['\r', '\n'], " ").as_str(),
    );
    headers.insert(DLQ_SUBJECT_HEADER, message.subject.as_str());
    headers.insert(
        DLQ_SEQUENCE_HEADER,
        delivery.stream_sequence.to_string().as_str(),
    );
    headers.insert(DLQ_DELIVERIES_HEADER, delivery.attempt.to_string().as_str());
    let (stream, _) = bus.topology.consumer_of(role);
    let msg_id = format!("dlq/{stream}/{}", delivery.stream_sequence);
    bus.publish_raw(
        &bus.topology.dlq(role.name()),
        &msg_id,
        headers,
        message.payload.to_vec(),
    )
    .await
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_grows_and_is_capped() {
        let c = ConsumeConfig::default();
        let d1 = retry_delay(&c, 1, 7);
        let d3 = retry_delay(&c, 3, 7);
        let d20 = retry_delay(&c, 20, 7);
        assert!(d1 >= c.base_retry_delay && d1 < c.base_retry_delay * 2);
        assert!(d3 >= c.base_retry_delay * 4);
        assert!(d20 <= c.max_retry_delay + c.max_retry_delay / 4);
    }
}
