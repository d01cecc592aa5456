//! What the endpoints answer, and the one log line each request leaves. An answer is JSON: the
//! endpoint's own shape on success, `{"error": "..."}` otherwise, with words that say what to
//! fix and never a value, a signature or a header's content.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::net::SocketAddr;
use std::time::Instant;

/// An answer, ready to send.
#[derive(Debug)]
pub(crate) struct Reply {
    status: StatusCode,
    body: Vec<u8>,
    /// Seconds for `Retry-After` (429, 503).
    retry_after: Option<u64>,
    /// `WWW-Authenticate: Bearer` (401 of the generic endpoint).
    bearer_challenge: bool,
}

impl Reply {
    /// `value` as JSON with `status`.
    pub(crate) fn json(status: StatusCode, value: &impl Serialize) -> Self {
        Self {
            status,
            body: serde_json::to_vec(value).expect("replies serialize"),
            retry_after: None,
            bearer_challenge: false,
        }
    }

    /// `{"error": message}` with `status`.
    pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Self {
        Self::json(status, &serde_json::json!({ "error": message.into() }))
    }

    /// 503: the leak events could not be stored; the sender may try again.
    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        Self::error(StatusCode::SERVICE_UNAVAILABLE, message).retry_after(5)
    }

    /// With `Retry-After: secs`.
    pub(crate) fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// With `WWW-Authenticate: Bearer`.
    pub(crate) fn bearer_challenge(mut self) -> Self {
        self.bearer_challenge = true;
        self
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let mut response = (self.status, self.body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.bearer_challenge {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"keyloop ingest\""),
            );
        }
        response
    }
}

/// One request as the log sees it.
pub(crate) struct Request {
    pub(crate) endpoint: &'static str,
    pub(crate) client: SocketAddr,
    pub(crate) started: Instant,
}

impl Request {
    pub(crate) fn new(endpoint: &'static str, client: SocketAddr) -> Self {
        Self {
            endpoint,
            client,
            started: Instant::now(),
        }
    }

    /// Logs the outcome (`accepted`, `bad_signature`, …) with the batch size and the time
    /// taken, and passes the reply on. Refusals are warnings: a detector misconfigured, or
    /// someone trying.
    pub(crate) fn done(&self, reply: Reply, batch: usize, outcome: &str) -> Reply {
        let elapsed_ms = self.started.elapsed().as_secs_f64() * 1e3;
        let client = self.client.ip();
        let status = reply.status.as_u16();
        if reply.status.is_success() {
            tracing::info!(endpoint = self.endpoint, %client, status, batch, outcome, elapsed_ms = format_args!("{elapsed_ms:.1}"), "webhook handled");
        } else {
            tracing::warn!(endpoint = self.endpoint, %client, status, batch, outcome, elapsed_ms = format_args!("{elapsed_ms:.1}"), "webhook refused");
        }
        reply
    }
}
