//! Checking one token: size and shape, the header's algorithm against the accepted ones, the
//! issuer and its key (chosen by `kid`), then the signature, `iss` and `aud` by `jsonwebtoken`
//! with exactly that key and algorithm, then `exp` and `nbf` against the clock given. Until the
//! signature is checked, nothing from the token is believed or repeated: an unknown issuer,
//! algorithm or key id is refused without being quoted.

use super::issuers::{IdentityVerifier, LoadedIssuer, VerificationKey, algorithm_name};
use super::{IdentityToken, WorkloadIdentity};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind as JwtErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use std::collections::BTreeMap;
use time::OffsetDateTime;

/// The longest token accepted, in bytes. Kubernetes, GitHub and SPIFFE tokens are 1–2 KiB.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// The longest subject accepted, in bytes.
const MAX_SUBJECT_BYTES: usize = 512;
/// The longest label value kept, in bytes (longer ones are left out).
const MAX_LABEL_BYTES: usize = 256;

/// Why an identity token was refused. No message quotes the token, nor anything of it that the
/// signature did not prove: an unknown issuer or key id may be anything.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// Longer than [`MAX_TOKEN_BYTES`].
    #[error("the token is over {MAX_TOKEN_BYTES} bytes")]
    Oversize,
    /// Not a JWT, or a part of it is not what a JWT holds.
    #[error("the token is not a valid JWT: {what}")]
    Malformed {
        /// Which part is wrong.
        what: &'static str,
    },
    /// The header's algorithm is not an asymmetric signature keyloop accepts (`none`, HMAC, …).
    #[error(
        "the token is signed with {}; only asymmetric signatures are accepted (RS256/384/512, PS256/384/512, ES256, ES384, EdDSA)",
        alg.unwrap_or("an unknown algorithm")
    )]
    UnsupportedAlgorithm {
        /// The algorithm's name, when it is one of the JOSE names (anything else is not quoted).
        alg: Option<&'static str>,
    },
    /// The header's algorithm is not the one of the issuer's key.
    #[error(
        "the token says {alg}, but key `{kid}` of issuer {issuer} is checked with {expected} only"
    )]
    AlgorithmMismatch {
        /// The header's algorithm.
        alg: &'static str,
        /// The key's.
        expected: &'static str,
        /// The key.
        kid: String,
        /// Its issuer.
        issuer: String,
    },
    /// `iss` is not a trusted issuer (or is missing).
    #[error(
        "the token's issuer is not trusted; trusted issuers: {}",
        list(trusted)
    )]
    UnknownIssuer {
        /// The trusted issuers.
        trusted: Vec<String>,
    },
    /// The header's `kid` is not in the issuer's JWKS (or is missing while it has several
    /// keys).
    #[error(
        "the token's key id is not in the JWKS of issuer {issuer}; if the issuer rotated its keys, refresh its jwks_file and restart the jit-issuer"
    )]
    UnknownKeyId {
        /// The issuer.
        issuer: String,
    },
    /// The signature does not verify: forged, tampered with, or signed by another key.
    #[error("the token's signature does not verify with the key of issuer {issuer}")]
    BadSignature {
        /// The issuer.
        issuer: String,
    },
    /// `aud` names none of the issuer's audiences for keyloop.
    #[error(
        "the token's audience is not keyloop's; issuer {issuer} tokens for keyloop name one of: {}",
        list(audiences)
    )]
    WrongAudience {
        /// The issuer.
        issuer: String,
        /// Its audiences for keyloop.
        audiences: Vec<String>,
    },
    /// A claim every token must carry is missing.
    #[error("the token has no `{claim}` claim")]
    MissingClaim {
        /// `exp`, `sub`, `aud` or `iss`.
        claim: &'static str,
    },
    /// `exp` has passed (beyond the leeway).
    #[error("the token expired at {} (leeway {leeway_secs} s); get a fresh one", rfc3339(*at))]
    Expired {
        /// Its `exp`.
        at: OffsetDateTime,
        /// The leeway given.
        leeway_secs: u64,
    },
    /// `nbf` is in the future (beyond the leeway).
    #[error(
        "the token is not valid before {} (leeway {leeway_secs} s); check the clocks",
        rfc3339(*at)
    )]
    NotYetValid {
        /// Its `nbf`.
        at: OffsetDateTime,
        /// The leeway given.
        leeway_secs: u64,
    },
}

impl IdentityError {
    /// The reason as a short machine-readable name (`expired`, `bad_signature`, …), for tests,
    /// metrics and the `denied` event's actor.
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::Oversize => "oversize",
            Self::Malformed { .. } => "malformed",
            Self::UnsupportedAlgorithm { .. } => "unsupported_algorithm",
            Self::AlgorithmMismatch { .. } => "algorithm_mismatch",
            Self::UnknownIssuer { .. } => "unknown_issuer",
            Self::UnknownKeyId { .. } => "unknown_key_id",
            Self::BadSignature { .. } => "bad_signature",
            Self::WrongAudience { .. } => "wrong_audience",
            Self::MissingClaim { .. } => "missing_claim",
            Self::Expired { .. } => "expired",
            Self::NotYetValid { .. } => "not_yet_valid",
        }
    }
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| at.unix_timestamp().to_string())
}

