//! Load and its timing. Items are published at a fixed rate or as fast as possible, and a
//! core-NATS subscription in this process sees each item's completion events. A latency runs
//! from just before an item's publish to the moment its event reaches this process, on this
//! process's clock only: no figure trusts a worker's clock or a server timestamp.

use anyhow::{Context, Result, bail};
use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage};
use bytes::Bytes;
use futures::StreamExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// One message of load: a leak finding, or the raw loop's equivalent.
#[derive(Debug, Clone)]
pub(crate) struct Item {
    pub(crate) subject: String,
    /// `Nats-Msg-Id`: every item is published with one, as `keyloop ingest` does.
    pub(crate) msg_id: String,
    pub(crate) payload: Bytes,
}

/// Send and completion times of every item of one phase, per completion stage (`revoked`,
/// `rotated`, …). Lock-free: the publisher and the collector write while the other runs.
#[derive(Debug)]
pub(crate) struct Tracker {
    base: Instant,
    /// Nanoseconds since `base`, plus one; zero means "not yet".
    sent: Vec<AtomicU64>,
    done: Vec<Vec<AtomicU64>>,
    counts: Vec<AtomicUsize>,
}

impl Tracker {
    pub(crate) fn new(items: usize, stages: usize) -> Self {
        let column = || (0..items).map(|_| AtomicU64::new(0)).collect::<Vec<_>>();
        Self {
            base: Instant::now(),
            sent: column(),
            done: (0..stages).map(|_| column()).collect(),
            counts: (0..stages).map(|_| AtomicUsize::new(0)).collect(),
        }
    }

    fn stamp(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64 + 1
    }

    pub(crate) fn items(&self) -> usize {
        self.sent.len()
    }

    fn mark_sent(&self, item: usize) {
        self.sent[item].store(self.stamp(), Ordering::Relaxed);
    }

    /// Records the first completion of `item` at `stage`; later ones (a retried step publishes
    /// its event again, and core subscribers see every copy) are ignored.
    fn mark_done(&self, stage: usize, item: usize) {
        let Some(slot) = self.done.get(stage).and_then(|s| s.get(item)) else {
            return;
        };
        if slot
            .compare_exchange(0, self.stamp(), Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.counts[stage].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Items that completed `stage`.
    pub(crate) fn count(&self, stage: usize) -> usize {
        self.counts[stage].load(Ordering::Relaxed)
    }

    /// Publish → completion of every item that completed `stage`.
    pub(crate) fn latencies(&self, stage: usize) -> Vec<Duration> {
        self.sent
            .iter()
            .zip(&self.done[stage])
            .filter_map(|(s, d)| {
                let (s, d) = (s.load(Ordering::Relaxed), d.load(Ordering::Relaxed));
                (s != 0 && d != 0).then(|| Duration::from_nanos(d.saturating_sub(s)))
            })
            .collect()
    }

    /// Completions per second at `stage` over the middle 80 % of completions: the sustained
    /// rate, without the pipeline filling at the start or the stragglers at the end.
    pub(crate) fn sustained_rate(&self, stage: usize) -> f64 {
        let mut done: Vec<u64> = self.done[stage]
            .iter()
            .map(|d| d.load(Ordering::Relaxed))
            .filter(|&d| d != 0)
            .collect();
        done.sort_unstable();
        let n = done.len();
        if n < 2 {
            return 0.0;
        }
        let (lo, hi) = (n / 10, (n * 9 / 10).max(n / 10 + 1).min(n - 1));
        let secs = (done[hi] - done[lo]) as f64 / 1e9;
        if secs <= 0.0 {
            return 0.0;
        }
        (hi - lo) as f64 / secs
    }

    /// Waits until every item completed `stage`, printing progress on stderr every few
    /// seconds. Fails after `timeout` without progress.
    pub(crate) async fn wait_all(
        &self,
        stage: usize,
        label: &str,
        timeout: Duration,
    ) -> Result<()> {
        let total = self.items();
        let mut last = (self.count(stage), Instant::now());
        let mut said = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            let n = self.count(stage);
            if n >= total {
                return Ok(());
            }
            if n != last.0 {
                last = (n, Instant::now());
            } else if last.1.elapsed() > timeout {
                bail!(
                    "{label}: only {n} of {total} completed, none in the last {} s",
                    timeout.as_secs()
                );
            }
            if said.elapsed() >= Duration::from_secs(3) {
                eprintln!("[bench]   {label}: {n}/{total}");
                said = Instant::now();
            }
            tick.tick().await;
        }
    }
}

/// Which item and stage a completion event is about, if it is one of ours.
pub(crate) type Classify =
    Arc<dyn Fn(&async_nats::Message) -> Option<(usize, usize)> + Send + Sync>;

/// Subscribes to `subjects` (before anything is published, so nothing is missed) and records
/// completions until the returned task is aborted.
pub(crate) async fn collect(
    client: &async_nats::Client,
    subjects: &[String],
    tracker: Arc<Tracker>,
    classify: Classify,
) -> Result<JoinHandle<()>> {
    let mut subs = Vec::with_capacity(subjects.len());
    for subject in subjects {
        subs.push(
            client
                .subscribe(subject.clone())
                .await
                .with_context(|| format!("subscribe to {subject}"))?,
        );
    }
    client.flush().await.context("flush subscriptions")?;
    let mut events = futures::stream::select_all(subs);
    Ok(tokio::spawn(async move {
        while let Some(msg) = events.next().await {
            if let Some((stage, item)) = classify(&msg) {
                tracker.mark_done(stage, item);
            }
        }
    }))
}

/// How a publishing run went.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Published {
    /// Items per second actually sent.
    pub(crate) rate: f64,
}

