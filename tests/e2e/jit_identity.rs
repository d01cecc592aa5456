//! JIT leases bound to a proved workload identity, through the real binary and a jit-issuer
//! worker on a real nats-server: a scope that lists `identities` issues a lease to a requester
//! whose token proves one of them (recorded in the lease and as the `issued` event's actor);
//! forged, expired, wrong-audience and not-allowed tokens, and none at all, are refused with
//! their code, issue nothing, and leave a `denied` event that names who and what without the
//! token; the token file is read at each call; a policy naming an issuer it does not trust
//! stops the worker at start.

use crate::harness::{Env, Worker, lifecycle, path_str, stream_messages};
use keyloop_core::LifecycleKind;
use keyloop_testkit::jwt::{TestIssuer, now_secs};
use std::path::PathBuf;
use std::time::Duration;

const CI: &str = "https://ci.example";
const HOUR: Duration = Duration::from_secs(3_600);
const API_MAIN: &str = "repo:acme/api:ref:refs/heads/main";

/// A jit-issuer serving `deploy` (notify, 15 min) to `repo:acme/api:*` of [`CI`] only, and
/// `read` open to all; the issuer's JWKS beside the policy file (a relative path).
fn guarded_issuer(env: &Env) -> (Worker, TestIssuer) {
    let issuer = TestIssuer::new(CI, "ci-key-1");
    issuer.write_jwks(&env.dir.path().join("ci-jwks.json"));
    let policy = serde_json::json!({
        "issuers": [{"issuer": CI, "audiences": ["keyloop"], "jwks_file": "ci-jwks.json"}],
        "scopes": {
            "read": {"tier": "auto", "max_ttl_secs": 3600},
            "deploy": {"tier": "notify", "max_ttl_secs": 900,
                "identities": [{"issuer": CI, "subject": "repo:acme/api:*"}]}
        }
    });
    let file = env.file("jit-policy.json", policy.to_string().as_bytes());
    let worker = env.worker("jit", &["jit-issuer", "--jit-policy", path_str(&file)]);
    (worker, issuer)
}

/// `keyloop task start TASK --scope deploy --ttl 10m --json` with the token in a file.
async fn start_with_token(env: &Env, task: &str, token: &str) -> std::process::Output {
    let file = token_file(env, task, token);
    env.run(&[
        "task",
        "start",
        task,
        "--scope",
        "deploy",
        "--ttl",
        "10m",
        "--identity-token-file",
        path_str(&file),
        "--json",
    ])
    .await
}

