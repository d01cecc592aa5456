//! Everything the binary reads from flags and the environment: logging, the NATS connection,
//! the master key and the data directory. Libraries get these as arguments.

use crate::cli::{Cli, Command, Global};
pub(crate) use crate::policy_config::{approval_settings, groups, policy_engine};
use anyhow::{Context, Result, bail};
use keyloop_backends::{AwsSecretsManager, AwsSmConfig, MasterKey, PostgresConfig, PostgresTarget};
use keyloop_core::Secret;
use keyloop_core::duration::{Bounds, DurationError, LEASE_TTL, TICK_INTERVAL};
use keyloop_nats::bus::Connect;
use keyloop_nats::{Bus, Topology};
use keyloop_workers::{Backends, WorkerContext};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tracing_subscriber::EnvFilter;

/// Logs go to stderr. Long-running commands log at info, one-shot commands at warn, so their
/// stdout stays data. `RUST_LOG` overrides; `KEYLOOP_LOG_FORMAT=json` gives JSON lines. With
/// `OTEL_EXPORTER_OTLP_ENDPOINT`, spans at info and above of keyloop's crates are also
/// exported as traces whatever the log level (see `telemetry`). Runs inside the tokio runtime.
pub(crate) fn init_logging(cli: &Cli) -> crate::telemetry::Telemetry {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let default = match cli.command {
        Command::Up(_) | Command::Worker(_) => "info",
        Command::Ingest(crate::cli::IngestArgs { serve: Some(_), .. }) => "info",
        _ => "warn",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = if std::env::var("KEYLOOP_LOG_FORMAT").as_deref() == Ok("json") {
        fmt.json().with_filter(filter).boxed()
    } else {
        fmt.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_filter(filter)
            .boxed()
    };
    let (otel, telemetry) = crate::telemetry::layer(cli);
    let traced = tracing_subscriber::filter::Targets::new()
        .with_target("keyloop", tracing::Level::INFO)
        .with_target("keyloop_nats", tracing::Level::INFO)
        .with_target("keyloop_workers", tracing::Level::INFO)
        .with_target("keyloop_backends", tracing::Level::INFO);
    tracing_subscriber::registry()
        .with(fmt)
        .with(otel.map(|l| l.with_filter(traced)))
        .init();
    telemetry
}

/// The data directory: `--data-dir`, else `$XDG_DATA_HOME/keyloop`, else `~/.local/share/keyloop`.
pub(crate) fn data_dir(global: &Global) -> PathBuf {
    if let Some(d) = &global.data_dir {
        return d.clone();
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(x).join("keyloop");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".local/share/keyloop")
}

/// Connects to `--nats` as `--nats-user` (password from KEYLOOP_NATS_PASSWORD) and refuses
/// servers older than 2.10.
pub(crate) async fn connect(global: &Global) -> Result<Bus> {
    Bus::connect_with(&connect_options(global), Topology::new(&global.prefix))
        .await
        .map_err(anyhow::Error::new)
}

fn connect_options(global: &Global) -> Connect {
    Connect {
        url: global.conn.nats.clone(),
        user: global.conn.nats_user.clone(),
        password: std::env::var("KEYLOOP_NATS_PASSWORD").ok().map(Secret::new),
        inbox_prefix: global.conn.nats_inbox_prefix.clone(),
        tls: keyloop_nats::bus::Tls {
            ca: global.conn.nats_ca.clone(),
            cert: global.conn.nats_cert.clone(),
            key: global.conn.nats_key.clone(),
        },
    }
}

/// Who this CLI is to the control plane: its NATS user, or `anonymous` on an open server.
pub(crate) fn actor(global: &Global) -> String {
    connect_options(global)
        .login()
        .unwrap_or_else(|| "anonymous".to_owned())
}

/// `--nats` as it may be shown: without its password.
pub(crate) fn shown_url(global: &Global) -> String {
    keyloop_nats::bus::redact_url(&global.conn.nats)
}

/// Where the master key of this process came from, named in messages (never the key).
#[derive(Debug, Clone)]
pub(crate) enum KeySource {
    /// `--master-key-file` or `KEYLOOP_MASTER_KEY_FILE`.
    File(PathBuf),
    /// `KEYLOOP_MASTER_KEY`.
    Env,
    /// `<data-dir>/master.key`, found there because no key was given.
    DataDir(PathBuf),
    /// `<data-dir>/master.key`, just created by `keyloop up`.
    NewDevKey(PathBuf),
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(p) => write!(
                f,
                "the key file {} (--master-key-file / KEYLOOP_MASTER_KEY_FILE)",
                p.display()
            ),
            Self::Env => f.write_str("the KEYLOOP_MASTER_KEY variable"),
            Self::DataDir(p) => write!(
                f,
                "the data directory's key file {} (no --master-key-file or KEYLOOP_MASTER_KEY was given)",
                p.display()
            ),
            Self::NewDevKey(p) => write!(f, "a dev key just created at {}", p.display()),
        }
    }
}

