//! The nats-server of a data directory, shared by every `keyloop up` that uses it.
//!
//! The first `up` that finds nothing answering starts the server (in a process group of its
//! own, so a Ctrl-C meant for `up` does not stop it under the workers) and records it in
//! `<data-dir>/nats/server.json`. A later `up` with the same data directory finds the record
//! and joins that server instead of starting a second one on the same JetStream store (two
//! servers on one store directory corrupt it); one whose `--nats` names another address is
//! refused with both addresses. Arrivals and departures are serialized by an exclusive lock on
//! `start.lock`, so two `up`s started at once start one server.
//!
//! The server lives as long as an `up` uses it: each holds a shared lock on `users.lock`, and
//! the one that leaves last (it alone can then take that lock exclusively) stops the server,
//! whoever started it. So stopping the first `up` never takes the server from under a second
//! one, and the second one stopping leaves the first one's server running. An `up` killed
//! with SIGKILL leaves the server running and recorded; the next `up` joins it.
//!
//! An `up` that finds a server answering at `--nats` with no record in its data directory (a
//! server it did not start: another data directory's, or one run by hand) is only a client of
//! it and never stops it.

use crate::cli::Global;
use crate::config;
use anyhow::{Context, Result, bail};
use keyloop_nats::server::{ServerOptions, ServerProcess};
use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How often a wait for a lock held by another `up`, or for a server to exit, looks again:
/// neither a file lock nor a process that is not our child can be awaited.
const POLL: Duration = Duration::from_millis(50);
/// How long a leaving `up` waits for another one that is starting or stopping the server
/// before it leaves the server running.
const LEAVE_LOCK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a server that is not our child gets to exit after SIGTERM before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The data directory's server as this `up` uses it.
pub(crate) struct SharedServer {
    store_dir: PathBuf,
    record: Record,
    /// The server when this `up` started it.
    child: Option<ServerProcess>,
    /// The shared lock on `users.lock`, held while this `up` uses the server.
    users: File,
}

/// What `server.json` says about the data directory's server.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Record {
    pid: u32,
    url: String,
}

/// Finds or starts the server `up` uses. Returns the shared server when it belongs to the data
/// directory (started now or joined), `None` when `up` is only a client of a server found at
/// `--nats`, and the global flags pointing at the server in use.
pub(crate) async fn acquire(g: &Global, data_dir: &Path) -> Result<(Option<SharedServer>, Global)> {
    let (host, port) = host_port(&g.conn.nats)?;
    let store_dir = data_dir.join("nats");
    std::fs::create_dir_all(&store_dir)
        .with_context(|| format!("cannot create {}", store_dir.display()))?;
    // Absolute, so every `up` names the store alike, whatever its working directory: the path
    // is how a recorded pid is recognised as this directory's server.
    let store_dir = std::fs::canonicalize(&store_dir)
        .with_context(|| format!("cannot resolve {}", store_dir.display()))?;
    let _starting = lock_exclusive(&store_dir.join("start.lock")).await?;
    let users = open_lock(&store_dir.join("users.lock"))?;
    // Nobody holds it exclusively: a leaving `up` does so only while it holds `start.lock`.
    users
        .try_lock_shared()
        .context("cannot take a shared lock on users.lock")?;
    let record_path = store_dir.join("server.json");
    if let Some(record) = read_record(&record_path) {
        if is_running(&record, &store_dir) {
            if !same_address(&record.url, &host, port) {
                bail!(
                    "the data directory {} already has a nats-server (pid {}) at {}, started by keyloop up; a second server on the same store would corrupt it. Pass --nats {} to share it, or use another --data-dir",
                    data_dir.display(),
                    record.pid,
                    record.url,
                    record.url
                );
            }
            eprintln!(
                "joined the nats-server (pid {}) of {} at {}; it runs until the last keyloop up using it stops",
                record.pid,
                data_dir.display(),
                record.url
            );
            let server = SharedServer {
                store_dir,
                record,
                child: None,
                users,
            };
            return Ok((Some(server), g.clone()));
        }
        // The recorded server is gone (its machine restarted, or it was killed): stale.
        let _ = std::fs::remove_file(&record_path);
    }
    if answering(&host, port).await {
        return Ok((None, g.clone()));
    }
    if !matches!(host.as_str(), "127.0.0.1" | "localhost" | "::1") {
        bail!(
            "no NATS server answers at {}; start it, or point --nats at a running one",
            config::shown_url(g)
        );
    }
    let binary = config::nats_server_binary().await?;
    let child = ServerProcess::start_in_own_group(&ServerOptions {
        binary,
        store_dir: store_dir.clone(),
        port: Some(port),
        extra_args: Vec::new(),
    })
    .await?;
    let record = Record {
        pid: child
            .pid()
            .context("the nats-server exited as soon as it started")?,
        url: child.url().to_owned(),
    };
    write_record(&record_path, &record)?;
    eprintln!(
        "started nats-server (pid {}) on {} with JetStream in {}",
        record.pid,
        record.url,
        store_dir.display()
    );
    let mut g = g.clone();
    g.conn.nats.clone_from(&record.url);
    let server = SharedServer {
        store_dir,
        record,
        child: Some(child),
        users,
    };
    Ok((Some(server), g))
}

