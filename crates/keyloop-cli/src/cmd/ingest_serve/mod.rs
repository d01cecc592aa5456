//! `keyloop ingest serve --listen ADDR`: detectors push their findings to keyloop over HTTP
//! instead of writing a report for `keyloop ingest`. One file per endpoint:
//!
//! | endpoint | who | authenticated by |
//! |---|---|---|
//! | `POST /github/secret-scanning` (`github.rs`) | GitHub's secret scanning partner program | ECDSA P-256 signature by a key of GitHub's list (`github_keys.rs`) |
//! | `POST /gitguardian` (`gitguardian.rs`) | GitGuardian custom webhooks | HMAC-SHA256 keyed by the timestamp and the signature token, within a replay window |
//! | `POST /generic` (`generic.rs`) | anything that can write keyloop's `generic` JSON lines | a bearer token |
//! | `GET /healthz` | probes | — |
//!
//! An endpoint is served only when its key or secret is configured; `serve` refuses to start
//! with none. Every value is hashed at the edge, as `keyloop ingest` does: a body is checked
//! (signature first, then its shape) before anything is published, its values go from the
//! body into [`Fingerprint`]s and are dropped (zeroized, and so is the body buffer, see
//! [`body`]), and the findings go through `ingest`'s publisher (`ingest::publish`): one
//! `leak.detected` per value, repeats folded, a bounded window of acks. A request is answered
//! only once its leak events are stored, so a 2xx means keyloop has them; a request that
//! could not be stored gets 503 and may be sent again (its events are deduplicated).
//!
//! Around the endpoints: a token bucket per client address (429 with `Retry-After`) and a time
//! limit per request (`limit.rs`); a body limit (`--max-body-mib`, 413 beyond), applied once
//! the sender's headers were checked, so nobody unauthenticated makes keyloop buffer a body
//! (`body.rs`); a deadline on the publishing under GitHub's 30 s; and a graceful stop on
//! SIGTERM/SIGINT that finishes the requests in hand (this file). Logs name the endpoint, the
//! client address, the batch size, the outcome and the time taken (`reply.rs`); never a
//! value, a signature or a header's content.
//!
//! Hand-written where no crate in the tree fits: a P-256 SPKI is a fixed 26-byte prefix and
//! a point, read without an ASN.1 library (`github_keys.rs`); the rate limiter is a few lines
//! of token bucket. axum runs with its default features off (HTTP/1.1 and tokio only).
//!
//! [`Fingerprint`]: keyloop_core::Fingerprint

mod args;
mod body;
mod generic;
mod gitguardian;
mod github;
mod github_keys;
mod limit;
mod partner;
mod reply;

pub(crate) use args::{IngestCommand, ServeArgs};

use super::ingest;
use crate::cli::Global;
use crate::output;
use anyhow::{Context, Result, bail};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use keyloop_core::duration::Bounds;
use keyloop_core::ingest::{Entry, Format};
use keyloop_nats::Bus;
use reply::Reply;
use serde::Serialize;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long requests in hand may take to finish after a stop was asked for; GitHub waits 30 s
/// for an answer, so a request still running after that has been given up by its sender.
const DRAIN: Duration = Duration::from_secs(30);

/// The longest an endpoint may take once the body is in (publishing, lookups): below GitHub's
/// 30 s, so a stuck publish ends in a 503 its sender sees rather than in its own timeout.
pub(crate) const REQUEST_DEADLINE: Duration = Duration::from_secs(25);

/// The longest a request may take from its head to its answer, its body's upload included:
/// longer than [`REQUEST_DEADLINE`], which bounds the work once the body is in.
pub(crate) const REQUEST_LIMIT: Duration = Duration::from_secs(28);

/// `--gitguardian-max-skew`: from 1 s to 1 h.
const MAX_SKEW: Bounds = Bounds {
    setting: "gitguardian-max-skew",
    min_secs: 1,
    max_secs: 3_600,
    capped_by: None,
};

/// The endpoints configured, and what every request handler shares.
pub(crate) struct Server {
    bus: Bus,
    github: Option<github::Endpoint>,
    gitguardian: Option<gitguardian::Endpoint>,
    generic: Option<generic::Endpoint>,
    limiter: limit::RateLimiter,
    max_body_mib: u32,
}

