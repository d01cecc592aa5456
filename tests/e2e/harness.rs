//! What every end-to-end test needs: its own nats-server with keyloop's layout, a master key
//! file, the `keyloop` binary with the right environment, worker processes whose logs are kept,
//! and readers for streams and lifecycle events.

use futures::StreamExt;
use keyloop_core::LifecycleEvent;
use keyloop_nats::Bus;
use keyloop_testkit::{TestCluster, TestServer};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tempfile::TempDir;
use tokio::process::{Child, Command};
use tokio::sync::Notify;

pub(crate) const KEYLOOP: &str = env!("CARGO_BIN_EXE_keyloop");

/// A server (or cluster), its layout, a master key file and a scratch directory.
pub(crate) struct Env {
    pub(crate) server: Option<TestServer>,
    pub(crate) cluster: Option<TestCluster>,
    pub(crate) url: String,
    pub(crate) bus: Bus,
    pub(crate) dir: TempDir,
    nats_server: PathBuf,
    /// Variables every `keyloop` process of this env gets (AWS emulator, PostgreSQL DSN).
    extra_env: Mutex<Vec<(String, String)>>,
    /// The NATS user of `keyloop()` commands (none: anonymous).
    user: Option<&'static str>,
    /// The control plane the CLI talks to, started at the first command that needs it and
    /// restarted when the env's variables change; with the variables it was started with.
    api: tokio::sync::Mutex<Option<(Worker, Vars)>>,
    /// On a secured server, what the test reads beyond ops's rights: the inventory as the
    /// control plane's user sees it, and stream states as admin sees them.
    secured: Option<Secured>,
}

/// The test's own connections to a secured server, besides ops's.
pub(crate) struct Secured {
    /// As `api`: reads the inventory and every bucket.
    pub(crate) api: Bus,
    /// As `admin`: the state of every stream.
    pub(crate) admin: Bus,
}

/// Environment variables, in the order they were set.
type Vars = Vec<(String, String)>;

/// Variables only the workers get: the CLI holds no master key and no backend credentials.
const SERVER_SIDE: [&str; 3] = ["KEYLOOP_POSTGRES_DSN", "KEYLOOP_MASTER_KEY", "AWS_"];

fn server_side(key: &str) -> bool {
    SERVER_SIDE.iter().any(|p| key.starts_with(p))
}

/// Whether `keyloop ARGS` asks the control plane (and so needs an api worker to answer).
fn asks_the_api(args: &[&str]) -> bool {
    matches!(args.first(), Some(&("credential" | "rotate" | "revoke")))
        && !args.contains(&"--local")
}

/// The NATS users of `deploy/nats/users.conf`.
pub(crate) const NATS_USERS: [&str; 14] = [
    "detector",
    "ingest",
    "orchestrator-a",
    "orchestrator-b",
    "leak-responder",
    "revoker",
    "rotator",
    "sweeper",
    "scheduler",
    "jit-issuer",
    "api",
    "notifier",
    "ops",
    "admin",
];

/// The password a secured test server gives `user`.
pub(crate) fn nats_password(user: &str) -> String {
    format!("test-{user}-password")
}

/// `deploy/nats/` of the checkout.
pub(crate) fn deploy_nats_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/nats")
}

/// The certificates of this test process's secured servers (made once per process).
pub(crate) fn test_certs() -> &'static keyloop_testkit::tls::TestCerts {
    static CERTS: std::sync::OnceLock<keyloop_testkit::tls::TestCerts> = std::sync::OnceLock::new();
    CERTS.get_or_init(keyloop_testkit::tls::TestCerts::new)
}

