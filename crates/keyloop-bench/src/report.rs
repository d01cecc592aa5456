//! The bench's output: a table for people, then — always the very last line — one JSON object
//! with every figure and the keyloop/raw ratios, for CI and for tracking figures over changes.

use crate::drive::Percentiles;
use crate::measure::{CpuUse, ServerMessages};
use crate::plan::Plan;
use serde_json::{Map, Value, json};
use std::fmt;
use std::io::Write;
use std::time::Duration;

/// The speed targets, on a 2-core machine that also runs the server.
const TARGET_TTR_P99: Duration = Duration::from_millis(5);
const TARGET_THROUGHPUT_RATIO: f64 = 0.40;
const TARGET_RSS_BYTES: u64 = 64 * 1024 * 1024;

/// What one loop (keyloop's, or the raw one) did in the latency and throughput phases.
#[derive(Debug, Clone)]
pub(crate) struct LoopFigures {
    /// Publish → completion, per stage (keyloop: revoked, rotated; raw: done).
    pub(crate) latency: Vec<Percentiles>,
    /// The rate the latency phase's items actually went out at.
    pub(crate) latency_sent_rate: f64,
    /// CPU spent during the latency phase.
    pub(crate) latency_cpu: CpuUse,
    /// Sustained completions per second in the throughput phase, per stage.
    pub(crate) throughput: Vec<f64>,
    /// CPU spent during the throughput phase.
    pub(crate) throughput_cpu: CpuUse,
    /// Messages through the server during the throughput phase.
    pub(crate) throughput_msgs: Option<ServerMessages>,
    /// Largest peak RSS of the system's worker processes.
    pub(crate) peak_rss: Option<u64>,
}

/// Everything a run measured.
#[derive(Debug)]
pub(crate) struct Report {
    pub(crate) plan: Plan,
    pub(crate) server_version: String,
    pub(crate) cpus: usize,
    pub(crate) load_start: Option<[f64; 3]>,
    pub(crate) load_end: Option<[f64; 3]>,
    pub(crate) raw: Option<LoopFigures>,
    pub(crate) keyloop: Option<LoopFigures>,
    pub(crate) jit: Option<JitFigures>,
    pub(crate) sweep: Option<SweepFigures>,
    pub(crate) elapsed: Duration,
}

/// JIT issue round trips, keyloop and the raw request/reply baseline.
#[derive(Debug)]
pub(crate) struct JitFigures {
    pub(crate) keyloop: Percentiles,
    pub(crate) raw: Percentiles,
    /// The policy decision each issue makes (Cedar, the default policy), timed in-process.
    pub(crate) decision: Percentiles,
    /// Leases the JIT phase issued and left live (the sweep line's inventory).
    pub(crate) live_leases: usize,
}

