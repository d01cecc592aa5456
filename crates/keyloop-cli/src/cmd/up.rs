//! `keyloop up`: every worker in one process. When nothing answers at `--nats` (and it is a
//! loopback address), starts a nats-server with JetStream under the data directory, shared
//! with any other `up` on that directory and stopped by the last one to leave
//! ([`shared_server`]). Creates a dev master key (mode 0600) when none is given, and says so.
//! A signal stops it at any point, also while it is still finding the server, connecting or
//! initialising: every such wait is raced against the signal.

mod shared_server;

use crate::cli::{Global, RunArgs};
use crate::config;
use anyhow::{Context, Result};
use keyloop_nats::Role;
use keyloop_workers::{WorkerConfig, WorkerContext};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub(crate) async fn run(g: &Global, args: RunArgs) -> Result<ExitCode> {
    let config = config::worker_config(&args)?;
    let data_dir = config::data_dir(g);
    let shutdown = super::shutdown_on_signal();
    let found = super::unless_stopped(
        &shutdown,
        || "finding or starting the nats-server".to_owned(),
        shared_server::acquire(g, &data_dir),
    )
    .await;
    let (server, g) = match found {
        Ok(found) => found,
        Err(e) => return super::stopped_cleanly(Err(e)),
    };
    let result = serve(g, args, data_dir, config, shutdown).await;
    if let Some(server) = server {
        // The workers have flushed their acks (or given up on a server that does not answer);
        // now the server may go, unless another `up` still uses it.
        server.leave().await;
    }
    super::stopped_cleanly(result)
}

/// Connects, initialises the layout, opens the stores and runs every worker until `shutdown`.
async fn serve(
    g: Global,
    args: RunArgs,
    data_dir: PathBuf,
    config: WorkerConfig,
    shutdown: CancellationToken,
) -> Result<()> {
    let url = config::shown_url(&g);
    let bus = super::unless_stopped(
        &shutdown,
        || format!("connecting to {url}"),
        config::connect(&g),
    )
    .await?;
    super::unless_stopped(
        &shutdown,
        || format!("running keyloop init on {url}"),
        bus.topology.init(&bus.js),
    )
    .await
    .with_context(|| format!("keyloop init on {url}"))?;
    let key = match config::master_key(&g)? {
        Some(k) => k,
        None => {
            let (key, created) = config::ensure_dev_key(&data_dir)?;
            if created {
                eprintln!(
                    "created a dev master key at {} (mode 0600); for production pass --master-key-file or KEYLOOP_MASTER_KEY",
                    data_dir.join("master.key").display()
                );
            }
            key
        }
    };
    let mut ctx = super::unless_stopped(
        &shutdown,
        || format!("opening keyloop's buckets on {url}"),
        WorkerContext::open(bus, Some(&key)),
    )
    .await?;
    config::add_backends(&g, &mut ctx.backends)?;
    config::apply_run_args(&args, &mut ctx).await?;
    let roles: Vec<_> = Role::ALL.to_vec();
    eprintln!(
        "keyloop up: workers {} on {url} (Ctrl-C to stop)",
        roles
            .iter()
            .map(|r| r.name())
            .collect::<Vec<_>>()
            .join(", "),
    );
    keyloop_workers::run(Arc::new(ctx), &roles, config, shutdown).await?;
    Ok(())
}
