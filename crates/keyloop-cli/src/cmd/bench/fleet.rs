//! The worker processes of one system under test: K children of this binary (`keyloop worker
//! …` or `keyloop bench raw-worker`), each with its stderr in a log file. Separate processes
//! make the peak RSS a per-worker figure and give both systems the same process model.

use anyhow::{Context, Result, bail};
use async_nats::jetstream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// How long children may take to connect and start pulling.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Running worker processes; killed on drop.
#[derive(Debug)]
pub(super) struct Fleet {
    name: String,
    children: Vec<(Child, PathBuf)>,
}

impl Fleet {
    /// Starts `replicas` processes built by `command`; process `i` logs to
    /// `<log_dir>/<name>-<i>.log`.
    pub(super) fn start(
        name: &str,
        replicas: usize,
        log_dir: &Path,
        command: impl Fn() -> Command,
    ) -> Result<Self> {
        let mut children = Vec::with_capacity(replicas);
        for i in 0..replicas {
            let log = log_dir.join(format!("{name}-{i}.log"));
            let file =
                std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
            let child = command()
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(file)
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("start {name} process {i}"))?;
            children.push((child, log));
        }
        Ok(Self {
            name: name.to_owned(),
            children,
        })
    }

    /// Waits until every process is pulling: each of `consumers` (stream, durable name) has at
    /// least one waiting pull request per process. Fails with the log of a process that exited.
    pub(super) async fn wait_ready(
        &mut self,
        js: &jetstream::Context,
        consumers: &[(String, String)],
    ) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut tick = tokio::time::interval(Duration::from_millis(25));
        loop {
            self.check_alive()?;
            let mut ready = true;
            for (stream, name) in consumers {
                let consumer: jetstream::consumer::PullConsumer = js
                    .get_consumer_from_stream(name, stream)
                    .await
                    .with_context(|| format!("consumer {name} on {stream}"))?;
                let info = consumer.get_info().await?;
                ready &= info.num_waiting >= self.children.len();
            }
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} processes did not start pulling within {} s; logs: {}",
                    self.name,
                    READY_TIMEOUT.as_secs(),
                    self.logs()
                );
            }
            tick.tick().await;
        }
    }

    /// Fails when a process has exited (a worker never stops by itself).
    pub(super) fn check_alive(&mut self) -> Result<()> {
        for (child, log) in &mut self.children {
            if let Some(status) = child.try_wait()? {
                let text = std::fs::read_to_string(&*log).unwrap_or_default();
                let tail: Vec<_> = text.lines().rev().take(10).collect();
                bail!(
                    "a {} process exited ({status}); last lines of {}:\n{}",
                    self.name,
                    log.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
        Ok(())
    }

    /// The largest peak resident set (VmHWM) of the processes, in bytes; `None` where /proc
    /// does not say.
    pub(super) fn peak_rss_bytes(&self) -> Option<u64> {
        self.children
            .iter()
            .filter_map(|(c, _)| c.id())
            .filter_map(vm_hwm_bytes)
            .max()
    }

    /// The processes' ids (printed, so a profiler can be attached to a run).
    pub(super) fn pids(&self) -> Vec<u32> {
        self.children.iter().filter_map(|(c, _)| c.id()).collect()
    }

    fn logs(&self) -> String {
        self.children
            .iter()
            .map(|(_, l)| l.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Kills the processes (the phases are drained, nothing is in hand) and reaps them.
    pub(super) async fn stop(mut self) {
        for (child, _) in &mut self.children {
            let _ = child.kill().await;
        }
    }
}

/// `VmHWM` of `/proc/<pid>/status`, in bytes.
fn vm_hwm_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// CPU time (user + system, all threads) a process has used so far, from `/proc/<pid>/stat`.
pub(super) fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name, in clock
    // ticks of USER_HZ, which Linux fixes at 100 for user space.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// `host:port` of the monitoring endpoint of the server with `pid` started in `dir`, from the
/// ports file it writes (see `ServerProcess::start`).
pub(super) fn monitor_address(dir: &Path, pid: u32) -> Option<String> {
    let file = dir.join(format!("nats/ports/nats-server_{pid}.ports"));
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(file).ok()?).ok()?;
    let url = json.get("monitoring")?.get(0)?.as_str()?;
    Some(url.strip_prefix("http://")?.to_owned())
}

/// The server's message counters, from `GET /varz` (a one-shot HTTP/1.0 request: nothing
/// else here speaks HTTP, so no client library for it).
pub(super) async fn server_messages(monitor: Option<&str>) -> Option<super::ServerMessages> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(monitor?).await.ok()?;
    conn.write_all(b"GET /varz HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .ok()?;
    let mut response = Vec::new();
    conn.read_to_end(&mut response).await.ok()?;
    let body = response.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let varz: serde_json::Value = serde_json::from_slice(&response[body..]).ok()?;
    Some(super::ServerMessages {
        received: varz.get("in_msgs")?.as_u64()?,
        sent: varz.get("out_msgs")?.as_u64()?,
    })
}
