//! `keyloop bench`: how close keyloop is to what NATS itself allows on this machine. Starts its
//! own nats-server (file storage), registers credentials, then runs each suite on that server:
//! the raw JetStream loop (pull → KV compare-and-set → publish with ack → ack) and keyloop's
//! leak → revoke → rotate loop, each in K worker processes with the same concurrency, each
//! through a latency phase (leaks at a fixed rate, publish → event seen here) and a throughput
//! phase (leaks as fast as possible). Prints a table and, as its last line, one JSON object.
//!
//! `keyloop bench raw-worker` (hidden) is the raw loop's worker process.

mod drive;
mod fleet;
mod raw;
mod report;

use crate::cli::{BenchArgs, BenchWorker, Global};
use crate::config;
use anyhow::{Context, Result, bail};
use drive::{Classify, Item, Percentiles, Tracker};
use fleet::Fleet;
use futures::StreamExt;
use keyloop_core::event::{CloudEvent, LEAK_DETECTED_TYPE};
use keyloop_core::{Fingerprint, LeakFinding, LeakLocation, Policy, StoreKind, TargetKind};
use keyloop_nats::server::{self, ServerOptions, ServerProcess};
use keyloop_nats::{Bus, Role, Topology};
use keyloop_workers::WorkerContext;
use keyloop_workers::ops::{self, Cause, Registration};
use raw::RawLayout;
use report::{LoopFigures, Report};
use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::process::Command;

/// Registrations in flight while seeding the inventory.
const REGISTER_CONCURRENCY: usize = 128;
/// A phase fails when no item completes for this long.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// What a run measures, in order. Each suite starts its own worker processes and stops them
/// before the next, so suites never share the machine.
#[derive(Debug, Clone, Copy)]
enum Suite {
    /// The baseline. It runs first, on the emptier server: if the order favours anyone, it
    /// favours the baseline, never keyloop's ratios.
    RawLoop,
    /// keyloop's leak → revoke → rotate loop.
    Keyloop,
    /// JIT issue latency through `keyloop.jit.issue` against a raw NATS request/reply: slots in
    /// here once JIT exists; until then it only says so.
    Jit,
}

const SUITES: [Suite; 3] = [Suite::RawLoop, Suite::Keyloop, Suite::Jit];

/// The run, from the flags.
#[derive(Debug, Clone)]
pub(super) struct Plan {
    pub(super) rate: u32,
    pub(super) duration: Duration,
    pub(super) latency_leaks: usize,
    pub(super) throughput_leaks: usize,
    pub(super) replicas: usize,
    pub(super) concurrency: usize,
    pub(super) credentials: usize,
    pub(super) smoke: bool,
}

impl Plan {
    fn new(args: &BenchArgs) -> Result<Self> {
        let (rate, duration, throughput_leaks) = if args.smoke {
            (100, Duration::from_secs(1), 100)
        } else {
            (
                args.rate,
                super::duration_arg(keyloop_core::duration::BENCH_DURATION, &args.duration)?,
                args.leaks,
            )
        };
        if rate == 0 || duration.is_zero() || throughput_leaks == 0 {
            bail!("--rate, --duration and --leaks must be greater than zero");
        }
        if !(1..=64).contains(&args.replicas) || args.concurrency == 0 {
            bail!("--replicas must be 1 to 64 and --concurrency at least 1");
        }
        let latency_leaks = (f64::from(rate) * duration.as_secs_f64()).ceil() as usize;
        // Each leak must hit a distinct live credential: a leak of a revoked version is inert.
        let needed = latency_leaks + throughput_leaks;
        let credentials = args.credentials.unwrap_or(needed);
        if credentials < needed {
            bail!(
                "--credentials {credentials} is too few: every leak needs its own live credential, so at least rate × duration + leaks = {needed}"
            );
        }
        Ok(Self {
            rate,
            duration,
            latency_leaks,
            throughput_leaks,
            replicas: args.replicas,
            concurrency: args.concurrency,
            credentials,
            smoke: args.smoke,
        })
    }
}

pub(crate) async fn run(g: &Global, args: BenchArgs) -> Result<ExitCode> {
    if let Some(BenchWorker::RawWorker { concurrency }) = args.worker {
        return raw::run_worker(g, concurrency).await;
    }
    let plan = Plan::new(&args)?;
    let dir = tempfile::Builder::new()
        .prefix("keyloop-bench-")
        .tempdir()?;
    match bench(g, plan, dir.path()).await {
        Ok(report) => {
            report.print(g.json)?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            let kept = dir.keep();
            Err(e.context(format!(
                "bench failed; its server store and worker logs are kept in {}",
                kept.display()
            )))
        }
    }
}

