//! `dlq_retry` and `dlq_purge`: an operator's hand on the DLQ, through the control plane so
//! the policy decides who may (admins, by the default policy) and the audit log records it.
//!
//! A retry publishes the entry again to the subject it was consumed from (see
//! `keyloop_nats::dlq` for which entries may go back, and why a retry is idempotent), records
//! `dlq_retried` in the chain of the message (its correlation and batch), then removes the
//! entry; the role that gave it up gets it again as a new message, and gives it up again as a
//! new entry if it still fails. A purge records `dlq_purged` with the entry's reason, then
//! removes it. Neither shows or records the payload.

use super::{Api, api_error};
use crate::error::Error;
use keyloop_core::api::{ApiError, DlqEntryRequest, DlqHandled, Republished, Verb};
use keyloop_core::policy::Resource;
use keyloop_core::{CredentialId, LifecycleData, LifecycleKind};
use keyloop_nats::dlq::{DlqEntry, retry_refusal};
use tracing::info;

impl Api<'_> {
    pub(super) async fn dlq_retry(&self, req: DlqEntryRequest) -> Result<DlqHandled, ApiError> {
        let entry = self.dlq_entry(Verb::DlqRetry, req.seq).await?;
        if let Some(why) = retry_refusal(&self.ctx.topology, &entry) {
            return Err(ApiError::new("bad_request", why));
        }
        let ack = self
            .ctx
            .bus()
            .map_err(api_error)?
            .dlq_republish(&entry)
            .await
            .map_err(|e| api_error(Error::from(e)))?;
        let republished = Republished {
            stream: ack.stream.clone(),
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        };
        let detail = format!(
            "DLQ entry {} of the {} ({}) published again as {} #{}{}; it had been given up after {} deliveries: {}",
            entry.seq,
            entry.role,
            entry.original_subject,
            republished.stream,
            republished.sequence,
            if republished.duplicate {
                " (already retried: stored once)"
            } else {
                ""
            },
            entry.deliveries,
            entry.reason
        );
        self.record(LifecycleKind::DlqRetried, &entry, detail)
            .await?;
        self.remove(&entry, true).await?;
        info!(actor = self.actor, seq = entry.seq, role = %entry.role, subject = %entry.original_subject, stream = %republished.stream, sequence = republished.sequence, "DLQ entry retried");
        Ok(handled(entry, Some(republished)))
    }

    pub(super) async fn dlq_purge(&self, req: DlqEntryRequest) -> Result<DlqHandled, ApiError> {
        let entry = self.dlq_entry(Verb::DlqPurge, req.seq).await?;
        let detail = format!(
            "DLQ entry {} of the {} ({}) removed without being processed; it had been given up after {} deliveries: {}",
            entry.seq, entry.role, entry.original_subject, entry.deliveries, entry.reason
        );
        self.record(LifecycleKind::DlqPurged, &entry, detail)
            .await?;
        self.remove(&entry, false).await?;
        info!(actor = self.actor, seq = entry.seq, role = %entry.role, subject = %entry.original_subject, "DLQ entry purged");
        Ok(handled(entry, None))
    }

    /// The entry, once the actor may act on the DLQ.
    async fn dlq_entry(&self, verb: Verb, seq: u64) -> Result<DlqEntry, ApiError> {
        let decision = self.decide(verb, Resource::Inventory);
        if !decision.allowed_now() {
            return Err(self.refuse(verb, None, Some(&decision)).await);
        }
        self.ctx
            .bus()
            .map_err(api_error)?
            .dlq_entry(seq)
            .await
            .map_err(|e| api_error(Error::from(e)))?
            .ok_or_else(|| {
                ApiError::new(
                    "not_found",
                    format!(
                        "no DLQ entry {seq} (removed already?); `keyloop dlq list` shows what there is"
                    ),
                )
            })
    }

    /// Records what was done to `entry`, in the chain of the message it holds when that is
    /// a CloudEvent (its correlation, batch and credential), never with its payload.
    async fn record(
        &self,
        kind: LifecycleKind,
        entry: &DlqEntry,
        detail: String,
    ) -> Result<(), ApiError> {
        let event: Option<serde_json::Value> = serde_json::from_slice(&entry.payload).ok();
        let field = |name: &str| {
            event
                .as_ref()
                .and_then(|e| e.get(name))
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        let credential = event
            .as_ref()
            .and_then(|e| e.pointer("/data/credential"))
            .and_then(|v| v.as_str())
            .and_then(|c| c.parse::<CredentialId>().ok());
        let mut cause = self.cause(field("correlationid"));
        cause.batch = field("batchid");
        cause.causation = field("id");
        let mut data = LifecycleData::new(kind, credential, None);
        data.detail = Some(detail);
        let step = format!(
            "{}/{}/{}",
            kind.name(),
            self.ctx.topology.dlq_stream(),
            entry.seq
        );
        cause
            .publish(self.ctx, &step, data)
            .await
            .map_err(api_error)
    }

    /// Removes `entry` from the DLQ; a failure says what was done already.
    async fn remove(&self, entry: &DlqEntry, retried: bool) -> Result<(), ApiError> {
        let bus = self.ctx.bus().map_err(api_error)?;
        bus.dlq_remove(entry.seq).await.map(|_| ()).map_err(|e| {
            ApiError::new(
                "unavailable",
                format!(
                    "DLQ entry {} was {} but could not be removed from the DLQ ({e}); run the same command again: {}",
                    entry.seq,
                    if retried { "published again" } else { "recorded as purged" },
                    if retried {
                        "the retry is stored once"
                    } else {
                        "nothing is lost"
                    }
                ),
            )
        })
    }
}

fn handled(entry: DlqEntry, republished: Option<Republished>) -> DlqHandled {
    DlqHandled {
        seq: entry.seq,
        role: entry.role,
        original_subject: entry.original_subject,
        reason: entry.reason,
        republished,
    }
}
