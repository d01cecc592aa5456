//! The publishes of one handled message, pipelined. Inside [`scope`] (the consume runtime runs
//! every handler in one), a lifecycle event or command sent through [`Bus::publish_pipelined`]
//! is written to the connection at once and the handler goes on with its next step (an
//! inventory write, a backend call) while the stream stores it: its acknowledgement is awaited
//! by the handler's next publish, or at the end, before the message is acked. Nothing is acked
//! before all of a handler's publishes are stored.
//!
//! Order is kept, also when the connection drops: a publish is written only once every earlier
//! one of the handler is acknowledged, so the streams store a handler's publishes in the order
//! it made them. Once one is lost (a connection that dropped before the server stored it),
//! nothing after it is written in that handler — every later publish fails at once, also when
//! the handler goes on (a step that falls back to a command) — and the handler fails as a
//! transient fault. Without that, a lost `revoked` could be stored after the `rotated` that
//! follows it, written after the reconnect. The message is delivered again and its steps, each
//! idempotent, publish again under the same ids (the streams keep one copy). Outside a scope a
//! pipelined publish is awaited at once, as any other.

use crate::bus::Bus;
use crate::error::{Error, ErrorKind};
use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishAckFuture;
use std::future::Future;
use std::sync::Mutex;

tokio::task_local! {
    static PENDING: Pending;
}

/// What a scope keeps: the one publish not awaited yet (each publish awaits the one before it),
/// with its subject, and the first publish that was not stored, as the error it got.
#[derive(Default)]
struct Pending(Mutex<State>);

#[derive(Default)]
struct State {
    ack: Option<(String, PublishAckFuture)>,
    lost: Option<(ErrorKind, String)>,
}

impl Pending {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Runs `work` with its pipelined publishes' acknowledgements deferred, then awaits the last.
/// The work's own error wins; else the first publish that was not stored — also when the work
/// went on without it (a step that falls back after a failed publish): nothing of a scope with
/// a lost publish is acked.
pub async fn scope<T, E>(work: impl Future<Output = Result<T, E>>) -> Result<T, ScopeError<E>> {
    PENDING
        .scope(Pending::default(), async {
            let outcome = work.await;
            let stored = settle().await;
            let value = outcome.map_err(ScopeError::Work)?;
            stored.map_err(ScopeError::Publish)?;
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

fn not_stored((kind, what): (ErrorKind, String)) -> Error {
    Error::msg(
        kind,
        format!("{what}; nothing after it is published, and the message is delivered again"),
    )
}

/// Awaits the publish the scope this runs in keeps (nothing outside a scope): after it, every
/// publish of the scope is stored — a publish is written only once the one before it is, and so
/// is a claim released. Once one was not stored, this fails with it for the rest of the scope:
/// nothing after a lost publish is written.
pub async fn settle() -> Result<(), Error> {
    let taken = PENDING.try_with(|p| {
        let mut state = p.state();
        match &state.lost {
            Some(lost) => Err(lost.clone()),
            None => Ok(state.ack.take()),
        }
    });
    let (subject, ack) = match taken {
        Err(_) | Ok(Ok(None)) => return Ok(()), // no scope, or nothing kept
        Ok(Err(lost)) => return Err(not_stored(lost)),
        Ok(Ok(Some(kept))) => kept,
    };
    if let Err(e) = crate::bus::publish_result(&subject, ack.await) {
        let lost = (e.kind(), e.to_string());
        let _ = PENDING.try_with(|p| p.state().lost.get_or_insert(lost.clone()).clone());
        return Err(not_stored(lost));
    }
    Ok(())
}

/// Keeps `ack` for the scope to await; gives it back when there is no scope.
fn defer(subject: &str, ack: PublishAckFuture) -> Option<PublishAckFuture> {
    let mut ack = Some(ack);
    let _ = PENDING.try_with(|p| p.state().ack = ack.take().map(|a| (subject.to_owned(), a)));
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
        settle().await?;
        let ack = self.send_raw(subject, msg_id, headers, payload).await?;
        if let Some(ack) = defer(subject, ack) {
            crate::bus::publish_result(subject, ack.await)?;
        }
        Ok(())
    }
}
