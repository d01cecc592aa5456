//! Claims: at most one operation in flight per credential across the fleet, as a
//! compare-and-set on the credential's record.
//!
//! - **Fencing.** Every claim carries a token one higher than the last one taken on that
//!   credential. [`with_claim`] scopes a [`Fence`] around its operation: every credential write
//!   through [`update_credential`] checks that the record's claim is still this holder's token,
//!   and every store and target call (through the [`claim_fence`] guard of the backends
//!   `Backends` hands out) checks that the claim is still live by this process's clock. A holder that lost its claim, or failed to
//!   renew it for most of a TTL, stops before its next write or backend call.
//! - **Expiry without trusting clocks.** The holder renews every third of the TTL, which bumps
//!   the claim's `beat`. A waiting worker takes a claim over only after it has seen the same
//!   `(holder, token, beat)` for a whole TTL by its own monotonic clock; the holder stops using
//!   it by its own monotonic clock well before that ([`Fence`] keeps a sixth of the TTL in hand),
//!   so two replicas whose wall clocks disagree never both act. The recorded `deadline` is only
//!   for people reading the record. The same operation, redelivered after a crash, takes its
//!   own claim over at once (every step is idempotent); its old holder, if still alive, is
//!   fenced off by the new token.

use crate::context::WorkerContext;
use crate::error::{Error, ErrorKind};
use keyloop_backends::{BackendError, CallGuard};
use keyloop_core::{Claim, Credential, CredentialId};
use keyloop_nats::Change;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use time::OffsetDateTime;
use tokio::time::Instant;

/// Longest an operation waits in-process for another operation's claim on the same credential
/// before giving the message back (nak) to be retried later.
pub const CLAIM_WAIT: Duration = Duration::from_secs(5);

tokio::task_local! {
    static FENCE: Arc<Fence>;
}

/// What the holder of a claim knows about it: its token, and until when by this process's
/// monotonic clock it may still act.
#[derive(Debug)]
pub struct Fence {
    credential: CredentialId,
    op: String,
    holder: String,
    token: u64,
    ttl: Duration,
    state: Mutex<FenceState>,
    /// The record as this holder last wrote or read it, with its revision: while the claim is
    /// held nothing else changes its versions, so the next read is this and the next write a
    /// compare-and-set on this revision, with no read first (a change by someone else — a
    /// use's `last_used_at`, an owner — fails that write, which then reads and decides again).
    known: Mutex<Option<(Credential, u64)>>,
}

#[derive(Debug)]
struct FenceState {
    valid_until: Instant,
    lost: Option<String>,
}

impl Fence {
    fn new(credential: &CredentialId, op: &str, holder: &str, token: u64, ttl: Duration) -> Self {
        Self {
            credential: credential.clone(),
            op: op.to_owned(),
            holder: holder.to_owned(),
            token,
            ttl,
            state: Mutex::new(FenceState {
                valid_until: Instant::now(),
                lost: None,
            }),
            known: Mutex::new(None),
        }
    }

    fn known(&self) -> Option<(Credential, u64)> {
        self.known.lock().expect("fence lock").clone()
    }

    /// Keeps `record` (as written or read) for the next read and write; `None` forgets it.
    fn remember(&self, record: Option<(Credential, u64)>) {
        *self.known.lock().expect("fence lock") = record;
    }

    /// The claim was written (taken or renewed) by a request sent at `sent`: other workers
    /// wait a whole TTL from when they see it, so acting stays safe until five sixths of it.
    fn confirmed(&self, sent: Instant) {
        let mut s = self.state.lock().expect("fence lock");
        s.valid_until = s.valid_until.max(sent + self.ttl - self.ttl / 6);
    }

    fn lose(&self, why: String) {
        self.state
            .lock()
            .expect("fence lock")
            .lost
            .get_or_insert(why);
    }

