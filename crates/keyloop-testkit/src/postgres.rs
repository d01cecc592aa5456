//! A real PostgreSQL cluster per test: `initdb --auth=scram-sha-256` in a temporary directory,
//! `postgres` on a random loopback port with every statement logged, stopped and removed on
//! drop. Password authentication is what proves that a rotated or revoked password really
//! stopped working, so the cluster never trusts a connection.
//!
//! As root the cluster runs as the `postgres` OS user (PostgreSQL refuses to run as root), and
//! its directory belongs to that user. The binaries are found through `KEYLOOP_PG_BIN` (a
//! directory), else the newest `/usr/lib/postgresql/<version>/bin` (Debian's layout);
//! `scripts/install-postgres` installs them where they are missing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tempfile::TempDir;

/// A running cluster; stopped (SIGQUIT, then SIGKILL) and its directory removed on drop.
#[derive(Debug)]
pub struct TestPostgres {
    child: Child,
    dir: TempDir,
    port: u16,
    password: String,
}

/// A name no other test uses: `prefix` and 12 random hex digits.
pub fn unique_name(prefix: &str) -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    format!("{prefix}_{}", &id[id.len() - 12..])
}

/// The directory holding `initdb` and `postgres` (see the module docs). Panics with what to do
/// when there is none.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KEYLOOP_PG_BIN") {
        let dir = PathBuf::from(dir);
        assert!(
            dir.join("initdb").is_file(),
            "KEYLOOP_PG_BIN={} has no initdb",
            dir.display()
        );
        return dir;
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.split('.').next()?.parse().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("postgres").is_file())
                .then_some((version, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "tests need PostgreSQL server binaries (initdb, postgres): run scripts/install-postgres, or set KEYLOOP_PG_BIN to their directory"
        ),
    }
}

/// `(uid, gid)` of the `postgres` OS user, from /etc/passwd.
fn postgres_user() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    passwd
        .lines()
        .find_map(|line| {
            let f: Vec<_> = line.split(':').collect();
            (f.first() == Some(&"postgres") && f.len() > 3)
                .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                .flatten()
        })
        .expect(
            "running as root, the tests start PostgreSQL as the `postgres` OS user, which does not exist; install postgresql (scripts/install-postgres) or create the user",
        )
}

fn is_root() -> bool {
    // No libc: the owner of a file we just created is our effective uid.
    use std::os::unix::fs::MetadataExt;
    let probe = tempfile::NamedTempFile::new().expect("create a probe file");
    probe
        .as_file()
        .metadata()
        .expect("stat the probe file")
        .uid()
        == 0
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("find a free loopback port")
}

fn as_cluster_owner(cmd: &mut Command, owner: Option<(u32, u32)>) {
    use std::os::unix::process::CommandExt;
    if let Some((uid, gid)) = owner {
        cmd.uid(uid).gid(gid);
    }
}

impl TestPostgres {
    /// `initdb`, start, and wait until the superuser `postgres` can log in with its password.
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// As [`TestPostgres::start`], serving TLS with `certs`' server certificate and refusing
    /// every session that is not TLS (`hostssl` only in `pg_hba.conf`).
    pub async fn start_with_tls(certs: &crate::tls::TestCerts) -> Self {
        Self::start_with(Some(certs)).await
    }

