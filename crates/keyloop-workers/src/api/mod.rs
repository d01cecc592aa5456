//! api: the control plane. Serves `<prefix>.api.<actor>.<verb>` request/reply as the NATS
//! service `<prefix>-api`, in the queue group `api`, so an operator's CLI or a service needs only
//! its NATS login: the master key and the backends' admin credentials stay with the workers.
//!
//! The actor is the subject's `<actor>` token. A secured server confines each user to
//! publishing under its own name (`deploy/nats/permissions.conf`), which makes the actor proved;
//! on an open development server anyone can claim any name. Who may do what is decided by the
//! policy engine (`keyloop_core::policy`) for every request; a refused request gets `forbidden`
//! and a `denied` lifecycle event (who, what, and the policies that decided). A request the
//! policy allows only after an approval is refused with `approval_required` for now. Every
//! command the api sends carries the actor, and so does every lifecycle event it causes.
//!
//! `uses.rs`: `verify` and the records of a use.
//!
//! Requests are idempotent where a retry can repeat them: registering again finishes the same
//! registration; a retried rotate or revoke is a new operation id, which is harmless (a second
//! rotation, or a revocation that finds nothing live).

use crate::context::WorkerContext;
use crate::error::{Error, ErrorKind};
use crate::ops::{self, Cause, Registration};
use async_nats::service::{Request, ServiceExt};
use futures::StreamExt;
mod actions;
mod approvals;
mod dlq;
mod uses;

use keyloop_core::JitPolicy;
use keyloop_core::api::{
    ApiError, ApiReply, FetchReply, FetchRequest, IdRequest, RegisterRequest, UpdateRequest, Verb,
};
use keyloop_core::policy::{
    CredentialAttrs, Decision, Outcome, PolicyEngine, PolicyRequest, Principal, RequestContext,
    Resource, Source,
};
use keyloop_core::{Credential, CredentialId, LifecycleData, LifecycleKind, Stage};
use keyloop_nats::Change;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use time::OffsetDateTime;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The source of what the api publishes.
pub const SOURCE: &str = "keyloop/api";
/// The queue group of the api's replicas.
pub const QUEUE_GROUP: &str = "api";
/// Largest request accepted; a registration is well under it.
const MAX_REQUEST_BYTES: usize = 16 * 1024;
/// Requests handled at once per replica.
const MAX_IN_FLIGHT: usize = 64;

/// The service name: `<prefix>-api`, in the characters a service name allows.
pub fn service_name(topology: &keyloop_nats::Topology) -> String {
    topology.service_name("api")
}

/// Serves the control plane until `shutdown`, then answers the requests in hand.
pub async fn serve(
    ctx: Arc<WorkerContext>,
    engine: Arc<PolicyEngine>,
    scopes: JitPolicy,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let scopes = Arc::new(scopes);
    let client = ctx.bus()?.client.clone();
    let name = service_name(&ctx.topology);
    let subject = ctx.topology.api_requests();
    let service = client
        .service_builder()
        .description("keyloop control plane: <prefix>.api.<actor>.<verb>")
        .queue_group(QUEUE_GROUP)
        .start(&name, env!("CARGO_PKG_VERSION"))
        .await
        .map_err(|e| {
            Error::new(
                ErrorKind::Transient,
                format!("start the NATS service {name}"),
                e,
            )
        })?;
    let mut requests = service
        .endpoint_builder()
        .name("api")
        .add(subject.clone())
        .await
        .map_err(|e| Error::new(ErrorKind::Transient, format!("subscribe to {subject}"), e))?;
    if let Err(e) = client.flush().await {
        warn!(error = %e, "could not confirm the subscription with the server; it is sent again on reconnect");
    }
    info!(%subject, group = QUEUE_GROUP, service = %name, "api serving");
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut tasks = tokio::task::JoinSet::new();
    let take = |request: Request, tasks: &mut tokio::task::JoinSet<()>| {
        let (ctx, engine, scopes, permits) =
            (ctx.clone(), engine.clone(), scopes.clone(), permits.clone());
        let span = keyloop_nats::trace::request_span(
            request.message.subject.as_str(),
            request.message.headers.as_ref(),
        );
        tasks.spawn(tracing::Instrument::instrument(
            async move {
                let Ok(_permit) = permits.acquire_owned().await else {
                    return;
                };
                let api = Shared {
                    ctx: &ctx,
                    engine: &engine,
                    scopes: &scopes,
                };
                let reply = answer(api, &request).await.unwrap_or_else(|e| e);
                if let Err(e) = request.respond(Ok(reply.into())).await {
                    warn!(error = %e, "could not send the reply; the requester will time out");
                }
            },
            span,
        ));
    };
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            next = requests.next() => match next {
                Some(request) => take(request, &mut tasks),
                None => break,
            },
        }
        while tasks.try_join_next().is_some() {}
    }
    let _ = requests.stop().await;
    let _ = service.stop().await;
    while let Some(request) = requests.next().await {
        take(request, &mut tasks);
    }
    while tasks.join_next().await.is_some() {}
    // The replies are in the client's write buffer: send them before this process goes, or a
    // request answered in its last moment never reaches its requester.
    if let Some(bus) = &ctx.bus
        && let Err(e) = bus.client.flush().await
    {
        warn!(error = %e, "could not flush the last replies before stopping");
    }
    info!("api stopped serving");
    Ok(())
}