    fn lost_error(&self, why: &str) -> Error {
        Error::msg(
            ErrorKind::Busy,
            format!(
                "credential {}: operation {} lost its claim ({why}); it stops before its next step and is retried, resuming from what is recorded",
                self.credential, self.op
            ),
        )
    }

    /// Whether this holder may still act, by its own clock.
    pub fn check_live(&self) -> Result<(), Error> {
        let s = self.state.lock().expect("fence lock");
        if let Some(why) = &s.lost {
            return Err(self.lost_error(why));
        }
        if Instant::now() >= s.valid_until {
            return Err(self.lost_error(
                "it could not be renewed in time, so another worker may take it over",
            ));
        }
        Ok(())
    }

    /// Whether `record`'s claim is still this one (same holder and token).
    fn check_record(&self, record: &Credential) -> Result<(), Error> {
        match &record.claim {
            Some(c) if c.holder == self.holder && c.token == self.token => Ok(()),
            Some(c) => {
                let why = format!(
                    "now held by operation {} with token {} (ours was {})",
                    c.op, c.token, self.token
                );
                self.lose(why.clone());
                Err(self.lost_error(&why))
            }
            None => {
                let why = "released by someone else".to_owned();
                self.lose(why.clone());
                Err(self.lost_error(&why))
            }
        }
    }

    /// The fence in scope for `credential`, if this task holds its claim.
    fn current(credential: &CredentialId) -> Option<Arc<Fence>> {
        FENCE
            .try_with(|f| f.clone())
            .ok()
            .filter(|f| &f.credential == credential)
    }
}

/// Applies `decide` to the credential's record with compare-and-set, like
/// `Inventory::update`; when the calling task holds the credential's claim, the write is fenced:
/// it fails (and nothing is written) once the record's claim is no longer this holder's. Under
/// a claim, it starts from the record as the holder last saw it (no read unless it changed).
pub async fn update_credential<T: Send>(
    ctx: &WorkerContext,
    id: &CredentialId,
    mut decide: impl FnMut(&mut Credential) -> Result<Change<T>, Error> + Send,
) -> Result<T, Error> {
    let fence = Fence::current(id);
    let known = fence.as_ref().and_then(|f| f.known());
    let result = ctx
        .inventory
        .update_from(id, known, |c| {
            if let Some(f) = &fence {
                f.check_record(c)?;
            }
            decide(c)
        })
        .await;
    match result {
        Ok((value, record)) => {
            if let Some(f) = &fence {
                f.remember(Some(record));
            }
            Ok(value)
        }
        Err(e) => {
            if let Some(f) = &fence {
                f.remember(None);
            }
            Err(e)
        }
    }
}

/// The credential's record: under its claim, as the holder last wrote or read it (nothing
/// else changes its versions meanwhile), else read.
pub async fn read_credential(ctx: &WorkerContext, id: &CredentialId) -> Result<Credential, Error> {
    let fence = Fence::current(id);
    if let Some((cred, _)) = fence.as_ref().and_then(|f| f.known()) {
        return Ok(cred);
    }
    let (cred, revision) = ctx.inventory.require(id).await?;
    if let Some(f) = &fence {
        f.remember(Some((cred.clone(), revision)));
    }
    Ok(cred)
}

/// What waiting workers in this process have seen of claims held by others: when each
/// `(holder, token, beat)` was first seen, by the monotonic clock.
#[derive(Debug, Default)]
pub struct ClaimWatch {
    seen: Mutex<HashMap<CredentialId, (String, u64, u64, Instant)>>,
}

impl ClaimWatch {
    /// True once `claim` has looked the same for `ttl` by this process's clock: its holder
    /// stopped renewing.
    fn lapsed(&self, id: &CredentialId, claim: &Claim, ttl: Duration) -> bool {
        let mut seen = self.seen.lock().expect("claim watch lock");
        let now = Instant::now();
        let entry = seen
            .entry(id.clone())
            .or_insert_with(|| (claim.holder.clone(), claim.token, claim.beat, now));
        if (entry.0.as_str(), entry.1, entry.2) != (claim.holder.as_str(), claim.token, claim.beat)
        {
            *entry = (claim.holder.clone(), claim.token, claim.beat, now);
        }
        now.duration_since(entry.3) >= ttl
    }

