//! The run, from the flags: how many leaks each phase publishes, at what rate, against how many
//! credentials and worker processes. Checked before anything starts, so a bad flag costs no
//! server start and no registrations.

use crate::cli::BenchArgs;
use anyhow::{Result, bail};
use keyloop_core::duration::{Bounds, DurationError};
use std::time::Duration;

/// `--duration`: from 1 s to 1 h. Longer runs would hold every latency sample in memory for
/// nothing a ten-second run does not show, and a huge value would overflow the publish schedule.
const BENCH_DURATION: Bounds = Bounds {
    setting: "duration",
    min_secs: 1,
    max_secs: 3_600,
    capped_by: None,
};

/// What one run does.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// Leaks per second in the latency phase.
    pub(crate) rate: u32,
    /// Length of the latency phase.
    pub(crate) duration: Duration,
    /// Leaks of the latency phase: rate × duration.
    pub(crate) latency_leaks: usize,
    /// Leaks of the throughput phase.
    pub(crate) throughput_leaks: usize,
    /// Worker processes per system.
    pub(crate) replicas: usize,
    /// Messages in flight per consumer in each process.
    pub(crate) concurrency: usize,
    /// Credentials registered (at least one per leak).
    pub(crate) credentials: usize,
    /// A few seconds for CI; the figures mean nothing.
    pub(crate) smoke: bool,
}

impl Plan {
    /// The plan of `args`, or what is wrong with them.
    pub(crate) fn new(args: &BenchArgs) -> Result<Self> {
        let (rate, duration, throughput_leaks) = if args.smoke {
            (100, Duration::from_secs(1), 100)
        } else {
            (args.rate, duration_flag(&args.duration)?, args.leaks)
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

/// `--duration` within [`BENCH_DURATION`], or a message that names the flag, the value and the
/// range (worded as `keyloop`'s duration flags are).
fn duration_flag(text: &str) -> Result<Duration> {
    BENCH_DURATION.parse(text).map_err(|e| match e {
        DurationError::OutOfRange(e) => anyhow::anyhow!("--{e}"),
        e => anyhow::anyhow!("--{}: {e}", BENCH_DURATION.setting),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> BenchArgs {
        BenchArgs {
            rate: 1000,
            duration: "10s".into(),
            leaks: 10_000,
            replicas: 1,
            concurrency: 64,
            credentials: None,
            smoke: false,
        }
    }

    fn refusal(args: &BenchArgs) -> String {
        format!("{:#}", Plan::new(args).unwrap_err())
    }

    #[test]
    fn every_leak_gets_its_own_credential_by_default() {
        let p = Plan::new(&args()).unwrap();
        assert_eq!((p.latency_leaks, p.throughput_leaks), (10_000, 10_000));
        assert_eq!(p.credentials, 20_000);
        assert_eq!(p.duration, Duration::from_secs(10));
    }

    #[test]
    fn smoke_overrides_the_load_flags() {
        let p = Plan::new(&BenchArgs {
            smoke: true,
            duration: "not a duration".into(),
            ..args()
        })
        .unwrap();
        assert_eq!(
            (p.rate, p.latency_leaks, p.throughput_leaks),
            (100, 100, 100)
        );
        assert!(p.smoke);
    }

    #[test]
    fn too_few_credentials_are_refused_with_the_number_needed() {
        let text = refusal(&BenchArgs {
            credentials: Some(19_999),
            ..args()
        });
        assert!(text.contains("--credentials 19999 is too few"), "{text}");
        assert!(text.contains("= 20000"), "{text}");
    }

    #[test]
    fn durations_outside_one_second_to_an_hour_are_refused_with_the_range() {
        for d in ["2h", "18446744073709551615"] {
            let text = refusal(&BenchArgs {
                duration: d.into(),
                ..args()
            });
            assert!(
                text.starts_with("--duration") && text.contains("from 1s to 1h"),
                "{d}: {text}"
            );
        }
        let text = refusal(&BenchArgs {
            duration: "5x".into(),
            ..args()
        });
        assert!(text.starts_with("--duration: invalid duration"), "{text}");
    }

    #[test]
    fn zero_load_and_replicas_out_of_range_are_refused() {
        for bad in [
            BenchArgs { rate: 0, ..args() },
            BenchArgs { leaks: 0, ..args() },
        ] {
            assert!(refusal(&bad).contains("must be greater than zero"));
        }
        for bad in [
            BenchArgs {
                replicas: 0,
                ..args()
            },
            BenchArgs {
                replicas: 65,
                ..args()
            },
            BenchArgs {
                concurrency: 0,
                ..args()
            },
        ] {
            assert!(refusal(&bad).contains("--replicas must be 1 to 64"));
        }
    }
}
