//! Just-in-time credentials: a lease is one short-lived token issued for one task of one agent,
//! with a scope whose tier says how much ceremony it needs. The token's value is never stored:
//! only its fingerprints, so verification is a digest lookup and a leak of it is matched like
//! any other value.
//!
//! [`JitPolicy::decide`] is the issuer's whole policy check, a pure function of the request,
//! the policy and the clock, so every refusal is unit-tested here and the jit-issuer only
//! records and announces what it decided.

use crate::credential::RevokeReason;
use crate::fingerprint::Fingerprint;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use time::OffsetDateTime;
use uuid::Uuid;

/// How much ceremony a scope needs before a lease is issued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// Read-only: issued at once.
    Auto,
    /// Reversible: issued at once; the `issued` event is the notification.
    Notify,
    /// Destructive or externally visible: issued only after an approval.
    Approve,
}

impl Tier {
    /// The tier's name in JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Notify => "notify",
            Self::Approve => "approve",
        }
    }
}

/// What a scope allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ScopePolicy {
    /// Its tier.
    pub tier: Tier,
    /// The longest TTL a lease of this scope may have (seconds). Longer requests are refused,
    /// never silently shortened: an orchestrator must know how long its credential lives.
    pub max_ttl_secs: u64,
    /// Issue each lease as a PostgreSQL login role, member of this group role (which holds the
    /// scope's privileges), with the token as its password and `VALID UNTIL` the expiry.
    /// Absent: the lease is a keyloop token, checked with `keyloop.token.verify`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres_group: Option<String>,
}

/// The scopes the JIT issuer serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JitPolicy {
    /// Scope name → policy.
    pub scopes: BTreeMap<String, ScopePolicy>,
}

impl Default for JitPolicy {
    /// `read` (auto, 1 h), `write` (notify, 1 h), `admin` (approve, 15 min).
    fn default() -> Self {
        let mut scopes = BTreeMap::new();
        scopes.insert(
            "read".into(),
            ScopePolicy {
                tier: Tier::Auto,
                max_ttl_secs: 3_600,
                postgres_group: None,
            },
        );
        scopes.insert(
            "write".into(),
            ScopePolicy {
                tier: Tier::Notify,
                max_ttl_secs: 3_600,
                postgres_group: None,
            },
        );
        scopes.insert(
            "admin".into(),
            ScopePolicy {
                tier: Tier::Approve,
                max_ttl_secs: 900,
                postgres_group: None,
            },
        );
        Self { scopes }
    }
}

/// Longest task or agent id, in bytes.
pub const MAX_ID_LEN: usize = 128;

/// What the policy grants a [`IssueRequest`] it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IssueDecision<'p> {
    /// The policy of the scope asked for (its tier, and its PostgreSQL group if any).
    pub scope: &'p ScopePolicy,
    /// When the lease stops working: the request's `ttl_secs` from `now`, never shortened.
    pub expires_at: OffsetDateTime,
}

/// Why the policy refuses a [`IssueRequest`]. The message says what to ask for instead, and
/// quotes the request only where it matched the policy (a known scope): an unknown value may
/// be anything, a token included.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// `task_id` or `agent_id` is empty, too long, or holds a control character.
    #[error("{field} must be 1 to {MAX_ID_LEN} printable characters")]
    BadId {
        /// `task_id` or `agent_id`.
        field: &'static str,
    },
    /// The scope is not in the policy.
    #[error("unknown scope; scopes: {}", known.join(", "))]
    UnknownScope {
        /// The scopes the policy has.
        known: Vec<String>,
    },
    /// The scope's tier is `approve`, and approvals do not exist yet.
    #[error(
        "scope `{scope}` is of tier approve and needs an approval before issue; approvals are not available yet, so it is refused — request a lower scope or ask an operator"
    )]
    ApprovalRequired {
        /// The scope asked for.
        scope: String,
    },
    /// The TTL is zero or above the scope's maximum.
    #[error(
        "ttl {ttl_secs} s is outside 1..={max_ttl_secs} s, the limit of scope `{scope}`; request at most {max_ttl_secs} s (longer requests are refused, never shortened)"
    )]
    TtlOutOfRange {
        /// The TTL asked for.
        ttl_secs: u64,
        /// The scope's maximum.
        max_ttl_secs: u64,
        /// The scope asked for.
        scope: String,
    },
    /// The expiry would be past the last time the clock can represent (only a policy whose
    /// `max_ttl_secs` is out of its documented range allows such a TTL).
    #[error(
        "ttl {ttl_secs} s from now is past the last representable time; request a shorter ttl (and keep the scope's max_ttl_secs within a year)"
    )]
    ExpiryUnrepresentable {
        /// The TTL asked for.
        ttl_secs: u64,
    },
}