/// What `serve` prints once it listens (one JSON line with `--json`).
#[derive(Serialize)]
struct Listening {
    listening: SocketAddr,
    endpoints: Vec<&'static str>,
}

impl Server {
    fn endpoints(&self) -> Vec<&'static str> {
        let mut paths = Vec::new();
        if self.github.is_some() {
            paths.push(github::PATH);
        }
        if self.gitguardian.is_some() {
            paths.push(gitguardian::PATH);
        }
        if self.generic.is_some() {
            paths.push(generic::PATH);
        }
        paths
    }
}

pub(crate) async fn run(g: &Global, args: ServeArgs) -> Result<ExitCode> {
    // Everything that can be wrong with the flags and files is said before connecting.
    let github_keys = args
        .github_keys
        .as_deref()
        .map(|path| github_keys::GithubKeys::load(path, args.github_current_key_only))
        .transpose()?;
    let gitguardian_token = secret_from(
        args.gitguardian_token_file.as_deref(),
        "KEYLOOP_GITGUARDIAN_TOKEN",
        "--gitguardian-token-file",
    )?;
    let max_skew = crate::config::duration_flag(MAX_SKEW, &args.gitguardian_max_skew)?;
    let generic_token = secret_from(
        args.generic_token_file.as_deref(),
        "KEYLOOP_INGEST_GENERIC_TOKEN",
        "--generic-token-file",
    )?;
    if github_keys.is_none() && gitguardian_token.is_none() && generic_token.is_none() {
        bail!(
            "no endpoint to serve: give --github-keys FILE (GitHub secret scanning), \
             --gitguardian-token-file FILE or KEYLOOP_GITGUARDIAN_TOKEN (GitGuardian), \
             --generic-token-file FILE or KEYLOOP_INGEST_GENERIC_TOKEN (generic)"
        );
    }
    if !(1..=256).contains(&args.max_body_mib) {
        bail!(
            "--max-body-mib {} is out of range: from 1 to 256",
            args.max_body_mib
        );
    }
    let limiter = limit::RateLimiter::new(args.rate_limit, args.rate_burst)?;

    let shutdown = super::shutdown_on_signal();
    super::stopped_cleanly(
        async {
            let bus = super::unless_stopped(
                &shutdown,
                || "connecting to NATS".to_owned(),
                crate::config::connect(g),
            )
            .await?;
            let github = match github_keys {
                None => None,
                Some(keys) => Some(github::Endpoint::open(&bus, keys).await?),
            };
            let server = Arc::new(Server {
                github,
                gitguardian: gitguardian_token.map(|t| gitguardian::Endpoint::new(t, max_skew)),
                generic: generic_token.map(generic::Endpoint::new),
                limiter,
                max_body_mib: args.max_body_mib,
                bus: bus.clone(),
            });
            let served = serve(g, args.listen, server, &shutdown).await;
            bus.close().await;
            served
        }
        .await,
    )
}

