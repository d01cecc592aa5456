//! `keyloop worker ROLE...`: run only the named roles. Start more processes to add replicas:
//! they share each role's durable consumer.

use crate::cli::{Global, WorkerArgs};
use crate::config;
use anyhow::{Result, bail};
use keyloop_nats::Role;
use std::process::ExitCode;
use std::sync::Arc;

pub(crate) async fn run(g: &Global, args: WorkerArgs) -> Result<ExitCode> {
    let roles = distinct(&args.roles);
    let config = config::worker_config(&args.run)?;
    // Signals count from the start: connecting and opening the buckets wait on NATS, and a
    // worker asked to stop while the server does not answer must not wait for it.
    let shutdown = super::shutdown_on_signal();
    let start = async {
        let url = || config::shown_url(g);
        let bus = super::unless_stopped(
            &shutdown,
            || format!("connecting to {}", url()),
            config::connect(g),
        )
        .await?;
        let open = async {
            if touches_values(&roles) {
                config::context(g, bus).await
            } else {
                config::context_without_local_store(g, bus).await
            }
        };
        let mut ctx = super::unless_stopped(
            &shutdown,
            || format!("opening keyloop's buckets on {}", url()),
            open,
        )
        .await?;
        config::apply_run_args(&args.run, &mut ctx, &roles, &shutdown).await?;
        require_store(&ctx, &roles)?;
        anyhow::Ok(ctx)
    };
    let result = match start.await {
        Ok(ctx) => keyloop_workers::run(Arc::new(ctx), &roles, config, shutdown)
            .await
            .map_err(anyhow::Error::new),
        Err(e) => Err(e),
    };
    super::stopped_cleanly(result)
}

/// The roles named, each once, in the order first named.
fn distinct(named: &[Role]) -> Vec<Role> {
    let mut roles = Vec::new();
    for &role in named {
        if !roles.contains(&role) {
            roles.push(role);
        }
    }
    roles
}

/// Whether one of `roles` reads or writes values: only those open the local store (and need
/// the master key). The others never do, even when a key is around, so their NATS users need
/// no permission on the secrets bucket (see deploy/nats/permissions.conf).
fn touches_values(roles: &[Role]) -> bool {
    roles
        .iter()
        .any(|r| matches!(r, Role::Rotator | Role::Revoker | Role::Api))
}

/// Rotators and revokers touch values; without a master key every message would fail, so refuse
/// to start rather than fill the DLQ.
pub(crate) fn require_store(ctx: &keyloop_workers::WorkerContext, roles: &[Role]) -> Result<()> {
    if touches_values(roles) && ctx.backends.local.is_none() {
        bail!(
            "the rotator and revoker need the local store's master key: set KEYLOOP_MASTER_KEY, pass --master-key-file, or run `keyloop up` once to create a dev key in the data directory"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_role_named_twice_runs_once_in_the_order_first_named() {
        use Role::{Revoker, Rotator, Sweeper};
        assert_eq!(
            distinct(&[Rotator, Sweeper, Rotator, Revoker, Sweeper]),
            [Rotator, Sweeper, Revoker]
        );
    }
}
