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

use crate::bus::{
    Bus, DLQ_DELIVERIES_HEADER, DLQ_REASON_HEADER, DLQ_SEQUENCE_HEADER, DLQ_SUBJECT_HEADER,
};
use crate::error::{Error, ErrorKind};
use crate::topology::{ACK_WAIT, GIVE_UP_AFTER, Role};
use async_nats::HeaderMap;
use async_nats::connection::State;
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::consumer::pull::{self, MessagesErrorKind};
use async_nats::jetstream::stream::{ConsumerError, ConsumerErrorKind};
use async_nats::jetstream::{self, AckKind};
use backon::{ExponentialBuilder, Retryable};
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
/// First delay between DLQ write attempts of a message kept in hand; it doubles up to a third
/// of the ack wait, so each retry also renews the message's progress in time.
const DLQ_RETRY_FIRST: Duration = Duration::from_millis(100);
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

/// Counters of one consume loop, for metrics and tests.
#[derive(Debug, Default)]
pub struct ConsumeStats {
    /// Messages acked.
    pub acked: AtomicU64,
    /// Messages nak'ed for a retry.
    pub retried: AtomicU64,
    /// Messages sent to the DLQ.
    pub dead_lettered: AtomicU64,
    /// DLQ writes that failed; the message stayed in hand and the write was retried.
    pub dlq_write_failed: AtomicU64,
    /// Messages handed back (at shutdown, or after [`ConsumeConfig::dlq_hold`]) before their DLQ
    /// copy could be stored; their next delivery goes to the DLQ.
    pub dlq_handed_back: AtomicU64,
}