impl Refusal {
    /// The machine-readable code of the error reply ([`ServiceError::code`]).
    pub const fn code(&self) -> &'static str {
        match self {
            Self::BadId { .. } => "bad_request",
            Self::UnknownScope { .. } => "unknown_scope",
            Self::ApprovalRequired { .. } => "approval_required",
            Self::TtlOutOfRange { .. } | Self::ExpiryUnrepresentable { .. } => "ttl_too_long",
        }
    }
}

impl From<Refusal> for ServiceError {
    fn from(refusal: Refusal) -> Self {
        Self {
            code: refusal.code().into(),
            message: refusal.to_string(),
        }
    }
}

fn check_id(field: &'static str, id: &str) -> Result<(), Refusal> {
    if id.is_empty() || id.len() > MAX_ID_LEN || id.chars().any(char::is_control) {
        return Err(Refusal::BadId { field });
    }
    Ok(())
}

impl JitPolicy {
    /// Whether `req`, made at `now`, gets a lease as it stands, and on what terms. Checked in
    /// this order: the ids, the scope, its tier, the TTL. Nothing is adjusted: a TTL above the
    /// scope's maximum is refused, never shortened, so an orchestrator always knows how long
    /// its credential lives.
    pub fn decide(
        &self,
        req: &IssueRequest,
        now: OffsetDateTime,
    ) -> Result<IssueDecision<'_>, Refusal> {
        check_id("task_id", &req.task_id)?;
        check_id("agent_id", &req.agent_id)?;
        let Some(scope) = self.scopes.get(&req.scope) else {
            return Err(Refusal::UnknownScope {
                known: self.scopes.keys().cloned().collect(),
            });
        };
        if scope.tier == Tier::Approve {
            return Err(Refusal::ApprovalRequired {
                scope: req.scope.clone(),
            });
        }
        if req.ttl_secs == 0 || req.ttl_secs > scope.max_ttl_secs {
            return Err(Refusal::TtlOutOfRange {
                ttl_secs: req.ttl_secs,
                max_ttl_secs: scope.max_ttl_secs,
                scope: req.scope.clone(),
            });
        }
        let expires_at = i64::try_from(req.ttl_secs)
            .ok()
            .and_then(|secs| now.checked_add(time::Duration::seconds(secs)))
            .ok_or(Refusal::ExpiryUnrepresentable {
                ttl_secs: req.ttl_secs,
            })?;
        Ok(IssueDecision { scope, expires_at })
    }
}

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
    /// The agent it was issued to.
    pub agent_id: String,
    /// The scope.
    pub scope: String,
    /// The scope's tier at issue time.
    pub tier: Tier,
    /// Digests of the token (the token itself is never stored).
    pub fingerprint: Fingerprint,
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
    /// The agent that will use the credential.
    pub agent_id: String,
    /// A scope of the JIT policy (`read`, `write`, `admin` by default).
    pub scope: String,
    /// Lifetime in seconds; at most the scope's `max_ttl_secs`.
    pub ttl_secs: u64,
}

/// `keyloop.jit.issue` reply: the token, once. Never stored in a stream. Its `Debug` redacts
/// the token.
#[derive(Clone, Serialize, Deserialize)]
pub struct IssueReply {
    /// The lease.
    pub lease_id: Uuid,
    /// The token.
    pub secret: String,
    /// When it stops working.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// The scope's tier.
    pub tier: Tier,
    /// The PostgreSQL role to log in as, for a lease on a `postgres_group` scope (the token is
    /// its password).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login: Option<String>,
}

/// An error reply of a request/reply service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ServiceError {
    /// Machine-readable: `bad_request`, `unknown_scope`, `ttl_too_long`, `approval_required`,
    /// `unavailable`.
    pub code: String,
    /// What is wrong and what to do.
    pub message: String,
}

/// `keyloop.token.verify` request. Its `Debug` redacts the token.
#[derive(Clone, Serialize, Deserialize)]
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
    /// Agent.
    pub agent_id: String,
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
            .finish()
    }
}

