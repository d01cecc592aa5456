//! Login roles of the `postgres` target: looking one up, logging in as it (how every step
//! proves its result), ending its sessions, setting its password (as a SCRAM verifier) and
//! disabling it.

use super::{
    Admin, Login, PostgresTarget, describe_error, is_auth_refusal, quote_ident, quote_literal,
    scram_verifier,
};
use crate::{BackendError, redact};
use keyloop_core::Retry;
use keyloop_core::Secret;

impl PostgresTarget {
    pub(super) async fn role_exists(
        &self,
        admin: &Admin,
        role: &str,
    ) -> Result<bool, BackendError> {
        admin
            .client
            .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role])
            .await
            .map(|r| r.is_some())
            .map_err(|e| self.sql_error(&format!("look up role {role:?}"), &e))
    }

    /// Tries to log in as `role` with `value` (to the admin DSN's database). `Refused` when
    /// the server rejects the password or the role may not log in.
    pub(super) async fn login(&self, role: &str, value: &Secret) -> Result<Login, BackendError> {
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
                        Retry::Permanent,
                        format!("postgres target: logged in as {role:?} but the server says the session user is {who:?}"),
                    ));
                }
                Ok(Login::Accepted)
            }
            Err(e) if is_auth_refusal(&e) => Ok(Login::Refused),
            Err(e) => {
                let text = redact(describe_error(&e), &[value.expose()]);
                let kind = if e.code().is_some() {
                    Retry::Permanent
                } else {
                    Retry::Transient
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
    pub(super) async fn end_sessions(
        &self,
        admin: &Admin,
        role: &str,
    ) -> Result<u64, BackendError> {
        let wait_ms = i64::try_from(self.timeout.as_millis()).unwrap_or(i64::MAX);
        let what = format!("end the sessions of role {role:?}");
        let ended: i64 = admin
            .client
            .query_one(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, $2)) \
                 FROM pg_stat_activity WHERE usename = $1 AND pid <> pg_backend_pid()",
                &[&role, &wait_ms],
            )
            .await
            .map_err(|e| self.sql_error(&what, &e))?
            .get(0);
        // What counts is what is left: a session that exited on its own between the scan and
        // its termination is not terminated (false), and gone all the same.
        let left: i64 = admin
            .client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND pid <> pg_backend_pid()",
                &[&role],
            )
            .await
            .map_err(|e| self.sql_error(&what, &e))?
            .get(0);
        if left > 0 {
            return Err(self.error(
                Retry::Transient,
                format!(
                    "postgres target on {}: {left} sessions of role {role:?} were still there after waiting {wait_ms} ms for them to end",
                    self.server
                ),
            ));
        }
        Ok(u64::try_from(ended).unwrap_or_default())
    }

    /// `LOGIN` with the verifier of `value`, valid without end. Creates the role (as a member
    /// of `create_in`) when it does not exist and `create_in` is given.
    pub(super) async fn set_password(
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
                    Retry::Permanent,
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
                Retry::Permanent,
                format!(
                    "postgres target on {}: {what}: role {role:?} does not exist; create it (CREATE ROLE {ident} LOGIN) and register again — keyloop takes over an existing role's password",
                    self.server
                ),
            ))
        }
    }

    /// `NOLOGIN`, no password: nothing logs in as `role` any more.
    pub(super) async fn disable(
        &self,
        admin: &Admin,
        role: &str,
        what: &str,
    ) -> Result<bool, BackendError> {
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
}
