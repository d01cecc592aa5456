//! `keyloop up`: every worker in one process. When nothing answers at `--nats` (and it is a
//! loopback address), starts a child nats-server with JetStream under the data directory and
//! stops it on exit. Creates a dev master key (mode 0600) when none is given, and says so.
//! A signal stops it at any point, also while it is still starting the server, connecting or
//! initialising: every such wait is raced against the signal.

use crate::cli::{Global, RunArgs};
use crate::config;
use anyhow::{Context, Result, bail};
use keyloop_nats::Role;
use keyloop_nats::server::{ServerOptions, ServerProcess};
use keyloop_workers::{WorkerConfig, WorkerContext};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub(crate) async fn run(g: &Global, args: RunArgs) -> Result<ExitCode> {
    let config = config::worker_config(&args)?;
    let data_dir = config::data_dir(g);
    let shutdown = super::shutdown_on_signal();
    let found = super::unless_stopped(
        &shutdown,
        || "finding or starting the nats-server".to_owned(),
        ensure_server(g, &data_dir),
    )
    .await;
    let (child, g) = match found {
        Ok(found) => found,
        Err(e) => return super::stopped_cleanly(Err(e)),
    };
    let result = serve(g, args, data_dir, config, shutdown).await;
    if let Some(mut child) = child {
        // The workers have flushed their acks (or given up on a server that does not answer);
        // now the server may go (SIGTERM: it syncs its store), and `up` returns only once it is
        // gone.
        child.stop().await;
        eprintln!("stopped the child nats-server");
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

/// Returns a child server (kept alive by the caller) when one had to be started, and the
/// global flags pointing at the server in use.
async fn ensure_server(
    g: &Global,
    data_dir: &std::path::Path,
) -> Result<(Option<ServerProcess>, Global)> {
    let (host, port) = host_port(&g.nats)?;
    let addr = format!("{host}:{port}");
    let answering = tokio::time::timeout(
        Duration::from_secs(1),
        tokio::net::TcpStream::connect(&addr),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    if answering {
        return Ok((None, g.clone()));
    }
    if !matches!(host.as_str(), "127.0.0.1" | "localhost" | "::1") {
        bail!(
            "no NATS server answers at {}; start it, or point --nats at a running one",
            config::shown_url(g)
        );
    }
    let binary = config::nats_server_binary().await?;
    let store_dir = data_dir.join("nats");
    let child = ServerProcess::start(&ServerOptions {
        binary,
        store_dir: store_dir.clone(),
        port: Some(port),
        extra_args: Vec::new(),
    })
    .await?;
    eprintln!(
        "started nats-server (pid {}) on {} with JetStream in {}",
        child.pid().unwrap_or_default(),
        child.url(),
        store_dir.display()
    );
    let mut g = g.clone();
    g.nats = child.url().to_owned();
    Ok((Some(child), g))
}

fn host_port(url: &str) -> Result<(String, u16)> {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let hostport = rest
        .rsplit('@')
        .next()
        .unwrap_or(rest)
        .split(['/', ','])
        .next()
        .unwrap_or("");
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse().with_context(|| {
                format!("bad port in --nats {}", keyloop_nats::bus::redact_url(url))
            })?,
        ),
        None => (hostport, 4222),
    };
    Ok((host.trim_matches(['[', ']']).to_owned(), port))
}
