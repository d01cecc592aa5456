//! Process-wide metrics, exposed in the Prometheus text format (0.0.4) at `/metrics` by
//! `keyloop up|worker --metrics-addr`. Labels are roles, kinds, reasons and outcomes: never a
//! credential id, a lease id or a value, so no label can leak a secret or grow without bound.
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | `keyloop_messages_total` | counter | `role`, `outcome` | messages settled: `acked` (effects durable), `retried` (nak'ed for a redelivery), `dead_lettered` (stored in the DLQ), `dlq_write_failed` (a DLQ write failed; the message stayed in hand), `dlq_handed_back` (handed back before its DLQ copy was stored; its next delivery goes there) |
//! | `keyloop_handler_duration_seconds` | histogram | `role` | how long a handler ran on one delivery, whatever its outcome |
//! | `keyloop_time_to_revoke_seconds` | histogram | `kind` (`version`, `lease`) | from a leak's publish in `KEYLOOP_EVENTS` to its version or lease being revoked |
//! | `keyloop_rotation_duration_seconds` | histogram | `reason` (`leak`, `manual`, `scheduled`, `initial`) | from a rotation's pending version being created to its promotion to current |
//! | `keyloop_rotation_failed_total` | counter | | rotations that gave up (`rotation_failed`) |
//! | `keyloop_revocation_failed_total` | counter | | revocations that gave up (`revocation_failed`) |
//! | `keyloop_budget_tripped_total` | counter | | revocation budgets tripped (revocations held for an approval, `budget_tripped`) |
//! | `keyloop_budget_released_total` | counter | | tripped revocation budgets released by an approval (`budget_released`) |
//! | `keyloop_consumer_pending` | gauge | `role` | messages of the role's durable consumer not yet delivered |
//! | `keyloop_consumer_ack_pending` | gauge | `role` | messages delivered to the role's replicas and not yet acked |
//! | `keyloop_dlq_messages` | gauge | | messages in `KEYLOOP_DLQ` (every worker user of `deploy/nats/` may read the stream's info; a process whose user may not stops asking after 3 refusals) |
//! | `keyloop_claims_held` | gauge | | credential claims this process holds now (operations in flight) |
//! | `keyloop_nats_connected` | gauge | | 1 while the NATS connection is up, else 0 |
//! | `keyloop_build_info` | gauge | `version` | always 1; the version of the running binary |
//!
//! The gauges of consumers, the DLQ and the connection are set by the health probe
//! ([`crate::health`]) every few seconds; the rest move where the event happens.
//!
//! Built on `prometheus-client` rather than `metrics` + `metrics-exporter-prometheus`: the
//! same registry and text format for 3 crates in the lock instead of some 35.

use crate::topology::Role;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::time::Duration;

/// The `Content-Type` of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// What became of a delivered message (the `outcome` label of `keyloop_messages_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Acked after its effects were durable.
    Acked,
    /// Nak'ed for a retry.
    Retried,
    /// Stored in the DLQ and terminated.
    DeadLettered,
    /// A DLQ write failed (the message stayed in hand and the write was retried): a DLQ that
    /// cannot be written to.
    DlqWriteFailed,
    /// Handed back (at shutdown, or after holding it while the DLQ refused) before its DLQ copy
    /// could be stored; its next delivery goes to the DLQ.
    DlqHandedBack,
}

impl Outcome {
    const ALL: [Outcome; 5] = [
        Self::Acked,
        Self::Retried,
        Self::DeadLettered,
        Self::DlqWriteFailed,
        Self::DlqHandedBack,
    ];

    const fn name(self) -> &'static str {
        match self {
            Self::Acked => "acked",
            Self::Retried => "retried",
            Self::DeadLettered => "dead_lettered",
            Self::DlqWriteFailed => "dlq_write_failed",
            Self::DlqHandedBack => "dlq_handed_back",
        }
    }
}

/// What was revoked (the `kind` label of `keyloop_time_to_revoke_seconds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    /// A version of a credential.
    Version,
    /// A JIT lease.
    Lease,
}

