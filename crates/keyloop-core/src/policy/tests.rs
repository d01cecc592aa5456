use super::*;
use crate::api::Verb;
use crate::credential::Credential;
use crate::lease::{JitPolicy, Tier};
use time::macros::datetime;

const NOW: time::OffsetDateTime = datetime!(2026-06-01 12:00 UTC);

fn cred(owner: Option<&str>, consumers: &[&str]) -> Credential {
    let mut c: Credential = serde_json::from_value(serde_json::json!({
        "id": "svc/x", "store": "local", "target": "none",
        "policy": {"grace_secs": 0}, "versions": [],
        "created_at": "2026-01-01T00:00:00Z"
    }))
    .unwrap();
    c.policy.owner = owner.map(str::to_owned);
    c.consumers = consumers.iter().map(|c| (*c).to_owned()).collect();
    c
}

fn api_request<'a>(actor: &str, verb: Verb, cred: Option<&'a Credential>) -> PolicyRequest<'a> {
    PolicyRequest {
        principal: Principal::actor(actor),
        action: verb.into(),
        resource: cred.map_or(Resource::Inventory, |c| Resource::Credential(c.into())),
        context: RequestContext::new(NOW, Source::Api),
    }
}

/// The rule table keyloop had before policies (`AccessRules::allows` as it was), kept as the
/// oracle the default policy must reproduce.
fn rules_before_policies(admin: bool, actor: &str, verb: Verb, cred: Option<&Credential>) -> bool {
    if admin {
        return true;
    }
    let Some(cred) = cred else {
        return verb == Verb::List;
    };
    let owner = cred.policy.owner.as_deref() == Some(actor);
    let consumer = cred.consumers.iter().any(|c| c == actor);
    match verb {
        Verb::Show | Verb::Fetch | Verb::Verify | Verb::List => owner || consumer,
        Verb::Update | Verb::Rotate | Verb::Revoke | Verb::Retire => owner,
        Verb::Register | Verb::DlqRetry | Verb::DlqPurge => false,
        Verb::Approvals | Verb::Approval | Verb::Approve | Verb::Deny => {
            unreachable!("approval verbs are decided as `approve`")
        }
    }
}