/// The environment a server started from `deploy/nats/` needs: each user's password, and
/// its TLS certificate, key and CA.
pub(crate) fn nats_password_env() -> Vec<(String, String)> {
    let certs = test_certs();
    NATS_USERS
        .iter()
        .map(|u| {
            (
                format!(
                    "KEYLOOP_NATS_{}_PASSWORD",
                    u.to_uppercase().replace('-', "_")
                ),
                nats_password(u),
            )
        })
        .chain([
            (
                "KEYLOOP_NATS_TLS_CERT".to_owned(),
                certs.server_cert().display().to_string(),
            ),
            (
                "KEYLOOP_NATS_TLS_KEY".to_owned(),
                certs.server_key().display().to_string(),
            ),
            (
                "KEYLOOP_NATS_TLS_CA".to_owned(),
                certs.ca().display().to_string(),
            ),
        ])
        .collect()
}

/// `nats://…` of a server started from `deploy/nats/` as its clients are given it: `tls://…`.
pub(crate) fn tls_url(url: &str) -> String {
    url.replacen("nats://", "tls://", 1)
}

/// A connection as `user` of a secured server, with its own inbox prefix.
pub(crate) async fn connect_as(url: &str, user: &str) -> Bus {
    let connect = keyloop_nats::bus::Connect {
        url: url.to_owned(),
        user: Some(user.to_owned()),
        password: Some(keyloop_core::Secret::new(nats_password(user))),
        inbox_prefix: None,
        tls: keyloop_nats::bus::Tls {
            ca: Some(test_certs().ca()),
            ..Default::default()
        },
    };
    Bus::connect_with(&connect, keyloop_nats::Topology::default())
        .await
        .unwrap_or_else(|e| panic!("connect as {user}: {e}"))
}

impl Env {
    pub(crate) async fn start() -> Self {
        let server = TestServer::start().await;
        let bus = server.bus().await;
        let url = server.url().to_owned();
        Self::around(Some(server), None, url, bus, None).await
    }

    /// An env on a 3-node JetStream cluster with R3 streams and buckets.
    pub(crate) async fn start_cluster() -> Self {
        let cluster = TestCluster::start(3).await;
        let bus = cluster.bus().await;
        let url = cluster.urls();
        Self::around(None, Some(cluster), url, bus, None).await
    }

    /// A server started from the checked-in `deploy/nats/single.conf` (users and permissions
    /// included), with keyloop's layout created by `ops`. `keyloop()` commands run as `ops`;
    /// `bus` is connected as `ops` too.
    pub(crate) async fn start_secured() -> Self {
        let env = nats_password_env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let server =
            TestServer::start_with_config(&deploy_nats_dir().join("single.conf"), &env, &[]).await;
        let admin = connect_as(server.url(), "admin").await;
        admin
            .topology
            .init(&admin.js)
            .await
            .unwrap_or_else(|e| panic!("init as admin: {e}"));
        let bus = connect_as(server.url(), "ops").await;
        // Every client of a deploy config speaks TLS, trusting the test's CA.
        let url = tls_url(server.url());
        let secured = Secured {
            api: connect_as(&url, "api").await,
            admin,
        };
        let mut env = Self::around(Some(server), None, url, bus, Some("ops")).await;
        env.secured = Some(secured);
        env.set_env("KEYLOOP_NATS_CA", test_certs().ca().display().to_string());
        env
    }

