//! `keyloop up`: every worker in one process. When nothing answers at `--nats` (and it is a
//! loopback address), starts a nats-server with JetStream under the data directory, shared
//! with any other `up` on that directory and stopped by the last one to leave
//! ([`shared_server`]). Creates a dev master key (mode 0600) when none is given and the local
//! store has no key yet, and says so; it never makes a second key for a store that has one.
//! A signal stops it at any point, also while it is still finding the server, connecting or
//! initialising: every such wait is raced against the signal.

mod shared_server;

use crate::cli::{Global, RunArgs};
use crate::config;
use anyhow::{Context, Result, bail};
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
        None => new_dev_key(&g, &bus, &data_dir).await?,
    };
    let opened = super::unless_stopped(
        &shutdown,
        || format!("opening keyloop's buckets on {url}"),
        WorkerContext::open(bus, Some(&key.key)),
    )
    .await;
    let mut ctx = match opened {
        Ok(ctx) => ctx,
        Err(e) => {
            // Another process claimed the empty store between our look and our open: the key
            // made for it is nobody's, and must not be found by the next run. (Not on any other
            // error: the store may have recorded the new key before the failure.)
            if let config::KeySource::NewDevKey(path) = &key.source
                && e.downcast_ref::<keyloop_workers::Error>()
                    .and_then(config::key_refusal)
                    .is_some()
            {
                let _ = std::fs::remove_file(path);
            }
            return Err(match e.downcast::<keyloop_workers::Error>() {
                Ok(e) => config::explain_key_refusal(e, Some(&key)),
                Err(e) => e,
            });
        }
    };
    config::add_backends(&g, &mut ctx.backends)?;
    // The notifier runs only where there is a webhook to post to.
    let roles: Vec<_> = Role::ALL
        .into_iter()
        .filter(|r| *r != Role::Notifier || args.notify_webhook.is_some())
        .collect();
    config::apply_run_args(&args, &mut ctx, &roles, &shutdown).await?;
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
