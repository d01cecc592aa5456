//! `POST /github/secret-scanning`: GitHub's secret scanning partner program. GitHub finds a
//! token of a format keyloop registered with it (in a public repository, gist, issue, npm
//! package) and sends a signed batch of matches; keyloop answers with its feedback on each.
//!
//! 1. The signature is checked over the raw body (`github_keys.rs`): 401 when a header is
//!    missing, the key unknown (or, with `--github-current-key-only`, not current) or the
//!    signature wrong. Nothing of an unsigned body is read.
//! 2. The body is read (`partner.rs`), each token hashed at once: 400 when it is not an array
//!    of matches.
//! 3. Each match becomes a leak finding, published through `ingest`'s publisher (bounded
//!    window of acks, repeats folded) while the fingerprint index is asked, at most
//!    [`LOOKUPS_IN_FLIGHT`] at once, whether the token is keyloop's, as the leak-responder
//!    asks (`Fingerprint::lookup_keys`, then the index).
//! 4. The answer is GitHub's feedback array, one entry per match in the batch's order:
//!    `{"token_hash": "<sha256 hex of the token>", "token_type": "<type>", "label":
//!    "true_positive" | "false_positive"}`, `true_positive` when the token is a version of a
//!    keyloop credential (live or already dead) or a JIT lease token. Sent only once the leak
//!    events are stored; 503 when they could not be (GitHub may send again: the events are
//!    deduplicated). Elements that are not matches are rejected by position (422, with the
//!    other matches published all the same, as `keyloop ingest` publishes a report's good
//!    findings).
//!
//! The `token_hash` is the SHA-256 of a value GitHub found in public, which is a leak: a
//! managed one is being revoked by the time GitHub reads the answer, so the digest of a value
//! that is (or is about to be) dead is what leaves keyloop, and GitHub already holds the value
//! itself. It is what GitHub's feedback format asks for; keyloop never sends the raw token.

use super::Server;
use super::body;
use super::github_keys::{GithubKeys, Refusal};
use super::partner::{self, Match};
use super::reply::{Reply, Request};
use crate::cmd::ingest::{self, Options, Parsing};
use anyhow::Result;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use futures::{StreamExt, TryStreamExt};
use keyloop_core::ingest::{Entry, Format};
use keyloop_nats::{Bus, FingerprintIndex};
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::Arc;

/// The endpoint's path.
pub(crate) const PATH: &str = "/github/secret-scanning";

/// Fingerprint index lookups in flight at once for one batch.
pub(crate) const LOOKUPS_IN_FLIGHT: usize = 64;

/// The partner endpoint: GitHub's keys and the fingerprint index.
pub(crate) struct Endpoint {
    keys: GithubKeys,
    fingerprints: FingerprintIndex,
}

impl Endpoint {
    /// Opens the fingerprint index the labels come from.
    pub(crate) async fn open(bus: &Bus, keys: GithubKeys) -> Result<Self> {
        let fingerprints = bus.fingerprints().await.map_err(|e| {
            let stream = format!("KV_{}", bus.topology.fingerprint_bucket());
            anyhow::Error::new(e).context(format!(
                "the GitHub endpoint reads the fingerprint index for its feedback labels: is \
                 `keyloop init` done, and may this NATS user use $JS.API.STREAM.INFO.{stream} \
                 and $JS.API.DIRECT.GET.{stream}.> ?"
            ))
        })?;
        Ok(Self { keys, fingerprints })
    }
}

/// One entry of GitHub's feedback format.
#[derive(Debug, Serialize)]
pub(crate) struct Feedback<'m> {
    token_hash: &'m str,
    token_type: &'m str,
    label: Label,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Label {
    TruePositive,
    FalsePositive,
}