/// Listens on `addr` and serves until `shutdown`, then lets the requests in hand finish.
async fn serve(
    g: &Global,
    addr: SocketAddr,
    server: Arc<Server>,
    shutdown: &CancellationToken,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}; choose another --listen address"))?;
    let listening = Listening {
        listening: listener.local_addr()?,
        endpoints: server.endpoints(),
    };
    if g.json {
        output::json_line(&listening)?;
    } else {
        output::line(format_args!(
            "listening on http://{}: {}",
            listening.listening,
            listening
                .endpoints
                .iter()
                .map(|p| format!("POST {p}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))?;
    }
    tracing::info!(addr = %listening.listening, endpoints = ?listening.endpoints, "ingest serve listening");
    let app = router(server).into_make_service_with_connect_info::<SocketAddr>();
    let serving = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .into_future();
    tokio::pin!(serving);
    let drained = async {
        shutdown.cancelled().await;
        tokio::time::sleep(DRAIN).await;
    };
    tokio::select! {
        served = &mut serving => served.context("the HTTP server stopped")?,
        () = drained => tracing::warn!("requests still in hand {}s after the stop was asked for: abandoned", DRAIN.as_secs()),
    }
    tracing::info!("ingest serve stopped");
    Ok(())
}

/// The routes, with the rate limit and the deadline around them (each endpoint reads its
/// body within `--max-body-mib` once its sender's headers were checked).
fn router(server: Arc<Server>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route(github::PATH, post(github::handle))
        .route(gitguardian::PATH, post(gitguardian::handle))
        .route(generic::PATH, post(generic::handle))
        .fallback(|| async { Reply::error(StatusCode::NOT_FOUND, "no such endpoint") })
        .layer(axum::middleware::from_fn_with_state(
            server.clone(),
            limit::middleware,
        ))
        .with_state(server)
}

/// `GET /healthz`: 200 while NATS is connected, 503 when not (leaks could not be stored).
async fn healthz(State(server): State<Arc<Server>>) -> Reply {
    use async_nats::connection::State as Nats;
    let connected = server.bus.client.connection_state() == Nats::Connected;
    let body = serde_json::json!({
        "status": if connected { "ok" } else { "unavailable" },
        "nats": if connected { "connected" } else { "disconnected" },
        "endpoints": server.endpoints(),
    });
    let status = if connected {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Reply::json(status, &body)
}

/// Publishes `entries` through `ingest`'s publisher (as the `generic` format's findings) and
/// gives the answer with its outcome for the log: the summary (200), the summary with the
/// rejected entries when some were (422: the others are published), or 503 when the leak
/// events could not all be stored.
async fn store(bus: &Bus, entries: Vec<Entry>, path: &str) -> (Reply, &'static str) {
    let options = ingest::Options {
        name: format!("POST {path}"),
        show_rejections: false,
        progress: false,
    };
    let publishing = ingest::publish(
        bus,
        ingest::Parsing::of_entries(Format::Generic, entries),
        &options,
        None,
    );
    match tokio::time::timeout(REQUEST_DEADLINE, publishing).await {
        Ok(Ok(report)) if report.rejected_total() == 0 => {
            (Reply::json(StatusCode::OK, &report), "accepted")
        }
        Ok(Ok(report)) => {
            let mut body = serde_json::to_value(&report).expect("the summary serializes");
            body["error"] = serde_json::Value::from(format!(
                "{} finding(s) were rejected (reasons in `rejected`) and not acted on; the \
                 others were published: fix them and send them again",
                report.rejected_total()
            ));
            (
                Reply::json(StatusCode::UNPROCESSABLE_ENTITY, &body),
                "some_rejected",
            )
        }
        Ok(Err(e)) => {
            tracing::error!(endpoint = path, error = %format!("{e:#}"), "leak events not stored");
            (
                Reply::unavailable(
                    "the leak events could not be stored (NATS did not acknowledge them); \
                     send the request again (stored ones are deduplicated)",
                ),
                "not_stored",
            )
        }
        Err(_) => (
            Reply::unavailable(format!(
                "the leak events were not all stored within {}s; send the request again \
                 (stored ones are deduplicated)",
                REQUEST_DEADLINE.as_secs()
            )),
            "timed_out",
        ),
    }
}

/// A secret from `file` (its content without the trailing newline), else from the variable
/// `var`; `None` when neither is given. An empty one is refused: it would let anyone in.
fn secret_from(
    file: Option<&std::path::Path>,
    var: &str,
    flag: &str,
) -> Result<Option<keyloop_core::Secret>> {
    let text = match file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {flag} {}", path.display()))?,
        ),
        None => std::env::var(var).ok(),
    };
    let Some(mut text) = text else {
        return Ok(None);
    };
    // Trimmed in place: the value is never copied out of the buffer the `Secret` zeroizes.
    text.truncate(text.trim_end_matches(['\r', '\n']).len());
    let secret = keyloop_core::Secret::new(text);
    if secret.expose().trim().is_empty() {
        match file {
            Some(path) => bail!("{flag} {} is empty; put the secret in it", path.display()),
            None => bail!("{var} is empty; set it to the secret, or unset it"),
        }
    }
    Ok(Some(secret))
}
