//! The admin side of the `postgres` target: the DSN (never printed with its password), and
//! the one admin connection, opened at first use, checked for the privileges keyloop needs and
//! kept while it stays open.

use super::{
    Admin, PostgresConfig, PostgresTarget, describe_error, is_auth_refusal, quote_ident,
    quote_literal,
};
use crate::{BackendError, redact};
use keyloop_core::Retry;
use std::str::FromStr;
use std::sync::Arc;
use tokio::sync::Mutex;
use tokio_postgres::Client;
use tokio_postgres::config::Host;
use tokio_postgres::error::SqlState;
use tracing::{debug, warn};

impl PostgresTarget {
    /// Parses the DSN; connects at first use. A DSN that does not parse is an error that does
    /// not repeat it.
    pub fn new(config: &PostgresConfig) -> Result<Self, BackendError> {
        let dsn = config.dsn.expose();
        let bad_tls = |e: String| {
            BackendError::permanent(redact(
                format!(
                    "postgres target: the TLS settings of the admin DSN (--postgres-dsn / KEYLOOP_POSTGRES_DSN): {e}"
                ),
                &[dsn],
            ))
        };
        let (rest, ssl) = super::tls::split(dsn).map_err(bad_tls)?;
        let tls = super::tls::MakeRustls::new(&ssl).map_err(bad_tls)?;
        let mut parsed = tokio_postgres::Config::from_str(&rest).map_err(|e| {
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
        parsed.ssl_mode(ssl.mode.for_tokio_postgres());
        let server = describe_config(&parsed);
        if ssl.mode == super::tls::SslMode::Require && ssl.unverified() {
            warn!(server = %server, "postgres target: sslmode=require encrypts but does not verify the server; give sslrootcert, or sslmode=verify-full, to verify it");
        }
        Ok(Self {
            config: parsed,
            server,
            timeout: config.timeout,
            tls,
            admin: Mutex::new(None),
        })
    }

    /// The server and admin user, password replaced: `postgres://admin:[redacted]@host:5432/db`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Removes the admin password from a message, whatever a library put into it.
    pub(super) fn clean(&self, text: String) -> String {
        match self
            .config
            .get_password()
            .and_then(|p| std::str::from_utf8(p).ok())
        {
            Some(p) => redact(text, &[p]),
            None => text,
        }
    }

    pub(super) fn error(&self, kind: Retry, text: String) -> BackendError {
        BackendError {
            kind,
            message: self.clean(text),
            untouched: false,
        }
    }

    /// The database logins are tested against: the DSN's, else PostgreSQL's default (the user).
    pub(super) fn database(&self) -> String {
        self.config
            .get_dbname()
            .or(self.config.get_user())
            .unwrap_or("postgres")
            .to_owned()
    }

    pub(super) async fn connect(
        &self,
        config: &tokio_postgres::Config,
    ) -> Result<Client, tokio_postgres::Error> {
        let (client, connection) = config.connect(self.tls.clone()).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(error = %e, "postgres connection ended");
            }
        });
        Ok(client)
    }

    /// The admin connection: the kept one while it is open, else a new one, checked for the
    /// privileges keyloop needs.
    pub(super) async fn admin(&self) -> Result<Arc<Admin>, BackendError> {
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
            let tls = super::tls::is_tls_refusal(&e);
            let kind = if is_auth_refusal(&e) || tls {
                Retry::Permanent
            } else {
                Retry::Transient
            };
            let hint = if tls {
                "TLS was refused: check sslmode and sslrootcert (the CA that signed the server's certificate; verify-full also checks the host name) in --postgres-dsn / KEYLOOP_POSTGRES_DSN"
            } else if kind == Retry::Permanent {
                "check the user and password in --postgres-dsn / KEYLOOP_POSTGRES_DSN (a server that refuses sessions without TLS needs sslmode=require or stronger)"
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
                Retry::Permanent,
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
                Retry::Permanent,
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

    pub(super) fn sql_error(&self, what: &str, e: &tokio_postgres::Error) -> BackendError {
        let kind = match e.code() {
            // Lost connection, lock timeout, serialization: worth a retry.
            None => Retry::Transient,
            Some(c)
                if *c == SqlState::LOCK_NOT_AVAILABLE
                    || *c == SqlState::T_R_SERIALIZATION_FAILURE
                    || *c == SqlState::ADMIN_SHUTDOWN =>
            {
                Retry::Transient
            }
            Some(_) => Retry::Permanent,
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
