//! The `keyloop` command. Parses flags and environment (the only place that does), sets up
//! logging, and dispatches to one file per subcommand under `cmd/`. Errors reach the person as
//! one message that says what failed, for which credential or subject, and what to do.

mod api_client;
mod cli;
mod cmd;
mod config;
mod http;
mod output;
mod policy_config;
mod telemetry;

use clap::Parser;
use std::process::ExitCode;
use std::time::Duration;

/// How long the process waits, on its way out, for tasks that are still blocked (a DNS lookup
/// of an unreachable server runs on a blocking thread): shutdown is bounded everywhere else,
/// so it must not hang here.
const RUNTIME_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
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
    let telemetry = {
        let _inside = runtime.enter();
        config::init_logging(&cli)
    };
    let result = runtime.block_on(cmd::run(cli));
    // The last spans go out before the runtime their exporter runs on stops.
    telemetry.shutdown();
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN_TIMEOUT);
    match result {
        Ok(code) => code,
        // The reader of stdout has gone (`keyloop replay | head -1`): nothing to say to anyone.
        Err(e) if e.chain().any(|c| c.is::<output::StdoutClosed>()) => {
            ExitCode::from(output::STDOUT_CLOSED_EXIT)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
