//! notifier: posts notifications to an outgoing webhook (`--notify-webhook URL`, env
//! `KEYLOOP_NOTIFY_WEBHOOK`), Slack-compatible JSON. It reads the lifecycle stream (its own
//! durable consumer, filtered to [`keyloop_nats::topology::NOTIFIED_KINDS`], delivering only
//! what is stored after it was created: never the history before it) after the fact, so
//! nothing it does — a slow or dead receiver included — delays an issue, a rotation or a
//! revocation.
//!
//! **What is posted**: an `issued` event whose outcome is `notify` (the notify tier), and
//! every `approval_requested` / `approval_granted` / `approval_denied` / `approval_expired` /
//! `budget_tripped` / `budget_released` ([`payload::render`]). The body is
//! `{"text": "...", "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "..."}}],
//! "keyloop": {"event_id", "kind", "credential", "lease", "approval", "actor", "policies"}}`:
//! what happened, to what, by whom, the deciding policies, the approval id and the command that
//! decides it. Never a value, a token or a digest (a fingerprint tag is not one).
//!
//! **Delivery is at least once**: each post carries the event id (`Idempotency-Key` header,
//! `keyloop.event_id`), so a receiver can drop a repeat. A connection error, a timeout, `408`,
//! `429` or a `5xx` is retried (the message is nak'ed with the runtime's backoff, and no sooner
//! than a `Retry-After` in seconds asks); at most [`CONCURRENCY`] posts are in flight; any other
//! `4xx` is permanent: the event goes to the DLQ with a reason naming the receiver's host. The
//! URL is a secret (Slack's carry their token in the path): logs and errors name its scheme
//! and host only.

mod payload;

pub use payload::render;

use futures::FutureExt;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use keyloop_core::LifecycleData;
use keyloop_nats::{Delivery, Handler, HandlerError};
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, info};

/// How long one post may take.
const POST_TIMEOUT: Duration = Duration::from_secs(10);

/// Posts in flight at once per notifier replica, whatever `--concurrency` says: chat webhooks
/// rate-limit per URL (Slack's about one message a second), and a burst of 64 parallel posts
/// would mostly come back 429.
pub const CONCURRENCY: usize = 4;

/// A webhook URL, shown as `scheme://host` only.
#[derive(Clone)]
pub struct WebhookUrl {
    uri: hyper::Uri,
    shown: String,
}

impl std::fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl WebhookUrl {
    /// Parses an `http://` or `https://` URL; the error never repeats it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let uri: hyper::Uri = text.trim().parse().map_err(|_| {
            "the notify webhook is not a URL (expected https://host/path)".to_owned()
        })?;
        let scheme = uri.scheme_str().unwrap_or_default().to_owned();
        if scheme != "http" && scheme != "https" {
            return Err("the notify webhook must be an http:// or https:// URL".into());
        }
        let Some(host) = uri
            .authority()
            .map(|a| a.as_str().rsplit('@').next().unwrap_or_default().to_owned())
        else {
            return Err("the notify webhook URL has no host".into());
        };
        Ok(Self {
            shown: format!("{scheme}://{host}"),
            uri,
        })
    }

    /// `scheme://host`, for logs and errors.
    pub fn shown(&self) -> &str {
        &self.shown
    }
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<bytes::Bytes>>;

/// The handler of the notifier's consumer, posting to `url`.
pub fn handler(url: WebhookUrl) -> Result<Handler, crate::error::Error> {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| {
            crate::error::Error::new(
                crate::error::ErrorKind::Permanent,
                "load the platform's TLS roots for the notify webhook",
                e,
            )
        })?
        .https_or_http()
        .enable_http1()
        .build();
    let client: HttpsClient = Client::builder(TokioExecutor::new()).build(https);
    let shared = Arc::new((client, url));
    info!(webhook = %shared.1.shown(), "notifier posting to the webhook");
    Ok(Arc::new(move |delivery| {
        let shared = shared.clone();
        async move { notify(&shared.0, &shared.1, &delivery).await }.boxed()
    }))
}

