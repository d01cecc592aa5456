//! The issuers keyloop trusts, as the policy names them, and their keys once loaded: which key
//! of which issuer checks a token, and with which algorithm, is decided here when the JWKS files
//! are read, so a key keyloop could not use safely stops the start instead of a request.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::crypto::CryptoProvider;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The leeway given to `exp` and `nbf` for clock skew between the issuer and keyloop, unless
/// the policy sets another.
pub const DEFAULT_LEEWAY_SECS: u64 = 30;
/// The largest leeway a policy may set: more would keep an expired token working for minutes.
pub const MAX_LEEWAY_SECS: u64 = 300;
/// The smallest RSA modulus accepted, in bytes (2048 bits).
const MIN_RSA_MODULUS_BYTES: usize = 256;

/// One issuer of workload identity tokens that keyloop trusts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrustedIssuer {
    /// The tokens' `iss`, matched byte for byte (no case folding, no trailing-slash
    /// forgiveness): `https://token.actions.githubusercontent.com`,
    /// `https://kubernetes.default.svc.cluster.local`, a SPIRE server's `jwt_issuer`.
    pub issuer: String,
    /// The audiences that mean keyloop: a token's `aud` must name at least one of them. A token
    /// minted for another service names that service instead, so it cannot be replayed here.
    pub audiences: Vec<String>,
    /// The issuer's public keys, a JWKS file (`{"keys": [...]}`); a relative path is relative
    /// to the policy file. See the module doc for how to get it from each kind of issuer.
    pub jwks_file: PathBuf,
}

/// The issuers keyloop trusts (the JIT policy's `issuers`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct TrustedIssuers(pub Vec<TrustedIssuer>);

impl TrustedIssuers {
    /// True when no issuer is trusted (every identity token is refused).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The issuer whose `iss` is exactly `issuer`.
    pub fn get(&self, issuer: &str) -> Option<&TrustedIssuer> {
        self.0.iter().find(|i| i.issuer == issuer)
    }

    /// The issuers' names, in the policy's order.
    pub fn names(&self) -> Vec<String> {
        self.0.iter().map(|i| i.issuer.clone()).collect()
    }

    /// Makes every relative `jwks_file` relative to `base` (the policy file's directory).
    pub fn resolve_paths(&mut self, base: &Path) {
        for issuer in &mut self.0 {
            if issuer.jwks_file.is_relative() {
                issuer.jwks_file = base.join(&issuer.jwks_file);
            }
        }
    }

    /// Every issuer named once, non-empty, with at least one non-empty audience.
    pub fn check(&self) -> Result<(), TrustError> {
        for (i, issuer) in self.0.iter().enumerate() {
            if issuer.issuer.is_empty() {
                return Err(TrustError::EmptyIssuer { index: i });
            }
            if self.0[..i].iter().any(|o| o.issuer == issuer.issuer) {
                return Err(TrustError::DuplicateIssuer {
                    issuer: issuer.issuer.clone(),
                });
            }
            if issuer.audiences.is_empty() || issuer.audiences.iter().any(String::is_empty) {
                return Err(TrustError::NoAudience {
                    issuer: issuer.issuer.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Why the trusted issuers cannot be used. Each message names the issuer, the file and the key
/// concerned, and what to change; key files hold public keys only, so naming their content is
/// safe.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// An issuer with an empty `issuer`.
    #[error("issuers[{index}]: `issuer` is empty; set it to the exact `iss` of the tokens")]
    EmptyIssuer {
        /// Its position in the list.
        index: usize,
    },
    /// Two entries for one issuer.
    #[error(
        "issuer `{issuer}` is listed twice; keep one entry (put all its audiences in it, and all its keys in its JWKS file)"
    )]
    DuplicateIssuer {
        /// The issuer.
        issuer: String,
    },
    /// No audience (or an empty one): every token would be refused, or any accepted.
    #[error(
        "issuer `{issuer}` has no audience; list in `audiences` the `aud` its tokens for keyloop carry (for example \"keyloop\")"
    )]
    NoAudience {
        /// The issuer.
        issuer: String,
    },
    /// The leeway is over [`MAX_LEEWAY_SECS`].
    #[error(
        "token_leeway_secs {secs} is over {MAX_LEEWAY_SECS}: a longer leeway keeps expired tokens working; use at most {MAX_LEEWAY_SECS} (default {DEFAULT_LEEWAY_SECS})"
    )]
    LeewayTooLong {
        /// The leeway asked for.
        secs: u64,
    },
    /// The JWKS file cannot be read.
    #[error(
        "issuer `{issuer}`: cannot read its JWKS file {}: {source}; check `jwks_file` (a relative path is relative to the policy file)",
        file.display()
    )]
    Unreadable {
        /// The issuer.
        issuer: String,
        /// The file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a JWKS.
    #[error(
        "issuer `{issuer}`: {} is not a JWKS ({reason}); expected {{\"keys\": [...]}} as the issuer publishes it",
        file.display()
    )]
    NotJwks {
        /// The issuer.
        issuer: String,
        /// The file.
        file: PathBuf,
        /// What the JSON parser said.
        reason: String,
    },
    /// A signing key that keyloop cannot use safely.
    #[error("issuer `{issuer}`: JWKS file {}: key {key}: {reason}", file.display())]
    UnusableKey {
        /// The issuer.
        issuer: String,
        /// The file.
        file: PathBuf,
        /// The key's `kid`, or its position.
        key: String,
        /// What is wrong and what to do.
        reason: String,
    },
    /// Two keys with one `kid`: a token's key would be ambiguous.
    #[error(
        "issuer `{issuer}`: JWKS file {}: kid `{kid}` names two keys; keep one",
        file.display()
    )]
    DuplicateKeyId {
        /// The issuer.
        issuer: String,
        /// The file.
        file: PathBuf,
        /// The key id.
        kid: String,
    },
    /// No key to check signatures with.
    #[error(
        "issuer `{issuer}`: JWKS file {} has no signing key; refresh it from the issuer (the module doc of keyloop_core::identity and the README's JIT section say how)",
        file.display()
    )]
    NoKeys {
        /// The issuer.
        issuer: String,
        /// The file.
        file: PathBuf,
    },
    /// The build has no signature backend (a feature of `jsonwebtoken` is missing).
    #[error(
        "this build has no JWT signature backend; it was built without jsonwebtoken's `rust_crypto` feature"
    )]
    NoCryptoBackend,
}

