//! [`issue()`] with proved identities, on records and an outbox in memory: what a lease
//! records, what the `issued` and `denied` events say, and that no token reaches either. The
//! same wiring against a real server is the e2e test `jit_identity`.

use super::*;
use crate::records::memory::MemoryOutbox;
use crate::{Backends, WorkerContext};
use keyloop_core::identity::{TrustedIssuer, TrustedIssuers};
use keyloop_core::lease::{AllowedIdentity, ScopePolicy, Tier};
use keyloop_core::{LifecycleEvent, LifecycleKind};
use keyloop_testkit::jwt::TestIssuer;
use std::time::Duration;

const CI: &str = "https://ci.example";
const HOUR: Duration = Duration::from_secs(3_600);

struct Fixture {
    ctx: WorkerContext,
    outbox: Arc<MemoryOutbox>,
    policy: JitPolicy,
    verifier: IdentityVerifier,
    issuer: TestIssuer,
}

/// The default scopes plus `deploy`, for `repo:acme/api:*` of [`CI`].
fn fixture() -> Fixture {
    let issuer = TestIssuer::new(CI, "ci-1");
    let mut policy = JitPolicy {
        issuers: TrustedIssuers(vec![TrustedIssuer {
            issuer: CI.into(),
            audiences: vec!["keyloop".into()],
            jwks_file: "ci.json".into(),
        }]),
        ..JitPolicy::default()
    };
    policy.scopes.insert(
        "deploy".into(),
        ScopePolicy {
            tier: Tier::Notify,
            max_ttl_secs: 1_800,
            postgres_group: None,
            identities: Some(vec![AllowedIdentity {
                issuer: CI.into(),
                subject: "repo:acme/api:*".into(),
            }]),
        },
    );
    let jwks = issuer.jwks().into_bytes();
    let verifier = IdentityVerifier::load(&policy.issuers, 30, |_| Ok(jwks.clone())).unwrap();
    let outbox = Arc::new(MemoryOutbox::default());
    let mut ctx = WorkerContext::in_memory(Backends::default());
    ctx.outbox = outbox.clone();
    Fixture {
        ctx,
        outbox,
        policy,
        verifier,
        issuer,
    }
}

fn request(scope: &str, token: Option<String>) -> IssueRequest {
    IssueRequest {
        task_id: "deploy-42".into(),
        agent_id: Some("agent-7".into()),
        scope: scope.into(),
        ttl_secs: 600,
        identity_token: token.map(keyloop_core::identity::IdentityToken::new),
        approval: None,
        wait_secs: None,
    }
}

impl Fixture {
    async fn issue(
        &self,
        req: &IssueRequest,
    ) -> Result<keyloop_core::lease::IssueReply, ServiceError> {
        issue(
            &self.ctx,
            &keyloop_core::policy::PolicyEngine::default_policy(Default::default()),
            &self.policy,
            &self.verifier,
            req,
            OffsetDateTime::now_utc(),
        )
        .await
    }

    fn events(&self, kind: LifecycleKind) -> Vec<LifecycleEvent> {
        self.outbox
            .lifecycle()
            .into_iter()
            .filter(|e| e.data.kind == kind)
            .collect()
    }
}

