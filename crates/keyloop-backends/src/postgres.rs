//! The `postgres` target: a credential's value is the password of a PostgreSQL login role.
//!
//! - **Static rotation**, with the two strategies AWS documents: `single` changes the password
//!   of one role (the old value stops working at once); `alternating` sets the password of
//!   whichever of `<role>_a` / `<role>_b` the current version does not use, so the previous
//!   value keeps working on the other role until it is retired.
//! - **JIT roles** for leases ([`PostgresTarget::create_jit_role`],
//!   [`PostgresTarget::drop_jit_role`]): a uniquely named `LOGIN` role with `VALID UNTIL` the
//!   lease's expiry and membership in the scope's group role; revocation ends its sessions,
//!   hands over what it owns and drops it.
//!
//! Passwords travel as SCRAM-SHA-256 verifiers computed here (`postgres-protocol`), so no
//! plaintext reaches the server, its statement log or `pg_stat_activity`; identifiers and
//! literals are quoted by `postgres_protocol::escape` (role statements take no bind parameters,
//! so quoting is the only way in). `test` and revocation prove their result by logging in with
//! the value. The admin connection (a DSN) needs `CREATEROLE` and membership in
//! `pg_signal_backend` (or superuser); it is opened at first use, checked, and kept. No message
//! of this module contains a password: the DSN is always printed with its password replaced.

use crate::{BackendError, Target, redact};
use futures::future::BoxFuture;
use keyloop_core::{AtTarget, Credential, RevokeReason, Secret, Stage, Version};
use postgres_protocol::escape::{escape_identifier, escape_literal};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::Mutex;
use tokio_postgres::config::Host;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};
use tracing::{debug, info, warn};
use uuid::Uuid;

/// How to reach the server as an administrator.
#[derive(Clone)]
pub struct PostgresConfig {
    /// Admin connection string: a URL (`postgres://user:password@host:port/db`) or `key=value`
    /// pairs. The role needs `CREATEROLE` and membership in `pg_signal_backend` (or superuser).
    pub dsn: Secret,
    /// Limit for connecting, and for waiting on locks and on ended sessions to exit.
    pub timeout: Duration,
}

impl PostgresConfig {
    /// A config for `dsn` with a 10 s timeout.
    pub fn new(dsn: Secret) -> Self {
        Self {
            dsn,
            timeout: Duration::from_secs(10),
        }
    }
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("dsn", &"[redacted]")
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The `postgres` target and the JIT role operations, over one admin connection.
pub struct PostgresTarget {
    config: tokio_postgres::Config,
    /// The DSN as printed in messages: password replaced.
    server: String,
    timeout: Duration,
    admin: Mutex<Option<Arc<Admin>>>,
}

struct Admin {
    client: Client,
    superuser: bool,
}

impl fmt::Debug for PostgresTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresTarget")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// What [`PostgresTarget::drop_jit_role`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JitRoleDropped {
    /// The role existed (false: an earlier attempt already dropped it).
    pub existed: bool,
    /// Sessions of the role that were ended.
    pub sessions_ended: u64,
}

/// A JIT role to create for one lease.
#[derive(Debug, Clone, Copy)]
pub struct JitRole<'a> {
    /// The role's name; [`jit_role_name`] makes one from the lease id.
    pub name: &'a str,
    /// The scope's group role, whose privileges the JIT role inherits.
    pub group: &'a str,
    /// The lease's expiry: PostgreSQL refuses the password after it (`VALID UNTIL`), even if
    /// keyloop never gets to revoke the role. Kept to the microsecond (rounded down).
    pub valid_until: OffsetDateTime,
}

/// What every JIT role's name starts with.
pub const JIT_ROLE_PREFIX: &str = "kl_jit_";

/// The name of the JIT role of lease `lease`: `kl_jit_` and the lease id's 32 hex digits.
pub fn jit_role_name(lease: Uuid) -> String {
    format!("{JIT_ROLE_PREFIX}{}", lease.simple())
}

/// JIT operations only touch roles named like [`jit_role_name`]: a wrong argument must never
/// drop an application's role.
fn check_jit_name(name: &str) -> Result<(), BackendError> {
    if name.starts_with(JIT_ROLE_PREFIX) && name.len() <= 63 {
        Ok(())
    } else {
        Err(BackendError::permanent(format!(
            "postgres target: {name:?} is not a JIT role name (they start with {JIT_ROLE_PREFIX} and are at most 63 bytes; see jit_role_name); refusing to create or drop it"
        )))
    }
}