    async fn around(
        server: Option<TestServer>,
        cluster: Option<TestCluster>,
        url: String,
        bus: Bus,
        user: Option<&'static str>,
    ) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("keyloop-e2e-")
            .tempdir()
            .unwrap();
        let key = dir.path().join("master.key");
        std::fs::write(
            &key,
            keyloop_backends::MasterKey::generate().to_hex().as_bytes(),
        )
        .unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let nats_server = keyloop_testkit::nats_server_binary().await;
        Self {
            server,
            cluster,
            url,
            bus,
            dir,
            nats_server,
            extra_env: Mutex::default(),
            user,
            api: tokio::sync::Mutex::default(),
            secured: None,
        }
    }

    /// Gives every `keyloop` process started from now on the variable `key`.
    pub(crate) fn set_env(&self, key: &str, value: impl Into<String>) {
        self.extra_env
            .lock()
            .unwrap()
            .push((key.to_owned(), value.into()));
    }

    /// The master key of this env, for in-process worker contexts.
    pub(crate) fn master_key(&self) -> keyloop_backends::MasterKey {
        keyloop_backends::MasterKey::from_hex(
            &std::fs::read_to_string(self.dir.path().join("master.key")).unwrap(),
        )
        .unwrap()
    }

    /// `keyloop` as a client (the CLI): this env's server and data directory, as this env's
    /// user; no master key, no backend credentials.
    pub(crate) fn keyloop(&self) -> Command {
        match self.user {
            Some(user) => self.keyloop_as(user),
            None => self.process(None, false),
        }
    }

    /// `keyloop` as `user` of a secured server, as a client.
    pub(crate) fn keyloop_as(&self, user: &str) -> Command {
        self.process(Some(user), false)
    }

    /// `keyloop` with the master key and every variable of this env (backend credentials
    /// included), as a worker or a `--local` command runs.
    pub(crate) fn keyloop_with_keys(&self) -> Command {
        self.process(self.user, true)
    }

    fn process(&self, user: Option<&str>, keys: bool) -> Command {
        let mut cmd = Command::new(KEYLOOP);
        cmd.env("KEYLOOP_NATS_URL", &self.url)
            .env_remove("KEYLOOP_NATS_USER")
            .env_remove("KEYLOOP_NATS_PASSWORD")
            .env_remove("KEYLOOP_NATS_INBOX_PREFIX")
            .env_remove("KEYLOOP_MASTER_KEY_FILE")
            .env("KEYLOOP_DATA_DIR", self.dir.path().join("data"))
            .env("KEYLOOP_NATS_SERVER", &self.nats_server)
            .env_remove("KEYLOOP_MASTER_KEY")
            .env_remove("KEYLOOP_POSTGRES_DSN")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some(user) = user {
            cmd.env("KEYLOOP_NATS_USER", user)
                .env("KEYLOOP_NATS_PASSWORD", nats_password(user));
        }
        if keys {
            cmd.env(
                "KEYLOOP_MASTER_KEY_FILE",
                self.dir.path().join("master.key"),
            );
        }
        for (k, v) in self.extra_env.lock().unwrap().iter() {
            if keys || !server_side(k) {
                cmd.env(k, v);
            }
        }
        cmd
    }

    /// Makes sure the control plane answers: an api worker with this env's keys and variables
    /// (started again when the variables changed since).
    pub(crate) async fn api(&self) {
        let wanted = self.extra_env.lock().unwrap().clone();
        let mut slot = self.api.lock().await;
        if let Some((worker, env)) = slot.as_mut()
            && *env == wanted
            && worker.child.try_wait().ok().flatten().is_none()
        {
            return;
        }
        if let Some((old, _)) = slot.take() {
            drop(old);
        }
        let serving_as = self.user.map(|_| "api");
        let mut cmd = self.process(serving_as, true);
        if !wanted.iter().any(|(k, _)| k == "KEYLOOP_API_ADMINS") {
            cmd.env("KEYLOOP_API_ADMINS", "ops,anonymous");
        }
        let name = format!("api-{}", uuid::Uuid::now_v7().simple());
        let worker = self.spawn_worker(cmd, &name, &["api"]);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !worker.log_text().contains("api serving") {
            assert!(
                std::time::Instant::now() < deadline,
                "the api worker did not start serving:\n{}",
                worker.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        *slot = Some((worker, wanted));
    }

    /// Runs `keyloop ARGS` to the end (starting the control plane first when it asks it).
    pub(crate) async fn run(&self, args: &[&str]) -> Output {
        if asks_the_api(args) {
            self.api().await;
        }
        // What runs keyloop's own code with the values (workers, `up`, the demo, `--local`) gets
        // the keys; the CLI as a client does not.
        let with_keys =
            args.contains(&"--local") || matches!(args.first(), Some(&("up" | "demo" | "worker")));
        // On a secured server the layout is admin's, everything else the env's user's.
        let mut cmd = if with_keys {
            self.keyloop_with_keys()
        } else if args.first() == Some(&"init") && self.user.is_some() {
            self.keyloop_as("admin")
        } else {
            self.keyloop()
        };
        cmd.args(args).output().await.expect("run keyloop")
    }

    /// Runs `keyloop ARGS` and returns stdout, failing the test with stderr if it fails.
    pub(crate) async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert!(
            out.status.success(),
            "keyloop {args:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Starts `keyloop worker ROLES` at debug log level; its stderr goes to a file.
    pub(crate) fn worker(&self, name: &str, roles: &[&str]) -> Worker {
        self.spawn_worker(self.keyloop_with_keys(), name, roles)
    }

    /// Starts `keyloop worker ROLES` as NATS user `user`, like [`Env::worker`].
    pub(crate) fn worker_as(&self, user: &str, name: &str, roles: &[&str]) -> Worker {
        self.spawn_worker(self.process(Some(user), true), name, roles)
    }

    fn spawn_worker(&self, mut keyloop: Command, name: &str, roles: &[&str]) -> Worker {
        let log = self.dir.path().join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = keyloop
            .arg("worker")
            .args(roles)
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start keyloop worker");
        Worker { child, log }
    }

    /// `keyloop token verify` with `token` on stdin: true when valid (exit 0), false when
    /// invalid (exit 2); anything else fails the test.
    pub(crate) async fn verify(&self, token: &str) -> bool {
        let mut cmd = self.keyloop();
        cmd.args(["token", "verify"]);
        valid_or_not(&with_stdin(cmd, token).await, "token verify")
    }

    /// `keyloop credential verify ID` with `value` on stdin: true when it is a live version
    /// (exit 0), false when not (exit 2); anything else fails the test.
    pub(crate) async fn verify_value(&self, id: &str, value: &str) -> bool {
        self.api().await;
        let mut cmd = self.keyloop();
        cmd.args(["credential", "verify", id]);
        valid_or_not(&with_stdin(cmd, value).await, "credential verify")
    }

    /// A file in the scratch directory.
    pub(crate) fn file(&self, name: &str, contents: &[u8]) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    /// Registers a credential and returns its current value (through the CLI).
    pub(crate) async fn register_and_reveal(&self, id: &str) -> String {
        self.ok(&["credential", "register", id, "--store", "local"])
            .await;
        self.ok(&["credential", "reveal", id])
            .await
            .trim_end()
            .to_owned()
    }

    /// The connection that may read the inventory: this env's, or on a secured server the
    /// control plane's user's (ops reads no bucket).
    pub(crate) fn reader(&self) -> &Bus {
        self.secured.as_ref().map_or(&self.bus, |s| &s.api)
    }

    /// The connection that may read every stream's state: this env's, or on a secured server
    /// admin's.
    pub(crate) fn layout(&self) -> &Bus {
        self.secured.as_ref().map_or(&self.bus, |s| &s.admin)
    }

    pub(crate) async fn credential(&self, id: &str) -> keyloop_core::Credential {
        let id = id.parse().unwrap();
        self.reader()
            .inventory()
            .await
            .unwrap()
            .require(&id)
            .await
            .unwrap()
            .0
    }
}

/// A worker process; killed on drop. Its log stays in the env's directory.
pub(crate) struct Worker {
    pub(crate) child: Child,
    pub(crate) log: PathBuf,
}

impl Worker {
    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then wait for a clean exit.
    pub(crate) async fn stop(mut self) -> std::process::ExitStatus {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
        }
        tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("worker stops within 20 s of SIGTERM")
            .unwrap()
    }
}

/// Every lifecycle event published from the moment of subscription (core NATS, so it sees
/// duplicates the stream drops too: use it to wait, and the stream to count).
#[derive(Clone)]
pub(crate) struct Events {
    seen: Arc<Mutex<Vec<LifecycleEvent>>>,
    changed: Arc<Notify>,
}

impl Events {
    pub(crate) async fn subscribe(bus: &Bus) -> Self {
        let mut sub = bus
            .client
            .subscribe(bus.topology.lifecycle_all())
            .await
            .unwrap();
        bus.client.flush().await.unwrap();
        let events = Self {
            seen: Arc::default(),
            changed: Arc::default(),
        };
        let e = events.clone();
        tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                if let Ok(ev) = serde_json::from_slice(&msg.payload) {
                    e.seen.lock().unwrap().push(ev);
                    e.changed.notify_waiters();
                }
            }
        });
        events
    }

    /// Waits until `done` holds over the events seen so far; panics with them after `timeout`.
    pub(crate) async fn wait(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[LifecycleEvent]) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            if done(&self.seen.lock().unwrap()) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let seen = self.seen.lock().unwrap();
                let kinds: Vec<_> = seen
                    .iter()
                    .map(|e| format!("{} {:?}", e.data.kind.name(), e.subject))
                    .collect();
                panic!("timed out after {timeout:?} waiting for {what}; saw {kinds:?}");
            }
        }
    }
}

