//! The JIT policy: which scopes exist, their tier, how long their leases may live, and which
//! workload identities may ask for them. [`JitPolicy::decide_under`] is the issuer's whole
//! check, a pure function of the request, the identity verifier, the policy engine
//! ([`crate::policy`], which turns the tier and the rest of the request into allow, notify,
//! approval or deny) and the clock, so every refusal is unit-tested here and the jit-issuer
//! only records and announces what was decided.
//!
//! Who may ask: a scope that lists `identities` is issued only to a requester that proves one
//! of them with a workload identity token ([`crate::identity`]); a scope without `identities`
//! is open to whoever the NATS server lets publish `jit.issue` (what the demo and the benchmark
//! use). These rules live here and nowhere else.

use super::{IssueRequest, ServiceError};
use crate::identity::{
    DEFAULT_LEEWAY_SECS, IdentityError, IdentityToken, IdentityVerifier, TrustedIssuers,
    WorkloadIdentity,
};
use crate::policy::{
    Action, Groups, Outcome, PolicyEngine, PolicyRequest, Principal, RequestContext, Resource,
    Source,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use time::OffsetDateTime;

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

/// A workload identity allowed to ask for a scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AllowedIdentity {
    /// The issuer, exactly as in the policy's `issuers`.
    pub issuer: String,
    /// The subject, exactly; or a prefix followed by one `*` at the end, matching every
    /// subject that starts with it (`repo:acme/api:*`, `system:serviceaccount:ci:*`). End the
    /// prefix at a separator: `repo:acme/api*` would also match `repo:acme/api-internal:…`.
    pub subject: String,
}

impl AllowedIdentity {
    /// Whether `identity` is this one.
    pub fn matches(&self, identity: &WorkloadIdentity) -> bool {
        self.issuer == identity.issuer
            && match self.subject.strip_suffix('*') {
                Some(prefix) => identity.subject.starts_with(prefix),
                None => self.subject == identity.subject,
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
    /// Who may ask for it: a request must carry an identity token proving one of these.
    /// Absent: anyone the NATS permissions let publish `jit.issue` (the jit-issuer warns at
    /// start about every such open scope). An empty list is refused at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identities: Option<Vec<AllowedIdentity>>,
}

/// The scopes the JIT issuer serves, and the issuers whose tokens prove who asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JitPolicy {
    /// Scope name → policy.
    pub scopes: BTreeMap<String, ScopePolicy>,
    /// The issuers of workload identity tokens keyloop trusts, each with its audiences and
    /// JWKS file.
    #[serde(default, skip_serializing_if = "TrustedIssuers::is_empty")]
    pub issuers: TrustedIssuers,
    /// Leeway for the tokens' `exp` and `nbf`, for clock skew (seconds; at most 300).
    #[serde(default = "default_leeway")]
    pub token_leeway_secs: u64,
}

const fn default_leeway() -> u64 {
    DEFAULT_LEEWAY_SECS
}

impl Default for JitPolicy {
    /// `read` (auto, 1 h), `write` (notify, 1 h), `admin` (approve, 15 min); all open; no
    /// issuer trusted.
    fn default() -> Self {
        let scope = |tier, max_ttl_secs| ScopePolicy {
            tier,
            max_ttl_secs,
            postgres_group: None,
            identities: None,
        };
        let scopes = BTreeMap::from([
            ("read".into(), scope(Tier::Auto, 3_600)),
            ("write".into(), scope(Tier::Notify, 3_600)),
            ("admin".into(), scope(Tier::Approve, 900)),
        ]);
        Self {
            scopes,
            issuers: TrustedIssuers::default(),
            token_leeway_secs: DEFAULT_LEEWAY_SECS,
        }
    }
}

/// Longest task or agent id, in bytes.
pub const MAX_ID_LEN: usize = 128;

/// What the policy grants a [`IssueRequest`] it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueDecision<'p> {
    /// What the policy engine decided (allow or notify; or approve, from
    /// [`JitPolicy::decide_terms`]) and which policies decided it.
    pub decision: crate::policy::Decision,
    /// The policy of the scope asked for (its tier, and its PostgreSQL group if any).
    pub scope: &'p ScopePolicy,
    /// When the lease stops working: the request's `ttl_secs` from `now`, never shortened.
    pub expires_at: OffsetDateTime,
    /// Who asked, proved by the request's identity token (`None` on an open scope asked
    /// without one).
    pub identity: Option<WorkloadIdentity>,
}

