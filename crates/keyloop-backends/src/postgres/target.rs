//! The [`Target`] steps of the `postgres` target for a credential's versions: apply (set the
//! version's role's password), test and accepts (log in), invalidate (disable the role and end
//! its sessions when the version still holds it).

use super::{Login, PostgresTarget};
use crate::{BackendError, Target};
use futures::future::BoxFuture;
use keyloop_core::Retry;
use keyloop_core::{AtTarget, Credential, RevokeReason, Secret, Stage, Version};
use tracing::{debug, info, warn};
use uuid::Uuid;

impl PostgresTarget {
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
pub(super) fn holds_role(cred: &Credential, version: Uuid, role: &str) -> bool {
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
                    Retry::Transient,
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
                    Retry::Permanent,
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
