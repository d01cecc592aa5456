//! Certificates made for a test: a CA, a server certificate for `localhost` and `127.0.0.1`
//! signed by it, a client certificate signed by it, and an unrelated CA (what a wrong
//! `--nats-ca` or `sslrootcert` is), written as PEM files into a temporary directory.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

/// The PEM files of one test's certificates.
pub struct TestCerts {
    dir: tempfile::TempDir,
}

fn ca(name: &str) -> (CertificateParams, KeyPair, String) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("CA key");
    let pem = params.self_signed(&key).expect("self-signed CA").pem();
    (params, key, pem)
}

fn leaf(
    issuer: &Issuer<'_, KeyPair>,
    names: &[&str],
    usage: &[ExtendedKeyUsagePurpose],
) -> (String, String) {
    let mut params =
        CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
            .expect("leaf params");
    params.distinguished_name.push(
        DnType::CommonName,
        names.first().copied().unwrap_or("client"),
    );
    params.extended_key_usages = usage.to_vec();
    let key = KeyPair::generate().expect("leaf key");
    let cert = params.signed_by(&key, issuer).expect("signed leaf");
    (cert.pem(), key.serialize_pem())
}

impl TestCerts {
    /// Makes and writes them all.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let (params, key, ca_pem) = ca("keyloop test CA");
        let issuer = Issuer::new(params, key);
        let (server, server_key) = leaf(
            &issuer,
            &["localhost", "127.0.0.1"],
            // Both: a cluster node presents it on the routes it dials too.
            &[
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        );
        let (client, client_key) = leaf(
            &issuer,
            &["keyloop-client"],
            &[ExtendedKeyUsagePurpose::ClientAuth],
        );
        let (_, _, other_ca) = ca("some other CA");
        for (name, text) in [
            ("ca.pem", ca_pem),
            ("server.pem", server),
            ("server-key.pem", server_key),
            ("client.pem", client),
            ("client-key.pem", client_key),
            ("other-ca.pem", other_ca),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write a PEM file");
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                // PostgreSQL refuses a key file others may read.
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .expect("chmod");
            }
        }
        Self { dir }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    /// The CA that signed the server's and the client's certificates.
    pub fn ca(&self) -> PathBuf {
        self.file("ca.pem")
    }
    /// A CA that signed neither.
    pub fn other_ca(&self) -> PathBuf {
        self.file("other-ca.pem")
    }
    /// The server's certificate (`localhost`, `127.0.0.1`; also a route client's).
    pub fn server_cert(&self) -> PathBuf {
        self.file("server.pem")
    }
    /// Its key.
    pub fn server_key(&self) -> PathBuf {
        self.file("server-key.pem")
    }
    /// The client's certificate.
    pub fn client_cert(&self) -> PathBuf {
        self.file("client.pem")
    }
    /// Its key.
    pub fn client_key(&self) -> PathBuf {
        self.file("client-key.pem")
    }
    /// The directory holding them.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Default for TestCerts {
    fn default() -> Self {
        Self::new()
    }
}