/// One sweep over the bench's leases, a few of them due.
#[derive(Debug)]
pub(crate) struct SweepFigures {
    pub(crate) live: usize,
    pub(crate) due: usize,
    pub(crate) stats: keyloop_workers::sweeper::SweepStats,
    pub(crate) took: Duration,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

fn mib(bytes: u64) -> f64 {
    (bytes as f64 / (1024.0 * 1024.0) * 10.0).round() / 10.0
}

fn round(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

fn per_item_us(d: Duration, items: usize) -> f64 {
    d.as_secs_f64() * 1e6 / items.max(1) as f64
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

fn load_text(l: Option<[f64; 3]>) -> String {
    l.map_or_else(
        || "n/a".into(),
        |l| format!("{:.2}/{:.2}/{:.2}", l[0], l[1], l[2]),
    )
}

impl Report {
    fn ttr_p99_ratio(&self) -> Option<f64> {
        let (k, r) = (self.keyloop.as_ref()?, self.raw.as_ref()?);
        ratio(
            k.latency[0].p99.as_secs_f64(),
            r.latency[0].p99.as_secs_f64(),
        )
    }

    fn ttr_p50_ratio(&self) -> Option<f64> {
        let (k, r) = (self.keyloop.as_ref()?, self.raw.as_ref()?);
        ratio(
            k.latency[0].p50.as_secs_f64(),
            r.latency[0].p50.as_secs_f64(),
        )
    }

    /// Full loop (through `rotated`) over the raw loop.
    fn throughput_ratio(&self) -> Option<f64> {
        let (k, r) = (self.keyloop.as_ref()?, self.raw.as_ref()?);
        ratio(k.throughput[1], r.throughput[0])
    }

    fn throughput_revoked_ratio(&self) -> Option<f64> {
        let (k, r) = (self.keyloop.as_ref()?, self.raw.as_ref()?);
        ratio(k.throughput[0], r.throughput[0])
    }

    /// The table, then the JSON line; `json_only` prints only the JSON line. A reader that
    /// has gone gives [`StdoutClosed`].
    pub(crate) fn print(&self, json_only: bool) -> anyhow::Result<()> {
        let mut text = String::new();
        if !json_only {
            text.push_str(&self.table());
            text.push('\n');
        }
        text.push_str(&self.json().to_string());
        text.push('\n');
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::BrokenPipe => StdoutClosed.into(),
                _ => anyhow::Error::new(e).context("cannot write to standard output"),
            })
    }

    fn table(&self) -> String {
        let p = &self.plan;
        let mut out = Vec::new();
        out.push(format!(
            "keyloop bench{}: nats-server {} (file storage), {} CPUs, load {} at start, {} at end, {:.0} s",
            if p.smoke { " --smoke (figures mean nothing)" } else { "" },
            self.server_version,
            self.cpus,
            load_text(self.load_start),
            load_text(self.load_end),
            self.elapsed.as_secs_f64()
        ));
        out.push(format!(
            "  {} worker process(es) per system, concurrency {} per consumer; {} credentials (local store, target none)",
            p.replicas, p.concurrency, p.credentials
        ));
        out.push(String::new());
        let sent_rate = self.keyloop.as_ref().map_or(0.0, |k| k.latency_sent_rate);
        out.push(format!(
            "{:<46}{:>12}{:>12}{:>12}{:>12}",
            format!(
                "latency at {}/s for {} s ({} leaks, sent at {:.0}/s)",
                p.rate,
                p.duration.as_secs_f64(),
                p.latency_leaks,
                sent_rate
            ),
            "p50",
            "p99",
            "p99.9",
            "max"
        ));
        let row = |label: &str, q: &Percentiles| {
            format!(
                "  {label:<44}{:>9.2} ms{:>9.2} ms{:>9.2} ms{:>9.2} ms",
                ms(q.p50),
                ms(q.p99),
                ms(q.p999),
                ms(q.max)
            )
        };
        if let Some(k) = &self.keyloop {
            out.push(row(
                "keyloop: publish → revoked (time-to-revoke)",
                &k.latency[0],
            ));
            out.push(row("keyloop: publish → rotated", &k.latency[1]));
        }
        if let Some(r) = &self.raw {
            out.push(row("raw JetStream loop: publish → done", &r.latency[0]));
        }
        if let (Some(k), Some(r)) = (&self.keyloop, &self.raw) {
            let x = |a: Duration, b: Duration| {
                ratio(a.as_secs_f64(), b.as_secs_f64())
                    .map_or_else(|| "n/a".into(), |x| format!("{x:.1}×"))
            };
            let (a, b) = (&k.latency[0], &r.latency[0]);
            out.push(format!(
                "  {:<44}{:>12}{:>12}{:>12}{:>12}",
                "ratio keyloop revoked / raw",
                x(a.p50, b.p50),
                x(a.p99, b.p99),
                x(a.p999, b.p999),
                x(a.max, b.max)
            ));
        }
        out.push(String::new());
        out.push(format!(
            "throughput ({} leaks as fast as possible; rate over the middle 80 % of completions)",
            p.throughput_leaks
        ));
        if let Some(k) = &self.keyloop {
            out.push(format!(
                "  {:<44}{:>10.0} /s",
                "keyloop: leak → revoked", k.throughput[0]
            ));
            out.push(format!(
                "  {:<44}{:>10.0} /s",
                "keyloop: leak → revoked → rotated", k.throughput[1]
            ));
        }
        if let Some(r) = &self.raw {
            out.push(format!(
                "  {:<44}{:>10.0} /s",
                "raw JetStream loop", r.throughput[0]
            ));
        }
        if let Some(x) = self.throughput_ratio() {
            out.push(format!(
                "  {:<44}{:>10.1} %   (through revoked: {:.1} %)",
                "ratio keyloop rotated / raw",
                x * 100.0,
                self.throughput_revoked_ratio().unwrap_or(0.0) * 100.0
            ));
        }
        out.push(String::new());
        out.push(format!(
            "{:<46}{:>12}{:>12}{:>12}",
            "CPU time (user + system)", "server", "workers", "bench"
        ));
        let systems = [("keyloop", &self.keyloop), ("raw loop", &self.raw)];
        for (name, f) in systems {
            if let Some(f) = f {
                let c = &f.latency_cpu;
                let cores = |d: Duration| d.as_secs_f64() / c.wall.as_secs_f64().max(1e-9);
                out.push(format!(
                    "  {:<44}{:>12.2}{:>12.2}{:>12.2}",
                    format!("{name}: cores busy at {}/s", p.rate),
                    cores(c.server),
                    cores(c.workers),
                    cores(c.bench)
                ));
            }
        }
        for (name, f) in systems {
            if let Some(f) = f {
                let per = |d: Duration| per_item_us(d, p.throughput_leaks);
                let c = &f.throughput_cpu;
                out.push(format!(
                    "  {:<44}{:>9.0} µs{:>9.0} µs{:>9.0} µs",
                    format!("{name}: per leak, throughput phase"),
                    per(c.server),
                    per(c.workers),
                    per(c.bench)
                ));
            }
        }
        out.push(format!(
            "{:<46}{:>12}{:>12}",
            "NATS messages per leak, throughput phase", "to server", "from server"
        ));
        for (name, f) in systems {
            if let Some(m) = f.as_ref().and_then(|f| f.throughput_msgs) {
                let per = |n: u64| n as f64 / p.throughput_leaks.max(1) as f64;
                out.push(format!(
                    "  {:<44}{:>12.1}{:>12.1}",
                    name,
                    per(m.received),
                    per(m.sent)
                ));
            }
        }
        out.push(String::new());
        if let Some(j) = &self.jit {
            out.push(format!(
                "{:<46}{:>12}{:>12}{:>12}{:>12}",
                format!("JIT issue, {} requests one at a time", j.keyloop.count),
                "p50",
                "p99",
                "p99.9",
                "max"
            ));
            for (name, q) in [
                ("keyloop: jit.issue → reply", &j.keyloop),
                ("raw NATS request/reply", &j.raw),
                ("  of which: the policy decision", &j.decision),
            ] {
                out.push(format!(
                    "  {:<44}{:>9.2} ms{:>9.2} ms{:>9.2} ms{:>9.2} ms",
                    name,
                    ms(q.p50),
                    ms(q.p99),
                    ms(q.p999),
                    ms(q.max)
                ));
            }
        }
        if let Some(s) = &self.sweep {
            out.push(format!(
                "sweep over {} live leases, {} due: {} entries read in {} minute buckets, {} commands, {:.1} ms",
                s.live,
                s.due,
                s.stats.entries_read,
                s.stats.buckets_scanned,
                s.stats.commands,
                s.took.as_secs_f64() * 1e3
            ));
        }
        out.push(String::new());
        let rss = |f: &Option<LoopFigures>| {
            f.as_ref()
                .and_then(|f| f.peak_rss)
                .map_or_else(|| "n/a".into(), |b| format!("{:.1} MiB", mib(b)))
        };
        out.push(format!(
            "worker peak RSS (VmHWM, largest process): keyloop {}, raw loop {}",
            rss(&self.keyloop),
            rss(&self.raw)
        ));
        out.push(String::new());
        out.push(format!(
            "targets (stated for 1000 leaks/s on 2 cores; this run: {}/s on {} CPUs)",
            p.rate, self.cpus
        ));
        for t in self.targets() {
            let verdict = match t.met {
                Some(true) => "met",
                Some(false) => "MISSED",
                None => "not measured",
            };
            out.push(format!("  {:<44}{verdict:<14}{}", t.name, t.figure));
        }
        out.join("\n")
    }

    fn jit_p99_ratio(&self) -> Option<f64> {
        let j = self.jit.as_ref()?;
        ratio(j.keyloop.p99.as_secs_f64(), j.raw.p99.as_secs_f64())
    }

    fn targets(&self) -> Vec<Target> {
        let k = self.keyloop.as_ref();
        let p99 = k.map(|k| k.latency[0].p99);
        let tput = self.throughput_ratio();
        let rss = k.and_then(|k| k.peak_rss);
        vec![
            Target {
                key: "time_to_revoke_p99",
                name: "time-to-revoke p99 ≤ 5 ms",
                met: p99.map(|d| d <= TARGET_TTR_P99),
                figure: p99.map_or_else(String::new, |d| format!("{:.2} ms", ms(d))),
            },
            Target {
                key: "throughput_ratio",
                name: "throughput ≥ 40 % of the raw loop",
                met: tput.map(|x| x >= TARGET_THROUGHPUT_RATIO),
                figure: tput.map_or_else(String::new, |x| format!("{:.1} %", x * 100.0)),
            },
            Target {
                key: "worker_peak_rss",
                name: "worker peak RSS ≤ 64 MiB",
                met: rss.map(|b| b <= TARGET_RSS_BYTES),
                figure: rss.map_or_else(String::new, |b| format!("{:.1} MiB", mib(b))),
            },
            Target {
                key: "jit_issue_p99_ratio",
                name: "JIT issue p99 ≤ 2× raw request/reply",
                met: self.jit_p99_ratio().map(|r| r <= 2.0),
                figure: self
                    .jit_p99_ratio()
                    .map_or_else(String::new, |r| format!("{r:.1}×")),
            },
        ]
    }

    fn json(&self) -> Value {
        let p = &self.plan;
        let mut m = Map::new();
        let mut put = |k: &str, v: Value| {
            m.insert(k.to_owned(), v);
        };
        put("bench", json!("keyloop"));
        put("smoke", json!(p.smoke));
        put("nats_server_version", json!(self.server_version));
        put("cpus", json!(self.cpus));
        put("load_avg_start", json!(self.load_start));
        put("load_avg_end", json!(self.load_end));
        put("replicas", json!(p.replicas));
        put("concurrency", json!(p.concurrency));
        put("credentials", json!(p.credentials));
        put("rate_per_s", json!(p.rate));
        put("duration_s", json!(p.duration.as_secs_f64()));
        put("latency_leaks", json!(p.latency_leaks));
        put("throughput_leaks", json!(p.throughput_leaks));
        put("elapsed_s", json!(round(self.elapsed.as_secs_f64(), 1)));
        let mut latency = |prefix: &str, q: &Percentiles| {
            put(&format!("{prefix}_samples"), json!(q.count));
            put(&format!("{prefix}_p50_ms"), json!(ms(q.p50)));
            put(&format!("{prefix}_p99_ms"), json!(ms(q.p99)));
            put(&format!("{prefix}_p999_ms"), json!(ms(q.p999)));
            put(&format!("{prefix}_max_ms"), json!(ms(q.max)));
        };
        if let Some(k) = &self.keyloop {
            latency("time_to_revoke", &k.latency[0]);
            latency("time_to_rotate", &k.latency[1]);
        }
        if let Some(r) = &self.raw {
            latency("baseline_latency", &r.latency[0]);
        }
        if let Some(j) = &self.jit {
            latency("jit_issue", &j.keyloop);
            latency("baseline_request_reply", &j.raw);
            put(
                "jit_policy_decision_p50_us",
                json!((j.decision.p50.as_secs_f64() * 1e6 * 10.0).round() / 10.0),
            );
            put(
                "jit_policy_decision_p99_us",
                json!((j.decision.p99.as_secs_f64() * 1e6 * 10.0).round() / 10.0),
            );
        }
        if let Some(s) = &self.sweep {
            put("sweep_live_leases", json!(s.live));
            put("sweep_due", json!(s.due));
            put("sweep_entries_read", json!(s.stats.entries_read));
        }
        if let Some(k) = &self.keyloop {
            m.insert(
                "latency_sent_rate_per_s".into(),
                json!(round(k.latency_sent_rate, 1)),
            );
            m.insert(
                "throughput_revoked_per_s".into(),
                json!(round(k.throughput[0], 1)),
            );
            m.insert(
                "throughput_rotated_per_s".into(),
                json!(round(k.throughput[1], 1)),
            );
            m.insert("worker_peak_rss_mib".into(), json!(k.peak_rss.map(mib)));
        }
        if let Some(r) = &self.raw {
            m.insert(
                "baseline_throughput_per_s".into(),
                json!(round(r.throughput[0], 1)),
            );
            m.insert(
                "baseline_worker_peak_rss_mib".into(),
                json!(r.peak_rss.map(mib)),
            );
        }
        for (prefix, f) in [("keyloop", &self.keyloop), ("baseline", &self.raw)] {
            let Some(f) = f else { continue };
            let (c, n) = (&f.throughput_cpu, p.throughput_leaks);
            for (who, d) in [
                ("server", c.server),
                ("workers", c.workers),
                ("bench", c.bench),
            ] {
                m.insert(
                    format!("{prefix}_cpu_us_per_leak_{who}"),
                    json!(round(per_item_us(d, n), 1)),
                );
            }
            if let Some(msgs) = f.throughput_msgs {
                for (dir, count) in [("to", msgs.received), ("from", msgs.sent)] {
                    m.insert(
                        format!("{prefix}_server_msgs_{dir}_per_leak"),
                        json!(round(count as f64 / n.max(1) as f64, 2)),
                    );
                }
            }
            let c = &f.latency_cpu;
            let wall = c.wall.as_secs_f64().max(1e-9);
            for (who, d) in [
                ("server", c.server),
                ("workers", c.workers),
                ("bench", c.bench),
            ] {
                m.insert(
                    format!("{prefix}_cpu_cores_at_rate_{who}"),
                    json!(round(d.as_secs_f64() / wall, 3)),
                );
            }
        }
        let ratios = [
            ("jit_issue_p99_ratio", self.jit_p99_ratio()),
            ("time_to_revoke_p50_ratio", self.ttr_p50_ratio()),
            ("time_to_revoke_p99_ratio", self.ttr_p99_ratio()),
            ("throughput_ratio", self.throughput_ratio()),
            ("throughput_revoked_ratio", self.throughput_revoked_ratio()),
        ];
        for (k, v) in ratios {
            if let Some(v) = v {
                m.insert(k.into(), json!(round(v, 3)));
            }
        }
        let targets: Map<String, Value> = self
            .targets()
            .into_iter()
            .filter_map(|t| t.met.map(|met| (t.key.to_owned(), json!(met))))
            .collect();
        m.insert("targets_met".into(), Value::Object(targets));
        Value::Object(m)
    }
}

struct Target {
    key: &'static str,
    name: &'static str,
    met: Option<bool>,
    figure: String,
}

/// Standard output was closed by its reader: nobody reads the report.
#[derive(Debug)]
pub(crate) struct StdoutClosed;

impl fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("standard output was closed by its reader")
    }
}

