//! The control plane's requests and replies.
//!
//! A request arrives on `<prefix>.api.<actor>.<verb>`. The NATS server confines each user to
//! publishing under its own `<actor>` token (see `deploy/nats/permissions.conf`), so the actor is
//! proved by the subject, never by the payload. Who may do what is the policy engine's
//! ([`crate::policy`]); its default policy is the rule table keyloop always had: admins do
//! everything, a credential's owner shows, fetches, verifies, updates, rotates, revokes and
//! retires it, its consumers show, fetch and verify it, everyone else is refused (`forbidden`,
//! and the refusal is recorded).

use crate::credential::{BackendSettings, CredentialId, Policy, StoreKind, TargetKind};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What a request asks for; the last token of its subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Verb {
    /// Register a credential (admins).
    Register,
    /// Change a credential's owner, consumers or policy.
    Update,
    /// Offboard a credential: every version revoked, nothing scheduled, history kept.
    Retire,
    /// The credentials the actor may see.
    List,
    /// One credential's record, without values.
    Show,
    /// Rotate now.
    Rotate,
    /// Revoke live versions.
    Revoke,
    /// The current value (or the previous one during its grace).
    Fetch,
    /// Whether a presented value is a live version of the credential.
    Verify,
    /// The approvals the actor asked for or may decide (pending ones unless `all`).
    Approvals,
    /// One approval.
    Approval,
    /// Approve a pending approval (never one's own).
    Approve,
    /// Deny a pending approval, with a reason.
    Deny,
    /// Publish a DLQ entry again to the subject it came from, then remove it from the DLQ.
    DlqRetry,
    /// Remove a DLQ entry.
    DlqPurge,
}

impl Verb {
    /// Every verb.
    pub const ALL: [Verb; 15] = [
        Self::Register,
        Self::Update,
        Self::Retire,
        Self::List,
        Self::Show,
        Self::Rotate,
        Self::Revoke,
        Self::Fetch,
        Self::Verify,
        Self::Approvals,
        Self::Approval,
        Self::Approve,
        Self::Deny,
        Self::DlqRetry,
        Self::DlqPurge,
    ];

    /// The subject token.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Register => "register",
            Self::Update => "update",
            Self::Retire => "retire",
            Self::List => "list",
            Self::Show => "show",
            Self::Rotate => "rotate",
            Self::Revoke => "revoke",
            Self::Fetch => "fetch",
            Self::Verify => "verify",
            Self::Approvals => "approvals",
            Self::Approval => "approval",
            Self::Approve => "approve",
            Self::Deny => "deny",
            Self::DlqRetry => "dlq_retry",
            Self::DlqPurge => "dlq_purge",
        }
    }

    /// The verb named `token`.
    pub fn parse(token: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.name() == token)
    }

    /// Whether it acts on the DLQ (its resource is the inventory, never a credential).
    pub const fn is_dlq(self) -> bool {
        matches!(self, Self::DlqRetry | Self::DlqPurge)
    }

    /// Whether it is about approvals rather than a credential: the policy decides those as
    /// the `approve` action on what the approval holds, not as a verb of their own.
    pub const fn is_approval(self) -> bool {
        matches!(
            self,
            Self::Approvals | Self::Approval | Self::Approve | Self::Deny
        )
    }
}

/// `approvals`: pending approvals, or every one kept (`all`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalsRequest {
    /// Also the decided, used and expired ones.
    #[serde(default)]
    pub all: bool,
}

/// `approval`, `approve`: one approval by id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalIdRequest {
    /// The approval id.
    pub id: String,
}

/// `deny`: refuse a pending approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DenyRequest {
    /// The approval id.
    pub id: String,
    /// Why: the requester and the audit log read it.
    pub reason: String,
}

/// The reply to `approve` and `deny`: the approval as it stands now, and the operation its
/// grant started (a held rotation, revocation, retirement or batch), if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Decided {
    /// The approval.
    pub approval: crate::policy::Approval,
    /// The operation the grant released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op_id: Option<String>,
}

/// `dlq_retry`, `dlq_purge`: one DLQ entry, by its sequence in the DLQ stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DlqEntryRequest {
    /// The entry's sequence (`keyloop dlq list` prints it).
    pub seq: u64,
}

/// The reply to `dlq_retry` and `dlq_purge`: the entry, and where a retry put it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DlqHandled {
    /// The entry's sequence in the DLQ stream.
    pub seq: u64,
    /// The worker role that gave the message up.
    pub role: String,
    /// The subject it was consumed from.
    pub original_subject: String,
    /// Why it was given up.
    pub reason: String,
    /// `dlq_retry`: the stream it was published to again, and its sequence there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub republished: Option<Republished>,
}