/// A master key and where it came from.
pub(crate) struct GivenKey {
    pub(crate) key: MasterKey,
    pub(crate) source: KeySource,
}

/// The master key: `--master-key-file`, else `KEYLOOP_MASTER_KEY`, else `<data-dir>/master.key`
/// if it exists. `None` when there is none; commands that need it say how to give one.
pub(crate) fn master_key(global: &Global) -> Result<Option<GivenKey>> {
    if let Some(path) = &global.master_key_file {
        return read_key_file(path).map(|key| {
            Some(GivenKey {
                key,
                source: KeySource::File(path.clone()),
            })
        });
    }
    if let Ok(hex) = std::env::var("KEYLOOP_MASTER_KEY") {
        return MasterKey::from_hex(&hex)
            .context("KEYLOOP_MASTER_KEY is set but is not a master key")
            .map(|key| {
                Some(GivenKey {
                    key,
                    source: KeySource::Env,
                })
            });
    }
    let default = data_dir(global).join("master.key");
    if default.is_file() {
        return read_key_file(&default).map(|key| {
            Some(GivenKey {
                key,
                source: KeySource::DataDir(default),
            })
        });
    }
    Ok(None)
}

/// How to give the right key, appended to every refusal of one.
const PASS_THE_KEY: &str = "Pass it with --master-key-file FILE (mode 0600) or KEYLOOP_MASTER_KEY; a store made by `keyloop up` keeps its key in master.key in the data directory of the first `keyloop up` (--data-dir / KEYLOOP_DATA_DIR). No value was read or written";

/// The worker context of this process with the local store when a key is given; a key the
/// store refuses gives a message with both key ids, where the given key came from and how to
/// pass the right one.
pub(crate) async fn open_context(bus: Bus, key: Option<&GivenKey>) -> Result<WorkerContext> {
    let previous = previous_master_key()?;
    WorkerContext::open_with_previous(bus, key.map(|k| &k.key), previous.as_ref())
        .await
        .map_err(|e| explain_key_refusal(e, key))
}

/// While the master key itself is rotated (`keyloop store rekey`): the store's previous key,
/// from `KEYLOOP_MASTER_KEY_PREVIOUS` (64 hex characters) or the file named by
/// `KEYLOOP_MASTER_KEY_PREVIOUS_FILE`. Values open under it too; nothing is sealed under it.
pub(crate) fn previous_master_key() -> Result<Option<MasterKey>> {
    if let Some(path) =
        std::env::var_os("KEYLOOP_MASTER_KEY_PREVIOUS_FILE").filter(|p| !p.is_empty())
    {
        return read_key_file(Path::new(&path)).map(Some);
    }
    match std::env::var("KEYLOOP_MASTER_KEY_PREVIOUS") {
        Ok(hex) if !hex.is_empty() => MasterKey::from_hex(&hex)
            .context("KEYLOOP_MASTER_KEY_PREVIOUS is set but is not a master key")
            .map(Some),
        _ => Ok(None),
    }
}

/// The refusal inside `e` when the local store refused the key (not when it could not be
/// reached).
pub(crate) fn key_refusal(
    e: &keyloop_workers::Error,
) -> Option<&keyloop_backends::local::KeyMismatch> {
    use keyloop_backends::local::KeyCheckError;
    match std::error::Error::source(e)?.downcast_ref::<KeyCheckError>()? {
        KeyCheckError::Mismatch(m) => Some(m),
        KeyCheckError::Unavailable { .. } => None,
    }
}

/// `e` as a message; a refused key gets where it came from and how to pass the right one.
pub(crate) fn explain_key_refusal(
    e: keyloop_workers::Error,
    given: Option<&GivenKey>,
) -> anyhow::Error {
    use keyloop_backends::local::Expected;
    match (key_refusal(&e), given) {
        (Some(m), Some(given)) => {
            let how = match m.expected {
                Expected::Key(_) | Expected::Unrecorded { .. } => PASS_THE_KEY,
                Expected::CheckDoesNotOpen | Expected::UnreadableCheck => {
                    "No value was read or written"
                }
            };
            anyhow::anyhow!("{m}. The key given came from {}. {how}", given.source)
        }
        _ => anyhow::Error::new(e),
    }
}

