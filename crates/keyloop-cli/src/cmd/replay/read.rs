//! Reading the streams: each with an ordered consumer up to its last message at the time of
//! the call (the history), then, for `--follow`, from the next sequence on. A progress line on
//! a terminal for long replays.

use super::filter::Filter;
use super::row::{DlqEntry, Replayed, Which};
use crate::cli::{ReplayArgs, ReplayStream};
use anyhow::{Context, Result, anyhow};
use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use futures::StreamExt;
use futures::stream::BoxStream;
use keyloop_nats::Bus;
use keyloop_nats::bus::{DLQ_DELIVERIES_HEADER, DLQ_REASON_HEADER, DLQ_SUBJECT_HEADER};
use std::collections::{BTreeMap, HashSet};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Parses `--since`/`--until`: RFC 3339, or a duration meaning that long ago.
pub(crate) fn time_arg(flag: &str, text: &str) -> Result<OffsetDateTime> {
    if let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(t);
    }
    let ago = keyloop_core::duration::parse_duration(text).map_err(|_| {
        anyhow!("--{flag} {text}: expected RFC 3339 (2026-11-29T10:00:00Z) or a duration ago (1h)")
    })?;
    Ok(OffsetDateTime::now_utc() - ago)
}

/// Messages read between two progress lines.
const PROGRESS_EVERY: u64 = 10_000;

/// A progress line on stderr while a long history is read, only when stderr is a terminal.
pub(crate) struct Progress {
    on: bool,
    total: AtomicU64,
    read: AtomicU64,
}

impl Progress {
    /// Shown when stderr is a terminal (and `show`).
    pub(crate) fn on_terminal(show: bool) -> Self {
        Self {
            on: show && std::io::stderr().is_terminal(),
            total: AtomicU64::new(0),
            read: AtomicU64::new(0),
        }
    }

    /// No progress at all.
    pub(crate) fn off() -> Self {
        Self {
            on: false,
            total: AtomicU64::new(0),
            read: AtomicU64::new(0),
        }
    }

    fn expect(&self, n: u64) {
        self.total.fetch_add(n, Ordering::Relaxed);
    }

    fn one(&self) {
        let read = self.read.fetch_add(1, Ordering::Relaxed) + 1;
        if self.on && read.is_multiple_of(PROGRESS_EVERY) {
            let total = self.total.load(Ordering::Relaxed).max(read);
            eprint!(
                "\rreplaying: {read} of {total} messages read ({}%)",
                read * 100 / total
            );
        }
    }

    /// Clears the progress line.
    pub(crate) fn done(&self) {
        if self.on && self.read.load(Ordering::Relaxed) >= PROGRESS_EVERY {
            eprint!("\r\x1b[2K");
        }
    }
}

/// What a history read: the kept messages oldest first, and the last sequence seen per stream
/// (where `--follow` goes on).
pub(crate) struct History {
    pub(crate) events: Vec<Replayed>,
    pub(crate) last_seen: BTreeMap<String, u64>,
}

/// One stream to read: which, its name, its filter subjects.
struct Source {
    which: Which,
    stream: String,
    filters: Vec<String>,
}

fn sources(bus: &Bus, args: &ReplayArgs, credential: Option<&str>) -> Vec<Source> {
    let topo = &bus.topology;
    let p = topo.prefix();
    let (events, lifecycle, dlq) = match args.stream {
        ReplayStream::Events => (true, false, false),
        ReplayStream::Lifecycle => (false, true, false),
        ReplayStream::Dlq => (false, false, true),
        ReplayStream::All => (true, true, true),
    };
    let mut out = Vec::new();
    if lifecycle {
        out.push(Source {
            which: Which::Lifecycle,
            stream: topo.lifecycle_stream(),
            filters: vec![match credential {
                Some(c) => topo.lifecycle("*", c),
                None => topo.lifecycle_all(),
            }],
        });
    }
    if events {
        let ticks = args.ticks || args.types.iter().any(|t| t == "schedule.tick");
        let mut filters = vec![
            format!("{p}.leak.>"),
            format!("{p}.task.>"),
            topo.credential_used(),
        ];
        if ticks {
            filters.push(format!("{p}.schedule.>"));
        }
        out.push(Source {
            which: Which::Events,
            stream: topo.events_stream(),
            filters,
        });
    }
    if dlq {
        out.push(Source {
            which: Which::Dlq,
            stream: topo.dlq_stream(),
            filters: vec![format!("{p}.dlq.>")],
        });
    }
    out
}

/// The matching history of the streams `args` names, oldest first.
pub(crate) async fn history(
    bus: &Bus,
    args: &ReplayArgs,
    filter: &Filter,
    progress: &Progress,
) -> Result<History> {
    let since = args
        .since
        .as_deref()
        .map(|s| time_arg("since", s))
        .transpose()?;
    let credential = args
        .credential
        .as_deref()
        .map(super::super::credential::parse_id)
        .transpose()?;
    let credential = credential.as_ref().map(|c| c.as_str());
    let mut all = Vec::new();
    let mut last_seen = BTreeMap::new();
    let mut chains: HashSet<String> = HashSet::new();
    for source in sources(bus, args, credential) {
        let (mut read, last) = read_stream(bus, &source, since, progress).await?;
        last_seen.insert(source.stream.clone(), last);
        if let Some(c) = credential {
            match source.which {
                // The lifecycle is read first: its chains decide which inbound facts belong.
                Which::Lifecycle => chains.extend(
                    read.iter()
                        .filter_map(|e| e.correlation().map(str::to_owned)),
                ),
                // Inbound facts carry no credential: keep those that started a chain about it.
                Which::Events => read.retain(|e| e.id().is_some_and(|id| chains.contains(id))),
                Which::Dlq => read.retain(|e| e.about() == Some(c)),
            }
        }
        read.retain(|e| filter.keeps(e));
        all.append(&mut read);
    }
    all.sort_by_key(|e| e.stored);
    Ok(History {
        events: all,
        last_seen,
    })
}

