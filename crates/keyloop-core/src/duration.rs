//! Human durations for policies and flags: `90d`, `12h`, `30m`, `2s`, `1h30m`. Stored in
//! events and the inventory as whole seconds, which is as fine as any policy needs.
//!
//! [`parse_duration`] reads humantime's syntax (`1h 30m`, `2w`, `1.5h`, `3 days`; `M` is a
//! month of 30.44 days and `y` a year of 365.25 days), with two rules of ours on top: a bare
//! number is seconds (humantime wants a unit), and a value must be whole seconds (`500ms` is
//! refused rather than stored as 0s). Its errors are our own: humantime's would quote the
//! input, which may be a secret pasted into the wrong flag.
//!
//! [`format_duration`] stays hand-written: humantime's formatter counts in 365.25-day years
//! and 30.44-day months with spaces between units (365d is `11months 30days 3h 50m 24s`, 61s
//! is `1m 1s`), which would change every range and value keyloop prints (`from 1s to 365d (1
//! year)`, `grace 1m1s`) and that scripts and tests read. Ours writes the compact form that
//! [`parse_duration`] reads back exactly.
//!
//! Every setting that takes a duration has [`Bounds`] here, checked before anything is
//! written and again by the workers that read a policy back: a zero `max_age` would rotate on
//! every tick forever, and a value beyond a few thousand years would overflow the time
//! arithmetic of the due-time index. The upper bounds keep `now + value` far inside what
//! [`OffsetDateTime`] holds; [`checked_after`] is the one way to add a policy duration to a time.

use std::fmt;
use std::time::Duration;
use time::OffsetDateTime;

const DAY: u64 = 86_400;
const YEAR: u64 = 365 * DAY;

/// A duration that could not be read, or that lies outside what its setting allows.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DurationError {
    /// Not a duration at all.
    #[error("invalid duration {input}: {reason} (examples: 90d, 12h, 30m, 2s, 1h30m)")]
    Syntax {
        /// What was given: quoted when short, else only its length.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A duration, but not one this setting accepts.
    #[error(transparent)]
    OutOfRange(#[from] OutOfRange),
}

/// A duration outside the range of its setting. The message names the setting, the value and
/// the allowed range.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{setting} {value} is out of range: it must be {range}")]
pub struct OutOfRange {
    /// The setting, as its flag is spelled (`max-age`).
    pub setting: &'static str,
    /// The value given, formatted like [`format_duration`].
    pub value: String,
    /// The allowed range, in words (`from 1s to 3650d (10 years)`).
    pub range: String,
}

/// The inclusive range a duration setting accepts, in whole seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// The setting, as its flag is spelled (`max-age`).
    pub setting: &'static str,
    /// The shortest value allowed.
    pub min_secs: u64,
    /// The longest value allowed.
    pub max_secs: u64,
    /// The other setting that lowered `max_secs` (see [`Bounds::at_most`]), named in messages.
    pub capped_by: Option<&'static str>,
}

/// `--max-age`: from 1 s (values below the tick interval rotate on every tick, which only
/// tests want) to 10 years. Zero is refused: it would rotate on every tick forever.
pub const MAX_AGE: Bounds = Bounds {
    setting: "max-age",
    min_secs: 1,
    max_secs: 10 * YEAR,
    capped_by: None,
};

/// `--grace`: from 0 (the previous value stops working at rotation) to 1 year, and never
/// longer than `max-age` (see [`Bounds::at_most`]): the next rotation would cut it short.
pub const GRACE: Bounds = Bounds {
    setting: "grace",
    min_secs: 0,
    max_secs: YEAR,
    capped_by: None,
};

/// `--idle-revoke-after`: from 1 s to 10 years. Zero is refused: it would revoke a credential
/// the moment it is registered.
pub const IDLE_REVOKE_AFTER: Bounds = Bounds {
    setting: "idle-revoke-after",
    min_secs: 1,
    max_secs: 10 * YEAR,
    capped_by: None,
};

/// `task start --ttl` and a JIT scope's `max_ttl_secs`: from 1 s to 1 year (the jit-issuer
/// also refuses anything above the scope's own maximum).
pub const LEASE_TTL: Bounds = Bounds {
    setting: "ttl",
    min_secs: 1,
    max_secs: YEAR,
    capped_by: None,
};

