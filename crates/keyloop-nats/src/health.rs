//! Readiness of a worker process, and the probe that keeps the consumer, DLQ and connection
//! gauges of [`crate::metrics`] current. A process is ready when its NATS connection is up and
//! the durable consumer of every role it runs that consumes exists (`keyloop init` made it):
//! only then can it do its work. Anything else is a reason, said in words, for `/readyz`'s
//! 503.
//!
//! The connection state is read live at every question; consumers are looked up every
//! [`PROBE_INTERVAL`] (one `CONSUMER.INFO` request per role, a request each worker user may
//! already make). A lookup counts only for the connection it was made on: after a reconnect the
//! process is not ready until the consumers were found again, since the server that answers now
//! may have lost them.

use crate::bus::Bus;
use crate::topology::Role;
use async_nats::connection::State;
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often consumers and the DLQ are looked up.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// How long one lookup may take before it counts as unanswered.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// DLQ lookups that fail in a row, connected, before the probe stops asking: the process's
/// NATS user may not read the DLQ stream's info, and asking again would only fill the
/// server's log with refusals.
const DLQ_GIVE_UP: u32 = 3;

/// What a lookup of a role's durable consumer found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsumerCheck {
    /// The consumer exists.
    Found,
    /// The server says the consumer or its stream does not exist.
    Missing,
    /// No answer (timeout, no JetStream, an error), in words.
    Unanswered(String),
}

/// Whether the process can do its work, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    reasons: Vec<String>,
}

impl Readiness {
    /// True when nothing stands in the way.
    pub fn is_ready(&self) -> bool {
        self.reasons.is_empty()
    }

    /// What stands in the way, one sentence each.
    pub fn reasons(&self) -> &[String] {
        &self.reasons
    }
}

/// The readiness of a process whose connection is in `connection`, given the last consumer
/// lookup (`None`: none since the connection came up). `stream_of` names a role's stream for
/// the reasons.
pub fn assess(
    connection: State,
    probed: Option<&[(Role, ConsumerCheck)]>,
    stream_of: impl Fn(Role) -> String,
) -> Readiness {
    let mut reasons = Vec::new();
    if connection != State::Connected {
        reasons.push(format!(
            "the NATS connection is {}; the worker reconnects on its own once the server answers",
            match connection {
                State::Pending => "not established yet",
                _ => "down",
            }
        ));
        return Readiness { reasons };
    }
    let Some(checks) = probed else {
        reasons.push("the consumers have not been looked up on this connection yet".into());
        return Readiness { reasons };
    };
    for (role, check) in checks {
        let (role, stream) = (role.name(), stream_of(*role));
        match check {
            ConsumerCheck::Found => {}
            ConsumerCheck::Missing => reasons.push(format!(
                "consumer {role} on stream {stream} does not exist; run `keyloop init`"
            )),
            ConsumerCheck::Unanswered(why) => reasons.push(format!(
                "consumer {role} on stream {stream} could not be looked up: {why}"
            )),
        }
    }
    Readiness { reasons }
}

/// The last lookup, and the connection it was made on.
#[derive(Debug)]
struct Probed {
    connects: u64,
    checks: Vec<(Role, ConsumerCheck)>,
}

/// The health of one process: its bus and roles, and what the probe last found.
#[derive(Debug)]
pub struct Health {
    bus: Bus,
    consuming: Vec<Role>,
    last: Mutex<Option<Probed>>,
}

impl Health {
    /// The health of a process that runs `roles` on `bus`; nothing looked up yet.
    pub fn new(bus: Bus, roles: &[Role]) -> Arc<Self> {
        let consuming = roles
            .iter()
            .copied()
            .filter(|r| Role::CONSUMING.contains(r))
            .collect();
        Arc::new(Self {
            bus,
            consuming,
            last: Mutex::new(None),
        })
    }

    fn connects(&self) -> u64 {
        self.bus
            .client
            .statistics()
            .connects
            .load(Ordering::Relaxed)
    }

    /// Readiness now: the live connection state and the last lookup on this connection.
    pub fn readiness(&self) -> Readiness {
        let state = self.bus.client.connection_state();
        crate::metrics::global().nats_connected(state == State::Connected);
        let connects = self.connects();
        let last = self.last.lock().expect("no panic while holding the probe");
        let probed = last
            .as_ref()
            .filter(|p| p.connects == connects)
            .map(|p| p.checks.as_slice());
        assess(state, probed, |r| self.bus.topology.consumer_of(r).0)
    }

