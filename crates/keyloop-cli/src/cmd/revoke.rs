//! `keyloop revoke ID --reason TEXT`: queue a revocation of every live version (or one) and wait
//! until each is `revoked`.

use super::LifecycleWatch;
use crate::api_client;
use crate::cli::{Global, RevokeArgs};
use crate::cmd::credential::parse_id;
use crate::{config, output};
use anyhow::{Result, bail};
use keyloop_core::api::{IdRequest, Queued, RevokeRequest, Verb};
use keyloop_core::{LifecycleKind, Stage};
use std::process::ExitCode;

pub(crate) async fn run(g: &Global, args: RevokeArgs) -> Result<ExitCode> {
    let id = parse_id(&args.id)?;
    let timeout = super::duration_arg(keyloop_core::duration::WAIT_TIMEOUT, &args.timeout)?;
    if args.reason.trim().is_empty() {
        bail!("--reason must say why (it goes into the audit log)");
    }
    let bus = config::connect(g).await?;
    let cred: keyloop_core::Credential =
        api_client::call(g, &bus, Verb::Show, &IdRequest { id: id.clone() }).await?;
    let expected = match args.version {
        Some(v) => match cred.version(v) {
            None => bail!("credential {id} has no version {v}; see `keyloop credential show {id}`"),
            Some(version) if version.stage == Stage::Revoked => {
                output::line(format_args!("version {v} of {id} is already revoked"))?;
                return Ok(ExitCode::SUCCESS);
            }
            Some(_) => 1,
        },
        None => cred.live_versions().len(),
    };
    if expected == 0 && !args.rotate {
        output::line(format_args!(
            "credential {id} has no live version; nothing to revoke"
        ))?;
        return Ok(ExitCode::SUCCESS);
    }
    // Subscribed before the request: the first events may follow the reply at once.
    let mut watch = LifecycleWatch::credential(&bus, id.as_str()).await?;
    let req = RevokeRequest {
        id: id.clone(),
        version: args.version,
        reason: args.reason.clone(),
        rotate: args.rotate,
    };
    let queued: Queued = api_client::call(g, &bus, Verb::Revoke, &req).await?;
    if let Some(exit) = super::approvals::held(g, &format!("revocation of {id}"), &queued)? {
        return Ok(exit);
    }
    let op_id = queued.op_id;
    if args.no_wait {
        output::line(format_args!(
            "revocation of {id} queued (correlation {op_id})"
        ))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut revoked = 0usize;
    let ours =
        |e: &keyloop_core::LifecycleEvent| e.correlationid.as_deref() == Some(op_id.as_str());
    let last = watch
        .until(
            timeout,
            |e| {
                if !ours(e) {
                    Ok(())
                } else if g.json {
                    output::json_line(e)
                } else {
                    output::line(output::lifecycle_row(e))
                }
            },
            |e| {
                if ours(e) && e.data.kind == LifecycleKind::Revoked {
                    revoked += 1;
                }
                let failed = ours(e)
                    && matches!(
                        e.data.kind,
                        LifecycleKind::RevocationFailed | LifecycleKind::RotationFailed
                    );
                let rotated = ours(e) && e.data.kind == LifecycleKind::Rotated;
                failed || (revoked >= expected && (!args.rotate || rotated))
            },
        )
        .await?;
    if matches!(
        last.data.kind,
        LifecycleKind::RevocationFailed | LifecycleKind::RotationFailed
    ) {
        bail!(
            "{} for {id}: {}; see `keyloop replay --correlation {op_id}`",
            last.data.kind.name(),
            last.data.detail.unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}
