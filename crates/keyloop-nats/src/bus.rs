//! The connection to NATS as keyloop uses it: typed publishing of CloudEvents with
//! `Nats-Msg-Id` set to the event id (so a retried step is deduplicated by the server and
//! the publish is acknowledged before we go on), and handles on the KV buckets.

use crate::error::{Error, ErrorKind};
use crate::inventory::{FingerprintIndex, Inventory};
use crate::server;
use crate::topology::Topology;
use async_nats::jetstream::{self, context::PublishErrorKind, publish::PublishAck};
use async_nats::{HeaderMap, jetstream::message::PublishMessage};
use keyloop_core::event::{CloudEvent, LifecycleEvent};
use serde::Serialize;
use std::time::Duration;

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

impl Bus {
    /// Connects to `url`, and refuses a server older than 2.10 before anything is used.
    pub async fn connect(url: &str, topology: Topology) -> Result<Self, Error> {
        // No retry on the first connect: a person or a supervisor needs to hear at once that
        // nothing answers. After that, reconnects are automatic and unbounded.
        let client = async_nats::ConnectOptions::new()
            .name("keyloop")
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(5))
            .connect(Self::server_addrs(url)?)
            .await
            .map_err(|e| {
                Error::new(
                    ErrorKind::Transient,
                    format!("no NATS server answers at {url}; start one with `keyloop up`, or pass --nats URL"),
                    e,
                )
            })?;
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
        let payload = serde_json::to_vec(event).map_err(|e| {
            Error::new(
                ErrorKind::Permanent,
                format!("cannot encode event {}", event.id),
                e,
            )
        })?;
        self.publish_raw(subject, &event.id, HeaderMap::new(), payload)
            .await
    }

    /// Publishes bytes with a message id and extra headers, waiting for the acknowledgement.
    pub async fn publish_raw(
        &self,
        subject: &str,
        msg_id: &str,
        headers: HeaderMap,
        payload: Vec<u8>,
    ) -> Result<PublishAck, Error> {
        let publish = PublishMessage::build()
            .payload(payload.into())
            .headers(headers)
            .message_id(msg_id);
        // "No stream" is what a publish gets while a cluster elects a new stream leader, so it
        // is retried like any transient fault; a stream that is really missing still ends in
        // the DLQ after the bounded deliveries, with the hint below.
        let classify = |kind: PublishErrorKind| match kind {
            PublishErrorKind::MaxPayloadExceeded => ErrorKind::Permanent,
            _ => ErrorKind::Transient,
        };
        let ack = self
            .js
            .send_publish(subject.to_owned(), publish)
            .await
            .map_err(|e| Error::new(classify(e.kind()), format!("publish to {subject}"), e))?;
        ack.await.map_err(|e| {
            let hint = if e.kind() == PublishErrorKind::StreamNotFound {
                " (no stream answers for this subject: a leader election in progress, or `keyloop init` was never run)"
            } else {
                ""
            };
            Error::new(classify(e.kind()), format!("publish to {subject}{hint}"), e)
        })
    }

    /// Publishes a lifecycle event on `<prefix>.lifecycle.<kind>.<credential>`.
    pub async fn publish_lifecycle(&self, event: &LifecycleEvent) -> Result<PublishAck, Error> {
        let token = keyloop_core::event::subject_token(event);
        let subject = self.topology.lifecycle(event.data.kind.name(), &token);
        self.publish_event(&subject, event).await
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
