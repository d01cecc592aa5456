//! TLS to PostgreSQL on rustls, with libpq's `sslmode` meanings: `disable` (plain), `allow` and
//! `prefer` (TLS when the server offers it, unverified — libpq's default is `prefer`),
//! `require` (TLS or no session; unverified unless `sslrootcert` is given, then as
//! `verify-ca`), `verify-ca` (TLS, the server's chain checked against `sslrootcert`, else the
//! system's roots) and `verify-full` (that, and the certificate names the host). `sslcert` and
//! `sslkey` present a client certificate. tokio-postgres knows only `disable`, `prefer` and
//! `require`, so these parameters are taken out of the DSN here ([`split`]) and the rest is
//! left to it; a mode that asks for TLS is `require` to it, which never falls back to plain
//! text.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// Plain text only.
    Disable,
    /// Plain text first in libpq; here as `prefer`.
    Allow,
    /// TLS when the server offers it, unverified.
    #[default]
    Prefer,
    /// TLS or nothing; verified as `verify-ca` when a root certificate is given.
    Require,
    /// TLS, the chain verified, any name.
    VerifyCa,
    /// TLS, the chain verified, the name the host's.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self, String> {
        Ok(match value {
            "disable" => Self::Disable,
            "allow" => Self::Allow,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode={other} is not one of disable, allow, prefer, require, verify-ca, verify-full"
                ));
            }
        })
    }

    /// What tokio-postgres is told: whether TLS is tried, and whether it is required.
    pub fn for_tokio_postgres(self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as T;
        match self {
            Self::Disable => T::Disable,
            Self::Allow | Self::Prefer => T::Prefer,
            Self::Require | Self::VerifyCa | Self::VerifyFull => T::Require,
        }
    }
}

/// The TLS parameters of a DSN.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SslSettings {
    /// `sslmode` (default `prefer`, as libpq's).
    pub mode: SslMode,
    /// `sslrootcert`: the CA certificates (PEM) the server's chain is checked against.
    pub root_cert: Option<PathBuf>,
    /// `sslcert`: this client's certificate (PEM).
    pub cert: Option<PathBuf>,
    /// `sslkey`: its key (PEM).
    pub key: Option<PathBuf>,
}

impl SslSettings {
    /// Whether the server's certificate chain is checked, and whether its name is.
    fn verification(&self) -> (bool, bool) {
        match self.mode {
            SslMode::Disable | SslMode::Allow | SslMode::Prefer => (false, false),
            SslMode::Require => (self.root_cert.is_some(), false),
            SslMode::VerifyCa => (true, false),
            SslMode::VerifyFull => (true, true),
        }
    }

    /// Whether a session may run without a verified server (for a warning at start).
    pub fn unverified(&self) -> bool {
        self.mode != SslMode::Disable && !self.verification().0
    }
}

const TLS_KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

fn assign(settings: &mut SslSettings, key: &str, value: String) -> Result<(), String> {
    match key {
        "sslmode" => settings.mode = SslMode::parse(&value)?,
        "sslrootcert" => settings.root_cert = Some(value.into()),
        "sslcert" => settings.cert = Some(value.into()),
        "sslkey" => settings.key = Some(value.into()),
        _ => unreachable!("only TLS keys are assigned"),
    }
    Ok(())
}

