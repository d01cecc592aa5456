//! What the bench reads besides its own clock: CPU time and peak memory of processes (from
//! `/proc`), the machine's load average, and the server's message counters (from its `/varz`
//! monitoring endpoint). Where `/proc` or the endpoint does not answer, the figure is absent,
//! never made up.

use std::path::Path;
use std::time::Duration;

/// CPU time of the server, the workers (all processes) and the bench process; over a phase,
/// with the phase's wall time.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CpuUse {
    pub(crate) server: Duration,
    pub(crate) workers: Duration,
    pub(crate) bench: Duration,
    pub(crate) wall: Duration,
}

impl CpuUse {
    /// CPU time used so far by the server `server` and the processes `workers`, and by this one.
    pub(crate) fn now(server: Option<u32>, workers: &[u32]) -> Self {
        let of = |pid: Option<u32>| pid.and_then(cpu_time).unwrap_or_default();
        Self {
            server: of(server),
            workers: workers.iter().map(|&p| of(Some(p))).sum(),
            bench: of(Some(std::process::id())),
            wall: Duration::ZERO,
        }
    }

    /// The CPU time used between `before` and `self`, over `wall` of wall time.
    pub(crate) fn since(&self, before: &Self, wall: Duration) -> Self {
        Self {
            server: self.server.saturating_sub(before.server),
            workers: self.workers.saturating_sub(before.workers),
            bench: self.bench.saturating_sub(before.bench),
            wall,
        }
    }
}

/// Messages the server received from and sent to clients (its /varz `in_msgs`, `out_msgs`):
/// every publish, request, reply, delivery and ack, the bench's own included.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ServerMessages {
    pub(crate) received: u64,
    pub(crate) sent: u64,
}

impl ServerMessages {
    /// The messages between `before` and `self`.
    pub(crate) fn since(&self, before: &Self) -> Self {
        Self {
            received: self.received.saturating_sub(before.received),
            sent: self.sent.saturating_sub(before.sent),
        }
    }
}

/// The 1, 5 and 15 minute load averages, where /proc has them.
pub(crate) fn load_average() -> Option<[f64; 3]> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = text.split_whitespace().map(|s| s.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// `VmHWM` of `/proc/<pid>/status`, in bytes.
pub(crate) fn vm_hwm_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// CPU time (user + system, all threads) a process has used so far, from `/proc/<pid>/stat`.
fn cpu_time(pid: u32) -> Option<Duration> {
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
pub(crate) fn monitor_address(dir: &Path, pid: u32) -> Option<String> {
    let file = dir.join(format!("nats/ports/nats-server_{pid}.ports"));
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(file).ok()?).ok()?;
    let url = json.get("monitoring")?.get(0)?.as_str()?;
    Some(url.strip_prefix("http://")?.to_owned())
}

/// The server's message counters, from `GET /varz` (a one-shot HTTP/1.0 request: nothing
/// else here speaks HTTP, so no client library for it).
pub(crate) async fn server_messages(monitor: Option<&str>) -> Option<ServerMessages> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(monitor?).await.ok()?;
    conn.write_all(b"GET /varz HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .ok()?;
    let mut response = Vec::new();
    conn.read_to_end(&mut response).await.ok()?;
    let body = response.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let varz: serde_json::Value = serde_json::from_slice(&response[body..]).ok()?;
    Some(ServerMessages {
        received: varz.get("in_msgs")?.as_u64()?,
        sent: varz.get("out_msgs")?.as_u64()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_cpu_time_and_a_peak_rss_where_proc_exists() {
        if !Path::new("/proc/self/stat").exists() {
            return; // not Linux: the figures are absent, which the report prints as n/a
        }
        let pid = std::process::id();
        assert!(cpu_time(pid).is_some());
        assert!(vm_hwm_bytes(pid).is_some_and(|b| b > 0));
        assert!(load_average().is_some());
    }
}
