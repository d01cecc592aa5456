//! The policy engine: who may do what, and with how much ceremony, decided by
//! [Cedar](https://www.cedarpolicy.com) policies for every control-plane request and every JIT
//! issue. Pure logic: [`PolicyEngine::decide`] is a function of the policies, the request and
//! the groups, so every rule is unit-tested here and the workers only record what was decided.
//!
//! **The request.** Principal: the proved actor, `Keyloop::Actor::"<name>"` (the NATS subject
//! namespace's `<actor>` for the api; `<issuer>#<subject>` of a verified workload identity, or
//! `anonymous`, for JIT), a member of the [`Groups`] it is in (`admins` holds the api's
//! admins). Action: `Keyloop::Action::"<verb>"` ([`Action`]). Resource: the credential (owner,
//! consumers, blast radius, tags, store, target, retired), the JIT scope (tier, max TTL), or the
//! inventory (`list`). Context: `now` (Unix seconds), `source` (`api`, `jit`), and for JIT the
//! task id, TTL asked and agent label; for `approve`, the action being approved and who asked.
//! The schema is [`SCHEMA`] (`keyloop policy schema` prints it).
//!
//! **The outcome** is carried by annotations on the permit policies that decided:
//! - `@id("name")` — required on every policy, unique: the id named in every decision's event;
//! - `@outcome("allow" | "notify" | "approve")` on a permit — how much ceremony it asks for
//!   (absent: `allow`); never on a forbid (a forbid is a deny);
//! - with `@outcome("approve")`: `@approvers("N")`, N distinct approvers (1 to
//!   [`MAX_APPROVERS`], default 1), and `@group("G")`, the group they must belong to (absent:
//!   anyone the policy allows `approve`).
//!
//! When several permits decide, the **strictest wins** (approve > notify > allow; among approve
//! policies, the one asking the most approvers, then the first id): a broad permit such as the
//! admins' never skips the approval a narrower one asks for. A deny names the forbid policies
//! that decided, or none when no permit applied. For the `approve` action itself the outcome is
//! allow or deny: approving an approval needs no approval.
//!
//! **The default policy** ([`DEFAULT_POLICY`], `keyloop policy default`) is what keyloop did
//! before policies: admins do everything; a credential's owner shows, lists, fetches,
//! verifies, updates, rotates, revokes and retires it; its consumers show, list, fetch and
//! verify it; anyone lists the inventory; a JIT scope is allowed per its tier (auto → allow,
//! notify → notify, approve → one approver from `admins`).

mod approval;
mod engine;
mod request;

#[cfg(test)]
mod tests;

pub use approval::{Approval, ApprovalError, ApprovalState, Grant, Held, Transition};
pub use engine::{LoadError, LoadErrorKind, PolicyEngine};
pub use request::{
    CredentialAttrs, PolicyRequest, Principal, RequestContext, Resource, Source, UNVERIFIED,
};

use crate::api::Verb;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// The Cedar schema every policy file is validated against.
pub const SCHEMA: &str = include_str!("schema.cedarschema");
/// The policy used without `--policy`: today's rules and tiers.
pub const DEFAULT_POLICY: &str = include_str!("default.cedar");
/// The most approvers a policy may ask for.
pub const MAX_APPROVERS: u32 = 10;
/// The group of the api's admins (`--api-admins`).
pub const ADMINS_GROUP: &str = "admins";

/// What a request asks to do: the Cedar action `Keyloop::Action::"<name>"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// A JIT lease of a scope.
    Issue,
    /// A control-plane verb.
    Api(Verb),
    /// Approve (or deny) a pending request.
    Approve,
}

impl Action {
    /// Every action.
    pub const ALL: [Action; 13] = [
        Self::Issue,
        Self::Api(Verb::Register),
        Self::Api(Verb::Update),
        Self::Api(Verb::Retire),
        Self::Api(Verb::List),
        Self::Api(Verb::Show),
        Self::Api(Verb::Rotate),
        Self::Api(Verb::Revoke),
        Self::Api(Verb::Fetch),
        Self::Api(Verb::Verify),
        Self::Api(Verb::DlqRetry),
        Self::Api(Verb::DlqPurge),
        Self::Approve,
    ];