/// A key that checks tokens of one issuer, with the one algorithm it is checked with.
#[derive(Clone)]
pub(super) struct VerificationKey {
    pub(super) kid: Option<String>,
    pub(super) algorithm: Algorithm,
    pub(super) key: DecodingKey,
}

/// An issuer with its keys.
#[derive(Clone)]
pub(super) struct LoadedIssuer {
    pub(super) issuer: String,
    pub(super) audiences: Vec<String>,
    pub(super) keys: Vec<VerificationKey>,
}

/// Checks identity tokens against the trusted issuers and their keys (see the module doc).
/// The default trusts no issuer: every token is refused as `unknown issuer`.
#[derive(Clone)]
pub struct IdentityVerifier {
    pub(super) issuers: Vec<LoadedIssuer>,
    pub(super) leeway_secs: u64,
}

impl Default for IdentityVerifier {
    fn default() -> Self {
        Self {
            issuers: Vec::new(),
            leeway_secs: DEFAULT_LEEWAY_SECS,
        }
    }
}

impl std::fmt::Debug for IdentityVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let issuers: Vec<(&str, usize)> = self
            .issuers
            .iter()
            .map(|i| (i.issuer.as_str(), i.keys.len()))
            .collect();
        f.debug_struct("IdentityVerifier")
            .field("issuers_and_key_counts", &issuers)
            .field("leeway_secs", &self.leeway_secs)
            .finish()
    }
}

impl IdentityVerifier {
    /// A verifier for `issuers`, whose JWKS files `read` returns (the caller does the I/O and
    /// resolves paths), with `leeway_secs` for `exp` and `nbf`. Refuses what could not be used
    /// safely: a broken issuer entry, an unreadable or invalid file, a symmetric key, a key
    /// whose `alg` does not fit its type, an RSA key under 2048 bits, a file with no signing
    /// key. Keys meant for something else (`use` other than `sig` or SPIFFE's `jwt-svid`, or
    /// `key_ops` without `verify`) are skipped.
    pub fn load(
        issuers: &TrustedIssuers,
        leeway_secs: u64,
        mut read: impl FnMut(&Path) -> std::io::Result<Vec<u8>>,
    ) -> Result<Self, TrustError> {
        issuers.check()?;
        if leeway_secs > MAX_LEEWAY_SECS {
            return Err(TrustError::LeewayTooLong { secs: leeway_secs });
        }
        let provider = CryptoProvider::try_get_default().ok_or(TrustError::NoCryptoBackend)?;
        let mut loaded = Vec::with_capacity(issuers.0.len());
        for trusted in &issuers.0 {
            let file = trusted.jwks_file.clone();
            let bytes = read(&file).map_err(|source| TrustError::Unreadable {
                issuer: trusted.issuer.clone(),
                file: file.clone(),
                source,
            })?;
            let set: JwkSet = serde_json::from_slice(&bytes).map_err(|e| TrustError::NotJwks {
                issuer: trusted.issuer.clone(),
                file: file.clone(),
                reason: e.to_string(),
            })?;
            let mut keys: Vec<VerificationKey> = Vec::new();
            for (i, jwk) in set.keys.iter().enumerate() {
                let name = jwk
                    .common
                    .key_id
                    .as_ref()
                    .map_or_else(|| format!("#{i} (no kid)"), |k| format!("`{k}`"));
                let unusable = |reason: String| TrustError::UnusableKey {
                    issuer: trusted.issuer.clone(),
                    file: file.clone(),
                    key: name.clone(),
                    reason,
                };
                let Some(key) = verification_key(jwk).map_err(unusable)? else {
                    continue;
                };
                (provider.verifier_factory)(&key.algorithm, &key.key).map_err(|_| {
                    unusable(format!(
                        "its key material is not a valid {} public key",
                        algorithm_name(key.algorithm)
                    ))
                })?;
                if let Some(kid) = &key.kid
                    && keys.iter().any(|k| k.kid.as_ref() == Some(kid))
                {
                    return Err(TrustError::DuplicateKeyId {
                        issuer: trusted.issuer.clone(),
                        file,
                        kid: kid.clone(),
                    });
                }
                keys.push(key);
            }
            if keys.is_empty() {
                return Err(TrustError::NoKeys {
                    issuer: trusted.issuer.clone(),
                    file,
                });
            }
            loaded.push(LoadedIssuer {
                issuer: trusted.issuer.clone(),
                audiences: trusted.audiences.clone(),
                keys,
            });
        }
        Ok(Self {
            issuers: loaded,
            leeway_secs,
        })
    }

