//! `keyloop-bench ingest-serve`: how many tokens a second `keyloop ingest serve`'s partner
//! endpoint takes in, end to end, on this machine. A run starts its own nats-server (file
//! storage) and `keyloop ingest serve` (the binary [`binaries::keyloop`] finds), indexes one
//! token in `--managed-every` as a keyloop value, then sends `--tokens` tokens in signed
//! batches of `--batch` over `--connections` keep-alive connections, as GitHub's secret
//! scanning would. Each answer must be a 200 with one feedback entry per token, the managed
//! ones `true_positive`; the stream must hold one leak event per token at the end.
//!
//! Measured: wall time from the first request to the last answer (signing is done before, it
//! is GitHub's work), per-request latency, and the CPU time of `ingest serve` and of the
//! server. What a token costs there: the signature check of its batch, parsing and hashing,
//! a leak event published and acknowledged, and a fingerprint index lookup (four direct gets
//! for a token that is not keyloop's: the hashed and the legacy keys of both digests).

use crate::binaries;
use crate::cli::Global;
use crate::drive::Percentiles;
use crate::measure::CpuUse;
use crate::run::say;
use anyhow::{Context, Result, bail, ensure};
use futures::StreamExt;
use keyloop_core::{Fingerprint, Secret};
use keyloop_nats::server::{self, ServerOptions, ServerProcess};
use keyloop_nats::{Bus, FingerprintRef, Topology};
use keyloop_testkit::webhook::{GithubSigner, HttpClient};
use serde_json::json;
use std::collections::VecDeque;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};

/// What `ingest-serve` sends, and how.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ServeBench {
    /// Tokens to send in all.
    #[arg(long, default_value_t = 20_000)]
    pub(crate) tokens: usize,
    /// Tokens per signed request (GitHub sends large batches).
    #[arg(long, default_value_t = 1_000)]
    pub(crate) batch: usize,
    /// Requests in flight at once, one keep-alive connection each.
    #[arg(long, default_value_t = 4)]
    pub(crate) connections: usize,
    /// One token in this many is indexed as a keyloop value (answered `true_positive`).
    #[arg(long, default_value_t = 100)]
    pub(crate) managed_every: usize,
}

/// One signed request, ready to send.
struct Request {
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    tokens: usize,
    managed: usize,
}

/// What a run measured.
struct Figures {
    elapsed: Duration,
    latency: Percentiles,
    cpu: CpuUse,
    true_positives: usize,
    stored: u64,
}

pub(crate) async fn run(g: &Global, args: &ServeBench) -> Result<()> {
    ensure!(args.tokens >= 1, "--tokens must be at least 1");
    ensure!(
        (1..=50_000).contains(&args.batch),
        "--batch must be from 1 to 50000 (a batch is one request body)"
    );
    ensure!(
        (1..=64).contains(&args.connections),
        "--connections must be from 1 to 64"
    );
    ensure!(
        args.managed_every >= 1,
        "--managed-every must be at least 1"
    );
    let (keyloop, version) = binaries::keyloop().await?;
    say(&format!("driving {} ({version})", keyloop.display()));
    let dir = tempfile::Builder::new()
        .prefix("keyloop-bench-serve-")
        .tempdir()?;
    match bench(g, args, &keyloop, dir.path()).await {
        Ok(figures) => print(g, args, &figures),
        Err(e) => {
            let kept = dir.keep();
            Err(e.context(format!(
                "bench failed; its server store and the ingest serve log are kept in {}",
                kept.display()
            )))
        }
    }
}

