//! The connection to NATS as keyloop uses it: typed publishing of CloudEvents with
//! `Nats-Msg-Id` set to the event id (so a retried step is deduplicated by the server and
//! the publish is acknowledged before we go on), and handles on the KV buckets.

use crate::error::{Error, ErrorKind};
use crate::inventory::{FingerprintIndex, Inventory};
use crate::server;
use crate::topology::Topology;
use async_nats::jetstream::{self, context::PublishErrorKind, publish::PublishAck};
use async_nats::{HeaderMap, jetstream::message::PublishMessage};
use keyloop_core::Secret;
use keyloop_core::event::{CloudEvent, LifecycleEvent};
use serde::Serialize;
use std::fmt;
use std::time::Duration;
use tracing::{info, warn};

/// Connection events go to the log. A server error is most often a permissions violation: the
/// user may not publish or subscribe to a subject (the server names the subject, never a
/// payload).
/// Set once this process closes its connections on purpose (see [`Bus::close`]): losing the
/// server after that is expected, not worth a warning.
static CLOSING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn log_event(event: async_nats::Event) {
    use async_nats::Event;
    if CLOSING.load(std::sync::atomic::Ordering::Relaxed) {
        tracing::debug!(?event, "NATS event while closing");
        return;
    }
    match event {
        Event::ServerError(e) => {
            warn!(error = %e, "the NATS server reported an error (a permissions violation means this user may not use that subject: see deploy/nats/permissions.conf)")
        }
        Event::ClientError(e) => warn!(error = %e, "NATS client error"),
        Event::SlowConsumer(sid) => {
            warn!(sid, "slow consumer: messages were dropped by the client")
        }
        Event::Disconnected => warn!("disconnected from NATS; reconnecting"),
        Event::Connected => info!("connected to NATS"),
        Event::LameDuckMode => warn!("the NATS server is shutting down (lame duck mode)"),
        Event::Draining | Event::Closed => {}
    }
}

/// Header naming why a message went to the DLQ.
pub const DLQ_REASON_HEADER: &str = "Keyloop-Dlq-Reason";
/// Header naming the subject a DLQ message was first published on.
pub const DLQ_SUBJECT_HEADER: &str = "Keyloop-Original-Subject";
/// Header naming the stream sequence of the original message.
pub const DLQ_SEQUENCE_HEADER: &str = "Keyloop-Original-Sequence";
/// Header naming how many times the original was delivered.
pub const DLQ_DELIVERIES_HEADER: &str = "Keyloop-Deliveries";

/// A connected client with keyloop's layout.
#[derive(Clone, Debug)]
pub struct Bus {
    /// The core client (request/reply, plain subscriptions).
    pub client: async_nats::Client,
    /// JetStream on that client.
    pub js: jetstream::Context,
    /// Names of streams, subjects and buckets.
    pub topology: Topology,
}

/// How to reach NATS and who to be there.
#[derive(Clone, Default)]
pub struct Connect {
    /// `nats://[user[:password]@]host:port`. Credentials in the URL are used (async-nats
    /// itself ignores them) and never printed.
    pub url: String,
    /// The NATS user, when not in the URL.
    pub user: Option<String>,
    /// Its password, when not in the URL.
    pub password: Option<Secret>,
    /// Prefix of this client's reply subjects. Default: `_INBOX_<user>` when connecting as a
    /// user whose name is one subject token, else `_INBOX`. A per-user prefix lets the server
    /// allow each user its own replies only (see `deploy/nats/permissions.conf`): replies carry
    /// JIT tokens, which no other user may read.
    pub inbox_prefix: Option<String>,
    /// TLS beyond what a `tls://` URL asks for: a CA and a client certificate.
    pub tls: Tls,
}

/// The PEM files of a TLS connection to NATS. Any of them (or a `tls://` URL) makes TLS
/// required: the client never falls back to plain text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tls {
    /// The CA that signed the server's certificate, trusted instead of the system's roots.
    pub ca: Option<std::path::PathBuf>,
    /// This client's certificate, for a server that verifies clients.
    pub cert: Option<std::path::PathBuf>,
    /// The private key of `cert`.
    pub key: Option<std::path::PathBuf>,
}

