//! GitHub's secret scanning public keys, and the check of a delivery's signature with them.
//!
//! GitHub signs the raw body of each partner-program request with ECDSA P-256 over SHA-256
//! (`ECDSA-NIST-P256V1-SHA256`): `Github-Public-Key-Signature` is the base64 of the DER
//! signature, `Github-Public-Key-Identifier` names the key in the list GitHub publishes at
//! `https://api.github.com/meta/public_keys/secret_scanning`:
//! `{"public_keys": [{"key_identifier": "<hex>", "key": "-----BEGIN PUBLIC KEY-----…", "is_current": true}]}`.
//! keyloop reads a copy of that list from a file (`--github-keys`), so a request never waits on
//! GitHub's API (which is rate limited) and the host needs no way out; a request naming a key
//! the copy lacks has the file read again (at most every [`REREAD_EVERY`]), so refreshing the
//! copy (a cron job with `curl`) needs no restart.
//!
//! Non-current keys are accepted by default: GitHub lists a key it stopped signing with for a
//! while, and a delivery signed just before the switch (or retried) must not be lost — a leak
//! refused here is a live secret nobody revokes. `--github-current-key-only` refuses them, for
//! whoever prefers losing such a delivery to trusting a retired key. A key GitHub removed from
//! the list is unknown: its signatures are refused.
//!
//! The key is an SPKI (`SubjectPublicKeyInfo`) in PEM. For P-256 its DER is always the same
//! 26-byte header and the 65-byte uncompressed point, so the point is taken from behind that
//! header rather than with an ASN.1 parser; any other key (another curve, another algorithm)
//! is refused when the list is read. ring then verifies (the ring rustls already builds).

use anyhow::{Context, Result};
use axum::http::HeaderMap;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ring::signature::{ECDSA_P256_SHA256_ASN1, UnparsedPublicKey};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

/// The header naming the key that signed the body.
pub(crate) const KEY_ID_HEADER: &str = "Github-Public-Key-Identifier";
/// The header holding the base64 DER signature of the body.
pub(crate) const SIGNATURE_HEADER: &str = "Github-Public-Key-Signature";

/// How often at most a request naming an unknown key has the key file read again.
pub(crate) const REREAD_EVERY: Duration = Duration::from_secs(10);

/// `SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING (66 bytes, 0 unused) }`:
/// the DER header of every P-256 SPKI, followed by the 65-byte uncompressed point.
const P256_SPKI_HEADER: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// The list as GitHub publishes it. Fields GitHub may add are ignored.
#[derive(Deserialize)]
struct Published {
    public_keys: Vec<PublishedKey>,
}

#[derive(Deserialize)]
struct PublishedKey {
    key_identifier: String,
    key: String,
    #[serde(default)]
    is_current: bool,
}

/// One key of the list: its uncompressed point, and whether GitHub signs with it now.
#[derive(Debug, Clone)]
struct PublicKey {
    point: Vec<u8>,
    current: bool,
}

/// The keys by identifier.
#[derive(Debug, Default)]
pub(crate) struct KeyList {
    keys: HashMap<String, PublicKey>,
}

impl KeyList {
    /// Reads GitHub's key list JSON. The text is public, so errors may quote it.
    pub(crate) fn parse(json: &[u8]) -> Result<Self, String> {
        let published: Published = serde_json::from_slice(json).map_err(|e| {
            format!(
                "not GitHub's secret scanning key list ({{\"public_keys\": [{{\"key_identifier\", \
                 \"key\", \"is_current\"}}]}}): {e}"
            )
        })?;
        if published.public_keys.is_empty() {
            return Err("the key list has no keys".to_owned());
        }
        let mut keys = HashMap::new();
        for entry in published.public_keys {
            let point =
                p256_point(&entry.key).map_err(|e| format!("key {}: {e}", entry.key_identifier))?;
            keys.insert(
                entry.key_identifier,
                PublicKey {
                    point,
                    current: entry.is_current,
                },
            );
        }
        Ok(Self { keys })
    }

