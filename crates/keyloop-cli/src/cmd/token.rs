//! `keyloop token verify`: a service's side of JIT credentials. Reads a JIT token on stdin,
//! never from the command line where process listings show it, and asks the jit-issuer whether
//! it works now; the exit code says so. A managed credential's value is checked with
//! `keyloop credential verify ID`, through the control plane.

use super::task::request;
use crate::cli::{Global, TokenCommand};
use crate::{config, output};
use anyhow::{Context, Result, bail};
use keyloop_core::lease::VerifyReply;
use std::io::BufRead;
use std::process::ExitCode;

/// Exit code of `token verify` for a token that does not work.
const EXIT_INVALID: u8 = 2;

pub(crate) async fn run(g: &Global, cmd: TokenCommand) -> Result<ExitCode> {
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
        output::line(
            "invalid: not a live JIT token (unknown, revoked or expired; a managed credential's value is checked with `keyloop credential verify ID`)",
        )?;
    }
    Ok(if reply.valid {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_INVALID)
    })
}