impl Tls {
    /// Whether a connection to `url` must be TLS.
    pub fn required(&self, url: &str) -> bool {
        self.ca.is_some()
            || self.cert.is_some()
            || url
                .split(',')
                .any(|u| u.trim().to_ascii_lowercase().starts_with("tls://"))
    }

    /// `options` with these files, each checked to be readable first (a missing file is named
    /// here rather than as a TLS failure).
    fn apply(
        &self,
        url: &str,
        mut options: async_nats::ConnectOptions,
    ) -> Result<async_nats::ConnectOptions, Error> {
        let readable = |flag: &str, path: &std::path::Path| {
            std::fs::metadata(path).map(|_| ()).map_err(|e| {
                Error::new(
                    ErrorKind::Permanent,
                    format!("cannot read {flag} {}", path.display()),
                    e,
                )
            })
        };
        if let Some(ca) = &self.ca {
            readable("--nats-ca", ca)?;
            options = options.add_root_certificates(ca.clone());
        }
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                readable("--nats-cert", cert)?;
                readable("--nats-key", key)?;
                options = options.add_client_certificate(cert.clone(), key.clone());
            }
            (None, None) => {}
            _ => {
                return Err(Error::msg(
                    ErrorKind::Permanent,
                    "--nats-cert and --nats-key go together (KEYLOOP_NATS_CERT, KEYLOOP_NATS_KEY)",
                ));
            }
        }
        Ok(options.require_tls(self.required(url)))
    }
}

impl fmt::Debug for Connect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connect")
            .field("url", &redact_url(&self.url))
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "[redacted]"))
            .field("inbox_prefix", &self.inbox_prefix)
            .finish()
    }
}

impl Connect {
    /// Anonymous connection to `url` (or with the credentials in it).
    pub fn url(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            ..Self::default()
        }
    }

    /// The NATS user this connects as with a password (from the URL or [`Connect::user`]):
    /// the actor name its requests to the control plane carry. `None` for an anonymous or a
    /// token connection (a token is a secret and never named).
    pub fn login(&self) -> Option<String> {
        match self.parts() {
            (_, Some(user), Some(_)) => Some(user),
            _ => None,
        }
    }

    /// The URL without its credentials, the user taken from the URL or [`Connect::user`], and
    /// the password likewise.
    fn parts(&self) -> (String, Option<String>, Option<String>) {
        let (url, url_user, url_password) = split_userinfo(&self.url);
        let user = self.user.clone().or(url_user);
        let password = self
            .password
            .as_ref()
            .map(|p| p.expose().to_owned())
            .or(url_password);
        (url, user, password)
    }
}

/// `url` with its password (or token) replaced by `***`, for messages and logs.
pub fn redact_url(url: &str) -> String {
    let (bare, user, password) = split_userinfo(url);
    let Some(user) = user else {
        return bare;
    };
    let Some((scheme, rest)) = bare.split_once("://") else {
        return bare;
    };
    if password.is_some() {
        format!("{scheme}://{user}:***@{rest}")
    } else {
        // A lone userinfo is a token.
        format!("{scheme}://***@{rest}")
    }
}

/// Splits `scheme://user:password@host…` into the URL without userinfo, the user and the
/// password (percent-escapes are not decoded: keep credentials to unreserved characters, or
/// pass them with `--nats-user` and `KEYLOOP_NATS_PASSWORD`).
fn split_userinfo(url: &str) -> (String, Option<String>, Option<String>) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_owned(), None, None);
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return (url.to_owned(), None, None);
    };
    let (userinfo, host) = (&rest[..at], &rest[at + 1..]);
    let (user, password) = match userinfo.split_once(':') {
        Some((u, p)) => (u.to_owned(), Some(p.to_owned())),
        None => (userinfo.to_owned(), None),
    };
    (format!("{scheme}://{host}"), Some(user), password)
}

