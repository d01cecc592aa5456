//! sweeper: on each `schedule.tick`, turns what has fallen due into commands — rotations at
//! `max_age`, retirement of previous versions when `grace` ends, expiry of leases, revocation of
//! idle credentials — and on `credential.used` records the use.
//!
//! Complexity: a sweep reads the due-time index's minute buckets from its cursor to now
//! (`DueIndex::scan_minute`), so its work is O(minutes since the last sweep + items due in them),
//! not O(inventory). Each due item is re-checked against the inventory before acting; an item
//! that is not due after all (a credential used since its idle check was filed) is filed again,
//! possibly under the same key, which the sweep then keeps.
//!
//! Policies are read back from the inventory, so they are checked again here: a rotation or
//! idle revocation under a policy out of range ([`keyloop_core::Policy::validate`]) is refused
//! with an error in the log, and every time sum is checked, so no record makes a sweep panic.
//!
//! Redelivery and concurrent sweepers are harmless: every command carries a message id derived
//! from the item (the version to rotate, the lease to expire), so repeated ticks never double a
//! command, and an entry is removed only after its command is stored.

use crate::context::WorkerContext;
use crate::decode;
use crate::error::Error;
use crate::ops::{self, Cause};
use futures::FutureExt;
use keyloop_core::duration::checked_after;
use keyloop_core::event::{
    CREDENTIAL_USED_TYPE, CloudEvent, Command, CredentialUsed, RevokeCommand, RevokeLeaseCommand,
    RotateCommand, SCHEDULE_TICK_TYPE, ScheduleTick,
};
use keyloop_core::lease::LeaseState;
use keyloop_core::{Credential, RevokeReason, RotationReason, Stage};
use keyloop_nats::due::{DueEntry, DueItem, minute_of};
use keyloop_nats::{Delivery, Handler, HandlerError};
use serde::Serialize;
use std::sync::Arc;
use time::OffsetDateTime;
use tracing::{debug, error, info};

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
            if delivery.message.subject.as_str() == ctx.topology.credential_used() {
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
    let cause = Cause::of(SOURCE, &used);
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
        Err(e) if e.kind() == crate::error::ErrorKind::NotFound => {
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
            match act(ctx, &entry, now).await? {
                Acted::Published => stats.commands += 1,
                Acted::Dropped | Acted::Refiled => stats.dropped += 1,
            }
            // Only the entry as read goes: an item filed again meanwhile for later in the same
            // minute (an idle check used since, a sub-minute rotation finished already) lands
            // under the same key, and must stay to fall due again.
            ctx.due.remove(&key, &entry).await?;
        }
    }
    // Everything before this minute is handled; the current minute is read again next time, for
    // items due later in it.
    ctx.due.advance_cursor(now_minute - 1, cursor).await?;
    Ok(stats)
}

/// What [`act`] did with a due entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Acted {
    /// Its command is stored; the entry can go.
    Published,
    /// Stale or refused; the entry can go.
    Dropped,
    /// Not due yet after all: filed again for later (possibly under the entry's own key).
    Refiled,
}

/// Whether a credential is idle at `now`, judged from the inventory record alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Idleness {
    /// Unused since `last` for at least `idle_revoke_after`: revoke.
    Idle {
        /// Its last use (or its registration).
        last: OffsetDateTime,
    },
    /// Used recently: it can be idle at `due` at the earliest.
    UsedSince {
        /// When to look again.
        due: OffsetDateTime,
    },
    /// No idle policy, nothing live, or a policy that must not be acted on.
    Never,
}

fn idleness(cred: &Credential, now: OffsetDateTime) -> Idleness {
    let Some(idle) = cred.policy.idle_revoke_after_secs else {
        return Idleness::Never;
    };
    if cred.live_versions().is_empty() {
        return Idleness::Never;
    }
    let last = cred.last_activity();
    match checked_after(last, idle) {
        None => Idleness::Never,
        Some(due) if due > now => Idleness::UsedSince { due },
        Some(_) => Idleness::Idle { last },
    }
}

