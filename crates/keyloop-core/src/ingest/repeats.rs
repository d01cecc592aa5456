//! The values already seen in one report, by digest: a report that names the same value many
//! times (the same key in ten files, a detector's overlapping rules) gives one leak event for
//! it, the first finding, instead of one per occurrence. That saves the bus and the
//! leak-responder the work; it is not what makes a repeated leak harmless (the leak-responder
//! asks for one revocation per leaked version however many leaks name it).

use crate::fingerprint::Fingerprint;
use std::collections::HashSet;

/// Remembers the digests of the values seen so far in one report.
///
/// Each digest is kept as its first 128 bits (16 bytes; a chance collision is not a practical
/// concern), and at most [`Repeats::CAPACITY`] values are remembered, so memory stays bounded
/// (about 10 MiB when full) however long the report: past that, new values are not
/// remembered and their repeats go out as leaks of their own, which the leak-responder folds
/// into the same revocation.
#[derive(Debug, Default)]
pub struct Repeats {
    sha256: HashSet<u128>,
    sha1: HashSet<u128>,
}

impl Repeats {
    /// How many distinct values are remembered at most.
    pub const CAPACITY: usize = 1 << 18;

    /// An empty memory, for one report.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether `fingerprint` names a value already seen in this report (by either digest), and
    /// remembers it. A finding with both digests links them, so a later finding that carries
    /// only one of them is recognised too.
    pub fn seen_before(&mut self, fingerprint: &Fingerprint) -> bool {
        let sha256 = fingerprint.sha256.as_deref().and_then(key);
        let sha1 = fingerprint.sha1.as_deref().and_then(key);
        let seen = sha256.is_some_and(|k| self.sha256.contains(&k))
            || sha1.is_some_and(|k| self.sha1.contains(&k));
        if self.remembered() < Self::CAPACITY {
            if let Some(k) = sha256 {
                self.sha256.insert(k);
            }
            if let Some(k) = sha1 {
                self.sha1.insert(k);
            }
        }
        seen
    }

    /// How many digests are remembered: at most twice [`Repeats::CAPACITY`] would be two per
    /// value; counting the larger set keeps the bound per value.
    fn remembered(&self) -> usize {
        self.sha256.len().max(self.sha1.len())
    }
}

/// The first 128 bits of a hex digest; `None` for anything else (a [`Fingerprint`] holds only
/// checked lowercase hex, so that does not happen).
fn key(hex: &str) -> Option<u128> {
    u128::from_str_radix(hex.get(..32)?, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn of(value: &str) -> Fingerprint {
        Fingerprint::of(&Secret::from(value))
    }

    #[test]
    fn a_value_is_new_once_and_a_repeat_after() {
        let mut repeats = Repeats::new();
        assert!(!repeats.seen_before(&of("FAKE-repeat-0001")));
        assert!(!repeats.seen_before(&of("FAKE-repeat-0002")));
        assert!(repeats.seen_before(&of("FAKE-repeat-0001")));
        assert!(repeats.seen_before(&of("FAKE-repeat-0001")));
    }

    #[test]
    fn a_finding_with_one_digest_matches_an_earlier_one_with_both() {
        let both = of("FAKE-repeat-0003");
        let sha1_only = Fingerprint {
            sha256: None,
            ..both.clone()
        };
        let sha256_only = Fingerprint {
            sha1: None,
            ..both.clone()
        };
        let mut repeats = Repeats::new();
        assert!(!repeats.seen_before(&both));
        assert!(repeats.seen_before(&sha1_only));
        assert!(repeats.seen_before(&sha256_only));
        // Without the link, two single digests of one value cannot be told to be the same.
        let mut apart = Repeats::new();
        assert!(!apart.seen_before(&sha1_only));
        assert!(!apart.seen_before(&sha256_only));
    }

    #[test]
    fn memory_stops_growing_at_capacity() {
        let mut repeats = Repeats::new();
        for i in 0..Repeats::CAPACITY + 10 {
            let digest = format!("{i:032x}{:032x}", 0);
            let fp = Fingerprint::from_digests(Some(&digest), None).expect("a digest");
            assert!(!repeats.seen_before(&fp));
        }
        assert_eq!(repeats.remembered(), Repeats::CAPACITY);
        let first =
            Fingerprint::from_digests(Some(&format!("{:064x}", 0)), None).expect("a digest");
        assert!(repeats.seen_before(&first));
    }
}