/// Quotes an SQL identifier with [`escape_identifier`] (`"` around it, inner `"` doubled),
/// after refusing what PostgreSQL cannot name: an empty name, or one with NUL (which would cut
/// the statement short in the server).
pub fn quote_ident(name: &str) -> Result<String, BackendError> {
    if name.is_empty() || name.contains('\0') {
        return Err(BackendError::permanent(format!(
            "postgres target: invalid role name {name:?} (empty or contains NUL)"
        )));
    }
    Ok(escape_identifier(name))
}

/// Quotes an SQL string literal with [`escape_literal`] (`'` around it, inner `'` doubled;
/// with backslashes, the ` E'...'` form with them doubled too, so the result means the same
/// whatever `standard_conforming_strings` says), after refusing NUL, which no literal can hold.
pub fn quote_literal(text: &str) -> Result<String, BackendError> {
    if text.contains('\0') {
        return Err(BackendError::permanent(
            "postgres target: a literal contains NUL",
        ));
    }
    Ok(escape_literal(text))
}

/// The SCRAM-SHA-256 verifier of `value` with a fresh random salt: what PostgreSQL stores, and
/// all that keyloop sends it. The plaintext never leaves this process.
pub fn scram_verifier(value: &Secret) -> String {
    postgres_protocol::password::scram_sha_256(value.expose().as_bytes())
}

fn timestamp_literal(at: OffsetDateTime) -> Result<String, BackendError> {
    let at = at.to_offset(time::UtcOffset::UTC);
    let at = at
        .replace_nanosecond(at.nanosecond() / 1000 * 1000)
        .unwrap_or(at);
    let text = at
        .format(&time::format_description::well_known::Rfc3339)
        .map_err(|e| {
            BackendError::permanent(format!("postgres target: cannot format {at}: {e}"))
        })?;
    quote_literal(&text)
}

/// Whether a login attempt got in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Login {
    Accepted,
    Refused,
}

/// The text of a tokio-postgres error: the server's message (and detail) when it sent one.
fn describe_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(d) => format!("{} ({}; {d})", db.message(), db.code().code()),
            None => format!("{} ({})", db.message(), db.code().code()),
        },
        None => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text.push_str(": ");
                text.push_str(&s.to_string());
                source = s.source();
            }
            text
        }
    }
}

fn is_auth_refusal(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::INVALID_PASSWORD
            || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
    )
}

impl PostgresTarget {
    /// Parses the DSN; connects at first use. A DSN that does not parse is an error that does
    /// not repeat it.
    pub fn new(config: &PostgresConfig) -> Result<Self, BackendError> {
        let dsn = config.dsn.expose();
        let mut parsed = tokio_postgres::Config::from_str(dsn).map_err(|e| {
            BackendError::permanent(redact(
                format!(
                    "postgres target: the admin DSN (--postgres-dsn / KEYLOOP_POSTGRES_DSN) does not parse: {e}; expected postgres://USER:PASSWORD@HOST:PORT/DBNAME or key=value pairs"
                ),
                &[dsn],
            ))
        })?;
        if parsed.get_connect_timeout().is_none() {
            parsed.connect_timeout(config.timeout);
        }
        parsed.application_name("keyloop");
        let server = describe_config(&parsed);
        Ok(Self {
            config: parsed,
            server,
            timeout: config.timeout,
            admin: Mutex::new(None),
        })
    }

    /// The server and admin user, password replaced: `postgres://admin:[redacted]@host:5432/db`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Removes the admin password from a message, whatever a library put into it.
    fn clean(&self, text: String) -> String {
        match self
            .config
            .get_password()
            .and_then(|p| std::str::from_utf8(p).ok())
        {
            Some(p) => redact(text, &[p]),
            None => text,
        }
    }

    fn error(&self, kind: crate::BackendErrorKind, text: String) -> BackendError {
        BackendError {
            kind,
            message: self.clean(text),
            untouched: false,
        }
    }

    /// The database logins are tested against: the DSN's, else PostgreSQL's default (the user).
    fn database(&self) -> String {
        self.config
            .get_dbname()
            .or(self.config.get_user())
            .unwrap_or("postgres")
            .to_owned()
    }

