//! The revocation budget (storm guard): at most `max` revocations per target per window. A
//! runaway rule, a bad idle setting or a mistaken bulk revoke must not take every credential
//! of a database down at once, so past the budget the revoker holds idle, scheduled and manual
//! revocations of that target as **one** approval (`approval_requested` for the batch, after
//! `budget_tripped`); one grant releases them all (`budget_released`), and further holdable
//! revocations join the batch while it waits. Leak-driven revocations are counted but never
//! held: a leaked value dies whatever the budget says. Lease revocations (task completed,
//! expired) are not counted: a lease's lifetime is its promise.
//!
//! A target is where the revocations land: the target system (`postgres`), or the store for a
//! credential without one (`store-local`, `store-aws-sm`).

use crate::approvals;
use crate::context::{RevocationBudget, WorkerContext};
use crate::error::{Error, ErrorKind};
use crate::ops::Cause;
use keyloop_core::event::RevokeCommand;
use keyloop_core::policy::{Approval, ApprovalNeed, ApprovalState, Held};
use keyloop_core::{Credential, LifecycleKind, RevokeReason, TargetKind};
use keyloop_nats::Change;
use time::OffsetDateTime;
use tracing::warn;

/// The policy id the budget's approvals name.
pub const POLICY_ID: &str = "revocation-budget";
/// Who asks for a batch's approval.
pub const REQUESTER: &str = "keyloop/revoker";

/// The target a credential's revocations count against.
pub fn target_of(cred: &Credential) -> String {
    match cred.target {
        TargetKind::None => format!("store-{}", cred.store.name()),
        target => target.name().to_owned(),
    }
}

/// Whether a revocation for `reason` may be held by a tripped budget.
pub const fn holdable(reason: RevokeReason) -> bool {
    matches!(
        reason,
        RevokeReason::Manual
            | RevokeReason::Idle
            | RevokeReason::GraceEnded
            | RevokeReason::Superseded
    )
}

/// The same held command: one operation on one version (or all).
fn same(a: &RevokeCommand, b: &RevokeCommand) -> bool {
    a.op_id == b.op_id && a.version == b.version && a.credential == b.credential
}

/// Whether the revoker goes ahead with `cmd` now (`true`), or it is held for the batch's
/// approval (`false`: stored in the approval, so the command can be acked).
///
/// `known` is the credential's record when the caller has just read it (its store and target,
/// which never change, are all this needs).
pub async fn admit(
    ctx: &WorkerContext,
    cmd: &RevokeCommand,
    cause: &Cause,
    now: OffsetDateTime,
    known: Option<&Credential>,
) -> Result<bool, Error> {
    let Some(budget) = ctx.approval_settings.budget else {
        return Ok(true);
    };
    if cmd.released_by.is_some() {
        return Ok(true);
    }
    let read = match known {
        Some(_) => None,
        None => ctx.inventory.get(&cmd.credential).await?.map(|(c, _)| c),
    };
    let Some(cred) = known.or(read.as_ref()) else {
        return Ok(true);
    };
    let target = target_of(cred);
    let holdable = holdable(cmd.reason);
    if holdable
        && let Some(waiting) = ctx.approvals.breaker(&target).await?
        && join(ctx, &waiting, cmd).await?
    {
        return Ok(false);
    }
    let window_secs = i64::try_from(budget.window.as_secs().max(1)).unwrap_or(i64::MAX);
    let window = now.unix_timestamp().div_euclid(window_secs);
    if !holdable && ctx.budget_spent.seen(&target, window) {
        // This window's count is full (it only grows): a revocation that is never held has
        // nothing to count and nothing to decide, so a leak storm past the budget costs no
        // read of the count per leak.
        return Ok(true);
    }
    let key = format!(
        "{}/{}",
        cmd.op_id,
        cmd.version
            .map_or_else(|| "all".to_owned(), |v| v.to_string())
    );
    let within = ctx
        .approvals
        .count_revocation(&target, window, &key, budget.max)
        .await?;
    if within || !holdable {
        if !within && ctx.budget_spent.first_overrun(&target, window) {
            warn!(credential = %cmd.credential, %target, reason = cmd.reason.name(), "revocation budget spent; a leak-driven revocation goes ahead anyway (the next ones of this target in this window go ahead without a line each)");
        }
        return Ok(true);
    }
    trip(ctx, cmd, cause, &target, window, budget, now).await?;
    Ok(false)
}

/// The windows this process has seen spent, per target (the last one each): a leak storm past
/// the budget logs one line per target and window, not one per leak, and its revocations skip
/// the count, which cannot change any more in that window.
#[derive(Debug, Default)]
pub struct Spent {
    last: std::sync::Mutex<std::collections::HashMap<String, i64>>,
}

impl Spent {
    /// Whether `window` of `target` is known to be spent.
    fn seen(&self, target: &str, window: i64) -> bool {
        let last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        last.get(target) == Some(&window)
    }

