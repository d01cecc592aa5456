//! keyloop's workers: one small module per role, each a handler on the shared consume runtime
//! of `keyloop-nats`. [`run`] starts the named roles in one process; replicas of a role in
//! other processes share its durable consumer.
//!
//! - [`leak_responder`]: `leak.detected` → `leak_matched` / `leak_unmatched` / `leak_inert`,
//!   and `cmd.revoke` for a live match;
//! - [`revoker`]: `cmd.revoke` → invalid at the target, value destroyed, `revoked`, then
//!   `cmd.rotate` when a leaked current version must be replaced;
//! - [`rotator`]: `cmd.rotate` → the create/set/test/finish protocol, `rotated`.

pub mod context;
pub mod leak_responder;
pub mod ops;
pub mod revoker;
pub mod rotator;

mod decode;

pub use context::{Backends, WorkerContext};

use keyloop_nats::{ConsumeConfig, ConsumeStats, Error, Handler, Role};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The handler of a role.
pub fn handler_for(role: Role, ctx: Arc<WorkerContext>) -> Handler {
    match role {
        Role::LeakResponder => leak_responder::handler(ctx),
        Role::Rotator => rotator::handler(ctx),
        Role::Revoker => revoker::handler(ctx),
    }
}

/// Runs `roles` until `shutdown` is cancelled; each finishes its messages in hand before this
/// returns. Returns the first role that failed to start or stopped with an error.
pub async fn run(
    ctx: Arc<WorkerContext>,
    roles: &[Role],
    config: ConsumeConfig,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let mut set = tokio::task::JoinSet::new();
    for &role in roles {
        let (bus, handler, cfg, stop) = (
            ctx.bus.clone(),
            handler_for(role, ctx.clone()),
            config.clone(),
            shutdown.clone(),
        );
        let stats = Arc::new(ConsumeStats::default());
        set.spawn(async move {
            keyloop_nats::runtime::consume(bus, role, cfg, handler, stats, stop).await
        });
    }
    let mut first_error = None;
    while let Some(res) = set.join_next().await {
        let res = res.unwrap_or_else(|join| {
            Err(Error::msg(
                keyloop_nats::ErrorKind::Permanent,
                format!("worker task panicked: {join}"),
            ))
        });
        if let Err(e) = res
            && first_error.is_none()
        {
            // One role failing stops the others: a half-running fleet member hides problems.
            shutdown.cancel();
            first_error = Some(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}