/// `--tick-interval`: from 1 s to 1 h. A longer window would leave leases alive past their
/// expiry and rotations late by as much.
pub const TICK_INTERVAL: Bounds = Bounds {
    setting: "tick-interval",
    min_secs: 1,
    max_secs: 3_600,
    capped_by: None,
};

/// `replay --since/--until` given as a duration ago: from 0 to 10 years (the streams keep
/// 400 days).
pub const REPLAY_AGO: Bounds = Bounds {
    setting: "replay window",
    min_secs: 0,
    max_secs: 10 * YEAR,
    capped_by: None,
};

/// `--timeout` of the commands that wait for an outcome (`rotate`, `revoke`): from 1 s to a day.
pub const WAIT_TIMEOUT: Bounds = Bounds {
    setting: "timeout",
    min_secs: 1,
    max_secs: 86_400,
    capped_by: None,
};

/// `task start --wait-timeout`: how long to wait for approvers, from 1 s to 7 days.
pub const APPROVAL_WAIT: Bounds = Bounds {
    setting: "wait-timeout",
    min_secs: 1,
    max_secs: 7 * 86_400,
    capped_by: None,
};

/// `--approval-ttl`: how long an approval waits for its approvers, from 1 s to 7 days.
pub const APPROVAL_TTL: Bounds = Bounds {
    setting: "approval-ttl",
    min_secs: 1,
    max_secs: 7 * 86_400,
    capped_by: None,
};

/// The window of `--revocation-budget N/WINDOW`: from 1 s to 1 day.
pub const BUDGET_WINDOW: Bounds = Bounds {
    setting: "revocation-budget",
    min_secs: 1,
    max_secs: 86_400,
    capped_by: None,
};

impl Bounds {
    /// These bounds with the maximum lowered to `max_secs` (never raised), for a setting
    /// limited by another one, `by`: `grace` by `max-age`.
    pub const fn at_most(self, max_secs: u64, by: &'static str) -> Self {
        if max_secs < self.max_secs {
            Self {
                max_secs,
                capped_by: Some(by),
                ..self
            }
        } else {
            self
        }
    }

    /// `secs` when it lies within the bounds.
    pub fn check(&self, secs: u64) -> Result<u64, OutOfRange> {
        if (self.min_secs..=self.max_secs).contains(&secs) {
            Ok(secs)
        } else {
            Err(OutOfRange {
                setting: self.setting,
                value: format_duration(Duration::from_secs(secs)),
                range: self.to_string(),
            })
        }
    }

    /// Parses `input` (see [`parse_duration`]) and checks it against the bounds.
    pub fn parse(&self, input: &str) -> Result<Duration, DurationError> {
        let d = parse_duration(input)?;
        self.check(d.as_secs())?;
        Ok(d)
    }
}

impl fmt::Display for Bounds {
    /// `from 1s to 3650d (10 years)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (min, max) = (self.min_secs, self.max_secs);
        write!(
            f,
            "from {} to {}",
            format_duration(Duration::from_secs(min)),
            format_duration(Duration::from_secs(max))
        )?;
        if let Some(by) = self.capped_by {
            write!(f, " (no longer than {by})")?;
        } else if max >= YEAR && max % YEAR == 0 {
            let years = max / YEAR;
            write!(f, " ({years} year{})", if years == 1 { "" } else { "s" })?;
        }
        Ok(())
    }
}

/// `t + secs`, or `None` when that is beyond what a time can hold. Use it wherever a
/// policy duration (which may come from a record written by anyone) is added to a time.
pub fn checked_after(t: OffsetDateTime, secs: u64) -> Option<OffsetDateTime> {
    let secs = i64::try_from(secs).ok()?;
    t.checked_add(time::Duration::seconds(secs))
}

