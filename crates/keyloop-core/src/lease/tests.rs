//! [`JitPolicy::decide`]: every refusal, in its order, and who may ask for a scope.

use super::*;
use crate::identity::testing::{Signer, verifier};
use crate::identity::{IdentityToken, IdentityVerifier, TrustedIssuer, TrustedIssuers};
use serde_json::json;
use time::macros::datetime;

const NOW: OffsetDateTime = datetime!(2026-03-01 12:00 UTC);

fn request(scope: &str, ttl_secs: u64) -> IssueRequest {
    IssueRequest {
        task_id: "build-1842".into(),
        agent_id: Some("agent-7".into()),
        scope: scope.into(),
        ttl_secs,
        identity_token: None,
        approval: None,
        wait_secs: None,
    }
}

fn refusal(req: &IssueRequest) -> Refusal {
    JitPolicy::default()
        .decide(req, &IdentityVerifier::default(), NOW)
        .expect_err("refused")
}

/// `req` is refused by `policy` as `expected`, with `code` and exactly `message`.
fn assert_refused(
    policy: &JitPolicy,
    req: &IssueRequest,
    expected: Refusal,
    code: &str,
    message: &str,
) {
    let e = policy
        .decide(req, &IdentityVerifier::default(), NOW)
        .expect_err("refused");
    assert_eq!(e, expected);
    assert_eq!(e.code(), code);
    assert_eq!(e.to_string(), message);
}

#[test]
fn an_auto_scope_within_its_ttl_is_granted_for_exactly_the_ttl_asked() {
    let policy = JitPolicy::default();
    let decision = policy
        .decide(&request("read", 600), &IdentityVerifier::default(), NOW)
        .unwrap();
    assert_eq!(decision.scope.tier, Tier::Auto);
    assert_eq!(decision.expires_at, datetime!(2026-03-01 12:10 UTC));
    let notify = policy
        .decide(&request("write", 3_600), &IdentityVerifier::default(), NOW)
        .unwrap();
    assert_eq!(notify.scope.tier, Tier::Notify);
    assert_eq!(notify.expires_at, datetime!(2026-03-01 13:00 UTC));
}

