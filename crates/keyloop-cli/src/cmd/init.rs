//! `keyloop init`: create or upgrade streams, consumers and KV buckets. Idempotent.

use crate::cli::Global;
use crate::{config, output};
use anyhow::{Context, Result};
use std::process::ExitCode;

pub(crate) async fn run(g: &Global, replicas: usize) -> Result<ExitCode> {
    let mut bus = config::connect(g).await?;
    bus.topology = bus.topology.clone().with_replicas(replicas);
    let report = bus
        .topology
        .init(&bus.js)
        .await
        .with_context(|| {
            format!(
                "keyloop init on {} (on a server with keyloop's users, the layout is admin's: run it with --nats-user admin)",
                config::shown_url(g)
            )
        })?;
    if g.json {
        output::json_line(&report)?;
    } else {
        output::line(format_args!("streams:   {}", report.streams.join(", ")))?;
        output::line(format_args!("buckets:   {}", report.buckets.join(", ")))?;
        output::line(format_args!("consumers: {}", report.consumers.join(", ")))?;
        output::line(format_args!(
            "keyloop layout is ready on {}",
            config::shown_url(g)
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}