    /// Records `window` of `target` as spent: true the first time.
    fn first_overrun(&self, target: &str, window: i64) -> bool {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        last.insert(target.to_owned(), window) != Some(window)
    }
}

/// Adds `cmd` to the pending batch `approval`: `false` when that approval no longer waits
/// (its breaker is stale and is released).
async fn join(ctx: &WorkerContext, approval: &str, cmd: &RevokeCommand) -> Result<bool, Error> {
    let joined = ctx
        .approvals
        .update_approval(approval, |a| {
            if a.state != ApprovalState::Pending {
                return Ok(Change::Keep(false));
            }
            let Held::RevokeBatch { commands, .. } = &mut a.held else {
                return Ok(Change::Keep(false));
            };
            if commands.iter().any(|c| same(c, cmd)) {
                return Ok(Change::Keep(true));
            }
            commands.push(cmd.clone());
            Ok(Change::Write(true))
        })
        .await;
    match joined {
        Ok(true) => Ok(true),
        Ok(false) => Ok(false),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Trips the budget of `target`: a batch approval holding `cmd`, the breaker pointing at it,
/// `budget_tripped` and `approval_requested` published. A concurrent trip by another replica
/// ends with one batch holding both commands.
async fn trip(
    ctx: &WorkerContext,
    cmd: &RevokeCommand,
    cause: &Cause,
    target: &str,
    window: i64,
    budget: RevocationBudget,
    now: OffsetDateTime,
) -> Result<(), Error> {
    let id = format!(
        "budget-{}-{window}",
        target.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_")
    );
    let mut approval = Approval::new(
        id.clone(),
        REQUESTER,
        target,
        &format!(
            "more than {} revocations of target {target} within {}",
            budget.max,
            humantime::format_duration(budget.window)
        ),
        ApprovalNeed {
            approvers: 1,
            group: Some(keyloop_core::policy::ADMINS_GROUP.to_owned()),
        },
        vec![POLICY_ID.to_owned()],
        Held::RevokeBatch {
            target: target.to_owned(),
            commands: vec![cmd.clone()],
        },
        now,
        time::Duration::try_from(ctx.approval_settings.open_for)
            .unwrap_or(time::Duration::minutes(15)),
    );
    approval.correlation = Some(format!("approval/{id}"));
    match ctx.approvals.create_approval(&approval).await {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            if !join(ctx, &id, cmd).await? {
                return Err(Error::msg(
                    ErrorKind::Transient,
                    format!(
                        "the revocation budget of {target} is spent and its batch approval {id} is already decided; retrying"
                    ),
                ));
            }
        }
        Err(e) => return Err(e),
    }
    let waiting = ctx.approvals.trip_breaker(target, &id).await?;
    if waiting != id && !join(ctx, &waiting, cmd).await? {
        return Err(Error::msg(
            ErrorKind::Transient,
            format!(
                "the revocation budget of {target} is tripped on {waiting}, which no longer waits; retrying"
            ),
        ));
    }
    let stored = ctx.approvals.approval(&id).await?.unwrap_or(approval);
    keyloop_nats::metrics::global().budget_tripped();
    warn!(%target, approval = %id, max = budget.max, "revocation budget tripped: further idle, scheduled and manual revocations of this target are held for approval");
    approvals::announce(
        ctx,
        cause,
        LifecycleKind::BudgetTripped,
        &stored,
        None,
        Some(format!(
            "revocation budget of {target} spent ({} per {}); held for approval {id}: `keyloop approvals approve {id}` releases the batch",
            budget.max,
            humantime::format_duration(budget.window)
        )),
    )
    .await?;
    approvals::announce_requested(ctx, cause, &stored, now).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overrun_is_logged_once_per_target_and_window_and_then_known_spent() {
        let spent = Spent::default();
        assert!(!spent.seen("t-unit", 7));
        assert!(spent.first_overrun("t-unit", 7));
        assert!(spent.seen("t-unit", 7));
        assert!(!spent.first_overrun("t-unit", 7));
        assert!(!spent.seen("t-unit-other", 7));
        assert!(spent.first_overrun("t-unit-other", 7));
        // A new window starts unspent.
        assert!(!spent.seen("t-unit", 8));
        assert!(spent.first_overrun("t-unit", 8));
        assert!(!spent.first_overrun("t-unit", 8));
    }

    #[test]
    fn only_idle_scheduled_and_manual_revocations_are_held() {
        assert!(!holdable(RevokeReason::Leak));
        assert!(!holdable(RevokeReason::TaskCompleted));
        assert!(!holdable(RevokeReason::Expired));
        for r in [
            RevokeReason::Manual,
            RevokeReason::Idle,
            RevokeReason::GraceEnded,
            RevokeReason::Superseded,
        ] {
            assert!(holdable(r), "{}", r.name());
        }
    }
}
