//! The decision latency the policy engine adds to a request: `PolicyEngine::decide` (entities
//! built, Cedar's `is_authorized`, the outcome read from the annotations) with the default
//! policy, for a JIT issue and for an api fetch, as p50/p99 over many decisions.
//! `cargo bench -p keyloop-core --bench policy` (no harness: it prints its figures).

use keyloop_core::api::Verb;
use keyloop_core::lease::JitPolicy;
use keyloop_core::policy::{
    Action, Groups, PolicyEngine, PolicyRequest, Principal, RequestContext, Resource, Source,
};
use std::time::{Duration, Instant};

const ROUNDS: usize = 20_000;

fn percentiles(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    println!(
        "{name}: p50 {:?}  p99 {:?}  max {:?}  ({} decisions)",
        at(0.50),
        at(0.99),
        samples[samples.len() - 1],
        samples.len()
    );
}

fn measure(name: &str, engine: &PolicyEngine, req: &PolicyRequest<'_>) {
    for _ in 0..1_000 {
        std::hint::black_box(engine.decide(req));
    }
    let samples = (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            std::hint::black_box(engine.decide(req));
            start.elapsed()
        })
        .collect();
    percentiles(name, samples);
}

fn main() {
    let engine = PolicyEngine::default_policy(Groups::with_admins(["ops"]));
    let jit = JitPolicy::default();
    let now = time::OffsetDateTime::now_utc();
    let mut context = RequestContext::new(now, Source::Jit);
    context.task_id = Some("task-1".into());
    context.ttl_secs = Some(600);
    let issue = PolicyRequest {
        principal: Principal::unverified(),
        action: Action::Issue,
        resource: Resource::Scope {
            name: "write",
            policy: &jit.scopes["write"],
        },
        context,
    };
    measure("jit.issue (scope write, notify)", &engine, &issue);
    let cred: keyloop_core::Credential = serde_json::from_value(serde_json::json!({
        "id": "pg/app", "store": "local", "target": "postgres",
        "policy": {"grace_secs": 0, "owner": "team-a"}, "versions": [],
        "consumers": ["svc-a", "svc-b"], "created_at": "2026-01-01T00:00:00Z"
    }))
    .expect("a credential");
    let fetch = PolicyRequest {
        principal: Principal::actor("svc-b"),
        action: Verb::Fetch.into(),
        resource: Resource::Credential((&cred).into()),
        context: RequestContext::new(now, Source::Api),
    };
    measure("api fetch (consumer)", &engine, &fetch);
}
