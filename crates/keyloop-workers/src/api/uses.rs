//! The api's answers that are uses of a value: `verify` (is a presented value a live version?)
//! and the records of a use (`used`) or of a dead value presented (`verify_denied`).

use super::{Api, api_error};
use crate::error::Error;
use crate::ops;
use keyloop_core::api::{ApiError, Verb, VerifyReply, VerifyRequest};
use keyloop_core::{CredentialId, LifecycleData, LifecycleKind, Stage};
use keyloop_nats::Change;
use time::OffsetDateTime;
use tracing::warn;

impl Api<'_> {
    /// Whether `req.value` is a live version of `req.id`, for an actor who may use it. A live
    /// one is a use (recorded as a fetch is); any other is recorded as `verify_denied` with the
    /// actor and, when the value is one of this credential's dead versions, which one — so an
    /// incident shows who still presents a revoked or leaked secret. A value that belongs to
    /// nothing, or to something else, is "not one of its versions" and names nothing else.
    pub(super) async fn verify(&self, req: VerifyRequest) -> Result<VerifyReply, ApiError> {
        let cred = self.authorized(Verb::Verify, &req.id).await?;
        let value = keyloop_core::Secret::new(req.value);
        let keys = keyloop_core::Fingerprint::of(&value).lookup_keys();
        drop(value);
        let found = self
            .ctx
            .fingerprints
            .lookup(&keys)
            .await
            .map_err(api_error)?;
        let version = match found {
            Some(keyloop_nats::FingerprintRef::Version {
                credential,
                version,
            }) if credential == req.id => cred.version(version),
            _ => None,
        };
        match version {
            Some(v) if matches!(v.stage, Stage::Current | Stage::Previous) => {
                self.record_fetch(&req.id, v.id).await.map_err(api_error)?;
                Ok(VerifyReply {
                    valid: true,
                    version: Some(v.id),
                    stage: Some(v.stage),
                })
            }
            Some(v) => {
                let detail = format!(
                    "a {} version was presented{}",
                    v.stage.name(),
                    v.revoke_reason
                        .map(|r| format!(" (revoked: {})", r.name()))
                        .unwrap_or_default()
                );
                self.record_verify_denied(&req.id, Some(v.id), Some(v.stage), detail)
                    .await;
                Ok(VerifyReply {
                    valid: false,
                    version: Some(v.id),
                    stage: Some(v.stage),
                })
            }
            None => {
                let detail = "a value that is not one of its versions was presented".to_owned();
                self.record_verify_denied(&req.id, None, None, detail).await;
                Ok(VerifyReply {
                    valid: false,
                    version: None,
                    stage: None,
                })
            }
        }
    }

    /// `verify_denied` for a dead or unknown value, once per actor, version and
    /// `USE_RECORD_INTERVAL_SECS` (the event id dedups a flood of the same attempt). Best
    /// effort: the answer stands even when the record cannot be written, and that is logged.
    async fn record_verify_denied(
        &self,
        id: &CredentialId,
        version: Option<uuid::Uuid>,
        stage: Option<Stage>,
        detail: String,
    ) {
        let window = OffsetDateTime::now_utc()
            .unix_timestamp()
            .div_euclid(ops::USE_RECORD_INTERVAL_SECS);
        let mut data = LifecycleData::new(LifecycleKind::VerifyDenied, Some(id.clone()), version);
        data.stage = stage;
        data.actor = Some(self.actor.to_owned());
        data.detail = Some(detail);
        let which = version.map_or_else(|| "unknown".to_owned(), |v| v.to_string());
        let step = format!("verify_denied/{id}/{which}/{}/{window}", self.actor);
        if let Err(e) = self.cause(None).publish(self.ctx, &step, data).await {
            warn!(error = %e, actor = self.actor, credential = %id, "could not record a denied verification");
        }
        warn!(actor = self.actor, credential = %id, version = ?version, "a value that does not work was presented");
    }

    /// A fetch is a use: `last_used_at` moves (idle revocation counts from it) and `used` is
    /// published with the actor and the version — once per actor, version and
    /// `USE_RECORD_INTERVAL_SECS`, so a service fetching in a loop adds one event a minute and
    /// "who still uses the old version" has an answer.
    pub(super) async fn record_fetch(
        &self,
        id: &CredentialId,
        version: uuid::Uuid,
    ) -> Result<(), Error> {
        let now = OffsetDateTime::now_utc();
        crate::claim::update_credential(self.ctx, id, |c| {
            if c.last_used_at.is_some_and(|t| t >= now) {
                return Ok(Change::Keep(()));
            }
            c.last_used_at = Some(now);
            Ok(Change::Write(()))
        })
        .await?;
        let window = now
            .unix_timestamp()
            .div_euclid(ops::USE_RECORD_INTERVAL_SECS);
        let mut data = LifecycleData::new(LifecycleKind::Used, Some(id.clone()), Some(version));
        data.actor = Some(self.actor.to_owned());
        let step = format!("used/{id}/{version}/{}/{window}", self.actor);
        self.cause(None).publish(self.ctx, &step, data).await
    }
}