/// A message as stored in a stream.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub(crate) subject: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) payload: Vec<u8>,
}

/// Every message currently in `stream`, in order.
pub(crate) async fn stream_messages(bus: &Bus, stream: &str) -> Vec<Stored> {
    use async_nats::jetstream::consumer::pull::OrderedConfig;
    let handle = bus
        .js
        .get_stream(stream)
        .await
        .unwrap_or_else(|e| panic!("stream {stream}: {e}"));
    let mut consumer = handle
        .create_consumer(OrderedConfig::default())
        .await
        .unwrap();
    let pending = consumer.info().await.unwrap().num_pending;
    let mut out = Vec::new();
    if pending == 0 {
        return out;
    }
    let mut messages = consumer.messages().await.unwrap();
    while let Some(msg) = messages.next().await {
        let msg = msg.unwrap();
        let left = msg.info().unwrap().pending;
        let headers = msg
            .headers
            .iter()
            .flat_map(|h| h.iter())
            .flat_map(|(k, vs)| vs.iter().map(move |v| (k.to_string(), v.to_string())))
            .collect();
        out.push(Stored {
            subject: msg.subject.to_string(),
            headers,
            payload: msg.payload.to_vec(),
        });
        if left == 0 {
            break;
        }
    }
    out
}

/// The lifecycle events stored in the stream, in order.
pub(crate) async fn lifecycle(bus: &Bus) -> Vec<LifecycleEvent> {
    stream_messages(bus, &bus.topology.lifecycle_stream())
        .await
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).expect("lifecycle events decode"))
        .collect()
}