impl IssueDecision<'_> {
    /// The principal that asked: the proved identity, or the unverified requester.
    pub fn requester(&self) -> Principal {
        self.identity
            .as_ref()
            .map_or_else(Principal::unverified, Principal::workload)
    }
}

/// Why the policy refuses a [`IssueRequest`]. The message says what to ask for instead, and
/// quotes the request only where it matched the policy (a known scope, a verified identity):
/// an unknown value may be anything, a token included.
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
    /// The scope lists who may ask for it, and the request carries no identity token.
    #[error(
        "scope `{scope}` needs a workload identity token: send `identity_token` (`keyloop task start --identity-token-file PATH`, a Kubernetes service-account token, GitHub Actions OIDC token or SPIFFE JWT-SVID)"
    )]
    IdentityRequired {
        /// The scope asked for.
        scope: String,
    },
    /// The request's identity token proves nothing.
    #[error("the identity token was refused: {reason}; no lease was issued")]
    IdentityInvalid {
        /// The scope asked for.
        scope: String,
        /// Why (never the token).
        reason: IdentityError,
    },
    /// The proved identity is not one the scope allows.
    #[error(
        "{} may not request scope `{scope}`; ask an operator to add it to the scope's `identities` in the JIT policy",
        identity.actor()
    )]
    Forbidden {
        /// Who asked.
        identity: WorkloadIdentity,
        /// The scope asked for.
        scope: String,
    },
    /// The policy engine refused the request.
    #[error(
        "the policy refuses scope `{scope}` to {actor} ({}); ask an operator to change the workers' --policy",
        if policies.is_empty() { "no permit applied".to_owned() } else { format!("policy {}", policies.join(", ")) }
    )]
    PolicyDenied {
        /// Who asked (the proved identity, or `unverified`).
        actor: String,
        /// The scope asked for.
        scope: String,
        /// The forbid policies that decided (empty: no permit applied).
        policies: Vec<String>,
    },
    /// The policy asks for an approval before issue (the scope's tier is `approve` under the
    /// default policy).
    #[error(
        "scope `{scope}` needs {} before issue (policy {}); the jit-issuer holds the request for approvers, or request a lower scope",
        need.describe(),
        policies.join(", ")
    )]
    ApprovalRequired {
        /// Who asks (the principal's name: a proved identity, or `unverified`).
        requester: String,
        /// The scope asked for.
        scope: String,
        /// What the approval needs.
        need: crate::policy::ApprovalNeed,
        /// The policies that asked for it.
        policies: Vec<String>,
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
            Self::IdentityRequired { .. } => "identity_required",
            Self::IdentityInvalid { .. } => "identity_invalid",
            Self::Forbidden { .. } | Self::PolicyDenied { .. } => "forbidden",
            Self::ApprovalRequired { .. } => "approval_required",
            Self::TtlOutOfRange { .. } | Self::ExpiryUnrepresentable { .. } => "ttl_too_long",
        }
    }

    /// For a refusal of who asked (the identity checks), who that was as a `denied` event
    /// names them: the proved identity ([`WorkloadIdentity::actor`]), or `unverified (<why>)`
    /// — never the token. `None` for refusals of what was asked.
    pub fn denied_actor(&self) -> Option<String> {
        match self {
            Self::IdentityRequired { .. } => Some("unverified (no identity token)".into()),
            Self::IdentityInvalid { reason, .. } => Some(format!("unverified ({})", reason.kind())),
            Self::Forbidden { identity, .. } => Some(identity.actor()),
            Self::PolicyDenied { actor, .. } => Some(actor.clone()),
            _ => None,
        }
    }
}

