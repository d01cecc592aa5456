//! sweeper: on each `schedule.tick`, turns what has fallen due into commands — rotations at
//! `max_age`, retirement of previous versions when `grace` ends, expiry of leases, revocation of
//! idle credentials — and on `credential.used` records the use.
//!
//! Complexity: a sweep reads the due-time index's minute buckets from its cursor to now
//! (`DueIndex::scan_minute`), so its work is O(minutes since the last sweep + items due in them),
//! not O(inventory). Each due item is re-checked against the inventory before acting.
//!
//! Redelivery and concurrent sweepers are harmless: every command carries a message id derived
//! from the item (the version to rotate, the lease to expire), so repeated ticks never double a
//! command, and an entry is removed only after its command is stored.

use crate::context::WorkerContext;
use crate::decode;
use crate::ops::{self, Cause};
use futures::FutureExt;
use keyloop_core::event::{
    CREDENTIAL_USED_TYPE, CloudEvent, CredentialUsed, REVOKE_COMMAND_TYPE,
    REVOKE_LEASE_COMMAND_TYPE, ROTATE_COMMAND_TYPE, RevokeCommand, RevokeLeaseCommand,
    RotateCommand, SCHEDULE_TICK_TYPE, ScheduleTick, stable_id,
};
use keyloop_core::lease::LeaseState;
use keyloop_core::{RevokeReason, RotationReason, Stage};
use keyloop_nats::due::{DueEntry, DueItem, minute_of};
use keyloop_nats::{Delivery, Error, Handler, HandlerError};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tracing::{debug, info};

const SOURCE: &str = "keyloop/sweeper";

/// How far back a first sweep looks when no cursor exists yet.
const FIRST_SWEEP_LOOKBACK_MINUTES: i64 = 60;

/// What one sweep did: the work it touched, for tests, logs and the benchmark.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SweepStats {
    /// Minute buckets read.
    pub buckets_scanned: u64,
    /// Due entries read from them.
    pub entries_read: u64,
    /// Commands published.
    pub commands: u64,
    /// Entries that were stale (already handled elsewhere) and dropped, or moved later.
    pub dropped: u64,
}

/// The handler of `<prefix>.schedule.tick` and `<prefix>.credential.used`.
pub fn handler(ctx: Arc<WorkerContext>) -> Handler {
    Arc::new(move |delivery| {
        let ctx = ctx.clone();
        async move {
            if delivery.message.subject.as_str() == ctx.bus.topology.credential_used() {
                return record_use(&ctx, &delivery).await;
            }
            let tick: CloudEvent<ScheduleTick> = decode::cloud_event(&delivery.message.payload, SCHEDULE_TICK_TYPE)?;
            let stats = sweep(&ctx, OffsetDateTime::now_utc()).await?;
            info!(tick = %tick.id, buckets = stats.buckets_scanned, read = stats.entries_read, commands = stats.commands, dropped = stats.dropped, "sweep done");
            Ok(())
        }
        .boxed()
    })
}

async fn record_use(ctx: &WorkerContext, delivery: &Delivery) -> Result<(), HandlerError> {
    let used: CloudEvent<CredentialUsed> =
        decode::cloud_event(&delivery.message.payload, CREDENTIAL_USED_TYPE)?;
    let cause = Cause {
        source: SOURCE.into(),
        correlation: used.correlationid.clone(),
        causation: Some(used.id.clone()),
    };
    match ops::record_use(
        ctx,
        &used.data.credential,
        used.data.version,
        used.data.actor.clone(),
        used.time,
        &cause,
    )
    .await
    {
        Err(e) if e.kind() == keyloop_nats::ErrorKind::NotFound => {
            Err(HandlerError::permanent(e.to_string()))
        }
        other => other.map_err(HandlerError::from),
    }
}

/// Handles everything due at `now`: scans the minute buckets from the cursor to `now`'s, acts on
/// each due item, and moves the cursor. Safe to run concurrently and repeatedly.
pub async fn sweep(ctx: &WorkerContext, now: OffsetDateTime) -> Result<SweepStats, Error> {
    let mut stats = SweepStats::default();
    let now_minute = minute_of(now);
    let cursor = ctx.due.cursor().await?;
    let first = cursor.map_or(now_minute - FIRST_SWEEP_LOOKBACK_MINUTES, |(m, _)| m);
    for minute in first..=now_minute {
        stats.buckets_scanned += 1;
        for (key, entry) in ctx.due.scan_minute(minute).await? {
            stats.entries_read += 1;
            if entry.due_at > now {
                continue;
            }
            if act(ctx, &entry, now).await? {
                stats.commands += 1;
            } else {
                stats.dropped += 1;
            }
            ctx.due.remove(&key).await?;
        }
    }
    // Everything before this minute is handled; the current minute is read again next time, for
    // items due later in it.
    ctx.due.advance_cursor(now_minute - 1, cursor).await?;
    Ok(stats)
}

