//! The consume loop of one role: the durable consumer looked up (retried while the server does
//! not answer), its pull stream opened and reopened on broker faults, each message handed to
//! [`process`](super::process) under the concurrency limit, and the bounded shutdown.

use super::process::process;
use super::{ConsumeConfig, Handler, STOP_IO_TIMEOUT};
use crate::bus::Bus;
use crate::error::{Error, ErrorKind};
use crate::topology::Role;
use async_nats::connection::State;
use async_nats::jetstream::AckKind;
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::consumer::pull::{self, MessagesErrorKind};
use async_nats::jetstream::stream::{ConsumerError, ConsumerErrorKind};
use backon::{ExponentialBuilder, Retryable};
use futures::{FutureExt, StreamExt};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Idle heartbeat of pull requests: a dead server or consumer leader is noticed after two.
const PULL_HEARTBEAT: Duration = Duration::from_secs(2);
/// Lifetime of one pull request.
const PULL_EXPIRES: Duration = Duration::from_secs(10);

/// Runs `handler` over the durable consumer of `role` until `shutdown` is cancelled, then
/// finishes the messages in hand within [`ConsumeConfig::shutdown_grace`]. The consumer must
/// exist (`keyloop init`); while the server does not answer, the lookup is retried until it
/// does or `shutdown` comes.
pub async fn consume(
    bus: Bus,
    role: Role,
    mut config: ConsumeConfig,
    handler: Handler,
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
            let (bus, handler, config, stop) = (
                bus.clone(),
                handler.clone(),
                config.clone(),
                shutdown.clone(),
            );
            in_flight.spawn(async move {
                process(&bus, role, &config, &handler, message, &stop).await;
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
pub(super) fn effective_give_up(wanted: u64, max_deliver: i64) -> u64 {
    let wanted = wanted.max(1);
    match u64::try_from(max_deliver) {
        Ok(limit) if limit > 0 => wanted.min(limit.saturating_sub(1)).max(1),
        _ => wanted,
    }
}
