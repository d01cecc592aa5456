//! `keyloop tick`: publishes one `schedule.tick` now, so the sweeper acts on everything due
//! without waiting for the scheduler's next window. Its id is unique, so it is never dropped as
//! a duplicate of a scheduled tick.

use crate::cli::Global;
use crate::{config, output};
use anyhow::Result;
use keyloop_core::event::{CloudEvent, SCHEDULE_TICK_TYPE, ScheduleTick};
use std::process::ExitCode;

pub(crate) async fn run(g: &Global) -> Result<ExitCode> {
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