/// Reads the credential of a due entry, or `None` when it is gone or its policy is out of
/// range. A policy that fails [`Policy::validate`](keyloop_core::Policy::validate) was not
/// written by `keyloop credential register` (which refuses it): acting on a zero `max_age`
/// would rotate on every tick forever, so the sweeper refuses it and says so.
async fn credential_for(
    ctx: &WorkerContext,
    credential: &keyloop_core::CredentialId,
) -> Result<Option<Credential>, Error> {
    let Some((cred, _)) = ctx.inventory.get(credential).await? else {
        return Ok(None);
    };
    if cred.retired.is_some() {
        // Offboarded: nothing falls due for it any more.
        return Ok(None);
    }
    if let Err(e) = cred.policy.validate() {
        error!(%credential, error = %e, "refusing to act on a policy out of range; register the credential again with valid values");
        return Ok(None);
    }
    Ok(Some(cred))
}

/// Publishes the command for a due entry if the inventory confirms it is due; reschedules or
/// drops it otherwise.
async fn act(ctx: &WorkerContext, entry: &DueEntry, now: OffsetDateTime) -> Result<Acted, Error> {
    match &entry.item {
        DueItem::Rotate { credential } => {
            let Some(cred) = credential_for(ctx, credential).await? else {
                return Ok(Acted::Dropped);
            };
            let (op_id, reason) = if let Some(retry) = &cred.rotation_retry {
                // A failed scheduled (or leak) rotation: its next attempt has its own entry at
                // `next_attempt_at`, and its own operation id, so it never meets the version
                // the failed one retired.
                if retry.next_attempt_at > now {
                    return Ok(Acted::Dropped);
                }
                let current = cred
                    .current()
                    .map_or_else(|| "none".to_owned(), |v| v.id.to_string());
                let op = format!("retry/{credential}/{current}/{}", retry.failures);
                (op, retry.reason)
            } else {
                let (Some(max_age), Some(current)) = (cred.policy.max_age_secs, cred.current())
                else {
                    return Ok(Acted::Dropped);
                };
                let activated = current.activated_at.unwrap_or(current.created_at);
                let due = checked_after(activated, max_age);
                if due.is_none_or(|due| due > now) {
                    // Rotated early: the rotation that did it filed the next due entry.
                    debug!(%credential, "rotation not due any more");
                    return Ok(Acted::Dropped);
                }
                let op = format!("scheduled/{credential}/{}", current.id);
                (op, RotationReason::Scheduled)
            };
            let cmd = RotateCommand {
                credential: credential.clone(),
                reason,
                op_id: op_id.clone(),
            };
            send(ctx, &op_id, cmd).await?;
            Ok(Acted::Published)
        }
        DueItem::Retire {
            credential,
            version,
        } => {
            // Not through `credential_for`: ending a previous version's grace only removes
            // trust, so it goes ahead whatever the policy record says.
            let Some((cred, _)) = ctx.inventory.get(credential).await? else {
                return Ok(Acted::Dropped);
            };
            if cred.version(*version).map(|v| v.stage) != Some(Stage::Previous) {
                return Ok(Acted::Dropped);
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
                released_by: None,
            };
            send(ctx, &op_id, cmd).await?;
            Ok(Acted::Published)
        }
        DueItem::Expire { lease } => {
            let Some(l) = ctx.inventory.lease(*lease).await? else {
                return Ok(Acted::Dropped);
            };
            if l.state != LeaseState::Active {
                return Ok(Acted::Dropped);
            }
            let op_id = format!("expire/{lease}");
            let cmd = RevokeLeaseCommand {
                lease: *lease,
                reason: RevokeReason::Expired,
                op_id: op_id.clone(),
                leak_published_at: None,
            };
            send(ctx, &op_id, cmd).await?;
            Ok(Acted::Published)
        }
        DueItem::Idle { credential } => {
            let Some(cred) = credential_for(ctx, credential).await? else {
                return Ok(Acted::Dropped);
            };
            let last = match idleness(&cred, now) {
                Idleness::Never => return Ok(Acted::Dropped),
                Idleness::UsedSince { due } => {
                    // Used since this entry was filed: look again when it could next be idle.
                    ctx.due.schedule(entry.item.clone(), due, now).await?;
                    return Ok(Acted::Refiled);
                }
                Idleness::Idle { last } => last,
            };
            let op_id = format!("idle/{credential}/{}", last.unix_timestamp());
            let cmd = RevokeCommand {
                credential: credential.clone(),
                version: None,
                reason: RevokeReason::Idle,
                op_id: op_id.clone(),
                leak_published_at: None,
                then_rotate: false,
                note: Some(format!("unused since {last}")),
                released_by: None,
            };
            send(ctx, &op_id, cmd).await?;
            Ok(Acted::Published)
        }
        DueItem::ApprovalDeadline { approval } => {
            let cause = Cause {
                source: SOURCE.into(),
                correlation: Some(format!("approval/{approval}")),
                causation: None,
                batch: None,
                actor: None,
            };
            let expired = crate::approvals::expire(ctx, &cause, approval, now).await?;
            Ok(if expired {
                Acted::Published
            } else {
                Acted::Dropped
            })
        }
    }
}