    /// The Cedar action id.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Issue => "issue",
            Self::Api(verb) => verb.name(),
            Self::Approve => "approve",
        }
    }

    /// The action named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }
}

impl From<Verb> for Action {
    /// The action a verb asks for: its own, but `approve` for every approval verb.
    fn from(verb: Verb) -> Self {
        if verb.is_approval() {
            Self::Approve
        } else {
            Self::Api(verb)
        }
    }
}

/// What an approval needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalNeed {
    /// Distinct approvers, none of them the requester.
    pub approvers: u32,
    /// The group every approver must belong to; `None`: anyone allowed `approve`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

impl ApprovalNeed {
    /// `N approval(s)`, and ` from group G` when it names one: for messages.
    pub fn describe(&self) -> String {
        match &self.group {
            Some(g) => format!("{} approval(s) from group {g}", self.approvers),
            None => format!("{} approval(s)", self.approvers),
        }
    }
}

/// How much ceremony an allowed request needs, or that it is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Outcome {
    /// Done at once (tier auto).
    Allow,
    /// Done at once, and announced (tier notify).
    Notify,
    /// Done only after an approval (tier approve).
    Approve(ApprovalNeed),
    /// Refused.
    Deny,
}

impl Outcome {
    /// The outcome's name: `allow`, `notify`, `approve`, `deny`.
    pub const fn name(&self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Notify => "notify",
            Self::Approve(_) => "approve",
            Self::Deny => "deny",
        }
    }

    /// How strict it is, for "the strictest wins".
    const fn rank(&self) -> u8 {
        match self {
            Self::Allow => 0,
            Self::Notify => 1,
            Self::Approve(_) => 2,
            Self::Deny => 3,
        }
    }
}

/// What the engine decided, and which policies decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The outcome.
    pub outcome: Outcome,
    /// The ids of the determining policies, sorted: the permits that allowed, or the forbids
    /// that denied (empty: no permit applied).
    pub policies: Vec<String>,
    /// Policies that could not be evaluated for this request (they are skipped, as Cedar
    /// does); words for the operator's log, never a value.
    pub errors: Vec<String>,
}

impl Decision {
    /// Whether the request may go ahead now (allow or notify).
    pub const fn allowed_now(&self) -> bool {
        matches!(self.outcome, Outcome::Allow | Outcome::Notify)
    }

    /// Whether the request is not refused (it may go ahead, perhaps after an approval).
    pub const fn permitted(&self) -> bool {
        !matches!(self.outcome, Outcome::Deny)
    }

    /// The determining policy ids as one string for a log or an event's detail:
    /// `a, b`, or `no permit applied`.
    pub fn policies_text(&self) -> String {
        if self.policies.is_empty() {
            "no permit applied".to_owned()
        } else {
            self.policies.join(", ")
        }
    }
}

/// Named groups of actors: group → members. `admins` is the api's admins; approver groups are
/// configured on the workers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Groups(BTreeMap<String, BTreeSet<String>>);

impl Groups {
    /// The groups with `admins` as the [`ADMINS_GROUP`].
    pub fn with_admins<I: IntoIterator<Item = S>, S: Into<String>>(admins: I) -> Self {
        let mut groups = Self::default();
        for admin in admins {
            groups.add(ADMINS_GROUP, admin);
        }
        groups
    }

    /// Adds `actor` to `group`.
    pub fn add(&mut self, group: &str, actor: impl Into<String>) {
        self.0
            .entry(group.to_owned())
            .or_default()
            .insert(actor.into());
    }

    /// The groups `actor` is in.
    pub fn of<'a>(&'a self, actor: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(_, members)| members.contains(actor))
            .map(|(group, _)| group.as_str())
    }

    /// Whether `actor` is in `group`.
    pub fn contains(&self, group: &str, actor: &str) -> bool {
        self.0.get(group).is_some_and(|m| m.contains(actor))
    }

    /// The members of `group`.
    pub fn members(&self, group: &str) -> impl Iterator<Item = &str> {
        self.0.get(group).into_iter().flatten().map(String::as_str)
    }
}
