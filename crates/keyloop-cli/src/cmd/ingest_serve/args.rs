//! The flags of `keyloop ingest serve`. Secrets (the GitGuardian signature token, the generic
//! endpoint's bearer token) come from a file or an environment variable, never a flag, so they
//! stay out of process listings.

use clap::{Args, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

/// What `keyloop ingest` does besides reading a report.
#[derive(Debug, Subcommand)]
pub(crate) enum IngestCommand {
    /// Receive detectors' webhooks over HTTP: GitHub's secret scanning partner program,
    /// GitGuardian custom webhooks and a generic endpoint (bearer token). Every value is hashed
    /// as it arrives and published as a leak; nothing else is kept. Runs until SIGTERM/Ctrl-C.
    Serve(Box<ServeArgs>),
}

/// How `ingest serve` listens and whom it believes.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on (plain HTTP/1.1: put it behind your TLS-terminating proxy or
    /// ingress), e.g. 127.0.0.1:8480; port 0 picks a free port, printed at start.
    #[arg(long, env = "KEYLOOP_INGEST_LISTEN")]
    pub(crate) listen: SocketAddr,
    /// A copy of GitHub's secret scanning public keys
    /// (https://api.github.com/meta/public_keys/secret_scanning, JSON). Enables
    /// POST /github/secret-scanning. Read again when a request names a key it does not hold.
    #[arg(long, env = "KEYLOOP_GITHUB_KEYS_FILE")]
    pub(crate) github_keys: Option<PathBuf>,
    /// Accept only signatures by the key GitHub marks `is_current` (default: any key of the
    /// list, so a delivery signed just before GitHub switched keys still verifies).
    #[arg(long, env = "KEYLOOP_GITHUB_CURRENT_KEY_ONLY")]
    pub(crate) github_current_key_only: bool,
    /// File holding the signature token of the GitGuardian custom webhook (else the
    /// KEYLOOP_GITGUARDIAN_TOKEN variable). Enables POST /gitguardian.
    #[arg(long, env = "KEYLOOP_GITGUARDIAN_TOKEN_FILE")]
    pub(crate) gitguardian_token_file: Option<PathBuf>,
    /// How far GitGuardian's `Timestamp` header may be from this machine's clock, either way,
    /// before a request is refused as a replay (from 1s to 1h).
    #[arg(long, env = "KEYLOOP_GITGUARDIAN_MAX_SKEW", default_value = "5m")]
    pub(crate) gitguardian_max_skew: String,
    /// File holding the bearer token of POST /generic (else the KEYLOOP_INGEST_GENERIC_TOKEN
    /// variable). Enables POST /generic.
    #[arg(long, env = "KEYLOOP_INGEST_GENERIC_TOKEN_FILE")]
    pub(crate) generic_token_file: Option<PathBuf>,
    /// Largest request body accepted, in MiB (from 1 to 256); a larger one gets 413. GitHub
    /// sends large batches in one request: the default fits tens of thousands of tokens.
    #[arg(long, env = "KEYLOOP_INGEST_MAX_BODY_MIB", default_value_t = 10)]
    pub(crate) max_body_mib: u32,
    /// Requests per second one client address may send, sustained (IPv6: per /64); beyond
    /// it, 429 with Retry-After. Behind a proxy every request comes from the proxy's address.
    #[arg(long, env = "KEYLOOP_INGEST_RATE_LIMIT", default_value_t = 20)]
    pub(crate) rate_limit: u32,
    /// Requests one client address may send at once above that rate.
    #[arg(long, env = "KEYLOOP_INGEST_RATE_BURST", default_value_t = 40)]
    pub(crate) rate_burst: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("keyloop").chain(args.iter().copied()))
    }

    #[test]
    fn serve_is_a_subcommand_of_ingest_beside_the_report_formats() {
        let cli = parse(&[
            "ingest",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--github-keys",
            "keys.json",
            "--json",
        ])
        .unwrap();
        let Command::Ingest(args) = cli.command else {
            panic!("not an ingest: {cli:?}");
        };
        let Some(IngestCommand::Serve(serve)) = args.serve else {
            panic!("not serve: {args:?}");
        };
        assert_eq!(serve.listen.port(), 0);
        assert_eq!(serve.github_keys.as_deref(), Some("keys.json".as_ref()));
        assert_eq!(
            (serve.max_body_mib, serve.rate_limit, serve.rate_burst),
            (10, 20, 40)
        );
        assert!(cli.global.json);

        let report = parse(&["ingest", "gitleaks", "report.json"]).unwrap();
        let Command::Ingest(args) = report.command else {
            panic!("not an ingest");
        };
        assert!(args.serve.is_none());
        assert!(parse(&["ingest"]).is_err(), "a FORMAT is still required");
        assert!(parse(&["ingest", "serve"]).is_err(), "--listen is required");
        assert!(parse(&["ingest", "serve", "--listen", "localhost"]).is_err());
    }
}
