//! A real `moto_server` (PyPI `moto[server]`, pinned in `scripts/moto.requirements.txt`) per
//! test, on a random loopback port, killed on drop: an AWS Secrets Manager emulator that keeps
//! its state in memory, so every test starts from an empty account.
//!
//! The binary is found through `KEYLOOP_MOTO_SERVER`, else the project-local install made by
//! `scripts/install-moto` (`.tools/moto/bin/moto_server`). moto's `RotateSecret` without a
//! Lambda mislabels versions; keyloop never calls it.

use keyloop_backends::aws_sm::{AwsSmConfig, StaticCredentials, sdk_client};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tempfile::TempDir;
use tokio::process::{Child, Command};

/// The region every test uses.
pub const REGION: &str = "us-east-1";
const ACCESS_KEY: &str = "testing";
const SECRET_KEY: &str = "testing-secret-key";

/// A running emulator; killed on drop.
#[derive(Debug)]
pub struct TestMoto {
    _child: Child,
    port: u16,
    dir: TempDir,
}

/// The moto_server binary (see the module docs). Panics with what to do when there is none.
pub fn moto_server_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("KEYLOOP_MOTO_SERVER") {
        return PathBuf::from(p);
    }
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.tools/moto/bin/moto_server");
    assert!(
        local.is_file(),
        "tests need moto_server: run scripts/install-moto (a hash-pinned moto[server] in .tools/moto), or set KEYLOOP_MOTO_SERVER"
    );
    local
}

impl TestMoto {
    /// Starts the emulator and waits until it answers a Secrets Manager call.
    pub async fn start() -> Self {
        let binary = moto_server_binary();
        let mut dir = tempfile::Builder::new()
            .prefix("keyloop-moto-")
            .tempdir()
            .expect("create a temporary directory");
        let mut last = String::new();
        // A port picked here may be taken before moto binds it: try a few.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("find a free loopback port");
            let log = dir.path().join("moto.log");
            let child = Command::new(&binary)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&log).unwrap())
                .stderr(std::fs::File::create(dir.path().join("moto.err")).unwrap())
                .kill_on_drop(true)
                .spawn()
                .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
            let mut moto = Self {
                _child: child,
                port,
                dir,
            };
            match moto.wait_ready().await {
                Ok(()) => return moto,
                Err(e) => {
                    last = e;
                    let _ = moto._child.kill().await;
                    dir = moto.dir;
                }
            }
        }
        panic!("moto_server did not start: {last}");
    }

    /// Polls `ListSecrets` until it answers (process start-up has no event to await).
    async fn wait_ready(&mut self) -> Result<(), String> {
        let client = self.client().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self._child.try_wait() {
                let err =
                    std::fs::read_to_string(self.dir.path().join("moto.err")).unwrap_or_default();
                return Err(format!("exited with {status}: {err}"));
            }
            if client.list_secrets().send().await.is_ok() {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err("no answer within 30 s".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A store config for this emulator (explicit region, endpoint and keys).
    pub fn config(&self) -> AwsSmConfig {
        AwsSmConfig {
            region: Some(REGION.into()),
            endpoint_url: Some(self.endpoint()),
            credentials: Some(StaticCredentials {
                access_key_id: ACCESS_KEY.into(),
                secret_access_key: SECRET_KEY.into(),
            }),
            ..AwsSmConfig::default()
        }
    }

    /// The standard AWS environment for a child process (`keyloop`) that should use this
    /// emulator and nothing from the machine's own AWS configuration.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_REGION", REGION.into()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
            ("AWS_CONFIG_FILE", "/nonexistent/keyloop-test/config".into()),
            (
                "AWS_SHARED_CREDENTIALS_FILE",
                "/nonexistent/keyloop-test/credentials".into(),
            ),
        ]
    }

    /// An SDK client for checks from the test.
    pub async fn client(&self) -> aws_sdk_secretsmanager::Client {
        sdk_client(&self.config())
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }
}
