//! The durable give-up: a message's DLQ copy written while the message stays in hand, retried
//! until the copy is stored, shutdown comes, or the hold ends and the message is handed back.

use super::{ConsumeConfig, Delivery};
use crate::bus::{
    Bus, DLQ_DELIVERIES_HEADER, DLQ_REASON_HEADER, DLQ_SEQUENCE_HEADER, DLQ_SUBJECT_HEADER,
};
use crate::error::Error;
use crate::metrics::Outcome;
use crate::topology::{ACK_WAIT, Role};
use async_nats::HeaderMap;
use async_nats::jetstream::AckKind;
use backon::{ExponentialBuilder, Retryable};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// First delay between DLQ write attempts of a message kept in hand; it doubles up to a third
/// of the ack wait, so each retry also renews the message's progress in time.
const DLQ_RETRY_FIRST: Duration = Duration::from_millis(100);

/// How a DLQ write that kept the message in hand ended.
pub(super) enum DeadLetter {
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
pub(super) async fn dead_letter_durably(
    bus: &Bus,
    role: Role,
    config: &ConsumeConfig,
    delivery: &Delivery,
    reason: &str,
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
                crate::metrics::global().message(role, Outcome::DlqWriteFailed);
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