/// Runs `handler` over the durable consumer of `role` until `shutdown` is cancelled, then
/// finishes the messages in hand within [`ConsumeConfig::shutdown_grace`]. The consumer must
/// exist (`keyloop init`); while the server does not answer, the lookup is retried until it
/// does or `shutdown` comes.
pub async fn consume(
    bus: Bus,
    role: Role,
    mut config: ConsumeConfig,
    handler: Handler,
    stats: Arc<ConsumeStats>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let (stream_name, _) = bus.topology.consumer_of(role);
    let Some(consumer) = find_consumer(&bus, role, &stream_name, &shutdown).await? else {
        info!(
            role = role.name(),
            "shutdown requested while looking up the consumer: abandoned the lookup, nothing consumed"
        );
        return Ok(());
    };
    let max_deliver = consumer.cached_info().config.max_deliver;
    config.give_up_after = effective_give_up(config.give_up_after, max_deliver);
    if max_deliver > 0 {
        warn!(
            role = role.name(),
            max_deliver,
            give_up_after = config.give_up_after,
            "the consumer has a delivery limit set by an older `keyloop init`; run `keyloop init` to lift it (JetStream never delivers a message again once it reaches the limit)"
        );
    }
    info!(role = role.name(), stream = %stream_name, concurrency = config.concurrency, give_up_after = config.give_up_after, "worker consuming");

    let permits = Arc::new(Semaphore::new(config.concurrency));
    let mut in_flight = JoinSet::new();
    let config = Arc::new(config);
    let mut handed_back = 0u64;
    // The outer loop survives broker faults: a pull stream that ends or keeps failing (leader
    // change, server restart, consumer recreated by `init`) is opened again (with backoff
    // while opening fails); it never takes the worker down. A loop, not a retry: the stream
    // it opens is the worker's whole life, and ending is what a stream does on such faults.
    'open: while !shutdown.is_cancelled() {
        let Some(mut messages) =
            open_messages(&consumer, role, config.concurrency, &shutdown).await
        else {
            break 'open;
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
            let (bus, handler, stats, config, stop) = (
                bus.clone(),
                handler.clone(),
                stats.clone(),
                config.clone(),
                shutdown.clone(),
            );
            in_flight.spawn(async move {
                process(&bus, role, &config, &handler, &stats, message, &stop).await;
                drop(permit);
            });
        }
        // Shutdown: messages already delivered to this client but not started are handed back
        // at once (nak without delay), so another replica takes them now instead of after the
        // ack wait.
        while let Some(Some(Ok(m))) = messages.next().now_or_never() {
            if tokio::time::timeout(STOP_IO_TIMEOUT, m.ack_with(AckKind::Nak(None)))
                .await
                .is_err()
            {
                warn!(
                    role = role.name(),
                    "shutdown: abandoned handing back messages not yet started (the server does not answer); they are redelivered after the ack wait"
                );
                break;
            }
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
    // Then the messages in hand finish, within the grace period. One still running after it
    // waits on something that does not answer (most often the server itself): it is abandoned
    // unacked, and its next delivery resumes it from its recorded step.
    let pending = in_flight.len();
    if pending > 0 {
        info!(
            role = role.name(),
            pending,
            grace_ms = config.shutdown_grace.as_millis() as u64,
            "shutdown: finishing messages in hand"
        );
    }
    let all_finished = async { while in_flight.join_next().await.is_some() {} };
    let cut_short = tokio::select! {
        () = all_finished => None,
        () = tokio::time::sleep(config.shutdown_grace) => Some("after the grace period"),
        () = server_gone(&bus.client) => Some("the server is gone"),
    };
    if let Some(why) = cut_short {
        warn!(
            role = role.name(),
            abandoned = in_flight.len(),
            grace_ms = config.shutdown_grace.as_millis() as u64,
            "shutdown: abandoned messages still in hand ({why}); they were not acked, so JetStream redelivers them after the ack wait"
        );
        in_flight.shutdown().await;
    }
    // Acks are buffered by the client: send them before the process exits, or the messages
    // just finished would be redelivered. Bounded: a flush waits for a server that may be gone.
    if bus.client.connection_state() != State::Connected {
        warn!(
            role = role.name(),
            "abandoned flushing the last acks: not connected to the server; those messages will be redelivered (harmless)"
        );
        info!(role = role.name(), "worker stopped");
        return Ok(());
    }
    match tokio::time::timeout(STOP_IO_TIMEOUT, bus.client.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            warn!(role = role.name(), error = %e, "could not flush the last acks; those messages will be redelivered (harmless)")
        }
        Err(_) => warn!(
            role = role.name(),
            timeout_ms = STOP_IO_TIMEOUT.as_millis() as u64,
            "abandoned flushing the last acks: the server does not answer; those messages will be redelivered (harmless)"
        ),
    }
    info!(role = role.name(), "worker stopped");
    Ok(())
}