#[test]
fn the_default_policy_answers_every_verb_and_role_as_the_rules_before_policies_did() {
    let engine = PolicyEngine::default_policy(Groups::with_admins(["ops"]));
    // Every combination of admin, owner and consumer, and a credential without owner.
    for admin in [false, true] {
        for owner in [false, true] {
            for consumer in [false, true] {
                let actor = if admin { "ops" } else { "alice" };
                let (consumers, alone): (&[&str], &[&str]) = if consumer {
                    (&[actor, "svc-y"], &[actor])
                } else {
                    (&["svc-y"], &[])
                };
                let c = cred(Some(if owner { actor } else { "team-x" }), consumers);
                let unowned = cred(None, alone);
                for verb in Verb::ALL.into_iter().filter(|v| !v.is_approval()) {
                    // Only `list` is about no credential (`register` is decided on the
                    // credential to be registered).
                    // The DLQ verbs are about the inventory only.
                    let inventory = (verb == Verb::List || verb.is_dlq()).then_some(None);
                    let credentials = (!verb.is_dlq()).then_some([Some(&c), Some(&unowned)]);
                    for resource in credentials.into_iter().flatten().chain(inventory) {
                        let d = engine.decide(&api_request(actor, verb, resource));
                        let expected = rules_before_policies(admin, actor, verb, resource);
                        assert_eq!(
                            d.allowed_now(),
                            expected,
                            "{actor} admin={admin} owner={owner} consumer={consumer} {verb:?} on {:?}: {d:?}",
                            resource.map(|c| (&c.policy.owner, &c.consumers))
                        );
                        assert!(matches!(d.outcome, Outcome::Allow | Outcome::Deny), "{d:?}");
                        assert!(d.errors.is_empty(), "{d:?}");
                        if expected {
                            assert!(!d.policies.is_empty(), "an allow names its policies");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn a_decision_names_the_policies_that_made_it() {
    let engine = PolicyEngine::default_policy(Groups::with_admins(["ops"]));
    let c = cred(Some("ops"), &["ops"]);
    let d = engine.decide(&api_request("ops", Verb::Fetch, Some(&c)));
    assert_eq!(
        d.policies,
        [
            "admins-do-everything",
            "consumers-read-their-credential",
            "owners-run-their-credential"
        ]
    );
    let d = engine.decide(&api_request("mallory", Verb::Fetch, Some(&c)));
    assert_eq!(d.outcome, Outcome::Deny);
    assert_eq!(d.policies_text(), "no permit applied");
}

fn issue<'a>(
    principal: Principal,
    name: &'a str,
    scope: &'a crate::lease::ScopePolicy,
) -> PolicyRequest<'a> {
    let mut context = RequestContext::new(NOW, Source::Jit);
    context.task_id = Some("t-1".into());
    context.ttl_secs = Some(60);
    PolicyRequest {
        principal,
        action: Action::Issue,
        resource: Resource::Scope {
            name,
            policy: scope,
        },
        context,
    }
}

#[test]
fn the_default_policy_gives_every_jit_scope_its_tier_for_every_requester() {
    let engine = PolicyEngine::default_policy(Groups::with_admins(["ops"]));
    let identity = crate::identity::WorkloadIdentity {
        issuer: "https://ci.example".into(),
        subject: "repo:acme/api:ref:main".into(),
        labels: Default::default(),
    };
    let policy = JitPolicy::default();
    for (name, scope) in &policy.scopes {
        let expected = match scope.tier {
            Tier::Auto => Outcome::Allow,
            Tier::Notify => Outcome::Notify,
            Tier::Approve => Outcome::Approve(ApprovalNeed {
                approvers: 1,
                group: Some("admins".into()),
            }),
        };
        for principal in [
            Principal::unverified(),
            Principal::workload(&identity),
            // An admin asking does not skip the tier: the strictest permit wins.
            Principal::actor("ops"),
        ] {
            let d = engine.decide(&issue(principal.clone(), name, scope));
            assert_eq!(d.outcome, expected, "{name} for {principal:?}: {d:?}");
            assert!(
                d.policies
                    .contains(&format!("jit-tier-{}", scope.tier.name())),
                "{d:?}"
            );
        }
    }
}

#[test]
fn a_custom_policy_asks_two_approvers_for_revoking_a_high_blast_radius_credential() {
    let text = r#"
@id("owners")
permit (principal, action, resource is Keyloop::Credential)
when { resource has owner && resource.owner == principal };

@id("high-blast-radius-needs-two-sres")
@outcome("approve") @approvers("2") @group("sre")
permit (principal, action in [Keyloop::Action::"revoke", Keyloop::Action::"rotate"], resource is Keyloop::Credential)
when { resource.blast_radius == "high" };

@id("no-fetch-of-pci-on-weekend-nights")
forbid (principal, action == Keyloop::Action::"fetch", resource is Keyloop::Credential)
when { resource.tags.contains("pci") && context.now > 1900000000 };
"#;
    let engine = PolicyEngine::load(text, "custom.cedar", Groups::default()).unwrap();
    let mut c = cred(Some("alice"), &[]);
    c.policy.blast_radius = crate::credential::BlastRadius::High;
    let d = engine.decide(&api_request("alice", Verb::Revoke, Some(&c)));
    assert_eq!(
        d.outcome,
        Outcome::Approve(ApprovalNeed {
            approvers: 2,
            group: Some("sre".into())
        })
    );
    assert_eq!(d.policies, ["high-blast-radius-needs-two-sres", "owners"]);
    assert!(
        engine
            .decide(&api_request("alice", Verb::Show, Some(&c)))
            .allowed_now()
    );
    c.policy.blast_radius = crate::credential::BlastRadius::Low;
    assert_eq!(
        engine
            .decide(&api_request("alice", Verb::Revoke, Some(&c)))
            .outcome,
        Outcome::Allow
    );
    c.policy.tags = vec!["pci".into()];
    let mut req = api_request("alice", Verb::Fetch, Some(&c));
    req.context.now = datetime!(2031-01-01 0:00 UTC);
    let d = engine.decide(&req);
    assert_eq!(d.outcome, Outcome::Deny);
    assert_eq!(d.policies, ["no-fetch-of-pci-on-weekend-nights"]);
}

#[test]
fn approving_is_allowed_or_denied_never_itself_approved() {
    let text = r#"
@id("sre-approve") @outcome("approve")
permit (principal in Keyloop::Group::"sre", action == Keyloop::Action::"approve", resource)
when { context has requester && context.requester != principal };
"#;
    let mut groups = Groups::default();
    groups.add("sre", "bob");
    let engine = PolicyEngine::load(text, "p.cedar", groups).unwrap();
    let policy = JitPolicy::default();
    let scope = &policy.scopes["admin"];
    let mut req = issue(Principal::actor("bob"), "admin", scope);
    req.action = Action::Approve;
    req.context.requested_action = Some(Action::Issue);
    req.context.requester = Some("alice".into());
    assert_eq!(engine.decide(&req).outcome, Outcome::Allow);
    req.context.requester = Some("bob".into());
    assert_eq!(engine.decide(&req).outcome, Outcome::Deny);
    req.principal = Principal::actor("carol");
    req.context.requester = Some("alice".into());
    assert_eq!(engine.decide(&req).outcome, Outcome::Deny);
}

fn refused(text: &str) -> Vec<LoadError> {
    PolicyEngine::load(text, "policy.cedar", Groups::default()).unwrap_err()
}

#[test]
fn a_syntax_error_is_refused_with_its_line() {
    let errors = refused(
        "@id(\"a\")\npermit (principal, action, resource);\n\n@id(\"b\")\npermit (principal action, resource);\n",
    );
    assert_eq!(errors[0].kind, LoadErrorKind::Syntax);
    assert_eq!(
        (errors[0].origin.as_str(), errors[0].line),
        ("policy.cedar", 5),
        "{errors:?}"
    );
    assert!(
        errors[0].to_string().starts_with("policy.cedar:5:"),
        "{}",
        errors[0]
    );
}

#[test]
fn a_schema_error_is_refused_with_its_line() {
    let errors = refused(
        "@id(\"a\")\npermit (principal, action, resource);\n\n@id(\"typo\")\npermit (principal, action == Keyloop::Action::\"fetch\", resource)\nwhen { resource.blast_radios == \"high\" };\n",
    );
    assert_eq!(errors[0].kind, LoadErrorKind::Schema, "{errors:?}");
    assert_eq!(errors[0].line, 6, "{errors:?}");
    assert!(errors[0].message.contains("blast_radios"), "{errors:?}");
    assert!(errors[0].message.contains("policy `typo`"), "{errors:?}");
    let errors = refused(
        "@id(\"a\")\npermit (principal, action == Keyloop::Action::\"delete\", resource);\n",
    );
    assert_eq!(
        (errors[0].kind, errors[0].line),
        (LoadErrorKind::Schema, 2),
        "{errors:?}"
    );
}

#[test]
fn policies_without_ids_repeated_ids_and_bad_annotations_are_refused_with_their_line() {
    let errors = refused("permit (principal, action, resource);\n");
    assert_eq!(
        (errors[0].kind, errors[0].line),
        (LoadErrorKind::Annotation, 1)
    );
    assert!(errors[0].message.contains("@id"), "{errors:?}");
    let errors = refused(
        "@id(\"a\")\npermit (principal, action, resource);\n@id(\"a\")\nforbid (principal, action, resource);\n",
    );
    assert_eq!(errors[0].line, 3, "{errors:?}");
    assert!(errors[0].message.contains("line 1"), "{errors:?}");
    for (annotations, needle) in [
        ("@outcome(\"maybe\")", "maybe"),
        ("@outcome(\"approve\") @approvers(\"0\")", "1 to 10"),
        ("@outcome(\"approve\") @approvers(\"many\")", "many"),
        ("@outcome(\"notify\") @group(\"sre\")", "go with"),
    ] {
        let errors = refused(&format!(
            "@id(\"x\")\n\n{annotations}\npermit (principal, action, resource);\n"
        ));
        assert_eq!(errors[0].line, 1, "{annotations}: {errors:?}");
        assert!(
            errors[0].message.contains(needle),
            "{annotations}: {errors:?}"
        );
    }
    let errors =
        refused("@id(\"f\") @outcome(\"notify\")\nforbid (principal, action, resource);\n");
    assert!(errors[0].message.contains("forbid is a deny"), "{errors:?}");
}

#[test]
fn the_default_policy_is_valid_and_names_its_policies() {
    let engine = PolicyEngine::default_policy(Groups::default());
    assert_eq!(
        engine.policy_ids(),
        [
            "admins-do-everything",
            "anyone-lists",
            "consumers-read-their-credential",
            "high-blast-radius-needs-approval",
            "jit-tier-approve",
            "jit-tier-auto",
            "jit-tier-notify",
            "owners-run-their-credential"
        ]
    );
}

#[test]
fn every_action_is_in_the_schema() {
    for action in Action::ALL {
        assert!(
            SCHEMA.contains(&format!(" {}", action.name())),
            "{action:?}"
        );
        assert_eq!(Action::parse(action.name()), Some(action));
    }
}

#[test]
fn under_the_default_policy_manual_destruction_of_a_high_blast_radius_credential_needs_an_admin_approval()
 {
    let engine = PolicyEngine::default_policy(Groups::with_admins(["ops"]));
    let mut high = cred(Some("alice"), &["svc-y"]);
    high.policy.blast_radius = crate::credential::BlastRadius::High;
    let need = Outcome::Approve(crate::policy::ApprovalNeed {
        approvers: 1,
        group: Some("admins".into()),
    });
    for actor in ["ops", "alice"] {
        for verb in [Verb::Rotate, Verb::Revoke, Verb::Retire] {
            let d = engine.decide(&api_request(actor, verb, Some(&high)));
            assert_eq!(d.outcome, need, "{actor} {}", verb.name());
            assert!(
                d.policies
                    .contains(&"high-blast-radius-needs-approval".to_owned()),
                "{:?}",
                d.policies
            );
        }
        // Reading and changing its record needs nothing more than before.
        for verb in [Verb::Show, Verb::Fetch, Verb::Update] {
            let d = engine.decide(&api_request(actor, verb, Some(&high)));
            assert_eq!(d.outcome, Outcome::Allow, "{actor} {}", verb.name());
        }
    }
    // A consumer or a stranger gains nothing: still refused, not offered an approval.
    for actor in ["svc-y", "mallory"] {
        let d = engine.decide(&api_request(actor, Verb::Revoke, Some(&high)));
        assert_eq!(d.outcome, Outcome::Deny, "{actor}");
    }
}