    /// Looks up every consumer (and their pending counts, for the gauges), unless the
    /// connection is down.
    async fn probe_consumers(&self) {
        if self.bus.client.connection_state() != State::Connected {
            return;
        }
        let connects = self.connects();
        let mut checks = Vec::with_capacity(self.consuming.len());
        for &role in &self.consuming {
            let check = match tokio::time::timeout(PROBE_TIMEOUT, self.consumer_info(role)).await {
                Err(_) => ConsumerCheck::Unanswered(format!(
                    "no answer within {} s",
                    PROBE_TIMEOUT.as_secs()
                )),
                Ok(check) => check,
            };
            checks.push((role, check));
        }
        *self.last.lock().expect("no panic while holding the probe") =
            Some(Probed { connects, checks });
    }

    async fn consumer_info(&self, role: Role) -> ConsumerCheck {
        let (stream, _) = self.bus.topology.consumer_of(role);
        let stream = match self.bus.js.get_stream_no_info(&stream).await {
            Ok(s) => s,
            Err(e) => return ConsumerCheck::Unanswered(e.to_string()),
        };
        match stream.consumer_info(role.name()).await {
            Ok(info) => {
                crate::metrics::global().consumer_state(
                    role,
                    info.num_pending,
                    info.num_ack_pending as u64,
                );
                ConsumerCheck::Found
            }
            Err(e) => match e.kind() {
                ConsumerInfoErrorKind::NotFound | ConsumerInfoErrorKind::StreamNotFound => {
                    ConsumerCheck::Missing
                }
                _ => ConsumerCheck::Unanswered(e.to_string()),
            },
        }
    }

    /// The DLQ's depth for its gauge; false when it could not be read.
    async fn probe_dlq(&self) -> bool {
        let stream = self.bus.topology.dlq_stream();
        match tokio::time::timeout(PROBE_TIMEOUT, self.bus.js.get_stream(&stream)).await {
            Ok(Ok(s)) => {
                crate::metrics::global().dlq_depth(s.cached_info().state.messages);
                true
            }
            _ => false,
        }
    }

    /// Probes now and then every [`PROBE_INTERVAL`] until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut every = tokio::time::interval(PROBE_INTERVAL);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut dlq_failures = 0u32;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = every.tick() => {}
            }
            self.probe_consumers().await;
            let _ = self.readiness();
            if dlq_failures < DLQ_GIVE_UP && self.bus.client.connection_state() == State::Connected
            {
                if self.probe_dlq().await {
                    dlq_failures = 0;
                } else {
                    dlq_failures += 1;
                    if dlq_failures == DLQ_GIVE_UP {
                        tracing::info!(
                            stream = %self.bus.topology.dlq_stream(),
                            "cannot read the DLQ stream's info (this NATS user may lack $JS.API.STREAM.INFO on it); keyloop_dlq_messages is not reported by this process"
                        );
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream_of(role: Role) -> String {
        crate::Topology::default().consumer_of(role).0
    }

    #[test]
    fn connected_with_every_consumer_found_is_ready() {
        let checks = [
            (Role::Revoker, ConsumerCheck::Found),
            (Role::Rotator, ConsumerCheck::Found),
        ];
        assert!(assess(State::Connected, Some(&checks), stream_of).is_ready());
        assert!(assess(State::Connected, Some(&[]), stream_of).is_ready());
    }

    #[test]
    fn a_connection_that_is_down_is_the_only_reason_given() {
        let checks = [(Role::Revoker, ConsumerCheck::Missing)];
        let r = assess(State::Disconnected, Some(&checks), stream_of);
        assert_eq!(
            r.reasons(),
            [
                "the NATS connection is down; the worker reconnects on its own once the server answers"
            ]
        );
        assert!(!assess(State::Pending, None, stream_of).is_ready());
    }

    #[test]
    fn no_lookup_on_this_connection_is_not_ready() {
        let r = assess(State::Connected, None, stream_of);
        assert_eq!(
            r.reasons(),
            ["the consumers have not been looked up on this connection yet"]
        );
    }

    #[test]
    fn each_missing_or_unanswered_consumer_is_named_with_its_stream_and_the_fix() {
        let checks = [
            (Role::Revoker, ConsumerCheck::Missing),
            (Role::Sweeper, ConsumerCheck::Found),
            (
                Role::LeakResponder,
                ConsumerCheck::Unanswered("timed out".into()),
            ),
        ];
        let r = assess(State::Connected, Some(&checks), stream_of);
        assert_eq!(
            r.reasons(),
            [
                "consumer revoker on stream KEYLOOP_COMMANDS does not exist; run `keyloop init`",
                "consumer leak-responder on stream KEYLOOP_EVENTS could not be looked up: timed out",
            ]
        );
    }
}