fn say(text: &str) {
    eprintln!("[bench] {text}");
}

/// What every suite runs against.
struct Env<'a> {
    plan: &'a Plan,
    dir: &'a Path,
    url: String,
    topology: Topology,
    /// Setup, consumer checks; the keyloop context's connection.
    bus: Bus,
    /// Publishes the load.
    load: async_nats::jetstream::Context,
    /// Sees the completion events.
    watch: async_nats::Client,
    server_pid: Option<u32>,
    /// The server's monitoring endpoint (`/varz` counts messages).
    monitor: Option<String>,
    fingerprints: Vec<Fingerprint>,
}

async fn bench(g: &Global, plan: Plan, dir: &Path) -> Result<Report> {
    let started = Instant::now();
    let load_start = load_average();
    let binary = config::nats_server_binary().await?;
    let server_version = server::check_binary(&binary).await?;
    let mut server = ServerProcess::start(&ServerOptions {
        binary,
        store_dir: dir.join("nats"),
        port: None,
        // A monitoring port, for the message counts in /varz.
        extra_args: vec!["-m".into(), "-1".into()],
    })
    .await?;
    say(&format!(
        "nats-server {server_version} on {} (pid {}), JetStream file storage in {}",
        server.url(),
        server.pid().unwrap_or_default(),
        dir.join("nats").display()
    ));
    let topology = Topology::new(&g.prefix);
    let bus = Bus::connect(server.url(), topology.clone()).await?;
    bus.topology.init(&bus.js).await?;
    RawLayout::new(&g.prefix).init(&bus.js).await?;
    let (key, _) = config::ensure_dev_key(dir)?;
    let ctx = Arc::new(WorkerContext::open(bus.clone(), Some(&key)).await?);
    let fingerprints = register(&ctx, plan.credentials).await?;
    let url = server.url().to_owned();
    let env = Env {
        plan: &plan,
        dir,
        load: async_nats::jetstream::new(connect(&url, "keyloop-bench-load").await?),
        watch: connect(&url, "keyloop-bench-watch").await?,
        url,
        topology,
        bus,
        fingerprints,
        server_pid: server.pid(),
        monitor: server
            .pid()
            .and_then(|pid| fleet::monitor_address(dir, pid)),
    };

    let (mut raw, mut keyloop, mut jit, unavailable) = (None, None, None, Vec::new());
    for suite in SUITES {
        match suite {
            Suite::RawLoop => raw = Some(raw_suite(&env).await?),
            Suite::Keyloop => keyloop = Some(keyloop_suite(&env).await?),
            Suite::Jit => jit = Some(jit_suite(&env).await?),
        }
    }
    env.bus.close().await;
    server.kill().await;
    Ok(Report {
        server_version,
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_start,
        load_end: load_average(),
        raw,
        keyloop,
        jit,
        unavailable,
        elapsed: started.elapsed(),
        plan,
    })
}

async fn connect(url: &str, name: &str) -> Result<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .name(name)
        .connect(url)
        .await
        .with_context(|| format!("connect to {url}"))
}

/// Registers `n` credentials (local store, target none) with bounded concurrency and returns
/// the fingerprint of each one's current value, in order.
async fn register(ctx: &Arc<WorkerContext>, n: usize) -> Result<Vec<Fingerprint>> {
    say(&format!("registering {n} credentials"));
    let started = Instant::now();
    let mut said = Instant::now();
    let mut results = futures::stream::iter(0..n)
        .map(|i| {
            let ctx = ctx.clone();
            tokio::spawn(async move {
                let cause = Cause {
                    source: "keyloop/bench".into(),
                    ..Default::default()
                };
                let reg = Registration {
                    id: format!("bench/c{i:06}").parse()?,
                    store: StoreKind::Local,
                    target: TargetKind::None,
                    policy: Policy {
                        max_age_secs: None,
                        grace_secs: 0,
                        idle_revoke_after_secs: None,
                        owner: None,
                    },
                    settings: Default::default(),
                };
                let cred = ops::register(&ctx, reg, &cause)
                    .await
                    .with_context(|| format!("register bench/c{i:06}"))?
                    .credential;
                cred.current()
                    .map(|v| v.fingerprint.clone())
                    .context("a registered credential has a current version")
            })
        })
        .buffered(REGISTER_CONCURRENCY);
    let mut out = Vec::with_capacity(n);
    while let Some(r) = results.next().await {
        out.push(r.context("registration task panicked")??);
        if said.elapsed() >= Duration::from_secs(3) {
            say(&format!(
                "  registered {}/{n} ({:.0}/s)",
                out.len(),
                out.len() as f64 / started.elapsed().as_secs_f64()
            ));
            said = Instant::now();
        }
    }
    say(&format!(
        "registered {n} credentials in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    Ok(out)
}

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

async fn raw_suite(env: &Env<'_>) -> Result<LoopFigures> {
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
        cmd.args(["bench", "raw-worker", "--concurrency", &concurrency])
            .env("KEYLOOP_NATS_URL", &env.url)
            .env("KEYLOOP_PREFIX", env.topology.prefix());
        cmd
    })?;
    let consumers = [(layout.in_stream(), raw::CONSUMER.to_owned())];
    run_suite(env, "raw loop", fleet, &consumers, &phases).await
}

