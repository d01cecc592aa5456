//! `keyloop demo`: a self-contained tour of the main job on the embedded default. Starts its own
//! nats-server in a temporary directory, runs every worker in this process on the local store,
//! registers three credentials, leaks one through a gitleaks report, and shows it revoked and
//! rotated with its time-to-revoke and timeline. Exits 0 when the loop did what it promises.

use super::LifecycleWatch;
use crate::cli::{Global, ReplayArgs};
use crate::cmd::{ingest, replay};
use crate::{config, output};
use anyhow::{Context, Result, bail};
use keyloop_backends::MasterKey;
use keyloop_core::ingest::Format;
use keyloop_core::{LifecycleKind, Policy, StoreKind, TargetKind};
use keyloop_nats::server::{ServerOptions, ServerProcess};
use keyloop_nats::{Bus, Role, Topology};
use keyloop_workers::WorkerContext;
use keyloop_workers::ops::{self, Cause, Registration};
use serde_json::json;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const LEAKED: &str = "saas/stripe-payouts";

/// Every role but the notifier: the demo posts to no webhook.
const DEMO_ROLES: [Role; 7] = [
    Role::LeakResponder,
    Role::Rotator,
    Role::Revoker,
    Role::Scheduler,
    Role::Sweeper,
    Role::JitIssuer,
    Role::Api,
];

