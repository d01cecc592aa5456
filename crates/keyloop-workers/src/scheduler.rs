//! scheduler: publishes `<prefix>.schedule.tick` once per window. Every replica publishes every
//! window, with `Nats-Msg-Id` = `tick-<window start>-<window length>`, so however many replicas
//! run, the stream keeps exactly one tick per window (JetStream drops the duplicates), and a
//! replica dying costs nothing.

use crate::error::Error;
use keyloop_core::event::{CloudEvent, SCHEDULE_TICK_TYPE, ScheduleTick};
use keyloop_nats::Bus;
use std::time::Duration;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

const SOURCE: &str = "keyloop/scheduler";

/// The tick of the window containing `now`.
pub fn tick_for(now: OffsetDateTime, window: Duration) -> CloudEvent<ScheduleTick> {
    let secs = window.as_secs().max(1);
    let window_start = now.unix_timestamp().div_euclid(secs as i64) * secs as i64;
    let id = format!("tick-{window_start}-{secs}");
    CloudEvent::new(
        id.clone(),
        SOURCE,
        SCHEDULE_TICK_TYPE,
        ScheduleTick {
            window_start,
            window_secs: secs,
        },
    )
    .caused_by(Some(id), None)
}

/// Publishes one tick per `window` (at least one second) until `shutdown`.
pub async fn run(bus: Bus, window: Duration, shutdown: CancellationToken) -> Result<(), Error> {
    let window = window.max(Duration::from_secs(1));
    info!(window_secs = window.as_secs(), "scheduler ticking");
    loop {
        let now = OffsetDateTime::now_utc();
        let tick = tick_for(now, window);
        match bus
            .publish_event(&bus.topology.schedule_tick(), &tick)
            .await
        {
            Ok(ack) => debug!(tick = %tick.id, duplicate = ack.duplicate, "tick published"),
            // The next window's tick carries on; the sweeper catches up on everything due.
            Err(e) => warn!(tick = %tick.id, error = %e, "could not publish tick"),
        }
        let next = tick.data.window_start + window.as_secs() as i64;
        let wait = (OffsetDateTime::from_unix_timestamp(next).unwrap_or(now)
            - OffsetDateTime::now_utc())
        .try_into()
        .unwrap_or(Duration::ZERO);
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(wait) => {}
        }
    }
    info!("scheduler stopped");
    Ok(())
}
