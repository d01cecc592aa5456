//! The raw JetStream loop keyloop is measured against: the least a durable, idempotent worker
//! on JetStream does per message — pull it from a durable consumer, compare-and-set one KV entry,
//! publish one event and wait for the stream's ack, then ack the message. It runs as the same
//! kind of process as a keyloop worker (`keyloop-bench raw-worker`, started by the bench), with
//! the same pull settings and the same bounded concurrency, so the two differ only in what
//! keyloop does per message.

use anyhow::{Context, Result, bail};
use async_nats::jetstream::{self, AckKind, consumer, kv, message::PublishMessage, stream};
use futures::StreamExt;
use keyloop_nats::topology::{ACK_WAIT, EVENTS_DEDUP_WINDOW, LIFECYCLE_DEDUP_WINDOW, MAX_DELIVER};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tracing::warn;

/// The raw loop's durable consumer, shared by its processes like a keyloop role's.
pub(crate) const CONSUMER: &str = "bench-raw";

/// Names of the raw loop's streams, bucket and subjects, beside keyloop's under one prefix.
#[derive(Debug, Clone)]
pub(crate) struct RawLayout {
    prefix: String,
}

impl RawLayout {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    fn stream_name(&self, suffix: &str) -> String {
        format!(
            "{}_{suffix}",
            self.prefix.to_ascii_uppercase().replace(['.', '-'], "_")
        )
    }

    /// Inbound work, as `<PREFIX>_EVENTS` is for leaks.
    pub(crate) fn in_stream(&self) -> String {
        self.stream_name("BENCH_IN")
    }

    /// Outbound events, as `<PREFIX>_LIFECYCLE` is for lifecycle events.
    fn done_stream(&self) -> String {
        self.stream_name("BENCH_DONE")
    }

    fn bucket(&self) -> String {
        format!("{}_bench_raw", self.prefix.replace(['.', '-'], "_"))
    }

    fn in_prefix(&self) -> String {
        format!("{}.bench.in.", self.prefix)
    }

    /// `<prefix>.bench.in.<key>`: the item's KV key travels in its subject.
    pub(crate) fn in_subject(&self, key: &str) -> String {
        format!("{}{key}", self.in_prefix())
    }

    fn done_subject(&self, key: &str) -> String {
        format!("{}.bench.done.{key}", self.prefix)
    }

    /// Every completion event.
    pub(crate) fn done_all(&self) -> String {
        format!("{}.bench.done.>", self.prefix)
    }

    /// Creates the streams, bucket and consumer with the settings keyloop's own use (file
    /// storage, dedup windows, explicit ack, ack wait, deliveries, ack-pending limit).
    pub(crate) async fn init(&self, js: &jetstream::Context) -> Result<()> {
        for (name, subject, dedup) in [
            (self.in_stream(), self.in_subject(">"), EVENTS_DEDUP_WINDOW),
            (self.done_stream(), self.done_all(), LIFECYCLE_DEDUP_WINDOW),
        ] {
            js.create_or_update_stream(stream::Config {
                name: name.clone(),
                subjects: vec![subject],
                retention: stream::RetentionPolicy::Limits,
                duplicate_window: dedup,
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .with_context(|| format!("create stream {name}"))?;
        }
        js.create_or_update_key_value(kv::Config {
            bucket: self.bucket(),
            history: 5,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .with_context(|| format!("create KV bucket {}", self.bucket()))?;
        js.get_stream(self.in_stream())
            .await?
            .create_consumer(consumer::pull::Config {
                durable_name: Some(CONSUMER.into()),
                filter_subject: self.in_subject(">"),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: ACK_WAIT,
                max_deliver: MAX_DELIVER,
                max_ack_pending: 10_000,
                ..Default::default()
            })
            .await
            .context("create the raw loop's consumer")?;
        Ok(())
    }
}

/// `keyloop-bench raw-worker`: runs the raw loop against the server at `nats` until SIGTERM or
/// Ctrl-C.
pub(crate) async fn run_worker(nats: &str, prefix: &str, concurrency: usize) -> Result<()> {
    let concurrency = concurrency.max(1);
    let client = async_nats::ConnectOptions::new()
        .name("keyloop-bench-raw")
        .connect(nats)
        .await
        .with_context(|| format!("connect to {nats}"))?;
    let js = jetstream::new(client);
    let layout = Arc::new(RawLayout::new(prefix));
    let kv = js
        .get_key_value(layout.bucket())
        .await
        .context("the raw loop's bucket (created by `keyloop-bench`)")?;
    let consumer: consumer::PullConsumer = js
        .get_consumer_from_stream(CONSUMER, layout.in_stream())
        .await
        .context("the raw loop's consumer (created by `keyloop-bench`)")?;
    // The same pull settings as keyloop's consume runtime.
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(concurrency)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .context("pull from the raw loop's consumer")?;
    let permits = Arc::new(Semaphore::new(concurrency));
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            p = permits.clone().acquire_owned() => p.expect("semaphore is never closed"),
        };
        let next = tokio::select! {
            () = &mut shutdown => break,
            next = messages.next() => next,
        };
        let message = match next {
            Some(Ok(m)) => m,
            Some(Err(e)) => {
                warn!(error = %e, "pull consumer hiccup; continuing");
                continue;
            }
            None => bail!("the raw loop's consumer stream ended"),
        };
        let (js, kv, layout) = (js.clone(), kv.clone(), layout.clone());
        tokio::spawn(async move {
            if let Err(e) = step(&js, &kv, &layout, &message).await {
                warn!(error = %e, "raw loop step failed; the message will be redelivered");
                let _ = message.ack_with(AckKind::Nak(None)).await;
            }
            drop(permit);
        });
    }
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM (how the bench stops its fleet, and how a person does).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                warn!(error = %e, "cannot watch for SIGTERM; stopping on Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// One message: compare-and-set, publish with ack, ack. Idempotent like a keyloop handler: a
/// redelivered message finds its key set (and moves on) and its event deduplicated.
async fn step(
    js: &jetstream::Context,
    kv: &kv::Store,
    layout: &RawLayout,
    message: &jetstream::Message,
) -> Result<()> {
    let Some(key) = message.subject.as_str().strip_prefix(&layout.in_prefix()) else {
        bail!("unexpected subject {}", message.subject);
    };
    // Revision 0: the key must not exist yet — a compare-and-set without a read.
    match kv.update(key, message.payload.clone(), 0).await {
        Ok(_) => {}
        Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
        Err(e) => return Err(e).with_context(|| format!("compare-and-set {key}")),
    }
    let event = PublishMessage::build()
        .payload(message.payload.clone())
        .message_id(key);
    js.send_publish(layout.done_subject(key), event)
        .await?
        .await
        .with_context(|| format!("publish the event of {key}"))?;
    message
        .ack()
        .await
        .map_err(|e| anyhow::anyhow!("ack {key}: {e}"))?;
    Ok(())
}