    async fn start_with(tls: Option<&crate::tls::TestCerts>) -> Self {
        let bin = bin_dir();
        let owner = is_root().then(postgres_user);
        let dir = tempfile::Builder::new()
            .prefix("keyloop-pg-")
            .tempdir()
            .expect("create a temporary cluster directory");
        let password = format!("pg-{}", uuid::Uuid::now_v7().simple());
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, &password).unwrap();
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
            std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid)).unwrap();
        }
        let data = dir.path().join("data");
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .stdin(Stdio::null());
        as_cluster_owner(&mut initdb, owner);
        let out = tokio::task::spawn_blocking(move || initdb.output())
            .await
            .unwrap()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::remove_file(&pwfile).unwrap();
        let mut tls_args = Vec::new();
        if let Some(certs) = tls {
            // The server reads its key as the cluster's owner, and refuses one others may read.
            for (from, to) in [
                (certs.server_cert(), "server.crt"),
                (certs.server_key(), "server.key"),
            ] {
                let path = dir.path().join(to);
                std::fs::copy(&from, &path).expect("copy the server's certificate");
                if let Some((uid, gid)) = owner {
                    std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
                }
                tls_args.push(path);
            }
            let hba = data.join("pg_hba.conf");
            let rules: String = std::fs::read_to_string(&hba)
                .expect("read pg_hba.conf")
                .lines()
                .filter(|l| !l.trim_start().starts_with("host"))
                .map(|l| format!("{l}\n"))
                .collect();
            std::fs::write(
                &hba,
                format!(
                    "{rules}hostssl all all 127.0.0.1/32 scram-sha-256\nhostnossl all all all reject\n"
                ),
            )
            .expect("write pg_hba.conf");
        }

        // A port picked here may be taken before the server binds it: try a few.
        let mut last_log = String::new();
        for _ in 0..5 {
            let port = free_port();
            let log = dir.path().join("postgres.log");
            let log_file = std::fs::File::create(&log).unwrap();
            let mut cmd = Command::new(bin.join("postgres"));
            cmd.arg("-D")
                .arg(&data)
                .arg("-p")
                .arg(port.to_string())
                .args([
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "unix_socket_directories=",
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "shared_buffers=16MB",
                    "-c",
                    "max_connections=60",
                    // Every statement and connection in the log, so tests can prove no plaintext
                    // password reached the server.
                    "-c",
                    "log_statement=all",
                    "-c",
                    "log_connections=on",
                    "-c",
                    "log_min_error_statement=error",
                ])
                .args(match &tls_args[..] {
                    [cert, key] => vec![
                        "-c".to_owned(),
                        "ssl=on".to_owned(),
                        "-c".to_owned(),
                        format!("ssl_cert_file={}", cert.display()),
                        "-c".to_owned(),
                        format!("ssl_key_file={}", key.display()),
                    ],
                    _ => Vec::new(),
                })
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log_file);
            as_cluster_owner(&mut cmd, owner);
            let mut child = cmd.spawn().expect("start postgres");
            match wait_ready(&mut child, port, &password, &log).await {
                Ok(()) => {
                    return Self {
                        child,
                        dir,
                        port,
                        password,
                    };
                }
                Err(text) => {
                    stop(&mut child);
                    last_log = text;
                    if !last_log.contains("could not bind") && !last_log.contains("already in use")
                    {
                        break;
                    }
                }
            }
        }
        panic!("postgres did not start; its log:\n{last_log}");
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's directory (`data/`, `postgres.log`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A DSN for `user` with `password` to database `db`.
    pub fn dsn_for(&self, user: &str, password: &str, db: &str) -> String {
        format!("postgres://{user}:{password}@127.0.0.1:{}/{db}", self.port)
    }

    /// The superuser's DSN.
    pub fn superuser_dsn(&self) -> String {
        self.dsn_for("postgres", &self.password, "postgres")
    }

    /// Connects as `user` with `password` to `db`.
    pub async fn connect_as(
        &self,
        user: &str,
        password: &str,
        db: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        connect(self.port, user, password, db).await
    }

    /// A superuser session.
    pub async fn superuser(&self) -> tokio_postgres::Client {
        self.connect_as("postgres", &self.password, "postgres")
            .await
            .unwrap_or_else(|e| panic!("connect as superuser: {e}"))
    }

    /// Creates a least-privileged admin for keyloop (`CREATEROLE`, member of
    /// `pg_signal_backend`, not superuser) with a unique name; returns its DSN.
    pub async fn create_admin(&self) -> String {
        let name = unique_name("keyloop_admin");
        let password = format!("adm-{}", uuid::Uuid::now_v7().simple());
        self.superuser()
            .await
            .batch_execute(&format!(
                "CREATE ROLE {name} LOGIN CREATEROLE PASSWORD '{password}'; GRANT pg_signal_backend TO {name}"
            ))
            .await
            .unwrap();
        self.dsn_for(&name, &password, "postgres")
    }

    /// The server's log so far (every statement, connection and error).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

async fn connect(
    port: u16,
    user: &str,
    password: &str,
    db: &str,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user(user)
        .password(password)
        .dbname(db)
        .connect_timeout(Duration::from_secs(5));
    // TLS when the server offers it (a cluster of `start_with_tls`), unverified: the tests'
    // own sessions prove logins, not the server.
    let tls = keyloop_backends::postgres::tls::MakeRustls::new(&Default::default())
        .expect("a TLS client without files");
    let (client, connection) = config.connect(tls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Polls a login until it works (process start-up has no event to await); on failure returns
/// the server's log.
async fn wait_ready(
    child: &mut Child,
    port: u16,
    password: &str,
    log: &Path,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let log_text = || std::fs::read_to_string(log).unwrap_or_default();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited with {status}\n{}", log_text()));
        }
        if connect(port, "postgres", password, "postgres")
            .await
            .is_ok()
        {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("not ready within 30 s\n{}", log_text()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Immediate shutdown (the directory is thrown away anyway), then SIGKILL after 10 s.
fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-QUIT", &child.id().to_string()])
        .status();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}