/// `%XX` decoded (a URL's query value).
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The DSN without its TLS parameters, and those parameters. Both DSN forms: a URL
/// (`postgres://…?sslmode=verify-full&sslrootcert=/ca.pem`) and `key=value` pairs (values
/// optionally single-quoted, `\'` and `\\` escaped). Errors never quote the DSN.
pub fn split(dsn: &str) -> Result<(String, SslSettings), String> {
    let mut settings = SslSettings::default();
    let trimmed = dsn.trim_start();
    if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
        let Some((base, query)) = dsn.split_once('?') else {
            return Ok((dsn.to_owned(), settings));
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if TLS_KEYS.contains(&key) {
                assign(&mut settings, key, percent_decoded(value))?;
            } else {
                kept.push(pair);
            }
        }
        let dsn = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return Ok((dsn, settings));
    }
    let mut kept = String::new();
    let mut rest = dsn;
    loop {
        let start = rest.len() - rest.trim_start().len();
        rest = &rest[start..];
        if rest.is_empty() {
            break;
        }
        let Some(eq) = rest.find('=') else {
            return Err("a key=value DSN has a key without `=`".to_owned());
        };
        let key = rest[..eq].trim();
        let after = rest[eq + 1..].trim_start();
        let (value, used) = if let Some(quoted) = after.strip_prefix('\'') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, next)) = chars.next() {
                            value.push(next);
                        }
                    }
                    '\'' => {
                        end = Some(i);
                        break;
                    }
                    c => value.push(c),
                }
            }
            let end = end.ok_or("a key=value DSN has an unclosed quote")?;
            (value, rest.len() - after.len() + 1 + end + 1)
        } else {
            let end = after.find(char::is_whitespace).unwrap_or(after.len());
            (after[..end].to_owned(), rest.len() - after.len() + end)
        };
        if TLS_KEYS.contains(&key) {
            assign(&mut settings, key, value)?;
        } else {
            kept.push_str(&rest[..used]);
            kept.push(' ');
        }
        rest = &rest[used..];
    }
    Ok((kept.trim_end().to_owned(), settings))
}

/// A verifier short of full: with no chain verifier it accepts any certificate (`prefer`,
/// `allow`, and `require` without a root certificate: encryption without authentication, as
/// in libpq); with one, it checks the chain but not the name (`verify-ca`). Either way the
/// handshake's signatures are checked.
#[derive(Debug)]
struct Lenient {
    chain: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use rustls::CertificateError as C;
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                C::NotValidForName | C::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn read_pem_error(what: &str, path: &std::path::Path, e: impl std::fmt::Display) -> String {
    format!("cannot read {what} {}: {e}", path.display())
}

/// The rustls client for `settings`: its roots, verifier and client certificate. Errors name
/// the parameter and file, never a value.
pub fn client_config(settings: &SslSettings) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let (chain, name) = settings.verification();
    let builder = if chain {
        let mut roots = RootCertStore::empty();
        match &settings.root_cert {
            Some(path) => {
                for cert in CertificateDer::pem_file_iter(path)
                    .map_err(|e| read_pem_error("sslrootcert", path, e))?
                {
                    let cert = cert.map_err(|e| read_pem_error("sslrootcert", path, e))?;
                    roots
                        .add(cert)
                        .map_err(|e| read_pem_error("sslrootcert", path, e))?;
                }
                if roots.is_empty() {
                    return Err(format!(
                        "sslrootcert {} holds no certificate",
                        path.display()
                    ));
                }
            }
            None => {
                for cert in rustls_native_certs::load_native_certs().certs {
                    let _ = roots.add(cert);
                }
            }
        }
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(|e| format!("TLS setup: {e}"))?;
        if name {
            builder.with_webpki_verifier(webpki)
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Lenient {
                    chain: Some(webpki),
                    provider,
                }))
        }
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Lenient {
                chain: None,
                provider,
            }))
    };
    match (&settings.cert, &settings.key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| read_pem_error("sslcert", cert, e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| read_pem_error("sslcert", cert, e))?;
            let key_der =
                PrivateKeyDer::from_pem_file(key).map_err(|e| read_pem_error("sslkey", key, e))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| format!("sslcert/sslkey: {e}"))
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => Err("sslcert and sslkey go together".to_owned()),
    }
}

/// Whether a connection failed on TLS: a certificate refused either way, or a server that
/// does not speak TLS where it was required. Retrying cannot help.
pub fn is_tls_refusal(e: &tokio_postgres::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<io::Error>()
            && io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
        {
            return true;
        }
        if s.is::<rustls::Error>() {
            return true;
        }
        source = s.source();
    }
    e.to_string().contains("server does not support TLS")
}

/// tokio-postgres's TLS on rustls.
#[derive(Clone)]
pub struct MakeRustls(Arc<ClientConfig>);

