//! A pending approval and its state machine, pure logic: who asked for what and why, until
//! when, what it needs ([`ApprovalNeed`]), and the grants and denial so far. The workers store
//! it in the inventory (`approval.<id>`, compare-and-set) and publish each transition as
//! `approval_requested` / `approval_granted` / `approval_denied` / `approval_expired`.
//!
//! The rules, each a unit test: the requester never approves their own request; N-of-M means
//! N *distinct* approvers (a second approve by the same actor changes nothing); one denial
//! ends the request; nothing happens after the deadline but expiry (checked lazily against the
//! clock by every transition, so no timer is needed for correctness); and a granted approval
//! is redeemed once ([`Approval::redeem`]): a replayed grant does nothing.

use super::ApprovalNeed;
use crate::event::{ApprovalInfo, RevokeCommand, RotateCommand};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Where an approval stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalState {
    /// Waiting for approvers.
    Pending,
    /// Enough approvers agreed; the action may run once.
    Granted,
    /// The action ran (the grant is spent).
    Used,
    /// An approver refused.
    Denied,
    /// Nobody decided in time.
    Expired,
}

/// One approver's yes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// The approver (a proved actor).
    pub by: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub at: OffsetDateTime,
}

/// A request waiting for (or past) its approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    /// The approval id.
    pub id: String,
    /// Who asked (a proved actor).
    pub requester: String,
    /// The action asked for (`issue`, `revoke`, …).
    pub action: String,
    /// What it is about: a credential id or a JIT scope name.
    pub resource: String,
    /// Why, in the requester's words (a JIT task id, a revocation's reason).
    pub reason: String,
    /// What it needs.
    pub need: ApprovalNeed,
    /// The policies that asked for it.
    pub policies: Vec<String>,
    /// When it was asked.
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub requested_at: OffsetDateTime,
    /// When it expires if not decided.
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub expires_at: OffsetDateTime,
    /// Where it stands (as stored; [`Approval::state_at`] applies the deadline).
    pub state: ApprovalState,
    /// The grants so far, distinct approvers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grants: Vec<Grant>,
    /// The denial: who, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denied: Option<(String, String)>,
    /// What is held until the grant.
    pub held: Held,
    /// The correlation id of the request that asked (its events carry it too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation: Option<String>,
}

/// What an approval holds: the request as it was asked, run (or redeemed) once after the
/// grant, never before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", tag = "kind", content = "request")]
pub enum Held {
    /// A JIT lease: redeemed by the requester asking again with the approval id and the same
    /// terms (the token goes to them only, so nothing runs on the grant itself).
    Issue {
        /// The scope.
        scope: String,
        /// The task.
        task_id: String,
        /// The TTL asked (seconds).
        ttl_secs: u64,
    },
    /// A rotation, sent on the grant.
    Rotate(RotateCommand),
    /// A revocation, sent on the grant.
    Revoke(RevokeCommand),
    /// A retirement, run on the grant.
    Retire {
        /// The operator's reason.
        reason: String,
    },
    /// Revocations held by a tripped revocation budget, sent together on the grant.
    RevokeBatch {
        /// The target whose budget was spent.
        target: String,
        /// The held commands, in the order they came.
        commands: Vec<RevokeCommand>,
    },
}

impl Held {
    /// The action's name as approvals show it.
    pub const fn action(&self) -> &'static str {
        match self {
            Self::Issue { .. } => "issue",
            Self::Rotate(_) => "rotate",
            Self::Revoke(_) => "revoke",
            Self::Retire { .. } => "retire",
            Self::RevokeBatch { .. } => "revoke-batch",
        }
    }
}

/// Why a transition is refused. Each message says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApprovalError {
    /// The requester tried to approve or deny their own request.
    #[error("{actor} asked for approval {id} and may not decide it; another approver must")]
    SelfApproval {
        /// The approval.
        id: String,
        /// The requester.
        actor: String,
    },
    /// The approver is not in the group the policy names.
    #[error("approval {id} needs approvers from group {group}; {actor} is not in it")]
    NotInGroup {
        /// The approval.
        id: String,
        /// The group.
        group: String,
        /// Who tried.
        actor: String,
    },
    /// The approval is no longer pending.
    #[error("approval {id} is {}, not pending; nothing changed", state_name(*.state))]
    NotPending {
        /// The approval.
        id: String,
        /// Where it stands.
        state: ApprovalState,
    },
    /// A deny without a reason.
    #[error("a denial needs a reason (--reason TEXT): the requester and the audit log read it")]
    NoReason,
}

const fn state_name(state: ApprovalState) -> &'static str {
    match state {
        ApprovalState::Pending => "pending",
        ApprovalState::Granted => "granted",
        ApprovalState::Used => "used",
        ApprovalState::Denied => "denied",
        ApprovalState::Expired => "expired",
    }
}