    fn forget(&self, id: &CredentialId) {
        self.seen.lock().expect("claim watch lock").remove(id);
    }
}

/// A held claim; [`with_claim`] renews and releases it.
#[derive(Debug)]
struct ClaimGuard {
    fence: Arc<Fence>,
}

/// Takes the credential's claim for operation `op`. Waits (with backoff, up to
/// [`CLAIM_WAIT`]) while another operation holds it and keeps renewing it; then fails with
/// `Busy`, and the message is retried later.
async fn claim(
    ctx: &WorkerContext,
    credential: &CredentialId,
    op: &str,
    how: Take,
) -> Result<ClaimGuard, Error> {
    use backon::{ExponentialBuilder, Retryable};
    let known = std::sync::Mutex::new(how.known);
    let attempt = || async {
        let sent = Instant::now();
        let deadline = OffsetDateTime::now_utc() + ctx.claim_ttl;
        let known = known.lock().expect("claim lock").take();
        let (token, record) = ctx
            .inventory
            .update_from(credential, known, |c| {
                if let Some(existing) = &c.claim
                    && (how.at_once || existing.op != op)
                    && !ctx.claim_watch.lapsed(credential, existing, ctx.claim_ttl)
                {
                    return Err(Error::msg(
                        ErrorKind::Busy,
                        format!(
                            "credential {credential} is busy with operation {} (claimed by {}); will retry",
                            existing.op, existing.holder
                        ),
                    ));
                }
                c.claim_epoch += 1;
                c.claim = Some(Claim {
                    op: op.to_owned(),
                    holder: ctx.holder.clone(),
                    deadline,
                    token: c.claim_epoch,
                    beat: 0,
                });
                Ok(Change::Write(c.claim_epoch))
            })
            .await?;
        Ok::<_, Error>((token, sent, record))
    };
    let wait = if how.at_once {
        Duration::ZERO
    } else {
        CLAIM_WAIT
    };
    let (token, sent, record) = attempt
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(2))
                .with_max_delay(Duration::from_millis(250))
                .with_total_delay(Some(wait))
                .without_max_times()
                .with_jitter(),
        )
        .when(|e: &Error| e.kind() == ErrorKind::Busy)
        .await?;
    ctx.claim_watch.forget(credential);
    let fence = Arc::new(Fence::new(
        credential,
        op,
        &ctx.holder,
        token,
        ctx.claim_ttl,
    ));
    fence.confirmed(sent);
    fence.remember(Some(record));
    Ok(ClaimGuard { fence })
}

/// How [`with_claim_from`] takes a claim.
#[derive(Debug, Default)]
pub struct Take {
    /// The record as the caller just read it, with its revision: the claim is written on it by
    /// compare-and-set with no read first (a stale one costs a read).
    pub known: Option<(Credential, u64)>,
    /// Only if nobody holds it, now: any claim, also one of the same operation (which a
    /// redelivery would take over at once), makes it fail with `Busy` without waiting.
    pub at_once: bool,
}

