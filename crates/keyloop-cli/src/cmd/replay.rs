//! `keyloop replay`: lifecycle and inbound events in order, from any point in time. Reads the
//! streams with ordered consumers up to their last message at the time of the call, merges them
//! by stream time, and filters by credential or correlation. `--json`: one CloudEvent a line.

use crate::cli::{Global, ReplayArgs};
use crate::{config, output};
use anyhow::{Context, Result, anyhow};
use futures::StreamExt;
use keyloop_core::LifecycleEvent;
use keyloop_core::event::LeakDetected;
use keyloop_nats::Bus;
use std::collections::HashSet;
use std::process::ExitCode;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// One replayed message.
#[derive(Debug, Clone)]
pub(crate) struct Replayed {
    pub(crate) stored: OffsetDateTime,
    pub(crate) subject: String,
    pub(crate) event: serde_json::Value,
}

impl Replayed {
    pub(crate) fn lifecycle(&self) -> Option<LifecycleEvent> {
        serde_json::from_value(self.event.clone()).ok()
    }

    fn correlation(&self) -> Option<&str> {
        self.event.get("correlationid").and_then(|v| v.as_str())
    }

    fn id(&self) -> Option<&str> {
        self.event.get("id").and_then(|v| v.as_str())
    }

    /// A line for people.
    pub(crate) fn render(&self) -> String {
        if let Some(e) = self.lifecycle() {
            return output::lifecycle_row(&e);
        }
        if let Ok(leak) = serde_json::from_value::<LeakDetected>(self.event.clone()) {
            let loc = &leak.data.location;
            let place = match (&loc.repo, &loc.file, loc.line) {
                (r, Some(f), l) => format!(
                    " at {}{f}{}",
                    r.as_ref().map(|r| format!("{r}:")).unwrap_or_default(),
                    l.map(|l| format!(":{l}")).unwrap_or_default()
                ),
                (Some(r), None, _) => format!(" in {r}"),
                _ => String::new(),
            };
            return format!(
                "{}  {:<17} {:<28} {} by {}{place} correlation={}",
                output::ts(leak.time),
                "leak.detected",
                "-",
                leak.data.fingerprint,
                leak.data.detector,
                leak.id
            );
        }
        format!("{}  {}", output::ts(self.stored), self.subject)
    }
}

/// Parses `--since`/`--until`: RFC 3339, or a duration meaning that long ago.
fn time_arg(flag: &str, text: &str) -> Result<OffsetDateTime> {
    if let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(t);
    }
    let ago = keyloop_core::duration::parse_duration(text).map_err(|_| {
        anyhow!("--{flag} {text}: expected RFC 3339 (2026-11-29T10:00:00Z) or a duration ago (1h)")
    })?;
    Ok(OffsetDateTime::now_utc() - ago)
}

pub(crate) async fn run(g: &Global, args: ReplayArgs) -> Result<ExitCode> {
    let bus = config::connect(g).await?;
    let events = collect(&bus, &args).await?;
    if events.is_empty() && !g.json {
        eprintln!("no events match");
    }
    for e in &events {
        if g.json {
            output::json_line(&e.event)?;
        } else {
            output::line(e.render())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The matching events of the lifecycle and inbound streams, oldest first.
pub(crate) async fn collect(bus: &Bus, args: &ReplayArgs) -> Result<Vec<Replayed>> {
    let since = args
        .since
        .as_deref()
        .map(|s| time_arg("since", s))
        .transpose()?;
    let until = args
        .until
        .as_deref()
        .map(|s| time_arg("until", s))
        .transpose()?;
    let credential = args
        .credential
        .as_deref()
        .map(super::credential::parse_id)
        .transpose()?;
    let topo = &bus.topology;
    let lifecycle_filter = match &credential {
        Some(c) => topo.lifecycle("*", c.as_str()),
        None => topo.lifecycle_all(),
    };
    let mut lifecycle =
        read_stream(bus, &topo.lifecycle_stream(), &lifecycle_filter, since).await?;
    let mut inbound = read_stream(
        bus,
        &topo.events_stream(),
        &format!("{}.>", topo.prefix()),
        since,
    )
    .await?;
    if let Some(corr) = &args.correlation {
        lifecycle.retain(|e| e.correlation() == Some(corr.as_str()));
        inbound.retain(|e| e.correlation() == Some(corr.as_str()) || e.id() == Some(corr.as_str()));
    } else if credential.is_some() {
        // Inbound facts carry no credential: keep those that started a chain about it.
        let chains: HashSet<String> = lifecycle
            .iter()
            .filter_map(|e| e.correlation().map(str::to_owned))
            .collect();
        inbound.retain(|e| e.id().is_some_and(|id| chains.contains(id)));
    }
    let mut all = lifecycle;
    all.append(&mut inbound);
    if let Some(until) = until {
        all.retain(|e| e.stored <= until);
    }
    all.sort_by_key(|e| e.stored);
    Ok(all)
}

async fn read_stream(
    bus: &Bus,
    stream: &str,
    filter: &str,
    since: Option<OffsetDateTime>,
) -> Result<Vec<Replayed>> {
    use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
    let handle = bus
        .js
        .get_stream(stream)
        .await
        .with_context(|| format!("stream {stream} is not available (run `keyloop init`)"))?;
    let deliver_policy = since.map_or(DeliverPolicy::All, |start_time| {
        DeliverPolicy::ByStartTime { start_time }
    });
    let mut consumer = handle
        .create_consumer(OrderedConfig {
            filter_subject: filter.to_owned(),
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
        return Ok(out);
    }
    let mut messages = consumer
        .messages()
        .await
        .with_context(|| format!("read {stream}"))?;
    while let Some(msg) = messages.next().await {
        let msg = msg.with_context(|| format!("read {stream}"))?;
        let info = msg.info().map_err(|e| anyhow!("read {stream}: {e}"))?;
        let (stored, left) = (info.published, info.pending);
        if let Ok(event) = serde_json::from_slice(&msg.payload) {
            out.push(Replayed {
                stored,
                subject: msg.subject.to_string(),
                event,
            });
        }
        if left == 0 {
            break;
        }
    }
    Ok(out)
}