    /// The trusted issuers' names.
    pub fn issuer_names(&self) -> Vec<String> {
        self.issuers.iter().map(|i| i.issuer.clone()).collect()
    }
}

/// The key and algorithm a JWK checks signatures with; `None` for a key meant for something
/// else; an error (what is wrong and what to do) for one that cannot be used safely.
fn verification_key(jwk: &Jwk) -> Result<Option<VerificationKey>, String> {
    match &jwk.common.public_key_use {
        None | Some(PublicKeyUse::Signature) => {}
        Some(PublicKeyUse::Other(other)) if other == "jwt-svid" => {}
        Some(_) => return Ok(None),
    }
    if let Some(ops) = &jwk.common.key_operations
        && !ops.contains(&KeyOperations::Verify)
    {
        return Ok(None);
    }
    let (family, implied) = match &jwk.algorithm {
        AlgorithmParameters::OctetKey(_) => {
            return Err(
                "a symmetric (kty oct) key: a JWKS of public keys never holds one, and HMAC-signed tokens are never accepted; remove it (and treat it as leaked)"
                    .into(),
            );
        }
        AlgorithmParameters::RSA(rsa) => {
            let n = URL_SAFE_NO_PAD
                .decode(rsa.n.trim_end_matches('='))
                .map_err(|_| "its modulus `n` is not base64url".to_owned())?;
            let significant = n.iter().skip_while(|b| **b == 0).count();
            if significant < MIN_RSA_MODULUS_BYTES {
                return Err(format!(
                    "an RSA key of {} bits; keys under 2048 bits are refused",
                    significant * 8
                ));
            }
            (AlgorithmFamily::Rsa, Algorithm::RS256)
        }
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => (AlgorithmFamily::Ec, Algorithm::ES256),
            EllipticCurve::P384 => (AlgorithmFamily::Ec, Algorithm::ES384),
            _ => return Err("an EC key on a curve other than P-256 or P-384 (unsupported)".into()),
        },
        AlgorithmParameters::OctetKeyPair(okp) => match okp.curve {
            EllipticCurve::Ed25519 => (AlgorithmFamily::Ed, Algorithm::EdDSA),
            _ => return Err("an OKP key on a curve other than Ed25519 (unsupported)".into()),
        },
        _ => {
            return Err(
                "an unknown key type (kty); RSA, EC (P-256, P-384) and OKP (Ed25519) keys are supported"
                    .into(),
            );
        }
    };
    let algorithm = match jwk.common.key_algorithm {
        None => implied,
        Some(declared) => {
            let alg = Algorithm::try_from(declared).map_err(|_| {
                format!(
                    "its alg {declared:?} is not a signature algorithm; remove the key or its alg"
                )
            })?;
            if alg.family() != family || (family == AlgorithmFamily::Ec && alg != implied) {
                return Err(format!(
                    "its alg {} does not fit its key type (expected {})",
                    algorithm_name(alg),
                    algorithm_name(implied)
                ));
            }
            alg
        }
    };
    let key =
        DecodingKey::from_jwk(jwk).map_err(|_| "its key material is not base64url".to_owned())?;
    Ok(Some(VerificationKey {
        kid: jwk.common.key_id.clone(),
        algorithm,
        key,
    }))
}

/// The JOSE name of an algorithm keyloop may use.
pub(super) fn algorithm_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::EdDSA => "EdDSA",
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        _ => "an algorithm keyloop does not know",
    }
}
