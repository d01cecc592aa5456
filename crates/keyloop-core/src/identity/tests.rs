//! The verifier as a matrix: each way a token can be wrong is refused with its own reason, and
//! no refusal quotes the token. Keys are made per test (P-256, microseconds in a debug build);
//! the RS256 case uses a fixture whose private key was thrown away after signing it
//! (`fixtures/k8s-*.json`: a public JWKS and tokens valid at [`NOW`]).

use super::testing::Signer;
use super::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use time::OffsetDateTime;
use time::macros::datetime;

const NOW: OffsetDateTime = datetime!(2026-03-01 12:00 UTC);
const CI: &str = "https://ci.example";
const K8S: &str = "https://kubernetes.default.svc.cluster.local";
const K8S_JWKS: &str = include_str!("fixtures/k8s-jwks.json");
const K8S_TOKENS: &str = include_str!("fixtures/k8s-tokens.json");

/// Claims of a CI job's token for keyloop, valid from a minute before [`NOW`] for an hour.
fn claims() -> Value {
    let now = NOW.unix_timestamp();
    json!({
        "iss": CI, "sub": "repo:acme/api:ref:refs/heads/main", "aud": "keyloop",
        "iat": now - 60, "nbf": now - 60, "exp": now + 3600,
        "repository": "acme/api", "ref": "refs/heads/main",
    })
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

fn without(mut claims: Value, key: &str) -> Value {
    claims.as_object_mut().unwrap().remove(key);
    claims
}

/// A verifier trusting [`CI`] (audience `keyloop`, `signer`'s key) and [`K8S`] (the fixture).
fn verifier(signer: &Signer) -> IdentityVerifier {
    let issuers = TrustedIssuers(vec![
        TrustedIssuer {
            issuer: CI.into(),
            audiences: vec!["keyloop".into()],
            jwks_file: "ci.json".into(),
        },
        TrustedIssuer {
            issuer: K8S.into(),
            audiences: vec!["keyloop".into(), "vault".into()],
            jwks_file: "k8s.json".into(),
        },
    ]);
    let files = HashMap::from([
        (PathBuf::from("ci.json"), signer.jwks()),
        (PathBuf::from("k8s.json"), K8S_JWKS.as_bytes().to_vec()),
    ]);
    IdentityVerifier::load(&issuers, DEFAULT_LEEWAY_SECS, |p| {
        files
            .get(p)
            .cloned()
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
    })
    .unwrap()
}

/// Verifies `token`; a refusal must not quote it or any of its parts.
fn check(verifier: &IdentityVerifier, token: &str) -> Result<WorkloadIdentity, IdentityError> {
    let result = verifier.verify(&IdentityToken::new(token.to_owned()), NOW);
    if let Err(e) = &result {
        let (message, debug) = (e.to_string(), format!("{e:?}"));
        for part in token.split('.').filter(|p| p.len() >= 8) {
            assert!(!message.contains(part), "{message}");
            assert!(!debug.contains(part), "{debug}");
        }
    }
    result
}

fn refusal(verifier: &IdentityVerifier, token: &str) -> IdentityError {
    check(verifier, token).expect_err("refused")
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unsigned(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

fn k8s_token(name: &str) -> String {
    let tokens: HashMap<String, String> = serde_json::from_str(K8S_TOKENS).unwrap();
    tokens[name].clone()
}

#[test]
fn a_valid_es256_token_proves_its_issuer_and_subject_with_its_labels() {
    let signer = Signer::new("ci-1");
    let id = check(&verifier(&signer), &signer.sign(&claims())).unwrap();
    assert_eq!(id.issuer, CI);
    assert_eq!(id.subject, "repo:acme/api:ref:refs/heads/main");
    assert_eq!(id.labels["repository"], "acme/api");
    assert_eq!(id.labels["ref"], "refs/heads/main");
    assert_eq!(
        id.actor(),
        "https://ci.example#repo:acme/api:ref:refs/heads/main"
    );
}

#[test]
fn a_valid_rs256_kubernetes_token_proves_its_service_account() {
    let id = check(&verifier(&Signer::new("ci-1")), &k8s_token("valid_rs256")).unwrap();
    assert_eq!(id.issuer, K8S);
    assert_eq!(id.subject, "system:serviceaccount:ci:deployer");
    assert_eq!(id.labels["namespace"], "ci");
    assert_eq!(id.labels["service_account"], "deployer");
}

#[test]
fn a_token_signed_by_another_key_under_the_same_kid_is_forged() {
    let (trusted, forger) = (Signer::new("ci-1"), Signer::new("ci-1"));
    let e = refusal(&verifier(&trusted), &forger.sign(&claims()));
    assert_eq!(e.kind(), "bad_signature");
    assert_eq!(
        e.to_string(),
        "the token's signature does not verify with the key of issuer https://ci.example"
    );
}

#[test]
fn a_tampered_payload_breaks_the_signature() {
    let signer = Signer::new("ci-1");
    let token = signer.sign(&claims());
    let parts: Vec<&str> = token.split('.').collect();
    let elevated = with(
        claims(),
        "sub",
        json!("repo:acme/infra:ref:refs/heads/main"),
    );
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(elevated.to_string().as_bytes()),
        parts[2]
    );
    assert_eq!(
        refusal(&verifier(&signer), &tampered).kind(),
        "bad_signature"
    );
}

#[test]
fn an_expired_token_is_refused_beyond_the_leeway_and_accepted_within_it() {
    let signer = Signer::new("ci-1");
    let v = verifier(&signer);
    let now = NOW.unix_timestamp();
    let leeway = i64::try_from(DEFAULT_LEEWAY_SECS).unwrap();
    let expired = signer.sign(&with(claims(), "exp", json!(now - leeway)));
    let e = refusal(&v, &expired);
    assert_eq!(e.kind(), "expired");
    assert_eq!(
        e.to_string(),
        "the token expired at 2026-03-01T11:59:30Z (leeway 30 s); get a fresh one"
    );
    let skewed = signer.sign(&with(claims(), "exp", json!(now - leeway + 1)));
    assert!(check(&v, &skewed).is_ok(), "1 s inside the leeway");
}

#[test]
fn a_token_not_yet_valid_is_refused_beyond_the_leeway_and_accepted_within_it() {
    let signer = Signer::new("ci-1");
    let v = verifier(&signer);
    let now = NOW.unix_timestamp();
    let early = signer.sign(&with(claims(), "nbf", json!(now + 31)));
    assert_eq!(refusal(&v, &early).kind(), "not_yet_valid");
    let skewed = signer.sign(&with(claims(), "nbf", json!(now + 30)));
    assert!(check(&v, &skewed).is_ok(), "within the leeway");
}

#[test]
fn a_token_for_another_audience_is_refused_and_one_of_several_audiences_is_enough() {
    let signer = Signer::new("ci-1");
    let v = verifier(&signer);
    let e = refusal(
        &v,
        &signer.sign(&with(claims(), "aud", json!("payments-api"))),
    );
    assert_eq!(e.kind(), "wrong_audience");
    assert_eq!(
        e.to_string(),
        "the token's audience is not keyloop's; issuer https://ci.example tokens for keyloop name one of: keyloop"
    );
    let many = signer.sign(&with(claims(), "aud", json!(["payments-api", "keyloop"])));
    assert!(check(&v, &many).is_ok());
    let missing = signer.sign(&without(claims(), "aud"));
    assert_eq!(
        refusal(&v, &missing),
        IdentityError::MissingClaim { claim: "aud" }
    );
}

#[test]
fn an_unknown_issuer_is_refused_without_being_quoted() {
    let signer = Signer::new("ci-1");
    let token = signer.sign(&with(claims(), "iss", json!("https://evil.example")));
    let e = refusal(&verifier(&signer), &token);
    assert_eq!(e.kind(), "unknown_issuer");
    assert!(!e.to_string().contains("evil"), "{e}");
    assert_eq!(
        e.to_string(),
        "the token's issuer is not trusted; trusted issuers: https://ci.example, https://kubernetes.default.svc.cluster.local"
    );
    let none = signer.sign(&without(claims(), "iss"));
    assert_eq!(
        refusal(&verifier(&signer), &none),
        IdentityError::MissingClaim { claim: "iss" }
    );
    assert_eq!(
        refusal(&IdentityVerifier::default(), &signer.sign(&claims())).kind(),
        "unknown_issuer",
        "the default verifier trusts nobody"
    );
}

#[test]
fn an_issuer_is_matched_exactly() {
    let signer = Signer::new("ci-1");
    for near in [
        "https://ci.example/",
        "HTTPS://CI.EXAMPLE",
        " https://ci.example",
    ] {
        let token = signer.sign(&with(claims(), "iss", json!(near)));
        assert_eq!(refusal(&verifier(&signer), &token).kind(), "unknown_issuer");
    }
}

#[test]
fn an_unknown_key_id_is_refused_without_being_quoted() {
    let signer = Signer::new("ci-1");
    let other = Signer::new("ci-rotated-secretive-kid");
    let e = refusal(&verifier(&signer), &other.sign(&claims()));
    assert_eq!(e.kind(), "unknown_key_id");
    assert!(!e.to_string().contains("secretive"), "{e}");
}

#[test]
fn a_token_without_kid_uses_the_issuers_only_key() {
    let signer = Signer::new("ci-1");
    let token =
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims(), &signer.key).unwrap();
    assert!(check(&verifier(&signer), &token).is_ok());
}

#[test]
fn alg_none_is_refused_as_an_unsupported_algorithm() {
    let signer = Signer::new("ci-1");
    for signature in ["", "AAAA"] {
        let token = unsigned(&json!({"alg": "none", "kid": "ci-1"}), &claims(), signature);
        let e = refusal(&verifier(&signer), &token);
        assert_eq!(e, IdentityError::UnsupportedAlgorithm { alg: Some("none") });
    }
}

#[test]
fn hs256_signed_with_the_public_key_as_hmac_secret_is_refused() {
    // The classic algorithm confusion: a verifier that takes the algorithm from the header
    // would check this HMAC with the public key it holds, and accept it.
    let v = verifier(&Signer::new("ci-1"));
    for name in ["hs256_with_public_key_pem", "hs256_with_jwk_json"] {
        assert_eq!(
            refusal(&v, &k8s_token(name)),
            IdentityError::UnsupportedAlgorithm { alg: Some("HS256") },
            "{name}"
        );
    }
    let signer = Signer::new("ci-1");
    let secret = serde_json::to_vec(&signer.jwk).unwrap();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("ci-1".into());
    let token = jsonwebtoken::encode(
        &header,
        &claims(),
        &EncodingKey::from_secret(&secret).unwrap(),
    )
    .unwrap();
    assert_eq!(
        refusal(&verifier(&signer), &token).kind(),
        "unsupported_algorithm"
    );
}

#[test]
fn a_header_algorithm_other_than_the_keys_is_refused_before_any_signature_check() {
    let signer = Signer::new("ci-1");
    let token = unsigned(&json!({"alg": "RS256", "kid": "ci-1"}), &claims(), "AAAA");
    assert_eq!(
        refusal(&verifier(&signer), &token),
        IdentityError::AlgorithmMismatch {
            alg: "RS256",
            expected: "ES256",
            kid: "ci-1".into(),
            issuer: CI.into(),
        }
    );
    let unknown = unsigned(
        &json!({"alg": "XYZ-secret-alg", "kid": "ci-1"}),
        &claims(),
        "AAAA",
    );
    let e = refusal(&verifier(&signer), &unknown);
    assert_eq!(e, IdentityError::UnsupportedAlgorithm { alg: None });
    assert!(!e.to_string().contains("XYZ"), "{e}");
}

#[test]
fn an_oversize_token_is_refused_unread() {
    let signer = Signer::new("ci-1");
    let big = signer.sign(&with(claims(), "pad", json!("x".repeat(MAX_TOKEN_BYTES))));
    assert_eq!(refusal(&verifier(&signer), &big), IdentityError::Oversize);
}

#[test]
fn malformed_tokens_and_missing_claims_are_refused_with_what_is_wrong() {
    let signer = Signer::new("ci-1");
    let v = verifier(&signer);
    for garbage in [
        "",
        "not-a-jwt-but-maybe-a-password",
        "a.b",
        "a.b.c.d",
        "!!.??.**",
    ] {
        assert_eq!(refusal(&v, garbage).kind(), "malformed", "{garbage:?}");
    }
    assert_eq!(
        refusal(&v, &signer.sign(&without(claims(), "exp"))),
        IdentityError::MissingClaim { claim: "exp" }
    );
    assert_eq!(
        refusal(&v, &signer.sign(&without(claims(), "sub"))),
        IdentityError::MissingClaim { claim: "sub" }
    );
    assert_eq!(
        refusal(&v, &signer.sign(&with(claims(), "sub", json!("")))).kind(),
        "malformed"
    );
    assert_eq!(
        refusal(&v, &signer.sign(&with(claims(), "exp", json!("tomorrow")))).kind(),
        "malformed"
    );
}

#[test]
fn a_token_is_redacted_in_debug() {
    let token = IdentityToken::new("eyJhbGciOi.secret-claims.sig".into());
    assert_eq!(format!("{token:?}"), "[redacted]");
    assert_eq!(format!("{:?}", Some(&token)), "Some([redacted])");
    assert_eq!(
        serde_json::to_string(&token).unwrap(),
        "\"eyJhbGciOi.secret-claims.sig\"",
        "it is sent as it is"
    );
}

/// Loads `jwks` as the keys of [`CI`].
fn load(jwks: &Value) -> Result<IdentityVerifier, TrustError> {
    load_bytes(jwks.to_string().into_bytes())
}

fn load_bytes(bytes: Vec<u8>) -> Result<IdentityVerifier, TrustError> {
    let issuers = TrustedIssuers(vec![TrustedIssuer {
        issuer: CI.into(),
        audiences: vec!["keyloop".into()],
        jwks_file: "/etc/keyloop/ci-jwks.json".into(),
    }]);
    IdentityVerifier::load(&issuers, DEFAULT_LEEWAY_SECS, |_| Ok(bytes.clone()))
}

fn load_error(jwks: &Value) -> String {
    load(jwks).expect_err("refused").to_string()
}

#[test]
fn a_jwks_that_cannot_be_used_safely_stops_the_start_with_the_file_and_the_key_named() {
    let ec = serde_json::to_value(&Signer::new("ci-1").jwk).unwrap();
    assert!(load(&json!({"keys": [ec]})).is_ok());

    let symmetric = json!({"keys": [{"kty": "oct", "kid": "shared", "k": "c2VjcmV0LXNlY3JldA"}]});
    let e = load_error(&symmetric);
    assert!(
        e.starts_with("issuer `https://ci.example`: JWKS file /etc/keyloop/ci-jwks.json: key `shared`: a symmetric (kty oct) key"),
        "{e}"
    );

    let wrong_alg = with(ec.clone(), "alg", json!("RS256"));
    let e = load_error(&json!({"keys": [wrong_alg]}));
    assert!(
        e.contains("its alg RS256 does not fit its key type (expected ES256)"),
        "{e}"
    );

    let hmac_alg = with(ec.clone(), "alg", json!("HS256"));
    assert!(load_error(&json!({"keys": [hmac_alg]})).contains("does not fit its key type"));

    let short_rsa =
        json!({"keys": [{"kty": "RSA", "kid": "old", "n": b64(&[0xc5; 128]), "e": "AQAB"}]});
    assert!(load_error(&short_rsa).contains("an RSA key of 1024 bits"));

    let off_curve = with(ec.clone(), "x", json!(b64(&[7; 32])));
    assert!(load_error(&json!({"keys": [off_curve]})).contains("not a valid ES256 public key"));

    let e = load_error(&json!({"keys": [ec.clone(), ec.clone()]}));
    assert!(e.contains("kid `ci-1` names two keys"), "{e}");

    let e = load_error(&json!({"keys": []}));
    assert!(
        e.contains("/etc/keyloop/ci-jwks.json has no signing key"),
        "{e}"
    );

    let e = load_bytes(b"<html>rate limited</html>".to_vec())
        .expect_err("refused")
        .to_string();
    assert!(
        e.starts_with("issuer `https://ci.example`: /etc/keyloop/ci-jwks.json is not a JWKS"),
        "{e}"
    );
}

#[test]
fn keys_meant_for_something_else_are_skipped_as_a_spiffe_bundle_needs() {
    let signer = Signer::new("jwt-1");
    let mut jwt_svid = serde_json::to_value(&signer.jwk).unwrap();
    jwt_svid["use"] = json!("jwt-svid");
    let mut x509_svid = serde_json::to_value(&Signer::new("x509-1").jwk).unwrap();
    x509_svid["use"] = json!("x509-svid");
    let mut encryption = serde_json::to_value(&Signer::new("enc-1").jwk).unwrap();
    encryption["use"] = json!("enc");
    let bundle = json!({"keys": [x509_svid, jwt_svid, encryption], "spiffe_sequence": 3});
    let v = load(&bundle).unwrap();
    assert_eq!(v.issuers[0].keys.len(), 1, "only the jwt-svid key");
    assert!(check(&v, &signer.sign(&claims())).is_ok());
}

#[test]
fn issuer_entries_must_be_complete_and_unique_and_the_leeway_bounded() {
    let entry = |issuer: &str, audiences: &[&str]| TrustedIssuer {
        issuer: issuer.into(),
        audiences: audiences.iter().map(|a| (*a).to_owned()).collect(),
        jwks_file: "k.json".into(),
    };
    let never_read = |_: &Path| -> std::io::Result<Vec<u8>> { unreachable!("checked first") };
    for (issuers, expected) in [
        (
            vec![entry("", &["keyloop"])],
            "issuers[0]: `issuer` is empty",
        ),
        (
            vec![entry(CI, &[])],
            "issuer `https://ci.example` has no audience",
        ),
        (
            vec![entry(CI, &[""])],
            "issuer `https://ci.example` has no audience",
        ),
        (
            vec![entry(CI, &["keyloop"]), entry(CI, &["other"])],
            "issuer `https://ci.example` is listed twice",
        ),
    ] {
        let e = IdentityVerifier::load(&TrustedIssuers(issuers), 30, never_read)
            .expect_err("refused")
            .to_string();
        assert!(e.starts_with(expected), "{e}");
    }
    let e = IdentityVerifier::load(&TrustedIssuers::default(), MAX_LEEWAY_SECS + 1, never_read)
        .expect_err("refused");
    assert!(matches!(e, TrustError::LeewayTooLong { secs: 301 }), "{e}");
    let unreadable =
        IdentityVerifier::load(&TrustedIssuers(vec![entry(CI, &["keyloop"])]), 30, |_| {
            Err(std::io::Error::from(std::io::ErrorKind::NotFound))
        })
        .expect_err("refused")
        .to_string();
    assert!(
        unreadable.starts_with("issuer `https://ci.example`: cannot read its JWKS file k.json:"),
        "{unreadable}"
    );
}

#[test]
fn relative_jwks_paths_are_resolved_against_the_policy_directory() {
    let mut issuers = TrustedIssuers(vec![
        TrustedIssuer {
            issuer: CI.into(),
            audiences: vec!["keyloop".into()],
            jwks_file: "keys/ci.json".into(),
        },
        TrustedIssuer {
            issuer: K8S.into(),
            audiences: vec!["keyloop".into()],
            jwks_file: "/abs/k8s.json".into(),
        },
    ]);
    issuers.resolve_paths(Path::new("/etc/keyloop"));
    assert_eq!(
        issuers.0[0].jwks_file,
        Path::new("/etc/keyloop/keys/ci.json")
    );
    assert_eq!(issuers.0[1].jwks_file, Path::new("/abs/k8s.json"));
}