/// A gitleaks report with one finding of `secret`.
pub(crate) fn gitleaks_report(secret: &str, file: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!([{
        "Description": "Generic API Key", "StartLine": 3, "EndLine": 3, "StartColumn": 1, "EndColumn": 70,
        "Match": "token = [redacted in test]", "Secret": secret, "File": file, "SymlinkFile": "",
        "Commit": "0123456789abcdef0123456789abcdef01234567", "Entropy": 4.2, "Author": "a", "Email": "a@example.com",
        "Date": "2026-11-29T00:00:00Z", "Message": "m", "Tags": [], "RuleID": "generic-api-key",
        "Fingerprint": format!("0123456789abcdef0123456789abcdef01234567:{file}:generic-api-key:3")
    }]))
    .unwrap()
}

/// `GET path` on a new connection to the loopback `port`: `None` while nothing accepts there
/// (a process still starting, or gone).
pub(crate) async fn http_get(
    port: u16,
    path: &str,
) -> Option<keyloop_testkit::webhook::HttpResponse> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut client = keyloop_testkit::webhook::HttpClient::connect(addr)
        .await
        .ok()?;
    client.send("GET", path, &[], Vec::new()).await.ok()
}

/// A loopback port nothing listens on (at the time of the call).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Every message published on the server from the moment of the call (subscription on `>`):
/// streams, commands, KV writes, API requests and replies alike.
pub(crate) struct Wiretap {
    bus: Bus,
    seen: Arc<Mutex<Vec<Stored>>>,
    changed: Arc<Notify>,
}