async fn bench(g: &Global, args: &ServeBench, keyloop: &Path, dir: &Path) -> Result<Figures> {
    let binary = binaries::nats_server().await?;
    let server_version = server::check_binary(&binary).await?;
    let mut server = ServerProcess::start(&ServerOptions {
        binary,
        store_dir: dir.join("nats"),
        port: None,
        extra_args: Vec::new(),
    })
    .await?;
    say(&format!(
        "nats-server {server_version} on {} (file storage)",
        server.url()
    ));
    let bus = Bus::connect(server.url(), Topology::new(&g.prefix)).await?;
    bus.topology.init(&bus.js).await?;

    let tokens: Vec<String> = (0..args.tokens)
        .map(|i| format!("kl_bench_serve_{i:08}_0123456789abcdef"))
        .collect();
    index_managed(&bus, &tokens, args.managed_every).await?;
    let signer = GithubSigner::generate("bench-key", true);
    let keys = dir.join("github-keys.json");
    std::fs::write(&keys, GithubSigner::key_list(&[&signer]))?;
    let requests = sign_batches(&signer, &tokens, args.batch, Some(args.managed_every));

    let log = dir.join("ingest-serve.log");
    let mut serve = tokio::process::Command::new(keyloop)
        .args(["ingest", "serve", "--listen", "127.0.0.1:0", "--json"])
        .arg("--github-keys")
        .arg(&keys)
        .args(["--rate-limit", "1000000", "--rate-burst", "1000000"])
        .env("KEYLOOP_NATS_URL", server.url())
        .env("KEYLOOP_PREFIX", &g.prefix)
        .env_remove("KEYLOOP_NATS_USER")
        .env_remove("KEYLOOP_NATS_PASSWORD")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log)?)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("start {} ingest serve", keyloop.display()))?;
    let addr = listening_address(&mut serve, &log).await?;
    say(&format!(
        "ingest serve on {addr} (pid {})",
        serve.id().unwrap_or_default()
    ));

    // One small batch first, not counted: connections, the key list and the index warmed up.
    let warm_up: Vec<String> = (0..10).map(|i| format!("kl_bench_warm_up_{i}")).collect();
    let warm_up = sign_batches(&signer, &warm_up, args.batch, None);
    send_all(addr, warm_up, 1).await?;

    say(&format!(
        "sending {} tokens in {} signed batches of {} over {} connections",
        args.tokens,
        requests.len(),
        args.batch,
        args.connections
    ));
    let cpu_before = CpuUse::now(server.pid(), &serve.id().into_iter().collect::<Vec<_>>());
    let started = Instant::now();
    let (latencies, true_positives) = send_all(addr, requests, args.connections).await?;
    let elapsed = started.elapsed();
    let cpu = CpuUse::now(server.pid(), &serve.id().into_iter().collect::<Vec<_>>())
        .since(&cpu_before, elapsed);

    let stored = bus
        .js
        .get_stream(bus.topology.events_stream())
        .await?
        .info()
        .await?
        .state
        .messages;
    ensure!(
        stored == (args.tokens + 10) as u64,
        "the events stream holds {stored} leak events, expected {} (the tokens and the warm-up)",
        args.tokens + 10
    );
    stop(&mut serve).await;
    bus.close().await;
    server.kill().await;
    Ok(Figures {
        elapsed,
        latency: Percentiles::of(latencies),
        cpu,
        true_positives,
        stored,
    })
}

/// Puts one token in `every` into the fingerprint index, as a version of a credential.
async fn index_managed(bus: &Bus, tokens: &[String], every: usize) -> Result<()> {
    let index = bus.fingerprints().await?;
    let managed: Vec<_> = tokens.iter().step_by(every).collect();
    say(&format!(
        "indexing {} tokens as keyloop values",
        managed.len()
    ));
    futures::stream::iter(managed.into_iter().enumerate())
        .map(|(i, token)| {
            let index = index.clone();
            let keys = Fingerprint::of(&Secret::from(token.as_str())).index_keys();
            async move {
                let target = FingerprintRef::Version {
                    credential: format!("bench/serve-{i:06}").parse()?,
                    version: uuid::Uuid::now_v7(),
                };
                index.put(&keys, &target).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// The tokens in signed batches of `batch`; one in `managed_every` is a keyloop value.
fn sign_batches(
    signer: &GithubSigner,
    tokens: &[String],
    batch: usize,
    managed_every: Option<usize>,
) -> Vec<Request> {
    tokens
        .chunks(batch)
        .enumerate()
        .map(|(b, chunk)| {
            let first = b * batch;
            let matches: Vec<_> = chunk
                .iter()
                .map(|token| {
                    json!({
                        "token": token,
                        "type": "keyloop_bench_token",
                        "url": "https://github.com/acme/app/blob/0123456789abcdef0123456789abcdef01234567/.env",
                        "source": "content",
                    })
                })
                .collect();
            let body = serde_json::to_vec(&matches).expect("a batch serializes");
            Request {
                headers: signer.headers(&body),
                body,
                tokens: chunk.len(),
                managed: managed_every.map_or(0, |every| {
                    (first..first + chunk.len())
                        .filter(|i| i % every == 0)
                        .count()
                }),
            }
        })
        .collect()
}

/// Sends every request over `connections` connections; the latency of each and the number of
/// `true_positive` labels. An answer that is not a 200 with one entry per token, or whose
/// true positives are not the managed tokens, fails the run.
async fn send_all(
    addr: SocketAddr,
    requests: Vec<Request>,
    connections: usize,
) -> Result<(Vec<Duration>, usize)> {
    let queue = Arc::new(Mutex::new(VecDeque::from(requests)));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let queue = queue.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = HttpClient::connect(addr).await?;
            let mut latencies = Vec::new();
            let mut true_positives = 0;
            loop {
                let Some(request) = queue.lock().expect("queue").pop_front() else {
                    break;
                };
                let sent = Instant::now();
                let answer = client
                    .send(
                        "POST",
                        "/github/secret-scanning",
                        &request.headers,
                        request.body,
                    )
                    .await?;
                latencies.push(sent.elapsed());
                if answer.status != 200 {
                    bail!(
                        "ingest serve answered {}: {}",
                        answer.status,
                        String::from_utf8_lossy(&answer.body)
                    );
                }
                let feedback = answer.json();
                let entries = feedback.as_array().context("the answer is not an array")?;
                ensure!(
                    entries.len() == request.tokens,
                    "{} feedback entries for {} tokens",
                    entries.len(),
                    request.tokens
                );
                let labelled = entries
                    .iter()
                    .filter(|e| e["label"] == "true_positive")
                    .count();
                ensure!(
                    labelled == request.managed,
                    "{labelled} true positives for {} managed tokens",
                    request.managed
                );
                true_positives += labelled;
            }
            anyhow::Ok((latencies, true_positives))
        }));
    }
    let mut latencies = Vec::new();
    let mut true_positives = 0;
    for task in tasks {
        let (l, t) = task.await.context("a sender panicked")??;
        latencies.extend(l);
        true_positives += t;
    }
    Ok((latencies, true_positives))
}