/// The header fields read before the signature is checked.
#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

/// The one claim read before the signature is checked: which issuer's keys to check it with.
#[derive(Deserialize)]
struct UnverifiedClaims {
    #[serde(default)]
    iss: Option<serde_json::Value>,
}

/// The claims of a token whose signature verified. Labels are loose values: a claim of an
/// unexpected type is left out, never a reason to refuse a valid token.
#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    exp: Option<f64>,
    #[serde(default)]
    nbf: Option<f64>,
    #[serde(default)]
    repository: Option<serde_json::Value>,
    #[serde(default, rename = "ref")]
    git_ref: Option<serde_json::Value>,
    #[serde(default, rename = "kubernetes.io")]
    kubernetes: Option<serde_json::Value>,
}

/// The algorithms a token's header may name, by their JOSE names.
fn accepted_algorithm(name: &str) -> Result<Algorithm, IdentityError> {
    let alg = match name {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        known @ ("none" | "HS256" | "HS384" | "HS512" | "ES512" | "ES256K" | "Ed25519") => {
            return Err(IdentityError::UnsupportedAlgorithm {
                alg: Some(match known {
                    "none" => "none",
                    "HS256" => "HS256",
                    "HS384" => "HS384",
                    "HS512" => "HS512",
                    "ES512" => "ES512",
                    "ES256K" => "ES256K",
                    _ => "Ed25519",
                }),
            });
        }
        _ => return Err(IdentityError::UnsupportedAlgorithm { alg: None }),
    };
    Ok(alg)
}

fn decode_part<T: serde::de::DeserializeOwned>(
    part: &str,
    what: &'static str,
) -> Result<T, IdentityError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| IdentityError::Malformed { what })?;
    serde_json::from_slice(&bytes).map_err(|_| IdentityError::Malformed { what })
}

impl IdentityVerifier {
    /// The identity `token` proves at `now`, or why it proves none (see the module doc for
    /// every check).
    pub fn verify(
        &self,
        token: &IdentityToken,
        now: OffsetDateTime,
    ) -> Result<WorkloadIdentity, IdentityError> {
        let text = token.expose().trim();
        if text.len() > MAX_TOKEN_BYTES {
            return Err(IdentityError::Oversize);
        }
        let parts: Vec<&str> = text.split('.').collect();
        let [header, claims, signature] = parts[..] else {
            return Err(IdentityError::Malformed {
                what: "expected three base64url parts separated by dots (a JWS in compact form)",
            });
        };
        let header: Header = decode_part(header, "the header is not base64url JSON with `alg`")?;
        // Before anything else about the token: `none` and HMAC are refused as what they are.
        let alg = accepted_algorithm(&header.alg)?;
        if signature.is_empty() {
            return Err(IdentityError::Malformed {
                what: "the signature is empty",
            });
        }
        let unverified: UnverifiedClaims =
            decode_part(claims, "the claims are not base64url JSON")?;
        let issuer = match unverified.iss {
            None => return Err(IdentityError::MissingClaim { claim: "iss" }),
            Some(serde_json::Value::String(iss)) => {
                self.issuers
                    .iter()
                    .find(|i| i.issuer == iss)
                    .ok_or_else(|| IdentityError::UnknownIssuer {
                        trusted: self.issuer_names(),
                    })?
            }
            Some(_) => {
                return Err(IdentityError::UnknownIssuer {
                    trusted: self.issuer_names(),
                });
            }
        };
        let key = key_for(issuer, header.kid.as_deref())?;
        if key.algorithm != alg {
            return Err(IdentityError::AlgorithmMismatch {
                alg: algorithm_name(alg),
                expected: algorithm_name(key.algorithm),
                kid: key.kid.clone().unwrap_or_else(|| "(no kid)".into()),
                issuer: issuer.issuer.clone(),
            });
        }
        let claims = signed_claims(text, issuer, key)?;
        self.identity(issuer, claims, now)
    }

