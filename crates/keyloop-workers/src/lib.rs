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
//! - [`jit_issuer`]: `jit.issue` / `token.verify` request/reply;
//! - [`task_completed`]: the jit-issuer role's `task.completed` → `cmd.lease.revoke` per lease.

pub mod api;
pub mod approvals;
pub mod budget;
pub mod claim;
pub mod context;
pub mod decode;
pub mod error;
pub mod jit_issuer;
pub mod leak_responder;
pub mod notifier;
pub mod ops;
pub mod records;
pub mod revoker;
pub mod rotator;
pub mod scheduler;
pub mod sweeper;
pub mod task_completed;

pub use context::{ApprovalSettings, Backends, RevocationBudget, WorkerContext};
pub use error::{Error, ErrorKind};

use keyloop_core::JitPolicy;
use keyloop_core::identity::IdentityVerifier;
use keyloop_nats::{ConsumeConfig, Handler, Role};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The actors that administer the control plane unless configured otherwise: the `ops` NATS
/// user, and `anonymous` — what a CLI without a NATS user calls itself on an open development
/// server (a secured server has no such user, so nobody can be it there).
pub const DEFAULT_API_ADMINS: [&str; 2] = ["ops", "anonymous"];

/// How the workers of one process run.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Concurrency and retry delays of the consuming roles.
    pub consume: ConsumeConfig,
    /// The scheduler's window (one tick per window; at least one second).
    pub tick_interval: Duration,
    /// The scopes the JIT issuer serves, and who may ask for each.
    pub jit_policy: JitPolicy,
    /// The keys of `jit_policy.issuers`, loaded: what checks the requesters' identity tokens.
    pub identity_verifier: IdentityVerifier,
    /// Who may do what, with how much ceremony: decides every control-plane request (the `api`
    /// role) and every JIT issue. Its `admins` group holds the api's admins.
    pub policy: Arc<keyloop_core::policy::PolicyEngine>,
    /// The notifier's outgoing webhook (the `notifier` role needs one).
    pub notify_webhook: Option<notifier::WebhookUrl>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            consume: ConsumeConfig::default(),
            tick_interval: Duration::from_secs(60),
            jit_policy: JitPolicy::default(),
            identity_verifier: IdentityVerifier::default(),
            policy: Arc::new(keyloop_core::policy::PolicyEngine::default_policy(
                keyloop_core::policy::Groups::with_admins(DEFAULT_API_ADMINS),
            )),
            notify_webhook: None,
        }
    }
}

/// The message handler of a consuming role (`None` for the scheduler and the api; the
/// notifier's is [`notifier::handler`], made from its webhook).
pub fn handler_for(role: Role, ctx: Arc<WorkerContext>) -> Option<Handler> {
    match role {
        Role::LeakResponder => Some(leak_responder::handler(ctx, Default::default())),
        Role::Rotator => Some(rotator::handler(ctx)),
        Role::Revoker => Some(revoker::handler(ctx)),
        Role::Sweeper => Some(sweeper::handler(ctx)),
        Role::JitIssuer => Some(task_completed::handler(ctx)),
        Role::Scheduler | Role::Api | Role::Notifier => None,
    }
}

/// Extra time, beyond the consume runtime's own grace for messages in hand, that [`run`] gives
/// every task to stop before it abandons them: the JIT issuer's requests in hand and a tick
/// being published wait on NATS too.
const STOP_MARGIN: Duration = Duration::from_secs(2);

/// Runs `roles` until `shutdown` is cancelled; each finishes the messages and requests in hand
/// before this returns, within the consume runtime's `shutdown_grace` (plus a small margin):
/// what still runs then waits on a server that does not answer, and is abandoned with a log
/// line naming its role (nothing unacked is lost: JetStream redelivers it). One role failing
/// stops the others and its error is returned: a half-running fleet member hides problems.
pub async fn run(
    ctx: Arc<WorkerContext>,
    roles: &[Role],
    config: WorkerConfig,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let bus = ctx.bus()?.clone();
    let mut set = tokio::task::JoinSet::new();
    let mut names = std::collections::HashMap::new();
    for &role in roles {
        let handler = match (role, &config.notify_webhook) {
            (Role::Notifier, Some(url)) => Some(notifier::handler(url.clone())?),
            (Role::Notifier, None) => {
                return Err(Error::msg(
                    ErrorKind::Permanent,
                    "the notifier needs a webhook: pass --notify-webhook URL (env KEYLOOP_NOTIFY_WEBHOOK)",
                ));
            }
            // A leak-responder also running the revoker (and rotator) revokes in-process.
            (Role::LeakResponder, _) => Some(leak_responder::handler(
                ctx.clone(),
                leak_responder::InProcess::of(roles),
            )),
            _ => handler_for(role, ctx.clone()),
        };
        if let Some(handler) = handler {
            let (bus, mut cfg, stop) = (bus.clone(), config.consume.clone(), shutdown.clone());
            if role == Role::Notifier {
                cfg.concurrency = cfg.concurrency.min(notifier::CONCURRENCY);
            }
            let task = set.spawn(async move {
                keyloop_nats::runtime::consume(bus, role, cfg, handler, stop)
                    .await
                    .map_err(Error::from)
            });
            names.insert(task.id(), role.name());
        }
        let task = match role {
            Role::Scheduler => set.spawn(scheduler::run(
                bus.clone(),
                config.tick_interval,
                shutdown.clone(),
            )),
            Role::Api => set.spawn(api::serve(
                ctx.clone(),
                config.policy.clone(),
                config.jit_policy.clone(),
                shutdown.clone(),
            )),
            Role::JitIssuer => set.spawn(jit_issuer::serve(
                ctx.clone(),
                config.policy.clone(),
                config.jit_policy.clone(),
                config.identity_verifier.clone(),
                shutdown.clone(),
            )),
            _ => continue,
        };
        names.insert(task.id(), role.name());
    }
    let stop_within = config.consume.shutdown_grace + STOP_MARGIN;
    let mut deadline = None;
    let mut first_error = None;
    loop {
        let res = tokio::select! {
            res = set.join_next_with_id() => match res {
                Some(res) => res,
                None => break,
            },
            () = shutdown.cancelled(), if deadline.is_none() => {
                deadline = Some(tokio::time::Instant::now() + stop_within);
                continue;
            }
            () = sleep_until(deadline) => {
                let mut left: Vec<_> = names.values().copied().collect();
                left.sort_unstable();
                tracing::warn!(roles = %left.join(", "), waited_ms = stop_within.as_millis() as u64, "shutdown: abandoned worker tasks that did not stop in time (waiting on a server that does not answer); unacked messages are redelivered");
                set.shutdown().await;
                break;
            }
        };
        let res = match res {
            Ok((id, res)) => {
                names.remove(&id);
                res
            }
            Err(join) => {
                names.remove(&join.id());
                Err(Error::msg(
                    ErrorKind::Permanent,
                    format!("worker task panicked: {join}"),
                ))
            }
        };
        if let Err(e) = res
            && first_error.is_none()
        {
            shutdown.cancel();
            first_error = Some(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Sleeps until `deadline`, forever when there is none.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