/// The address `ingest serve` prints on its first line.
async fn listening_address(serve: &mut tokio::process::Child, log: &Path) -> Result<SocketAddr> {
    let stdout = serve.stdout.take().context("ingest serve's stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .context("ingest serve did not start listening within 30 s")??;
    let Some(first) = first else {
        bail!(
            "ingest serve exited: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    };
    let listening: serde_json::Value = serde_json::from_str(&first)
        .with_context(|| format!("ingest serve printed {first:?}, not its address"))?;
    listening["listening"]
        .as_str()
        .context("no `listening` in ingest serve's first line")?
        .parse()
        .context("ingest serve's address")
}

/// SIGTERM, and a bounded wait.
async fn stop(serve: &mut tokio::process::Child) {
    if let Some(pid) = serve.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), serve.wait()).await;
}

fn print(g: &Global, args: &ServeBench, f: &Figures) -> Result<()> {
    let secs = f.elapsed.as_secs_f64();
    let rate = args.tokens as f64 / secs;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mut text = String::new();
    if !g.json {
        text.push_str(&format!(
            "keyloop ingest serve, partner endpoint: {} tokens in {} batches of {} over {} \
             connections, {} CPUs\n",
            args.tokens,
            f.latency.count,
            args.batch,
            args.connections,
            std::thread::available_parallelism().map_or(0, |n| n.get())
        ));
        text.push_str(&format!(
            "  throughput      {rate:>10.0} tokens/s ({secs:.2} s)\n  batch latency   p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms\n  cpu             ingest serve {:.2} s, nats-server {:.2} s\n  true positives  {} (one token in {}); {} leak events stored\n",
            ms(f.latency.p50),
            ms(f.latency.p99),
            ms(f.latency.max),
            f.cpu.workers.as_secs_f64(),
            f.cpu.server.as_secs_f64(),
            f.true_positives,
            args.managed_every,
            f.stored,
        ));
    }
    let line = json!({
        "tokens": args.tokens,
        "batch": args.batch,
        "connections": args.connections,
        "seconds": secs,
        "tokens_per_s": rate,
        "batch_p50_ms": ms(f.latency.p50),
        "batch_p99_ms": ms(f.latency.p99),
        "serve_cpu_s": f.cpu.workers.as_secs_f64(),
        "server_cpu_s": f.cpu.server.as_secs_f64(),
        "true_positives": f.true_positives,
    });
    text.push_str(&line.to_string());
    text.push('\n');
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => crate::report::StdoutClosed.into(),
            _ => anyhow::Error::new(e).context("cannot write to standard output"),
        })
}
