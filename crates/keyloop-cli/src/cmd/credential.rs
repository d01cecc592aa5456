//! `keyloop credential register|list|show|reveal`.

use crate::cli::{CredentialCommand, Global, RegisterArgs};
use crate::{config, output};
use anyhow::{Context, Result, anyhow, bail};
use keyloop_core::duration::{GRACE, IDLE_REVOKE_AFTER, MAX_AGE};
use keyloop_core::event::lifecycle_event;
use keyloop_core::{
    BackendSettings, CredentialId, LifecycleData, LifecycleKind, Policy, StoreKind,
};
use keyloop_workers::ops::{self, Cause, Registration};
use std::io::Write;
use std::process::ExitCode;

/// Exit code of a registration that took the target over but where a later step failed (the
/// login test, the store's staging label): registered, and something needs a look.
const EXIT_REGISTERED_WITH_WARNINGS: u8 = 4;

pub(crate) async fn run(g: &Global, cmd: CredentialCommand) -> Result<ExitCode> {
    match cmd {
        CredentialCommand::Register(args) => register(g, *args).await,
        CredentialCommand::List => list(g).await,
        CredentialCommand::Show { id } => show(g, &id).await,
        CredentialCommand::Reveal { id } => reveal(g, &id).await,
    }
}

pub(crate) fn parse_id(id: &str) -> Result<CredentialId> {
    id.parse::<CredentialId>().map_err(|e| anyhow!(e))
}

async fn register(g: &Global, args: RegisterArgs) -> Result<ExitCode> {
    let id = parse_id(&args.id)?;
    let policy =
        policy(&args).with_context(|| format!("register credential {id} (nothing registered)"))?;
    let (store, target) = (args.store, args.target);
    let settings = BackendSettings {
        secret_id: match store {
            StoreKind::AwsSm => Some(args.secret_id.unwrap_or_else(|| format!("keyloop/{id}"))),
            StoreKind::Local => args.secret_id,
        },
        role: args.role,
        strategy: args.strategy,
    };
    settings
        .check(store, target)
        .with_context(|| format!("register credential {id}"))?;
    let bus = config::connect(g).await?;
    let ctx = config::context(g, bus).await?;
    let cause = Cause {
        source: "keyloop/cli".into(),
        correlation: None,
        causation: None,
    };
    let registered = ops::register(
        &ctx,
        Registration {
            id: id.clone(),
            store,
            target,
            policy,
            settings,
        },
        &cause,
    )
    .await
    .with_context(|| format!("register credential {id}"))?;
    let cred = &registered.credential;
    if g.json {
        output::json_line(&serde_json::json!({
            "credential": cred,
            "resumed": registered.resumed,
            "warnings": registered.warnings,
        }))?;
    } else {
        let verb = if registered.resumed {
            "finished the registration of"
        } else {
            "registered"
        };
        output::line(format_args!("{verb} {}", output::credential_row(cred)))?;
    }
    if registered.warnings.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    for w in &registered.warnings {
        eprintln!("warning: credential {id}: {w}");
    }
    eprintln!(
        "credential {id} is registered and its target accepts keyloop's value, but the steps above need a look"
    );
    Ok(ExitCode::from(EXIT_REGISTERED_WITH_WARNINGS))
}

/// The policy from the flags, every duration within its bounds, checked before anything is
/// connected to or written, so a bad value never registers half a credential.
fn policy(args: &RegisterArgs) -> Result<Policy> {
    let secs = |bounds, v: &str| config::duration_flag(bounds, v).map(|d| d.as_secs());
    let policy = Policy {
        max_age_secs: args
            .max_age
            .as_deref()
            .map(|v| secs(MAX_AGE, v))
            .transpose()?,
        grace_secs: secs(GRACE, &args.grace)?,
        idle_revoke_after_secs: args
            .idle_revoke_after
            .as_deref()
            .map(|v| secs(IDLE_REVOKE_AFTER, v))
            .transpose()?,
        owner: args.owner.clone(),
    };
    policy.validate().map_err(|e| anyhow!("--{e}"))?;
    Ok(policy)
}

async fn list(g: &Global) -> Result<ExitCode> {
    let bus = config::connect(g).await?;
    let creds = bus.inventory().await?.list().await?;
    if g.json {
        for c in &creds {
            output::json_line(c)?;
        }
    } else if creds.is_empty() {
        output::line("no credentials registered (add one with `keyloop credential register ID`)")?;
    } else {
        for c in &creds {
            output::line(output::credential_row(c))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn show(g: &Global, id: &str) -> Result<ExitCode> {
    let id = parse_id(id)?;
    let bus = config::connect(g).await?;
    let (cred, _) = bus.inventory().await?.require(&id).await?;
    if g.json {
        output::json_line(&cred)?;
    } else {
        output::text(&output::credential_detail(&cred))?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn reveal(g: &Global, id: &str) -> Result<ExitCode> {
    let id = parse_id(id)?;
    let bus = config::connect(g).await?;
    let ctx = config::context(g, bus).await?;
    let (cred, _) = ctx.inventory.require(&id).await?;
    let Some(current) = cred.current() else {
        bail!(
            "credential {id} has no current version (revoked and not yet rotated?); see `keyloop credential show {id}`"
        );
    };
    let store = ctx.backends.store(cred.store)?;
    let value = store
        .get(&cred, current.id)
        .await
        .map_err(|e| anyhow!("credential {id}: {e}"))?
        .ok_or_else(|| anyhow!("credential {id}: the value of version {} is gone from its store (revoked just now?)", current.id))?;
    // Record the use before handing the value out: a use the audit log does not know of is
    // worse than a recorded one that did not complete. Every reveal is its own event.
    let now = time::OffsetDateTime::now_utc();
    ctx.inventory
        .update(&id, |c| {
            if c.last_used_at.is_some_and(|t| t >= now) {
                return Ok(keyloop_nats::Change::Keep(()));
            }
            c.last_used_at = Some(now);
            Ok(keyloop_nats::Change::Write(()))
        })
        .await?;
    let mut data = LifecycleData::new(LifecycleKind::Used, Some(id.clone()), Some(current.id));
    data.actor = Some("keyloop credential reveal".into());
    let event = lifecycle_event(
        "keyloop/cli",
        &format!("reveal/{}", uuid::Uuid::now_v7()),
        data,
    );
    ctx.outbox.publish_lifecycle(&event).await?;
    let mut out = std::io::stdout().lock();
    out.write_all(value.expose().as_bytes())
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
        .map_err(output::stdout_error)?;
    Ok(ExitCode::SUCCESS)
}