    /// The identity in claims whose signature, `iss` and `aud` were checked, once `sub`, `exp`
    /// and `nbf` are.
    fn identity(
        &self,
        issuer: &LoadedIssuer,
        claims: Claims,
        now: OffsetDateTime,
    ) -> Result<WorkloadIdentity, IdentityError> {
        let leeway = i64::try_from(self.leeway_secs).unwrap_or(i64::MAX);
        let exp = claims
            .exp
            .ok_or(IdentityError::MissingClaim { claim: "exp" })
            .and_then(|v| numeric_date(v, "`exp` is not a time"))?;
        if now.unix_timestamp() >= exp.unix_timestamp().saturating_add(leeway) {
            return Err(IdentityError::Expired {
                at: exp,
                leeway_secs: self.leeway_secs,
            });
        }
        if let Some(nbf) = claims.nbf {
            let nbf = numeric_date(nbf, "`nbf` is not a time")?;
            if now.unix_timestamp().saturating_add(leeway) < nbf.unix_timestamp() {
                return Err(IdentityError::NotYetValid {
                    at: nbf,
                    leeway_secs: self.leeway_secs,
                });
            }
        }
        let subject = claims
            .sub
            .ok_or(IdentityError::MissingClaim { claim: "sub" })?;
        if subject.is_empty()
            || subject.len() > MAX_SUBJECT_BYTES
            || subject.chars().any(char::is_control)
        {
            return Err(IdentityError::Malformed {
                what: "`sub` must be 1 to 512 printable characters",
            });
        }
        let mut labels = BTreeMap::new();
        let mut label = |name: &str, value: Option<&serde_json::Value>| {
            if let Some(serde_json::Value::String(v)) = value
                && !v.is_empty()
                && v.len() <= MAX_LABEL_BYTES
                && !v.chars().any(char::is_control)
            {
                labels.insert(name.to_owned(), v.clone());
            }
        };
        label("repository", claims.repository.as_ref());
        label("ref", claims.git_ref.as_ref());
        if let Some(k8s) = &claims.kubernetes {
            label("namespace", k8s.get("namespace"));
            label(
                "service_account",
                k8s.get("serviceaccount").and_then(|sa| sa.get("name")),
            );
        }
        Ok(WorkloadIdentity {
            issuer: issuer.issuer.clone(),
            subject,
            labels,
        })
    }
}

/// The issuer's key the header's `kid` names; without a `kid`, the issuer's only key.
fn key_for<'i>(
    issuer: &'i LoadedIssuer,
    kid: Option<&str>,
) -> Result<&'i VerificationKey, IdentityError> {
    let found = match kid {
        Some(kid) => issuer.keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
        None if issuer.keys.len() == 1 => issuer.keys.first(),
        None => None,
    };
    found.ok_or_else(|| IdentityError::UnknownKeyId {
        issuer: issuer.issuer.clone(),
    })
}

/// The claims once `jsonwebtoken` checked the signature with `key` and its algorithm only,
/// `iss` and `aud`, and that `iss`, `aud`, `sub` and `exp` are there. Times are checked by the
/// caller against its clock (the crate's checks would read the system clock).
fn signed_claims(
    token: &str,
    issuer: &LoadedIssuer,
    key: &VerificationKey,
) -> Result<Claims, IdentityError> {
    let mut validation = Validation::new(key.algorithm);
    validation.set_issuer(&[&issuer.issuer]);
    validation.set_audience(&issuer.audiences);
    validation.set_required_spec_claims(&["iss", "aud", "sub", "exp"]);
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.leeway = 0;
    jsonwebtoken::decode::<Claims>(token, &key.key, &validation)
        .map(|data| data.claims)
        .map_err(|e| match e.kind() {
            JwtErrorKind::InvalidSignature
            | JwtErrorKind::InvalidEcdsaKey
            | JwtErrorKind::InvalidEddsaKey
            | JwtErrorKind::InvalidRsaKey(_)
            | JwtErrorKind::InvalidKeyFormat => IdentityError::BadSignature {
                issuer: issuer.issuer.clone(),
            },
            JwtErrorKind::InvalidAudience => IdentityError::WrongAudience {
                issuer: issuer.issuer.clone(),
                audiences: issuer.audiences.clone(),
            },
            JwtErrorKind::InvalidIssuer => IdentityError::UnknownIssuer {
                trusted: vec![issuer.issuer.clone()],
            },
            JwtErrorKind::InvalidAlgorithm | JwtErrorKind::UnsupportedAlgorithm => {
                IdentityError::UnsupportedAlgorithm { alg: None }
            }
            JwtErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
                "aud" => IdentityError::MissingClaim { claim: "aud" },
                "sub" => IdentityError::MissingClaim { claim: "sub" },
                "exp" => IdentityError::MissingClaim { claim: "exp" },
                _ => IdentityError::MissingClaim { claim: "iss" },
            },
            JwtErrorKind::InvalidClaimFormat(_) => IdentityError::Malformed {
                what: "a registered claim (`iss`, `sub`, `aud`, `exp`, `nbf`) has the wrong type",
            },
            JwtErrorKind::InvalidToken => IdentityError::Malformed {
                what: "the header has critical extensions keyloop does not support, or the token's shape is wrong",
            },
            _ => IdentityError::Malformed {
                what: "a part is not base64url JSON of the right shape",
            },
        })
}

/// A NumericDate (seconds since the epoch, possibly fractional) as a time.
fn numeric_date(value: f64, what: &'static str) -> Result<OffsetDateTime, IdentityError> {
    if !value.is_finite() {
        return Err(IdentityError::Malformed { what });
    }
    let secs = value.floor();
    if !(-(2f64.powi(53))..=2f64.powi(53)).contains(&secs) {
        return Err(IdentityError::Malformed { what });
    }
    #[allow(clippy::cast_possible_truncation)]
    OffsetDateTime::from_unix_timestamp(secs as i64).map_err(|_| IdentityError::Malformed { what })
}
