//! A local HTTP receiver for outgoing webhooks (the notifier's): records every POST (path,
//! headers, body, when) and answers with the statuses it is told to (optionally with a
//! `Retry-After`), then 200. Started on a random or a given loopback port; stopped on drop.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::IntoResponse;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// One request received (its `Debug` shows the body as text).
#[derive(Clone)]
pub struct Received {
    /// Its path and query.
    pub path: String,
    /// Its headers, lowercase names.
    pub headers: Vec<(String, String)>,
    /// Its body.
    pub body: Vec<u8>,
    /// The status it was answered.
    pub status: u16,
    /// When it arrived.
    pub at: std::time::Instant,
}

impl std::fmt::Debug for Received {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Received")
            .field("path", &self.path)
            .field("status", &self.status)
            .field("idempotency_key", &self.header("idempotency-key"))
            .field("body", &String::from_utf8_lossy(&self.body))
            .finish()
    }
}

impl Received {
    /// The value of header `name` (lowercase), if sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON; panics when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "the webhook body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

#[derive(Default)]
struct Shared {
    received: Mutex<Vec<Received>>,
    answers: Mutex<VecDeque<(u16, Option<u64>)>>,
    changed: Notify,
}

/// The receiver.
pub struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn record(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let at = std::time::Instant::now();
    let (status, retry_after) = shared
        .answers
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or((200, None));
    shared.received.lock().unwrap().push(Received {
        path: uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers: headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    v.to_str().unwrap_or_default().to_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
        status,
        at,
    });
    shared.changed.notify_waiters();
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    match retry_after {
        Some(secs) => (code, [("retry-after", secs.to_string())]).into_response(),
        None => code.into_response(),
    }
}

impl Receiver {
    /// Starts on `addr` (`127.0.0.1:0` for a random port).
    pub async fn start_on(addr: SocketAddr) -> Self {
        let shared = Arc::new(Shared::default());
        let app = Router::new().fallback(record).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind the receiver");
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, shared, task }
    }

    /// Starts on a random loopback port.
    pub async fn start() -> Self {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The next requests are answered with these statuses, in order (then 200).
    pub fn answer(&self, statuses: &[u16]) {
        self.shared
            .answers
            .lock()
            .unwrap()
            .extend(statuses.iter().map(|s| (*s, None)));
    }

    /// The next request is answered `status` with `Retry-After: secs`.
    pub fn answer_retry_after(&self, status: u16, secs: u64) {
        self.shared
            .answers
            .lock()
            .unwrap()
            .push_back((status, Some(secs)));
    }

    /// Every request so far.
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// Waits until `done` holds over the requests received; panics after `timeout`.
    pub async fn wait(
        &self,
        what: &str,
        timeout: std::time::Duration,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.changed.notified();
            let now = self.received();
            if done(&now) {
                return now;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; received {:?}",
                    self.received()
                        .iter()
                        .map(|r| (r.path.clone(), r.status))
                        .collect::<Vec<_>>()
                );
            }
        }
    }
}