#[test]
fn a_ttl_of_exactly_the_scope_maximum_is_granted_and_one_second_more_is_refused() {
    let policy = JitPolicy::default();
    assert!(
        policy
            .decide(&request("read", 3_600), &IdentityVerifier::default(), NOW)
            .is_ok()
    );
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
fn an_approve_tier_scope_needs_an_approval_under_the_default_policy_within_its_ttl() {
    // Beyond the scope's TTL the request is refused on its terms before any approval is asked.
    assert_eq!(refusal(&request("admin", 10_000)).code(), "ttl_too_long");
    for ttl in [1, 900] {
        assert_refused(
            &JitPolicy::default(),
            &request("admin", ttl),
            Refusal::ApprovalRequired {
                requester: "unverified".into(),
                scope: "admin".into(),
                need: crate::policy::ApprovalNeed {
                    approvers: 1,
                    group: Some("admins".into()),
                },
                policies: vec!["jit-tier-approve".into()],
            },
            "approval_required",
            "scope `admin` needs 1 approval(s) from group admins before issue (policy jit-tier-approve); the jit-issuer holds the request for approvers, or request a lower scope",
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
    assert!(
        policy
            .decide(&req, &IdentityVerifier::default(), NOW)
            .is_ok(),
        "128 bytes are allowed"
    );
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
        req.agent_id = Some(agent.into());
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
    assert_eq!(refusal(&req).code(), "ttl_too_long");
    req.ttl_secs = 60;
    assert_eq!(refusal(&req).code(), "approval_required");
}

#[test]
fn an_expiry_past_the_end_of_time_is_refused_not_a_panic() {
    let mut policy = JitPolicy::default();
    policy.scopes.get_mut("read").unwrap().max_ttl_secs = u64::MAX;
    for ttl in [u64::MAX, i64::MAX as u64, 400_000 * 366 * 86_400] {
        let e = policy
            .decide(&request("read", ttl), &IdentityVerifier::default(), NOW)
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

const CI: &str = "https://ci.example";

/// The default policy, plus `deploy` (notify, 30 min) for `repo:acme/api:*` of [`CI`] and
/// `rollback` (approve) for one exact subject.
fn guarded() -> JitPolicy {
    let mut policy = JitPolicy {
        issuers: TrustedIssuers(vec![TrustedIssuer {
            issuer: CI.into(),
            audiences: vec!["keyloop".into()],
            jwks_file: "ci.json".into(),
        }]),
        ..JitPolicy::default()
    };
    let allowed = |subject: &str| AllowedIdentity {
        issuer: CI.into(),
        subject: subject.into(),
    };
    policy.scopes.insert(
        "deploy".into(),
        ScopePolicy {
            tier: Tier::Notify,
            max_ttl_secs: 1_800,
            postgres_group: None,
            identities: Some(vec![
                allowed("repo:acme/api:*"),
                allowed("repo:acme/web:ref:refs/heads/main"),
            ]),
        },
    );
    policy.scopes.insert(
        "rollback".into(),
        ScopePolicy {
            tier: Tier::Approve,
            max_ttl_secs: 900,
            postgres_group: None,
            identities: Some(vec![allowed("repo:acme/api:environment:prod")]),
        },
    );
    policy.check().expect("a consistent policy");
    policy
}

/// A token of [`CI`] for `subject`, valid at [`NOW`] for an hour.
fn token(signer: &Signer, subject: &str) -> IdentityToken {
    let now = NOW.unix_timestamp();
    IdentityToken::new(signer.sign(&json!({
        "iss": CI, "sub": subject, "aud": "keyloop", "nbf": now - 60, "exp": now + 3_600,
    })))
}

fn asking(scope: &str, ttl_secs: u64, token: Option<IdentityToken>) -> IssueRequest {
    IssueRequest {
        identity_token: token,
        ..request(scope, ttl_secs)
    }
}

#[test]
fn a_scope_with_identities_is_granted_to_a_matching_proved_identity_which_the_decision_records() {
    let signer = Signer::new("ci-1");
    let (policy, v) = (guarded(), verifier(CI, &signer));
    for subject in [
        "repo:acme/api:ref:refs/heads/main",
        "repo:acme/api:environment:prod",
        "repo:acme/web:ref:refs/heads/main",
    ] {
        let req = asking("deploy", 600, Some(token(&signer, subject)));
        let decision = policy.decide(&req, &v, NOW).expect(subject);
        let identity = decision.identity.expect("recorded");
        assert_eq!(
            (identity.issuer.as_str(), identity.subject.as_str()),
            (CI, subject)
        );
        assert_eq!(decision.expires_at, datetime!(2026-03-01 12:10 UTC));
    }
}

#[test]
fn a_subject_glob_matches_only_subjects_starting_with_its_prefix_and_an_exact_subject_only_itself()
{
    let signer = Signer::new("ci-1");
    let (policy, v) = (guarded(), verifier(CI, &signer));
    for subject in [
        "repo:acme/api-internal:ref:refs/heads/main",
        "repo:acme/ap:ref:refs/heads/main",
        "repo:acme/web:ref:refs/heads/feature",
        "repo:acme/web:ref:refs/heads/main2",
        "repo:evil/acme/api:ref:x",
    ] {
        let req = asking("deploy", 600, Some(token(&signer, subject)));
        let e = policy.decide(&req, &v, NOW).expect_err(subject);
        assert_eq!(e.code(), "forbidden", "{subject}");
        assert_eq!(
            e.to_string(),
            format!(
                "{CI}#{subject} may not request scope `deploy`; ask an operator to add it to the scope's `identities` in the JIT policy"
            )
        );
    }
}

#[test]
fn the_same_subject_from_another_issuer_is_another_identity() {
    let signer = Signer::new("ci-1");
    let mut policy = guarded();
    policy.issuers.0.push(TrustedIssuer {
        issuer: "https://other-ci.example".into(),
        audiences: vec!["keyloop".into()],
        jwks_file: "other.json".into(),
    });
    let other = verifier("https://other-ci.example", &signer);
    let now = NOW.unix_timestamp();
    let from_other = IdentityToken::new(signer.sign(&json!({
        "iss": "https://other-ci.example", "sub": "repo:acme/api:ref:refs/heads/main",
        "aud": "keyloop", "exp": now + 600,
    })));
    let e = policy
        .decide(&asking("deploy", 600, Some(from_other)), &other, NOW)
        .expect_err("refused");
    assert_eq!(e.code(), "forbidden");
}

#[test]
fn a_scope_with_identities_asked_without_a_token_needs_one() {
    let signer = Signer::new("ci-1");
    let e = guarded()
        .decide(&asking("deploy", 600, None), &verifier(CI, &signer), NOW)
        .expect_err("refused");
    assert_eq!(
        e,
        Refusal::IdentityRequired {
            scope: "deploy".into()
        }
    );
    assert_eq!(e.code(), "identity_required");
    assert!(
        e.to_string().starts_with("scope `deploy` needs a workload identity token: send `identity_token` (`keyloop task start --identity-token-file PATH`"),
        "{e}"
    );
    assert_eq!(
        e.denied_actor().as_deref(),
        Some("unverified (no identity token)")
    );
}

#[test]
fn an_invalid_token_is_refused_with_its_reason_even_on_an_open_scope_and_never_quoted() {
    let (signer, forger) = (Signer::new("ci-1"), Signer::new("ci-1"));
    let (policy, v) = (guarded(), verifier(CI, &signer));
    let forged = token(&forger, "repo:acme/api:ref:refs/heads/main");
    let text = forged.expose().to_owned();
    for scope in ["deploy", "read"] {
        let e = policy
            .decide(&asking(scope, 600, Some(forged.clone())), &v, NOW)
            .expect_err("refused");
        assert_eq!(e.code(), "identity_invalid", "{scope}");
        assert_eq!(
            e.to_string(),
            "the identity token was refused: the token's signature does not verify with the key of issuer https://ci.example; no lease was issued"
        );
        assert_eq!(
            e.denied_actor().as_deref(),
            Some("unverified (bad_signature)")
        );
        for part in text.split('.') {
            assert!(!e.to_string().contains(part) && !format!("{e:?}").contains(part));
        }
    }
}

#[test]
fn an_open_scope_is_granted_without_a_token_and_records_a_valid_one() {
    let signer = Signer::new("ci-1");
    let (policy, v) = (guarded(), verifier(CI, &signer));
    let anonymous = policy.decide(&asking("read", 600, None), &v, NOW).unwrap();
    assert_eq!(anonymous.identity, None);
    let proved = policy
        .decide(
            &asking("read", 600, Some(token(&signer, "repo:x/y:ref:z"))),
            &v,
            NOW,
        )
        .unwrap();
    assert_eq!(proved.identity.unwrap().subject, "repo:x/y:ref:z");
    assert_eq!(policy.open_scopes(), ["admin", "read", "write"]);
}

#[test]
fn who_asks_is_checked_before_the_tier_and_the_ttl_so_an_outsider_learns_no_terms() {
    let signer = Signer::new("ci-1");
    let (policy, v) = (guarded(), verifier(CI, &signer));
    let outsider = || Some(token(&signer, "repo:evil/x:ref:main"));
    assert_eq!(
        policy
            .decide(&asking("deploy", 99_999, outsider()), &v, NOW)
            .unwrap_err()
            .code(),
        "forbidden"
    );
    assert_eq!(
        policy
            .decide(&asking("rollback", 60, outsider()), &v, NOW)
            .unwrap_err()
            .code(),
        "forbidden"
    );
    let prod = || Some(token(&signer, "repo:acme/api:environment:prod"));
    assert_eq!(
        policy
            .decide(&asking("rollback", 60, prod()), &v, NOW)
            .unwrap_err()
            .code(),
        "approval_required",
        "an allowed identity gets to the tier"
    );
    assert_eq!(
        policy
            .decide(&asking("deploy", 1_801, prod()), &v, NOW)
            .unwrap_err()
            .code(),
        "ttl_too_long"
    );
}

#[test]
fn only_refusals_of_who_asks_name_a_denied_actor() {
    let signer = Signer::new("ci-1");
    let (policy, v) = (guarded(), verifier(CI, &signer));
    let e = policy
        .decide(
            &asking("deploy", 60, Some(token(&signer, "repo:evil/x:ref:main"))),
            &v,
            NOW,
        )
        .unwrap_err();
    assert_eq!(
        e.denied_actor().as_deref(),
        Some("https://ci.example#repo:evil/x:ref:main")
    );
    assert_eq!(refusal(&request("read", 7_200)).denied_actor(), None);
    assert_eq!(refusal(&request("root", 60)).denied_actor(), None);
}

#[test]
fn the_agent_id_is_an_optional_label() {
    let policy = JitPolicy::default();
    let mut req = request("read", 60);
    req.agent_id = None;
    assert!(
        policy
            .decide(&req, &IdentityVerifier::default(), NOW)
            .is_ok()
    );
    let json: IssueRequest =
        serde_json::from_str(r#"{"task_id": "t", "scope": "read", "ttl_secs": 60}"#).unwrap();
    assert_eq!(json.agent_id, None);
    assert_eq!(json.identity_token, None);
}

#[test]
fn a_request_debug_never_shows_its_identity_token() {
    let req: IssueRequest = serde_json::from_str(
        r#"{"task_id": "t", "scope": "read", "ttl_secs": 60, "identity_token": "eyJ.secret-payload.sig"}"#,
    )
    .unwrap();
    let shown = format!("{req:?}");
    assert!(!shown.contains("secret-payload"), "{shown}");
    assert!(shown.contains("[redacted]"), "{shown}");
}

#[test]
fn a_policy_naming_an_untrusted_issuer_an_empty_identity_list_or_a_bad_pattern_is_refused() {
    let mut policy = guarded();
    policy.scopes.get_mut("deploy").unwrap().identities = Some(vec![AllowedIdentity {
        issuer: "https://token.actions.githubusercontent.com".into(),
        subject: "repo:acme/api:*".into(),
    }]);
    assert_eq!(
        policy.check().unwrap_err().to_string(),
        "scope `deploy`: identity issuer `https://token.actions.githubusercontent.com` is not in `issuers` (trusted: https://ci.example); add it there with its audiences and jwks_file, or fix the name"
    );
    policy.scopes.get_mut("deploy").unwrap().identities = Some(vec![]);
    assert!(matches!(
        policy.check(),
        Err(PolicyError::NoIdentities { .. })
    ));
    for bad in ["", "*repo", "repo:*:ref:main", "repo:acme/**"] {
        policy.scopes.get_mut("deploy").unwrap().identities = Some(vec![AllowedIdentity {
            issuer: CI.into(),
            subject: bad.into(),
        }]);
        assert!(
            matches!(policy.check(), Err(PolicyError::BadSubject { .. })),
            "{bad:?}"
        );
    }
    for good in ["*", "repo:acme/api:*", "system:serviceaccount:ci:deployer"] {
        policy.scopes.get_mut("deploy").unwrap().identities = Some(vec![AllowedIdentity {
            issuer: CI.into(),
            subject: good.into(),
        }]);
        assert!(policy.check().is_ok(), "{good:?}");
    }
}

#[test]
fn a_policy_file_without_identities_reads_as_before_and_one_with_them_reads_whole() {
    let old: JitPolicy =
        serde_json::from_str(r#"{"scopes": {"read": {"tier": "auto", "max_ttl_secs": 3600}}}"#)
            .unwrap();
    assert!(old.issuers.is_empty());
    assert_eq!(old.token_leeway_secs, 30);
    assert_eq!(old.open_scopes(), ["read"]);
    let new: JitPolicy = serde_json::from_value(json!({
        "issuers": [{"issuer": CI, "audiences": ["keyloop"], "jwks_file": "ci.json"}],
        "token_leeway_secs": 45,
        "scopes": {"deploy": {"tier": "notify", "max_ttl_secs": 600,
            "identities": [{"issuer": CI, "subject": "repo:acme/api:*"}]}}
    }))
    .unwrap();
    assert!(new.check().is_ok());
    assert_eq!(new.token_leeway_secs, 45);
    assert!(new.open_scopes().is_empty());
}

#[test]
fn a_lease_recorded_before_identities_existed_still_reads() {
    let old = json!({
        "id": "018f0000-0000-7000-8000-000000000001", "task_id": "t", "agent_id": "agent-7",
        "scope": "read", "tier": "auto",
        "fingerprint": {"sha256": "00".repeat(32), "sha1": "00".repeat(20)},
        "state": "active", "issued_at": "2026-03-01T12:00:00Z", "expires_at": "2026-03-01T13:00:00Z"
    });
    let lease: Lease = serde_json::from_value(old).unwrap();
    assert_eq!(lease.agent_id.as_deref(), Some("agent-7"));
    assert_eq!(lease.identity, None);
}
