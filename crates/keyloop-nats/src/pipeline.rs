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

/// What a scope keeps: the acknowledgements not awaited yet, with the subject each was
/// published to, and the first publish that was not stored.
#[derive(Default)]
struct Pending(Mutex<State>);

#[derive(Default)]
struct State {
    acks: Vec<(String, PublishAckFuture)>,
    lost: Option<String>,
}

impl Pending {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Runs `work` with its pipelined publishes' acknowledgements deferred, then awaits them all.
/// The work's own error wins; else the first publish that was not stored — also when the work
/// went on without it (a step that falls back after a failed publish): nothing of a scope with
/// a lost publish is acked.
pub async fn scope<T, E>(work: impl Future<Output = Result<T, E>>) -> Result<T, ScopeError<E>> {
    PENDING
        .scope(Pending::default(), async {
            let outcome = work.await;
            let stored = settle_earlier().await;
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

fn not_stored(what: String) -> Error {
    Error::msg(
        ErrorKind::Transient,
        format!("{what}; nothing after it is published, and the message is delivered again"),
    )
}

/// Awaits the acknowledgements the scope keeps, oldest first: a publish is written only once
/// the earlier ones are stored. Once one was not, every later call fails with it: nothing after
/// a lost publish is written in that scope.
async fn settle_earlier() -> Result<(), Error> {
    let taken = PENDING.try_with(|p| {
        let mut state = p.state();
        match &state.lost {
            Some(lost) => Err(lost.clone()),
            None => Ok(std::mem::take(&mut state.acks)),
        }
    });
    let acks = match taken {
        Err(_) => return Ok(()), // no scope: nothing kept
        Ok(Err(lost)) => return Err(not_stored(lost)),
        Ok(Ok(acks)) => acks,
    };
    for (subject, ack) in acks {
        if let Err(e) = ack.await {
            let lost = format!("publish to {subject} was not acknowledged ({e})");
            let _ = PENDING.try_with(|p| p.state().lost.get_or_insert(lost.clone()).clone());
            return Err(not_stored(lost));
        }
    }
    Ok(())
}

/// Awaits every publish of the scope this runs in (nothing outside one): the point after which
/// what was published is stored, as before releasing what others wait on. Once one publish of
/// the scope was not stored, this fails with it.
pub async fn settle() -> Result<(), Error> {
    settle_earlier().await
}

/// Keeps `ack` for the scope to await; gives it back when there is no scope.
fn defer(subject: &str, ack: PublishAckFuture) -> Option<PublishAckFuture> {
    let mut ack = Some(ack);
    let _ = PENDING.try_with(|p| {
        if let Some(ack) = ack.take() {
            p.state().acks.push((subject.to_owned(), ack));
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