/// Where a retried DLQ entry was published again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Republished {
    /// The stream (`KEYLOOP_EVENTS`, `KEYLOOP_COMMANDS`).
    pub stream: String,
    /// The message's sequence in it.
    pub sequence: u64,
    /// The stream already held this retry (the same entry retried within its dedup window):
    /// it was not stored twice.
    pub duplicate: bool,
}

/// `register`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// The id.
    pub id: CredentialId,
    /// Where values live.
    pub store: StoreKind,
    /// Who accepts them.
    pub target: TargetKind,
    /// Rotation policy (its owner is the owning actor).
    pub policy: Policy,
    /// Store and target settings.
    #[serde(default)]
    pub settings: BackendSettings,
    /// Actors allowed to fetch its value.
    #[serde(default)]
    pub consumers: Vec<String>,
}

/// `update`: what is absent stays as it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRequest {
    /// The credential.
    pub id: CredentialId,
    /// The new owning actor (`""` removes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Actors to add to the consumers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add_consumers: Vec<String>,
    /// Actors to remove from the consumers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove_consumers: Vec<String>,
}

/// `show`, `rotate`, `list` (no id): one credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IdRequest {
    /// The credential.
    pub id: CredentialId,
}

/// `revoke`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// The credential.
    pub id: CredentialId,
    /// One version; absent: every live version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<Uuid>,
    /// Why, for the audit log.
    pub reason: String,
    /// Issue a fresh current version right after.
    #[serde(default)]
    pub rotate: bool,
}

/// `retire`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetireRequest {
    /// The credential.
    pub id: CredentialId,
    /// Why, for the audit log.
    pub reason: String,
}

/// `fetch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FetchRequest {
    /// The credential.
    pub id: CredentialId,
    /// The previous version (during its grace) instead of the current one.
    #[serde(default)]
    pub previous: bool,
}

/// `verify`: is `value` a live version of `id`? The value travels in this request only; its
/// `Debug` is redacted.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// The credential the value is presented for.
    pub id: CredentialId,
    /// The value.
    pub value: String,
}

impl std::fmt::Debug for VerifyRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyRequest")
            .field("id", &self.id)
            .field("value", &"<redacted>")
            .finish()
    }
}

/// The reply to `verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyReply {
    /// Whether the value works now (its version is current, or previous in its grace).
    pub valid: bool,
    /// The version it is, when it is one of this credential's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<Uuid>,
    /// That version's stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<crate::Stage>,
}

/// The reply to `fetch`: the value, once, never stored in a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FetchReply {
    /// The version.
    pub version: Uuid,
    /// The value.
    pub value: String,
}

/// The reply to `rotate`, `revoke` and `retire`: the operation queued, to follow in the
/// lifecycle stream by its correlation id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Queued {
    /// The operation id (also the correlation id of its events).
    pub op_id: String,
    /// Set when the policy holds the operation for an approval: its id. The operation runs
    /// (with `op_id`) only once it is granted (`keyloop approvals approve ID`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<String>,
}

/// A refused or failed request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema, thiserror::Error)]
#[serde(deny_unknown_fields)]
#[error("{message} ({code})")]
pub struct ApiError {
    /// `forbidden`, `not_found`, `already_exists`, `bad_request`, `unavailable`, `failed`.
    pub code: String,
    /// What failed and what to do; never a value.
    pub message: String,
}

impl ApiError {
    /// An error with `code`.
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
            message: message.into(),
        }
    }
}

/// Every reply: `{"ok": …}` or `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApiReply<T> {
    /// The answer.
    Ok(T),
    /// Why not.
    Error(ApiError),
}

impl<T> From<Result<T, ApiError>> for ApiReply<T> {
    fn from(r: Result<T, ApiError>) -> Self {
        match r {
            Ok(v) => Self::Ok(v),
            Err(e) => Self::Error(e),
        }
    }
}

impl<T> From<ApiReply<T>> for Result<T, ApiError> {
    fn from(r: ApiReply<T>) -> Self {
        match r {
            ApiReply::Ok(v) => Ok(v),
            ApiReply::Error(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_are_their_subject_tokens() {
        for verb in Verb::ALL {
            assert_eq!(Verb::parse(verb.name()), Some(verb));
        }
        assert_eq!(Verb::parse("delete"), None);
    }

    #[test]
    fn replies_are_ok_or_error_objects() {
        let ok: ApiReply<Queued> = Ok(Queued {
            op_id: "x".into(),
            approval: None,
        })
        .into();
        assert_eq!(
            serde_json::to_value(&ok).unwrap(),
            serde_json::json!({"ok": {"op_id": "x"}})
        );
        let err: ApiReply<Queued> = Err(ApiError::new("forbidden", "no")).into();
        assert_eq!(
            serde_json::to_value(&err).unwrap(),
            serde_json::json!({"error": {"code": "forbidden", "message": "no"}})
        );
    }
}
