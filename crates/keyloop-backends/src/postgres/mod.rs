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
//!
//! One file per concern: `admin.rs` (the DSN and the checked admin connection), `login.rs`
//! (login roles: look up, log in, end sessions, set or disable a password), `jit.rs` (the
//! roles of JIT leases), `target.rs` (the [`Target`](crate::Target) steps of versions).

mod admin;
mod jit;
mod login;
mod target;
#[cfg(test)]
mod tests;
pub mod tls;

use crate::BackendError;
use keyloop_core::Secret;
use postgres_protocol::escape::{escape_identifier, escape_literal};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

pub use jit::{JIT_ROLE_PREFIX, JitRole, JitRoleDropped, jit_role_name};

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
    /// TLS as the DSN's `sslmode` asks (see [`tls`]).
    tls: tls::MakeRustls,
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