/// The reply to one request, as JSON: `{"ok": …}` or `{"error": {code, message}}` (the `Err`
/// of a request that could not even be read).
async fn answer(shared: Shared<'_>, request: &Request) -> Result<Vec<u8>, Vec<u8>> {
    let ctx = shared.ctx;
    let subject = request.message.subject.as_str();
    let Some((actor, verb)) = ctx.topology.api_parts(subject) else {
        return Err(reply::<()>(Err(ApiError::new(
            "bad_request",
            "not an api subject",
        ))));
    };
    let Some(verb) = Verb::parse(verb) else {
        return Err(reply::<()>(Err(ApiError::new(
            "bad_request",
            format!(
                "unknown verb; verbs: {}",
                Verb::ALL.map(Verb::name).join(", ")
            ),
        ))));
    };
    let payload = &request.message.payload;
    if payload.len() > MAX_REQUEST_BYTES {
        return Err(reply::<()>(Err(ApiError::new(
            "bad_request",
            format!(
                "request of {} bytes is over the {MAX_REQUEST_BYTES}-byte limit",
                payload.len()
            ),
        ))));
    }
    let api = Api {
        ctx,
        engine: shared.engine,
        scopes: shared.scopes,
        actor,
    };
    Ok(match verb {
        Verb::Register => reply(api.register(decode(payload)?).await),
        Verb::Update => reply(api.update(decode(payload)?).await),
        Verb::Retire => reply(api.retire(decode(payload)?).await),
        Verb::List => reply(api.list().await),
        Verb::Show => reply(api.show(decode(payload)?).await),
        Verb::Rotate => reply(api.rotate(decode(payload)?).await),
        Verb::Revoke => reply(api.revoke(decode(payload)?).await),
        Verb::Fetch => reply(api.fetch(decode(payload)?).await),
        Verb::Verify => reply(api.verify(decode(payload)?).await),
        Verb::Approvals => reply(api.approvals(decode(payload)?).await),
        Verb::Approval => reply(api.approval(decode(payload)?).await),
        Verb::Approve => reply(api.approve(decode(payload)?).await),
        Verb::Deny => reply(api.deny(decode(payload)?).await),
        Verb::DlqRetry => reply(api.dlq_retry(decode(payload)?).await),
        Verb::DlqPurge => reply(api.dlq_purge(decode(payload)?).await),
    })
}

fn reply<T: Serialize>(result: Result<T, ApiError>) -> Vec<u8> {
    serde_json::to_vec(&ApiReply::from(result)).unwrap_or_else(|_| {
        br#"{"error":{"code":"failed","message":"cannot encode the reply"}}"#.to_vec()
    })
}

/// Decodes a request body; a malformed one is answered with `bad_request` naming the position,
/// never the content (a pasted secret must not come back).
fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, Vec<u8>> {
    serde_json::from_slice(payload).map_err(|e| {
        reply::<()>(Err(ApiError::new(
            "bad_request",
            format!(
                "malformed request at line {} column {} (see keyloop_core::api for its shape)",
                e.line(),
                e.column()
            ),
        )))
    })
}

/// A worker error as the requester sees it.
fn api_error(e: Error) -> ApiError {
    let code = match e.kind() {
        ErrorKind::NotFound => "not_found",
        ErrorKind::AlreadyExists => "already_exists",
        ErrorKind::Busy => "busy",
        ErrorKind::Transient => "unavailable",
        ErrorKind::Permanent => "failed",
    };
    ApiError::new(code, e.to_string())
}