async fn keyloop_suite(env: &Env<'_>) -> Result<LoopFigures> {
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
    let exe = std::env::current_exe()?;
    let concurrency = plan.concurrency.to_string();
    let key_file = env.dir.join("master.key");
    let fleet = Fleet::start("keyloop-worker", plan.replicas, env.dir, || {
        let mut cmd = Command::new(&exe);
        cmd.args(["worker", "leak-responder", "revoker", "rotator"])
            .args(["--concurrency", &concurrency])
            .env("KEYLOOP_NATS_URL", &env.url)
            .env("KEYLOOP_PREFIX", env.topology.prefix())
            .env("KEYLOOP_MASTER_KEY_FILE", &key_file)
            .env("KEYLOOP_DATA_DIR", env.dir.join("data"))
            .env_remove("KEYLOOP_MASTER_KEY");
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

/// Messages the server received from and sent to clients (its /varz `in_msgs`, `out_msgs`):
/// every publish, request, reply, delivery and ack, the bench's own included.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct ServerMessages {
    pub(super) received: u64,
    pub(super) sent: u64,
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
    let msgs_before = fleet::server_messages(env.monitor.as_deref()).await;
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
    let msgs = match (
        msgs_before,
        fleet::server_messages(env.monitor.as_deref()).await,
    ) {
        (Some(a), Some(b)) => Some(ServerMessages {
            received: b.received.saturating_sub(a.received),
            sent: b.sent.saturating_sub(a.sent),
        }),
        _ => None,
    };
    collector.abort();
    Ok(PhaseRun {
        tracker,
        published: result?,
        cpu,
        msgs,
    })
}

/// CPU time of the server, the workers (all processes) and the bench process; over a phase,
/// with the phase's wall time.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct CpuUse {
    pub(super) server: Duration,
    pub(super) workers: Duration,
    pub(super) bench: Duration,
    pub(super) wall: Duration,
}

impl CpuUse {
    fn now(server: Option<u32>, workers: &[u32]) -> Self {
        let of = |pid: Option<u32>| pid.and_then(fleet::cpu_time).unwrap_or_default();
        Self {
            server: of(server),
            workers: workers.iter().map(|&p| of(Some(p))).sum(),
            bench: of(Some(std::process::id())),
            wall: Duration::ZERO,
        }
    }

    fn since(&self, before: &Self, wall: Duration) -> Self {
        Self {
            server: self.server.saturating_sub(before.server),
            workers: self.workers.saturating_sub(before.workers),
            bench: self.bench.saturating_sub(before.bench),
            wall,
        }
    }
}

/// The 1, 5 and 15 minute load averages, where /proc has them.
fn load_average() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = text.split_whitespace().map(|s| s.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// JIT issue latency: `keyloop.jit.issue` served by a `keyloop worker jit-issuer` process, against
/// a raw request/reply on the same server answered by a bare responder (the least a JIT service
/// could do: receive, reply). Requests are sent one at a time, so each sample is one round trip.
async fn jit_suite(env: &Env<'_>) -> Result<report::JitFigures> {
    let requests = if env.plan.smoke { 50 } else { 2_000 };
    let client = connect(&env.url, "keyloop-bench-jit").await?;

    // The baseline responder: a queue subscription that replies at once.
    let echo_subject = format!("{}.bench.echo", env.topology.prefix());
    let responder = connect(&env.url, "keyloop-bench-echo").await?;
    let mut sub = responder
        .queue_subscribe(echo_subject.clone(), "bench-echo".into())
        .await?;
    responder.flush().await?;
    let echo = tokio::spawn(async move {
        while let Some(msg) = futures::StreamExt::next(&mut sub).await {
            if let Some(reply) = msg.reply {
                let _ = responder.publish(reply, msg.payload).await;
            }
        }
    });
    let mut raw = Vec::with_capacity(requests);
    for i in 0..requests {
        let body = serde_json::to_vec(
            &serde_json::json!({"task_id": format!("bench-{i}"), "agent_id": "bench", "scope": "read", "ttl_secs": 60}),
        )?;
        let t = Instant::now();
        client.request(echo_subject.clone(), body.into()).await?;
        raw.push(t.elapsed());
    }
    echo.abort();

    let exe = std::env::current_exe()?;
    let key_file = env.dir.join("master.key");
    let mut fleet = Fleet::start("keyloop-jit-issuer", 1, env.dir, || {
        let mut cmd = Command::new(&exe);
        cmd.args(["worker", "jit-issuer"])
            .env("KEYLOOP_NATS_URL", &env.url)
            .env("KEYLOOP_PREFIX", env.topology.prefix())
            .env("KEYLOOP_MASTER_KEY_FILE", &key_file)
            .env("KEYLOOP_DATA_DIR", env.dir.join("data"))
            .env_remove("KEYLOOP_MASTER_KEY");
        cmd
    })?;
    let consumers = [(
        env.topology.consumer_of(Role::JitIssuer).0,
        Role::JitIssuer.name().to_owned(),
    )];
    fleet.wait_ready(&env.bus.js, &consumers).await?;
    // Pulling is not serving: wait until the issuer's request subscription answers (a process's
    // start-up has no event to await).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let probe = serde_json::to_vec(
            &serde_json::json!({"task_id": "bench-probe", "agent_id": "bench", "scope": "read", "ttl_secs": 60}),
        )?;
        match client.request(env.topology.jit_issue(), probe.into()).await {
            Ok(_) => break,
            Err(e)
                if e.kind() == async_nats::RequestErrorKind::NoResponders
                    && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => {
                return Err(anyhow::anyhow!(
                    "the jit-issuer does not answer on {}: {e}",
                    env.topology.jit_issue()
                ));
            }
        }
    }
    say(&format!(
        "jit: {requests} issues through {} and as many raw request/replies",
        env.topology.jit_issue()
    ));
    let mut issued = Vec::with_capacity(requests);
    for i in 0..requests {
        let body = serde_json::to_vec(
            &serde_json::json!({"task_id": format!("bench-{i}"), "agent_id": "bench", "scope": "read", "ttl_secs": 60}),
        )?;
        let t = Instant::now();
        let reply = client
            .request(env.topology.jit_issue(), body.into())
            .await?;
        issued.push(t.elapsed());
        anyhow::ensure!(
            serde_json::from_slice::<keyloop_core::lease::IssueReply>(&reply.payload).is_ok(),
            "jit-issuer refused a bench request: {}",
            String::from_utf8_lossy(&reply.payload)
                .chars()
                .take(200)
                .collect::<String>()
        );
    }
    fleet.stop().await;

    // The sweeper's work per tick: with every lease above live (TTL 60 s) and 10 more that
    // expire in 1 s, a sweep 2 s from now must read about those 10, not the whole inventory.
    let ctx = WorkerContext::open(env.bus.clone(), None).await?;
    let now = time::OffsetDateTime::now_utc();
    let policy = keyloop_core::JitPolicy::default();
    for i in 0..10 {
        let req = keyloop_core::lease::IssueRequest {
            task_id: format!("bench-due-{i}"),
            agent_id: "bench".into(),
            scope: "read".into(),
            ttl_secs: 1,
        };
        keyloop_workers::jit_issuer::issue(&ctx, &policy, &req, now)
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    }
    let swept = Instant::now();
    let stats = keyloop_workers::sweeper::sweep(&ctx, now + Duration::from_secs(2)).await?;
    Ok(report::JitFigures {
        keyloop: Percentiles::of(issued),
        raw: Percentiles::of(raw),
        sweep: report::SweepFigures {
            live: requests + 10,
            due: 10,
            stats,
            took: swept.elapsed(),
        },
    })
}
