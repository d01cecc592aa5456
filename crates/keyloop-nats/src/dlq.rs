//! A DLQ entry read back, published again to where it came from, or removed: what
//! `keyloop dlq retry | purge` asks the control plane to do.
//!
//! A retry goes only to the subject the entry was consumed from, and only when that subject is
//! one the entry's role consumes from the events or commands stream: the message reaches the
//! role that gave it up and nothing else. Entries of the notifier, which reads the audit log,
//! are never retried: a lifecycle event is written once. The retry's message id is derived
//! from the entry (`retry/<DLQ stream>/<sequence>`), so the same entry retried twice within the
//! stream's dedup window is stored once, and a retry whose removal from the DLQ failed can
//! simply be run again.

use crate::bus::{
    Bus, DLQ_DELIVERIES_HEADER, DLQ_REASON_HEADER, DLQ_SEQUENCE_HEADER, DLQ_SUBJECT_HEADER,
};
use crate::error::{Error, ErrorKind};
use crate::topology::{Role, Topology};
use async_nats::HeaderMap;
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::stream::{DeleteMessageErrorKind, RawMessageErrorKind};
use bytes::Bytes;

/// Header a retried message carries: the DLQ sequence it was retried from.
pub const RETRY_OF_HEADER: &str = "Keyloop-Retry-Of";

/// One DLQ entry, as the runtime wrote it.
#[derive(Debug, Clone)]
pub struct DlqEntry {
    /// Its sequence in the DLQ stream.
    pub seq: u64,
    /// The role that gave the message up (the last token of its DLQ subject).
    pub role: String,
    /// The subject the message was consumed from.
    pub original_subject: String,
    /// Why it was given up.
    pub reason: String,
    /// How many times it had been delivered.
    pub deliveries: u64,
    /// The message as it was published (it may hold anything: never log or show it).
    pub payload: Bytes,
}

/// Why an entry cannot be retried, in words for the operator.
pub fn retry_refusal(topology: &Topology, entry: &DlqEntry) -> Option<String> {
    let seq = entry.seq;
    let Some(role) = Role::from_name(&entry.role) else {
        return Some(format!(
            "DLQ entry {seq} names no keyloop role ({:?}); remove it with `keyloop dlq purge {seq} --yes`",
            entry.role
        ));
    };
    let (stream, filters) = topology.consumer_of(role);
    if stream == topology.lifecycle_stream() {
        return Some(format!(
            "DLQ entry {seq} was given up by the {} reading the audit log, and a lifecycle event is never written twice; the event is in `keyloop replay --stream lifecycle`: act on it by hand, then `keyloop dlq purge {seq} --yes`",
            entry.role
        ));
    }
    if !filters.iter().any(|f| f == &entry.original_subject) {
        return Some(format!(
            "DLQ entry {seq} came from {:?}, which the {} does not consume ({}); it is not published anywhere else: remove it with `keyloop dlq purge {seq} --yes`",
            entry.original_subject,
            entry.role,
            if filters.is_empty() {
                "it consumes nothing".to_owned()
            } else {
                filters.join(", ")
            }
        ));
    }
    None
}

impl Bus {
    async fn dlq_stream_handle(
        &self,
        name: &str,
    ) -> Result<async_nats::jetstream::stream::Stream<()>, Error> {
        self.js.get_stream_no_info(name).await.map_err(|e| {
            Error::new(
                ErrorKind::NotFound,
                format!("stream {name} (run `keyloop init`)"),
                e,
            )
        })
    }

    /// The DLQ entry `seq`, or `None` when there is none (never written, or removed).
    pub async fn dlq_entry(&self, seq: u64) -> Result<Option<DlqEntry>, Error> {
        let name = self.topology.dlq_stream();
        let stream = self.dlq_stream_handle(&name).await?;
        let message = match stream.get_raw_message(seq).await {
            Ok(m) => m,
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => return Ok(None),
            Err(e) => {
                return Err(Error::new(
                    ErrorKind::Transient,
                    format!("read DLQ entry {seq} of {name}"),
                    e,
                ));
            }
        };
        let header = |name: &str| {
            message
                .headers
                .get(name)
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default()
        };
        let prefix = self.topology.dlq("");
        Ok(Some(DlqEntry {
            seq,
            role: message
                .subject
                .strip_prefix(&prefix)
                .unwrap_or_default()
                .to_owned(),
            original_subject: header(DLQ_SUBJECT_HEADER),
            reason: header(DLQ_REASON_HEADER),
            deliveries: header(DLQ_DELIVERIES_HEADER).parse().unwrap_or(0),
            payload: message.payload,
        }))
    }

