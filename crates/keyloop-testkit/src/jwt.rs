//! A workload identity issuer for tests: a fresh P-256 key (made in microseconds, even in a
//! debug build), its JWKS as an issuer publishes it, and ES256 tokens it signs — what a
//! Kubernetes API server or GitHub's token service is to keyloop, without either. Private keys
//! live in memory only; nothing is written but the public JWKS.

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// An issuer of identity tokens with its own key.
pub struct TestIssuer {
    /// Its `iss`.
    pub issuer: String,
    /// The `kid` of its key.
    pub kid: String,
    key: EncodingKey,
    jwk: Jwk,
}

impl std::fmt::Debug for TestIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestIssuer")
            .field("issuer", &self.issuer)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// Seconds since the epoch, now.
pub fn now_secs() -> i64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs();
    i64::try_from(secs).expect("seconds fit")
}

impl TestIssuer {
    /// An issuer named `issuer` whose key is `kid`.
    pub fn new(issuer: &str, kid: &str) -> Self {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .expect("a P-256 key");
        let key = EncodingKey::from_ec_der(pkcs8.as_ref());
        let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).expect("its public JWK");
        jwk.common.key_id = Some(kid.to_owned());
        Self {
            issuer: issuer.to_owned(),
            kid: kid.to_owned(),
            key,
            jwk,
        }
    }

    /// Its public keys as a JWKS document (`{"keys": [...]}`).
    pub fn jwks(&self) -> String {
        json!({ "keys": [self.jwk] }).to_string()
    }

    /// Writes [`TestIssuer::jwks`] to `path`.
    pub fn write_jwks(&self, path: &Path) {
        std::fs::write(path, self.jwks()).expect("write the JWKS");
    }

    /// The claims of a token of this issuer for `subject` and `audience`, valid from a minute
    /// ago for `ttl`.
    pub fn claims(&self, subject: &str, audience: &str, ttl: Duration) -> Value {
        let now = now_secs();
        json!({
            "iss": self.issuer, "sub": subject, "aud": audience,
            "iat": now - 60, "nbf": now - 60,
            "exp": now + i64::try_from(ttl.as_secs()).expect("a test ttl"),
        })
    }

    /// A token for `subject` and `audience`, valid from a minute ago for `ttl`.
    pub fn token(&self, subject: &str, audience: &str, ttl: Duration) -> String {
        self.sign(&self.claims(subject, audience, ttl))
    }

    /// `claims` signed with this issuer's key (ES256, its `kid` in the header).
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).expect("sign a test token")
    }
}