    fn get(&self, id: &str) -> Option<PublicKey> {
        self.keys.get(id).cloned()
    }

    fn len(&self) -> usize {
        self.keys.len()
    }
}

/// The uncompressed point of a P-256 public key given as a PEM SPKI.
fn p256_point(pem: &str) -> Result<Vec<u8>, String> {
    let text = pem.trim();
    let inner = text
        .strip_prefix("-----BEGIN PUBLIC KEY-----")
        .and_then(|t| t.strip_suffix("-----END PUBLIC KEY-----"))
        .ok_or(
            "`key` is not a PEM public key (-----BEGIN PUBLIC KEY----- … -----END PUBLIC KEY-----)",
        )?;
    let b64: String = inner.split_whitespace().collect();
    let der = STANDARD
        .decode(b64.as_bytes())
        .map_err(|e| format!("`key` is not valid base64 inside its PEM armour: {e}"))?;
    match der.strip_prefix(&P256_SPKI_HEADER[..]) {
        Some(point) if point.len() == 65 && point[0] == 0x04 => Ok(point.to_vec()),
        _ => Err("`key` is not an ECDSA P-256 public key (GitHub signs with P-256)".to_owned()),
    }
}

/// Why a delivery's signature was refused. Each is a 401.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    MissingKeyId,
    MissingSignature,
    UnknownKey,
    NotCurrent,
    MalformedSignature,
    BadSignature,
}

impl Refusal {
    /// What the sender is told.
    pub(crate) fn message(self) -> &'static str {
        match self {
            Self::MissingKeyId => "missing Github-Public-Key-Identifier header",
            Self::MissingSignature => "missing Github-Public-Key-Signature header",
            Self::UnknownKey => "Github-Public-Key-Identifier names no key this endpoint holds",
            Self::NotCurrent => {
                "Github-Public-Key-Identifier names a key GitHub no longer marks current"
            }
            Self::MalformedSignature => "Github-Public-Key-Signature is not base64",
            Self::BadSignature => "the signature does not verify for this body and key",
        }
    }

    /// The outcome in the log.
    pub(crate) fn outcome(self) -> &'static str {
        match self {
            Self::MissingKeyId | Self::MissingSignature => "unsigned",
            Self::UnknownKey => "unknown_key",
            Self::NotCurrent => "key_not_current",
            Self::MalformedSignature | Self::BadSignature => "bad_signature",
        }
    }
}

/// The key list of `--github-keys`, read again when a request names a key it lacks.
#[derive(Debug)]
pub(crate) struct GithubKeys {
    path: PathBuf,
    current_only: bool,
    list: RwLock<KeyList>,
    last_read: Mutex<Instant>,
}

impl GithubKeys {
    /// Reads the key list at `path`; an unreadable or malformed one stops `serve` here.
    pub(crate) fn load(path: &Path, current_only: bool) -> Result<Self> {
        let text = std::fs::read(path)
            .with_context(|| format!("cannot read the GitHub key list {}", path.display()))?;
        let list = KeyList::parse(&text).map_err(|e| {
            anyhow::anyhow!(
                "{}: {e}; save https://api.github.com/meta/public_keys/secret_scanning there",
                path.display()
            )
        })?;
        Ok(Self::with_list(path.to_owned(), list, current_only))
    }

    fn with_list(path: PathBuf, list: KeyList, current_only: bool) -> Self {
        Self {
            path,
            current_only,
            list: RwLock::new(list),
            last_read: Mutex::new(Instant::now()),
        }
    }

    /// Whether a delivery carries both signature headers: checked before its body is read.
    pub(crate) fn signed(headers: &HeaderMap) -> Result<(), Refusal> {
        header(headers, KEY_ID_HEADER).ok_or(Refusal::MissingKeyId)?;
        header(headers, SIGNATURE_HEADER).ok_or(Refusal::MissingSignature)?;
        Ok(())
    }

