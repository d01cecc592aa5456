//! The publishes of one handled message, pipelined. Inside [`scope`] (the consume runtime runs
//! every handler in one), a lifecycle event or command sent through [`Bus::publish_pipelined`]
//! is written to the connection at once and the handler goes on with its next step (an
//! inventory write, a backend call) while the stream stores it: its acknowledgement is awaited
//! by the handler's next publish, or at the end, before the message is acked. Nothing is acked
//! before all of a handler's publishes are stored.
//!
//! Order is kept, also when the connection drops: a publish is written only once every earlier
//! one of the handler is acknowledged, so the streams store a handler's publishes in the order
//! it made them, and one that is lost (a connection that dropped before the server stored it)
//! stops the handler before any later one is written. Without that, a lost `revoked` could be
//! stored after the `rotated` that follows it, written after the reconnect. A publish that
//! fails fails the handler as a transient fault: the message is delivered again and its steps,
//! each idempotent, publish again under the same ids (the streams keep one copy). Outside a
//! scope a pipelined publish is awaited at once, as any other.

use crate::bus::Bus;
use crate::error::{Error, ErrorKind};
use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishAckFuture;
use std::future::Future;
use std::sync::Mutex;

tokio::task_local! {
    static PENDING: Pending;
}

/// Acknowledgements not awaited yet, with the subject each was published to.
#[derive(Default)]
struct Pending(Mutex<Vec<(String, PublishAckFuture)>>);

/// Runs `work` with its pipelined publishes' acknowledgements deferred, then awaits them all.
/// The work's own error wins; else the first publish that was not stored.
pub async fn scope<T, E>(work: impl Future<Output = Result<T, E>>) -> Result<T, ScopeError<E>> {
    PENDING
        .scope(Pending::default(), async {
            let outcome = work.await;
            let pending = PENDING.with(|p| std::mem::take(&mut *p.0.lock().expect("pending lock")));
            let acks = futures::future::join_all(
                pending
                    .into_iter()
                    .map(|(subject, ack)| async move { (subject, ack.await) }),
            )
            .await;
            let value = outcome.map_err(ScopeError::Work)?;
            for (subject, ack) in acks {
                ack.map_err(|e| {
                    ScopeError::Publish(Error::new(
                        ErrorKind::Transient,
                        format!("publish to {subject} was not acknowledged"),
                        e,
                    ))
                })?;
            }
            Ok(value)
        })
        .await
}

/// Why a [`scope`] failed.
#[derive(Debug)]
pub enum ScopeError<E> {
    /// The work's own error.
    Work(E),
    /// The work succeeded, but one of its publishes was not stored.
    Publish(Error),
}

/// Awaits the acknowledgements the scope keeps, oldest first: a publish is written only once
/// the earlier ones are stored.
async fn settle_earlier() -> Result<(), Error> {
    let pending = PENDING
        .try_with(|p| std::mem::take(&mut *p.0.lock().expect("pending lock")))
        .unwrap_or_default();
    for (subject, ack) in pending {
        ack.await.map_err(|e| {
            Error::new(
                ErrorKind::Transient,
                format!("publish to {subject} was not acknowledged"),
                e,
            )
        })?;
    }
    Ok(())
}

/// Keeps `ack` for the scope to await; gives it back when there is no scope.
fn defer(subject: &str, ack: PublishAckFuture) -> Option<PublishAckFuture> {
    let mut ack = Some(ack);
    let _ = PENDING.try_with(|p| {
        if let Some(ack) = ack.take() {
            p.0.lock()
                .expect("pending lock")
                .push((subject.to_owned(), ack));
        }
    });
    ack
}

impl Bus {
    /// [`Bus::publish_raw`], written once the earlier publishes of the [`scope`] this runs in
    /// are stored, its own acknowledgement awaited by the next one or at the scope's end (at
    /// once outside a scope).
    pub async fn publish_pipelined(
        &self,
        subject: &str,
        msg_id: &str,
        headers: HeaderMap,
        payload: Vec<u8>,
    ) -> Result<(), Error> {
        settle_earlier().await?;
        let ack = self.send_raw(subject, msg_id, headers, payload).await?;
        if let Some(ack) = defer(subject, ack) {
            self.settle_publish(subject, ack.await)?;
        }
        Ok(())
    }
}
