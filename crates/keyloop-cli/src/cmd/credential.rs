//! `keyloop credential register|list|show|fetch|update|retire|watch`: requests to the control
//! plane (`keyloop worker api`), so the CLI needs only its NATS login. `register --local` runs
//! the registration in this process instead, for bootstrapping, and then needs the master key
//! and the backends' credentials here.

use crate::api_client;
use crate::cli::{CredentialCommand, Global, RegisterArgs};
use crate::{config, output};
use anyhow::{Context, Result, anyhow, bail};
use keyloop_core::api::{
    FetchReply, FetchRequest, IdRequest, Queued, RegisterRequest, RetireRequest, UpdateRequest,
    Verb, VerifyReply, VerifyRequest,
};
use keyloop_core::duration::{GRACE, IDLE_REVOKE_AFTER, MAX_AGE};
use keyloop_core::{BackendSettings, Credential, CredentialId, Policy, StoreKind};
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
        CredentialCommand::Fetch { id, previous } => fetch(g, &id, previous).await,
        CredentialCommand::Verify { id } => verify(g, &id).await,
        CredentialCommand::Update {
            id,
            owner,
            add_consumers,
            remove_consumers,
        } => {
            let req = UpdateRequest {
                id: parse_id(&id)?,
                owner,
                add_consumers,
                remove_consumers,
            };
            update(g, req).await
        }
        CredentialCommand::Retire { id, reason } => retire(g, &id, reason).await,
        CredentialCommand::Watch { id } => watch(g, &id).await,
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
        value_format: args.value_format,
    };
    settings
        .check(store, target)
        .with_context(|| format!("register credential {id}"))?;
    let bus = config::connect(g).await?;
    if !args.local {
        let req = RegisterRequest {
            id: id.clone(),
            store,
            target,
            policy,
            settings,
            consumers: args.consumers,
        };
        let cred: Credential = api_client::call(g, &bus, Verb::Register, &req)
            .await
            .with_context(|| format!("register credential {id}"))?;
        if g.json {
            output::json_line(&cred)?;
        } else {
            output::line(format_args!("registered {}", output::credential_row(&cred)))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let ctx = config::context(g, bus).await?;
    let cause = Cause {
        actor: Some(config::actor(g)),
        source: "keyloop/cli".into(),
        correlation: None,
        causation: None,
        batch: None,
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
        blast_radius: args.blast_radius,
        tags: args.tags.clone(),
    };
    policy.validate().map_err(|e| anyhow!("--{e}"))?;
    Ok(policy)
}

async fn list(g: &Global) -> Result<ExitCode> {
    let bus = config::connect(g).await?;
    let creds: Vec<Credential> =
        api_client::call(g, &bus, Verb::List, &serde_json::json!({})).await?;
    if g.json {
        for c in &creds {
            output::json_line(c)?;
        }
    } else if creds.is_empty() {
        output::line(
            "no credentials you may see (register one with `keyloop credential register ID`)",
        )?;
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
    let cred: Credential = api_client::call(g, &bus, Verb::Show, &IdRequest { id }).await?;
    if g.json {
        output::json_line(&cred)?;
    } else {
        output::text(&output::credential_detail(&cred))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The value on stdout and nothing else; the control plane recorded the use first.
async fn fetch(g: &Global, id: &str, previous: bool) -> Result<ExitCode> {
    let id = parse_id(id)?;
    let bus = config::connect(g).await?;
    let reply: FetchReply =
        api_client::call(g, &bus, Verb::Fetch, &FetchRequest { id, previous }).await?;
    let value = keyloop_core::Secret::new(reply.value);
    let mut out = std::io::stdout().lock();
    out.write_all(value.expose().as_bytes())
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
        .map_err(output::stdout_error)?;
    Ok(ExitCode::SUCCESS)
}

/// Exit code of `credential verify` for a value that does not work.
const EXIT_INVALID: u8 = 2;

async fn verify(g: &Global, id: &str) -> Result<ExitCode> {
    use std::io::BufRead;
    let id = parse_id(id)?;
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the value from stdin")?;
    let value = keyloop_core::Secret::new(line.trim().to_owned());
    drop(line);
    if value.expose().is_empty() {
        bail!(
            "no value on stdin; pipe it in, e.g. `printf %s \"$VALUE\" | keyloop credential verify {id}`"
        );
    }
    let bus = config::connect(g).await?;
    let req = VerifyRequest {
        id: id.clone(),
        value: value.expose().to_owned(),
    };
    let reply: VerifyReply = api_client::call(g, &bus, Verb::Verify, &req).await?;
    drop(req);
    if g.json {
        output::json_line(&reply)?;
    } else {
        let version = reply.version.map(|v| v.to_string());
        let stage = reply.stage.map(|s| s.name());
        match (reply.valid, version, stage) {
            (true, Some(v), Some(s)) => {
                output::line(format_args!("valid: {id} version {v} ({s})"))?
            }
            (false, Some(v), Some(s)) => output::line(format_args!(
                "invalid: {id} version {v} is {s}; fetch the current value with `keyloop credential fetch {id}`"
            ))?,
            _ => output::line(format_args!("invalid: not a version of {id}"))?,
        }
    }
    Ok(if reply.valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_INVALID)
    })
}

async fn update(g: &Global, req: UpdateRequest) -> Result<ExitCode> {
    let bus = config::connect(g).await?;
    let cred: Credential = api_client::call(g, &bus, Verb::Update, &req).await?;
    if g.json {
        output::json_line(&cred)?;
    } else {
        output::text(&output::credential_detail(&cred))?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn retire(g: &Global, id: &str, reason: String) -> Result<ExitCode> {
    let id = parse_id(id)?;
    let bus = config::connect(g).await?;
    let queued: Queued = api_client::call(
        g,
        &bus,
        Verb::Retire,
        &RetireRequest {
            id: id.clone(),
            reason,
        },
    )
    .await?;
    if let Some(exit) = super::approvals::held(g, &format!("retirement of {id}"), &queued)? {
        return Ok(exit);
    }
    if g.json {
        output::json_line(&queued)?;
    } else {
        output::line(format_args!(
            "credential {id} is retired; its live versions are being revoked (follow with `keyloop replay --correlation {}`)",
            queued.op_id
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Each lifecycle event of the credential as it happens, until interrupted.
async fn watch(g: &Global, id: &str) -> Result<ExitCode> {
    use futures::StreamExt;
    let id = parse_id(id)?;
    let bus = config::connect(g).await?;
    let subject = bus.topology.lifecycle("*", id.as_str());
    let mut events = bus.client.subscribe(subject).await?;
    bus.client.flush().await?;
    if !g.json {
        eprintln!("watching credential {id} (Ctrl-C to stop)");
    }
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    loop {
        let msg = tokio::select! {
            _ = &mut stop => return Ok(ExitCode::SUCCESS),
            m = events.next() => match m {
                Some(m) => m,
                None => bail!("the NATS connection closed"),
            },
        };
        let Ok(event) = serde_json::from_slice::<keyloop_core::LifecycleEvent>(&msg.payload) else {
            continue;
        };
        if g.json {
            output::json_line(&event)?;
        } else {
            output::line(output::lifecycle_row(&event))?;
        }
    }
}