/// Publishes `items` in order, at `rate` per second (`None`: as fast as the server takes them),
/// marking each one sent just before it goes out. The publisher never waits for an ack (a
/// separate task checks them all), so a slow ack does not delay the next item.
pub(crate) async fn publish(
    js: &jetstream::Context,
    items: &[Item],
    tracker: &Tracker,
    rate: Option<f64>,
) -> Result<Published> {
    let (tx, rx) = mpsc::channel::<(usize, PublishAckFuture)>(16_384);
    let checker = tokio::spawn(check_acks(rx));
    let start = Instant::now();
    for (i, item) in items.iter().enumerate() {
        if let Some(rate) = rate {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            if due > Instant::now() {
                tokio::time::sleep_until(due.into()).await;
            }
        }
        tracker.mark_sent(i);
        let message = PublishMessage::build()
            .payload(item.payload.clone())
            .message_id(&item.msg_id);
        let ack = js
            .send_publish(item.subject.clone(), message)
            .await
            .with_context(|| format!("publish to {}", item.subject))?;
        if tx.send((i, ack)).await.is_err() {
            break; // the checker stopped on an error; it is reported below
        }
    }
    let elapsed = start.elapsed();
    drop(tx);
    checker.await.context("ack checker panicked")??;
    Ok(Published {
        rate: items.len() as f64 / elapsed.as_secs_f64().max(1e-9),
    })
}

async fn check_acks(mut rx: mpsc::Receiver<(usize, PublishAckFuture)>) -> Result<()> {
    while let Some((i, ack)) = rx.recv().await {
        let ack = ack
            .await
            .with_context(|| format!("item {i} was not stored"))?;
        if ack.duplicate {
            bail!(
                "item {i} was dropped as a duplicate by stream {}: the bench's ids must be unique",
                ack.stream
            );
        }
    }
    Ok(())
}

/// Latency percentiles of one stage.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Percentiles {
    pub(crate) count: usize,
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
    pub(crate) p999: Duration,
    pub(crate) max: Duration,
}

impl Percentiles {
    /// Nearest-rank percentiles of `samples` (a sorted vector: exact, and at 10⁵ samples
    /// smaller than a histogram crate).
    pub(crate) fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort_unstable();
        let n = samples.len();
        let rank = |q: f64| -> Duration {
            if n == 0 {
                return Duration::ZERO;
            }
            let idx = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
            samples[idx]
        };
        Self {
            count: n,
            p50: rank(0.50),
            p99: rank(0.99),
            p999: rank(0.999),
            max: samples.last().copied().unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples = (1..=1000).map(Duration::from_millis).collect::<Vec<_>>();
        let p = Percentiles::of(samples);
        assert_eq!(p.count, 1000);
        assert_eq!(p.p50, Duration::from_millis(500));
        assert_eq!(p.p99, Duration::from_millis(990));
        assert_eq!(p.p999, Duration::from_millis(999));
        assert_eq!(p.max, Duration::from_millis(1000));
        assert_eq!(Percentiles::of(Vec::new()).max, Duration::ZERO);
    }

    #[test]
    fn a_completion_counts_once() {
        let t = Tracker::new(2, 1);
        t.mark_sent(0);
        t.mark_done(0, 0);
        t.mark_done(0, 0);
        t.mark_done(0, 7); // not ours: ignored
        assert_eq!(t.count(0), 1);
        assert_eq!(t.latencies(0).len(), 1);
    }
}
