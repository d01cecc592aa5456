//! Recording that a credential was used: `last_used_at` and one `used` event per interval.

use super::Cause;
use crate::context::WorkerContext;
use crate::error::Error;
use keyloop_core::{CredentialId, LifecycleData, LifecycleKind};
use keyloop_nats::Change;
use time::OffsetDateTime;
use uuid::Uuid;

/// How often a use is recorded per credential version: uses in between change nothing, so a
/// busy service does not turn every read into an inventory write and an audit event.
pub const USE_RECORD_INTERVAL_SECS: i64 = 60;

/// Records a use of `version` of `credential`: `last_used_at` moves forward (at most once per
/// [`USE_RECORD_INTERVAL_SECS`]) and one `used` event per version and interval is published
/// (its id derives from the interval, so replicas and redeliveries add nothing).
pub async fn record_use(
    ctx: &WorkerContext,
    credential: &CredentialId,
    version: Option<Uuid>,
    actor: Option<String>,
    at: OffsetDateTime,
    cause: &Cause,
) -> Result<(), Error> {
    let window = at.unix_timestamp().div_euclid(USE_RECORD_INTERVAL_SECS);
    let changed = ctx
        .inventory
        .update(credential, |c| {
            let stale = c
                .last_used_at
                .is_none_or(|t| t.unix_timestamp().div_euclid(USE_RECORD_INTERVAL_SECS) < window);
            if stale {
                c.last_used_at = Some(at);
                Ok(Change::Write(true))
            } else {
                Ok(Change::Keep(false))
            }
        })
        .await?;
    if changed {
        let mut data = LifecycleData::new(LifecycleKind::Used, Some(credential.clone()), version);
        data.actor = actor;
        let step = format!(
            "used/{credential}/{}/{window}",
            version.map(|v| v.to_string()).unwrap_or_default()
        );
        cause.publish(ctx, &step, data).await?;
    }
    Ok(())
}
