//! A minimal HTTP endpoint for Prometheus: every request gets the process's counters in the
//! text exposition format. Hand-written on tokio to keep the dependency tree lean.

use anyhow::{Context, Result};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Binds `addr` and serves metrics in the background for the life of the process.
pub(crate) async fn serve(addr: SocketAddr) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("cannot serve metrics on {addr}; choose another --metrics-addr")
    })?;
    tracing::info!(addr = %listener.local_addr()?, "serving Prometheus metrics at /metrics");
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                // Read the request head (bounded); the path does not matter.
                let mut buf = [0u8; 2048];
                let mut seen = 0;
                while seen < buf.len() {
                    match conn.read(&mut buf[seen..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => seen += n,
                    }
                    if buf[..seen].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
                let body = keyloop_nats::metrics::global().render();
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes()).await;
                let _ = conn.write_all(body.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    Ok(())
}
