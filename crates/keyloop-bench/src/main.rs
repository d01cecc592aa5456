//! `keyloop-bench`: how close keyloop is to what NATS itself allows on this machine. A tool of
//! the workspace, not part of the product (like async-nats's `benches/` or vector's `vdev`): the
//! `keyloop` binary ships without it.
//!
//! A run starts its own nats-server (file storage), registers the credentials it will leak,
//! then runs each suite on that server: the raw JetStream loop (`keyloop-bench raw-worker`
//! processes of this binary) and keyloop's leak → revoke → rotate loop (`keyloop worker`
//! processes), each in K processes with the same concurrency, each through a latency phase and a
//! throughput phase; then the JIT phase and the sweep line. It prints a table and, as its last
//! line, one JSON object.
//!
//! The bench drives the `keyloop` binary, which it cannot build itself: cargo has no stable way
//! for one crate to depend on another crate's binary, and a build script running cargo would
//! fight the outer build over the target directory's lock. So `just bench` and `scripts/test`
//! run `cargo build -p keyloop-cli` (with the bench's profile) first, and the bench looks for
//! the binary as [`binaries::keyloop`] says, printing which one it drives.

mod binaries;
mod cli;
mod drive;
mod fleet;
mod jit;
mod measure;
mod plan;
mod raw;
mod report;
mod run;
mod serve;
mod suites;
mod sweep;

use clap::Parser;
use std::process::ExitCode;
use std::time::Duration;
use tracing_subscriber::EnvFilter;

/// How long the process waits, on its way out, for tasks still blocked (as `keyloop` does).
const RUNTIME_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(1);

/// The exit code when stdout was closed by its reader (128 + SIGPIPE), as `keyloop` uses.
const STDOUT_CLOSED_EXIT: u8 = 141;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    // Logs go to stderr, at warn unless RUST_LOG says otherwise: stdout is the report.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.process {
            Some(cli::Process::RawWorker { nats, concurrency }) => {
                raw::run_worker(&nats, &cli.global.prefix, concurrency).await
            }
            Some(cli::Process::IngestServe(args)) => serve::run(&cli.global, &args).await,
            None => run::run(&cli.global, &cli.bench).await,
        }
    });
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN_TIMEOUT);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of stdout has gone (`keyloop-bench | head -1`): nothing to say to anyone.
        Err(e) if e.chain().any(|c| c.is::<report::StdoutClosed>()) => {
            ExitCode::from(STDOUT_CLOSED_EXIT)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
