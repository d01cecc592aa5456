//! A test issuer of identity tokens: a fresh P-256 key (microseconds to make in a debug
//! build), its JWKS, and tokens it signs. For the unit tests of this crate; the end-to-end
//! tests have their own in `keyloop-testkit`.

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use serde_json::{Value, json};

/// A token issuer with a fresh P-256 key.
pub(crate) struct Signer {
    pub(crate) kid: String,
    pub(crate) key: EncodingKey,
    pub(crate) jwk: Jwk,
}

impl Signer {
    pub(crate) fn new(kid: &str) -> Self {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .unwrap();
        let key = EncodingKey::from_ec_der(pkcs8.as_ref());
        let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).unwrap();
        jwk.common.key_id = Some(kid.into());
        Self {
            kid: kid.into(),
            key,
            jwk,
        }
    }

    pub(crate) fn jwks(&self) -> Vec<u8> {
        serde_json::to_vec(&json!({ "keys": [self.jwk] })).unwrap()
    }

    pub(crate) fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }
}

/// A verifier trusting only `issuer` (audience `keyloop`) with `signer`'s key.
pub(crate) fn verifier(issuer: &str, signer: &Signer) -> super::IdentityVerifier {
    let issuers = super::TrustedIssuers(vec![super::TrustedIssuer {
        issuer: issuer.into(),
        audiences: vec!["keyloop".into()],
        jwks_file: "jwks.json".into(),
    }]);
    super::IdentityVerifier::load(&issuers, super::DEFAULT_LEEWAY_SECS, |_| Ok(signer.jwks()))
        .expect("a test issuer loads")
}
