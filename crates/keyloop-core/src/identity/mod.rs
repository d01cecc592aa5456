//! Workload identity: who is asking, proved by a token that the requester's platform signed
//! instead of a name it claims. A Kubernetes service-account token, a GitHub Actions OIDC token
//! and a SPIFFE JWT-SVID are all JWTs; [`IdentityVerifier`] checks one against the issuers
//! keyloop trusts ([`TrustedIssuers`]: each issuer's exact `iss`, the audiences that mean
//! keyloop, and its public keys as a JWKS file) and returns the [`WorkloadIdentity`] it proves:
//! issuer and subject, plus a few well-known claims as labels. Who may do what with that
//! identity is the JIT policy's business (`ScopePolicy::identities` in [`crate::lease`]).
//!
//! Each issuer's public keys come from a file named in the policy (`jwks_file`); keyloop does
//! not fetch them, and reads them at start (restart the jit-issuer after the issuer rotates its
//! keys and the file was refreshed):
//!
//! - **Kubernetes**: `kubectl get --raw /openid/v1/jwks > k8s-jwks.json`; the issuer is the
//!   `issuer` of `kubectl get --raw /.well-known/openid-configuration` (often
//!   `https://kubernetes.default.svc.cluster.local`), the audience the `audience` of the pod's
//!   projected service-account token volume; subjects are `system:serviceaccount:<ns>:<name>`.
//! - **GitHub Actions**: `curl -fsS https://token.actions.githubusercontent.com/.well-known/jwks
//!   > github-jwks.json`; the issuer is `https://token.actions.githubusercontent.com`, the
//!   audience what the workflow asks its token for (`core.getIDToken('keyloop')`); subjects are
//!   `repo:<owner>/<repo>:ref:refs/heads/<branch>`, `repo:<owner>/<repo>:environment:<env>`, ….
//! - **SPIFFE (SPIRE)**: the trust domain's bundle in JWKS form (`spire-server bundle show
//!   -format spiffe > spiffe-bundle.json`; its `x509-svid` keys are skipped, its `jwt-svid` keys
//!   used). The token's `iss` is matched, so the SPIRE server must set one (`jwt_issuer`);
//!   subjects are SPIFFE ids (`spiffe://example.org/ns/ci/sa/deployer`).
//!
//! What a token must be, and why: signed with an asymmetric algorithm (RS256/384/512,
//! PS256/384/512, ES256, ES384, EdDSA — never HMAC, whose secret would be a key any verifier
//! holds, nor `none`); the algorithm is the one of the issuer's key (its JWK `alg`, or the
//! only one its key type allows), never taken from the token's header, so a token cannot
//! choose how it is checked; `iss` equal to a trusted issuer, byte for byte; `aud` naming one of
//! that issuer's audiences (a token minted for another service cannot be replayed here); `exp`
//! present and not past, `nbf` not in the future, each within a small leeway for clock skew
//! ([`DEFAULT_LEEWAY_SECS`], at most [`MAX_LEEWAY_SECS`]); a `kid` in the issuer's JWKS; at most
//! [`MAX_TOKEN_BYTES`]. The token is a bearer credential: no error, log line or event ever
//! quotes it, nor any of its unverified content.
//!
//! Signatures are checked by the `jsonwebtoken` crate with its RustCrypto backend; this module
//! chooses the key and the algorithm before that and checks the clock after it (the crate reads
//! the system clock, and decisions here are pure functions of the clock they are given). No I/O:
//! the caller reads the JWKS files ([`IdentityVerifier::load`]).

mod issuers;
mod verify;

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;

pub use issuers::{
    DEFAULT_LEEWAY_SECS, IdentityVerifier, MAX_LEEWAY_SECS, TrustError, TrustedIssuer,
    TrustedIssuers,
};
pub use verify::{IdentityError, MAX_TOKEN_BYTES};

use crate::secret::Secret;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Who a verified identity token says its bearer is: the issuer that signed it and the subject
/// it names, exactly as signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkloadIdentity {
    /// The token's `iss`: one of the trusted issuers.
    pub issuer: String,
    /// The token's `sub` (`system:serviceaccount:ci:deployer`,
    /// `repo:acme/api:ref:refs/heads/main`, `spiffe://example.org/ns/ci/sa/deployer`).
    pub subject: String,
    /// Well-known claims of the verified token, for people reading the audit log: GitHub's
    /// `repository` and `ref`, Kubernetes' `namespace` and `service_account`. Labels only: the
    /// policy decides on issuer and subject.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl WorkloadIdentity {
    /// The identity as an event's `actor`: `<issuer>#<subject>`
    /// (`https://token.actions.githubusercontent.com#repo:acme/api:ref:refs/heads/main`).
    /// `#` separates them because an issuer is a URL without a fragment.
    pub fn actor(&self) -> String {
        format!("{}#{}", self.issuer, self.subject)
    }
}

/// A workload identity token as a request carries it: a bearer credential, so its `Debug`
/// prints `[redacted]` and its memory is zeroized on drop (it is a [`Secret`]). It serializes
/// as the plain string, for the one request that sends it.
#[derive(Clone, PartialEq)]
pub struct IdentityToken(Secret);

impl Eq for IdentityToken {}

impl IdentityToken {
    /// Wraps a token.
    pub fn new(token: String) -> Self {
        Self(Secret::new(token))
    }

    /// The token text. Only the verifier and the request that sends it read it.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }
}

impl std::fmt::Debug for IdentityToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Serialize for IdentityToken {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.expose())
    }
}

impl<'de> Deserialize<'de> for IdentityToken {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self::new)
    }
}
