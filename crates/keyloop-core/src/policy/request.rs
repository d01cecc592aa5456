//! A request as the engine sees it, and its mapping to Cedar entities and context (the names
//! and types are those of [`super::SCHEMA`]).

use super::Action;
use crate::credential::{Credential, CredentialId, StoreKind, TargetKind};
use crate::identity::WorkloadIdentity;
use crate::lease::ScopePolicy;
use time::OffsetDateTime;

/// The principal id of a JIT request on an open scope without an identity token. It is never
/// put in a group (only proved principals are), so a policy that tests `principal.proved`
/// or a group cannot be satisfied by it.
pub const UNVERIFIED: &str = "unverified";

/// Who asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The actor's name (the Cedar entity id).
    pub name: String,
    /// Whether the name is proved (a secured server's subject namespace, a verified token).
    pub proved: bool,
    /// A workload identity's issuer.
    pub issuer: Option<String>,
    /// A workload identity's subject.
    pub subject: Option<String>,
}

impl Principal {
    /// An api actor: the `<actor>` of its subject, proved by the server's permissions.
    pub fn actor(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            proved: true,
            issuer: None,
            subject: None,
        }
    }

    /// A verified workload identity (`<issuer>#<subject>`).
    pub fn workload(identity: &WorkloadIdentity) -> Self {
        Self {
            name: identity.actor(),
            proved: true,
            issuer: Some(identity.issuer.clone()),
            subject: Some(identity.subject.clone()),
        }
    }

    /// Whoever asks an open JIT scope without a token: [`UNVERIFIED`], not proved.
    pub fn unverified() -> Self {
        Self {
            name: UNVERIFIED.to_owned(),
            proved: false,
            issuer: None,
            subject: None,
        }
    }
}

/// A credential's attributes that policies may test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialAttrs<'a> {
    /// The id.
    pub id: &'a CredentialId,
    /// The owning actor.
    pub owner: Option<&'a str>,
    /// The actors that may read it.
    pub consumers: &'a [String],
    /// `low` or `high`.
    pub blast_radius: crate::credential::BlastRadius,
    /// Free labels.
    pub tags: &'a [String],
    /// Where its values live.
    pub store: StoreKind,
    /// Who accepts them.
    pub target: TargetKind,
    /// Whether it is retired.
    pub retired: bool,
}

impl<'a> From<&'a Credential> for CredentialAttrs<'a> {
    fn from(c: &'a Credential) -> Self {
        Self {
            id: &c.id,
            owner: c.policy.owner.as_deref(),
            consumers: &c.consumers,
            blast_radius: c.policy.blast_radius,
            tags: &c.policy.tags,
            store: c.store,
            target: c.target,
            retired: c.retired.is_some(),
        }
    }
}

/// What a request is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource<'a> {
    /// A credential (for `register`: the one to be registered).
    Credential(CredentialAttrs<'a>),
    /// A JIT scope.
    Scope {
        /// Its name.
        name: &'a str,
        /// Its tier and limits.
        policy: &'a ScopePolicy,
    },
    /// The inventory as a whole (`list`).
    Inventory,
}

/// Where a request came from: the Cedar context's `source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The control plane (`keyloop.api.<actor>.<verb>`).
    Api,
    /// `keyloop.jit.issue`.
    Jit,
}

impl Source {
    /// Its name in the context.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Jit => "jit",
        }
    }
}

/// The request's circumstances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestContext {
    /// When it is decided.
    pub now: OffsetDateTime,
    /// Where it came from.
    pub source: Source,
    /// The JIT task.
    pub task_id: Option<String>,
    /// The JIT TTL asked for (seconds).
    pub ttl_secs: Option<u64>,
    /// The JIT agent label (not proved).
    pub agent_id: Option<String>,
    /// `approve`: the action being approved.
    pub requested_action: Option<Action>,
    /// `approve`: who asked for it.
    pub requester: Option<String>,
}

impl RequestContext {
    /// A context with only `now` and `source`.
    pub const fn new(now: OffsetDateTime, source: Source) -> Self {
        Self {
            now,
            source,
            task_id: None,
            ttl_secs: None,
            agent_id: None,
            requested_action: None,
            requester: None,
        }
    }
}

/// One question for the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRequest<'a> {
    /// Who asks.
    pub principal: Principal,
    /// To do what.
    pub action: Action,
    /// To what.
    pub resource: Resource<'a>,
    /// In which circumstances.
    pub context: RequestContext,
}
