//! Where an operation came from, carried into every event and command it sends.

use crate::context::WorkerContext;
use crate::error::Error;
use keyloop_core::LifecycleData;
use keyloop_core::event::lifecycle_event;

/// Where an operation came from, carried into every event it publishes.
#[derive(Debug, Clone, Default)]
pub struct Cause {
    /// `keyloop/<role>` or `keyloop/cli`.
    pub source: String,
    /// The leak or request that started the chain.
    pub correlation: Option<String>,
    /// The message that caused this step.
    pub causation: Option<String>,
    /// The report (ingest batch) the chain belongs to, when it started from one.
    pub batch: Option<String>,
    /// The proved actor who asked (through the control plane); absent for what keyloop does
    /// by itself. Carried into every command sent and every event published, unless an event
    /// names its own.
    pub actor: Option<String>,
}

impl Cause {
    /// The cause of what `source` does about `event`: the chain it belongs to, and the event
    /// itself as the direct cause.
    pub fn of<T>(source: &str, event: &keyloop_core::CloudEvent<T>) -> Self {
        Self {
            source: source.to_owned(),
            correlation: event.correlationid.clone(),
            causation: Some(event.id.clone()),
            batch: event.batchid.clone(),
            actor: event.actor.clone(),
        }
    }

    /// Sends `command` with this cause (see `Bus::send_command`).
    pub async fn send<C: keyloop_core::event::Command>(
        &self,
        ctx: &WorkerContext,
        command: C,
    ) -> Result<(), Error> {
        ctx.send_command(self, command).await
    }

    /// Publishes a lifecycle event for `step` with this cause. Its id is derived from `step`
    /// and the kind, so publishing again after a crash is deduplicated by the stream.
    pub async fn publish(
        &self,
        ctx: &WorkerContext,
        step: &str,
        mut data: LifecycleData,
    ) -> Result<(), Error> {
        if data.actor.is_none() {
            data.actor = self.actor.clone();
        }
        let event = lifecycle_event(&self.source, step, data)
            .caused_by(self.correlation.clone(), self.causation.clone())
            .in_batch(self.batch.clone());
        ctx.outbox.publish_lifecycle(&event).await.map(|_| ())
    }
}
