//! `keyloop task start|complete`: the orchestrator's side of JIT credentials, and the client of
//! the jit-issuer's request/reply endpoints that `token verify` shares.

use crate::cli::{Global, TaskCommand};
use crate::{config, output};
use anyhow::{Context, Result, bail};
use keyloop_core::event::{CloudEvent, TASK_COMPLETED_TYPE, TaskCompleted};
use keyloop_core::identity::IdentityToken;
use keyloop_core::lease::{IssueReply, IssueRequest, ServiceError};
use keyloop_nats::Bus;
use serde::de::DeserializeOwned;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

pub(crate) async fn run(g: &Global, cmd: TaskCommand) -> Result<ExitCode> {
    match cmd {
        TaskCommand::Start {
            task,
            agent,
            identity_token_file,
            scope,
            ttl,
            wait,
            wait_timeout,
        } => {
            let request = Start {
                task_id: task,
                agent_id: agent,
                identity_token_file,
                scope,
                wait: wait
                    .then(|| {
                        config::duration_flag(keyloop_core::duration::APPROVAL_WAIT, &wait_timeout)
                    })
                    .transpose()?,
            };
            start(g, request, &ttl).await
        }
        TaskCommand::Complete { task } => complete(g, task).await,
    }
}

/// Sends a request to the jit-issuer and decodes the reply, or the service's error.
pub(super) async fn request<T: DeserializeOwned>(
    bus: &Bus,
    subject: String,
    payload: Vec<u8>,
) -> Result<T> {
    request_within(bus, subject, payload, Duration::from_secs(10))
        .await?
        .map_err(|e| anyhow::anyhow!("{} ({})", e.message, e.code))
}

/// [`request`] within `within`, the service's error given back as it came.
async fn request_within<T: DeserializeOwned>(
    bus: &Bus,
    subject: String,
    payload: Vec<u8>,
    within: Duration,
) -> Result<Result<T, ServiceError>> {
    // A jit-issuer that is restarting has no subscription for a moment: "no responders" is
    // retried until the deadline, like a timeout would be.
    let deadline = tokio::time::Instant::now() + within;
    let hint = "is a jit-issuer running (`keyloop up` or `keyloop worker jit-issuer`)?";
    let (span, headers) = keyloop_nats::trace::request_headers(&subject);
    let reply = loop {
        let attempt = tokio::time::timeout_at(
            deadline,
            tracing::Instrument::instrument(
                bus.client.request_with_headers(
                    subject.clone(),
                    headers.clone(),
                    payload.clone().into(),
                ),
                span.clone(),
            ),
        )
        .await;
        match attempt {
            Err(_) => bail!(
                "no reply on {subject} within {} s; {hint}",
                within.as_secs()
            ),
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
        return Ok(Err(err.error));
    }
    serde_json::from_slice(&reply.payload)
        .map(Ok)
        .with_context(|| format!("unexpected reply on {subject}"))
}

/// What `task start` asks for.
struct Start {
    task_id: String,
    agent_id: Option<String>,
    identity_token_file: Option<PathBuf>,
    scope: String,
    /// `--wait`: how long to wait for approvers.
    wait: Option<Duration>,
}

/// The identity token in `path` (`-`: stdin), read now: a projected token is refreshed in
/// place by its platform, so it is read at each call, never cached. Surrounding whitespace (a
/// trailing newline) is not part of it.
fn read_identity_token(path: &Path) -> Result<IdentityToken> {
    let what = "pass the path of a workload identity token (a Kubernetes projected service-account token, a GitHub Actions OIDC token saved to a file, a SPIFFE JWT-SVID) with --identity-token-file or KEYLOOP_IDENTITY_TOKEN_FILE, or `-` for stdin";
    let mut text = String::new();
    if path == Path::new("-") {
        std::io::stdin()
            .read_to_string(&mut text)
            .with_context(|| format!("cannot read the identity token from stdin; {what}"))?;
    } else {
        text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read the identity token file {}; {what}",
                path.display()
            )
        })?;
    }
    let token = text.trim();
    if token.is_empty() {
        bail!(
            "the identity token {} is empty; {what}",
            if path == Path::new("-") {
                "on stdin".to_owned()
            } else {
                format!("file {}", path.display())
            }
        );
    }
    Ok(IdentityToken::new(token.to_owned()))
}

async fn start(g: &Global, ask: Start, ttl: &str) -> Result<ExitCode> {
    // Checked here too (the issuer refuses above the scope's maximum): nothing is sent for a
    // value no scope can accept.
    let ttl = config::duration_flag(keyloop_core::duration::LEASE_TTL, ttl)?;
    let identity_token = ask
        .identity_token_file
        .as_deref()
        .map(read_identity_token)
        .transpose()?;
    let bus = config::connect(g).await?;
    let task_id = ask.task_id;
    let mut req = IssueRequest {
        task_id: task_id.clone(),
        agent_id: ask.agent_id,
        scope: ask.scope,
        ttl_secs: ttl.as_secs(),
        identity_token,
        approval: None,
        wait_secs: None,
    };
    let subject = bus.topology.jit_issue();
    let deadline = ask.wait.map(|w| tokio::time::Instant::now() + w);
    let mut announced = false;
    let reply: IssueReply = loop {
        let within = Duration::from_secs(req.wait_secs.unwrap_or(0) + 10);
        let error =
            match request_within(&bus, subject.clone(), serde_json::to_vec(&req)?, within).await? {
                Ok(reply) => break reply,
                Err(e) => e,
            };
        let (Some(approval), "approval_pending") = (&error.approval, error.code.as_str()) else {
            bail!("{} ({})", error.message, error.code);
        };
        let Some(deadline) = deadline else {
            if g.json {
                output::json_line(&serde_json::json!({
                    "task_id": task_id,
                    "scope": req.scope,
                    "approval": approval,
                    "state": "pending",
                    "message": error.message,
                }))?;
            } else {
                eprintln!("{}", error.message);
            }
            return Ok(ExitCode::from(super::approvals::EXIT_HELD));
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            bail!(
                "approval {approval} for task {task_id} was not decided within --wait-timeout; it may still be granted: run the same command again (see `keyloop approvals show {approval}`)"
            );
        }
        if !announced {
            eprintln!(
                "waiting for approval {approval} (an approver runs `keyloop approvals approve {approval}`)…"
            );
            announced = true;
        }
        req.approval = Some(approval.clone());
        req.wait_secs = Some(left.as_secs().clamp(1, 25));
    };
    if g.json {
        output::json_line(&serde_json::json!({
            "lease_id": reply.lease_id,
            "task_id": task_id,
            "scope": req.scope,
            "tier": reply.tier,
            "login": reply.login,
            "identity": reply.identity,
            "expires_at": output::ts(reply.expires_at),
            "secret": reply.secret,
        }))?;
    } else {
        let login = reply
            .login
            .as_deref()
            .map(|l| format!("; log in to PostgreSQL as {l} with it"))
            .unwrap_or_default();
        let to = reply
            .identity
            .as_ref()
            .map(|i| format!(" to {}", i.actor()))
            .unwrap_or_default();
        eprintln!(
            "lease {} for task {task_id}{to} (scope {}, tier {}) expires {}; the token below is shown once{login}",
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
