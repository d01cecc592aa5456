//! `POST /generic`: keyloop's own `generic` JSON lines (one object per line with `secret`,
//! `sha256` or `sha1`, and optional `repo`, `file`, `line`, `commit`, `url`, `detector`; the
//! parser of `keyloop ingest generic`), for any detector or script that can send a request.
//!
//! Authenticated by `Authorization: Bearer <token>`, the token from `--generic-token-file` or
//! `KEYLOOP_INGEST_GENERIC_TOKEN`. The presented token is compared in constant time: both it
//! and the configured one are put through HMAC-SHA256 under a key drawn at start, and ring
//! compares the tags, so neither the comparison's time nor the token's length tells anything.
//! The configured token itself is not kept.
//!
//! The whole body is parsed before anything is published: a body that is not generic JSON
//! lines (400) publishes nothing; lines that are rejected are listed (422) while the others are
//! published, as `keyloop ingest` does. The answer is `ingest --json`'s summary.

use super::Server;
use super::body;
use super::github::not_enabled;
use super::github_keys::header;
use super::reply::{Reply, Request};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use keyloop_core::Secret;
use keyloop_core::ingest::{self, Entry, Format};
use ring::hmac;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::sync::Arc;

/// The endpoint's path.
pub(crate) const PATH: &str = "/generic";

/// The generic endpoint: what a presented bearer token must hash to.
pub(crate) struct Endpoint {
    key: hmac::Key,
    expected: hmac::Tag,
}

/// Why a request's token was refused. Each is a 401.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    Missing,
    NotBearer,
    Wrong,
}

impl Refusal {
    fn message(self) -> &'static str {
        match self {
            Self::Missing => "missing Authorization header: send `Authorization: Bearer <token>`",
            Self::NotBearer => "the Authorization header is not `Bearer <token>`",
            Self::Wrong => "the bearer token is not this endpoint's",
        }
    }
}

impl Endpoint {
    pub(crate) fn new(token: Secret) -> Self {
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &ring::rand::SystemRandom::new())
            .expect("the system's random generator works");
        let expected = hmac::sign(&key, token.expose().as_bytes());
        Self { key, expected }
    }

    /// Checks the request's bearer token.
    pub(crate) fn authorize(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let value = header(headers, "authorization").ok_or(Refusal::Missing)?;
        let (scheme, token) = value.trim().split_once(' ').ok_or(Refusal::NotBearer)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(Refusal::NotBearer);
        }
        hmac::verify(&self.key, token.trim().as_bytes(), self.expected.as_ref())
            .map_err(|_| Refusal::Wrong)
    }
}

pub(crate) async fn handle(
    State(server): State<Arc<Server>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Reply {
    let request = Request::new("generic", client);
    let Some(endpoint) = &server.generic else {
        return request.done(not_enabled(), 0, "not_enabled");
    };
    // The token is checked before the body is read.
    if let Err(refusal) = endpoint.authorize(&headers) {
        let reply = Reply::error(StatusCode::UNAUTHORIZED, refusal.message()).bearer_challenge();
        return request.done(reply, 0, "unauthorized");
    }
    let body = match body::read(&headers, body, server.max_body_mib).await {
        Ok(body) => body,
        Err(reply) => return request.done(reply, 0, "unreadable"),
    };
    // Parsed whole, on a blocking thread (a large body is seconds of work), before anything is
    // published.
    let parsed = tokio::task::spawn_blocking(move || {
        let mut entries = Vec::new();
        let input = std::io::Cursor::new(body);
        ingest::parse(Format::Generic, input, |entry| {
            entries.push(entry);
            ControlFlow::Continue(())
        })
        .map(|_| entries)
    })
    .await;
    let entries: Vec<Entry> = match parsed {
        Ok(Ok(entries)) => entries,
        Ok(Err(e)) => {
            let reply = Reply::error(
                StatusCode::BAD_REQUEST,
                format!("{e}; the body must be keyloop's generic JSON lines"),
            );
            return request.done(reply, 0, "malformed");
        }
        Err(_) => {
            return request.done(
                Reply::error(StatusCode::INTERNAL_SERVER_ERROR, "the parser stopped"),
                0,
                "parser_failed",
            );
        }
    };
    let size = entries.len();
    let (reply, outcome) = super::store(&server.bus, entries, PATH).await;
    request.done(reply, size, outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("Authorization", value.parse().unwrap());
        headers
    }

    #[test]
    fn only_the_configured_bearer_token_is_let_in() {
        let endpoint = Endpoint::new(Secret::from("FAKE-bearer-0001"));
        assert_eq!(endpoint.authorize(&with("Bearer FAKE-bearer-0001")), Ok(()));
        assert_eq!(
            endpoint.authorize(&with("bearer  FAKE-bearer-0001 ")),
            Ok(())
        );
        assert_eq!(
            endpoint.authorize(&with("Bearer FAKE-bearer-0002")),
            Err(Refusal::Wrong)
        );
        assert_eq!(
            endpoint.authorize(&with("Bearer FAKE-bearer-000")),
            Err(Refusal::Wrong),
            "a prefix"
        );
        assert_eq!(
            endpoint.authorize(&with("Basic RkFLRS1iZWFyZXItMDAwMQ==")),
            Err(Refusal::NotBearer)
        );
        assert_eq!(
            endpoint.authorize(&with("FAKE-bearer-0001")),
            Err(Refusal::NotBearer)
        );
        assert_eq!(endpoint.authorize(&HeaderMap::new()), Err(Refusal::Missing));
        for refusal in [Refusal::Missing, Refusal::NotBearer, Refusal::Wrong] {
            assert!(!refusal.message().contains("FAKE-bearer"));
        }
    }
}