/// Resolves once the client has been without its server for [`STOP_IO_TIMEOUT`] on end:
/// nothing in hand can finish then (every handler needs NATS, if only to ack). The client
/// offers its state only by asking, so it is asked every tenth of a second, during shutdown
/// only.
async fn server_gone(client: &async_nats::Client) {
    let mut lost_at = None;
    loop {
        if client.connection_state() == State::Connected {
            lost_at = None;
        } else {
            let at = *lost_at.get_or_insert_with(tokio::time::Instant::now);
            if at.elapsed() >= STOP_IO_TIMEOUT {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits between tries to reach the server at start (looking the consumer up, opening its pull
/// stream): from 100 ms, doubling, at most 5 s, for as long as it takes.
fn reconnect_backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .without_max_times()
}

/// Looks up the durable consumer of `role`, retrying while the server does not answer; `None`
/// when `shutdown` comes first. A consumer or stream that does not exist is an error at once.
async fn find_consumer(
    bus: &Bus,
    role: Role,
    stream_name: &str,
    shutdown: &CancellationToken,
) -> Result<Option<PullConsumer>, Error> {
    let missing = |e: &ConsumerError| match e.kind() {
        ConsumerErrorKind::JetStream(js) => matches!(
            js.error_code(),
            ErrorCode::CONSUMER_NOT_FOUND | ErrorCode::STREAM_NOT_FOUND
        ),
        ConsumerErrorKind::InvalidConsumerType | ConsumerErrorKind::InvalidName => true,
        _ => false,
    };
    let lookup = (|| bus.js.get_consumer_from_stream(role.name(), stream_name))
        .retry(reconnect_backoff())
        .when(|e| !missing(e))
        .notify(|e, delay| {
            warn!(role = role.name(), stream = stream_name, error = %e, retry_in_ms = delay.as_millis() as u64, "cannot look up the consumer; retrying");
        });
    let found = tokio::select! {
        () = shutdown.cancelled() => return Ok(None),
        found = lookup => found,
    };
    found.map(Some).map_err(|e| {
        Error::new(
            ErrorKind::NotFound,
            format!(
                "consumer {} on stream {stream_name} (run `keyloop init`)",
                role.name()
            ),
            e,
        )
    })
}

/// Opens the pull stream of `consumer`, retrying while the server refuses; `None` when
/// `shutdown` comes first.
async fn open_messages(
    consumer: &PullConsumer,
    role: Role,
    concurrency: usize,
    shutdown: &CancellationToken,
) -> Option<pull::Stream> {
    let open = (|| {
        consumer
            .stream()
            .max_messages_per_batch(concurrency)
            .heartbeat(PULL_HEARTBEAT)
            .expires(PULL_EXPIRES)
            .messages()
    })
    .retry(reconnect_backoff())
    .notify(|e, delay| {
        warn!(role = role.name(), error = %e, retry_in_ms = delay.as_millis() as u64, "cannot pull from consumer; retrying");
    });
    tokio::select! {
        () = shutdown.cancelled() => None,
        // Retried for as long as it takes: only shutdown ends it without a stream.
        opened = open => opened.ok(),
    }
}

/// The delivery a runtime gives up on: `wanted`, or one less than a finite `max_deliver`, so
/// JetStream always keeps one more delivery for the DLQ.
fn effective_give_up(wanted: u64, max_deliver: i64) -> u64 {
    let wanted = wanted.max(1);
    match u64::try_from(max_deliver) {
        Ok(limit) if limit > 0 => wanted.min(limit.saturating_sub(1)).max(1),
        _ => wanted,
    }
}

async fn process(
    bus: &Bus,
    role: Role,
    config: &ConsumeConfig,
    handler: &Handler,
    stats: &ConsumeStats,
    message: jetstream::Message,
    shutdown: &CancellationToken,
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
            last_attempt: attempt >= config.give_up_after,
            published,
            stream_sequence,
        });
        let outcome = if attempt > config.give_up_after {
            // The handler had all its deliveries and the last one ended without an outcome:
            // the worker holding it crashed, was killed (a message that kills every worker
            // comes back here) or stopped before its DLQ copy could be stored.
            Err(HandlerError::permanent(format!(
                "gave up after {} deliveries: the last one ended without an outcome (the worker holding it crashed, was killed, or stopped while the DLQ could not be written to)",
                attempt - 1
            )))
        } else if size > MAX_MESSAGE_BYTES {
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
                // Not stored: the message is handed back. The consumer has deliveries to spare
                // (see `MAX_DELIVER`), and the next one ends here again: past the give-up point
                // without running the handler, and a permanent failure fails again. So a hand-back
                // loses nothing; it only loses the reason's detail.
                let hand_back = match dead_letter_durably(bus, role, config, &delivery, &reason, stats, shutdown).await {
                    DeadLetter::Stored => {
                        error!(%reason, "message sent to the DLQ");
                        // Terminated only now that its copy is stored. A lost termination costs
                        // one more delivery, whose second DLQ copy the DLQ's dedup window drops.
                        let _ = message.ack_with(AckKind::Term).await;
                        stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                        crate::metrics::global().role(role).dead_lettered.fetch_add(1, Ordering::Relaxed);
                        None
                    }
                    DeadLetter::Shutdown => {
                        warn!(%reason, "shutdown before the DLQ copy could be stored; handed the message back: its next delivery goes to the DLQ");
                        Some(AckKind::Nak(None))
                    }
                    DeadLetter::HeldTooLong => {
                        warn!(%reason, held_ms = config.dlq_hold.as_millis() as u64, "the DLQ is still unavailable; handed the message back: its next delivery tries the DLQ again");
                        Some(AckKind::Nak(Some(config.dlq_hold)))
                    }
                };
                if let Some(nak) = hand_back {
                    let _ = tokio::time::timeout(STOP_IO_TIMEOUT, message.ack_with(nak)).await;
                    stats.dlq_handed_back.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    .instrument(span)
    .await;
}

/// How a DLQ write that kept the message in hand ended.
enum DeadLetter {
    /// The copy is stored.
    Stored,
    /// Shutdown came first.
    Shutdown,
    /// The DLQ refused it for [`ConsumeConfig::dlq_hold`].
    HeldTooLong,
}

/// Writes the DLQ copy of a message, keeping the message in hand until the copy is stored, for
/// at most [`ConsumeConfig::dlq_hold`]: before each attempt (they back off up to a third of the
/// ack wait) JetStream is told the message is in progress, so it is not redelivered meanwhile.
async fn dead_letter_durably(
    bus: &Bus,
    role: Role,
    config: &ConsumeConfig,
    delivery: &Delivery,
    reason: &str,
    stats: &ConsumeStats,
    shutdown: &CancellationToken,
) -> DeadLetter {
    let hold_until = tokio::time::Instant::now() + config.dlq_hold;
    let failures = AtomicU64::new(0);
    let write = || async {
        // Renewed before every attempt: a write that times out takes a good part of the ack
        // wait.
        let _ = delivery.message.ack_with(AckKind::Progress).await;
        dead_letter(bus, role, delivery, reason)
            .await
            .inspect_err(|dlq_err| {
                let failures = failures.fetch_add(1, Ordering::Relaxed) + 1;
                stats.dlq_write_failed.fetch_add(1, Ordering::Relaxed);
                crate::metrics::global()
                    .role(role)
                    .dlq_write_failed
                    .fetch_add(1, Ordering::Relaxed);
                // Loud at first, then every tenth failure: an unwritable DLQ is an incident, a
                // line per retry would be noise.
                if failures == 1 || failures.is_multiple_of(10) {
                    error!(%reason, error = %dlq_err, failures, "could not write to the DLQ; keeping the message in hand and retrying");
                }
            })
    };
    let written = write
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(DLQ_RETRY_FIRST)
                .with_max_delay(ACK_WAIT / 3)
                .without_max_times(),
        )
        // The hold is wall-clock time, the attempts included: the last pause ends at it, and
        // a failure after it hands the message back.
        .adjust(|_, delay| {
            let left = hold_until.saturating_duration_since(tokio::time::Instant::now());
            (!left.is_zero()).then(|| delay.map_or(left, |d| d.min(left)))
        });
    let written = tokio::select! {
        () = shutdown.cancelled() => return DeadLetter::Shutdown,
        written = written => written,
    };
    if written.is_err() {
        return DeadLetter::HeldTooLong;
    }
    let failures = failures.load(Ordering::Relaxed);
    if failures > 0 {
        info!(failures, "the DLQ took the message after failed attempts");
    }
    DeadLetter::Stored
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

    #[test]
    fn a_finite_delivery_limit_always_leaves_one_delivery_for_the_dlq() {
        // Unlimited (what `init` sets): the runtime's own threshold.
        assert_eq!(effective_give_up(20, -1), 20);
        assert_eq!(effective_give_up(20, 0), 20);
        // A consumer from an older `init` (max_deliver 20): give up on the 19th.
        assert_eq!(effective_give_up(20, 20), 19);
        assert_eq!(effective_give_up(5, 20), 5);
        // Degenerate limits still give the handler one delivery.
        assert_eq!(effective_give_up(20, 1), 1);
        assert_eq!(effective_give_up(0, -1), 1);
    }
}