impl ApprovalState {
    /// The state's name: `pending`, `granted`, `used`, `denied`, `expired`.
    pub const fn name(self) -> &'static str {
        state_name(self)
    }
}

/// What a transition did, for the event to publish (none: nothing changed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// One more grant; still pending (`approval_granted` with the count so far).
    Counted,
    /// The last grant needed: granted.
    Granted,
    /// Denied.
    Denied,
    /// Found past its deadline: expired (and the transition asked for did not happen).
    Expired,
    /// Nothing changed (the same approver again).
    Unchanged,
}

impl Approval {
    /// A pending approval of `held`, asked by `requester` at `now` about `resource` for
    /// `reason`, needing `need` under `policies`, open for `open_for`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: String,
        requester: &str,
        resource: &str,
        reason: &str,
        need: ApprovalNeed,
        policies: Vec<String>,
        held: Held,
        now: OffsetDateTime,
        open_for: time::Duration,
    ) -> Self {
        Self {
            id,
            requester: requester.to_owned(),
            action: held.action().to_owned(),
            resource: resource.to_owned(),
            reason: reason.to_owned(),
            need,
            policies,
            requested_at: now,
            expires_at: now + open_for,
            state: ApprovalState::Pending,
            grants: Vec::new(),
            denied: None,
            held,
            correlation: None,
        }
    }

    /// What a lifecycle event says of it.
    pub fn info(&self) -> ApprovalInfo {
        ApprovalInfo {
            id: self.id.clone(),
            action: self.action.clone(),
            resource: self.resource.clone(),
            requester: self.requester.clone(),
            approvers_needed: self.need.approvers,
            grants: u32::try_from(self.grants.len()).unwrap_or(u32::MAX),
            expires_at: self.expires_at,
        }
    }

    /// Marks a pending or granted approval found past its deadline as expired: `true` when it
    /// changed (the caller publishes `approval_expired`).
    pub fn expire(&mut self, now: OffsetDateTime) -> bool {
        if self.state != ApprovalState::Expired && self.state_at(now) == ApprovalState::Expired {
            self.state = ApprovalState::Expired;
            true
        } else {
            false
        }
    }

    /// Where it stands at `now`: a pending or granted-but-unused approval past its deadline is
    /// expired.
    pub fn state_at(&self, now: OffsetDateTime) -> ApprovalState {
        match self.state {
            ApprovalState::Pending | ApprovalState::Granted if now >= self.expires_at => {
                ApprovalState::Expired
            }
            s => s,
        }
    }

    fn pending(&mut self, now: OffsetDateTime) -> Result<Option<Transition>, ApprovalError> {
        match self.state_at(now) {
            ApprovalState::Pending => Ok(None),
            ApprovalState::Expired if self.state != ApprovalState::Expired => {
                self.state = ApprovalState::Expired;
                Ok(Some(Transition::Expired))
            }
            state => Err(ApprovalError::NotPending {
                id: self.id.clone(),
                state,
            }),
        }
    }

    fn check_approver(&self, actor: &str, in_group: bool) -> Result<(), ApprovalError> {
        if actor == self.requester {
            return Err(ApprovalError::SelfApproval {
                id: self.id.clone(),
                actor: actor.to_owned(),
            });
        }
        if let (Some(group), false) = (&self.need.group, in_group) {
            return Err(ApprovalError::NotInGroup {
                id: self.id.clone(),
                group: group.clone(),
                actor: actor.to_owned(),
            });
        }
        Ok(())
    }

    /// `actor` approves at `now` (`in_group`: whether it is in the group the need names; the
    /// caller has also asked the policy whether it may `approve`).
    pub fn approve(
        &mut self,
        actor: &str,
        in_group: bool,
        now: OffsetDateTime,
    ) -> Result<Transition, ApprovalError> {
        if let Some(t) = self.pending(now)? {
            return Ok(t);
        }
        self.check_approver(actor, in_group)?;
        if self.grants.iter().any(|g| g.by == actor) {
            return Ok(Transition::Unchanged);
        }
        self.grants.push(Grant {
            by: actor.to_owned(),
            at: now,
        });
        if self.grants.len() >= self.need.approvers as usize {
            self.state = ApprovalState::Granted;
            Ok(Transition::Granted)
        } else {
            Ok(Transition::Counted)
        }
    }

    /// `actor` denies at `now`, saying why.
    pub fn deny(
        &mut self,
        actor: &str,
        in_group: bool,
        reason: &str,
        now: OffsetDateTime,
    ) -> Result<Transition, ApprovalError> {
        if reason.trim().is_empty() {
            return Err(ApprovalError::NoReason);
        }
        if let Some(t) = self.pending(now)? {
            return Ok(t);
        }
        self.check_approver(actor, in_group)?;
        self.state = ApprovalState::Denied;
        self.denied = Some((actor.to_owned(), reason.to_owned()));
        Ok(Transition::Denied)
    }

    /// Spends a granted approval for the action it was asked for, by its requester: `true`
    /// once, `false` for anything else (pending, denied, expired, already used, or asked by
    /// someone else), so a replayed grant does nothing.
    pub fn redeem(&mut self, requester: &str, now: OffsetDateTime) -> bool {
        if requester != self.requester || self.state_at(now) != ApprovalState::Granted {
            return false;
        }
        self.state = ApprovalState::Used;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const T0: OffsetDateTime = datetime!(2026-06-01 12:00 UTC);

    fn approval(approvers: u32, group: Option<&str>) -> Approval {
        Approval {
            id: "ap-1".into(),
            requester: "orchestrator-a".into(),
            action: "issue".into(),
            resource: "admin".into(),
            reason: "task t-1".into(),
            need: ApprovalNeed {
                approvers,
                group: group.map(str::to_owned),
            },
            policies: vec!["jit-tier-approve".into()],
            requested_at: T0,
            expires_at: T0 + time::Duration::minutes(15),
            state: ApprovalState::Pending,
            grants: Vec::new(),
            denied: None,
            held: Held::Issue {
                scope: "admin".into(),
                task_id: "t-1".into(),
                ttl_secs: 600,
            },
            correlation: None,
        }
    }

    #[test]
    fn one_grant_from_another_actor_grants_and_the_grant_is_redeemed_once() {
        let mut a = approval(1, None);
        assert_eq!(a.approve("ops", true, T0), Ok(Transition::Granted));
        assert!(
            !a.redeem("orchestrator-b", T0),
            "only the requester redeems"
        );
        assert!(a.redeem("orchestrator-a", T0));
        assert!(
            !a.redeem("orchestrator-a", T0),
            "a replayed grant does nothing"
        );
        assert_eq!(a.state, ApprovalState::Used);
    }

    #[test]
    fn the_requester_may_not_approve_or_deny_their_own_request() {
        let mut a = approval(1, None);
        let e = a.approve("orchestrator-a", true, T0).unwrap_err();
        assert!(matches!(e, ApprovalError::SelfApproval { .. }), "{e}");
        let e = a.deny("orchestrator-a", true, "no", T0).unwrap_err();
        assert!(matches!(e, ApprovalError::SelfApproval { .. }), "{e}");
        assert_eq!(a.state, ApprovalState::Pending);
    }

    #[test]
    fn two_of_m_needs_two_distinct_approvers_from_the_group() {
        let mut a = approval(2, Some("sre"));
        let e = a.approve("mallory", false, T0).unwrap_err();
        assert!(matches!(e, ApprovalError::NotInGroup { .. }), "{e}");
        assert_eq!(a.approve("bob", true, T0), Ok(Transition::Counted));
        assert_eq!(a.approve("bob", true, T0), Ok(Transition::Unchanged));
        assert!(!a.redeem("orchestrator-a", T0), "not granted yet");
        assert_eq!(a.approve("carol", true, T0), Ok(Transition::Granted));
        assert_eq!(a.grants.len(), 2);
        let e = a.approve("dave", true, T0).unwrap_err();
        assert!(matches!(e, ApprovalError::NotPending { .. }), "{e}");
    }

    #[test]
    fn a_denial_needs_a_reason_and_ends_the_request() {
        let mut a = approval(2, None);
        assert_eq!(a.deny("bob", true, " ", T0), Err(ApprovalError::NoReason));
        assert_eq!(
            a.deny("bob", true, "not during the freeze", T0),
            Ok(Transition::Denied)
        );
        assert_eq!(
            a.denied,
            Some(("bob".into(), "not during the freeze".into()))
        );
        assert!(a.approve("carol", true, T0).is_err());
        assert!(!a.redeem("orchestrator-a", T0));
    }

    #[test]
    fn past_its_deadline_an_approval_expires_and_nothing_else_happens() {
        let late = T0 + time::Duration::minutes(15);
        let mut a = approval(1, None);
        assert_eq!(a.state_at(late), ApprovalState::Expired);
        assert_eq!(a.approve("ops", true, late), Ok(Transition::Expired));
        assert_eq!(a.state, ApprovalState::Expired);
        assert!(a.grants.is_empty());
        assert!(matches!(
            a.approve("ops", true, late),
            Err(ApprovalError::NotPending {
                state: ApprovalState::Expired,
                ..
            })
        ));
        // A grant not redeemed in time expires too.
        let mut a = approval(1, None);
        a.approve("ops", true, T0).unwrap();
        assert!(!a.redeem("orchestrator-a", late));
    }
}