    async fn connect(
        &self,
        config: &tokio_postgres::Config,
    ) -> Result<Client, tokio_postgres::Error> {
        let (client, connection) = config.connect(NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(error = %e, "postgres connection ended");
            }
        });
        Ok(client)
    }

    /// The admin connection: the kept one while it is open, else a new one, checked for the
    /// privileges keyloop needs.
    async fn admin(&self) -> Result<Arc<Admin>, BackendError> {
        // Nothing is changed before the admin session is open and checked.
        self.open_admin()
            .await
            .map_err(BackendError::before_any_change)
    }

    async fn open_admin(&self) -> Result<Arc<Admin>, BackendError> {
        let mut slot = self.admin.lock().await;
        if let Some(admin) = slot.as_ref()
            && !admin.client.is_closed()
        {
            return Ok(admin.clone());
        }
        let client = self.connect(&self.config).await.map_err(|e| {
            let kind = if is_auth_refusal(&e) {
                crate::BackendErrorKind::Permanent
            } else {
                crate::BackendErrorKind::Transient
            };
            let hint = if kind == crate::BackendErrorKind::Permanent {
                "check the user and password in --postgres-dsn / KEYLOOP_POSTGRES_DSN"
            } else {
                "is the server up and reachable from here?"
            };
            self.error(
                kind,
                format!(
                    "postgres target: cannot connect to {} as admin: {}; {hint}",
                    self.server,
                    describe_error(&e)
                ),
            )
        })?;
        let row = client
            .query_one(
                "SELECT current_user::text, rolsuper, rolcreaterole, \
                 pg_has_role(current_user, 'pg_signal_backend', 'MEMBER') \
                 FROM pg_roles WHERE rolname = current_user",
                &[],
            )
            .await
            .map_err(|e| self.sql_error("check the admin role's privileges", &e))?;
        let (user, superuser, createrole, signal): (String, bool, bool, bool) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        if !superuser && !createrole {
            return Err(self.error(
                crate::BackendErrorKind::Permanent,
                format!(
                    "postgres target: the admin role {user} on {} lacks CREATEROLE, so keyloop cannot change or drop login roles; as a superuser run `ALTER ROLE {} CREATEROLE` and `GRANT pg_signal_backend TO {}`",
                    self.server,
                    quote_ident(&user)?,
                    quote_ident(&user)?
                ),
            ));
        }
        if !superuser && !signal {
            return Err(self.error(
                crate::BackendErrorKind::Permanent,
                format!(
                    "postgres target: the admin role {user} on {} is not a member of pg_signal_backend, so keyloop cannot end the sessions of a revoked role; as a superuser run `GRANT pg_signal_backend TO {}`",
                    self.server,
                    quote_ident(&user)?
                ),
            ));
        }
        // Never wait long behind another session's lock on a role: fail, and let the worker's
        // retry come back.
        client
            .batch_execute(&format!(
                "SET lock_timeout = {}",
                quote_literal(&format!("{}ms", self.timeout.as_millis()))?
            ))
            .await
            .map_err(|e| self.sql_error("set lock_timeout", &e))?;
        let admin = Arc::new(Admin { client, superuser });
        *slot = Some(admin.clone());
        Ok(admin)
    }

    fn sql_error(&self, what: &str, e: &tokio_postgres::Error) -> BackendError {
        let kind = match e.code() {
            // Lost connection, lock timeout, serialization: worth a retry.
            None => crate::BackendErrorKind::Transient,
            Some(c)
                if *c == SqlState::LOCK_NOT_AVAILABLE
                    || *c == SqlState::T_R_SERIALIZATION_FAILURE
                    || *c == SqlState::ADMIN_SHUTDOWN =>
            {
                crate::BackendErrorKind::Transient
            }
            Some(_) => crate::BackendErrorKind::Permanent,
        };
        let hint = if e.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) {
            "; the admin role needs CREATEROLE and membership in pg_signal_backend (PostgreSQL refuses to let a non-superuser change superuser roles)"
        } else {
            ""
        };
        self.error(
            kind,
            format!(
                "postgres target on {}: {what}: {}{hint}",
                self.server,
                describe_error(e)
            ),
        )
    }

    async fn role_exists(&self, admin: &Admin, role: &str) -> Result<bool, BackendError> {
        admin
            .client
            .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role])
            .await
            .map(|r| r.is_some())
            .map_err(|e| self.sql_error(&format!("look up role {role:?}"), &e))
    }

    /// Tries to log in as `role` with `value` (to the admin DSN's database). `Refused` when
    /// the server rejects the password or the role may not log in.
    async fn login(&self, role: &str, value: &Secret) -> Result<Login, BackendError> {
        let mut config = self.config.clone();
        config
            .user(role)
            .password(value.expose().as_bytes())
            .dbname(self.database());
        match self.connect(&config).await {
            Ok(client) => {
                let who: String = client
                    .query_one("SELECT session_user::text", &[])
                    .await
                    .map_err(|e| self.sql_error(&format!("query as role {role:?}"), &e))?
                    .get(0);
                if who != role {
                    return Err(self.error(
                        crate::BackendErrorKind::Permanent,
                        format!("postgres target: logged in as {role:?} but the server says the session user is {who:?}"),
                    ));
                }
                Ok(Login::Accepted)
            }
            Err(e) if is_auth_refusal(&e) => Ok(Login::Refused),
            Err(e) => {
                let text = redact(describe_error(&e), &[value.expose()]);
                let kind = if e.code().is_some() {
                    crate::BackendErrorKind::Permanent
                } else {
                    crate::BackendErrorKind::Transient
                };
                Err(self.error(
                    kind,
                    format!(
                        "postgres target: cannot try a login as role {role:?} to database {:?} on {}: {text}",
                        self.database(),
                        self.server
                    ),
                ))
            }
        }
    }

    /// True when `role` logs in with `value`. For checks and tests; rotation and revocation
    /// prove their results with it.
    pub async fn can_log_in(&self, role: &str, value: &Secret) -> Result<bool, BackendError> {
        Ok(self.login(role, value).await? == Login::Accepted)
    }

    /// Ends every session of `role` and waits (up to the timeout) until each has exited.
    async fn end_sessions(&self, admin: &Admin, role: &str) -> Result<u64, BackendError> {
        let wait_ms = i64::try_from(self.timeout.as_millis()).unwrap_or(i64::MAX);
        let row = admin
            .client
            .query_one(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, $2)), count(*) \
                 FROM pg_stat_activity WHERE usename = $1 AND pid <> pg_backend_pid()",
                &[&role, &wait_ms],
            )
            .await
            .map_err(|e| self.sql_error(&format!("end the sessions of role {role:?}"), &e))?;
        let (ended, found): (i64, i64) = (row.get(0), row.get(1));
        if ended < found {
            return Err(self.error(
                crate::BackendErrorKind::Transient,
                format!(
                    "postgres target on {}: {} of {found} sessions of role {role:?} did not exit within {} ms",
                    self.server,
                    found - ended,
                    wait_ms
                ),
            ));
        }
        Ok(u64::try_from(ended).unwrap_or_default())
    }

    /// `LOGIN` with the verifier of `value`, valid without end. Creates the role (as a member
    /// of `create_in`) when it does not exist and `create_in` is given.
    async fn set_password(
        &self,
        admin: &Admin,
        role: &str,
        value: &Secret,
        create_in: Option<&str>,
        what: &str,
    ) -> Result<(), BackendError> {
        let verifier = quote_literal(&scram_verifier(value))?;
        let ident = quote_ident(role)?;
        if self.role_exists(admin, role).await? {
            admin
                .client
                .batch_execute(&format!(
                    "ALTER ROLE {ident} WITH LOGIN PASSWORD {verifier} VALID UNTIL 'infinity'"
                ))
                .await
                .map_err(|e| {
                    self.sql_error(&format!("{what}: set the password of role {role:?}"), &e)
                })
        } else if let Some(group) = create_in {
            if !self.role_exists(admin, group).await? {
                return Err(self.error(
                    crate::BackendErrorKind::Permanent,
                    format!(
                        "postgres target on {}: {what}: neither role {role:?} nor the group role {group:?} it would be created in exists; create {group:?} with the privileges the application needs (or create {role:?} yourself)",
                        self.server
                    ),
                ));
            }
            admin
                .client
                .batch_execute(&format!(
                    "CREATE ROLE {ident} WITH LOGIN INHERIT PASSWORD {verifier} VALID UNTIL 'infinity' IN ROLE {}",
                    quote_ident(group)?
                ))
                .await
                .map_err(|e| self.sql_error(&format!("{what}: create role {role:?} in {group:?}"), &e))
        } else {
            Err(self.error(
                crate::BackendErrorKind::Permanent,
                format!(
                    "postgres target on {}: {what}: role {role:?} does not exist; create it (CREATE ROLE {ident} LOGIN) and register again — keyloop takes over an existing role's password",
                    self.server
                ),
            ))
        }
    }

    /// `NOLOGIN`, no password: nothing logs in as `role` any more.
    async fn disable(&self, admin: &Admin, role: &str, what: &str) -> Result<bool, BackendError> {
        if !self.role_exists(admin, role).await? {
            return Ok(false);
        }
        admin
            .client
            .batch_execute(&format!(
                "ALTER ROLE {} WITH NOLOGIN PASSWORD NULL",
                quote_ident(role)?
            ))
            .await
            .map_err(|e| self.sql_error(&format!("{what}: disable role {role:?}"), &e))?;
        Ok(true)
    }

    /// Creates (or, for a retried lease, updates) the JIT role: `LOGIN`, the verifier of
    /// `password`, `VALID UNTIL` the expiry, member of the group role. One statement batch, so
    /// the role never exists without its limits.
    pub async fn create_jit_role(
        &self,
        role: &JitRole<'_>,
        password: &Secret,
    ) -> Result<(), BackendError> {
        check_jit_name(role.name)?;
        let admin = self.admin().await?;
        let what = format!("create JIT role {:?}", role.name);
        if !self.role_exists(&admin, role.group).await? {
            return Err(self.error(
                crate::BackendErrorKind::Permanent,
                format!(
                    "postgres target on {}: {what}: the scope's group role {:?} does not exist; create it with the scope's privileges (CREATE ROLE {} NOLOGIN; GRANT ... TO {})",
                    self.server,
                    role.group,
                    quote_ident(role.group)?,
                    quote_ident(role.group)?
                ),
            ));
        }
        let ident = quote_ident(role.name)?;
        let verb = if self.role_exists(&admin, role.name).await? {
            "ALTER"
        } else {
            "CREATE"
        };
        let sql = format!(
            "{verb} ROLE {ident} WITH LOGIN INHERIT PASSWORD {} VALID UNTIL {}; GRANT {} TO {ident}",
            quote_literal(&scram_verifier(password))?,
            timestamp_literal(role.valid_until)?,
            quote_ident(role.group)?,
        );
        admin
            .client
            .batch_execute(&sql)
            .await
            .map_err(|e| self.sql_error(&what, &e))?;
        info!(role = role.name, group = role.group, valid_until = %role.valid_until, "JIT role ready");
        Ok(())
    }

    /// The `VALID UNTIL` of `role`: `None` when the role does not exist, `Some(None)` when it
    /// has no limit.
    pub async fn valid_until(
        &self,
        role: &str,
    ) -> Result<Option<Option<OffsetDateTime>>, BackendError> {
        let admin = self.admin().await?;
        let row = admin
            .client
            .query_opt(
                "SELECT CASE WHEN rolvaliduntil = 'infinity' THEN NULL ELSE rolvaliduntil END \
                 FROM pg_roles WHERE rolname = $1",
                &[&role],
            )
            .await
            .map_err(|e| self.sql_error(&format!("read VALID UNTIL of role {role:?}"), &e))?;
        Ok(row.map(|r| r.get::<_, Option<OffsetDateTime>>(0)))
    }

    /// Revokes a JIT role: `NOLOGIN`, its sessions ended, what it owns handed to the admin
    /// role (`REASSIGN OWNED`) and its remaining privileges dropped (`DROP OWNED`) in every
    /// database where that is needed, then `DROP ROLE`. Dropping a role that is gone succeeds.
    pub async fn drop_jit_role(&self, name: &str) -> Result<JitRoleDropped, BackendError> {
        check_jit_name(name)?;
        let admin = self.admin().await?;
        let what = format!("drop JIT role {name:?}");
        let ident = quote_ident(name)?;
        if !self.disable(&admin, name, &what).await? {
            return Ok(JitRoleDropped {
                existed: false,
                sessions_ended: 0,
            });
        }
        let sessions_ended = self.end_sessions(&admin, name).await?;
        if !admin.superuser {
            // REASSIGN / DROP OWNED need the privileges of the role being emptied; CREATEROLE
            // may grant them. The membership goes away with the role.
            admin
                .client
                .batch_execute(&format!("GRANT {ident} TO CURRENT_USER"))
                .await
                .map_err(|e| self.sql_error(&what, &e))?;
        }
        let empty = format!("REASSIGN OWNED BY {ident} TO CURRENT_USER; DROP OWNED BY {ident}");
        admin
            .client
            .batch_execute(&empty)
            .await
            .map_err(|e| self.sql_error(&what, &e))?;
        let drop = format!("DROP ROLE IF EXISTS {ident}");
        match admin.client.batch_execute(&drop).await {
            Ok(()) => {}
            Err(e) if e.code() == Some(&SqlState::DEPENDENT_OBJECTS_STILL_EXIST) => {
                // It owns objects or holds privileges in other databases: empty it there too.
                self.empty_role_in_other_databases(&admin, name, &empty)
                    .await?;
                admin
                    .client
                    .batch_execute(&drop)
                    .await
                    .map_err(|e| self.sql_error(&what, &e))?;
            }
            Err(e) => return Err(self.sql_error(&what, &e)),
        }
        info!(role = name, sessions_ended, "JIT role dropped");
        Ok(JitRoleDropped {
            existed: true,
            sessions_ended,
        })
    }

    async fn empty_role_in_other_databases(
        &self,
        admin: &Admin,
        name: &str,
        empty: &str,
    ) -> Result<(), BackendError> {
        let rows = admin
            .client
            .query(
                "SELECT datname::text FROM pg_database WHERE datallowconn AND datname <> current_database()",
                &[],
            )
            .await
            .map_err(|e| self.sql_error("list databases", &e))?;
        for row in rows {
            let db: String = row.get(0);
            let mut config = self.config.clone();
            config.dbname(&db);
            let client = self.connect(&config).await.map_err(|e| {
                self.error(
                    crate::BackendErrorKind::Transient,
                    format!(
                        "postgres target on {}: drop role {name:?}: cannot connect to database {db:?} to empty the role there: {}",
                        self.server,
                        describe_error(&e)
                    ),
                )
            })?;
            client.batch_execute(empty).await.map_err(|e| {
                self.sql_error(
                    &format!("drop role {name:?}: empty it in database {db:?}"),
                    &e,
                )
            })?;
        }
        Ok(())
    }

    /// The role a version of `cred` uses: the version's own, else the credential's.
    fn role_of<'c>(
        cred: &'c Credential,
        version: Option<&'c Version>,
    ) -> Result<&'c str, BackendError> {
        version
            .and_then(|v| v.login.as_deref())
            .or(cred.settings.role.as_deref())
            .ok_or_else(|| {
                BackendError::permanent(format!(
                    "postgres target: credential {} names no role; register it with --role NAME",
                    cred.id
                ))
            })
    }

    fn version_of(cred: &Credential, version: Uuid) -> Result<&Version, BackendError> {
        cred.version(version).ok_or_else(|| {
            BackendError::permanent(format!(
                "postgres target: credential {} has no version {version} in the record handed to the target",
                cred.id
            ))
        })
    }
}

