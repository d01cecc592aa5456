//! `keyloop rotate ID`: ask the control plane for a rotation and wait for `rotated` (or
//! `rotation_failed`).

use super::LifecycleWatch;
use crate::api_client;
use crate::cli::{Global, RotateArgs};
use crate::cmd::credential::parse_id;
use crate::{config, output};
use anyhow::{Result, bail};
use keyloop_core::LifecycleKind;
use keyloop_core::api::{IdRequest, Queued, Verb};
use std::process::ExitCode;

pub(crate) async fn run(g: &Global, args: RotateArgs) -> Result<ExitCode> {
    let id = parse_id(&args.id)?;
    let timeout = super::duration_arg(keyloop_core::duration::WAIT_TIMEOUT, &args.timeout)?;
    let bus = config::connect(g).await?;
    // Subscribed before the request: the first events may follow the reply at once.
    let mut watch = LifecycleWatch::credential(&bus, id.as_str()).await?;
    let queued: Queued =
        api_client::call(g, &bus, Verb::Rotate, &IdRequest { id: id.clone() }).await?;
    if let Some(exit) = super::approvals::held(g, &format!("rotation of {id}"), &queued)? {
        return Ok(exit);
    }
    let op_id = queued.op_id;
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
