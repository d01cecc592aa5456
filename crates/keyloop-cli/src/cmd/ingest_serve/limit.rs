//! A token bucket per client address: `--rate-limit` requests a second sustained, `--rate-burst`
//! at once. A request beyond it gets 429 with `Retry-After` (whole seconds until the next
//! token) before its body is read. IPv6 clients are counted per /64, the block one host is
//! usually given, so a host cannot dodge the limit by changing its address.
//!
//! The table of buckets is bounded: past [`MAX_CLIENTS`] addresses, buckets that have filled up
//! again (clients that went quiet) are dropped; if every one is still in use (a flood from many
//! addresses), the table is cleared, which lets each address its burst again rather than
//! refusing addresses never seen. `/healthz` is not limited.
//!
//! A request let through has [`REQUEST_LIMIT`](super::REQUEST_LIMIT) from its head to its
//! answer, body included (408 after that), so a client sending its body slowly holds its
//! connection no longer than that.

use super::Server;
use super::reply::Reply;
use anyhow::{Result, bail};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use tokio::time::{Duration, Instant};

/// Addresses tracked at most before the quiet ones are dropped.
pub(crate) const MAX_CLIENTS: usize = 10_000;

/// The buckets of every client address seen lately.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    /// Tokens added per second.
    rate: f64,
    /// Tokens a bucket holds at most.
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl RateLimiter {
    /// `rate` requests a second, `burst` at once; both at least 1.
    pub(crate) fn new(rate: u32, burst: u32) -> Result<Self> {
        if rate == 0 || burst == 0 {
            bail!(
                "--rate-limit and --rate-burst must be at least 1 (got {rate} and {burst}); \
                 raise them rather than turning the limit off"
            );
        }
        Ok(Self {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::default(),
        })
    }

    /// Takes a token for `client`, or says how long until one is there.
    pub(crate) fn check(&self, client: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() >= MAX_CLIENTS && !buckets.contains_key(&client_key(client)) {
            self.prune(&mut buckets, now);
        }
        let bucket = buckets.entry(client_key(client)).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        bucket.tokens = self.refilled(bucket, now);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / self.rate))
        }
    }

    fn refilled(&self, bucket: &Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        (bucket.tokens + elapsed * self.rate).min(self.burst)
    }

    fn prune(&self, buckets: &mut HashMap<IpAddr, Bucket>, now: Instant) {
        buckets.retain(|_, b| self.refilled(b, now) < self.burst);
        if buckets.len() >= MAX_CLIENTS {
            tracing::warn!(
                clients = buckets.len(),
                "more client addresses at once than the rate limiter tracks: starting afresh"
            );
            buckets.clear();
        }
    }
}

/// The address a bucket is kept for: the address itself, or an IPv6 address's /64.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
    }
}

/// Refuses a request over its client's rate before the endpoint sees it.
pub(crate) async fn middleware(
    State(server): State<Arc<Server>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    if request.uri().path() == "/healthz" {
        return next.run(request).await;
    }
    match server.limiter.check(client.ip()) {
        Ok(()) => {
            let path = request.uri().path().to_owned();
            tracing::debug!(client = %client.ip(), path, "request received");
            match tokio::time::timeout(super::REQUEST_LIMIT, next.run(request)).await {
                Ok(response) => response,
                Err(_) => {
                    tracing::warn!(client = %client.ip(), path, "request abandoned: over the time limit");
                    Reply::error(
                        StatusCode::REQUEST_TIMEOUT,
                        format!(
                            "the request took over {}s (a body sent too slowly?)",
                            super::REQUEST_LIMIT.as_secs()
                        ),
                    )
                    .into_response()
                }
            }
        }
        Err(wait) => {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            tracing::warn!(client = %client.ip(), path = request.uri().path(), retry_after = secs, "rate limited");
            Reply::error(
                StatusCode::TOO_MANY_REQUESTS,
                format!("too many requests from this address; retry in {secs}s"),
            )
            .retry_after(secs)
            .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[tokio::test(start_paused = true)]
    async fn a_client_gets_its_burst_then_its_rate() {
        let limiter = RateLimiter::new(2, 3).unwrap();
        for _ in 0..3 {
            assert_eq!(limiter.check(A), Ok(()));
        }
        let wait = limiter.check(A).expect_err("over the burst");
        assert_eq!(wait, Duration::from_millis(500));
        // Another client has its own bucket.
        assert_eq!(limiter.check(B), Ok(()));
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(limiter.check(A), Ok(()));
        assert!(limiter.check(A).is_err());
        // A quiet client fills up to its burst, no more.
        tokio::time::advance(Duration::from_secs(60)).await;
        for _ in 0..3 {
            assert_eq!(limiter.check(A), Ok(()));
        }
        assert!(limiter.check(A).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn ipv6_clients_share_their_64_and_mapped_ipv4_is_ipv4() {
        let limiter = RateLimiter::new(1, 1).unwrap();
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let other_host: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other_net: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(limiter.check(one), Ok(()));
        assert!(limiter.check(other_host).is_err(), "same /64");
        assert_eq!(limiter.check(other_net), Ok(()));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(limiter.check(mapped), Ok(()));
        assert!(limiter.check(A).is_err(), "the same IPv4 client");
    }

    #[tokio::test(start_paused = true)]
    async fn the_table_of_clients_stays_bounded() {
        let limiter = RateLimiter::new(1, 2).unwrap();
        for i in 0..MAX_CLIENTS as u32 {
            let ip = IpAddr::V4((0x0a00_0000 + i).into());
            limiter.check(ip).unwrap();
        }
        // Every bucket is still in use: the table starts afresh instead of growing.
        limiter.check(A).unwrap();
        assert_eq!(limiter.buckets.lock().unwrap().len(), 1);
        assert!(RateLimiter::new(0, 1).is_err(), "no limit is refused");
    }
}