fn read_key_file(path: &Path) -> Result<MasterKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the master key file {}", path.display()))?;
    check_key_file_mode(path)?;
    MasterKey::from_hex(&text).with_context(|| format!("master key file {}", path.display()))
}

#[cfg(unix)]
fn check_key_file_mode(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)?.permissions().mode();
    if mode & 0o077 != 0 {
        bail!(
            "master key file {} is readable by others (mode {:o}); run `chmod 600 {}`",
            path.display(),
            mode & 0o777,
            path.display()
        );
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_key_file_mode(_: &Path) -> Result<()> {
    Ok(())
}

/// Creates `<dir>/master.key` (mode 0600) with a fresh key unless it exists; returns the key
/// and whether it was created. Two processes starting at once on one data directory (two
/// `keyloop up`) end with one key: the key is written whole to a private temporary file and
/// linked into place only if no key is there yet, so the file is never seen half written and
/// the one that loses the race reads the winner's key.
pub(crate) fn ensure_dev_key(dir: &Path) -> Result<(MasterKey, bool)> {
    let path = dir.join("master.key");
    if path.is_file() {
        return Ok((read_key_file(&path)?, false));
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    let key = MasterKey::generate();
    let staged = dir.join(format!(".master.key.{}", std::process::id()));
    let _ = std::fs::remove_file(&staged);
    write_private(&staged, key.to_hex().as_bytes())?;
    let linked = std::fs::hard_link(&staged, &path);
    let _ = std::fs::remove_file(&staged);
    match linked {
        Ok(()) => Ok((key, true)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Ok((read_key_file(&path)?, false))
        }
        Err(e) => Err(e).with_context(|| format!("cannot create {}", path.display())),
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes)?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    Ok(())
}

/// A worker context for commands that touch stores (`register`, `reveal`, `worker`).
pub(crate) async fn context(global: &Global, bus: Bus) -> Result<WorkerContext> {
    let key = master_key(global)?;
    let mut ctx = open_context(bus, key.as_ref()).await?;
    add_backends(global, &mut ctx.backends)?;
    Ok(ctx)
}

/// The worker context of this process without the local store, whatever key is given: for
/// roles that never read or write a value (their NATS user may not open the secrets bucket).
pub(crate) async fn context_without_local_store(
    global: &Global,
    bus: Bus,
) -> Result<WorkerContext> {
    let mut ctx = open_context(bus, None).await?;
    add_backends(global, &mut ctx.backends)?;
    Ok(ctx)
}

/// Adds the `aws-sm` store (its client is built at first use, from the standard AWS
/// environment and credential chain) and, when an admin DSN is given, the `postgres` target
/// (it connects at first use).
pub(crate) fn add_backends(global: &Global, backends: &mut Backends) -> Result<()> {
    backends.aws_sm = Some(Arc::new(AwsSecretsManager::new(AwsSmConfig::default())));
    if let Some(dsn) = &global.postgres_dsn {
        let target = Arc::new(
            PostgresTarget::new(&PostgresConfig::new(dsn.clone()))
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        );
        backends.postgres = Some(target.clone());
        backends.jit_roles = Some(target);
    }
    Ok(())
}

/// The nats-server binary: `KEYLOOP_NATS_SERVER`, then a checkout's project-local install,
/// then PATH (see `keyloop_nats::server::locate_for`).
pub(crate) async fn nats_server_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().ok();
    let path = std::env::var("PATH").ok();
    keyloop_nats::server::locate_for(
        std::env::var_os("KEYLOOP_NATS_SERVER").map(PathBuf::from),
        exe.as_deref(),
        path.as_deref(),
    )
    .await
    .map_err(anyhow::Error::new)
}

/// The duration flag `--<bounds.setting>` within its bounds, or a message that names the flag,
/// the value and the allowed range.
pub(crate) fn duration_flag(bounds: Bounds, text: &str) -> Result<std::time::Duration> {
    bounds.parse(text).map_err(|e| match e {
        DurationError::OutOfRange(e) => anyhow::anyhow!("--{e}"),
        e => anyhow::anyhow!("--{}: {e}", bounds.setting),
    })
}

/// The worker configuration from `up`/`worker` flags.
pub(crate) fn worker_config(args: &crate::cli::RunArgs) -> Result<keyloop_workers::WorkerConfig> {
    let tick_interval = duration_flag(TICK_INTERVAL, &args.tick_interval)?;
    let (jit_policy, identity_verifier) = jit_policy(args.jit_policy.as_deref())?;
    Ok(keyloop_workers::WorkerConfig {
        consume: keyloop_nats::ConsumeConfig {
            concurrency: args.concurrency.max(1),
            ..Default::default()
        },
        tick_interval,
        jit_policy,
        identity_verifier,
        policy: Arc::new(policy_engine(
            args.policy.as_deref(),
            &groups(&args.api_admins, &args.policy_groups)?,
        )?),
        notify_webhook: args
            .notify_webhook
            .as_deref()
            .map(keyloop_workers::notifier::WebhookUrl::parse)
            .transpose()
            .map_err(|e| anyhow::anyhow!("--notify-webhook: {e}"))?,
    })
}

/// Largest JWKS file read: a few keys are a few KiB.
const MAX_JWKS_BYTES: u64 = 1024 * 1024;

/// The JIT policy of `--jit-policy` (or the default), checked, with its issuers' JWKS files
/// (relative paths are relative to the policy file) loaded into the identity verifier. Every
/// refusal names the policy file and what to fix.
fn jit_policy(
    file: Option<&Path>,
) -> Result<(
    keyloop_core::JitPolicy,
    keyloop_core::identity::IdentityVerifier,
)> {
    let policy = match file {
        None => keyloop_core::JitPolicy::default(),
        Some(path) => {
            let text = std::fs::read(path)
                .with_context(|| format!("cannot read JIT policy {}", path.display()))?;
            let mut policy: keyloop_core::JitPolicy = serde_json::from_slice(&text).with_context(|| {
                format!(
                    "JIT policy {} is not valid: expected {{\"scopes\": {{\"read\": {{\"tier\": \"auto\", \"max_ttl_secs\": 3600}}}}}}, optionally with \"issuers\" and each scope's \"identities\" (see `keyloop worker --help`)",
                    path.display()
                )
            })?;
            let base = path.parent().unwrap_or_else(|| Path::new("."));
            policy.issuers.resolve_paths(base);
            policy
        }
    };
    let shown = || file.map_or_else(|| "(default)".into(), |f| f.display().to_string());
    check_jit_policy(&policy, file)?;
    policy
        .check()
        .map_err(|e| anyhow::anyhow!("JIT policy {}: {e}", shown()))?;
    let verifier = keyloop_core::identity::IdentityVerifier::load(
        &policy.issuers,
        policy.token_leeway_secs,
        read_jwks,
    )
    .map_err(|e| anyhow::anyhow!("JIT policy {}: {e}", shown()))?;
    Ok((policy, verifier))
}

/// A JWKS file, at most [`MAX_JWKS_BYTES`].
fn read_jwks(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_JWKS_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_JWKS_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("over {MAX_JWKS_BYTES} bytes, too large for a JWKS"),
        ));
    }
    Ok(bytes)
}