impl Wiretap {
    pub(crate) async fn start(bus: &Bus) -> Self {
        let mut sub = bus.client.subscribe(">").await.unwrap();
        bus.client.flush().await.unwrap();
        let seen: Arc<Mutex<Vec<Stored>>> = Arc::default();
        let changed: Arc<Notify> = Arc::default();
        let (s, c) = (seen.clone(), changed.clone());
        tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let headers = msg
                    .headers
                    .iter()
                    .flat_map(|h| h.iter())
                    .flat_map(|(k, vs)| vs.iter().map(move |v| (k.to_string(), v.to_string())))
                    .collect();
                s.lock().unwrap().push(Stored {
                    subject: msg.subject.to_string(),
                    headers,
                    payload: msg.payload.to_vec(),
                });
                c.notify_waiters();
            }
        });
        Self {
            bus: bus.clone(),
            seen,
            changed,
        }
    }

    /// Everything seen up to now: a sentinel is published and awaited, so every message the
    /// server routed before this call is included.
    pub(crate) async fn messages(&self) -> Vec<Stored> {
        let sentinel = format!("keyloop-test.sentinel.{}", uuid::Uuid::now_v7().simple());
        let notified = self.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        self.bus
            .client
            .publish(sentinel.clone(), "".into())
            .await
            .unwrap();
        self.bus.client.flush().await.unwrap();
        loop {
            if self
                .seen
                .lock()
                .unwrap()
                .iter()
                .any(|m| m.subject == sentinel)
            {
                return self.seen.lock().unwrap().clone();
            }
            tokio::time::timeout(Duration::from_secs(5), notified.as_mut())
                .await
                .expect("the wiretap sees the sentinel");
            notified.set(self.changed.notified());
            notified.as_mut().enable();
        }
    }
}

/// Follows the lifecycle stream from its start with an ordered consumer: it sees what is stored
/// (each event once), and it survives server restarts and leader changes, unlike a core
/// subscription.
#[derive(Clone)]
pub(crate) struct Follower {
    seen: Arc<Mutex<Vec<LifecycleEvent>>>,
    changed: Arc<Notify>,
}

impl Follower {
    pub(crate) async fn lifecycle(bus: &Bus) -> Self {
        use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
        let follower = Self {
            seen: Arc::default(),
            changed: Arc::default(),
        };
        let f = follower.clone();
        let (js, stream) = (bus.js.clone(), bus.topology.lifecycle_stream());
        tokio::spawn(async move {
            let mut next_seq = 1u64;
            loop {
                // Re-created after a broker fault, from the next sequence not yet seen.
                let consumer = match js.get_stream(&stream).await {
                    Ok(handle) => {
                        let config = OrderedConfig {
                            deliver_policy: DeliverPolicy::ByStartSequence {
                                start_sequence: next_seq,
                            },
                            ..Default::default()
                        };
                        handle.create_consumer(config).await.ok()
                    }
                    Err(_) => None,
                };
                let messages = match consumer {
                    Some(c) => c.messages().await.ok(),
                    None => None,
                };
                let Some(mut messages) = messages else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                // An ordered consumer lives on the stream leader; after a failover it can go
                // quiet, so a silent second means: open a new one from where we are.
                while let Ok(Some(Ok(msg))) =
                    tokio::time::timeout(Duration::from_secs(1), messages.next()).await
                {
                    if let Ok(info) = msg.info() {
                        next_seq = info.stream_sequence + 1;
                    }
                    if let Ok(ev) = serde_json::from_slice(&msg.payload) {
                        f.seen.lock().unwrap().push(ev);
                        f.changed.notify_waiters();
                    }
                }
            }
        });
        follower
    }

