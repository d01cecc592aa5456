//! `keyloop task start|complete`, `keyloop token verify`, `keyloop tick`: the orchestrator's and
//! the service's side of JIT credentials, and a manual schedule tick.

use crate::cli::{Global, TaskCommand, TokenCommand};
use crate::{config, output};
use anyhow::{Context, Result, bail};
use keyloop_core::event::{
    CloudEvent, SCHEDULE_TICK_TYPE, ScheduleTick, TASK_COMPLETED_TYPE, TaskCompleted,
};
use keyloop_core::lease::{IssueReply, IssueRequest, ServiceError, VerifyReply};
use keyloop_nats::Bus;
use serde::de::DeserializeOwned;
use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::Duration;

/// Exit code of `token verify` for a token that does not work.
const EXIT_INVALID: u8 = 2;

pub(crate) async fn run(g: &Global, cmd: TaskCommand) -> Result<ExitCode> {
    match cmd {
        TaskCommand::Start {
            task,
            agent,
            scope,
            ttl,
        } => start(g, task, agent, scope, &ttl).await,
        TaskCommand::Complete { task } => complete(g, task).await,
    }
}

/// Sends a request and decodes the reply, or the service's error.
async fn request<T: DeserializeOwned>(bus: &Bus, subject: String, payload: Vec<u8>) -> Result<T> {
    // A jit-issuer that is restarting has no subscription for a moment: "no responders" is
    // retried until the deadline, like a timeout would be.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let hint = "is a jit-issuer running (`keyloop up` or `keyloop worker jit-issuer`)?";
    let reply = loop {
        let attempt = tokio::time::timeout_at(
            deadline,
            bus.client.request(subject.clone(), payload.clone().into()),
        )
        .await;
        match attempt {
            Err(_) => bail!("no reply on {subject} within 10 s; {hint}"),
            Ok(Ok(reply)) => break reply,
            Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                if tokio::time::Instant::now() + Duration::from_millis(50) >= deadline {
                    bail!("nothing serves {subject}; {hint}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(Err(e)) => bail!("request on {subject} failed: {e}; {hint}"),
        }
    };
    #[derive(serde::Deserialize)]
    struct ErrorReply {
        error: ServiceError,
    }
    if let Ok(err) = serde_json::from_slice::<ErrorReply>(&reply.payload) {
        bail!("{} ({})", err.error.message, err.error.code);
    }
    serde_json::from_slice(&reply.payload).with_context(|| format!("unexpected reply on {subject}"))
}

async fn start(
    g: &Global,
    task_id: String,
    agent_id: String,
    scope: String,
    ttl: &str,
) -> Result<ExitCode> {
    // Checked here too (the issuer refuses above the scope's maximum): nothing is sent for a
    // value no scope can accept.
    let ttl = config::duration_flag(keyloop_core::duration::LEASE_TTL, ttl)?;
    let bus = config::connect(g).await?;
    let req = IssueRequest {
        task_id: task_id.clone(),
        agent_id,
        scope,
        ttl_secs: ttl.as_secs(),
    };
    let reply: IssueReply =
        request(&bus, bus.topology.jit_issue(), serde_json::to_vec(&req)?).await?;
    if g.json {
        output::json_line(&serde_json::json!({
            "lease_id": reply.lease_id,
            "task_id": task_id,
            "scope": req.scope,
            "tier": reply.tier,
            "login": reply.login,
            "expires_at": output::ts(reply.expires_at),
            "secret": reply.secret,
        }))?;
    } else {
        let login = reply
            .login
            .as_deref()
            .map(|l| format!("; log in to PostgreSQL as {l} with it"))
            .unwrap_or_default();
        eprintln!(
            "lease {} for task {task_id} (scope {}, tier {}) expires {}; the token below is shown once{login}",
            reply.lease_id,
            req.scope,
            reply.tier.name(),
            output::ts(reply.expires_at)
        );
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", reply.secret)
            .and_then(|()| out.flush())
            .map_err(output::stdout_error)?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn complete(g: &Global, task_id: String) -> Result<ExitCode> {
    let bus = config::connect(g).await?;
    let id = format!(
        "task-completed-{}",
        keyloop_core::event::stable_id(&task_id)
    );
    let event = CloudEvent::new(
        id,
        "keyloop/cli",
        TASK_COMPLETED_TYPE,
        TaskCompleted {
            task_id: task_id.clone(),
        },
    )
    .caused_by(Some(task_id.clone()), None);
    let ack = bus
        .publish_event(&bus.topology.task_completed(), &event)
        .await?;
    if g.json {
        output::json_line(&serde_json::json!({"task_id": task_id, "duplicate": ack.duplicate}))?;
    } else if ack.duplicate {
        output::line(format_args!("task {task_id} was already marked completed"))?;
    } else {
        output::line(format_args!(
            "task {task_id} completed; its leases are being revoked (follow with `keyloop replay --correlation {task_id}`)"
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn token(g: &Global, cmd: TokenCommand) -> Result<ExitCode> {
    let TokenCommand::Verify = cmd;
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the token from stdin")?;
    let token = line.trim();
    if token.is_empty() {
        bail!("no token on stdin; pipe it in, e.g. `printf %s \"$TOKEN\" | keyloop token verify`");
    }
    let bus = config::connect(g).await?;
    let payload = serde_json::to_vec(&serde_json::json!({ "token": token }))?;
    drop(line);
    let reply: VerifyReply = request(&bus, bus.topology.token_verify(), payload).await?;
    if g.json {
        output::json_line(&reply)?;
    } else if reply.valid {
        match (&reply.lease_id, &reply.credential) {
            (Some(lease), _) => output::line(format_args!(
                "valid: lease {lease}, scope {}, expires {}",
                reply.scope.as_deref().unwrap_or("?"),
                reply.expires_at.map(output::ts).unwrap_or_default()
            ))?,
            (None, Some(cred)) => output::line(format_args!(
                "valid: credential {cred}, version {}, {}",
                reply.version.map(|v| v.to_string()).unwrap_or_default(),
                reply.stage.map(|s| s.name()).unwrap_or("?")
            ))?,
            (None, None) => output::line("valid")?,
        }
    } else {
        output::line("invalid: unknown, revoked or expired")?;
    }
    Ok(if reply.valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_INVALID)
    })
}

pub(crate) async fn tick(g: &Global) -> Result<ExitCode> {
    let bus = config::connect(g).await?;
    let now = time::OffsetDateTime::now_utc();
    let id = format!("tick-manual-{}", uuid::Uuid::now_v7());
    let event = CloudEvent::new(
        id.clone(),
        "keyloop/cli",
        SCHEDULE_TICK_TYPE,
        ScheduleTick {
            window_start: now.unix_timestamp(),
            window_secs: 0,
        },
    )
    .caused_by(Some(id.clone()), None);
    bus.publish_event(&bus.topology.schedule_tick(), &event)
        .await?;
    if g.json {
        output::json_line(&serde_json::json!({"tick": id}))?;
    } else {
        output::line(format_args!(
            "published tick {id}; the sweeper acts on everything due now"
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}
