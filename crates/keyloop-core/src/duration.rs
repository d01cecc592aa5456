//! Human durations for policies and flags: `90d`, `12h`, `30m`, `2s`, `1h30m`. Stored in
//! events and the inventory as whole seconds, which is as fine as any policy needs.

use std::time::Duration;

/// A duration string that could not be read.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("invalid duration `{input}`: {reason} (examples: 90d, 12h, 30m, 2s, 1h30m)")]
pub struct DurationError {
    input: String,
    reason: &'static str,
}

/// Parses `90d`, `12h`, `30m`, `45s`, `2w` and sums like `1h30m`. A bare number is seconds.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let err = |reason| DurationError {
        input: input.to_owned(),
        reason,
    };
    let s = input.trim();
    if s.is_empty() {
        return Err(err("empty"));
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3_600,
            'd' => 86_400,
            'w' => 604_800,
            _ => return Err(err("unknown unit; use s, m, h, d or w")),
        };
        let n: u64 = digits
            .parse()
            .map_err(|_| err("a unit needs a number before it"))?;
        digits.clear();
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| err("too large"))?;
    }
    if !digits.is_empty() {
        return Err(err("a number needs a unit after it"));
    }
    Ok(Duration::from_secs(total))
}

/// Formats whole seconds the way [`parse_duration`] reads them, largest units first.
pub fn format_duration(d: Duration) -> String {
    let mut secs = d.as_secs();
    if secs == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, name) in [(86_400, 'd'), (3_600, 'h'), (60, 'm'), (1, 's')] {
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
    fn rejects_what_it_cannot_read_with_a_reason() {
        for bad in ["", "5x", "h", "10m5"] {
            let e = parse_duration(bad).unwrap_err().to_string();
            assert!(e.contains("examples"), "{e}");
        }
    }
}
