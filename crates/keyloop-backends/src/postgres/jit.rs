//! The roles of JIT leases: a uniquely named `LOGIN` role per lease, with `VALID UNTIL` the
//! lease's expiry and membership in the scope's group role; revocation ends its sessions,
//! hands over what it owns (in every database) and drops it. Only roles named like
//! [`jit_role_name`] are ever touched.

use super::{Admin, PostgresTarget, describe_error, quote_ident, quote_literal, scram_verifier};
use crate::BackendError;
use keyloop_core::Retry;
use keyloop_core::Secret;
use time::OffsetDateTime;
use tokio_postgres::error::SqlState;
use tracing::info;
use uuid::Uuid;

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
pub(super) fn check_jit_name(name: &str) -> Result<(), BackendError> {
    if name.starts_with(JIT_ROLE_PREFIX) && name.len() <= 63 {
        Ok(())
    } else {
        Err(BackendError::permanent(format!(
            "postgres target: {name:?} is not a JIT role name (they start with {JIT_ROLE_PREFIX} and are at most 63 bytes; see jit_role_name); refusing to create or drop it"
        )))
    }
}

/// `at` as a quoted RFC 3339 literal in UTC, cut to the microsecond PostgreSQL keeps, so the
/// role's `VALID UNTIL` reads back as exactly the lease's expiry.
pub(super) fn timestamp_literal(at: OffsetDateTime) -> Result<String, BackendError> {
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

impl PostgresTarget {
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
                Retry::Permanent,
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
                    Retry::Transient,
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
}
