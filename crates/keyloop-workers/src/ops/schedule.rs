//! What a rotation files with the sweeper: the next rotation and the end of the grace.

use crate::context::WorkerContext;
use crate::error::{Error, ErrorKind};
use keyloop_core::{Credential, CredentialId};
use keyloop_nats::DueItem;
use time::OffsetDateTime;
use uuid::Uuid;

/// After a rotation: the next one falls due at `max_age`, and the demoted version's grace ends
/// at `grace`. Idempotent.
pub async fn schedule_after_rotation(
    ctx: &WorkerContext,
    credential: &Credential,
    demoted: Option<Uuid>,
    now: OffsetDateTime,
) -> Result<(), Error> {
    if let Some(max_age) = credential.policy.max_age_secs {
        let activated = credential
            .current()
            .and_then(|v| v.activated_at)
            .unwrap_or(now);
        ctx.due
            .schedule(
                DueItem::Rotate {
                    credential: credential.id.clone(),
                },
                due_after(&credential.id, activated, max_age)?,
                now,
            )
            .await?;
    }
    if let Some(version) = demoted {
        let demoted_at = credential
            .version(version)
            .and_then(|v| v.demoted_at)
            .unwrap_or(now);
        let item = DueItem::Retire {
            credential: credential.id.clone(),
            version,
        };
        ctx.due
            .schedule(
                item,
                due_after(&credential.id, demoted_at, credential.policy.grace_secs)?,
                now,
            )
            .await?;
    }
    Ok(())
}

/// `at` plus `secs` of a credential's policy; a policy so far out of range that the sum
/// overflows is refused (registration validates policies; this guards records from elsewhere).
pub(crate) fn due_after(
    id: &CredentialId,
    at: OffsetDateTime,
    secs: u64,
) -> Result<OffsetDateTime, Error> {
    keyloop_core::duration::checked_after(at, secs).ok_or_else(|| {
        Error::msg(
            ErrorKind::Permanent,
            format!("credential {id}: a policy duration of {secs} s is out of range"),
        )
    })
}
