//! Just-in-time credentials: a lease is one short-lived token issued for one task, to a
//! requester proved by its workload identity (or, on an open scope, to whoever may publish the
//! request), with a scope whose tier says how much ceremony it needs. The token's value is
//! never stored: only its fingerprints, so verification is a digest lookup and a leak of it is
//! matched like any other value.
//!
//! Who gets what is the [`JitPolicy`] (its own module, `policy.rs`): [`JitPolicy::decide`] is
//! the issuer's whole check. This module holds the lease and the messages of the jit-issuer's
//! endpoints.

mod policy;

#[cfg(test)]
mod tests;

pub use policy::{
    AllowedIdentity, IssueDecision, JitPolicy, MAX_ID_LEN, PolicyError, Refusal, ScopePolicy, Tier,
};

use crate::credential::RevokeReason;
use crate::fingerprint::FingerprintTag;
use crate::identity::{IdentityToken, WorkloadIdentity};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// Where a lease is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LeaseState {
    /// The token works until `expires_at`.
    Active,
    /// Revoked (task completed, leaked, by an operator).
    Revoked,
    /// Ended by its TTL.
    Expired,
}

/// One JIT credential, as kept in the inventory (`lease.<id>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Lease {
    /// Lease id.
    pub id: Uuid,
    /// The orchestrator's task.
    pub task_id: String,
    /// Who asked for it, proved by a workload identity token; absent for a lease of an open
    /// scope asked for without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<WorkloadIdentity>,
    /// The agent the request said would use it: a label, not proved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// The scope.
    pub scope: String,
    /// The scope's tier at issue time.
    pub tier: Tier,
    /// The tag of the token's digests, for people (the token itself is never stored, and its
    /// digests only as the fingerprint index's hashed keys). Leases written before tags
    /// existed held the digests here; they are read as their tag.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::fingerprint::optional_tag"
    )]
    pub fingerprint: Option<FingerprintTag>,
    /// Where it is in its life.
    pub state: LeaseState,
    /// When it was issued.
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub issued_at: OffsetDateTime,
    /// When it stops working, whatever else happens.
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub expires_at: OffsetDateTime,
    /// When it was revoked or expired.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<String>")]
    pub ended_at: Option<OffsetDateTime>,
    /// Why it ended early (or `expired`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<RevokeReason>,
    /// The operation that ended it, so a retried revocation knows the change was its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_by: Option<String>,
    /// The PostgreSQL login role of a lease on a `postgres_group` scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login: Option<String>,
    /// The W3C trace context of the request that issued it (when traces are recorded): its
    /// revocation links back to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

impl Lease {
    /// True when the token works at `now`.
    pub fn is_valid_at(&self, now: OffsetDateTime) -> bool {
        self.state == LeaseState::Active && now < self.expires_at
    }

    /// The subject token of its lifecycle events: `_lease-<id>` (never a credential id, which
    /// cannot start with `_`).
    pub fn subject_token(id: Uuid) -> String {
        format!("_lease-{id}")
    }
}

/// `keyloop.jit.issue` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IssueRequest {
    /// The orchestrator's task id.
    pub task_id: String,
    /// The agent that will use the credential: a label recorded with the lease, not proved
    /// (1 to 128 printable characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// A scope of the JIT policy (`read`, `write`, `admin` by default).
    pub scope: String,
    /// Lifetime in seconds; at most the scope's `max_ttl_secs`.
    pub ttl_secs: u64,
    /// A workload identity token (a JWT: Kubernetes service-account token, GitHub Actions
    /// OIDC token, SPIFFE JWT-SVID) proving who asks; needed by a scope that lists
    /// `identities`. Never stored or published; redacted in `Debug`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<String>")]
    pub identity_token: Option<IdentityToken>,
    /// The approval granted for this request (the id an `approval_pending` answer gave): the
    /// lease is issued once, to the requester that asked, on the same terms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<String>,
    /// With `approval`: while it is still pending, wait up to this many seconds (at most 60)
    /// for a decision before answering `approval_pending` again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_secs: Option<u64>,
}

/// `keyloop.jit.issue` reply: the token, once. Never stored in a stream. Its `Debug` redacts
/// the token.
#[derive(Clone, Serialize, Deserialize, JsonSchema)]
pub struct IssueReply {
    /// The lease.
    pub lease_id: Uuid,
    /// The token.
    pub secret: String,
    /// When it stops working.
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub expires_at: OffsetDateTime,
    /// The scope's tier.
    pub tier: Tier,
    /// The PostgreSQL role to log in as, for a lease on a `postgres_group` scope (the token is
    /// its password).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login: Option<String>,
    /// The identity the request's token proved, as the lease records it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<WorkloadIdentity>,
}

/// An error reply of a request/reply service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ServiceError {
    /// Machine-readable: `bad_request`, `unknown_scope`, `identity_required`,
    /// `identity_invalid`, `forbidden`, `ttl_too_long`, `approval_required`, `unavailable`.
    pub code: String,
    /// What is wrong and what to do.
    pub message: String,
    /// `approval_pending`: the approval to wait for (ask again with it once granted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<String>,
}

/// `keyloop.token.verify` request. Its `Debug` redacts the token.
#[derive(Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// The token (or credential value) to check.
    pub token: String,
}

/// `keyloop.token.verify` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct VerifyReply {
    /// Whether the value works now.
    pub valid: bool,
    /// The lease it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_id: Option<Uuid>,
    /// The lease's scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The lease's expiry.
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<String>")]
    pub expires_at: Option<OffsetDateTime>,
    /// The credential it is a version of (for managed credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    /// That version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<Uuid>,
    /// That version's stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<crate::credential::Stage>,
}

impl VerifyReply {
    /// The reply for a value keyloop does not know or that no longer works.
    pub fn invalid() -> Self {
        Self {
            valid: false,
            lease_id: None,
            scope: None,
            expires_at: None,
            credential: None,
            version: None,
            stage: None,
        }
    }
}

/// Lease facts carried by lifecycle events about a lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseInfo {
    /// Lease id.
    pub lease_id: Uuid,
    /// Task.
    pub task_id: String,
    /// Who asked for it, proved (see [`Lease::identity`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<WorkloadIdentity>,
    /// The agent label of the request, not proved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// Scope.
    pub scope: String,
    /// Tier.
    pub tier: Tier,
    /// Expiry.
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String")]
    pub expires_at: OffsetDateTime,
}

impl From<&Lease> for LeaseInfo {
    fn from(l: &Lease) -> Self {
        Self {
            lease_id: l.id,
            task_id: l.task_id.clone(),
            identity: l.identity.clone(),
            agent_id: l.agent_id.clone(),
            scope: l.scope.clone(),
            tier: l.tier,
            expires_at: l.expires_at,
        }
    }
}

impl std::fmt::Debug for IssueReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssueReply")
            .field("lease_id", &self.lease_id)
            .field("secret", &"[redacted]")
            .field("expires_at", &self.expires_at)
            .field("tier", &self.tier)
            .field("login", &self.login)
            .field("identity", &self.identity)
            .finish()
    }
}

impl std::fmt::Debug for VerifyRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VerifyRequest { token: [redacted] }")
    }
}