pub(crate) async fn run(g: &Global) -> Result<ExitCode> {
    let say = |text: &str| if g.json { Ok(()) } else { output::line(text) };
    let started = Instant::now();
    let dir = tempfile::Builder::new().prefix("keyloop-demo-").tempdir()?;
    let binary = config::nats_server_binary().await?;
    let mut server = ServerProcess::start(&ServerOptions {
        binary,
        store_dir: dir.path().join("nats"),
        port: None,
        extra_args: Vec::new(),
    })
    .await?;
    say(&format!(
        "[1/6] started nats-server on {} (JetStream in {})",
        server.url(),
        dir.path().display()
    ))?;

    let bus = Bus::connect(server.url(), Topology::default()).await?;
    bus.topology.init(&bus.js).await?;
    let ctx = Arc::new(WorkerContext::open(bus.clone(), Some(&MasterKey::generate())).await?);
    let shutdown = CancellationToken::new();
    let workers = tokio::spawn(keyloop_workers::run(
        ctx.clone(),
        &DEMO_ROLES,
        keyloop_workers::WorkerConfig::default(),
        shutdown.clone(),
    ));
    say(
        "[2/6] created streams, KV buckets and consumers; every worker role is running in this process",
    )?;

    let cause = Cause {
        actor: None,
        source: "keyloop/demo".into(),
        correlation: None,
        causation: None,
        batch: None,
    };
    for (id, max_age) in [
        ("pg/app", Some(30 * 86_400)),
        (LEAKED, Some(90 * 86_400)),
        ("ci/deploy-token", None),
    ] {
        let reg = Registration {
            id: id.parse()?,
            store: StoreKind::Local,
            target: TargetKind::None,
            policy: Policy {
                max_age_secs: max_age,
                grace_secs: 3_600,
                idle_revoke_after_secs: None,
                owner: Some("platform".into()),
                ..Default::default()
            },
            settings: Default::default(),
        };
        let cred = ops::register(&ctx, reg, &cause)
            .await
            .with_context(|| format!("register {id}"))?
            .credential;
        say(&format!(
            "      registered {}",
            output::credential_row(&cred)
        ))?;
    }
    say("[3/6] registered 3 credentials on the local store (values encrypted in KV)")?;

    let leaked_id = LEAKED.parse()?;
    let (cred, _) = ctx.inventory.require(&leaked_id).await?;
    let old_version = cred
        .current()
        .context("registered credential has a current version")?
        .id;
    let store = ctx.backends.store(cred.store)?;
    let old_value = store
        .get(&cred, old_version)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .context("value stored")?;
    let report = json!([{
        "Description": "Stripe Access Token",
        "StartLine": 12, "EndLine": 12, "StartColumn": 18, "EndColumn": 85,
        "Match": "STRIPE_KEY=[the value]", "Secret": old_value.expose(),
        "File": "deploy/payouts.env", "Commit": "4f2a9c1e0b7d", "Entropy": 4.9,
        "Author": "dev", "Email": "dev@example.com", "Date": "2026-11-29T09:00:00Z",
        "Message": "add payouts config", "Tags": [], "RuleID": "stripe-access-token",
        "Fingerprint": "4f2a9c1e0b7d:deploy/payouts.env:stripe-access-token:12"
    }]);
    let report_path = dir.path().join("gitleaks-report.json");
    std::fs::write(&report_path, serde_json::to_vec_pretty(&report)?)?;
    drop(report);
    say(&format!(
        "[4/6] wrote a gitleaks report with the current value of {LEAKED} to {} (the value is never printed)",
        report_path.display()
    ))?;

    let mut watch = LifecycleWatch::credential(&bus, LEAKED).await?;
    let result = ingest::ingest_file(&bus, Format::Gitleaks, &report_path).await?;
    let leak_id = result
        .leak_ids
        .first()
        .cloned()
        .context("the report has one finding")?;
    say(&format!(
        "[5/6] ingested it: {} published; following leak {leak_id}",
        result.published
    ))?;
    let ours =
        |e: &keyloop_core::LifecycleEvent| e.correlationid.as_deref() == Some(leak_id.as_str());
    let mut time_to_revoke = None;
    watch
        .until(
            Duration::from_secs(10),
            |e| {
                if ours(e) {
                    if e.data.kind == LifecycleKind::Revoked {
                        time_to_revoke = e.data.time_to_revoke_ms;
                    }
                    say(&format!("      {}", output::lifecycle_row(e)))?;
                }
                Ok(())
            },
            |e| ours(e) && e.data.kind == LifecycleKind::Rotated,
        )
        .await
        .context("waiting for the leaked credential to be revoked and rotated")?;

    let (cred, _) = ctx.inventory.require(&leaked_id).await?;
    let new_version = cred
        .current()
        .context("a new current version after rotation")?
        .id;
    let new_value = store
        .get(&cred, new_version)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .context("new value stored")?;
    let old_gone = store
        .get(&cred, old_version)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .is_none();
    if new_value == old_value || !old_gone {
        bail!("demo failed: the leaked value is still stored or still current");
    }
    drop((old_value, new_value));
    let again = ingest::ingest_file(&bus, Format::Gitleaks, &report_path).await?;
    say(&format!(
        "      ingested the same report again: {} published, {} deduplicated (no second response)",
        again.published, again.deduplicated
    ))?;

    let timeline = replay::collect(
        &bus,
        &ReplayArgs {
            correlation: Some(leak_id.clone()),
            ..Default::default()
        },
    )
    .await?;
    say("[6/6] timeline of the leak (keyloop replay --correlation ...):")?;
    for e in &timeline {
        say(&format!("      {}", e.render()))?;
    }
    say(&format!("\n{}", output::credential_detail(&cred)))?;
    let ttr = time_to_revoke.context("revoked event carries time_to_revoke_ms")?;
    if g.json {
        output::json_line(&json!({
            "leak": leak_id,
            "credential": LEAKED,
            "revoked_version": old_version,
            "new_current_version": new_version,
            "time_to_revoke_ms": ttr,
            "timeline_events": timeline.len(),
            "duplicate_ingest_deduplicated": again.deduplicated,
            "elapsed_ms": started.elapsed().as_millis() as u64,
        }))?;
    } else {
        output::line(format_args!(
            "leaked value of {LEAKED} was dead {ttr} ms after the leak was published, and replaced by version {new_version}. Demo done in {:.1} s.",
            started.elapsed().as_secs_f64()
        ))?;
    }
    shutdown.cancel();
    workers.await??;
    // Close the connection before the server goes, so the client does not warn about losing it.
    bus.close().await;
    server.kill().await;
    Ok(ExitCode::SUCCESS)
}