/// True when `version`'s value is (or may still be) the password of `role`: it was set there
/// (a pending version only once its `set` step began, and not after a rollback gave the role
/// back its holder's value), and no newer version on that role has been set and tested (pending
/// ones have not, or not for sure).
fn holds_role(cred: &Credential, version: Uuid, role: &str) -> bool {
    let Some(pos) = cred.versions.iter().position(|v| v.id == version) else {
        return true;
    };
    let v = &cred.versions[pos];
    if v.stage == Stage::Pending && v.at_target != AtTarget::Set {
        return false;
    }
    !cred.versions[pos + 1..].iter().any(|v| {
        v.login.as_deref() == Some(role) && matches!(v.stage, Stage::Current | Stage::Previous)
    })
}

fn describe_config(c: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = c
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                Host::Tcp(name) => name.clone(),
                #[cfg(unix)]
                Host::Unix(path) => path.display().to_string(),
            };
            let port = c
                .get_ports()
                .get(i)
                .or_else(|| c.get_ports().first())
                .copied()
                .unwrap_or(5432);
            format!("{host}:{port}")
        })
        .collect();
    let user = c.get_user().unwrap_or("(default user)");
    let password = if c.get_password().is_some() {
        ":[redacted]"
    } else {
        ""
    };
    format!(
        "postgres://{user}{password}@{}/{}",
        if hosts.is_empty() {
            "localhost".to_owned()
        } else {
            hosts.join(",")
        },
        c.get_dbname().unwrap_or(user)
    )
}