    /// Checks the signature headers of a delivery against `body`, its raw bytes.
    pub(crate) async fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), Refusal> {
        Self::signed(headers)?;
        let key_id = header(headers, KEY_ID_HEADER).ok_or(Refusal::MissingKeyId)?;
        let signature = header(headers, SIGNATURE_HEADER).ok_or(Refusal::MissingSignature)?;
        let signature = STANDARD
            .decode(signature.trim())
            .map_err(|_| Refusal::MalformedSignature)?;
        let key = match self.key(key_id) {
            Some(key) => key,
            None => {
                self.reread().await;
                self.key(key_id).ok_or(Refusal::UnknownKey)?
            }
        };
        if self.current_only && !key.current {
            return Err(Refusal::NotCurrent);
        }
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &key.point)
            .verify(body, &signature)
            .map_err(|_| Refusal::BadSignature)?;
        if !key.current {
            tracing::info!(
                key_identifier = key_id,
                "a delivery is signed by a key GitHub no longer marks current (accepted; \
                 --github-current-key-only refuses such keys)"
            );
        }
        Ok(())
    }

    fn key(&self, id: &str) -> Option<PublicKey> {
        self.list
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(id)
    }

    /// Reads the key file again, unless it was read less than [`REREAD_EVERY`] ago. A file
    /// that cannot be read or parsed leaves the keys as they were.
    async fn reread(&self) {
        {
            let mut last = self
                .last_read
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if last.elapsed() < REREAD_EVERY {
                return;
            }
            *last = Instant::now();
        }
        let read = tokio::fs::read(&self.path).await;
        match read
            .map_err(|e| e.to_string())
            .and_then(|t| KeyList::parse(&t))
        {
            Ok(list) => {
                tracing::info!(path = %self.path.display(), keys = list.len(), "GitHub key list read again");
                *self
                    .list
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = list;
            }
            Err(e) => tracing::warn!(
                path = %self.path.display(),
                "cannot read the GitHub key list again ({e}); keeping the keys read before"
            ),
        }
    }
}

