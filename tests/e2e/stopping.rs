//! Stopping: `keyloop worker` and `keyloop up` stop within seconds of SIGTERM or SIGINT even
//! when NATS does not answer (nothing listening, a server that never speaks, a server killed
//! with SIGKILL under them), and two `keyloop up` on one data directory share one nats-server
//! that the last of them stops.

use crate::harness::{Env, KEYLOOP, free_port};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// The bound the tests hold a stop to; the measured time is printed.
const STOP_BOUND: Duration = Duration::from_secs(10);

fn signal(child: &Child, sig: &str) {
    let pid = child.id().expect("the process runs");
    let status = std::process::Command::new("kill")
        .arg(sig)
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill {sig} {pid}");
}

/// Sends `sig` and returns how the process ended and how long that took.
async fn stop(child: &mut Child, sig: &str, what: &str) -> (std::process::ExitStatus, Duration) {
    let sent = Instant::now();
    signal(child, sig);
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .unwrap_or_else(|_| panic!("{what} still runs 60 s after {sig}"))
        .unwrap();
    let took = sent.elapsed();
    eprintln!("{what}: exited {status} {took:?} after {sig}");
    (status, took)
}

/// Once the process (logging to `log`) has seen its server go, `sig` stops it cleanly within
/// [`STOP_BOUND`].
async fn stops_after_losing_its_server(child: &mut Child, sig: &str, what: &str, log: &Path) {
    log_says(log, "disconnected from NATS").await;
    let (status, took) = stop(child, sig, what).await;
    assert!(status.success(), "{status}\n{}", read(log));
    assert!(took < STOP_BOUND, "{took:?}\n{}", read(log));
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Waits until the log at `path` contains `needle` (a child process's progress has no event
/// to await but its log, so it is polled).
async fn log_says(path: &Path, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !read(path).contains(needle) {
        assert!(
            Instant::now() < deadline,
            "{} never said {needle:?}:\n{}",
            path.display(),
            read(path)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts `keyloop ARGS` from `cmd` with stderr in `log`.
fn spawn_logged(mut cmd: Command, args: &[&str], log: &Path) -> Child {
    cmd.args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn a_worker_stops_within_seconds_of_sigterm_after_its_server_was_killed() {
    let mut env = Env::start().await;
    let log = env.dir.path().join("worker.log");
    let mut worker = spawn_logged(
        env.keyloop(),
        &[
            "worker",
            "leak-responder",
            "sweeper",
            "scheduler",
            "jit-issuer",
        ],
        &log,
    );
    log_says(&log, "jit-issuer serving").await;
    for role in ["leak-responder", "sweeper", "jit-issuer"] {
        log_says(&log, &format!("worker consuming role=\"{role}\"")).await;
    }
    drop(env.server.take()); // SIGKILL
    stops_after_losing_its_server(&mut worker, "-TERM", "worker, server killed", &log).await;
}

#[tokio::test]
async fn a_worker_connecting_to_a_server_that_never_answers_stops_at_once_on_sigterm() {
    let env = Env::start().await;
    // Accepts connections and says nothing, like a server that hangs or a proxy to nowhere.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("nats://{}", silent.local_addr().unwrap());
    let log = env.dir.path().join("worker.log");
    let mut cmd = env.keyloop();
    cmd.env("KEYLOOP_NATS_URL", &url);
    let mut worker = spawn_logged(cmd, &["worker", "leak-responder"], &log);
    let (_held, _) = tokio::time::timeout(Duration::from_secs(30), silent.accept())
        .await
        .expect("the worker connects")
        .unwrap();
    let (status, took) = stop(&mut worker, "-TERM", "worker, silent server").await;
    assert!(
        status.success(),
        "a stop on request, not a connect timeout: {status}\n{}",
        read(&log)
    );
    assert!(took < STOP_BOUND, "{took:?}");
    assert!(
        read(&log).contains(&format!(
            "shutdown requested while connecting to {url}: abandoned it"
        )),
        "{}",
        read(&log)
    );
}

#[tokio::test]
async fn a_worker_pointed_where_nothing_listens_says_so_and_exits_at_once() {
    let env = Env::start().await;
    let port = free_port();
    let started = Instant::now();
    let out = env
        .keyloop()
        .env("KEYLOOP_NATS_URL", format!("nats://127.0.0.1:{port}"))
        .args(["worker", "leak-responder"])
        .output()
        .await
        .unwrap();
    let took = started.elapsed();
    eprintln!(
        "worker, nothing listening: exited {} in {took:?}",
        out.status
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!(
            "no NATS server answers at nats://127.0.0.1:{port}"
        )),
        "{stderr}"
    );
    assert!(took < STOP_BOUND, "{took:?}");
}

#[tokio::test]
async fn a_worker_whose_consumer_is_missing_says_to_run_init_and_exits_at_once() {
    let env = Env::start().await;
    let (stream, _) = env.bus.topology.consumer_of(keyloop_nats::Role::Sweeper);
    env.bus
        .js
        .delete_consumer_from_stream("sweeper", &stream)
        .await
        .unwrap();
    let started = Instant::now();
    let out = env
        .keyloop()
        .args(["worker", "sweeper"])
        .output()
        .await
        .unwrap();
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "consumer sweeper on stream {stream} (run `keyloop init`)"
        )),
        "{stderr}"
    );
    assert!(took < STOP_BOUND, "{took:?}");
}

/// `keyloop` as a person runs `up`: a data directory, a port, no master key given.
struct UpEnv {
    dir: tempfile::TempDir,
    port: u16,
    nats_server: PathBuf,
}

impl UpEnv {
    async fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            port: free_port(),
            nats_server: keyloop_testkit::nats_server_binary().await,
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn keyloop(&self, port: u16) -> Command {
        let mut cmd = Command::new(KEYLOOP);
        cmd.env("KEYLOOP_NATS_URL", format!("nats://127.0.0.1:{port}"))
            .env("KEYLOOP_DATA_DIR", self.data_dir())
            .env("KEYLOOP_NATS_SERVER", &self.nats_server)
            .env_remove("KEYLOOP_MASTER_KEY")
            .env_remove("KEYLOOP_MASTER_KEY_FILE")
            .env_remove("KEYLOOP_NATS_USER")
            .env_remove("KEYLOOP_NATS_PASSWORD")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    /// Starts `keyloop up`; its log is `<name>.log`.
    fn up(&self, name: &str) -> (Child, PathBuf) {
        let log = self.dir.path().join(format!("{name}.log"));
        let child = spawn_logged(
            self.keyloop(self.port),
            &["up", "--tick-interval", "1s"],
            &log,
        );
        (child, log)
    }

    async fn ok(&self, args: &[&str]) -> String {
        let out = self.keyloop(self.port).args(args).output().await.unwrap();
        assert!(
            out.status.success(),
            "keyloop {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    async fn server_answers(&self) -> bool {
        tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_ok()
    }

    fn record(&self) -> Option<serde_json::Value> {
        let text = std::fs::read(self.data_dir().join("nats/server.json")).ok()?;
        serde_json::from_slice(&text).ok()
    }
}

#[tokio::test]
async fn up_stops_within_seconds_of_sigint_after_its_own_server_was_killed() {
    let env = UpEnv::new().await;
    let (mut up, log) = env.up("up");
    log_says(&log, "keyloop up: workers").await;
    let said = read(&log);
    let pid = said
        .split("started nats-server (pid ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("up names its server's pid:\n{said}"));
    let killed = std::process::Command::new("kill")
        .args(["-KILL", pid])
        .status()
        .unwrap();
    assert!(killed.success());
    stops_after_losing_its_server(&mut up, "-INT", "up, own server killed", &log).await;
}

#[tokio::test]
async fn two_ups_on_one_data_dir_share_one_server_that_the_last_one_out_stops() {
    let env = UpEnv::new().await;
    // Started together: one starts the server, the other waits for it and joins.
    let (first, first_log) = env.up("first");
    let (second, second_log) = env.up("second");
    log_says(&first_log, "keyloop up: workers").await;
    log_says(&second_log, "keyloop up: workers").await;
    let logs = [read(&first_log), read(&second_log)];
    let started: Vec<_> = logs
        .iter()
        .map(|l| l.contains("started nats-server"))
        .collect();
    assert_eq!(
        started.iter().filter(|s| **s).count(),
        1,
        "one server for the data directory:\n{}\n---\n{}",
        logs[0],
        logs[1]
    );
    assert!(
        logs.iter().any(|l| l.contains("joined the nats-server")),
        "{logs:?}"
    );
    // Name them by role: the owner started the server, the guest joined it.
    let (mut owner, owner_log, mut guest, guest_log) = if started[0] {
        (first, first_log, second, second_log)
    } else {
        (second, second_log, first, first_log)
    };

    // A third `up` on the same data directory but another port would start a second server
    // on the same store: refused, with the address to use.
    let other = free_port();
    let refused = env.keyloop(other).args(["up"]).output().await.unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("already has a nats-server")
            && stderr.contains(&format!("Pass --nats {}", env.url())),
        "{stderr}"
    );

    // The owner leaves first: its server stays for the guest, whose workers still rotate.
    let (status, _) = stop(&mut owner, "-TERM", "owner up").await;
    assert!(status.success(), "{status}\n{}", read(&owner_log));
    assert!(
        read(&owner_log).contains("running: another keyloop up uses it"),
        "{}",
        read(&owner_log)
    );
    assert!(
        env.server_answers().await,
        "the owner left the server to the guest"
    );
    env.ok(&["credential", "register", "svc/shared"]).await;
    env.ok(&["rotate", "svc/shared"]).await;

    // A newcomer joins the orphaned server; the guest leaving keeps it for the newcomer.
    let (mut newcomer, newcomer_log) = env.up("newcomer");
    log_says(&newcomer_log, "joined the nats-server").await;
    log_says(&newcomer_log, "keyloop up: workers").await;
    let (status, _) = stop(&mut guest, "-TERM", "guest up").await;
    assert!(status.success(), "{status}\n{}", read(&guest_log));
    assert!(env.server_answers().await, "the newcomer still uses it");
    env.ok(&["rotate", "svc/shared"]).await;

    // The last one out stops the server, though it did not start it.
    let (status, _) = stop(&mut newcomer, "-TERM", "newcomer up").await;
    assert!(status.success(), "{status}\n{}", read(&newcomer_log));
    assert!(
        read(&newcomer_log).contains("stopped the nats-server"),
        "{}",
        read(&newcomer_log)
    );
    assert!(!env.server_answers().await, "the last one out stopped it");
    assert!(env.record().is_none(), "and removed its record");
}