/// Publishes the command for a due entry if the inventory confirms it is due; reschedules or
/// drops it otherwise. Returns whether a command was published.
async fn act(ctx: &WorkerContext, entry: &DueEntry, now: OffsetDateTime) -> Result<bool, Error> {
    let topo = &ctx.bus.topology;
    match &entry.item {
        DueItem::Rotate { credential } => {
            let Some((cred, _)) = ctx.inventory.get(credential).await? else {
                return Ok(false);
            };
            if let Some(retry) = &cred.rotation_retry {
                // A failed scheduled (or leak) rotation: its next attempt has its own entry at
                // `next_attempt_at`, and its own operation id, so it never meets the version
                // the failed one retired.
                if retry.next_attempt_at > now {
                    return Ok(false);
                }
                let op_id = format!(
                    "retry/{credential}/{}/{}",
                    cred.current()
                        .map_or_else(|| "none".to_owned(), |v| v.id.to_string()),
                    retry.failures
                );
                let cmd = RotateCommand {
                    credential: credential.clone(),
                    reason: retry.reason,
                    op_id: op_id.clone(),
                };
                publish(
                    ctx,
                    &topo.cmd_rotate(),
                    ROTATE_COMMAND_TYPE,
                    &op_id,
                    credential.as_str(),
                    cmd,
                )
                .await?;
                return Ok(true);
            }
            let (Some(max_age), Some(current)) = (cred.policy.max_age_secs, cred.current()) else {
                return Ok(false);
            };
            let due =
                current.activated_at.unwrap_or(current.created_at) + Duration::from_secs(max_age);
            if due > now {
                // Rotated early: the rotation that did it filed the next due entry.
                debug!(%credential, "rotation not due any more");
                return Ok(false);
            }
            let op_id = format!("scheduled/{credential}/{}", current.id);
            let cmd = RotateCommand {
                credential: credential.clone(),
                reason: RotationReason::Scheduled,
                op_id: op_id.clone(),
            };
            publish(
                ctx,
                &topo.cmd_rotate(),
                ROTATE_COMMAND_TYPE,
                &op_id,
                credential.as_str(),
                cmd,
            )
            .await?;
            Ok(true)
        }
        DueItem::Retire {
            credential,
            version,
        } => {
            let Some((cred, _)) = ctx.inventory.get(credential).await? else {
                return Ok(false);
            };
            if cred.version(*version).map(|v| v.stage) != Some(Stage::Previous) {
                return Ok(false);
            }
            let op_id = format!("retire/{credential}/{version}");
            let cmd = RevokeCommand {
                credential: credential.clone(),
                version: Some(*version),
                reason: RevokeReason::GraceEnded,
                op_id: op_id.clone(),
                leak_published_at: None,
                then_rotate: false,
                note: None,
            };
            publish(
                ctx,
                &topo.cmd_revoke(),
                REVOKE_COMMAND_TYPE,
                &op_id,
                credential.as_str(),
                cmd,
            )
            .await?;
            Ok(true)
        }
        DueItem::Expire { lease } => {
            let Some(l) = ctx.inventory.lease(*lease).await? else {
                return Ok(false);
            };
            if l.state != LeaseState::Active {
                return Ok(false);
            }
            let op_id = format!("expire/{lease}");
            let cmd = RevokeLeaseCommand {
                lease: *lease,
                reason: RevokeReason::Expired,
                op_id: op_id.clone(),
                leak_published_at: None,
            };
            let subject = keyloop_core::Lease::subject_token(*lease);
            publish(
                ctx,
                &topo.cmd_revoke_lease(),
                REVOKE_LEASE_COMMAND_TYPE,
                &op_id,
                &subject,
                cmd,
            )
            .await?;
            Ok(true)
        }
        DueItem::Idle { credential } => {
            let Some((cred, _)) = ctx.inventory.get(credential).await? else {
                return Ok(false);
            };
            let Some(idle) = cred.policy.idle_revoke_after_secs else {
                return Ok(false);
            };
            if cred.live_versions().is_empty() {
                return Ok(false);
            }
            let last = cred.last_activity();
            let due = last + Duration::from_secs(idle);
            if due > now {
                // Used since this entry was filed: look again when it could next be idle.
                ctx.due.schedule(entry.item.clone(), due, now).await?;
                return Ok(false);
            }
            let op_id = format!("idle/{credential}/{}", last.unix_timestamp());
            let cmd = RevokeCommand {
                credential: credential.clone(),
                version: None,
                reason: RevokeReason::Idle,
                op_id: op_id.clone(),
                leak_published_at: None,
                then_rotate: false,
                note: Some(format!("unused since {last}")),
            };
            publish(
                ctx,
                &topo.cmd_revoke(),
                REVOKE_COMMAND_TYPE,
                &op_id,
                credential.as_str(),
                cmd,
            )
            .await?;
            Ok(true)
        }
    }
}

async fn publish<T: Serialize>(
    ctx: &WorkerContext,
    subject: &str,
    ty: &str,
    op_id: &str,
    about: &str,
    command: T,
) -> Result<(), Error> {
    let event = CloudEvent::new(
        stable_id(&format!("cmd/{op_id}")).to_string(),
        SOURCE,
        ty,
        command,
    )
    .with_subject(about)
    .caused_by(Some(op_id.to_owned()), None);
    ctx.bus.publish_event(subject, &event).await.map(|_| ())
}