/// Sends a command the sweep found due; its correlation id is the operation, which the
/// audit log then groups under (a scheduled rotation starts its own chain).
async fn send<C: Command>(ctx: &WorkerContext, op_id: &str, command: C) -> Result<(), Error> {
    let cause = Cause {
        source: SOURCE.into(),
        correlation: Some(op_id.to_owned()),
        causation: None,
        batch: None,
        actor: None,
    };
    ctx.send_command(&cause, command).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyloop_core::{BackendSettings, Policy, StoreKind, TargetKind, Version};
    use std::time::Duration;
    use time::macros::datetime;
    use uuid::Uuid;

    const REGISTERED: OffsetDateTime = datetime!(2026-01-01 10:00:00 UTC);

    fn credential(
        idle: Option<u64>,
        last_used: Option<OffsetDateTime>,
        stage: Stage,
    ) -> Credential {
        Credential {
            id: "svc/idle".parse().unwrap(),
            store: StoreKind::Local,
            target: TargetKind::None,
            policy: Policy {
                max_age_secs: None,
                grace_secs: 0,
                idle_revoke_after_secs: idle,
                owner: None,
                ..Default::default()
            },
            settings: BackendSettings::default(),
            versions: vec![Version {
                id: Uuid::from_u128(1),
                stage,
                fingerprint: None,
                created_by: "register".into(),
                login: None,
                created_at: REGISTERED,
                activated_at: Some(REGISTERED),
                demoted_at: None,
                revoked_at: None,
                revoke_reason: None,
                revoked_by: None,
                at_target: keyloop_core::AtTarget::Set,
            }],
            created_at: REGISTERED,
            last_used_at: last_used,
            claim: None,
            consumers: Vec::new(),
            retired: None,
            claim_epoch: 0,
            rotation_retry: None,
        }
    }

    #[test]
    fn a_used_credential_is_idle_once_the_window_after_its_last_use_has_passed() {
        let used = REGISTERED + Duration::from_secs(1);
        let cred = credential(Some(2), Some(used), Stage::Current);
        // Past the window after registration, inside the one after the use: look again then.
        assert_eq!(
            idleness(&cred, REGISTERED + Duration::from_secs(2)),
            Idleness::UsedSince {
                due: used + Duration::from_secs(2)
            }
        );
        assert_eq!(
            idleness(&cred, used + Duration::from_secs(2)),
            Idleness::Idle { last: used }
        );
        // Many times the window later it is still idle, never forgotten.
        assert_eq!(
            idleness(&cred, used + Duration::from_secs(3_600)),
            Idleness::Idle { last: used }
        );
    }

    #[test]
    fn a_never_used_credential_is_idle_from_its_registration() {
        let cred = credential(Some(60), None, Stage::Current);
        assert_eq!(
            idleness(&cred, REGISTERED + Duration::from_secs(60)),
            Idleness::Idle { last: REGISTERED }
        );
    }

    #[test]
    fn no_policy_nothing_live_or_an_overflowing_window_is_never_idle() {
        let now = REGISTERED + Duration::from_secs(86_400);
        assert_eq!(
            idleness(&credential(None, None, Stage::Current), now),
            Idleness::Never
        );
        assert_eq!(
            idleness(&credential(Some(1), None, Stage::Revoked), now),
            Idleness::Never
        );
        // A record nobody validated: checked arithmetic, no panic.
        assert_eq!(
            idleness(&credential(Some(u64::MAX), None, Stage::Current), now),
            Idleness::Never
        );
    }
}