#[tokio::test]
async fn a_proved_identity_gets_a_lease_that_records_it_and_an_issued_event_naming_it() {
    let f = fixture();
    let subject = "repo:acme/api:ref:refs/heads/main";
    let token = f.issuer.token(subject, "keyloop", HOUR);
    let reply = f
        .issue(&request("deploy", Some(token.clone())))
        .await
        .unwrap();
    let identity = reply.identity.clone().expect("the reply names who got it");
    assert_eq!(
        (identity.issuer.as_str(), identity.subject.as_str()),
        (CI, subject)
    );

    let lease = f
        .ctx
        .inventory
        .lease(reply.lease_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(lease.identity, Some(identity.clone()));
    assert_eq!(
        lease.agent_id.as_deref(),
        Some("agent-7"),
        "the label is kept"
    );

    let issued = f.events(LifecycleKind::Issued);
    assert_eq!(issued.len(), 1);
    assert_eq!(
        issued[0].data.actor.as_deref(),
        Some("https://ci.example#repo:acme/api:ref:refs/heads/main")
    );
    assert_eq!(
        issued[0].data.lease.as_ref().unwrap().identity,
        Some(identity)
    );
    let published = serde_json::to_string(&f.outbox.lifecycle()).unwrap();
    for part in token.split('.') {
        assert!(!published.contains(part), "the token is never published");
    }
}

#[tokio::test]
async fn an_open_scope_without_a_token_is_issued_to_the_agent_label_as_before() {
    let f = fixture();
    let reply = f.issue(&request("read", None)).await.unwrap();
    assert_eq!(reply.identity, None);
    let issued = f.events(LifecycleKind::Issued);
    assert_eq!(issued[0].data.actor.as_deref(), Some("agent-7"));
    assert!(f.events(LifecycleKind::Denied).is_empty());
}

#[tokio::test]
async fn every_refusal_of_who_asks_is_recorded_as_denied_with_who_and_what_and_no_token() {
    let f = fixture();
    let forger = TestIssuer::new(CI, "ci-1");
    let now = keyloop_testkit::jwt::now_secs();
    let api = "repo:acme/api:ref:refs/heads/main";
    let cases = [
        (
            Some(forger.token(api, "keyloop", HOUR)),
            "identity_invalid",
            "unverified (bad_signature)",
        ),
        (
            Some(f.issuer.sign(&serde_json::json!({
                "iss": CI, "sub": api, "aud": "keyloop", "exp": now - 3_600,
            }))),
            "identity_invalid",
            "unverified (expired)",
        ),
        (
            Some(f.issuer.token(api, "payments", HOUR)),
            "identity_invalid",
            "unverified (wrong_audience)",
        ),
        (
            Some(
                f.issuer
                    .token("repo:evil/x:ref:refs/heads/main", "keyloop", HOUR),
            ),
            "forbidden",
            "https://ci.example#repo:evil/x:ref:refs/heads/main",
        ),
        (None, "identity_required", "unverified (no identity token)"),
    ];
    for (token, code, who) in &cases {
        let e = f
            .issue(&request("deploy", token.clone()))
            .await
            .unwrap_err();
        assert_eq!(e.code, *code, "{}", e.message);
        let denied = f.events(LifecycleKind::Denied);
        let last = denied.last().expect("recorded");
        assert_eq!(last.data.actor.as_deref(), Some(*who));
        let detail = last.data.detail.as_deref().unwrap();
        assert!(
            detail.starts_with(&format!(
                "jit.issue of scope `deploy` for task deploy-42 refused ({code}): "
            )),
            "{detail}"
        );
        assert_eq!(last.correlationid.as_deref(), Some("deploy-42"));
        assert_eq!(last.data.credential, None);
        assert_eq!(keyloop_core::event::subject_token(last), "_none");
        if let Some(token) = token {
            let shown = serde_json::to_string(last).unwrap() + &e.message;
            for part in token.split('.') {
                assert!(!shown.contains(part), "{shown}");
            }
        }
    }
    assert_eq!(f.events(LifecycleKind::Denied).len(), cases.len());
    assert!(
        f.events(LifecycleKind::Issued).is_empty(),
        "nothing was issued"
    );
}

#[tokio::test]
async fn the_same_refusal_repeated_within_a_minute_is_recorded_once() {
    let f = fixture();
    for _ in 0..5 {
        let e = f.issue(&request("deploy", None)).await.unwrap_err();
        assert_eq!(e.code, "identity_required");
    }
    assert!(
        f.events(LifecycleKind::Denied).len() <= 2,
        "one per minute (two if the loop straddled one)"
    );
}

#[tokio::test]
async fn refusals_of_the_terms_asked_are_answered_but_not_recorded_as_denied() {
    let f = fixture();
    let token = f
        .issuer
        .token("repo:acme/api:ref:refs/heads/main", "keyloop", HOUR);
    let mut too_long = request("deploy", Some(token));
    too_long.ttl_secs = 7_200;
    assert_eq!(f.issue(&too_long).await.unwrap_err().code, "ttl_too_long");
    assert_eq!(
        f.issue(&request("root", None)).await.unwrap_err().code,
        "unknown_scope"
    );
    assert!(f.outbox.lifecycle().is_empty());
}
