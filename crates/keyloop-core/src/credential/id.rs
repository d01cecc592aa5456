//! Credential ids: path-like, one NATS subject token and one KV key each.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A credential id: path-like (`pg/app`, `saas/stripe-payouts`). Segments of ASCII letters,
/// digits, `_` and `-`, separated by single `/`; at most 128 characters. No dots, so an id is
/// always one NATS subject token and one KV key.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(try_from = "String", into = "String")]
pub struct CredentialId(String);

/// A credential id that breaks the rules of [`CredentialId`].
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error(
    "invalid credential id `{0}`: use segments of letters, digits, `_` and `-` separated by `/` (for example `pg/app`), at most 128 characters"
)]
pub struct CredentialIdError(String);

impl CredentialId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for CredentialId {
    type Err = CredentialIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = !s.is_empty()
            && s.len() <= 128
            && s.split('/').all(|seg| {
                !seg.is_empty()
                    && seg
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            })
            && s.as_bytes()[0].is_ascii_alphanumeric();
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            // Truncate: an id is not secret, but a pasted secret in the wrong argument might be.
            Err(CredentialIdError(s.chars().take(40).collect()))
        }
    }
}

impl TryFrom<String> for CredentialId {
    type Error = CredentialIdError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<CredentialId> for String {
    fn from(id: CredentialId) -> Self {
        id.0
    }
}

impl fmt::Display for CredentialId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_path_like_and_subject_safe() {
        for ok in ["pg/app", "saas/stripe-payouts", "a", "A_1/b-2/c"] {
            assert!(ok.parse::<CredentialId>().is_ok(), "{ok}");
        }
        for bad in ["", "/a", "a/", "a//b", "a.b", "a b", "a*", ">", "_x"] {
            assert!(bad.parse::<CredentialId>().is_err(), "{bad}");
        }
    }
}