impl std::fmt::Debug for VerifyRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VerifyRequest { token: [redacted] }")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-03-01 12:00 UTC);

    fn request(scope: &str, ttl_secs: u64) -> IssueRequest {
        IssueRequest {
            task_id: "build-1842".into(),
            agent_id: "agent-7".into(),
            scope: scope.into(),
            ttl_secs,
        }
    }

    fn refusal(req: &IssueRequest) -> Refusal {
        JitPolicy::default().decide(req, NOW).expect_err("refused")
    }

    /// `req` is refused by `policy` as `expected`, with `code` and exactly `message`.
    fn assert_refused(
        policy: &JitPolicy,
        req: &IssueRequest,
        expected: Refusal,
        code: &str,
        message: &str,
    ) {
        let e = policy.decide(req, NOW).expect_err("refused");
        assert_eq!(e, expected);
        assert_eq!(e.code(), code);
        assert_eq!(e.to_string(), message);
    }

    #[test]
    fn an_auto_scope_within_its_ttl_is_granted_for_exactly_the_ttl_asked() {
        let policy = JitPolicy::default();
        let decision = policy.decide(&request("read", 600), NOW).unwrap();
        assert_eq!(decision.scope.tier, Tier::Auto);
        assert_eq!(decision.expires_at, datetime!(2026-03-01 12:10 UTC));
        let notify = policy.decide(&request("write", 3_600), NOW).unwrap();
        assert_eq!(notify.scope.tier, Tier::Notify);
        assert_eq!(notify.expires_at, datetime!(2026-03-01 13:00 UTC));
    }

    #[test]
    fn a_ttl_of_exactly_the_scope_maximum_is_granted_and_one_second_more_is_refused() {
        let policy = JitPolicy::default();
        assert!(policy.decide(&request("read", 3_600), NOW).is_ok());
        assert_refused(
            &policy,
            &request("read", 3_601),
            Refusal::TtlOutOfRange {
                ttl_secs: 3_601,
                max_ttl_secs: 3_600,
                scope: "read".into(),
            },
            "ttl_too_long",
            "ttl 3601 s is outside 1..=3600 s, the limit of scope `read`; request at most 3600 s (longer requests are refused, never shortened)",
        );
    }

    #[test]
    fn a_zero_ttl_is_refused() {
        let e = refusal(&request("read", 0));
        assert_eq!(e.code(), "ttl_too_long");
        assert!(
            e.to_string().starts_with("ttl 0 s is outside 1..=3600 s"),
            "{e}"
        );
    }

    #[test]
    fn an_approve_tier_scope_is_refused_until_approvals_exist_whatever_its_ttl() {
        for ttl in [1, 900, 10_000] {
            assert_refused(
                &JitPolicy::default(),
                &request("admin", ttl),
                Refusal::ApprovalRequired {
                    scope: "admin".into(),
                },
                "approval_required",
                "scope `admin` is of tier approve and needs an approval before issue; approvals are not available yet, so it is refused — request a lower scope or ask an operator",
            );
        }
    }

    #[test]
    fn an_unknown_scope_is_refused_with_the_known_ones_and_never_quoted() {
        let e = refusal(&request("klt_maybe-a-token", 60));
        assert_eq!(e.code(), "unknown_scope");
        assert_eq!(e.to_string(), "unknown scope; scopes: admin, read, write");
        assert!(!e.to_string().contains("klt_maybe"));
    }

    #[test]
    fn ids_must_be_1_to_128_bytes_without_control_characters_and_are_never_quoted() {
        let policy = JitPolicy::default();
        let mut req = request("read", 60);
        req.task_id = "t".repeat(MAX_ID_LEN);
        assert!(policy.decide(&req, NOW).is_ok(), "128 bytes are allowed");
        for (task, agent, field) in [
            ("", "a", "task_id"),
            (&*"t".repeat(MAX_ID_LEN + 1), "a", "task_id"),
            ("line\nbreak", "a", "task_id"),
            ("ok", "", "agent_id"),
            ("ok", "tab\there", "agent_id"),
            // 43 three-byte characters: 129 bytes.
            ("ok", &*"€".repeat(43), "agent_id"),
        ] {
            req.task_id = task.into();
            req.agent_id = agent.into();
            assert_refused(
                &policy,
                &req,
                Refusal::BadId { field },
                "bad_request",
                &format!("{field} must be 1 to 128 printable characters"),
            );
        }
    }

    #[test]
    fn ids_are_checked_before_the_scope_and_the_scope_before_the_ttl() {
        let mut req = request("root", 0);
        req.task_id = String::new();
        assert_eq!(refusal(&req).code(), "bad_request");
        req.task_id = "t".into();
        assert_eq!(refusal(&req).code(), "unknown_scope");
        req.scope = "admin".into();
        assert_eq!(refusal(&req).code(), "approval_required");
    }

    #[test]
    fn an_expiry_past_the_end_of_time_is_refused_not_a_panic() {
        let mut policy = JitPolicy::default();
        policy.scopes.get_mut("read").unwrap().max_ttl_secs = u64::MAX;
        for ttl in [u64::MAX, i64::MAX as u64, 400_000 * 366 * 86_400] {
            let e = policy
                .decide(&request("read", ttl), NOW)
                .expect_err("refused");
            assert_eq!(e, Refusal::ExpiryUnrepresentable { ttl_secs: ttl });
            assert_eq!(e.code(), "ttl_too_long");
        }
    }

    #[test]
    fn a_refusal_becomes_the_error_reply_with_its_code_and_message() {
        let reply = ServiceError::from(refusal(&request("read", 7_200)));
        assert_eq!(reply.code, "ttl_too_long");
        assert!(
            reply.message.contains("never shortened"),
            "{}",
            reply.message
        );
    }
}