fn token_file(env: &Env, name: &str, token: &str) -> PathBuf {
    env.file(&format!("{name}.jwt"), format!("{token}\n").as_bytes())
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// No part of `token` is in the lifecycle stream, the events stream or `worker`'s log.
async fn nowhere(env: &Env, worker: &Worker, token: &str) {
    let mut stored = String::new();
    for stream in [
        env.bus.topology.lifecycle_stream(),
        env.bus.topology.events_stream(),
    ] {
        for m in stream_messages(&env.bus, &stream).await {
            stored.push_str(&String::from_utf8_lossy(&m.payload));
        }
    }
    let log = worker.log_text();
    for part in token.split('.') {
        assert!(!stored.contains(part), "a part of the token is in a stream");
        assert!(
            !log.contains(part),
            "a part of the token is in the worker's log"
        );
    }
}

#[tokio::test]
async fn a_valid_token_gets_a_lease_that_records_the_identity_in_the_lease_and_the_issued_event() {
    let env = Env::start().await;
    let (worker, issuer) = guarded_issuer(&env);
    let token = issuer.token(API_MAIN, "keyloop", HOUR);
    let out = start_with_token(&env, "deploy-1", &token).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(reply["identity"]["issuer"], CI);
    assert_eq!(reply["identity"]["subject"], API_MAIN);
    assert!(reply["secret"].as_str().unwrap().starts_with("klt_"));
    assert!(env.verify(reply["secret"].as_str().unwrap()).await);

    let lease_id: uuid::Uuid = reply["lease_id"].as_str().unwrap().parse().unwrap();
    let lease = env
        .bus
        .inventory()
        .await
        .unwrap()
        .lease(lease_id)
        .await
        .unwrap()
        .expect("the lease is recorded");
    let identity = lease.identity.expect("with the identity it proved");
    assert_eq!(
        (identity.issuer.as_str(), identity.subject.as_str()),
        (CI, API_MAIN)
    );
    assert_eq!(lease.agent_id, None, "no --agent: no label");

    let issued: Vec<_> = lifecycle(&env.bus)
        .await
        .into_iter()
        .filter(|e| e.data.kind == LifecycleKind::Issued)
        .collect();
    assert_eq!(issued.len(), 1);
    assert_eq!(
        issued[0].data.actor.as_deref(),
        Some("https://ci.example#repo:acme/api:ref:refs/heads/main"),
        "the issued event's actor is the proved identity"
    );
    assert_eq!(
        issued[0].data.lease.as_ref().unwrap().identity.as_ref(),
        Some(&identity)
    );
    nowhere(&env, &worker, &token).await;
}

#[tokio::test]
async fn forged_expired_wrong_audience_and_not_allowed_tokens_are_refused_recorded_and_issue_nothing()
 {
    let env = Env::start().await;
    let (worker, issuer) = guarded_issuer(&env);
    let forger = TestIssuer::new(CI, "ci-key-1");
    let mut expired = issuer.claims(API_MAIN, "keyloop", HOUR);
    expired["exp"] = serde_json::json!(now_secs() - 600);
    let cases = [
        (
            "forged",
            forger.token(API_MAIN, "keyloop", HOUR),
            "identity_invalid",
            "signature does not verify",
            "unverified (bad_signature)",
        ),
        (
            "expired",
            issuer.sign(&expired),
            "identity_invalid",
            "the token expired at",
            "unverified (expired)",
        ),
        (
            "wrong-audience",
            issuer.token(API_MAIN, "payments-api", HOUR),
            "identity_invalid",
            "audience is not keyloop's",
            "unverified (wrong_audience)",
        ),
        (
            "not-allowed",
            issuer.token("repo:acme/web:ref:refs/heads/main", "keyloop", HOUR),
            "forbidden",
            "may not request scope `deploy`",
            "https://ci.example#repo:acme/web:ref:refs/heads/main",
        ),
    ];
    for (task, token, code, says, _) in &cases {
        let out = start_with_token(&env, task, token).await;
        assert!(!out.status.success(), "{task} was issued");
        assert!(out.stdout.is_empty(), "{task}: no token printed");
        let err = stderr(&out);
        assert!(
            err.contains(says) && err.contains(&format!("({code})")),
            "{task}: {err}"
        );
    }
    let events = lifecycle(&env.bus).await;
    assert!(
        events.iter().all(|e| e.data.kind == LifecycleKind::Denied),
        "nothing but denials: {:?}",
        events.iter().map(|e| e.data.kind).collect::<Vec<_>>()
    );
    assert_eq!(events.len(), cases.len(), "one denied event per refusal");
    for (task, token, code, _, who) in &cases {
        let denied = events
            .iter()
            .find(|e| e.correlationid.as_deref() == Some(*task))
            .unwrap_or_else(|| panic!("no denied event for {task}"));
        assert_eq!(denied.data.actor.as_deref(), Some(*who), "{task}");
        let detail = denied.data.detail.as_deref().unwrap();
        assert!(
            detail.starts_with(&format!(
                "jit.issue of scope `deploy` for task {task} refused ({code}): "
            )),
            "{detail}"
        );
        nowhere(&env, &worker, token).await;
    }
    let subjects: Vec<String> = stream_messages(&env.bus, &env.bus.topology.lifecycle_stream())
        .await
        .into_iter()
        .map(|m| m.subject)
        .collect();
    assert!(
        subjects
            .iter()
            .all(|s| s == "keyloop.lifecycle.denied._none"),
        "{subjects:?}"
    );
}

#[tokio::test]
async fn a_guarded_scope_asked_without_a_token_says_to_pass_one_and_an_open_scope_still_issues() {
    let env = Env::start().await;
    let (_worker, _issuer) = guarded_issuer(&env);
    let out = env
        .run(&["task", "start", "t-1", "--scope", "deploy", "--ttl", "5m"])
        .await;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("scope `deploy` needs a workload identity token")
            && err.contains("--identity-token-file")
            && err.contains("(identity_required)"),
        "{err}"
    );
    let denied = lifecycle(&env.bus).await;
    assert_eq!(denied.len(), 1);
    assert_eq!(
        denied[0].data.actor.as_deref(),
        Some("unverified (no identity token)")
    );
    env.ok(&[
        "task", "start", "t-2", "--agent", "agent-7", "--scope", "read", "--ttl", "5m",
    ])
    .await;
}