    /// Publishes `entry` again to its original subject, once [`retry_refusal`] has nothing
    /// against it; the acknowledgement says where it is stored and whether it was already.
    pub async fn dlq_republish(&self, entry: &DlqEntry) -> Result<PublishAck, Error> {
        if let Some(why) = retry_refusal(&self.topology, entry) {
            return Err(Error::msg(ErrorKind::Permanent, why));
        }
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_OF_HEADER, entry.seq.to_string().as_str());
        headers.insert(DLQ_SEQUENCE_HEADER, entry.seq.to_string().as_str());
        let msg_id = format!("retry/{}/{}", self.topology.dlq_stream(), entry.seq);
        self.publish_raw(
            &entry.original_subject,
            &msg_id,
            headers,
            entry.payload.to_vec(),
        )
        .await
    }

    /// Removes DLQ entry `seq`; `false` when it was not there (any more).
    pub async fn dlq_remove(&self, seq: u64) -> Result<bool, Error> {
        let name = self.topology.dlq_stream();
        let stream = self.dlq_stream_handle(&name).await?;
        match stream.delete_message(seq).await {
            Ok(deleted) => Ok(deleted),
            Err(e) => {
                // A sequence that holds nothing is refused as a failed delete, "no message
                // found".
                let missing = matches!(e.kind(), DeleteMessageErrorKind::JetStream(js)
                    if js.error_code() == ErrorCode::NO_MESSAGE_FOUND
                        || (js.error_code() == ErrorCode::STREAM_MESSAGE_DELETE_FAILED
                            && js.to_string().to_ascii_lowercase().contains("no message found")));
                if missing {
                    Ok(false)
                } else {
                    Err(Error::new(
                        ErrorKind::Transient,
                        format!("remove DLQ entry {seq} from {name}"),
                        e,
                    ))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(role: &str, subject: &str) -> DlqEntry {
        DlqEntry {
            seq: 7,
            role: role.into(),
            original_subject: subject.into(),
            reason: "r".into(),
            deliveries: 1,
            payload: Bytes::new(),
        }
    }

    #[test]
    fn an_entry_goes_back_only_to_a_subject_its_role_consumes() {
        let t = Topology::default();
        for (role, subject) in [
            ("leak-responder", "keyloop.leak.detected"),
            ("rotator", "keyloop.cmd.rotate"),
            ("revoker", "keyloop.cmd.revoke"),
            ("revoker", "keyloop.cmd.lease.revoke"),
            ("sweeper", "keyloop.schedule.tick"),
            ("sweeper", "keyloop.credential.used"),
            ("jit-issuer", "keyloop.task.completed"),
        ] {
            assert_eq!(retry_refusal(&t, &entry(role, subject)), None, "{role}");
        }
        for (role, subject, says) in [
            ("rotator", "keyloop.cmd.revoke", "does not consume"),
            (
                "leak-responder",
                "keyloop.lifecycle.revoked.x",
                "does not consume",
            ),
            ("scheduler", "keyloop.schedule.tick", "consumes nothing"),
            ("api", "keyloop.cmd.rotate", "consumes nothing"),
            (
                "notifier",
                "keyloop.lifecycle.issued.x",
                "never written twice",
            ),
            ("nobody", "keyloop.leak.detected", "names no keyloop role"),
            ("leak-responder", "", "does not consume"),
        ] {
            let why = retry_refusal(&t, &entry(role, subject)).expect(role);
            assert!(
                why.contains(says) && why.contains("dlq purge 7 --yes"),
                "{why}"
            );
        }
    }

    #[test]
    fn a_prefix_is_part_of_the_subjects_compared() {
        let t = Topology::new("acme");
        assert!(retry_refusal(&t, &entry("rotator", "acme.cmd.rotate")).is_none());
        assert!(retry_refusal(&t, &entry("rotator", "keyloop.cmd.rotate")).is_some());
    }
}
