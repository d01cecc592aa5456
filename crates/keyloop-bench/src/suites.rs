//! The two loops under test, each through the same two phases: the raw JetStream loop and
//! keyloop's leak → revoke → rotate loop. A suite starts its worker processes, waits until they
//! pull, runs the latency phase (leaks at `--rate`) and the throughput phase (`--leaks` as fast
//! as possible), reads the peak RSS and stops the processes.

use crate::drive::{self, Classify, Item, Percentiles, Tracker};
use crate::fleet::Fleet;
use crate::measure::{self, CpuUse, ServerMessages};
use crate::raw::{self, RawLayout};
use crate::report::LoopFigures;
use crate::run::{Env, say};
use anyhow::Result;
use keyloop_core::event::{CloudEvent, LEAK_DETECTED_TYPE};
use keyloop_core::{Fingerprint, LeakFinding, LeakLocation};
use keyloop_nats::{Role, Topology};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::process::Command;

/// A phase fails when no item completes for this long.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A leak finding of the value with `fingerprint`, as `keyloop ingest` publishes it.
fn leak_item(
    topology: &Topology,
    fingerprint: &Fingerprint,
    place: &str,
) -> Result<(String, Item)> {
    let finding = LeakFinding {
        fingerprint: fingerprint.clone(),
        detector: "keyloop-bench".into(),
        location: LeakLocation {
            repo: Some("bench/fleet".into()),
            file: Some(format!("{place}.env")),
            line: Some(1),
            ..Default::default()
        },
    };
    let id = finding.dedup_key();
    let event = CloudEvent::new(id.clone(), "keyloop/bench", LEAK_DETECTED_TYPE, finding)
        .caused_by(Some(id.clone()), None);
    let item = Item {
        subject: topology.leak_detected(),
        msg_id: id.clone(),
        payload: serde_json::to_vec(&event)?.into(),
    };
    Ok((id, item))
}

/// The two phases of one loop: latency at the planned rate, then throughput.
struct Phases {
    latency: Vec<Item>,
    throughput: Vec<Item>,
    /// Completion events to subscribe to.
    subjects: Vec<String>,
    /// Stage names, in the order an item completes them.
    stages: &'static [&'static str],
    /// The classifier of phase 0 (latency) or 1 (throughput): item numbers are per phase.
    classify: Box<dyn Fn(usize) -> Classify + Send + Sync>,
}

/// The raw JetStream loop in `keyloop-bench raw-worker` processes of this binary.
pub(crate) async fn raw(env: &Env<'_>) -> Result<LoopFigures> {
    let plan = env.plan;
    let layout = RawLayout::new(env.topology.prefix());
    const PHASE_NAMES: [&str; 2] = ["lat", "tput"];
    // The same payload as a leak finding, so both loops move the same bytes.
    let items = |phase: usize, n: usize| -> Result<Vec<Item>> {
        (0..n)
            .map(|i| {
                let key = format!("{}.{i}", PHASE_NAMES[phase]);
                let fp = Fingerprint::of_bytes(key.as_bytes());
                let (_, mut item) = leak_item(&env.topology, &fp, &key)?;
                item.subject = layout.in_subject(&key);
                item.msg_id = format!("raw-{key}");
                Ok(item)
            })
            .collect()
    };
    let phases = Phases {
        latency: items(0, plan.latency_leaks)?,
        throughput: items(1, plan.throughput_leaks)?,
        subjects: vec![layout.done_all()],
        stages: &["done"],
        classify: Box::new(|phase| {
            // `<prefix>.bench.done.<phase>.<i>`
            let name = PHASE_NAMES[phase];
            Arc::new(move |msg| {
                let mut tokens = msg.subject.as_str().rsplit('.');
                let i = tokens.next()?.parse().ok()?;
                (tokens.next()? == name).then_some((0, i))
            })
        }),
    };
    let exe = std::env::current_exe()?;
    let concurrency = plan.concurrency.to_string();
    let fleet = Fleet::start("raw-worker", plan.replicas, env.dir, || {
        let mut cmd = Command::new(&exe);
        cmd.args(["raw-worker", "--concurrency", &concurrency])
            .env("KEYLOOP_NATS_URL", &env.url)
            .env("KEYLOOP_PREFIX", env.topology.prefix());
        cmd
    })?;
    let consumers = [(layout.in_stream(), raw::CONSUMER.to_owned())];
    run_suite(env, "raw loop", fleet, &consumers, &phases).await
}

