//! The sweep line: the sweeper's work per tick. With the JIT phase's leases live and 10 more
//! that expire in 1 s, a sweep 2 s from now must read about those 10 entries of the due-time
//! index, not the whole inventory. The sweep runs in this process, on the run's server.

use crate::jit::issue_request;
use crate::report::SweepFigures;
use crate::run::Env;
use anyhow::Result;
use keyloop_workers::WorkerContext;
use std::time::{Duration, Instant};

/// Leases issued to fall due before the sweep.
const DUE: usize = 10;

/// Issues [`DUE`] short leases beside `live_leases` live ones and times one sweep past their
/// expiry.
pub(crate) async fn run(env: &Env<'_>, live_leases: usize) -> Result<SweepFigures> {
    let ctx = WorkerContext::open(env.bus.clone(), None).await?;
    let now = time::OffsetDateTime::now_utc();
    let policy = keyloop_core::JitPolicy::default();
    let engine = keyloop_core::policy::PolicyEngine::default_policy(Default::default());
    for i in 0..DUE {
        let req = issue_request(format!("bench-due-{i}"), 1);
        keyloop_workers::jit_issuer::issue(&ctx, &engine, &policy, &Default::default(), &req, now)
            .await
            .map_err(|e| anyhow::anyhow!("issue a lease due in 1 s: {}", e.message))?;
    }
    let swept = Instant::now();
    let stats = keyloop_workers::sweeper::sweep(&ctx, now + Duration::from_secs(2)).await?;
    Ok(SweepFigures {
        live: live_leases + DUE,
        due: DUE,
        stats,
        took: swept.elapsed(),
    })
}