impl std::error::Error for StdoutClosed {}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(ms: u64, stages: usize) -> LoopFigures {
        let q = Percentiles::of(vec![Duration::from_millis(ms); 10]);
        LoopFigures {
            latency: vec![q; stages],
            latency_sent_rate: 100.0,
            latency_cpu: CpuUse::default(),
            throughput: vec![1000.0 / ms as f64; stages],
            throughput_cpu: CpuUse::default(),
            throughput_msgs: Some(ServerMessages::default()),
            peak_rss: Some(20 << 20),
        }
    }

    #[test]
    fn the_json_line_holds_the_figures_and_ratios_scripts_test_checks() {
        let args = crate::cli::BenchArgs {
            rate: 100,
            duration: "1s".into(),
            leaks: 100,
            replicas: 1,
            concurrency: 64,
            credentials: None,
            smoke: false,
        };
        let report = Report {
            plan: Plan::new(&args).unwrap(),
            server_version: "2.14.0".into(),
            cpus: 2,
            load_start: None,
            load_end: None,
            raw: Some(figures(1, 1)),
            keyloop: Some(figures(4, 2)),
            jit: None,
            sweep: None,
            elapsed: Duration::from_secs(3),
        };
        let json = report.json();
        assert_eq!(json["time_to_revoke_p99_ms"], json!(4.0));
        assert_eq!(json["baseline_latency_p99_ms"], json!(1.0));
        assert_eq!(json["throughput_ratio"], json!(0.25));
        assert_eq!(json["worker_peak_rss_mib"], json!(20.0));
        assert_eq!(json["targets_met"]["time_to_revoke_p99"], json!(true));
        // A suite that did not run leaves its figures out rather than printing zeros.
        assert!(json.get("jit_issue_p99_ms").is_none());
        assert!(json.get("sweep_entries_read").is_none());
    }
}
