//! One file per subcommand, dispatched by a `match`, plus the helpers they share: shutdown on
//! a signal, and waiting for lifecycle events after sending a command.

mod approvals;
mod credential;
pub(crate) mod demo;
mod dlq;
mod incident;
mod ingest;
pub(crate) mod ingest_serve;
mod init;
mod inventory;
mod policy;
pub(crate) mod redrive;
mod replay;
mod revoke;
mod rotate;
pub(crate) mod rules;
mod schemas;
pub(crate) mod store;
mod task;
mod tick;
mod token;
mod up;
mod worker;

use crate::cli::{Cli, Command};
use anyhow::{Result, bail};
use futures::StreamExt;
use keyloop_core::LifecycleEvent;
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub(crate) async fn run(cli: Cli) -> Result<ExitCode> {
    let g = &cli.global;
    match cli.command {
        Command::Up(args) => up::run(g, args).await,
        Command::Worker(args) => worker::run(g, args).await,
        Command::Init { replicas } => init::run(g, replicas).await,
        Command::Credential(c) => credential::run(g, c).await,
        Command::Ingest(mut args) => match args.serve.take() {
            Some(ingest_serve::IngestCommand::Serve(serve)) => ingest_serve::run(g, *serve).await,
            None => ingest::run(g, args).await,
        },
        Command::Rotate(args) => rotate::run(g, args).await,
        Command::Revoke(args) => revoke::run(g, args).await,
        Command::Replay(args) => replay::run(g, args).await,
        Command::Incident(args) => incident::run(g, args).await,
        Command::Inventory(c) => inventory::run(g, c).await,
        Command::Redrive(args) => redrive::run(g, args).await,
        Command::Dlq(c) => dlq::run(g, c).await,
        Command::Store(c) => store::run(g, c).await,
        Command::Demo => demo::run(g).await,
        Command::Task(c) => task::run(g, c).await,
        Command::Token(c) => token::run(g, c).await,
        Command::Tick => tick::run(g).await,
        Command::Rules { tool } => rules::run(g.json, tool),
        Command::Schemas { dir } => schemas::run(&dir),
        Command::Policy(c) => policy::run(g.json, c),
        Command::Approvals(c) => approvals::run(g, c).await,
    }
}

/// A token cancelled on Ctrl-C or SIGTERM.
pub(crate) fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("install SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutdown requested: finishing messages in hand");
        t.cancel();
    });
    token
}

/// Shutdown was requested while a start-up step was still waiting (on NATS, or on another
/// `keyloop up` sharing the data directory); the step was abandoned. `up` and `worker` catch
/// it and exit cleanly.
#[derive(Debug)]
pub(crate) struct Abandoned(String);

impl std::fmt::Display for Abandoned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "shutdown requested while {}: abandoned it", self.0)
    }
}

impl std::error::Error for Abandoned {}

/// Runs the start-up step `step` (described by `what`, for the log) unless `shutdown` comes
/// first: then the step is dropped and [`Abandoned`] returned.
pub(crate) async fn unless_stopped<T, E: Into<anyhow::Error>>(
    shutdown: &CancellationToken,
    what: impl FnOnce() -> String,
    step: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T> {
    tokio::select! {
        biased;
        () = shutdown.cancelled() => Err(Abandoned(what()).into()),
        r = step => r.map_err(Into::into),
    }
}

/// Ends `up` or `worker`: a start abandoned on a signal is a clean stop, logged.
pub(crate) fn stopped_cleanly(result: Result<()>) -> Result<ExitCode> {
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if e.chain().any(|c| c.is::<Abandoned>()) => {
            tracing::warn!("{e}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(e),
    }
}

/// Parses a `--timeout` style duration within `bounds` (the error names the range).
pub(crate) fn duration_arg(bounds: keyloop_core::duration::Bounds, text: &str) -> Result<Duration> {
    crate::config::duration_flag(bounds, text)
}

/// Lifecycle events of one credential, subscribed before a command is sent so none is missed.
pub(crate) struct LifecycleWatch {
    sub: async_nats::Subscriber,
}

impl LifecycleWatch {
    pub(crate) async fn credential(bus: &keyloop_nats::Bus, credential: &str) -> Result<Self> {
        let subject = bus.topology.lifecycle("*", credential);
        let sub = bus.client.subscribe(subject.clone()).await?;
        // Make sure the server has the subscription before the command goes out.
        bus.client.flush().await?;
        Ok(Self { sub })
    }

    /// Waits for the first event that `done` accepts; events are passed to `seen` as they come
    /// (an error from it, such as a closed stdout, ends the wait).
    pub(crate) async fn until(
        &mut self,
        timeout: Duration,
        mut seen: impl FnMut(&LifecycleEvent) -> Result<()>,
        mut done: impl FnMut(&LifecycleEvent) -> bool,
    ) -> Result<LifecycleEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let next = tokio::time::timeout_at(deadline, self.sub.next()).await;
            let Ok(Some(msg)) = next else {
                bail!(
                    "no outcome within {}s; the command is queued and will still be processed when a worker runs (is `keyloop up` or `keyloop worker` running?); follow it with `keyloop replay`",
                    timeout.as_secs()
                );
            };
            let Ok(event) = serde_json::from_slice::<LifecycleEvent>(&msg.payload) else {
                continue;
            };
            seen(&event)?;
            if done(&event) {
                return Ok(event);
            }
        }
    }
}