impl From<Refusal> for ServiceError {
    fn from(refusal: Refusal) -> Self {
        Self {
            code: refusal.code().into(),
            message: refusal.to_string(),
            approval: None,
        }
    }
}

/// Why a JIT policy cannot be served. Each message names the scope or issuer and what to fix.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A scope's identity names an issuer the policy does not trust.
    #[error(
        "scope `{scope}`: identity issuer `{issuer}` is not in `issuers` (trusted: {}); add it there with its audiences and jwks_file, or fix the name",
        if trusted.is_empty() { "none".to_owned() } else { trusted.join(", ") }
    )]
    UnknownIssuer {
        /// The scope.
        scope: String,
        /// The issuer it names.
        issuer: String,
        /// The issuers the policy trusts.
        trusted: Vec<String>,
    },
    /// `identities: []`: nobody could ask for the scope.
    #[error(
        "scope `{scope}`: `identities` is empty, so nobody could request it; list who may, or remove `identities` to leave the scope open to every NATS user allowed to publish jit.issue"
    )]
    NoIdentities {
        /// The scope.
        scope: String,
    },
    /// A subject pattern that is empty or has a `*` elsewhere than at its end.
    #[error(
        "scope `{scope}`: subject pattern `{subject}` is not an exact subject or a prefix ending in one `*` (like `repo:acme/api:*`)"
    )]
    BadSubject {
        /// The scope.
        scope: String,
        /// The pattern.
        subject: String,
    },
    /// The issuers themselves.
    #[error(transparent)]
    Issuers(#[from] crate::identity::TrustError),
}

fn check_id(field: &'static str, id: &str) -> Result<(), Refusal> {
    if id.is_empty() || id.len() > MAX_ID_LEN || id.chars().any(char::is_control) {
        return Err(Refusal::BadId { field });
    }
    Ok(())
}

