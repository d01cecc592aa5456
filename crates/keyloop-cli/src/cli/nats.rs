//! The flags of the NATS connection, TLS included.

use clap::Args;
use std::path::PathBuf;

/// How to reach NATS: every subcommand accepts these.
#[derive(Debug, Args, Clone)]
pub(crate) struct NatsArgs {
    /// NATS server URL (several: comma-separated). `tls://host:port` requires TLS.
    #[arg(
        long,
        global = true,
        env = "KEYLOOP_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub(crate) nats: String,
    /// NATS user. Its password comes from the KEYLOOP_NATS_PASSWORD variable (never a flag,
    /// so it stays out of process listings); `nats://user:password@host` in --nats works too.
    #[arg(long, global = true, env = "KEYLOOP_NATS_USER")]
    pub(crate) nats_user: Option<String>,
    /// Prefix of this client's reply subjects. Default: `_INBOX_<user>` when connecting as a
    /// user, else `_INBOX`; the shipped server permissions let each user read only its own.
    #[arg(long, global = true, env = "KEYLOOP_NATS_INBOX_PREFIX")]
    pub(crate) nats_inbox_prefix: Option<String>,
    /// PEM file of the CA that signed the NATS server's certificate (instead of the system's
    /// roots). Implies TLS.
    #[arg(long, global = true, env = "KEYLOOP_NATS_CA")]
    pub(crate) nats_ca: Option<PathBuf>,
    /// PEM file of this client's certificate, for a server that verifies clients (with
    /// --nats-key). Implies TLS.
    #[arg(long, global = true, env = "KEYLOOP_NATS_CERT", requires = "nats_key")]
    pub(crate) nats_cert: Option<PathBuf>,
    /// PEM file of the private key of --nats-cert.
    #[arg(long, global = true, env = "KEYLOOP_NATS_KEY", requires = "nats_cert")]
    pub(crate) nats_key: Option<PathBuf>,
}