#[tokio::test]
async fn the_token_file_is_read_at_each_call_from_the_flag_the_environment_or_stdin() {
    let env = Env::start().await;
    let (worker, issuer) = guarded_issuer(&env);
    let mut stale = issuer.claims(API_MAIN, "keyloop", HOUR);
    stale["exp"] = serde_json::json!(now_secs() - 600);
    // A projected token refreshed in place: the same path, a new token.
    let file = token_file(&env, "projected", &issuer.sign(&stale));
    let args = ["task", "start", "t-env", "--scope", "deploy", "--ttl", "5m"];
    let mut cmd = env.keyloop();
    cmd.args(args).env("KEYLOOP_IDENTITY_TOKEN_FILE", &file);
    let out = cmd.output().await.unwrap();
    assert!(
        stderr(&out).contains("(identity_invalid)"),
        "{}",
        stderr(&out)
    );
    token_file(&env, "projected", &issuer.token(API_MAIN, "keyloop", HOUR));
    let mut cmd = env.keyloop();
    cmd.args(args).env("KEYLOOP_IDENTITY_TOKEN_FILE", &file);
    let out = cmd.output().await.unwrap();
    assert!(
        out.status.success(),
        "the refreshed token is read: {}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains(" to https://ci.example#repo:acme/api:ref:refs/heads/main "),
        "{}",
        stderr(&out)
    );

    use tokio::io::AsyncWriteExt;
    let token = issuer.token("repo:acme/api:environment:prod", "keyloop", HOUR);
    let mut child = env
        .keyloop()
        .args([
            "task", "start", "t-stdin", "--scope", "deploy", "--ttl", "5m",
        ])
        .args(["--identity-token-file", "-", "--json"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(token.as_bytes()).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        reply["identity"]["subject"],
        "repo:acme/api:environment:prod"
    );

    let missing = env.dir.path().join("no-such.jwt");
    let out = env
        .run(&[
            "task",
            "start",
            "t-missing",
            "--scope",
            "deploy",
            "--ttl",
            "5m",
            "--identity-token-file",
            path_str(&missing),
        ])
        .await;
    let err = stderr(&out);
    assert!(
        !out.status.success()
            && err.contains("cannot read the identity token file")
            && err.contains(path_str(&missing)),
        "{err}"
    );
    nowhere(&env, &worker, &token).await;
}

#[tokio::test]
async fn a_jit_issuer_warns_about_open_scopes_and_refuses_a_policy_naming_an_untrusted_issuer() {
    let env = Env::start().await;
    let (worker, _issuer) = guarded_issuer(&env);
    // Serving once a request is answered.
    env.ok(&["task", "start", "t-warm", "--scope", "read", "--ttl", "5m"])
        .await;
    let log = worker.log_text();
    let open_line = log
        .lines()
        .find(|l| l.contains("without `identities` are open"))
        .unwrap_or_else(|| panic!("no warning about open scopes:\n{log}"));
    assert!(
        open_line.contains("read") && !open_line.contains("deploy"),
        "{open_line}"
    );

    let bad = serde_json::json!({
        "issuers": [{"issuer": CI, "audiences": ["keyloop"], "jwks_file": "ci-jwks.json"}],
        "scopes": {"deploy": {"tier": "notify", "max_ttl_secs": 900,
            "identities": [{"issuer": "https://gitlab.example", "subject": "*"}]}}
    });
    let file = env.file("bad-policy.json", bad.to_string().as_bytes());
    let out = env
        .run(&["worker", "jit-issuer", "--jit-policy", path_str(&file)])
        .await;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!("JIT policy {}: scope `deploy`", file.display()))
            && err.contains("`https://gitlab.example` is not in `issuers`"),
        "{err}"
    );
}