/// What every request of a replica shares.
#[derive(Clone, Copy)]
struct Shared<'a> {
    ctx: &'a WorkerContext,
    engine: &'a PolicyEngine,
    scopes: &'a JitPolicy,
}

/// One request, by one proved actor.
struct Api<'a> {
    ctx: &'a WorkerContext,
    engine: &'a PolicyEngine,
    /// The JIT scopes, for deciding approvals of JIT issues.
    scopes: &'a JitPolicy,
    actor: &'a str,
}

impl Api<'_> {
    fn cause(&self, correlation: Option<String>) -> Cause {
        Cause {
            source: SOURCE.into(),
            correlation,
            causation: None,
            batch: None,
            actor: Some(self.actor.to_owned()),
        }
    }

    /// What the policy says about the actor doing `verb` to `resource`.
    fn decide(&self, verb: Verb, resource: Resource<'_>) -> Decision {
        let decision = self.engine.decide(&PolicyRequest {
            principal: Principal::actor(self.actor),
            action: verb.into(),
            resource,
            context: RequestContext::new(OffsetDateTime::now_utc(), Source::Api),
        });
        if !decision.errors.is_empty() {
            warn!(actor = self.actor, verb = verb.name(), errors = ?decision.errors, "policies skipped: they could not be evaluated for this request");
        }
        decision
    }

    /// Refuses what the policy does not allow now: `forbidden` for a deny, recorded as
    /// `denied` (who, what, the deciding policies; never a value); `approval_required` for a
    /// request the policy allows only after an approval.
    async fn refuse(
        &self,
        verb: Verb,
        credential: Option<&CredentialId>,
        decision: Option<&Decision>,
    ) -> ApiError {
        let what = credential.map_or_else(|| "credentials".to_owned(), |c| c.to_string());
        if let Some(Outcome::Approve(need)) = decision.map(|d| &d.outcome) {
            return ApiError::new(
                "approval_required",
                format!(
                    "{} {what} needs {} under policy {}, and a {} request cannot be held for one (only rotate, revoke and retire are); ask an operator to change the workers' --policy",
                    verb.name(),
                    need.describe(),
                    decision.map(Decision::policies_text).unwrap_or_default(),
                    verb.name()
                ),
            );
        }
        let step = format!("denied/{}", uuid::Uuid::now_v7());
        let mut data = LifecycleData::new(LifecycleKind::Denied, credential.cloned(), None);
        data.detail = Some(format!("{} refused", verb.name()));
        if let Some(d) = decision {
            data.policies.clone_from(&d.policies);
        }
        if let Err(e) = self.cause(None).publish(self.ctx, &step, data).await {
            warn!(error = %e, actor = self.actor, "could not record a denied request");
        }
        warn!(actor = self.actor, verb = verb.name(), credential = ?credential, policies = ?decision.map(|d| &d.policies), "request refused");
        ApiError::new(
            "forbidden",
            format!(
                "{} may not {} {what}; ask an operator (the owner and consumers of a credential are set with `keyloop credential update`; who may do what is the workers' --policy)",
                self.actor,
                verb.name(),
            ),
        )
    }

    /// The credential, once the actor may `verb` it now. A credential that does not exist is
    /// `not_found` to an admin and `forbidden` to anyone else, as one they may not see is.
    async fn authorized(&self, verb: Verb, id: &CredentialId) -> Result<Credential, ApiError> {
        match self.ctx.inventory.get(id).await.map_err(api_error)? {
            Some((cred, _)) => {
                let decision = self.decide(verb, Resource::Credential((&cred).into()));
                if decision.allowed_now() {
                    Ok(cred)
                } else {
                    Err(self.refuse(verb, Some(id), Some(&decision)).await)
                }
            }
            None if self.engine.is_admin(self.actor) => Err(ApiError::new(
                "not_found",
                format!("credential {id} is not registered (see `keyloop credential list`)"),
            )),
            None => Err(self.refuse(verb, Some(id), None).await),
        }
    }

    /// The credential, once the actor may `verb` it now or after an approval: with the
    /// decision when the policy asks for one (the caller holds the request).
    async fn authorized_or_held(
        &self,
        verb: Verb,
        id: &CredentialId,
    ) -> Result<(Credential, Option<Decision>), ApiError> {
        if let Some((cred, _)) = self.ctx.inventory.get(id).await.map_err(api_error)? {
            let decision = self.decide(verb, Resource::Credential((&cred).into()));
            if let Outcome::Approve(_) = decision.outcome {
                return Ok((cred, Some(decision)));
            }
        }
        Ok((self.authorized(verb, id).await?, None))
    }

    async fn register(&self, req: RegisterRequest) -> Result<Credential, ApiError> {
        let to_be = CredentialAttrs {
            id: &req.id,
            owner: req.policy.owner.as_deref(),
            consumers: &req.consumers,
            blast_radius: req.policy.blast_radius,
            tags: &req.policy.tags,
            store: req.store,
            target: req.target,
            retired: false,
        };
        let decision = self.decide(Verb::Register, Resource::Credential(to_be));
        if !decision.allowed_now() {
            return Err(self
                .refuse(Verb::Register, Some(&req.id), Some(&decision))
                .await);
        }
        let registration = Registration {
            id: req.id.clone(),
            store: req.store,
            target: req.target,
            policy: req.policy,
            settings: req.settings,
        };
        let registered = ops::register(self.ctx, registration, &self.cause(None))
            .await
            .map_err(api_error)?;
        if !registered.warnings.is_empty() {
            warn!(credential = %req.id, warnings = ?registered.warnings, "registered with warnings");
        }
        if req.consumers.is_empty() {
            return Ok(registered.credential);
        }
        let consumers = req.consumers.clone();
        crate::claim::update_credential(self.ctx, &req.id, |c| {
            c.consumers.clone_from(&consumers);
            Ok(Change::Write(c.clone()))
        })
        .await
        .map_err(api_error)
    }

    async fn update(&self, req: UpdateRequest) -> Result<Credential, ApiError> {
        self.authorized(Verb::Update, &req.id).await?;
        crate::claim::update_credential(self.ctx, &req.id, |c| {
            if let Some(owner) = &req.owner {
                c.policy.owner = (!owner.is_empty()).then(|| owner.clone());
            }
            for add in &req.add_consumers {
                if !c.consumers.contains(add) {
                    c.consumers.push(add.clone());
                }
            }
            c.consumers.retain(|x| !req.remove_consumers.contains(x));
            Ok(Change::Write(c.clone()))
        })
        .await
        .map_err(api_error)
    }

    /// The credentials the actor may `list`, once it may list the inventory at all.
    async fn list(&self) -> Result<Vec<Credential>, ApiError> {
        let decision = self.decide(Verb::List, Resource::Inventory);
        if !decision.allowed_now() {
            return Err(self.refuse(Verb::List, None, Some(&decision)).await);
        }
        let all = self.ctx.inventory.list().await.map_err(api_error)?;
        Ok(all
            .into_iter()
            .filter(|c| {
                self.decide(Verb::List, Resource::Credential(c.into()))
                    .allowed_now()
            })
            .collect())
    }

    async fn show(&self, req: IdRequest) -> Result<Credential, ApiError> {
        self.authorized(Verb::Show, &req.id).await
    }

    /// The value of the current version (or the previous one in its grace), once, in the
    /// reply; the use is recorded with the actor and the version before it is handed out.
    async fn fetch(&self, req: FetchRequest) -> Result<FetchReply, ApiError> {
        let cred = self.authorized(Verb::Fetch, &req.id).await?;
        let stage = if req.previous {
            Stage::Previous
        } else {
            Stage::Current
        };
        let Some(version) = cred.in_stage(stage) else {
            return Err(ApiError::new(
                "not_found",
                format!(
                    "credential {} has no {} version (revoked and not yet rotated, or retired); see `keyloop credential show {}`",
                    req.id,
                    stage.name(),
                    req.id
                ),
            ));
        };
        let store = self.ctx.backends.store(cred.store).map_err(api_error)?;
        let value = store
            .get(&cred, version.id)
            .await
            .map_err(|e| api_error(Error::backend(e, "read the value")))?
            .ok_or_else(|| {
                ApiError::new(
                    "not_found",
                    format!(
                        "credential {}: the value of version {} is gone from its store (revoked just now?)",
                        req.id, version.id
                    ),
                )
            })?;
        self.record_fetch(&req.id, version.id)
            .await
            .map_err(api_error)?;
        Ok(FetchReply {
            version: version.id,
            value: value.expose().to_owned(),
        })
    }
}

fn retired(id: &CredentialId) -> ApiError {
    ApiError::new(
        "retired",
        format!("credential {id} is retired; register a new credential for its role or secret"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_is_named_after_the_prefix() {
        assert_eq!(
            service_name(&keyloop_nats::Topology::default()),
            "keyloop-api"
        );
        assert_eq!(
            service_name(&keyloop_nats::Topology::new("acme.kl")),
            "acme-kl-api"
        );
    }
}
