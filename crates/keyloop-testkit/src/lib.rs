//! Real `nats-server` processes for tests: JetStream on a random loopback port with a temporary
//! store directory, killed and removed when dropped, so every test has its own server and tests
//! run in parallel. No test depends on a server someone else left running.
//!
//! The binary is found through `KEYLOOP_NATS_SERVER`, then `PATH`, then the project-local
//! install made by `scripts/install-nats-server`; it must be 2.10 or newer.
//!
//! [`postgres`] starts a PostgreSQL cluster with password authentication and [`moto`] an AWS
//! Secrets Manager emulator, each per test and stopped on drop. [`jwt`] is a workload identity
//! issuer (a key, its JWKS, signed tokens); [`webhook`] plays a detector against
//! `keyloop ingest serve` (GitHub's and GitGuardian's signatures, an HTTP client).

pub mod jwt;
pub mod moto;
pub mod otlp;
pub mod postgres;
pub mod receiver;
pub mod tls;
pub mod webhook;

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
                .join("../..")
                .join(server::PROJECT_LOCAL_BINARY);
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
        self.kill().await;
        self.resume().await;
    }

    /// Kills the server (SIGKILL); [`TestServer::resume`] starts it again.
    pub async fn kill(&mut self) {
        self.process.kill().await;
    }

    /// Starts a killed server again on the same port and store directory.
    pub async fn resume(&mut self) {
        let mut options = self.options.clone();
        options.port = Some(self.process.port());
        self.process = ServerProcess::start_with_env(&options, &self.env)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

/// A JetStream cluster of real nats-server processes on loopback, each with its own client,
/// route and store directory; nodes can be killed, restarted and paused.
#[derive(Debug)]
pub struct TestCluster {
    nodes: Vec<Option<ServerProcess>>,
    options: Vec<ServerOptions>,
    _dir: TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl TestCluster {
    /// Starts `size` nodes routed to each other and waits until JetStream has a meta leader.
    pub async fn start(size: usize) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("keyloop-cluster-")
            .tempdir()
            .expect("temp dir");
        let binary = nats_server_binary().await;
        let cluster_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let client_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let mut options = Vec::new();
        for i in 0..size {
            let routes: Vec<String> = cluster_ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, p)| format!("nats://127.0.0.1:{p}"))
                .collect();
            options.push(ServerOptions {
                binary: binary.clone(),
                store_dir: dir.path().join(format!("n{i}")),
                port: Some(client_ports[i]),
                extra_args: vec![
                    "--server_name".into(),
                    format!("n{i}"),
                    "--cluster_name".into(),
                    "keyloop-test".into(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{}", cluster_ports[i]),
                    "--routes".into(),
                    routes.join(","),
                ],
            });
        }
        let mut nodes = Vec::new();
        for o in &options {
            nodes.push(Some(
                ServerProcess::start(o)
                    .await
                    .unwrap_or_else(|e| panic!("{e}")),
            ));
        }
        let cluster = Self {
            nodes,
            options,
            _dir: dir,
        };
        cluster.wait_for_jetstream().await;
        cluster
    }

    /// Every node's client URL, comma-separated (what `--nats` takes for a cluster).
    pub fn urls(&self) -> String {
        self.options
            .iter()
            .map(|o| format!("nats://127.0.0.1:{}", o.port.expect("fixed port")))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node named `n<i>` (as servers report themselves in stream cluster info).
    pub fn index_of(name: &str) -> Option<usize> {
        name.strip_prefix('n')?.parse().ok()
    }

    /// Polls until the JetStream meta leader answers account info: cluster formation has no
    /// event a client can await.
    async fn wait_for_jetstream(&self) {
        let client = async_nats::connect(self.urls().split(',').next().unwrap())
            .await
            .expect("connect to node 0");
        let js = async_nats::jetstream::new(client);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        while js.query_account().await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "JetStream cluster did not form within 30 s"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// A connected bus with keyloop's layout replicated on every node, after `init`.
    pub async fn bus(&self) -> Bus {
        let bus = Bus::connect(
            &self.urls(),
            Topology::default().with_replicas(self.options.len()),
        )
        .await
        .unwrap_or_else(|e| panic!("connect to test cluster: {e}"));
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            match bus.topology.init(&bus.js).await {
                Ok(_) => return bus,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    eprintln!("cluster not ready for init yet: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
                Err(e) => panic!("init test cluster: {e}"),
            }
        }
    }

    /// SIGKILL node `i`.
    pub async fn kill(&mut self, i: usize) {
        if let Some(mut node) = self.nodes[i].take() {
            node.kill().await;
        }
    }

    /// Starts node `i` again on its ports and store directory.
    pub async fn restart(&mut self, i: usize) {
        self.kill(i).await;
        self.nodes[i] = Some(
            ServerProcess::start(&self.options[i])
                .await
                .unwrap_or_else(|e| panic!("{e}")),
        );
    }

    /// SIGSTOP (`pause = true`) or SIGCONT node `i`.
    pub fn pause(&self, i: usize, pause: bool) {
        if let Some(pid) = self.nodes[i].as_ref().and_then(|n| n.pid()) {
            let signal = if pause { "-STOP" } else { "-CONT" };
            let _ = std::process::Command::new("kill")
                .arg(signal)
                .arg(pid.to_string())
                .status();
        }
    }
}