impl JitPolicy {
    /// [`Self::decide_under`] the default policy ([`crate::policy::DEFAULT_POLICY`]).
    pub fn decide(
        &self,
        req: &IssueRequest,
        verifier: &IdentityVerifier,
        now: OffsetDateTime,
    ) -> Result<IssueDecision<'_>, Refusal> {
        static DEFAULT: std::sync::LazyLock<PolicyEngine> =
            std::sync::LazyLock::new(|| PolicyEngine::default_policy(Groups::default()));
        self.decide_under(&DEFAULT, req, verifier, now)
    }

    /// [`Self::decide_terms`], with a request the policy allows only after an approval
    /// refused as [`Refusal::ApprovalRequired`].
    pub fn decide_under(
        &self,
        engine: &PolicyEngine,
        req: &IssueRequest,
        verifier: &IdentityVerifier,
        now: OffsetDateTime,
    ) -> Result<IssueDecision<'_>, Refusal> {
        let decided = self.decide_terms(engine, req, verifier, now)?;
        if let Outcome::Approve(need) = &decided.decision.outcome {
            return Err(Refusal::ApprovalRequired {
                requester: decided.requester().name,
                scope: req.scope.clone(),
                need: need.clone(),
                policies: decided.decision.policies,
            });
        }
        Ok(decided)
    }

    /// Whether `req`, made at `now`, gets a lease as it stands, and on what terms. Checked in
    /// this order: the ids, the scope, who asks (a token, when one is sent, must prove an
    /// identity; a scope with `identities` needs one of them), what `engine` decides for that
    /// principal, scope and context (deny, approval, or allow and notify), the TTL. Who asks
    /// comes before the terms, so a requester without the right learns nothing of them.
    /// Nothing is adjusted: a TTL above the scope's maximum is refused, never shortened, so an
    /// orchestrator always knows how long its credential lives. An approval outcome comes back
    /// as `Ok` with `decision.outcome` saying so, after the TTL is checked: a request held for
    /// approvers is one that can be issued as asked once granted.
    pub fn decide_terms(
        &self,
        engine: &PolicyEngine,
        req: &IssueRequest,
        verifier: &IdentityVerifier,
        now: OffsetDateTime,
    ) -> Result<IssueDecision<'_>, Refusal> {
        check_id("task_id", &req.task_id)?;
        if let Some(agent) = &req.agent_id {
            check_id("agent_id", agent)?;
        }
        let Some(scope) = self.scopes.get(&req.scope) else {
            return Err(Refusal::UnknownScope {
                known: self.scopes.keys().cloned().collect(),
            });
        };
        let identity = Self::requester(
            &req.scope,
            scope,
            req.identity_token.as_ref(),
            verifier,
            now,
        )?;
        let principal = identity
            .as_ref()
            .map_or_else(Principal::unverified, Principal::workload);
        let mut context = RequestContext::new(now, Source::Jit);
        context.task_id = Some(req.task_id.clone());
        context.ttl_secs = Some(req.ttl_secs);
        context.agent_id.clone_from(&req.agent_id);
        let decision = engine.decide(&PolicyRequest {
            principal: principal.clone(),
            action: Action::Issue,
            resource: Resource::Scope {
                name: &req.scope,
                policy: scope,
            },
            context,
        });
        match &decision.outcome {
            Outcome::Allow | Outcome::Notify => {}
            Outcome::Deny => {
                return Err(Refusal::PolicyDenied {
                    actor: principal.name,
                    scope: req.scope.clone(),
                    policies: decision.policies,
                });
            }
            Outcome::Approve(_) => {}
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
        Ok(IssueDecision {
            decision,
            scope,
            expires_at,
            identity,
        })
    }

    /// Who asks for `scope`: the identity a token sent proves (an invalid token is refused
    /// even on an open scope: whoever sent it expects it to count), which must be one of the
    /// scope's `identities` when it lists them.
    fn requester(
        name: &str,
        scope: &ScopePolicy,
        token: Option<&IdentityToken>,
        verifier: &IdentityVerifier,
        now: OffsetDateTime,
    ) -> Result<Option<WorkloadIdentity>, Refusal> {
        let identity = token
            .map(|t| verifier.verify(t, now))
            .transpose()
            .map_err(|reason| Refusal::IdentityInvalid {
                scope: name.to_owned(),
                reason,
            })?;
        let Some(allowed) = &scope.identities else {
            return Ok(identity);
        };
        let Some(identity) = identity else {
            return Err(Refusal::IdentityRequired {
                scope: name.to_owned(),
            });
        };
        if allowed.iter().any(|a| a.matches(&identity)) {
            Ok(Some(identity))
        } else {
            Err(Refusal::Forbidden {
                identity,
                scope: name.to_owned(),
            })
        }
    }

    /// The scopes without `identities`: open to every NATS user allowed to publish
    /// `jit.issue`.
    pub fn open_scopes(&self) -> Vec<&str> {
        self.scopes
            .iter()
            .filter(|(_, s)| s.identities.is_none())
            .map(|(name, _)| name.as_str())
            .collect()
    }

    /// The policy's own consistency (JWKS files are checked when they are loaded, by
    /// [`IdentityVerifier::load`]): issuer entries complete and unique, every scope's
    /// identities naming a trusted issuer with a usable subject pattern, none empty.
    pub fn check(&self) -> Result<(), PolicyError> {
        self.issuers.check()?;
        for (name, scope) in &self.scopes {
            let Some(identities) = &scope.identities else {
                continue;
            };
            if identities.is_empty() {
                return Err(PolicyError::NoIdentities {
                    scope: name.clone(),
                });
            }
            for allowed in identities {
                if self.issuers.get(&allowed.issuer).is_none() {
                    return Err(PolicyError::UnknownIssuer {
                        scope: name.clone(),
                        issuer: allowed.issuer.clone(),
                        trusted: self.issuers.names(),
                    });
                }
                let head = allowed
                    .subject
                    .strip_suffix('*')
                    .unwrap_or(&allowed.subject);
                if allowed.subject.is_empty() || head.contains('*') {
                    return Err(PolicyError::BadSubject {
                        scope: name.clone(),
                        subject: allowed.subject.clone(),
                    });
                }
            }
        }
        Ok(())
    }
}