/// Every scope's `max_ttl_secs` within [`LEASE_TTL`], so a lease's expiry can always be
/// computed (a huge value would overflow the issuer's time arithmetic).
fn check_jit_policy(policy: &keyloop_core::JitPolicy, file: Option<&Path>) -> Result<()> {
    for (name, scope) in &policy.scopes {
        if let Err(e) = LEASE_TTL.check(scope.max_ttl_secs) {
            bail!(
                "JIT policy {}: scope `{name}`: max_ttl_secs {} is out of range: it must be {}, that is {} to {} seconds",
                file.map_or_else(|| "(default)".into(), |f| f.display().to_string()),
                scope.max_ttl_secs,
                e.range,
                LEASE_TTL.min_secs,
                LEASE_TTL.max_secs
            );
        }
    }
    Ok(())
}

/// Fault injection and the metrics and health endpoint (with its probe of the consumers of
/// `roles`, until `shutdown`) from `up`/`worker` flags.
pub(crate) async fn apply_run_args(
    args: &crate::cli::RunArgs,
    ctx: &mut WorkerContext,
    roles: &[keyloop_nats::Role],
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<()> {
    if let Some(spec) = &args.inject_faults {
        let faults = keyloop_backends::Faults::parse(spec)?;
        tracing::warn!(%spec, "injecting backend faults (tests and game days only)");
        ctx.backends.faults = Some(Arc::new(faults));
    }
    ctx.approval_settings = approval_settings(args)?;
    if let Some(addr) = args.metrics_addr {
        let health = keyloop_nats::health::Health::new(ctx.bus()?.clone(), roles);
        crate::http::serve(addr, health.clone()).await?;
        tokio::spawn(health.run(shutdown.clone()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyloop_testkit::jwt::TestIssuer;

    const CI: &str = "https://ci.example";

    /// A policy file in a fresh directory, with the CI issuer's JWKS at `keys/ci.json` there.
    fn policy_file(policy: &serde_json::Value) -> (tempfile::TempDir, PathBuf, TestIssuer) {
        let dir = tempfile::tempdir().unwrap();
        let issuer = TestIssuer::new(CI, "ci-1");
        std::fs::create_dir(dir.path().join("keys")).unwrap();
        issuer.write_jwks(&dir.path().join("keys/ci.json"));
        let file = dir.path().join("jit-policy.json");
        std::fs::write(&file, policy.to_string()).unwrap();
        (dir, file, issuer)
    }

    fn guarded(jwks_file: &str, identity_issuer: &str) -> serde_json::Value {
        serde_json::json!({
            "issuers": [{"issuer": CI, "audiences": ["keyloop"], "jwks_file": jwks_file}],
            "scopes": {
                "read": {"tier": "auto", "max_ttl_secs": 3600},
                "deploy": {"tier": "notify", "max_ttl_secs": 900,
                    "identities": [{"issuer": identity_issuer, "subject": "repo:acme/api:*"}]}
            }
        })
    }

    #[test]
    fn a_policy_with_an_issuer_loads_its_jwks_relative_to_the_policy_file() {
        let (_dir, file, issuer) = policy_file(&guarded("keys/ci.json", CI));
        let (policy, verifier) = jit_policy(Some(&file)).unwrap();
        assert_eq!(policy.open_scopes(), ["read"]);
        let token = keyloop_core::identity::IdentityToken::new(issuer.token(
            "repo:acme/api:ref:refs/heads/main",
            "keyloop",
            std::time::Duration::from_secs(600),
        ));
        let id = verifier
            .verify(&token, time::OffsetDateTime::now_utc())
            .unwrap();
        assert_eq!(id.issuer, CI);
    }

    #[test]
    fn a_missing_jwks_file_is_refused_naming_the_policy_and_the_file() {
        let (dir, file, _) = policy_file(&guarded("keys/missing.json", CI));
        let e = jit_policy(Some(&file)).unwrap_err().to_string();
        let expected = format!(
            "JIT policy {}: issuer `{CI}`: cannot read its JWKS file {}:",
            file.display(),
            dir.path().join("keys/missing.json").display()
        );
        assert!(e.starts_with(&expected), "{e}");
        assert!(e.contains("check `jwks_file`"), "{e}");
    }

    #[test]
    fn a_scope_naming_an_untrusted_issuer_is_refused_naming_the_scope_and_the_fix() {
        let (_dir, file, _) = policy_file(&guarded("keys/ci.json", "https://gitlab.example"));
        let e = jit_policy(Some(&file)).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "JIT policy {}: scope `deploy`: identity issuer `https://gitlab.example` is not in `issuers` (trusted: {CI}); add it there with its audiences and jwks_file, or fix the name",
                file.display()
            )
        );
    }

    #[test]
    fn a_jwks_file_that_is_not_one_is_refused_naming_it() {
        let (dir, file, _) = policy_file(&guarded("keys/ci.json", CI));
        std::fs::write(dir.path().join("keys/ci.json"), "<html>sign in</html>").unwrap();
        let e = jit_policy(Some(&file)).unwrap_err().to_string();
        assert!(e.contains("keys/ci.json is not a JWKS"), "{e}");
    }

    #[test]
    fn a_policy_file_with_an_error_is_refused_naming_the_file_and_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("policy.cedar");
        std::fs::write(
            &file,
            "@id(\"ok\")\npermit (principal, action, resource);\n@id(\"bad\")\npermit (principal, action == Keyloop::Action::\"delete\", resource);\n",
        )
        .unwrap();
        let e = policy_engine(Some(&file), &groups(&["ops".into()], &[]).unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("{}:4:", file.display())), "{e}");
        assert!(e.contains("keyloop policy schema"), "{e}");
        let engine = policy_engine(None, &groups(&["ops".into()], &[]).unwrap()).unwrap();
        assert!(engine.is_admin("ops"));
    }

    #[test]
    fn the_default_policy_needs_no_issuer() {
        let (policy, verifier) = jit_policy(None).unwrap();
        assert_eq!(policy.open_scopes(), ["admin", "read", "write"]);
        assert!(verifier.issuer_names().is_empty());
    }
}
