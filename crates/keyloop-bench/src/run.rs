//! One run from start to end: its own nats-server (file storage, a monitoring port) in a
//! temporary directory, keyloop's layout and the raw loop's, the credentials the leaks will hit,
//! then every suite in order, and the report. A failed run keeps the directory (server store,
//! worker logs) and says where it is.

use crate::binaries;
use crate::cli::{BenchArgs, Global};
use crate::measure;
use crate::plan::Plan;
use crate::raw::RawLayout;
use crate::report::Report;
use crate::{jit, suites, sweep};
use anyhow::{Context, Result};
use futures::StreamExt;
use keyloop_backends::MasterKey;
use keyloop_core::{Fingerprint, Policy, StoreKind, TargetKind};
use keyloop_nats::server::{self, ServerOptions, ServerProcess};
use keyloop_nats::{Bus, Topology};
use keyloop_workers::WorkerContext;
use keyloop_workers::ops::{self, Cause, Registration};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Registrations in flight while seeding the inventory.
const REGISTER_CONCURRENCY: usize = 128;

/// Progress for the person watching, on stderr (stdout is the report).
pub(crate) fn say(text: &str) {
    eprintln!("[bench] {text}");
}

/// Runs the bench the flags describe and prints its report.
pub(crate) async fn run(g: &Global, args: &BenchArgs) -> Result<()> {
    let plan = Plan::new(args)?;
    // Before the server starts: a missing `keyloop` should cost nothing but this message.
    let (keyloop, version) = binaries::keyloop().await?;
    say(&format!("driving {} ({version})", keyloop.display()));
    let dir = tempfile::Builder::new()
        .prefix("keyloop-bench-")
        .tempdir()?;
    match bench(g, plan, keyloop, dir.path()).await {
        Ok(report) => report.print(g.json),
        Err(e) => {
            let kept = dir.keep();
            Err(e.context(format!(
                "bench failed; its server store and worker logs are kept in {}",
                kept.display()
            )))
        }
    }
}

/// What every suite runs against.
pub(crate) struct Env<'a> {
    pub(crate) plan: &'a Plan,
    /// The run's directory: server store, master key, worker logs and data directory.
    pub(crate) dir: &'a Path,
    /// The `keyloop` binary the keyloop workers run.
    pub(crate) keyloop: PathBuf,
    pub(crate) url: String,
    pub(crate) topology: Topology,
    /// Setup, consumer checks; the keyloop context's connection.
    pub(crate) bus: Bus,
    /// Publishes the load.
    pub(crate) load: async_nats::jetstream::Context,
    /// Sees the completion events.
    pub(crate) watch: async_nats::Client,
    pub(crate) server_pid: Option<u32>,
    /// The server's monitoring endpoint (`/varz` counts messages).
    pub(crate) monitor: Option<String>,
    /// The fingerprint of each registered credential's current value, in order.
    pub(crate) fingerprints: Vec<Fingerprint>,
}

impl Env<'_> {
    /// A `keyloop` command with this run's server, prefix, master key and data directory, and
    /// nothing of the caller's environment that would point it elsewhere.
    pub(crate) fn keyloop_command(&self) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.keyloop);
        cmd.env("KEYLOOP_NATS_URL", &self.url)
            .env("KEYLOOP_PREFIX", self.topology.prefix())
            .env("KEYLOOP_MASTER_KEY_FILE", self.dir.join("master.key"))
            .env("KEYLOOP_DATA_DIR", self.dir.join("data"))
            .env_remove("KEYLOOP_MASTER_KEY");
        cmd
    }
}

async fn bench(g: &Global, plan: Plan, keyloop: PathBuf, dir: &Path) -> Result<Report> {
    let started = Instant::now();
    let load_start = measure::load_average();
    let binary = binaries::nats_server().await?;
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
    let key = write_master_key(dir)?;
    let ctx = Arc::new(WorkerContext::open(bus.clone(), Some(&key)).await?);
    let fingerprints = register(&ctx, plan.credentials).await?;
    let url = server.url().to_owned();
    let env = Env {
        plan: &plan,
        dir,
        keyloop,
        load: async_nats::jetstream::new(connect(&url, "keyloop-bench-load").await?),
        watch: connect(&url, "keyloop-bench-watch").await?,
        url,
        topology,
        bus,
        fingerprints,
        server_pid: server.pid(),
        monitor: server
            .pid()
            .and_then(|pid| measure::monitor_address(dir, pid)),
    };

    // The raw loop runs first, on the emptier server: if the order favours anyone, it favours
    // the baseline, never keyloop's ratios. Each suite stops its processes before the next, so
    // suites never share the machine.
    // A failed phase says which (the errors inside say what: a request, a wait).
    let raw = suites::raw(&env)
        .await
        .context("phase: raw JetStream loop (latency, then throughput)")?;
    let keyloop = suites::keyloop(&env)
        .await
        .context("phase: keyloop (latency, then throughput)")?;
    let jit = jit::run(&env)
        .await
        .context("phase: JIT (raw request/reply, then jit.issue)")?;
    let sweep = sweep::run(&env, jit.live_leases)
        .await
        .context("phase: sweep of live leases")?;
    env.bus.close().await;
    server.kill().await;
    Ok(Report {
        server_version,
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_start,
        load_end: measure::load_average(),
        raw: Some(raw),
        keyloop: Some(keyloop),
        jit: Some(jit),
        sweep: Some(sweep),
        elapsed: started.elapsed(),
        plan,
    })
}

/// A client of the run's server, named so `connz` tells the bench's connections apart.
pub(crate) async fn connect(url: &str, name: &str) -> Result<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .name(name)
        .connect(url)
        .await
        .with_context(|| format!("connect to {url}"))
}

/// Writes a fresh master key to `<dir>/master.key` (mode 0600, which `keyloop` requires of a
/// key file) for the run's local store and its workers.
fn write_master_key(dir: &Path) -> Result<MasterKey> {
    use std::io::Write;
    let path = dir.join("master.key");
    let key = MasterKey::generate();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(key.to_hex().as_bytes())?;
    f.write_all(b"\n")?;
    Ok(key)
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
                        ..Default::default()
                    },
                    settings: Default::default(),
                };
                let cred = ops::register(&ctx, reg, &cause)
                    .await
                    .with_context(|| format!("register bench/c{i:06}"))?
                    .credential;
                let current = cred
                    .current()
                    .context("a registered credential has a current version")?;
                // The record keeps only a tag: the digests a leak names come from the value.
                let value = ctx
                    .backends
                    .store(StoreKind::Local)?
                    .get(&cred, current.id)
                    .await
                    .map_err(|e| anyhow::anyhow!("read bench/c{i:06}: {e}"))?
                    .context("a registered credential's value is in its store")?;
                anyhow::Ok(Fingerprint::of(&value))
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