/// The default inbox prefix for `user`: `_INBOX_<user>` when the name is one subject token of
/// letters, digits, `_` and `-`.
fn default_inbox_prefix(user: Option<&str>) -> String {
    match user {
        Some(u)
            if !u.is_empty()
                && u.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') =>
        {
            format!("_INBOX_{u}")
        }
        _ => "_INBOX".to_owned(),
    }
}

impl Bus {
    /// Connects to `url` (anonymously, or with the credentials in it), and refuses a server
    /// older than 2.10 before anything is used.
    pub async fn connect(url: &str, topology: Topology) -> Result<Self, Error> {
        Self::connect_with(&Connect::url(url), topology).await
    }

    /// Connects as `connect` says, and refuses a server older than 2.10 before anything is
    /// used. Errors and logs name the URL without its password.
    pub async fn connect_with(connect: &Connect, topology: Topology) -> Result<Self, Error> {
        let (url, user, password) = connect.parts();
        let shown = redact_url(&connect.url);
        let inbox = connect
            .inbox_prefix
            .clone()
            .unwrap_or_else(|| default_inbox_prefix(user.as_deref()));
        // No retry on the first connect: a person or a supervisor needs to hear at once that
        // nothing answers. After that, reconnects are automatic and unbounded.
        let mut options = async_nats::ConnectOptions::new()
            .name("keyloop")
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(5))
            .custom_inbox_prefix(&inbox)
            .event_callback(|event| async move { log_event(event) });
        options = connect.tls.apply(&url, options)?;
        options = match (user.clone(), password) {
            (Some(user), Some(password)) => options.user_and_password(user, password),
            (Some(token), None) => options.token(token),
            (None, _) => options,
        };
        let client = options.connect(Self::server_addrs(&url)?).await.map_err(|e| {
            use async_nats::ConnectErrorKind as K;
            // A certificate the client refuses (or the server refuses) ends the handshake
            // with an I/O error that says so.
            let text = e.to_string().to_ascii_lowercase();
            let tls_refused = text.contains("certificate") || text.contains("tls") || text.contains("handshake");
            match e.kind() {
                K::Io if tls_refused => Error::new(
                    ErrorKind::Permanent,
                    format!(
                        "TLS with the NATS server at {shown} failed; check --nats-ca (the CA that signed the server's certificate, for its host name) and, when the server verifies clients, --nats-cert and --nats-key"
                    ),
                    e,
                ),
                K::AuthorizationViolation | K::Authentication => Error::new(
                    ErrorKind::Permanent,
                    format!(
                        "the NATS server at {shown} refused {}; check --nats-user / KEYLOOP_NATS_USER and KEYLOOP_NATS_PASSWORD (or the credentials in --nats)",
                        user.as_deref().map_or_else(|| "an anonymous connection".to_owned(), |u| format!("user {u}"))
                    ),
                    e,
                ),
                K::Tls => Error::new(
                    ErrorKind::Permanent,
                    format!(
                        "TLS with the NATS server at {shown} failed; check --nats-ca (the CA that signed the server's certificate, for its host name) and, when the server verifies clients, --nats-cert and --nats-key"
                    ),
                    e,
                ),
                _ => Error::new(
                    ErrorKind::Transient,
                    format!("no NATS server answers at {shown}; start one with `keyloop up`, or pass --nats URL"),
                    e,
                ),
            }
        })?;
        let url = shown;
        let version = client.server_info().version;
        if !server::is_supported(&version) {
            return Err(Error::msg(
                ErrorKind::Permanent,
                format!(
                    "the NATS server at {url} is version {version}; keyloop needs 2.10 or newer (KV buckets, consumer filter_subjects). Upgrade the server, or {}",
                    server::INSTALL_HINT
                ),
            ));
        }
        Ok(Self::from_client(client, topology))
    }

    /// Flushes what is buffered and closes the connection, on purpose: what the client reports
    /// from then on (the server going away too) is not logged as a warning.
    pub async fn close(&self) {
        CLOSING.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = self.client.drain().await {
            tracing::debug!(error = %e, "closing the NATS connection");
        }
    }

    /// `url` may list several servers of a cluster, comma-separated.
    fn server_addrs(url: &str) -> Result<Vec<async_nats::ServerAddr>, Error> {
        url.split(',')
            .map(|u| {
                u.trim().parse::<async_nats::ServerAddr>().map_err(|e| {
                    Error::new(
                        ErrorKind::Permanent,
                        format!("invalid NATS URL `{}`", u.trim()),
                        e,
                    )
                })
            })
            .collect()
    }

    /// Wraps an already connected client.
    pub fn from_client(client: async_nats::Client, topology: Topology) -> Self {
        let js = jetstream::new(client.clone());
        Self {
            client,
            js,
            topology,
        }
    }

    /// Publishes `event` on `subject` with `Nats-Msg-Id` = its id and waits for the stream's
    /// acknowledgement. A duplicate (same id within the dedup window) is acknowledged with
    /// `duplicate: true` and stored once.
    pub async fn publish_event<T: Serialize>(
        &self,
        subject: &str,
        event: &CloudEvent<T>,
    ) -> Result<PublishAck, Error> {
        let (headers, payload) = self.encode_event(event)?;
        self.publish_raw(subject, &event.id, headers, payload).await
    }

    /// Where a lifecycle event goes: `<prefix>.lifecycle.<kind>.<credential>`.
    fn lifecycle_subject(&self, event: &LifecycleEvent) -> String {
        let token = keyloop_core::event::subject_token(event);
        self.topology.lifecycle(event.data.kind.name(), &token)
    }

    /// An event's headers and payload. Inside a recorded trace the event carries it (the
    /// CloudEvents extension) and so does the message's header; the span's context is looked
    /// up once.
    fn encode_event<T: Serialize>(
        &self,
        event: &CloudEvent<T>,
    ) -> Result<(HeaderMap, Vec<u8>), Error> {
        let traceparent = crate::trace::current();
        let mut headers = HeaderMap::new();
        if let Some(tp) = &traceparent {
            headers.insert(crate::trace::TRACEPARENT, tp.as_str());
        }
        let encoded = match traceparent.filter(|_| event.traceparent.is_none()) {
            Some(tp) => serde_json::to_value(event).and_then(|mut v| {
                v[crate::trace::TRACEPARENT] = serde_json::Value::String(tp);
                serde_json::to_vec(&v)
            }),
            None => serde_json::to_vec(event),
        };
        let payload = encoded.map_err(|e| {
            Error::new(
                ErrorKind::Permanent,
                format!("cannot encode event {}", event.id),
                e,
            )
        })?;
        Ok((headers, payload))
    }

    /// Publishes bytes with a message id and extra headers, waiting for the acknowledgement.
    pub async fn publish_raw(
        &self,
        subject: &str,
        msg_id: &str,
        headers: HeaderMap,
        payload: Vec<u8>,
    ) -> Result<PublishAck, Error> {
        let ack = self.send_raw(subject, msg_id, headers, payload).await?;
        publish_result(subject, ack.await)
    }

    /// Writes a publish to the connection; the returned future is its acknowledgement.
    pub(crate) async fn send_raw(
        &self,
        subject: &str,
        msg_id: &str,
        headers: HeaderMap,
        payload: Vec<u8>,
    ) -> Result<jetstream::context::PublishAckFuture, Error> {
        let mut headers = headers;
        crate::trace::inject(&mut headers);
        let publish = PublishMessage::build()
            .payload(payload.into())
            .headers(headers)
            .message_id(msg_id);
        self.js
            .send_publish(subject.to_owned(), publish)
            .await
            .map_err(|e| {
                Error::new(
                    publish_error_kind(e.kind()),
                    format!("publish to {subject}"),
                    e,
                )
            })
    }

    /// Publishes a lifecycle event on `<prefix>.lifecycle.<kind>.<credential>`.
    pub async fn publish_lifecycle(&self, event: &LifecycleEvent) -> Result<PublishAck, Error> {
        self.publish_event(&self.lifecycle_subject(event), event)
            .await
    }

    /// [`Self::publish_lifecycle`], pipelined (see `crate::pipeline`).
    pub async fn publish_lifecycle_pipelined(&self, event: &LifecycleEvent) -> Result<(), Error> {
        let subject = self.lifecycle_subject(event);
        let (headers, payload) = self.encode_event(event)?;
        self.publish_pipelined(&subject, &event.id, headers, payload)
            .await
    }

    /// The inventory bucket.
    pub async fn inventory(&self) -> Result<Inventory, Error> {
        let bucket = self.topology.inventory_bucket();
        Ok(Inventory::new(self.kv(&bucket).await?))
    }

    /// The fingerprint index bucket.
    pub async fn fingerprints(&self) -> Result<FingerprintIndex, Error> {
        let bucket = self.topology.fingerprint_bucket();
        Ok(FingerprintIndex::new(self.kv(&bucket).await?))
    }

    /// The sweeper's due-time index.
    pub async fn due(&self) -> Result<crate::due::DueIndex, Error> {
        let bucket = self.topology.due_bucket();
        Ok(crate::due::DueIndex::new(self.kv(&bucket).await?))
    }

    /// Any keyloop KV bucket by name; a clear error before `keyloop init`.
    pub async fn kv(&self, bucket: &str) -> Result<jetstream::kv::Store, Error> {
        self.js.get_key_value(bucket).await.map_err(|e| {
            let kind = if e.kind() == jetstream::context::KeyValueErrorKind::GetBucket {
                ErrorKind::NotFound
            } else {
                ErrorKind::Transient
            };
            Error::new(
                kind,
                format!("KV bucket {bucket} is not available (run `keyloop init`)"),
                e,
            )
        })
    }
}