impl SharedServer {
    /// Stops using the server: the last `up` to leave stops it (SIGTERM, so it syncs its
    /// store); any other leaves it running for the ones still using it.
    pub(crate) async fn leave(self) {
        let Self {
            store_dir,
            record,
            child,
            users,
        } = self;
        let starting = tokio::time::timeout(
            LEAVE_LOCK_TIMEOUT,
            lock_exclusive(&store_dir.join("start.lock")),
        )
        .await;
        drop(users);
        // The last user is the one that can now take the lock exclusively. It holds it (and
        // `start.lock`) until it has stopped the server: nobody joins a server being stopped.
        let last = match starting {
            Ok(Ok(_)) => open_lock(&store_dir.join("users.lock"))
                .ok()
                .filter(|f| f.try_lock().is_ok()),
            _ => None,
        };
        if last.is_none() {
            let pid = match child {
                Some(child) => child.detach(),
                None => Some(record.pid),
            };
            eprintln!(
                "left the nats-server (pid {}) at {} running: another keyloop up uses it, and the last one to stop stops it",
                pid.unwrap_or(record.pid),
                record.url
            );
            return;
        }
        match child {
            Some(mut child) => child.stop().await,
            None => stop_by_pid(&record, &store_dir).await,
        }
        let _ = std::fs::remove_file(store_dir.join("server.json"));
        eprintln!(
            "stopped the nats-server (pid {}) at {}",
            record.pid, record.url
        );
    }
}

/// Opens (creating) a lock file.
fn open_lock(path: &Path) -> Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open the lock file {}", path.display()))
}

/// Takes an exclusive lock on `path`, waiting while another `up` holds it; released when the
/// returned file is dropped (also when the waiting future is dropped).
async fn lock_exclusive(path: &Path) -> Result<File> {
    let file = open_lock(path)?;
    let mut said = false;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(TryLockError::WouldBlock) => {
                if !said {
                    eprintln!(
                        "waiting for another keyloop up that is starting or stopping the nats-server of this data directory ({})",
                        path.display()
                    );
                    said = true;
                }
                tokio::time::sleep(POLL).await;
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()));
            }
        }
    }
}

fn read_record(path: &Path) -> Option<Record> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// Writes the record whole or not at all (a reader never sees half of it).
fn write_record(path: &Path, record: &Record) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(record).expect("record serializes"))
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Whether the recorded pid is still that data directory's nats-server (a pid can be reused:
/// the process must be a nats-server on this store).
#[cfg(target_os = "linux")]
fn is_running(record: &Record, store_dir: &Path) -> bool {
    // Pids 0 and 1 are never a server we started (and `kill 0` would signal our own group).
    if record.pid <= 1 {
        return false;
    }
    let Ok(cmdline) = std::fs::read(format!("/proc/{}/cmdline", record.pid)) else {
        return false;
    };
    let cmdline = String::from_utf8_lossy(&cmdline);
    cmdline.contains("nats-server") && cmdline.contains(&*store_dir.to_string_lossy())
}

/// Whether the recorded pid is alive (without /proc, it cannot be told apart from a reused
/// pid).
#[cfg(not(target_os = "linux"))]
fn is_running(record: &Record, _store_dir: &Path) -> bool {
    if record.pid <= 1 {
        return false;
    }
    std::process::Command::new("kill")
        .args(["-0", &record.pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Stops a server this `up` did not start (its starter left it to the last user): SIGTERM, and
/// SIGKILL when it has not exited within [`STOP_TIMEOUT`].
async fn stop_by_pid(record: &Record, store_dir: &Path) {
    let signal = |sig: &str| {
        let _ = std::process::Command::new("kill")
            .args([sig, &record.pid.to_string()])
            .status();
    };
    if !is_running(record, store_dir) {
        return;
    }
    signal("-TERM");
    let deadline = tokio::time::Instant::now() + STOP_TIMEOUT;
    while is_running(record, store_dir) {
        if tokio::time::Instant::now() > deadline {
            eprintln!(
                "the nats-server (pid {}) did not stop within {} s of SIGTERM; killing it",
                record.pid,
                STOP_TIMEOUT.as_secs()
            );
            signal("-KILL");
            return;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Whether `url` names the loopback address and `port` that `host`/`port` name.
fn same_address(url: &str, host: &str, port: u16) -> bool {
    let loopback = |h: &str| matches!(h, "127.0.0.1" | "localhost" | "::1");
    host_port(url).is_ok_and(|(h, p)| p == port && (h == host || (loopback(&h) && loopback(host))))
}

async fn answering(host: &str, port: u16) -> bool {
    tokio::time::timeout(
        Duration::from_secs(1),
        tokio::net::TcpStream::connect((host, port)),
    )
    .await
    .is_ok_and(|r| r.is_ok())
}

fn host_port(url: &str) -> Result<(String, u16)> {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let hostport = rest
        .rsplit('@')
        .next()
        .unwrap_or(rest)
        .split(['/', ','])
        .next()
        .unwrap_or("");
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse().with_context(|| {
                format!("bad port in --nats {}", keyloop_nats::bus::redact_url(url))
            })?,
        ),
        None => (hostport, 4222),
    };
    Ok((host.trim_matches(['[', ']']).to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_spellings_of_one_port_are_the_same_address() {
        assert!(same_address("nats://127.0.0.1:4222", "localhost", 4222));
        assert!(same_address("nats://127.0.0.1:4222", "127.0.0.1", 4222));
        assert!(!same_address("nats://127.0.0.1:4222", "127.0.0.1", 4223));
        assert!(!same_address("nats://127.0.0.1:4222", "nats.example", 4222));
        assert_eq!(
            host_port("nats://u:p@[::1]:4300").unwrap(),
            ("::1".to_owned(), 4300)
        );
        assert_eq!(
            host_port("localhost").unwrap(),
            ("localhost".to_owned(), 4222)
        );
    }
}