pub(crate) async fn handle(
    State(server): State<Arc<Server>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Reply {
    let request = Request::new("github", client);
    let Some(endpoint) = &server.github else {
        return request.done(not_enabled(), 0, "not_enabled");
    };
    let refused = |refusal: Refusal| {
        let reply = Reply::error(StatusCode::UNAUTHORIZED, refusal.message());
        request.done(reply, 0, refusal.outcome())
    };
    // The headers first: an unsigned request is refused before its body is read.
    if let Err(refusal) = GithubKeys::signed(&headers) {
        return refused(refusal);
    }
    let body = match body::read(&headers, body, server.max_body_mib).await {
        Ok(body) => body,
        Err(reply) => return request.done(reply, 0, "unreadable"),
    };
    if let Err(refusal) = endpoint.keys.verify(&headers, &body).await {
        return refused(refusal);
    }
    let batch = match partner::parse(&body) {
        Ok(batch) => batch,
        Err(reason) => {
            return request.done(
                Reply::error(StatusCode::BAD_REQUEST, reason),
                0,
                "malformed",
            );
        }
    };
    // The tokens are hashed: the body's plaintext is of no further use.
    drop(body);
    let size = batch.matches.len() + batch.rejected.len();
    let answered = tokio::time::timeout(
        super::REQUEST_DEADLINE,
        answer(&server.bus, endpoint, &batch.matches),
    )
    .await;
    let (feedback, true_positives) = match answered {
        Ok(Ok(answer)) => answer,
        Ok(Err(reply)) => return request.done(reply, size, "not_stored"),
        Err(_) => {
            return request.done(
                Reply::unavailable(format!(
                    "the leak events were not all stored within {}s; send the batch again \
                     (stored ones are deduplicated)",
                    super::REQUEST_DEADLINE.as_secs()
                )),
                size,
                "timed_out",
            );
        }
    };
    if !batch.rejected.is_empty() {
        let reply = Reply::json(
            StatusCode::UNPROCESSABLE_ENTITY,
            &serde_json::json!({
                "error": format!(
                    "{} of {size} elements are not matches ({{\"token\", \"type\", \"url\", \
                     \"source\"}}); the {} others were published",
                    batch.rejected.len(),
                    batch.matches.len()
                ),
                "rejected": batch.rejected,
            }),
        );
        return request.done(reply, size, "some_rejected");
    }
    tracing::debug!(true_positives, "partner batch labelled");
    request.done(
        Reply::json(StatusCode::OK, &feedback),
        size,
        if true_positives > 0 {
            "accepted_with_true_positives"
        } else {
            "accepted"
        },
    )
}

/// Publishes the matches as leaks and labels them, at the same time; the feedback in the
/// batch's order and the number of true positives, or the 503 to answer.
async fn answer<'m>(
    bus: &Bus,
    endpoint: &Endpoint,
    matches: &'m [Match],
) -> Result<(Vec<Feedback<'m>>, usize), Reply> {
    let findings: Vec<Entry> = matches
        .iter()
        .map(|m| Entry::Finding(m.finding()))
        .collect();
    let options = Options {
        name: format!("POST {PATH}"),
        show_rejections: false,
        progress: false,
    };
    let publishing = ingest::publish(
        bus,
        Parsing::of_entries(Format::Github, findings),
        &options,
        None,
    );
    let labelling = labels(&endpoint.fingerprints, matches);
    let (published, labels) = tokio::join!(publishing, labelling);
    let report = published.map_err(|e| {
        tracing::error!(error = %format!("{e:#}"), "partner batch: leak events not stored");
        Reply::unavailable(
            "the leak events could not be stored (NATS did not acknowledge them); send the \
             batch again (stored ones are deduplicated)",
        )
    })?;
    let labels = labels.map_err(|e| {
        tracing::error!(error = %e, "partner batch: the fingerprint index could not be read (does this NATS user may direct-get KV_keyloop_fingerprints?)");
        Reply::unavailable(
            "the leaks were stored but could not be labelled (fingerprint index unavailable); \
             send the batch again for the feedback",
        )
    })?;
    tracing::debug!(
        published = report.published,
        deduplicated = report.deduplicated,
        repeated = report.repeated,
        "partner batch stored"
    );
    let true_positives = labels.iter().filter(|l| **l == Label::TruePositive).count();
    let feedback = matches
        .iter()
        .zip(labels)
        .map(|(m, label)| Feedback {
            token_hash: m.token_hash(),
            token_type: &m.token_type,
            label,
        })
        .collect();
    Ok((feedback, true_positives))
}

/// Whether each match is a keyloop value, in order.
async fn labels(
    index: &FingerprintIndex,
    matches: &[Match],
) -> Result<Vec<Label>, keyloop_nats::Error> {
    let keys: Vec<Vec<String>> = matches
        .iter()
        .map(|m| m.fingerprint.lookup_keys())
        .collect();
    futures::stream::iter(keys)
        .map(|keys| async move {
            let found = index.lookup(&keys).await?;
            Ok(match found {
                Some(_) => Label::TruePositive,
                None => Label::FalsePositive,
            })
        })
        .buffered(LOOKUPS_IN_FLIGHT)
        .try_collect()
        .await
}

/// The answer of an endpoint this `serve` was not configured for.
pub(crate) fn not_enabled() -> Reply {
    Reply::error(
        StatusCode::NOT_FOUND,
        "this endpoint is not enabled on this server",
    )
}