/// A publish's acknowledgement as keyloop's result: what failed, for which subject, and a hint
/// when no stream took it.
pub(crate) fn publish_result(
    subject: &str,
    ack: Result<PublishAck, jetstream::context::PublishError>,
) -> Result<PublishAck, Error> {
    ack.map_err(|e| {
        let hint = if e.kind() == PublishErrorKind::StreamNotFound {
            " (no stream answers for this subject: a leader election in progress, or `keyloop init` was never run)"
        } else {
            ""
        };
        Error::new(
            publish_error_kind(e.kind()),
            format!("publish to {subject}{hint}"),
            e,
        )
    })
}

/// "No stream" is what a publish gets while a cluster elects a new stream leader, so it is
/// retried like any transient fault; a stream that is really missing still ends in the DLQ
/// after the bounded deliveries, with the hint of [`publish_result`].
fn publish_error_kind(kind: PublishErrorKind) -> ErrorKind {
    match kind {
        PublishErrorKind::MaxPayloadExceeded => ErrorKind::Permanent,
        _ => ErrorKind::Transient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_a_url_are_split_off_and_never_shown() {
        assert_eq!(
            split_userinfo("nats://detector:FAKE-pw-0001@127.0.0.1:4222"),
            (
                "nats://127.0.0.1:4222".to_owned(),
                Some("detector".to_owned()),
                Some("FAKE-pw-0001".to_owned())
            )
        );
        assert_eq!(
            redact_url("nats://detector:FAKE-pw-0001@127.0.0.1:4222"),
            "nats://detector:***@127.0.0.1:4222"
        );
        assert_eq!(
            redact_url("tls://FAKE-token-0002@nats.example:4222/x@y"),
            "tls://***@nats.example:4222/x@y"
        );
        assert_eq!(redact_url("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        let connect = Connect {
            password: Some(Secret::from("FAKE-pw-0003")),
            ..Connect::url("nats://u:FAKE-pw-0004@h:1")
        };
        let shown = format!("{connect:?}");
        assert!(!shown.contains("FAKE-pw"), "{shown}");
    }

    #[test]
    fn each_user_gets_its_own_inbox_prefix() {
        assert_eq!(default_inbox_prefix(Some("worker")), "_INBOX_worker");
        assert_eq!(default_inbox_prefix(Some("a.b")), "_INBOX");
        assert_eq!(default_inbox_prefix(None), "_INBOX");
    }
}