impl Target for PostgresTarget {
    /// Sets the password of the version's role. With `alternating`, a role that does not
    /// exist yet is created as a member of the base role, and the other role of the pair is
    /// disabled when no live version holds it (taking over both at registration).
    fn apply<'a>(
        &'a self,
        cred: &'a Credential,
        version: Uuid,
        value: &'a Secret,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            let v = Self::version_of(cred, version)?;
            let role = Self::role_of(cred, Some(v))?;
            let what = format!("credential {} version {version}", cred.id);
            let admin = self.admin().await?;
            let alternating = cred.settings.logins().len() > 1;
            let create_in = if alternating {
                cred.settings.role.as_deref()
            } else {
                None
            };
            self.set_password(&admin, role, value, create_in, &what)
                .await?;
            if alternating {
                for other in cred.settings.logins().iter().filter(|l| *l != role) {
                    let held = cred.versions.iter().any(|w| {
                        w.id != version
                            && w.stage.is_live()
                            && w.login.as_deref() == Some(other.as_str())
                    });
                    if !held && self.disable(&admin, other, &what).await? {
                        info!(credential = %cred.id, role = %other, "took over the unused role of the pair: NOLOGIN, no password");
                    }
                }
            }
            info!(credential = %cred.id, %version, role, "password set");
            Ok(())
        })
    }

    fn test<'a>(
        &'a self,
        cred: &'a Credential,
        version: Uuid,
        value: &'a Secret,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            let role = Self::role_of(cred, cred.version(version))?;
            match self.login(role, value).await? {
                Login::Accepted => Ok(()),
                Login::Refused => Err(self.error(
                    crate::BackendErrorKind::Transient,
                    format!(
                        "postgres target on {}: credential {} version {version}: the new password of role {role:?} was refused at login right after it was set; is another tool changing this role's password?",
                        self.server, cred.id
                    ),
                )),
            }
        })
    }

    fn accepts<'a>(
        &'a self,
        cred: &'a Credential,
        version: Uuid,
        value: &'a Secret,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        Box::pin(async move {
            let role = Self::role_of(cred, cred.version(version))?;
            Ok(self.login(role, value).await? == Login::Accepted)
        })
    }

    /// When the version still holds its role (no newer version was set on it): `NOLOGIN`, no
    /// password, every session of the role ended. A version whose role already moved on needs
    /// nothing at the target, except after a leak: then the role's sessions are ended too,
    /// since those opened with the leaked value cannot be told apart. With the value known,
    /// a login with it must fail afterwards.
    fn invalidate<'a>(
        &'a self,
        cred: &'a Credential,
        version: Uuid,
        value: Option<&'a Secret>,
        reason: RevokeReason,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            let role = Self::role_of(cred, cred.version(version))?;
            let what = format!("credential {} version {version}", cred.id);
            let admin = self.admin().await?;
            let mut holds = holds_role(cred, version, role);
            if !holds
                && let Some(v) = value
                && self.login(role, v).await? == Login::Accepted
            {
                warn!(credential = %cred.id, %version, role, "an older version's value still logs in; disabling the role");
                holds = true;
            }
            if holds {
                self.disable(&admin, role, &what).await?;
            }
            if holds || reason == RevokeReason::Leak {
                let ended = self.end_sessions(&admin, role).await?;
                info!(credential = %cred.id, %version, role, sessions_ended = ended, disabled = holds, "role invalidated");
            } else {
                debug!(credential = %cred.id, %version, role, "the role's password already moved on; nothing to do at the target");
            }
            if let Some(v) = value
                && self.login(role, v).await? == Login::Accepted
            {
                return Err(self.error(
                    crate::BackendErrorKind::Permanent,
                    format!(
                        "postgres target on {}: {what}: the revoked value still logs in as role {role:?} after NOLOGIN; check that the role is not a superuser and that pg_hba.conf does not trust this connection",
                        self.server
                    ),
                ));
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credential(versions: &[(Stage, &str)]) -> Credential {
        use keyloop_core::{BackendSettings, Fingerprint, Policy, StoreKind, TargetKind};
        let at = time::macros::datetime!(2026-01-01 0:00 UTC);
        Credential {
            id: "pg/app".parse().unwrap(),
            store: StoreKind::Local,
            target: TargetKind::Postgres,
            policy: Policy {
                max_age_secs: None,
                grace_secs: 0,
                idle_revoke_after_secs: None,
                owner: None,
            },
            settings: BackendSettings {
                role: Some("app".into()),
                ..BackendSettings::default()
            },
            versions: versions
                .iter()
                .enumerate()
                .map(|(i, (stage, login))| Version {
                    id: Uuid::from_u128(i as u128 + 1),
                    stage: *stage,
                    fingerprint: Fingerprint {
                        sha256: None,
                        sha1: None,
                    },
                    created_by: format!("op-{i}"),
                    login: Some((*login).to_owned()),
                    created_at: at,
                    activated_at: None,
                    demoted_at: None,
                    revoked_at: None,
                    revoke_reason: None,
                    revoked_by: None,
                    at_target: AtTarget::Set,
                })
                .collect(),
            created_at: at,
            last_used_at: None,
            claim: None,
            claim_epoch: 0,
            rotation_retry: None,
        }
    }

    #[test]
    fn a_version_holds_its_role_until_a_newer_one_was_set_and_tested_there() {
        let id = Uuid::from_u128;
        // single: the previous value's role already carries the current password.
        let c = credential(&[(Stage::Previous, "app"), (Stage::Current, "app")]);
        assert!(!holds_role(&c, id(1), "app"));
        assert!(holds_role(&c, id(2), "app"));
        // A pending version on the role may not be set yet: the older one still holds it.
        let c = credential(&[(Stage::Current, "app"), (Stage::Pending, "app")]);
        assert!(holds_role(&c, id(1), "app"));
        // alternating: each version holds its own role.
        let c = credential(&[(Stage::Previous, "app_a"), (Stage::Current, "app_b")]);
        assert!(holds_role(&c, id(1), "app_a"));
        assert!(holds_role(&c, id(2), "app_b"));
        // A revoked newer version no longer holds anything.
        let c = credential(&[(Stage::Previous, "app"), (Stage::Revoked, "app")]);
        assert!(holds_role(&c, id(1), "app"));
        // A pending version never set, or rolled back, does not hold the role it shares with
        // the current one: retiring it must not disable that role.
        for at in [AtTarget::NotSet, AtTarget::RolledBack] {
            let mut c = credential(&[(Stage::Current, "app"), (Stage::Pending, "app")]);
            c.versions[1].at_target = at;
            assert!(!holds_role(&c, id(2), "app"), "{at:?}");
            assert!(holds_role(&c, id(1), "app"));
        }
    }

    #[test]
    fn identifiers_and_literals_are_quoted() {
        assert_eq!(quote_ident("app").unwrap(), "\"app\"");
        assert_eq!(quote_ident("a\"b; DROP").unwrap(), "\"a\"\"b; DROP\"");
        assert!(quote_ident("").is_err());
        assert!(quote_ident("a\0").is_err());
        assert_eq!(quote_literal("it's").unwrap(), "'it''s'");
        // escape_literal puts a space before `E'`, so the literal cannot glue onto a word
        // before it.
        assert_eq!(quote_literal("a\\'b").unwrap(), " E'a\\\\''b'");
        assert!(quote_literal("\0").is_err());
    }

    #[test]
    fn verifiers_are_salted_scram_and_do_not_contain_the_value() {
        let value = Secret::from("kl_0123456789abcdef0123456789abcdef");
        let v1 = scram_verifier(&value);
        let v2 = scram_verifier(&value);
        assert!(v1.starts_with("SCRAM-SHA-256$4096:"), "{v1}");
        assert_ne!(v1, v2, "a fresh salt each time");
        assert!(!v1.contains(value.expose()));
        assert_eq!(quote_literal(&v1).unwrap(), format!("'{v1}'"));
    }

    #[test]
    fn dsn_is_described_without_its_password_and_bad_dsns_are_not_echoed() {
        let t = PostgresTarget::new(&PostgresConfig::new(Secret::from(
            "postgres://admin:hunter2-pw@db.internal:6543/app",
        )))
        .unwrap();
        assert_eq!(
            t.server(),
            "postgres://admin:[redacted]@db.internal:6543/app"
        );
        assert!(!format!("{t:?}").contains("hunter2"));
        let t = PostgresTarget::new(&PostgresConfig::new(Secret::from(
            "host=/run/postgresql user=keyloop password=hunter2-pw",
        )))
        .unwrap();
        assert_eq!(
            t.server(),
            "postgres://keyloop:[redacted]@/run/postgresql:5432/keyloop"
        );
        let e = PostgresTarget::new(&PostgresConfig::new(Secret::from(
            "postgres://admin:hunter2-pw@db:notaport/app",
        )))
        .unwrap_err();
        assert!(!e.message.contains("hunter2"), "{}", e.message);
        assert!(e.message.contains("does not parse"), "{}", e.message);
    }

    #[test]
    fn jit_names_are_unique_per_lease_and_valid_until_is_kept_to_the_microsecond() {
        let lease = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        assert_eq!(
            jit_role_name(lease),
            "kl_jit_0123456789abcdef0123456789abcdef"
        );
        assert!(check_jit_name(&jit_role_name(lease)).is_ok());
        assert!(
            check_jit_name("app").is_err(),
            "an application role is never dropped as JIT"
        );
        let at = time::macros::datetime!(2026-11-29 12:00:00.123456789 +02:00);
        assert_eq!(
            timestamp_literal(at).unwrap(),
            "'2026-11-29T10:00:00.123456Z'"
        );
    }
}