impl Revoked {
    const fn name(self) -> &'static str {
        match self {
            Self::Version => "version",
            Self::Lease => "lease",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct MessageLabels {
    role: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RoleLabel {
    role: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Bounds (seconds) of the duration histograms: a millisecond to five minutes, since a
/// revocation takes milliseconds and a rotation through a slow target minutes.
const DURATION_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

fn histograms<L: Clone + std::hash::Hash + Eq>() -> Histograms<L> {
    Family::new_with_constructor(duration_histogram)
}

/// Every metric of the process, registered once.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    messages: Family<MessageLabels, Counter>,
    handler_seconds: Histograms<RoleLabel>,
    time_to_revoke: Histograms<KindLabel>,
    rotation_seconds: Histograms<ReasonLabel>,
    rotation_failed: Counter,
    revocation_failed: Counter,
    budget_tripped: Counter,
    budget_released: Counter,
    consumer_pending: Family<RoleLabel, Gauge>,
    consumer_ack_pending: Family<RoleLabel, Gauge>,
    dlq_messages: Gauge,
    claims_held: Gauge,
    nats_connected: Gauge,
}

static METRICS: std::sync::LazyLock<Metrics> = std::sync::LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn global() -> &'static Metrics {
    &METRICS
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric, each role's message outcomes at 0 (so a rate over them
    /// exists from the first scrape).
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("keyloop");
        let messages = Family::<MessageLabels, Counter>::default();
        for role in Role::ALL {
            for outcome in Outcome::ALL {
                let _ = messages.get_or_create(&MessageLabels {
                    role: role.name(),
                    outcome: outcome.name(),
                });
            }
        }
        let m = Self {
            messages,
            handler_seconds: histograms(),
            time_to_revoke: histograms(),
            rotation_seconds: histograms(),
            rotation_failed: Counter::default(),
            revocation_failed: Counter::default(),
            budget_tripped: Counter::default(),
            budget_released: Counter::default(),
            consumer_pending: Family::default(),
            consumer_ack_pending: Family::default(),
            dlq_messages: Gauge::default(),
            claims_held: Gauge::default(),
            nats_connected: Gauge::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "messages",
            "Messages settled, by role and outcome",
            m.messages.clone(),
        );
        r.register(
            "handler_duration_seconds",
            "How long a handler ran on one delivery",
            m.handler_seconds.clone(),
        );
        r.register(
            "time_to_revoke_seconds",
            "From a leak's publish to the revocation of its version or lease",
            m.time_to_revoke.clone(),
        );
        r.register(
            "rotation_duration_seconds",
            "From a rotation's pending version to its promotion",
            m.rotation_seconds.clone(),
        );
        r.register(
            "rotation_failed",
            "Rotations that gave up",
            m.rotation_failed.clone(),
        );
        r.register(
            "revocation_failed",
            "Revocations that gave up",
            m.revocation_failed.clone(),
        );
        r.register(
            "budget_tripped",
            "Revocation budgets tripped (revocations held for an approval)",
            m.budget_tripped.clone(),
        );
        r.register(
            "budget_released",
            "Tripped revocation budgets released by an approval",
            m.budget_released.clone(),
        );
        r.register(
            "consumer_pending",
            "Messages of the role's durable consumer not yet delivered",
            m.consumer_pending.clone(),
        );
        r.register(
            "consumer_ack_pending",
            "Messages delivered to the role's replicas and not yet acked",
            m.consumer_ack_pending.clone(),
        );
        r.register(
            "dlq_messages",
            "Messages in the DLQ stream",
            m.dlq_messages.clone(),
        );
        r.register(
            "claims_held",
            "Credential claims this process holds (operations in flight)",
            m.claims_held.clone(),
        );
        r.register(
            "nats_connected",
            "1 while the NATS connection is up",
            m.nats_connected.clone(),
        );
        r.register(
            "build",
            "The running keyloop",
            Info::new(VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        Self { registry, ..m }
    }

    /// Counts a settled message of `role`.
    pub fn message(&self, role: Role, outcome: Outcome) {
        self.messages
            .get_or_create(&MessageLabels {
                role: role.name(),
                outcome: outcome.name(),
            })
            .inc();
    }

    /// Records how long `role`'s handler ran on one delivery.
    pub fn handler_ran(&self, role: Role, took: Duration) {
        self.handler_seconds
            .get_or_create(&RoleLabel { role: role.name() })
            .observe(took.as_secs_f64());
    }

    /// Records the time from a leak's publish to the revocation it caused (negative spans, from
    /// clocks apart, count as 0).
    pub fn revoked_after_leak(&self, kind: Revoked, took: time::Duration) {
        self.time_to_revoke
            .get_or_create(&KindLabel { kind: kind.name() })
            .observe(took.as_seconds_f64().max(0.0));
    }

    /// Records a finished rotation started for `reason` (a `RotationReason` name).
    pub fn rotated(&self, reason: &'static str, took: time::Duration) {
        self.rotation_seconds
            .get_or_create(&ReasonLabel { reason })
            .observe(took.as_seconds_f64().max(0.0));
    }

    /// Counts a rotation that gave up.
    pub fn rotation_failed(&self) {
        self.rotation_failed.inc();
    }

    /// Counts a revocation that gave up.
    pub fn revocation_failed(&self) {
        self.revocation_failed.inc();
    }

    /// Counts a tripped revocation budget.
    pub fn budget_tripped(&self) {
        self.budget_tripped.inc();
    }

    /// Counts a tripped budget released by an approval.
    pub fn budget_released(&self) {
        self.budget_released.inc();
    }

    /// Sets what the durable consumer of `role` has waiting and in hand.
    pub fn consumer_state(&self, role: Role, pending: u64, ack_pending: u64) {
        let label = RoleLabel { role: role.name() };
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.consumer_pending
            .get_or_create(&label)
            .set(gauge(pending));
        self.consumer_ack_pending
            .get_or_create(&label)
            .set(gauge(ack_pending));
    }

    /// Sets the number of messages in the DLQ.
    pub fn dlq_depth(&self, messages: u64) {
        self.dlq_messages
            .set(i64::try_from(messages).unwrap_or(i64::MAX));
    }

    /// Sets whether the NATS connection is up.
    pub fn nats_connected(&self, connected: bool) {
        self.nats_connected.set(i64::from(connected));
    }

    /// Counts a claim as held until the returned guard is dropped (also when the operation's
    /// future is dropped half-way).
    pub fn claim_held(&self) -> ClaimHeld {
        self.claims_held.inc();
        ClaimHeld(self.claims_held.clone())
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// A claim counted in `keyloop_claims_held` while this lives.
#[derive(Debug)]
pub struct ClaimHeld(Gauge);

impl Drop for ClaimHeld {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, start: &str) -> &'a str {
        text.lines()
            .find(|l| l.starts_with(start))
            .unwrap_or_else(|| panic!("no line {start} in:\n{text}"))
    }

    #[test]
    fn every_role_and_outcome_renders_from_the_start_under_the_names_the_docs_give() {
        let m = Metrics::new();
        m.message(Role::Revoker, Outcome::Acked);
        m.message(Role::Revoker, Outcome::Acked);
        let text = m.render();
        assert_eq!(
            line(
                &text,
                "keyloop_messages_total{role=\"revoker\",outcome=\"acked\"}"
            ),
            "keyloop_messages_total{role=\"revoker\",outcome=\"acked\"} 2"
        );
        assert!(
            text.contains("keyloop_messages_total{role=\"api\",outcome=\"dlq_handed_back\"} 0")
        );
        assert_eq!(
            line(&text, "keyloop_rotation_failed_total"),
            "keyloop_rotation_failed_total 0"
        );
        assert_eq!(
            line(&text, "keyloop_build_info"),
            format!(
                "keyloop_build_info{{version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            )
        );
        // Every name the module doc lists is registered, and none that it does not.
        let doc = include_str!("metrics.rs");
        let documented: std::collections::BTreeSet<_> = doc
            .lines()
            .filter_map(|l| l.strip_prefix("//! | `keyloop_"))
            .filter_map(|l| l.split('`').next())
            .map(|n| format!("keyloop_{n}"))
            .collect();
        // A family shows once it has a series: give every one a series.
        m.consumer_state(Role::Revoker, 0, 0);
        m.handler_ran(Role::Revoker, Duration::ZERO);
        m.revoked_after_leak(Revoked::Lease, time::Duration::ZERO);
        m.rotated("manual", time::Duration::ZERO);
        let text = m.render();
        let exposed: std::collections::BTreeSet<_> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .map(str::to_owned)
            .collect();
        assert_eq!(documented, exposed);
    }

    #[test]
    fn durations_land_in_histograms_by_label_and_negative_spans_count_as_zero() {
        let m = Metrics::new();
        m.revoked_after_leak(Revoked::Version, time::Duration::milliseconds(3));
        m.revoked_after_leak(Revoked::Version, time::Duration::milliseconds(-5));
        m.rotated("leak", time::Duration::seconds(2));
        m.handler_ran(Role::Rotator, Duration::from_millis(40));
        let text = m.render();
        assert_eq!(
            line(
                &text,
                "keyloop_time_to_revoke_seconds_count{kind=\"version\"}"
            ),
            "keyloop_time_to_revoke_seconds_count{kind=\"version\"} 2"
        );
        assert_eq!(
            line(
                &text,
                "keyloop_time_to_revoke_seconds_bucket{kind=\"version\",le=\"0.001\"}"
            ),
            "keyloop_time_to_revoke_seconds_bucket{kind=\"version\",le=\"0.001\"} 1"
        );
        assert!(text.contains("keyloop_rotation_duration_seconds_sum{reason=\"leak\"} 2"));
        assert!(text.contains("keyloop_handler_duration_seconds_count{role=\"rotator\"} 1"));
    }

    #[test]
    fn a_claim_counts_while_its_guard_lives() {
        let m = Metrics::new();
        let held = m.claim_held();
        let second = m.claim_held();
        assert!(m.render().contains("keyloop_claims_held 2"));
        drop(held);
        drop(second);
        assert!(m.render().contains("keyloop_claims_held 0"));
    }

    #[test]
    fn gauges_take_the_probed_values() {
        let m = Metrics::new();
        m.consumer_state(Role::Revoker, 7, 2);
        m.dlq_depth(3);
        m.nats_connected(true);
        let text = m.render();
        assert!(text.contains("keyloop_consumer_pending{role=\"revoker\"} 7"));
        assert!(text.contains("keyloop_consumer_ack_pending{role=\"revoker\"} 2"));
        assert!(text.contains("keyloop_dlq_messages 3"));
        assert!(text.contains("keyloop_nats_connected 1"));
    }
}
