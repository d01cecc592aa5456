//! Leak findings: what a detector reported, reduced at the edge to a fingerprint and a
//! location. This is the payload of `keyloop.leak.detected`; it never carries a plaintext value.

use crate::fingerprint::Fingerprint;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Where a detector saw the value. Every field is optional because detectors differ.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LeakLocation {
    /// Repository (for example `org/service`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    /// File path within the repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// 1-based line number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    /// Commit id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// A link to the finding (an alert page, a blob URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// One leaked value, as published on `keyloop.leak.detected`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LeakFinding {
    /// Digests of the leaked value; at least one is present.
    pub fingerprint: Fingerprint,
    /// Which tool and rule found it (for example `gitleaks:generic-api-key`).
    pub detector: String,
    /// Where it was found.
    #[serde(default)]
    pub location: LeakLocation,
}

impl LeakFinding {
    /// A stable id for this finding: the same value at the same place gives the same id, so the
    /// same report ingested twice is deduplicated by JetStream (`Nats-Msg-Id`).
    pub fn dedup_key(&self) -> String {
        let mut h = Sha256::new();
        for part in [
            self.fingerprint.sha256.as_deref(),
            self.fingerprint.sha1.as_deref(),
            self.location.repo.as_deref(),
            self.location.file.as_deref(),
            self.location.commit.as_deref(),
            self.location.url.as_deref(),
        ] {
            h.update(part.unwrap_or("").as_bytes());
            h.update([0u8]);
        }
        h.update(self.location.line.unwrap_or(0).to_be_bytes());
        format!("leak-{}", &hex::encode(h.finalize())[..32])
    }
}