/// Parses `90d`, `12h`, `30m`, `45s`, `2w` and sums like `1h30m` (humantime's syntax, see the
/// module doc). A bare number is seconds; a value that is not whole seconds is refused.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    // Durations are short: a long input is something else pasted into the flag (maybe a
    // secret), so only its length is shown.
    let err = |reason| DurationError::Syntax {
        input: quoted(input),
        reason,
    };
    let s = input.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let d = humantime::parse_duration(s).map_err(|e| {
        err(match e {
            humantime::DurationError::Empty => "empty",
            humantime::DurationError::NumberOverflow => "too large",
            humantime::DurationError::UnknownUnit { unit, .. } if unit.is_empty() => {
                "a number needs a unit after it"
            }
            humantime::DurationError::UnknownUnit { .. } => "unknown unit; use s, m, h, d or w",
            humantime::DurationError::NumberExpected(_) => "a unit needs a number before it",
            humantime::DurationError::InvalidCharacter(_) => {
                "only digits and units; use s, m, h, d or w"
            }
        })
    })?;
    if d.subsec_nanos() != 0 {
        return Err(err("not whole seconds; use s or a larger unit"));
    }
    Ok(d)
}

fn quoted(input: &str) -> String {
    const SHOWN: usize = 16;
    let len = input.chars().count();
    if len <= SHOWN {
        format!("`{input}`")
    } else {
        format!("of {len} characters (not shown)")
    }
}