/// A header's value as text; `None` when absent, empty or not visible ASCII.
pub(crate) fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyloop_testkit::webhook::GithubSigner;

    const BODY: &[u8] =
        br#"[{"token":"FAKE-partner-0001","type":"keyloop_token","url":"","source":"content"}]"#;

    fn keys(signers: &[&GithubSigner], current_only: bool) -> GithubKeys {
        let json = GithubSigner::key_list(signers);
        GithubKeys::with_list(
            PathBuf::from("/nonexistent/keys.json"),
            KeyList::parse(json.as_bytes()).unwrap(),
            current_only,
        )
    }

    fn signed(signer: &GithubSigner, body: &[u8]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in signer.headers(body) {
            headers.insert(name, value.parse().unwrap());
        }
        headers
    }

    #[tokio::test]
    async fn a_body_signed_by_a_listed_key_verifies() {
        let signer = GithubSigner::generate("k-current", true);
        let keys = keys(&[&signer], false);
        assert_eq!(keys.verify(&signed(&signer, BODY), BODY).await, Ok(()));
    }

    #[tokio::test]
    async fn a_changed_body_or_another_keys_signature_is_refused() {
        let signer = GithubSigner::generate("k-current", true);
        let other = GithubSigner::generate("k-other", true);
        let keys = keys(&[&signer, &other], false);
        let tampered = br#"[{"token":"FAKE-partner-0002","type":"keyloop_token","url":"","source":"content"}]"#;
        assert_eq!(
            keys.verify(&signed(&signer, BODY), tampered).await,
            Err(Refusal::BadSignature)
        );
        // The other key's signature under this key's identifier.
        let mut headers = signed(&other, BODY);
        headers.insert(KEY_ID_HEADER, "k-current".parse().unwrap());
        assert_eq!(
            keys.verify(&headers, BODY).await,
            Err(Refusal::BadSignature)
        );
        headers.insert(SIGNATURE_HEADER, "not base64!".parse().unwrap());
        assert_eq!(
            keys.verify(&headers, BODY).await,
            Err(Refusal::MalformedSignature)
        );
    }

    #[tokio::test]
    async fn an_unknown_key_identifier_is_refused() {
        let listed = GithubSigner::generate("k-listed", true);
        let unlisted = GithubSigner::generate("k-unlisted", true);
        let keys = keys(&[&listed], false);
        // Read again at most every REREAD_EVERY: the first miss tries (the file is missing, the
        // keys stay), the next ones do not.
        *keys.last_read.lock().unwrap() = Instant::now() - REREAD_EVERY;
        for _ in 0..2 {
            assert_eq!(
                keys.verify(&signed(&unlisted, BODY), BODY).await,
                Err(Refusal::UnknownKey)
            );
        }
        assert!(keys.key("k-listed").is_some());
    }

    #[tokio::test]
    async fn missing_headers_are_refused_before_anything_else() {
        let signer = GithubSigner::generate("k-current", true);
        let keys = keys(&[&signer], false);
        let full = signed(&signer, BODY);
        let mut no_id = full.clone();
        no_id.remove(KEY_ID_HEADER);
        assert_eq!(keys.verify(&no_id, BODY).await, Err(Refusal::MissingKeyId));
        let mut no_sig = full.clone();
        no_sig.remove(SIGNATURE_HEADER);
        assert_eq!(
            keys.verify(&no_sig, BODY).await,
            Err(Refusal::MissingSignature)
        );
        let mut empty = full;
        empty.insert(SIGNATURE_HEADER, "".parse().unwrap());
        assert_eq!(
            keys.verify(&empty, BODY).await,
            Err(Refusal::MissingSignature)
        );
    }

    #[tokio::test]
    async fn a_non_current_key_is_accepted_unless_only_the_current_one_is() {
        let current = GithubSigner::generate("k-current", true);
        let retired = GithubSigner::generate("k-retired", false);
        let lenient = keys(&[&current, &retired], false);
        assert_eq!(lenient.verify(&signed(&retired, BODY), BODY).await, Ok(()));
        let strict = keys(&[&current, &retired], true);
        assert_eq!(
            strict.verify(&signed(&retired, BODY), BODY).await,
            Err(Refusal::NotCurrent)
        );
        assert_eq!(strict.verify(&signed(&current, BODY), BODY).await, Ok(()));
    }

    #[test]
    fn key_lists_that_are_not_githubs_are_refused_with_what_is_wrong() {
        let signer = GithubSigner::generate("k", true);
        let good = GithubSigner::key_list(&[&signer]);
        assert_eq!(KeyList::parse(good.as_bytes()).unwrap().len(), 1);
        let cases = [
            (r#"{"keys": []}"#.to_owned(), "not GitHub's secret scanning key list"),
            (r#"{"public_keys": []}"#.to_owned(), "no keys"),
            (
                good.replace("BEGIN PUBLIC KEY", "BEGIN CERTIFICATE"),
                "is not a PEM public key",
            ),
            (
                // An Ed25519 SPKI: another algorithm.
                r#"{"public_keys":[{"key_identifier":"e","key":"-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----","is_current":true}]}"#.to_owned(),
                "key e: `key` is not an ECDSA P-256 public key",
            ),
        ];
        for (text, expected) in cases {
            let err = KeyList::parse(text.as_bytes()).expect_err(expected);
            assert!(err.contains(expected), "{err}");
        }
    }

    #[tokio::test]
    async fn a_key_added_to_the_file_is_found_without_a_restart() {
        let first = GithubSigner::generate("k-first", true);
        let second = GithubSigner::generate("k-second", true);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.json");
        std::fs::write(&path, GithubSigner::key_list(&[&first])).unwrap();
        let keys = GithubKeys::load(&path, false).unwrap();
        std::fs::write(&path, GithubSigner::key_list(&[&first, &second])).unwrap();
        *keys.last_read.lock().unwrap() = Instant::now() - REREAD_EVERY;
        assert_eq!(keys.verify(&signed(&second, BODY), BODY).await, Ok(()));
    }
}
