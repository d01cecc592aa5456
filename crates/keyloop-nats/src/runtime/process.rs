//! One message: its handler run (with progress acks while it works), then the one decision
//! about it: ack, nak with a growing delay, or the DLQ.

use super::dlq::{DeadLetter, dead_letter_durably};
use super::{ConsumeConfig, Delivery, Handler, HandlerError, MAX_MESSAGE_BYTES, STOP_IO_TIMEOUT};
use crate::bus::Bus;
use crate::metrics::Outcome;
use crate::topology::{ACK_WAIT, Role};
use async_nats::jetstream::{self, AckKind};
use keyloop_core::Retry;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info_span, warn};

/// Runs one delivered message through `handler` and settles it: ack, nak with a delay, or
/// the DLQ (a permanent failure, or a transient one on the give-up delivery).
pub(super) async fn process(
    bus: &Bus,
    role: Role,
    config: &ConsumeConfig,
    handler: &Handler,
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
    // The span continues the trace of whoever published the message.
    crate::trace::continue_from(&span, message.headers.as_ref());
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
            let started = std::time::Instant::now();
            // The handler's publishes are pipelined: each is awaited by the next one, the last
            // at its end, all before the ack (see `crate::pipeline`).
            let work = crate::pipeline::scope(handler(delivery.clone()));
            tokio::pin!(work);
            let mut progress = tokio::time::interval(ACK_WAIT / 3);
            progress.tick().await;
            let outcome = loop {
                tokio::select! {
                    outcome = &mut work => break outcome.map_err(|e| match e {
                        crate::pipeline::ScopeError::Work(e) => e,
                        crate::pipeline::ScopeError::Publish(e) => HandlerError::from(e),
                    }),
                    _ = progress.tick() => {
                        let _ = delivery.message.ack_with(AckKind::Progress).await;
                    }
                }
            };
            crate::metrics::global().handler_ran(role, started.elapsed());
            outcome
        };
        let message = &delivery.message;
        match outcome {
            Ok(()) => {
                if let Err(e) = message.ack().await {
                    // The effects are durable and idempotent; a lost ack only means a redelivery.
                    warn!(error = %e, "ack failed; the message will be redelivered and is idempotent");
                }
                crate::metrics::global().message(role, Outcome::Acked);
                debug!("done");
            }
            Err(e) if e.kind == Retry::Transient && !delivery.last_attempt => {
                let delay = retry_delay(config, attempt, stream_sequence)
                    .max(e.retry_after.unwrap_or_default());
                warn!(reason = %e.reason, retry_in_ms = delay.as_millis() as u64, "transient failure; will retry");
                let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
                crate::metrics::global().message(role, Outcome::Retried);
            }
            Err(e) => {
                let reason = if e.kind == Retry::Transient {
                    format!("gave up after {attempt} deliveries: {}", e.reason)
                } else {
                    e.reason
                };
                // Not stored: the message is handed back. The consumer has deliveries to spare
                // (see `MAX_DELIVER`), and the next one ends here again: past the give-up point
                // without running the handler, and a permanent failure fails again. So a hand-back
                // loses nothing; it only loses the reason's detail.
                let hand_back = match dead_letter_durably(bus, role, config, &delivery, &reason, shutdown).await {
                    DeadLetter::Stored => {
                        error!(%reason, "message sent to the DLQ");
                        // Terminated only now that its copy is stored. A lost termination costs
                        // one more delivery, whose second DLQ copy the DLQ's dedup window drops.
                        let _ = message.ack_with(AckKind::Term).await;
                        crate::metrics::global().message(role, Outcome::DeadLettered);
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
                    crate::metrics::global().message(role, Outcome::DlqHandedBack);
                }
            }
        }
    }
    .instrument(span)
    .await;
}

/// Exponential delay with jitter derived from the message, so a burst of failures spreads out.
pub(super) fn retry_delay(config: &ConsumeConfig, attempt: u64, seq: u64) -> Duration {
    let exp = config
        .base_retry_delay
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(config.max_retry_delay);
    let jitter_pct = (seq.wrapping_mul(2_654_435_761) ^ attempt) % 25; // 0..25 %
    exp + exp * jitter_pct as u32 / 100
}
