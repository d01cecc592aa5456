//! `keyloop up`: every worker in one process. When nothing answers at `--nats` (and it is a
//! loopback address), starts a child nats-server with JetStream under the data directory and
//! stops it on exit. Creates a dev master key (mode 0600) when none is given and the local
//! store has no key yet, and says so; it never makes a second key for a store that has one.

use crate::cli::{Global, RunArgs};
use crate::config;
use anyhow::{Context, Result, bail};
use keyloop_nats::Role;
use keyloop_nats::server::{ServerOptions, ServerProcess};
use keyloop_workers::WorkerContext;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

pub(crate) async fn run(g: &Global, args: RunArgs) -> Result<ExitCode> {
    let config = config::worker_config(&args)?;
    let data_dir = config::data_dir(g);
    let (child, g) = ensure_server(g, &data_dir).await?;
    let bus = config::connect(&g).await?;
    bus.topology
        .init(&bus.js)
        .await
        .with_context(|| format!("keyloop init on {}", config::shown_url(&g)))?;
    let key = match config::master_key(&g)? {
        Some(k) => k,
        None => new_dev_key(&g, &bus, &data_dir).await?,
    };
    let mut ctx = match WorkerContext::open(bus, Some(&key.key)).await {
        Ok(ctx) => ctx,
        Err(e) => {
            // Another process claimed the empty store between our look and our open: the key
            // made for it is nobody's, and must not be found by the next run. (Not on any other
            // error: the store may have recorded the new key before the failure.)
            if let config::KeySource::NewDevKey(path) = &key.source
                && config::key_refusal(&e).is_some()
            {
                let _ = std::fs::remove_file(path);
            }
            return Err(config::explain_key_refusal(e, Some(&key)));
        }
    };
    config::add_backends(&g, &mut ctx.backends)?;
    config::apply_run_args(&args, &mut ctx).await?;
    let roles: Vec<_> = Role::ALL.to_vec();
    eprintln!(
        "keyloop up: workers {} on {} (Ctrl-C to stop)",
        roles
            .iter()
            .map(|r| r.name())
            .collect::<Vec<_>>()
            .join(", "),
        config::shown_url(&g)
    );
    let shutdown = super::shutdown_on_signal();
    let result = keyloop_workers::run(Arc::new(ctx), &roles, config, shutdown).await;
    if let Some(mut child) = child {
        // The workers have flushed their acks; now the server may go (SIGTERM: it syncs its
        // store), and `up` returns only once it is gone.
        child.stop().await;
        eprintln!("stopped the child nats-server");
    }
    result?;
    Ok(ExitCode::SUCCESS)
}

/// A new dev key in the data directory, only when the local store on the server has no key
/// yet: a store that already holds values (or a key check value) belongs to a key this run
/// was not given, and a new one would make every value unreadable to this process and every
/// value it writes unreadable to the rest of the fleet.
async fn new_dev_key(
    g: &Global,
    bus: &keyloop_nats::Bus,
    data_dir: &std::path::Path,
) -> Result<config::GivenKey> {
    use keyloop_backends::LocalStore;
    use keyloop_backends::local::Sealing;
    let bucket = bus.topology.secrets_bucket();
    let kv = bus.kv(&bucket).await?;
    let path = data_dir.join("master.key");
    let whose = match LocalStore::sealing(&kv).await? {
        Sealing::Empty => None,
        Sealing::Key(id) => Some(format!("belongs to master key id {id}")),
        Sealing::Unrecorded => Some("holds values sealed under a master key".to_owned()),
    };
    if let Some(whose) = whose {
        bail!(
            "the local store on {} (bucket {bucket}) {whose}, and no key was given (no --master-key-file, no KEYLOOP_MASTER_KEY, no {}); not creating a new dev key, which could not read its values. Pass the store's key with --master-key-file FILE or KEYLOOP_MASTER_KEY, or run with the --data-dir of the `keyloop up` that created it",
            config::shown_url(g),
            path.display()
        );
    }
    let (key, created) = config::ensure_dev_key(data_dir)?;
    if !created {
        // Written by another `keyloop up` on this data directory since we looked.
        return Ok(config::GivenKey {
            key,
            source: config::KeySource::DataDir(path),
        });
    }
    eprintln!(
        "created a dev master key at {} (mode 0600); for production pass --master-key-file or KEYLOOP_MASTER_KEY",
        path.display()
    );
    Ok(config::GivenKey {
        key,
        source: config::KeySource::NewDevKey(path),
    })
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
