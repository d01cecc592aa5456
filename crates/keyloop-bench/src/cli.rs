//! The bench's command line: the run's flags (the same as `keyloop bench` had), and the raw
//! loop's worker process the bench starts (`keyloop-bench raw-worker`).

use clap::{Args, Parser, Subcommand};

/// keyloop-bench — time-to-revoke and throughput of keyloop beside the raw JetStream loop, on
/// a nats-server and worker processes of its own. Drives the `keyloop` binary: build it first
/// (`cargo build -p keyloop-cli`, `--release` for a release bench) or use `just bench`.
#[derive(Debug, Parser)]
#[command(
    name = "keyloop-bench",
    version,
    args_conflicts_with_subcommands = true
)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: Global,
    #[command(flatten)]
    pub(crate) bench: BenchArgs,
    #[command(subcommand)]
    pub(crate) process: Option<Process>,
}

/// Flags the run and its worker processes share.
#[derive(Debug, Args, Clone)]
pub(crate) struct Global {
    /// Print only the JSON line (the table goes away; progress stays on stderr).
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// Subject, stream and bucket prefix, of keyloop's layout and the raw loop's.
    #[arg(long, global = true, env = "KEYLOOP_PREFIX", default_value = "keyloop")]
    pub(crate) prefix: String,
}

/// What a run measures and how hard.
#[derive(Debug, Args, Clone)]
pub(crate) struct BenchArgs {
    /// Leak findings published per second in the latency phase.
    #[arg(long, default_value_t = 1000)]
    pub(crate) rate: u32,
    /// Length of the latency phase (e.g. 10s; from 1s to 1h).
    #[arg(long, default_value = "10s")]
    pub(crate) duration: String,
    /// Leaks published as fast as possible in the throughput phase.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) leaks: usize,
    /// Worker processes (each runs leak-responder, revoker and rotator); the raw loop runs as
    /// many processes.
    #[arg(long, default_value_t = 1)]
    pub(crate) replicas: usize,
    /// Messages in flight per role in each worker process, and per raw-loop process.
    #[arg(long, default_value_t = 64)]
    pub(crate) concurrency: usize,
    /// Credentials to register (target none, local store); at least rate × duration + leaks,
    /// which is the default. More makes a larger inventory that is never leaked.
    #[arg(long)]
    pub(crate) credentials: Option<usize>,
    /// A run of a few seconds for CI (rate 100/s for 1 s, 100 leaks): proves the bench works,
    /// its figures mean nothing.
    #[arg(long)]
    pub(crate) smoke: bool,
}

/// Processes the bench starts itself, and the measurement of `keyloop ingest serve`.
#[derive(Debug, Subcommand)]
pub(crate) enum Process {
    /// Tokens per second through `keyloop ingest serve`'s GitHub partner endpoint: signed
    /// batches against its own nats-server and `ingest serve` process (prints a table, then
    /// one JSON line).
    IngestServe(crate::serve::ServeBench),
    /// The raw JetStream loop the bench compares keyloop with (started by the bench, against
    /// the streams and consumer it created; runs until SIGTERM or Ctrl-C).
    RawWorker {
        /// NATS server URL.
        #[arg(
            long,
            env = "KEYLOOP_NATS_URL",
            default_value = "nats://127.0.0.1:4222"
        )]
        nats: String,
        /// Messages in flight in this process.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_run_takes_the_same_flags_as_keyloop_bench_did() {
        let cli = Cli::try_parse_from([
            "keyloop-bench",
            "--rate",
            "500",
            "--duration",
            "3s",
            "--leaks",
            "2000",
            "--replicas",
            "2",
            "--concurrency",
            "32",
            "--credentials",
            "9000",
            "--json",
        ])
        .unwrap();
        assert!(cli.process.is_none());
        assert!(cli.global.json);
        let b = cli.bench;
        assert_eq!(
            (
                b.rate,
                b.duration.as_str(),
                b.leaks,
                b.replicas,
                b.concurrency
            ),
            (500, "3s", 2000, 2, 32)
        );
        assert_eq!(b.credentials, Some(9000));
        assert!(!b.smoke);
    }

    #[test]
    fn ingest_serve_is_a_subcommand_with_its_own_flags() {
        let cli = Cli::try_parse_from([
            "keyloop-bench",
            "ingest-serve",
            "--tokens",
            "500",
            "--batch",
            "100",
            "--connections",
            "2",
        ])
        .unwrap();
        let Some(Process::IngestServe(args)) = cli.process else {
            panic!("ingest-serve parsed as {:?}", cli.process);
        };
        assert_eq!(
            (
                args.tokens,
                args.batch,
                args.connections,
                args.managed_every
            ),
            (500, 100, 2, 100)
        );
    }

    #[test]
    fn raw_worker_is_a_subcommand_and_refuses_run_flags() {
        let cli = Cli::try_parse_from([
            "keyloop-bench",
            "raw-worker",
            "--nats",
            "nats://127.0.0.1:1",
            "--concurrency",
            "8",
        ])
        .unwrap();
        let Some(Process::RawWorker { nats, concurrency }) = cli.process else {
            panic!("raw-worker parsed as {:?}", cli.process);
        };
        assert_eq!((nats.as_str(), concurrency), ("nats://127.0.0.1:1", 8));
        // A run flag before the subcommand is a mistake, said so, not silently ignored.
        assert!(Cli::try_parse_from(["keyloop-bench", "--smoke", "raw-worker"]).is_err());
    }
}
