//! The operations endpoint of `keyloop up|worker --metrics-addr`: `/metrics` (Prometheus text,
//! see `keyloop_nats::metrics` for every name), `/healthz` (200 while the process runs: its
//! liveness), `/readyz` (200 only while the NATS connection is up and the consumer of every
//! role the process runs exists; 503 with the reasons in the body otherwise, see
//! `keyloop_nats::health`) and 404 for any other path. GET only; served on axum with HTTP/1.1.

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use keyloop_nats::health::{Health, Readiness};
use std::net::SocketAddr;
use std::sync::Arc;

/// Binds `addr` and serves the endpoint in the background for the life of the process.
pub(crate) async fn serve(addr: SocketAddr, health: Arc<Health>) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("cannot serve metrics and health on {addr}; choose another --metrics-addr")
    })?;
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics, /healthz and /readyz");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(health)).await {
            tracing::error!(error = %e, "the metrics and health endpoint stopped");
        }
    });
    Ok(())
}

fn router(health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "alive\n" }))
        .route("/readyz", get(ready))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "not found: this endpoint serves /metrics, /healthz and /readyz\n",
            )
        })
        .with_state(health)
}

async fn metrics(State(health): State<Arc<Health>>) -> Response {
    // The connection gauge is read now, not at the last probe.
    let _ = health.readiness();
    (
        [(header::CONTENT_TYPE, keyloop_nats::metrics::CONTENT_TYPE)],
        keyloop_nats::metrics::global().render(),
    )
        .into_response()
}

async fn ready(State(health): State<Arc<Health>>) -> (StatusCode, String) {
    readiness_response(&health.readiness())
}

/// 200 `ready`, or 503 with one reason a line.
fn readiness_response(readiness: &Readiness) -> (StatusCode, String) {
    if readiness.is_ready() {
        return (StatusCode::OK, "ready\n".into());
    }
    let mut body = String::from("not ready:\n");
    for reason in readiness.reasons() {
        body.push_str("- ");
        body.push_str(reason);
        body.push('\n');
    }
    (StatusCode::SERVICE_UNAVAILABLE, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_nats::connection::State as Conn;
    use keyloop_nats::Role;
    use keyloop_nats::health::{ConsumerCheck, assess};

    #[test]
    fn not_ready_is_a_503_listing_every_reason() {
        let checks = [
            (Role::Revoker, ConsumerCheck::Missing),
            (Role::Rotator, ConsumerCheck::Unanswered("timed out".into())),
        ];
        let r = assess(Conn::Connected, Some(&checks), |_| "S".into());
        let (status, body) = readiness_response(&r);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            body,
            "not ready:\n- consumer revoker on stream S does not exist; run `keyloop init`\n- consumer rotator on stream S could not be looked up: timed out\n"
        );
        let ready = assess(Conn::Connected, Some(&[]), |_| "S".into());
        assert_eq!(
            readiness_response(&ready),
            (StatusCode::OK, "ready\n".into())
        );
    }
}
