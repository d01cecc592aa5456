//! The policy engine on a secured server: a `--policy` file changes what the control plane
//! allows (a grant the default policy does not make, a forbid on high-blast-radius
//! credentials), the refusal's `denied` event names the policy that decided, and a policy file
//! with an error stops the worker at start with its line.

use crate::harness::{Env, lifecycle, path_str};
use keyloop_core::LifecycleKind;

/// The default policy plus a grant and a forbid.
fn custom_policy() -> String {
    format!(
        r#"{}
@id("orchestrator-a-fetches-shared")
permit (
  principal == Keyloop::Actor::"orchestrator-a",
  action == Keyloop::Action::"fetch",
  resource is Keyloop::Credential
)
when {{ resource.tags.contains("shared") }};

@id("no-manual-revoke-of-high-blast-radius")
forbid (principal, action == Keyloop::Action::"revoke", resource)
when {{ resource.blast_radius == "high" }};
"#,
        keyloop_core::policy::DEFAULT_POLICY
    )
}

async fn fetch_as(env: &Env, user: &str, id: &str) -> std::process::Output {
    env.keyloop_as(user)
        .args(["credential", "fetch", id])
        .output()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_policy_file_grants_what_the_default_refuses_and_forbids_what_it_allows() {
    let env = Env::start_secured().await;
    let _rotator = env.worker_as("rotator", "rotator", &["rotator"]);
    let _revoker = env.worker_as("revoker", "revoker", &["revoker"]);
    env.ok(&["credential", "register", "svc/shared", "--tag", "shared"])
        .await;
    env.ok(&[
        "credential",
        "register",
        "svc/vault",
        "--blast-radius",
        "high",
    ])
    .await;
    let shown = env.ok(&["credential", "show", "svc/vault", "--json"]).await;
    let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["policy"]["blast_radius"], "high", "{shown}");

    // The default policy: orchestrator-a is no consumer of svc/shared.
    let out = fetch_as(&env, "orchestrator-a", "svc/shared").await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("forbidden"));

    let policy = env.file("policy.cedar", custom_policy().as_bytes());
    env.set_env("KEYLOOP_POLICY", path_str(&policy));
    // The control plane starts again with the policy.
    env.api().await;
    let out = fetch_as(&env, "orchestrator-a", "svc/shared").await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.stdout.is_empty());
    // Still nothing else: the grant is for tagged credentials only.
    assert!(
        !fetch_as(&env, "orchestrator-a", "svc/vault")
            .await
            .status
            .success()
    );

    // ops is an admin, and still may not revoke a high-blast-radius credential by hand.
    let out = env
        .run(&["revoke", "svc/vault", "--reason", "policy test"])
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("forbidden"),
        "{stderr}"
    );
    let denied = lifecycle(&env.bus)
        .await
        .into_iter()
        .rfind(|e| e.data.kind == LifecycleKind::Denied)
        .expect("a denied event");
    assert_eq!(denied.data.actor.as_deref(), Some("ops"), "{denied:?}");
    assert_eq!(
        denied.data.policies,
        ["no-manual-revoke-of-high-blast-radius"],
        "{denied:?}"
    );
    // A low one is revoked as before.
    env.ok(&["revoke", "svc/shared", "--reason", "policy test"])
        .await;
}

#[tokio::test]
async fn a_policy_file_with_an_error_stops_the_worker_at_start_with_its_line() {
    let env = Env::start().await;
    let policy = env.file(
        "policy.cedar",
        b"@id(\"ok\")\npermit (principal, action, resource);\n\n@id(\"typo\")\npermit (principal, action == Keyloop::Action::\"fetch\", resource)\nwhen { resource.blast_radios == \"high\" };\n",
    );
    let out = env
        .run(&["worker", "api", "--policy", path_str(&policy)])
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:6:", policy.display()))
            && stderr.contains("policy `typo`")
            && stderr.contains("blast_radius"),
        "{stderr}"
    );
    let syntax = env.file(
        "syntax.cedar",
        b"@id(\"a\")\npermit (principal action, resource);\n",
    );
    let out = env
        .run(&["worker", "jit-issuer", "--policy", path_str(&syntax)])
        .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("{}:2:", syntax.display())),
        "{stderr}"
    );
}
