//! Fingerprints: the `sha256:` and `sha1:` hex digests by which a leaked value is matched to a
//! credential version without the value itself ever being stored or published. SHA-1 is kept
//! because some detectors (detect-secrets) report only the SHA-1 of what they found.

use crate::secret::Secret;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use std::fmt;

/// Which digest a fingerprint key uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DigestKind {
    /// SHA-256, 64 hex characters.
    Sha256,
    /// SHA-1, 40 hex characters.
    Sha1,
}

impl DigestKind {
    /// The prefix used in fingerprint strings and index keys.
    pub const fn prefix(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Sha1 => "sha1",
        }
    }

    const fn hex_len(self) -> usize {
        match self {
            Self::Sha256 => 64,
            Self::Sha1 => 40,
        }
    }

    /// Checks that `hex` is a well-formed lowercase digest of this kind and normalizes case.
    pub fn normalize(self, hex: &str) -> Result<String, FingerprintError> {
        let hex = hex.trim().to_ascii_lowercase();
        if hex.len() != self.hex_len() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(FingerprintError {
                kind: self,
                len: hex.len(),
            });
        }
        Ok(hex)
    }
}

/// A digest string that is not what it claims to be.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error(
    "not a {} digest: expected {} hex characters, got {len} characters",
    kind.prefix(),
    kind.hex_len()
)]
pub struct FingerprintError {
    kind: DigestKind,
    len: usize,
}

/// The digests of one value. A fingerprint computed by keyloop has both; one reported by a
/// detector may carry only one of them. Each digest is checked when deserialized.
//
// Checked at the edge because a fingerprint from the wire becomes a KV key and a lifecycle
// event field: a plaintext value put where a digest belongs must be refused here, not looked
// up, stored in the audit log or echoed in an error.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(try_from = "ReportedDigests")]
pub struct Fingerprint {
    /// Lowercase hex SHA-256 of the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Lowercase hex SHA-1 of the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha1: Option<String>,
}

/// A fingerprint as it arrives in JSON, before its digests are checked; its schema is the
/// published schema of [`Fingerprint`].
#[derive(Deserialize, JsonSchema)]
#[schemars(rename = "Fingerprint")]
struct ReportedDigests {
    /// Lowercase hex SHA-256 of the value.
    #[serde(default)]
    #[schemars(regex(pattern = r"^[0-9a-fA-F]{64}$"))]
    sha256: Option<String>,
    /// Lowercase hex SHA-1 of the value.
    #[serde(default)]
    #[schemars(regex(pattern = r"^[0-9a-fA-F]{40}$"))]
    sha1: Option<String>,
}

impl TryFrom<ReportedDigests> for Fingerprint {
    type Error = FingerprintError;
    fn try_from(reported: ReportedDigests) -> Result<Self, Self::Error> {
        Self::from_digests(reported.sha256.as_deref(), reported.sha1.as_deref())
    }
}

impl Fingerprint {
    /// Both digests of a plaintext value.
    pub fn of(secret: &Secret) -> Self {
        Self::of_bytes(secret.expose().as_bytes())
    }

    /// Both digests of raw bytes (used by ingest, which hashes at the edge).
    pub fn of_bytes(bytes: &[u8]) -> Self {
        Self {
            sha256: Some(hex::encode(Sha256::digest(bytes))),
            sha1: Some(hex::encode(Sha1::digest(bytes))),
        }
    }

    /// A fingerprint from digests reported by a detector; each present one is validated.
    pub fn from_digests(
        sha256: Option<&str>,
        sha1: Option<&str>,
    ) -> Result<Self, FingerprintError> {
        Ok(Self {
            sha256: sha256
                .map(|h| DigestKind::Sha256.normalize(h))
                .transpose()?,
            sha1: sha1.map(|h| DigestKind::Sha1.normalize(h)).transpose()?,
        })
    }

    /// True when no digest is present (such a fingerprint can match nothing).
    pub fn is_empty(&self) -> bool {
        self.sha256.is_none() && self.sha1.is_none()
    }

    /// The index keys of this fingerprint, strongest digest first: `sha256.<hex>`, `sha1.<hex>`.
    pub fn index_keys(&self) -> Vec<String> {
        let mut keys = Vec::with_capacity(2);
        if let Some(h) = &self.sha256 {
            keys.push(format!("{}.{h}", DigestKind::Sha256.prefix()));
        }
        if let Some(h) = &self.sha1 {
            keys.push(format!("{}.{h}", DigestKind::Sha1.prefix()));
        }
        keys
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The strongest digest, shortened: enough to tell findings apart in a terminal.
        match (&self.sha256, &self.sha1) {
            (Some(h), _) => write!(f, "sha256:{}", &h[..16.min(h.len())]),
            (None, Some(h)) => write!(f, "sha1:{}", &h[..16.min(h.len())]),
            (None, None) => f.write_str("(no digest)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_of_a_known_value() {
        let fp = Fingerprint::of(&Secret::from("abc"));
        assert_eq!(
            fp.sha256.as_deref(),
            Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        assert_eq!(
            fp.sha1.as_deref(),
            Some("a9993e364706816aba3e25717850c26c9cd0d89d")
        );
        assert_eq!(fp.index_keys().len(), 2);
    }

    #[test]
    fn reported_digests_are_validated_and_lowercased() {
        let fp = Fingerprint::from_digests(None, Some("A9993E364706816ABA3E25717850C26C9CD0D89D"))
            .unwrap();
        assert_eq!(
            fp.index_keys(),
            vec!["sha1.a9993e364706816aba3e25717850c26c9cd0d89d"]
        );
        assert!(Fingerprint::from_digests(Some("xyz"), None).is_err());
    }

    #[test]
    fn a_value_where_a_digest_belongs_is_refused_without_echo() {
        let json = r#"{"sha256":"FAKE-plaintext-in-the-digest-field-0001"}"#;
        let err = serde_json::from_str::<Fingerprint>(json).expect_err("not a digest");
        let text = err.to_string();
        assert!(text.contains("not a sha256 digest"), "{text}");
        assert!(!text.contains("FAKE-plaintext"), "{text}");
        let upper = r#"{"sha1":"A9993E364706816ABA3E25717850C26C9CD0D89D"}"#;
        let fp: Fingerprint = serde_json::from_str(upper).expect("a digest");
        assert_eq!(
            fp.sha1.as_deref(),
            Some("a9993e364706816aba3e25717850c26c9cd0d89d")
        );
    }
}
