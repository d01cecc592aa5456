//! The worker processes of one system under test: K children (`keyloop worker …`, or
//! `keyloop-bench raw-worker` of this binary), each with its stderr in a log file. Separate
//! processes make the peak RSS a per-worker figure and give both systems the same process model.

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
pub(crate) struct Fleet {
    name: String,
    children: Vec<(Child, PathBuf)>,
}

impl Fleet {
    /// Starts `replicas` processes built by `command`; process `i` logs to
    /// `<log_dir>/<name>-<i>.log`.
    pub(crate) fn start(
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
    pub(crate) async fn wait_ready(
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
    pub(crate) fn check_alive(&mut self) -> Result<()> {
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
    pub(crate) fn peak_rss_bytes(&self) -> Option<u64> {
        self.children
            .iter()
            .filter_map(|(c, _)| c.id())
            .filter_map(crate::measure::vm_hwm_bytes)
            .max()
    }

    /// The processes' ids (printed, so a profiler can be attached to a run).
    pub(crate) fn pids(&self) -> Vec<u32> {
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
    pub(crate) async fn stop(mut self) {
        for (child, _) in &mut self.children {
            let _ = child.kill().await;
        }
    }
}
