//! What tests and the bench need to play a detector against `keyloop ingest serve`: a GitHub
//! secret scanning signer with its own P-256 key (and the key list GitHub would publish for it),
//! GitGuardian's signature, and a small HTTP/1.1 client (hyper's, already in the tree for the
//! AWS SDK) that keeps its connection open between requests.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
use std::io;
use std::net::SocketAddr;

/// The DER header of a P-256 SubjectPublicKeyInfo, before the 65-byte point.
const P256_SPKI_HEADER: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// Signs bodies as GitHub's secret scanning does: ECDSA P-256 SHA-256, DER, base64.
pub struct GithubSigner {
    id: String,
    current: bool,
    key: EcdsaKeyPair,
    rng: SystemRandom,
}

impl GithubSigner {
    /// A fresh key named `id`; `current` is its `is_current` in the key list.
    pub fn generate(id: &str, current: bool) -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            .expect("generate a P-256 key");
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .expect("read the P-256 key back");
        Self {
            id: id.to_owned(),
            current,
            key,
            rng,
        }
    }

    /// The key's identifier.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The public key as GitHub lists it: a PEM SubjectPublicKeyInfo.
    pub fn public_key_pem(&self) -> String {
        let mut der = P256_SPKI_HEADER.to_vec();
        der.extend_from_slice(self.key.public_key().as_ref());
        let b64 = STANDARD.encode(der);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
            .collect();
        format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            lines.join("\n")
        )
    }

    /// The key list GitHub would publish with these keys
    /// (`https://api.github.com/meta/public_keys/secret_scanning`).
    pub fn key_list(signers: &[&GithubSigner]) -> String {
        let keys: Vec<_> = signers
            .iter()
            .map(|s| {
                serde_json::json!({
                    "key_identifier": s.id,
                    "key": s.public_key_pem(),
                    "is_current": s.current,
                })
            })
            .collect();
        serde_json::json!({ "public_keys": keys }).to_string()
    }

    /// The base64 DER signature of `body`.
    pub fn sign(&self, body: &[u8]) -> String {
        let signature = self.key.sign(&self.rng, body).expect("sign");
        STANDARD.encode(signature.as_ref())
    }

    /// The two headers GitHub sends with `body`.
    pub fn headers(&self, body: &[u8]) -> Vec<(&'static str, String)> {
        vec![
            ("Github-Public-Key-Identifier", self.id.clone()),
            ("Github-Public-Key-Signature", self.sign(body)),
        ]
    }
}

/// The headers GitGuardian sends with `body`: `Timestamp` and `Gitguardian-Signature:
/// sha256=<hex HMAC-SHA256 of the body, keyed by the timestamp followed by the token>`.
pub fn gitguardian_headers(
    token: &str,
    timestamp: &str,
    body: &[u8],
) -> Vec<(&'static str, String)> {
    let key = ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        format!("{timestamp}{token}").as_bytes(),
    );
    let tag = ring::hmac::sign(&key, body);
    vec![
        ("Timestamp", timestamp.to_owned()),
        (
            "Gitguardian-Signature",
            format!("sha256={}", hex_lower(tag.as_ref())),
        ),
    ]
}

fn hex_lower(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// An answer of the server.
#[derive(Debug)]
pub struct HttpResponse {
    /// Its status code.
    pub status: u16,
    /// Its headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// Its body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The body as JSON; panics when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "the answer ({}) is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 connection, kept open between requests.
pub struct HttpClient {
    addr: SocketAddr,
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl HttpClient {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> io::Result<Self> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(io::Error::other)?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Self { addr, sender })
    }

    /// Sends `method path` with `headers` and `body`, and reads the whole answer.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: Vec<u8>,
    ) -> io::Result<HttpResponse> {
        self.sender.ready().await.map_err(io::Error::other)?;
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string())
            .header("content-type", "application/json");
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(io::Error::other)?;
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(io::Error::other)?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    v.to_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(io::Error::other)?
            .to_bytes()
            .to_vec();
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    }
}

/// `POST path` on a new connection to `addr`; panics when the server does not answer.
pub async fn post(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> HttpResponse {
    let mut client = HttpClient::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    client
        .send("POST", path, headers, body)
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gitguardian_signature_matches_its_documented_example() {
        // GitGuardian's docs: timestamp "0", token "foo", payload "bar".
        let headers = gitguardian_headers("foo", "0", b"bar");
        assert_eq!(
            headers[1].1,
            "sha256=172fe3d694b734aa53dc892fd3b8d62163fc240064de570ba006900bb54a0fc2"
        );
    }
}
