//! The `Secret` type: a credential value that can be handed around but never printed.
//! Its `Debug` and `Display` say `[redacted]`, and its memory is zeroized on drop, so a
//! plaintext value cannot leak into a log line, an error or an event by accident.

use secrecy::{ExposeSecret, SecretString};
use std::fmt;

/// A plaintext credential value. Read it only with [`Secret::expose`], at the one place that
/// must hand it to a store, a target or the person who asked for it.
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    /// Wraps a value; the `String`'s buffer is zeroized when the `Secret` is dropped.
    pub fn new(value: String) -> Self {
        Self(SecretString::from(value))
    }

    /// The plaintext. Callers must not log, publish or format it.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self::new(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self::new(value.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        // Constant-time enough for our use: both sides are ours, never attacker-timed.
        self.expose() == other.expose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = Secret::from("hunter2-very-secret");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(format!("{s}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(&s)), "Some([redacted])");
        assert_eq!(s.expose(), "hunter2-very-secret");
    }
}
