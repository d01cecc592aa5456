//! `token.verify`: whether a JIT token works now, by its fingerprint; a valid use is recorded,
//! and so is a dead lease's token tried again (`verify_denied`), each at most once per lease per
//! interval. A retried verification is harmless: the event of an interval has one id.

use super::SOURCE;
use crate::context::WorkerContext;
use crate::error::Error;
use crate::ops;
use keyloop_core::event::{LifecycleData, LifecycleKind, lease_event};
use keyloop_core::lease::LeaseState;
use keyloop_core::lease::VerifyReply;
use keyloop_core::{Fingerprint, Secret};
use keyloop_nats::FingerprintRef;
use std::collections::HashMap;
use std::sync::Mutex;
use time::OffsetDateTime;
use uuid::Uuid;

/// What a token's verification recorded in the current interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Recorded {
    /// A `used` event.
    Use,
    /// A `verify_denied` event.
    Denied,
}

/// Remembers which leases had a `used` (or `verify_denied`) event in the current interval, so
/// a busy service verifying the same token does not publish one per request.
#[derive(Debug, Default)]
pub struct UseLimiter {
    last: Mutex<HashMap<(Uuid, Recorded), i64>>,
}

impl UseLimiter {
    fn first_in_window(&self, id: Uuid, what: Recorded, window: i64) -> bool {
        let mut last = self.last.lock().expect("use limiter lock");
        if last.len() > 100_000 {
            last.retain(|_, w| *w >= window);
        }
        last.insert((id, what), window) != Some(window)
    }
}

/// Checks a JIT token: valid when its lease is active and unexpired; a valid use is recorded.
/// A revoked or expired lease's token is refused and recorded as `verify_denied` on the lease,
/// so incident response sees that a dead token was still tried. A managed credential's value
/// is not answered here (it is "invalid", and nothing is said about it): whether a value is a
/// live version is an authorized request to the control plane (`keyloop credential verify`),
/// which knows who asks.
pub async fn verify(
    ctx: &WorkerContext,
    token: &Secret,
    now: OffsetDateTime,
    limiter: &UseLimiter,
) -> Result<VerifyReply, Error> {
    let keys = Fingerprint::of(token).lookup_keys();
    let window = now
        .unix_timestamp()
        .div_euclid(ops::USE_RECORD_INTERVAL_SECS);
    let Some(FingerprintRef::Lease { lease }) = ctx.fingerprints.lookup(&keys).await? else {
        return Ok(VerifyReply::invalid());
    };
    let Some(lease) = ctx.inventory.lease(lease).await? else {
        return Ok(VerifyReply::invalid());
    };
    if !lease.is_valid_at(now) {
        if limiter.first_in_window(lease.id, Recorded::Denied, window) {
            let mut data = LifecycleData::new(LifecycleKind::VerifyDenied, None, None);
            data.detail = Some(format!(
                "the token of a {} lease was presented to keyloop.token.verify (by an orchestrator or a service it gave the token to; the request is not attributed)",
                match lease.state {
                    LeaseState::Revoked => "revoked",
                    LeaseState::Active | LeaseState::Expired => "expired",
                }
            ));
            let event = lease_event(
                SOURCE,
                &format!("verify_denied/{}/{window}", lease.id),
                data,
                &lease,
            )
            .caused_by(Some(lease.task_id.clone()), None);
            ctx.outbox.publish_lifecycle(&event).await?;
        }
        return Ok(VerifyReply::invalid());
    }
    if limiter.first_in_window(lease.id, Recorded::Use, window) {
        let mut data = LifecycleData::new(LifecycleKind::Used, None, None);
        data.actor = Some("keyloop.token.verify".into());
        let event = lease_event(SOURCE, &format!("used/{}/{window}", lease.id), data, &lease)
            .caused_by(Some(lease.task_id.clone()), None);
        ctx.outbox.publish_lifecycle(&event).await?;
    }
    Ok(VerifyReply {
        valid: true,
        lease_id: Some(lease.id),
        scope: Some(lease.scope.clone()),
        expires_at: Some(lease.expires_at),
        ..VerifyReply::invalid()
    })
}