/// keyloop's loop in `keyloop worker leak-responder revoker rotator` processes; every leak
/// hits its own live credential.
pub(crate) async fn keyloop(env: &Env<'_>) -> Result<LoopFigures> {
    let plan = env.plan;
    // Leak id → credential number; leak c hits credential c.
    let mut ids = HashMap::new();
    let mut items = |range: std::ops::Range<usize>| -> Result<Vec<Item>> {
        range
            .map(|c| {
                let (id, item) =
                    leak_item(&env.topology, &env.fingerprints[c], &format!("leak-{c}"))?;
                ids.insert(id, c);
                Ok(item)
            })
            .collect()
    };
    let latency = items(0..plan.latency_leaks)?;
    let throughput = items(plan.latency_leaks..plan.latency_leaks + plan.throughput_leaks)?;
    let ids = Arc::new(ids);
    let p = env.topology.prefix();
    let (revoked, rotated) = (
        format!("{p}.lifecycle.revoked."),
        format!("{p}.lifecycle.rotated."),
    );
    let first_of_phase = [0, plan.latency_leaks];
    let phases = Phases {
        latency,
        throughput,
        subjects: vec![
            env.topology.lifecycle("revoked", ">"),
            env.topology.lifecycle("rotated", ">"),
        ],
        stages: &["revoked", "rotated"],
        classify: Box::new(move |phase| {
            let (ids, revoked, rotated) = (ids.clone(), revoked.clone(), rotated.clone());
            let first = first_of_phase[phase];
            Arc::new(move |msg| {
                let subject = msg.subject.as_str();
                let stage = if subject.starts_with(&revoked) {
                    0
                } else if subject.starts_with(&rotated) {
                    1
                } else {
                    return None;
                };
                // The event's correlation id is the leak's id.
                #[derive(serde::Deserialize)]
                struct Correlation {
                    correlationid: Option<String>,
                }
                let c: Correlation = serde_json::from_slice(&msg.payload).ok()?;
                let credential = *ids.get(c.correlationid.as_deref()?)?;
                Some((stage, credential.checked_sub(first)?))
            })
        }),
    };
    let concurrency = plan.concurrency.to_string();
    let fleet = Fleet::start("keyloop-worker", plan.replicas, env.dir, || {
        let mut cmd = env.keyloop_command();
        cmd.args(["worker", "leak-responder", "revoker", "rotator"])
            .args(["--concurrency", &concurrency]);
        cmd
    })?;
    let consumers: Vec<_> = [Role::LeakResponder, Role::Revoker, Role::Rotator]
        .iter()
        .map(|&r| (env.topology.consumer_of(r).0, r.name().to_owned()))
        .collect();
    run_suite(env, "keyloop", fleet, &consumers, &phases).await
}

/// Waits for the fleet to pull, runs both phases, reads the peak RSS and stops the fleet.
async fn run_suite(
    env: &Env<'_>,
    name: &str,
    mut fleet: Fleet,
    consumers: &[(String, String)],
    phases: &Phases,
) -> Result<LoopFigures> {
    let plan = env.plan;
    fleet.wait_ready(&env.bus.js, consumers).await?;
    say(&format!(
        "{name}: {} worker process(es) pulling (pids {:?})",
        plan.replicas,
        fleet.pids()
    ));
    say(&format!(
        "{name}: latency phase, {} leaks at {}/s",
        phases.latency.len(),
        plan.rate
    ));
    let latency = run_phase(
        env,
        &fleet,
        &format!("{name} latency"),
        &phases.latency,
        phases,
        0,
        Some(f64::from(plan.rate)),
    )
    .await?;
    say(&format!(
        "{name}: throughput phase, {} leaks as fast as possible",
        phases.throughput.len()
    ));
    let throughput = run_phase(
        env,
        &fleet,
        &format!("{name} throughput"),
        &phases.throughput,
        phases,
        1,
        None,
    )
    .await?;
    fleet.check_alive()?;
    let peak_rss = fleet.peak_rss_bytes();
    fleet.stop().await;
    let stages = 0..phases.stages.len();
    Ok(LoopFigures {
        latency: stages
            .clone()
            .map(|s| Percentiles::of(latency.tracker.latencies(s)))
            .collect(),
        latency_sent_rate: latency.published.rate,
        latency_cpu: latency.cpu,
        throughput: stages
            .map(|s| throughput.tracker.sustained_rate(s))
            .collect(),
        throughput_cpu: throughput.cpu,
        throughput_msgs: throughput.msgs,
        peak_rss,
    })
}

/// What one phase did.
struct PhaseRun {
    tracker: Arc<Tracker>,
    published: drive::Published,
    cpu: CpuUse,
    msgs: Option<ServerMessages>,
}

/// Publishes `items` (at `rate`, or as fast as possible) and waits until each completed every
/// stage; measures the CPU time the server, the workers and this process spent meanwhile.
async fn run_phase(
    env: &Env<'_>,
    fleet: &Fleet,
    label: &str,
    items: &[Item],
    phases: &Phases,
    phase: usize,
    rate: Option<f64>,
) -> Result<PhaseRun> {
    let tracker = Arc::new(Tracker::new(items.len(), phases.stages.len()));
    let collector = drive::collect(
        &env.watch,
        &phases.subjects,
        tracker.clone(),
        (phases.classify)(phase),
    )
    .await?;
    let cpu_before = CpuUse::now(env.server_pid, &fleet.pids());
    let msgs_before = measure::server_messages(env.monitor.as_deref()).await;
    let started = Instant::now();
    let result = async {
        let published = drive::publish(&env.load, items, &tracker, rate).await?;
        for (s, stage) in phases.stages.iter().enumerate() {
            tracker
                .wait_all(s, &format!("{label}: {stage}"), STALL_TIMEOUT)
                .await?;
        }
        anyhow::Ok(published)
    }
    .await;
    let cpu = CpuUse::now(env.server_pid, &fleet.pids()).since(&cpu_before, started.elapsed());
    let msgs_after = measure::server_messages(env.monitor.as_deref()).await;
    let msgs = msgs_before.zip(msgs_after).map(|(a, b)| b.since(&a));
    collector.abort();
    Ok(PhaseRun {
        tracker,
        published: result?,
        cpu,
        msgs,
    })
}
