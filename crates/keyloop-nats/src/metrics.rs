//! Process-wide counters, exposed in the Prometheus text format by `keyloop up|worker
//! --metrics-addr`. Labels are roles and outcomes, never credential ids or values.

use crate::topology::Role;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Message outcomes of one role.
#[derive(Debug, Default)]
pub struct RoleCounters {
    /// Acked after their effects were durable.
    pub acked: AtomicU64,
    /// Nak'ed for a retry.
    pub retried: AtomicU64,
    /// Sent to the DLQ.
    pub dead_lettered: AtomicU64,
    /// DLQ writes that failed (the message stayed in hand and was retried): a DLQ that cannot
    /// be written to.
    pub dlq_write_failed: AtomicU64,
    /// Messages handed back (at shutdown, or after holding them while the DLQ refused) before
    /// their DLQ copy could be stored; their next delivery goes to the DLQ.
    pub dlq_handed_back: AtomicU64,
}

/// Every counter of the process.
#[derive(Debug, Default)]
pub struct Metrics {
    roles: [RoleCounters; Role::ALL.len()],
    /// Rotations that gave up (`rotation_failed`).
    pub rotation_failed: AtomicU64,
    /// Revocations that gave up (`revocation_failed`).
    pub revocation_failed: AtomicU64,
    /// Revocation budgets tripped (`budget_tripped`).
    pub budget_tripped: AtomicU64,
    /// Tripped budgets released by an approval (`budget_released`).
    pub budget_released: AtomicU64,
}

static METRICS: std::sync::LazyLock<Metrics> = std::sync::LazyLock::new(Metrics::default);

/// The process's counters.
pub fn global() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    /// The counters of `role`.
    pub fn role(&self, role: Role) -> &RoleCounters {
        let i = Role::ALL
            .iter()
            .position(|r| *r == role)
            .expect("every role is in ALL");
        &self.roles[i]
    }

    /// The Prometheus text exposition of every counter.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP keyloop_messages_total Messages handled by outcome.\n# TYPE keyloop_messages_total counter\n");
        for role in Role::ALL {
            let c = self.role(role);
            for (outcome, v) in [
                ("acked", &c.acked),
                ("retried", &c.retried),
                ("dead_lettered", &c.dead_lettered),
                ("dlq_write_failed", &c.dlq_write_failed),
                ("dlq_handed_back", &c.dlq_handed_back),
            ] {
                let _ = writeln!(
                    out,
                    "keyloop_messages_total{{role=\"{}\",outcome=\"{outcome}\"}} {}",
                    role.name(),
                    v.load(Ordering::Relaxed)
                );
            }
        }
        for (name, help, v) in [
            (
                "keyloop_rotation_failed_total",
                "Rotations that gave up.",
                &self.rotation_failed,
            ),
            (
                "keyloop_revocation_failed_total",
                "Revocations that gave up.",
                &self.revocation_failed,
            ),
            (
                "keyloop_budget_tripped_total",
                "Revocation budgets tripped (revocations held for an approval).",
                &self.budget_tripped,
            ),
            (
                "keyloop_budget_released_total",
                "Tripped revocation budgets released by an approval.",
                &self.budget_released,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        out
    }
}
