//! `token.verify`: whether a token (a lease's, or a managed credential's value) works now, by
//! its fingerprint; a valid use is recorded, at most once per lease or version per interval.
//! A retried verification is harmless: the `used` event of an interval has one id.

use super::SOURCE;
use crate::context::WorkerContext;
use crate::error::Error;
use crate::ops::{self, Cause};
use keyloop_core::event::{LifecycleData, LifecycleKind, lease_event};
use keyloop_core::lease::VerifyReply;
use keyloop_core::{Fingerprint, Secret, Stage};
use keyloop_nats::FingerprintRef;
use std::collections::HashMap;
use std::sync::Mutex;
use time::OffsetDateTime;
use uuid::Uuid;

/// Remembers which leases had a `used` event in the current interval, so a busy service
/// verifying the same token does not publish one per request.
#[derive(Debug, Default)]
pub struct UseLimiter {
    last: Mutex<HashMap<Uuid, i64>>,
}

impl UseLimiter {
    fn first_in_window(&self, id: Uuid, window: i64) -> bool {
        let mut last = self.last.lock().expect("use limiter lock");
        if last.len() > 100_000 {
            last.retain(|_, w| *w >= window);
        }
        last.insert(id, window) != Some(window)
    }
}

/// Checks a token (a lease's, or a managed credential's value): valid when its lease is active
/// and unexpired, or its version is current or previous. A valid use is recorded.
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
    match ctx.fingerprints.lookup(&keys).await? {
        None => Ok(VerifyReply::invalid()),
        Some(FingerprintRef::Lease { lease }) => {
            let Some(lease) = ctx.inventory.lease(lease).await? else {
                return Ok(VerifyReply::invalid());
            };
            if !lease.is_valid_at(now) {
                return Ok(VerifyReply::invalid());
            }
            if limiter.first_in_window(lease.id, window) {
                let mut data = LifecycleData::new(LifecycleKind::Used, None, None);
                data.actor = Some("keyloop.token.verify".into());
                let event =
                    lease_event(SOURCE, &format!("used/{}/{window}", lease.id), data, &lease)
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
        Some(FingerprintRef::Version {
            credential,
            version,
        }) => {
            let Some((cred, _)) = ctx.inventory.get(&credential).await? else {
                return Ok(VerifyReply::invalid());
            };
            let Some(v) = cred.version(version) else {
                return Ok(VerifyReply::invalid());
            };
            if !matches!(v.stage, Stage::Current | Stage::Previous) {
                return Ok(VerifyReply::invalid());
            }
            if limiter.first_in_window(version, window) {
                let cause = Cause {
                    source: SOURCE.into(),
                    ..Cause::default()
                };
                ops::record_use(
                    ctx,
                    &credential,
                    Some(version),
                    Some("keyloop.token.verify".into()),
                    now,
                    &cause,
                )
                .await?;
            }
            Ok(VerifyReply {
                valid: true,
                credential: Some(credential.to_string()),
                version: Some(version),
                stage: Some(v.stage),
                ..VerifyReply::invalid()
            })
        }
    }
}
