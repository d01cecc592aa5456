//! The CLI as a client of the control plane (`keyloop worker api`): one request, one reply, on
//! `<prefix>.api.<actor>.<verb>`. The CLI holds no master key and no backend credentials; the
//! actor is its NATS user, which a secured server lets it use and nobody else.

use crate::cli::Global;
use anyhow::{Result, anyhow, bail};
use keyloop_core::api::{ApiReply, Verb};
use keyloop_nats::Bus;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::time::Duration;

/// How long a request may take: a registration sets and tests a password at the target.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Asks the control plane for `verb` with `body`; its refusal or failure is the error, with
/// its code.
pub(crate) async fn call<B: Serialize, R: DeserializeOwned>(
    g: &Global,
    bus: &Bus,
    verb: Verb,
    body: &B,
) -> Result<R> {
    let actor = crate::config::actor(g);
    let subject = bus.topology.api(&actor, verb.name());
    let payload = serde_json::to_vec(body)?;
    let (span, headers) = keyloop_nats::trace::request_headers(&subject);
    let request = tracing::Instrument::instrument(
        bus.client
            .request_with_headers(subject, headers, payload.into()),
        span,
    );
    let message = match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Err(_) => bail!(
            "the keyloop api did not answer {} within {} s; is it overloaded, or is a backend slow? See its log",
            verb.name(),
            REQUEST_TIMEOUT.as_secs()
        ),
        Ok(Err(e)) if e.kind() == async_nats::client::RequestErrorKind::NoResponders => bail!(
            "no keyloop api answers on {}: start one (`keyloop worker api`, or `keyloop up`)",
            crate::config::shown_url(g)
        ),
        Ok(Err(e)) => return Err(anyhow!("request {} to the keyloop api: {e}", verb.name())),
        Ok(Ok(m)) => m,
    };
    let reply: ApiReply<R> = serde_json::from_slice(&message.payload)
        .map_err(|e| anyhow!("the keyloop api sent a reply this CLI cannot read: {e}"))?;
    Result::from(reply).map_err(|e| anyhow!("{} ({})", e.message, e.code))
}
