//! `keyloop rotate ID`: queue a rotation and wait for `rotated` (or `rotation_failed`).

use super::LifecycleWatch;
use crate::cli::{Global, RotateArgs};
use crate::cmd::credential::parse_id;
use crate::{config, output};
use anyhow::{Result, bail};
use keyloop_core::event::RotateCommand;
use keyloop_core::{LifecycleKind, RotationReason};
use std::process::ExitCode;

pub(crate) async fn run(g: &Global, args: RotateArgs) -> Result<ExitCode> {
    let id = parse_id(&args.id)?;
    let timeout = super::duration_arg(keyloop_core::duration::WAIT_TIMEOUT, &args.timeout)?;
    let bus = config::connect(g).await?;
    bus.inventory().await?.require(&id).await?;
    let op_id = format!("manual-rotate/{}", uuid::Uuid::now_v7());
    let mut watch = LifecycleWatch::credential(&bus, id.as_str()).await?;
    let cmd = RotateCommand {
        credential: id.clone(),
        reason: RotationReason::Manual,
        op_id: op_id.clone(),
    };
    bus.send_command("keyloop/cli", cmd, Some(op_id.clone()), None)
        .await?;
    if args.no_wait {
        output::line(format_args!(
            "rotation of {id} queued (correlation {op_id})"
        ))?;
        return Ok(ExitCode::SUCCESS);
    }
    let ours =
        |e: &keyloop_core::LifecycleEvent| e.correlationid.as_deref() == Some(op_id.as_str());
    let outcome = watch
        .until(
            timeout,
            |e| {
                if ours(e) && !g.json {
                    output::line(output::lifecycle_row(e))
                } else {
                    Ok(())
                }
            },
            |e| {
                ours(e)
                    && matches!(
                        e.data.kind,
                        LifecycleKind::Rotated | LifecycleKind::RotationFailed
                    )
            },
        )
        .await?;
    if g.json {
        output::json_line(&outcome)?;
    }
    if outcome.data.kind == LifecycleKind::RotationFailed {
        bail!(
            "rotation of {id} failed: {}; see `keyloop credential show {id}` and `keyloop replay --correlation {op_id}`",
            outcome.data.detail.unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}
