//! The jit-issuer role's consumer of `<prefix>.task.completed`: a finished task's live leases
//! each get a `cmd.lease.revoke`, which the revoker carries out. The leases it misses (a task
//! that never reports completion) are expired by the sweeper.

use crate::context::WorkerContext;
use crate::decode;
use crate::jit_issuer::SOURCE;
use crate::ops::Cause;
use futures::FutureExt;
use keyloop_core::RevokeReason;
use keyloop_core::event::{CloudEvent, RevokeLeaseCommand, TASK_COMPLETED_TYPE, TaskCompleted};
use keyloop_core::lease::LeaseState;
use keyloop_nats::{Delivery, Handler, HandlerError};
use std::sync::Arc;
use tracing::info;

/// The handler of `<prefix>.task.completed`.
pub fn handler(ctx: Arc<WorkerContext>) -> Handler {
    Arc::new(move |delivery| {
        let ctx = ctx.clone();
        async move { task_completed(&ctx, &delivery).await }.boxed()
    })
}

/// `task.completed` → a revoke command per live lease of the task. Redelivery republishes the
/// same command ids, which the commands stream drops.
async fn task_completed(ctx: &WorkerContext, delivery: &Delivery) -> Result<(), HandlerError> {
    let event: CloudEvent<TaskCompleted> =
        decode::cloud_event(&delivery.message.payload, TASK_COMPLETED_TYPE)?;
    let task = &event.data.task_id;
    let leases = ctx.inventory.leases_of_task(task).await?;
    let mut revoked = 0;
    for lease_id in leases {
        let Some(lease) = ctx.inventory.lease(lease_id).await? else {
            continue;
        };
        if lease.state != LeaseState::Active {
            continue;
        }
        let cmd = RevokeLeaseCommand {
            lease: lease_id,
            reason: RevokeReason::TaskCompleted,
            op_id: format!("task-completed/{lease_id}"),
            leak_published_at: None,
        };
        let cause = Cause {
            source: SOURCE.into(),
            correlation: Some(task.clone()),
            causation: Some(event.id.clone()),
            batch: None,
            actor: None,
        };
        ctx.send_command(&cause, cmd).await?;
        revoked += 1;
    }
    info!(task = %task, revoked, "task completed: its leases are being revoked");
    Ok(())
}