impl MakeRustls {
    /// For `settings` (see [`client_config`]).
    pub fn new(settings: &SslSettings) -> Result<Self, String> {
        Ok(Self(Arc::new(client_config(settings)?)))
    }
}

impl std::fmt::Debug for MakeRustls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MakeRustls")
    }
}

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, io::Error> {
        let name = ServerName::try_from(domain.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(RustlsConnect {
            connector: tokio_rustls::TlsConnector::from(self.0.clone()),
            name,
        })
    }
}

/// One connection's TLS handshake.
pub struct RustlsConnect {
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            self.connector
                .connect(self.name, stream)
                .await
                .map(|s| RustlsStream(Box::new(s)))
        })
    }
}

/// A TLS session to PostgreSQL.
pub struct RustlsStream<S>(Box<tokio_rustls::client::TlsStream<S>>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        // SCRAM without channel binding (what libpq does unless asked for `require`).
        ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_dsn_loses_its_tls_parameters_and_keeps_the_rest() {
        let (dsn, s) = split(
            "postgres://u:p@h:5432/db?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(dsn, "postgres://u:p@h:5432/db?application_name=x");
        assert_eq!(s.mode, SslMode::VerifyFull);
        assert_eq!(s.root_cert, Some(PathBuf::from("/etc/ca.pem")));
        let (dsn, s) = split("postgres://u:p@h/db?sslmode=require").unwrap();
        assert_eq!(
            (dsn.as_str(), s.mode),
            ("postgres://u:p@h/db", SslMode::Require)
        );
        let (dsn, s) = split("postgresql://h/db").unwrap();
        assert_eq!(
            (dsn.as_str(), s),
            ("postgresql://h/db", SslSettings::default())
        );
    }

    #[test]
    fn a_key_value_dsn_loses_its_tls_parameters_quoted_or_not() {
        let (dsn, s) = split(
            "host=h user=u password='a b\\'c' sslmode = verify-ca sslrootcert='/x y/ca.pem' dbname=d",
        )
        .unwrap();
        assert_eq!(dsn, "host=h user=u password='a b\\'c' dbname=d");
        assert_eq!(s.mode, SslMode::VerifyCa);
        assert_eq!(s.root_cert, Some(PathBuf::from("/x y/ca.pem")));
        let parsed: tokio_postgres::Config = dsn.parse().unwrap();
        assert_eq!(parsed.get_password(), Some(&b"a b'c"[..]));
        assert!(split("host=h password='open").is_err());
    }

    #[test]
    fn an_unknown_mode_is_refused_without_quoting_the_dsn() {
        let e = split("postgres://u:s3cret@h/db?sslmode=verify").unwrap_err();
        assert!(
            e.contains("sslmode=verify is not one of") && !e.contains("s3cret"),
            "{e}"
        );
    }

    #[test]
    fn each_mode_verifies_what_libpq_does_and_requires_tls_where_asked() {
        use tokio_postgres::config::SslMode as T;
        let with = |mode, root: bool| SslSettings {
            mode,
            root_cert: root.then(|| PathBuf::from("/ca.pem")),
            ..Default::default()
        };
        for (mode, root, verified, name, tokio) in [
            (SslMode::Disable, false, (false, false), false, T::Disable),
            (SslMode::Allow, false, (false, false), false, T::Prefer),
            (SslMode::Prefer, true, (false, false), false, T::Prefer),
            (SslMode::Require, false, (false, false), false, T::Require),
            (SslMode::Require, true, (true, false), false, T::Require),
            (SslMode::VerifyCa, false, (true, false), false, T::Require),
            (SslMode::VerifyFull, true, (true, true), true, T::Require),
        ] {
            let s = with(mode, root);
            assert_eq!(s.verification(), verified, "{mode:?} root={root}");
            assert_eq!(s.verification().1, name);
            assert_eq!(mode.for_tokio_postgres(), tokio);
        }
        assert!(with(SslMode::Require, false).unverified());
        assert!(!with(SslMode::VerifyCa, false).unverified());
        assert!(!with(SslMode::Disable, false).unverified());
    }
}