    pub(crate) fn events(&self) -> Vec<LifecycleEvent> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until `done` holds over the stored events; false after `timeout`.
    pub(crate) async fn reached(
        &self,
        timeout: Duration,
        done: impl Fn(&[LifecycleEvent]) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            if done(&self.seen.lock().unwrap()) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return false;
            }
        }
    }

    /// Waits until `done` holds over the stored events; panics after `timeout`.
    pub(crate) async fn wait(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[LifecycleEvent]) -> bool,
    ) {
        if !self.reached(timeout, done).await {
            panic!(
                "timed out after {timeout:?} waiting for {what}; {} events stored",
                self.seen.lock().unwrap().len()
            );
        }
    }
}

impl Env {
    /// Waits (watching the inventory entry) until the credential's claim is released: an
    /// operation releases it just after publishing its last event.
    pub(crate) async fn claim_released(&self, id: &str) -> keyloop_core::Credential {
        let kv = self
            .bus
            .kv(&self.bus.topology.inventory_bucket())
            .await
            .unwrap();
        let mut watch = kv.watch_with_history(format!("cred.{id}")).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let entry = tokio::time::timeout_at(deadline, watch.next())
                .await
                .unwrap_or_else(|_| panic!("the claim on {id} was not released within 10 s"))
                .expect("watch open")
                .unwrap();
            let cred: keyloop_core::Credential = serde_json::from_slice(&entry.value).unwrap();
            if cred.claim.is_none() {
                return cred;
            }
        }
    }
}

/// A credential registered by [`Env::register_all`]: its first version and that version's value.
pub(crate) struct Registered {
    pub(crate) version: uuid::Uuid,
    pub(crate) value: String,
}

impl Env {
    /// A worker context in this process with this env's master key (local store, target none).
    pub(crate) async fn context(&self) -> keyloop_workers::WorkerContext {
        keyloop_workers::WorkerContext::open(self.bus.clone(), Some(&self.master_key()))
            .await
            .unwrap()
    }

    /// Registers `ids` in-process (64 at a time; local store, target none, no schedule) and
    /// returns them in order with their first version and value — fast set-up for tests that
    /// need many credentials.
    pub(crate) async fn register_all(
        &self,
        ids: impl IntoIterator<Item = String>,
    ) -> Vec<Registered> {
        use futures::StreamExt as _;
        use keyloop_core::{Policy, StoreKind, TargetKind};
        use keyloop_workers::ops::{self, Cause, Registration};
        let ctx = Arc::new(self.context().await);
        let cause = Cause {
            source: "keyloop/test".into(),
            ..Default::default()
        };
        futures::stream::iter(ids)
            .map(|id| {
                let (ctx, cause) = (ctx.clone(), cause.clone());
                async move {
                    let reg = Registration {
                        id: id.parse().unwrap(),
                        store: StoreKind::Local,
                        target: TargetKind::None,
                        policy: Policy {
                            max_age_secs: None,
                            grace_secs: 0,
                            idle_revoke_after_secs: None,
                            owner: None,
                            ..Default::default()
                        },
                        settings: Default::default(),
                    };
                    let cred = ops::register(&ctx, reg, &cause).await.unwrap().credential;
                    let version = cred.versions[0].id;
                    let store = ctx.backends.store(StoreKind::Local).unwrap();
                    let value = store
                        .get(&cred, version)
                        .await
                        .unwrap()
                        .unwrap()
                        .expose()
                        .to_owned();
                    Registered { version, value }
                }
            })
            .buffered(64)
            .collect()
            .await
    }