/// Formats whole seconds the way [`parse_duration`] reads them, largest units first.
pub fn format_duration(d: Duration) -> String {
    let mut secs = d.as_secs();
    if secs == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, name) in [(DAY, 'd'), (3_600, 'h'), (60, 'm'), (1, 's')] {
        if secs >= unit {
            out.push_str(&(secs / unit).to_string());
            out.push(name);
            secs %= unit;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_units_and_sums() {
        assert_eq!(
            parse_duration("90d").unwrap(),
            Duration::from_secs(90 * 86_400)
        );
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5_400));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("15").unwrap(), Duration::from_secs(15));
        assert_eq!(format_duration(Duration::from_secs(5_400)), "1h30m");
    }

    #[test]
    fn reads_humantime_spellings_of_whole_seconds() {
        for (text, secs) in [
            ("1h 30m", 5_400),
            ("2 weeks", 14 * DAY),
            ("1.5h", 5_400),
            ("3days", 3 * DAY),
            ("1y", 31_557_600),
            ("  45s ", 45),
            ("0", 0),
        ] {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_secs(secs)),
                "{text}"
            );
        }
    }

    #[test]
    fn less_than_whole_seconds_is_refused_not_rounded() {
        for bad in ["500ms", "1.5s", "1s1ns"] {
            let e = parse_duration(bad).unwrap_err();
            assert!(
                matches!(
                    e,
                    DurationError::Syntax {
                        reason: "not whole seconds; use s or a larger unit",
                        ..
                    }
                ),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn what_is_printed_reads_back_as_the_same_duration() {
        for secs in [
            0,
            1,
            59,
            61,
            3_599,
            5_400,
            DAY + 1,
            90 * DAY,
            10 * YEAR,
            u64::MAX / 2,
        ] {
            let d = Duration::from_secs(secs);
            assert_eq!(parse_duration(&format_duration(d)), Ok(d), "{secs}");
        }
    }

    #[test]
    fn rejects_what_it_cannot_read_with_a_reason() {
        for bad in ["", "5x", "h", "10m5", "-5s"] {
            let e = parse_duration(bad).unwrap_err().to_string();
            assert!(e.contains("examples"), "{e}");
        }
    }

    #[test]
    fn numbers_beyond_u64_are_too_large_not_a_panic() {
        for huge in [
            "99999999999999999999s",
            "18446744073709551615d",
            "40000000000000w",
            "18446744073709551615s1s",
        ] {
            let e = parse_duration(huge).unwrap_err();
            assert!(
                matches!(
                    e,
                    DurationError::Syntax {
                        reason: "too large",
                        ..
                    }
                ),
                "{huge}: {e}"
            );
        }
        // A bare number is seconds; u64::MAX itself reads, and the bounds refuse it.
        let max = parse_duration("18446744073709551615").unwrap();
        assert!(MAX_AGE.check(max.as_secs()).is_err());
    }

    #[test]
    fn zero_and_absurd_max_ages_are_refused_with_the_range() {
        for bad in ["0s", "0", "100000000d", "3651d"] {
            let e = MAX_AGE.parse(bad).unwrap_err().to_string();
            assert!(e.contains("max-age"), "{e}");
            assert!(e.contains("from 1s to 3650d (10 years)"), "{e}");
        }
        assert_eq!(
            MAX_AGE.parse("0s").unwrap_err().to_string(),
            "max-age 0s is out of range: it must be from 1s to 3650d (10 years)"
        );
    }

    #[test]
    fn bounds_are_inclusive_at_both_ends() {
        for b in [
            MAX_AGE,
            GRACE,
            IDLE_REVOKE_AFTER,
            LEASE_TTL,
            TICK_INTERVAL,
            REPLAY_AGO,
        ] {
            assert_eq!(b.check(b.min_secs), Ok(b.min_secs), "{b:?}");
            assert_eq!(b.check(b.max_secs), Ok(b.max_secs), "{b:?}");
            assert!(b.check(b.max_secs + 1).is_err(), "{b:?}");
            if b.min_secs > 0 {
                assert!(b.check(b.min_secs - 1).is_err(), "{b:?}");
            }
        }
        assert_eq!(GRACE.check(0), Ok(0));
        assert_eq!(TICK_INTERVAL.to_string(), "from 1s to 1h");
        assert_eq!(GRACE.to_string(), "from 0s to 365d (1 year)");
    }

    #[test]
    fn at_most_lowers_and_never_raises_the_maximum() {
        assert_eq!(GRACE.at_most(60, "max-age").max_secs, 60);
        assert_eq!(GRACE.at_most(u64::MAX, "max-age"), GRACE);
        let e = GRACE
            .at_most(60, "max-age")
            .check(61)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "grace 1m1s is out of range: it must be from 0s to 1m (no longer than max-age)"
        );
    }

    #[test]
    fn the_largest_allowed_value_added_to_now_never_overflows() {
        let now = OffsetDateTime::now_utc();
        for b in [MAX_AGE, GRACE, IDLE_REVOKE_AFTER, LEASE_TTL, REPLAY_AGO] {
            assert!(checked_after(now, b.max_secs).is_some(), "{b:?}");
        }
        // What the bounds keep out would overflow: checked, never a panic.
        assert_eq!(checked_after(now, 100_000_000 * DAY), None);
        assert_eq!(checked_after(now, u64::MAX), None);
        assert_eq!(checked_after(now, 90), Some(now + Duration::from_secs(90)));
    }

    #[test]
    fn a_long_pasted_input_is_never_quoted() {
        let pasted = format!("kl_{}", "a1".repeat(32));
        let e = parse_duration(&pasted).unwrap_err().to_string();
        assert!(!e.contains("a1a1"), "{e}");
        assert!(e.contains("of 67 characters"), "{e}");
        assert!(
            parse_duration("5x")
                .unwrap_err()
                .to_string()
                .contains("`5x`")
        );
    }

    fn policy(max_age: Option<u64>, grace: u64, idle: Option<u64>) -> crate::Policy {
        crate::Policy {
            max_age_secs: max_age,
            grace_secs: grace,
            idle_revoke_after_secs: idle,
            owner: None,
            ..Default::default()
        }
    }

    #[test]
    fn a_policy_validates_every_duration_and_grace_against_max_age() {
        assert_eq!(policy(None, 0, None).validate(), Ok(()));
        assert_eq!(
            policy(Some(90 * DAY), DAY, Some(30 * DAY)).validate(),
            Ok(())
        );
        assert_eq!(policy(Some(2), 2, Some(2)).validate(), Ok(()));
        assert_eq!(policy(None, YEAR, None).validate(), Ok(()));
        let refused = [
            (policy(Some(0), 0, None), "max-age 0s"),
            (
                policy(Some(100_000_000 * DAY), 0, None),
                "max-age 100000000d",
            ),
            (policy(Some(u64::MAX), 0, None), "max-age"),
            (policy(None, 0, Some(0)), "idle-revoke-after 0s"),
            (policy(None, 0, Some(u64::MAX)), "idle-revoke-after"),
            (policy(None, YEAR + 1, None), "grace 365d1s"),
            (policy(Some(60), 61, None), "no longer than max-age"),
        ];
        for (p, expect) in refused {
            let e = p.validate().unwrap_err().to_string();
            assert!(e.contains(expect), "{p:?}: {e}");
            assert!(e.contains("it must be from"), "{e}");
        }
    }
}