impl ClaimGuard {
    /// Bumps the claim's beat (and its informational deadline) if it is still ours. A failed
    /// write is logged and the next renewal tries again; the fence stops the operation if none
    /// succeeds in time. A claim no longer ours stops it at once.
    async fn renew(&self, ctx: &WorkerContext) {
        let f = &self.fence;
        let sent = Instant::now();
        let deadline = OffsetDateTime::now_utc() + ctx.claim_ttl;
        let result = ctx
            .inventory
            .update_from(&f.credential, f.known(), |c| match &mut c.claim {
                Some(k) if k.holder == f.holder && k.token == f.token => {
                    k.beat += 1;
                    k.deadline = deadline;
                    Ok(Change::Write(true))
                }
                _ => Ok(Change::Keep(false)),
            })
            .await
            .map(|(renewed, record)| {
                f.remember(Some(record));
                renewed
            });
        match result {
            Ok(true) => f.confirmed(sent),
            Ok(false) => {
                tracing::warn!(credential = %f.credential, op = %f.op, "claim taken over by another worker; stopping before the next step");
                f.lose("taken over by another worker".into());
            }
            Err(e) => {
                tracing::warn!(credential = %f.credential, op = %f.op, error = %e, "could not renew claim; will try again")
            }
        }
    }

    /// Releases the claim if it is still ours. A failure here is harmless: the claim lapses.
    async fn release(self, ctx: &WorkerContext) {
        let f = &self.fence;
        // The operation's events are stored before another operation may start: the audit log
        // has each credential's events in the order of its operations, which is how it rebuilds
        // the inventory. An event not stored keeps the claim for the redelivery, which takes it
        // over at once (the same operation) and publishes it again.
        if let Err(e) = keyloop_nats::pipeline::settle().await {
            tracing::warn!(credential = %f.credential, op = %f.op, error = %e, "an event of the operation was not stored; the claim is kept for its retry");
            return;
        }
        let result = ctx
            .inventory
            .update_from(&f.credential, f.known(), |c| match &c.claim {
                Some(k) if k.holder == f.holder && k.token == f.token => {
                    c.claim = None;
                    Ok(Change::Write(()))
                }
                _ => Ok(Change::Keep(())),
            })
            .await
            .map(|_| ());
        match result {
            // A failed registration removed its record, claim and all.
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(credential = %f.credential, op = %f.op, error = %e, "could not release claim; it lapses once it stops being renewed")
            }
            Ok(()) => {}
        }
    }
}

/// Runs `operation` holding the credential's claim for `op`, and releases it afterwards
/// whatever the outcome. While it runs, the claim is renewed every third of the claim TTL, so
/// a slow backend call never lets another operation in, and the operation's writes and backend
/// calls are fenced (see the module docs); a holder that dies stops renewing, and its claim
/// lapses.
pub async fn with_claim<T, F>(
    ctx: &WorkerContext,
    credential: &CredentialId,
    op: &str,
    operation: F,
) -> Result<T, Error>
where
    F: std::future::Future<Output = Result<T, Error>>,
{
    with_claim_from(ctx, credential, op, Take::default(), operation).await
}

/// [`with_claim`], taking the claim as `how` says.
pub async fn with_claim_from<T, F>(
    ctx: &WorkerContext,
    credential: &CredentialId,
    op: &str,
    how: Take,
    operation: F,
) -> Result<T, Error>
where
    F: std::future::Future<Output = Result<T, Error>>,
{
    let guard = claim(ctx, credential, op, how).await?;
    let _held = keyloop_nats::metrics::global().claim_held();
    let renew = async {
        let mut every = tokio::time::interval(ctx.claim_ttl / 3);
        every.tick().await;
        loop {
            every.tick().await;
            guard.renew(ctx).await;
        }
    };
    let result = FENCE
        .scope(guard.fence.clone(), async {
            tokio::select! {
                result = operation => result,
                never = renew => never,
            }
        })
        .await;
    guard.release(ctx).await;
    result
}

/// The fence's check before a backend call, for `Resilient::guarded`: `Busy`-like (transient,
/// nothing changed) when the calling task holds a claim on the credential that it may no longer
/// act on; calls outside a claim pass.
pub fn claim_fence() -> CallGuard {
    Arc::new(
        |credential: &Credential| match Fence::current(&credential.id) {
            Some(f) => f
                .check_live()
                .map_err(|e| BackendError::transient(e.to_string()).before_any_change()),
            None => Ok(()),
        },
    )
}

#[cfg(test)]
mod tests;