    /// A `generic` report (JSON lines) leaking each of `values`, one finding per line.
    pub(crate) fn generic_report<'a>(
        &self,
        name: &str,
        values: impl IntoIterator<Item = &'a str>,
    ) -> PathBuf {
        let mut lines = String::new();
        for (i, v) in values.into_iter().enumerate() {
            lines.push_str(
                &serde_json::json!({"secret": v, "file": format!("{name}-{i}.env")}).to_string(),
            );
            lines.push('\n');
        }
        self.file(name, lines.as_bytes())
    }
}

impl Env {
    /// The durable consumer of `role`, as the server reports it now (pending, in hand, leader).
    pub(crate) async fn consumer_info(
        &self,
        role: keyloop_nats::Role,
    ) -> Option<async_nats::jetstream::consumer::Info> {
        let (stream, _) = self.bus.topology.consumer_of(role);
        let mut consumer: async_nats::jetstream::consumer::PullConsumer = self
            .bus
            .js
            .get_consumer_from_stream(role.name(), &stream)
            .await
            .ok()?;
        consumer.info().await.ok().cloned()
    }

    /// The state of `stream` as the server reports it now (messages, first and last sequence).
    pub(crate) async fn stream_state(&self, stream: &str) -> async_nats::jetstream::stream::State {
        let mut stream = self.bus.js.get_stream(stream).await.unwrap();
        stream.info().await.unwrap().state.clone()
    }

    /// Waits until the leak-responder, the revoker and the rotator have no message pending or
    /// unacked; panics after `within`.
    pub(crate) async fn wait_loop_idle(&self, within: Duration) {
        use keyloop_nats::Role;
        let deadline = tokio::time::Instant::now() + within;
        for role in [Role::LeakResponder, Role::Revoker, Role::Rotator] {
            loop {
                let info = self.consumer_info(role).await.expect("consumer info");
                if info.num_pending == 0 && info.num_ack_pending == 0 {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{role:?} still has work after {within:?}: {} pending, {} unacked",
                    info.num_pending,
                    info.num_ack_pending
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Whether `role` logs in with `password`; any failure other than a refused login fails the
/// test.
pub(crate) async fn logs_in(
    pg: &keyloop_testkit::postgres::TestPostgres,
    role: &str,
    password: &str,
) -> bool {
    match pg.connect_as(role, password, "postgres").await {
        Ok(_) => true,
        Err(e)
            if matches!(
                e.code(),
                Some(c) if *c == tokio_postgres::error::SqlState::INVALID_PASSWORD
                    || *c == tokio_postgres::error::SqlState::INVALID_AUTHORIZATION_SPECIFICATION
            ) =>
        {
            false
        }
        Err(e) => panic!("login as {role} failed for another reason: {e}"),
    }
}

/// A `single` role with a password only the test knows, registered as `id` through the CLI.
pub(crate) async fn single_role(
    env: &Env,
    pg: &keyloop_testkit::postgres::TestPostgres,
    id: &str,
) -> String {
    let role = keyloop_testkit::postgres::unique_name("app");
    pg.superuser()
        .await
        .batch_execute(&format!("CREATE ROLE {role} LOGIN PASSWORD 'human-set-pw'"))
        .await
        .unwrap();
    env.ok(&[
        "credential",
        "register",
        id,
        "--target",
        "postgres",
        "--role",
        &role,
        "--strategy",
        "single",
    ])
    .await;
    role
}

/// Runs `cmd` with `input` on its stdin and its output captured.
pub(crate) async fn with_stdin(mut cmd: Command, input: &str) -> Output {
    use tokio::io::AsyncWriteExt;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).await.unwrap();
    drop(stdin);
    child.wait_with_output().await.unwrap()
}

/// Exit 0 is true, 2 false; anything else fails the test with `what`'s stderr.
fn valid_or_not(out: &Output, what: &str) -> bool {
    match out.status.code() {
        Some(0) => true,
        Some(2) => false,
        _ => panic!("{what} failed: {}", String::from_utf8_lossy(&out.stderr)),
    }
}