/// The matching lifecycle and inbound events (no DLQ), oldest first: for `demo` and `incident`.
pub(crate) async fn collect(bus: &Bus, args: &ReplayArgs) -> Result<Vec<Replayed>> {
    let filter = Filter::from_args(args)?;
    let history = history(bus, args, &filter, &Progress::off()).await?;
    Ok(history
        .events
        .into_iter()
        .filter(|e| e.which != Which::Dlq)
        .collect())
}

fn replayed(bus: &Bus, which: Which, msg: &async_nats::jetstream::Message) -> Result<Replayed> {
    let info = msg
        .info()
        .map_err(|e| anyhow!("read a stored message: {e}"))?;
    let event = serde_json::from_slice(&msg.payload).unwrap_or(serde_json::Value::Null);
    let dlq = (which == Which::Dlq).then(|| {
        let header = |name: &str| {
            msg.headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.to_string())
                .unwrap_or_default()
        };
        DlqEntry {
            role: msg
                .subject
                .rsplit('.')
                .next()
                .unwrap_or_default()
                .to_owned(),
            original_subject: header(DLQ_SUBJECT_HEADER),
            reason: header(DLQ_REASON_HEADER),
            deliveries: header(DLQ_DELIVERIES_HEADER),
        }
    });
    Ok(Replayed::new(
        which,
        bus.topology.prefix(),
        info.stream_sequence,
        info.published,
        msg.subject.to_string(),
        event,
        dlq,
    ))
}

async fn read_stream(
    bus: &Bus,
    source: &Source,
    since: Option<OffsetDateTime>,
    progress: &Progress,
) -> Result<(Vec<Replayed>, u64)> {
    let stream = &source.stream;
    let mut handle = bus
        .js
        .get_stream(stream)
        .await
        .with_context(|| format!("stream {stream} is not available (run `keyloop init`)"))?;
    let last = handle
        .info()
        .await
        .with_context(|| format!("read {stream}"))?
        .state
        .last_sequence;
    let deliver_policy = since.map_or(DeliverPolicy::All, |start_time| {
        DeliverPolicy::ByStartTime { start_time }
    });
    let mut consumer = handle
        .create_consumer(OrderedConfig {
            filter_subjects: source.filters.clone(),
            deliver_policy,
            ..Default::default()
        })
        .await
        .with_context(|| format!("read {stream}"))?;
    let pending = consumer
        .info()
        .await
        .with_context(|| format!("read {stream}"))?
        .num_pending;
    let mut out = Vec::with_capacity(pending as usize);
    if pending == 0 {
        return Ok((out, last));
    }
    progress.expect(pending);
    let mut messages = consumer
        .messages()
        .await
        .with_context(|| format!("read {stream}"))?;
    let mut seen = last;
    while let Some(msg) = messages.next().await {
        let msg = msg.with_context(|| format!("read {stream}"))?;
        let left = msg
            .info()
            .map_err(|e| anyhow!("read {stream}: {e}"))?
            .pending;
        let e = replayed(bus, source.which, &msg)?;
        progress.one();
        seen = seen.max(e.sequence);
        // An inbound or lifecycle message that is not JSON is not an event: nothing to show.
        if e.which == Which::Dlq || !e.event.is_null() {
            out.push(e);
        }
        if left == 0 {
            break;
        }
    }
    Ok((out, seen))
}

/// What is stored after the history, merged across the streams as it arrives.
pub(crate) async fn follow(
    bus: &Bus,
    args: &ReplayArgs,
    last_seen: &BTreeMap<String, u64>,
) -> Result<BoxStream<'static, Result<Replayed>>> {
    let credential = args
        .credential
        .as_deref()
        .map(super::super::credential::parse_id)
        .transpose()?;
    let mut live = Vec::new();
    for source in sources(bus, args, credential.as_ref().map(|c| c.as_str())) {
        // Inbound facts about a credential are known only by the chains they start, which
        // come after them: following a credential shows its lifecycle only.
        if credential.is_some() && source.which == Which::Events {
            continue;
        }
        let stream = source.stream.clone();
        let start_sequence = last_seen.get(&stream).copied().unwrap_or(0) + 1;
        let consumer = bus
            .js
            .get_stream(&stream)
            .await
            .with_context(|| format!("stream {stream} is not available"))?
            .create_consumer(OrderedConfig {
                filter_subjects: source.filters.clone(),
                deliver_policy: DeliverPolicy::ByStartSequence { start_sequence },
                ..Default::default()
            })
            .await
            .with_context(|| format!("follow {stream}"))?;
        let messages = consumer
            .messages()
            .await
            .with_context(|| format!("follow {stream}"))?;
        let (bus, which) = (bus.clone(), source.which);
        live.push(
            messages
                .filter_map(move |msg| {
                    let out = match msg {
                        Ok(msg) => match replayed(&bus, which, &msg) {
                            Ok(e) if e.which != Which::Dlq && e.event.is_null() => None,
                            other => Some(other),
                        },
                        Err(e) => Some(Err(anyhow!("follow {stream}: {e}"))),
                    };
                    std::future::ready(out)
                })
                .boxed(),
        );
    }
    Ok(futures::stream::select_all(live).boxed())
}
