//! keyloop's workers: one small module per role. [`run`] starts the named roles in one process;
//! replicas of a role in other processes share its durable consumer (or queue group).
//!
//! - [`leak_responder`]: `leak.detected` → `leak_matched` / `leak_unmatched` / `leak_inert`,
//!   and a revoke command for a live match (a version or a JIT lease);
//! - [`revoker`]: `cmd.revoke` → invalid at the target, value destroyed, `revoked`, then
//!   `cmd.rotate` when a leaked current version must be replaced; `cmd.lease.revoke` → lease
//!   ended;
//! - [`rotator`]: `cmd.rotate` → the create/set/test/finish protocol, `rotated`;
//! - [`scheduler`]: one `schedule.tick` per window, whatever the number of replicas;
//! - [`sweeper`]: on each tick, commands for what has fallen due; records uses;
//! - [`jit_issuer`]: `jit.issue` / `token.verify` request/reply, and `task.completed`.

pub mod claim;
pub mod context;
pub mod decode;
pub mod jit_issuer;
pub mod leak_responder;
pub mod ops;
pub mod revoker;
pub mod rotator;
pub mod scheduler;
pub mod sweeper;

pub use context::{Backends, WorkerContext};

use keyloop_core::JitPolicy;
use keyloop_nats::{ConsumeConfig, ConsumeStats, Error, ErrorKind, Handler, Role};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How the workers of one process run.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Concurrency and retry delays of the consuming roles.
    pub consume: ConsumeConfig,
    /// The scheduler's window (one tick per window; at least one second).
    pub tick_interval: Duration,
    /// The scopes the JIT issuer serves.
    pub jit_policy: JitPolicy,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            consume: ConsumeConfig::default(),
            tick_interval: Duration::from_secs(60),
            jit_policy: JitPolicy::default(),
        }
    }
}

/// The message handler of a consuming role (`None` for the scheduler).
pub fn handler_for(role: Role, ctx: Arc<WorkerContext>) -> Option<Handler> {
    match role {
        Role::LeakResponder => Some(leak_responder::handler(ctx)),
        Role::Rotator => Some(rotator::handler(ctx)),
        Role::Revoker => Some(revoker::handler(ctx)),
        Role::Sweeper => Some(sweeper::handler(ctx)),
        Role::JitIssuer => Some(jit_issuer::handler(ctx)),
        Role::Scheduler => None,
    }
}

/// Runs `roles` until `shutdown` is cancelled; each finishes the messages and requests in hand
/// before this returns. One role failing stops the others and its error is returned: a
/// half-running fleet member hides problems.
pub async fn run(
    ctx: Arc<WorkerContext>,
    roles: &[Role],
    config: WorkerConfig,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let mut set = tokio::task::JoinSet::new();
    for &role in roles {
        if let Some(handler) = handler_for(role, ctx.clone()) {
            let (bus, cfg, stop) = (ctx.bus.clone(), config.consume.clone(), shutdown.clone());
            let stats = Arc::new(ConsumeStats::default());
            set.spawn(async move {
                keyloop_nats::runtime::consume(bus, role, cfg, handler, stats, stop).await
            });
        }
        match role {
            Role::Scheduler => {
                let bus = ctx.bus.clone();
                set.spawn(scheduler::run(bus, config.tick_interval, shutdown.clone()));
            }
            Role::JitIssuer => {
                set.spawn(jit_issuer::serve(
                    ctx.clone(),
                    config.jit_policy.clone(),
                    shutdown.clone(),
                ));
            }
            _ => {}
        }
    }
    let mut first_error = None;
    while let Some(res) = set.join_next().await {
        let res = res.unwrap_or_else(|join| {
            Err(Error::msg(
                ErrorKind::Permanent,
                format!("worker task panicked: {join}"),
            ))
        });
        if let Err(e) = res
            && first_error.is_none()
        {
            shutdown.cancel();
            first_error = Some(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}