async fn notify(
    client: &HttpsClient,
    url: &WebhookUrl,
    delivery: &Delivery,
) -> Result<(), HandlerError> {
    let event: keyloop_core::LifecycleEvent = serde_json::from_slice(&delivery.message.payload)
        .map_err(|e| {
            HandlerError::permanent(format!(
                "malformed lifecycle event at line {} column {} (see schemas/lifecycle.json)",
                e.line(),
                e.column()
            ))
        })?;
    let Some(body) = render(&event) else {
        debug!(id = %event.id, kind = event.data.kind.name(), "not a notification");
        return Ok(());
    };
    let body = serde_json::to_vec(&body)
        .map_err(|e| HandlerError::permanent(format!("encode the notification: {e}")))?;
    let request = hyper::Request::post(url.uri.clone())
        .header("content-type", "application/json")
        .header("idempotency-key", event.id.as_str())
        .header("user-agent", concat!("keyloop/", env!("CARGO_PKG_VERSION")))
        .body(Full::new(bytes::Bytes::from(body)))
        .map_err(|e| {
            HandlerError::permanent(format!("build the request to {}: {e}", url.shown()))
        })?;
    let response = match tokio::time::timeout(POST_TIMEOUT, client.request(request)).await {
        Err(_) => {
            return Err(HandlerError::transient(format!(
                "the notify webhook {} did not answer within {POST_TIMEOUT:?}; retrying",
                url.shown()
            )));
        }
        Ok(Err(e)) => {
            // The error text of a connect failure may name the URL: keep only its kind.
            let what = if e.is_connect() {
                "could not connect"
            } else {
                "the request failed"
            };
            return Err(HandlerError::transient(format!(
                "the notify webhook {}: {what}; retrying",
                url.shown()
            )));
        }
        Ok(Ok(response)) => response,
    };
    let status = response.status();
    let retry_after = response
        .headers()
        .get(hyper::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(retry_after_secs);
    // Drain the body so the connection can be reused; its content is not needed.
    let _ = tokio::time::timeout(POST_TIMEOUT, response.into_body().collect()).await;
    outcome(status.as_u16(), url, &event.data).map_err(|e| match retry_after {
        Some(after) if e.kind == keyloop_core::Retry::Transient => e.retry_after(after),
        _ => e,
    })
}

/// A `Retry-After` in seconds (the form chat webhooks send); an HTTP date is ignored, and the
/// runtime's own growing delay applies.
fn retry_after_secs(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// What a receiver's status means: done, retry, or give up.
fn outcome(status: u16, url: &WebhookUrl, data: &LifecycleData) -> Result<(), HandlerError> {
    match status {
        200..=299 => {
            info!(webhook = %url.shown(), kind = data.kind.name(), status, "notification posted");
            Ok(())
        }
        408 | 429 | 500..=599 => Err(HandlerError::transient(format!(
            "the notify webhook {} answered {status}; retrying",
            url.shown()
        ))),
        _ => Err(HandlerError::permanent(format!(
            "the notify webhook {} answered {status} for a {} notification; fix the webhook URL (--notify-webhook) and re-drive the DLQ",
            url.shown(),
            data.kind.name()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_webhook_url_is_shown_as_scheme_and_host_only() {
        let url =
            WebhookUrl::parse("https://hooks.slack.com/services/T000/B000/XXXXSECRET").unwrap();
        assert_eq!(url.shown(), "https://hooks.slack.com");
        assert!(!format!("{url:?}").contains("SECRET"));
        let with_user = WebhookUrl::parse("http://user:pw@127.0.0.1:8080/hook?token=abc").unwrap();
        assert_eq!(with_user.shown(), "http://127.0.0.1:8080");
        for bad in ["ftp://x/y", "not a url", "/relative"] {
            let e = WebhookUrl::parse(bad).unwrap_err();
            assert!(!e.contains(bad) || bad.len() < 4, "{e}");
        }
    }

    #[test]
    fn retry_after_is_read_in_seconds_only() {
        assert_eq!(retry_after_secs("7"), Some(Duration::from_secs(7)));
        assert_eq!(retry_after_secs(" 0 "), Some(Duration::ZERO));
        assert_eq!(retry_after_secs("Wed, 21 Oct 2026 07:28:00 GMT"), None);
        assert_eq!(retry_after_secs("-1"), None);
    }

    #[test]
    fn statuses_are_done_retried_or_permanent() {
        let url = WebhookUrl::parse("https://example.com/secret-path").unwrap();
        let data = LifecycleData::new(keyloop_core::LifecycleKind::ApprovalRequested, None, None);
        assert!(outcome(200, &url, &data).is_ok());
        assert!(outcome(204, &url, &data).is_ok());
        for s in [408, 429, 500, 503] {
            let e = outcome(s, &url, &data).unwrap_err();
            assert_eq!(e.kind, keyloop_core::Retry::Transient, "{s}");
        }
        for s in [400, 401, 404, 410] {
            let e = outcome(s, &url, &data).unwrap_err();
            assert_eq!(e.kind, keyloop_core::Retry::Permanent, "{s}");
            assert!(
                e.reason.contains("https://example.com") && !e.reason.contains("secret-path"),
                "{}",
                e.reason
            );
        }
    }
}
