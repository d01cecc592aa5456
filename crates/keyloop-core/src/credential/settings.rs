//! Where a credential lives and what accepts it (store, target, strategy, their settings, the
//! format of its values), and its rotation policy.

use crate::value_format::ValueFormat;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where a credential's values live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum StoreKind {
    /// Encrypted in keyloop's own JetStream KV bucket.
    Local,
    /// AWS Secrets Manager: one secret per credential, one secret version per keyloop version,
    /// staged with the labels `AWSPENDING`, `AWSCURRENT` and `AWSPREVIOUS`.
    AwsSm,
}

impl StoreKind {
    /// The kind's name as it appears in JSON and on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::AwsSm => "aws-sm",
        }
    }
}

/// The system that accepts the credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TargetKind {
    /// Nothing outside keyloop checks the value (API tokens that services verify with keyloop).
    None,
    /// A PostgreSQL login role: the value is its password.
    Postgres,
}

impl TargetKind {
    /// The kind's name as it appears in JSON and on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Postgres => "postgres",
        }
    }
}

/// How much harm a misuse of the credential does: what policies test to ask for an approval
/// before a manual action (`credential register --blast-radius`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BlastRadius {
    /// The default.
    #[default]
    Low,
    /// Production data, money, externally visible actions.
    High,
}

impl BlastRadius {
    /// The name as it appears in JSON, on the command line and in policies.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::High => "high",
        }
    }

    /// Whether it is the default (kept out of JSON then).
    pub fn is_low(&self) -> bool {
        *self == Self::Low
    }
}

/// How a target account's password is rotated, as AWS documents the two strategies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RotationStrategy {
    /// One account; a rotation changes its password, so the old value stops working at once.
    #[default]
    Single,
    /// Two accounts (`<role>_a`, `<role>_b`) used in turn: a rotation sets the password of the
    /// one not in use, so the previous value keeps working on the other until it is retired.
    Alternating,
}

impl RotationStrategy {
    /// The strategy's name as it appears in JSON and on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Single => "single",
            Self::Alternating => "alternating",
        }
    }
}

/// Per-credential settings of its store and target, and the format of its generated values.
/// Empty for `local` + `none` registered before value formats existed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackendSettings {
    /// `aws-sm`: the secret's name or ARN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_id: Option<String>,
    /// `postgres`: the login role; with `alternating`, the base name of `<role>_a` and
    /// `<role>_b` (and the group role they are created in when they do not exist yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// `postgres`: how the role's password is rotated (default `single`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<RotationStrategy>,
    /// How every value generated for the credential is written (registration and each
    /// rotation). Registration records one; a record without it (written before the field
    /// existed) is `hex`, the format it was generated in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_format: Option<ValueFormat>,
}

impl BackendSettings {
    /// True when nothing is set (the `local` + `none` case), so the field is left out of JSON.
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }

    /// The strategy, `single` unless set.
    pub fn strategy(&self) -> RotationStrategy {
        self.strategy.unwrap_or_default()
    }

    /// The format of the credential's generated values, `hex` unless set.
    pub fn value_format(&self) -> ValueFormat {
        self.value_format.unwrap_or_default()
    }

    /// The target accounts a credential's versions may belong to: `[role]` for `single`,
    /// `[<role>_a, <role>_b]` for `alternating`; empty without a role.
    pub fn logins(&self) -> Vec<String> {
        match (&self.role, self.strategy()) {
            (None, _) => Vec::new(),
            (Some(r), RotationStrategy::Single) => vec![r.clone()],
            (Some(r), RotationStrategy::Alternating) => vec![format!("{r}_a"), format!("{r}_b")],
        }
    }

    /// The inventory keys that bind what these settings manage outside keyloop — each
    /// PostgreSQL login role (with `alternating`, the base role too) and the AWS secret — to one
    /// credential, so two credentials never fight over one password. Roles are hex-encoded
    /// (any text is a valid role name); a secret is known by its name, also when given as an
    /// ARN (`arn:…:secret:NAME-AbCdEf`), and bound by a digest of it.
    pub fn bindings(&self, store: StoreKind, target: TargetKind) -> Vec<String> {
        use sha2::{Digest, Sha256};
        let mut keys = Vec::new();
        if target == TargetKind::Postgres {
            let mut roles = self.logins();
            if let Some(base) = &self.role
                && !roles.contains(base)
            {
                roles.push(base.clone());
            }
            keys.extend(
                roles
                    .iter()
                    .map(|r| format!("bind.postgres.{}", hex::encode(r.as_bytes()))),
            );
        }
        if store == StoreKind::AwsSm
            && let Some(id) = &self.secret_id
        {
            let name = secret_name(id);
            keys.push(format!(
                "bind.aws-sm.{}",
                hex::encode(Sha256::digest(name.as_bytes()))
            ));
        }
        keys
    }

    /// Checks that the settings fit the store and target they are for; the error says which
    /// flag to fix.
    pub fn check(&self, store: StoreKind, target: TargetKind) -> Result<(), SettingsError> {
        match store {
            StoreKind::AwsSm => match self.secret_id.as_deref() {
                None | Some("") => {
                    return Err(SettingsError(
                        "the aws-sm store needs a secret id (--secret-id NAME)".into(),
                    ));
                }
                Some(id) if id.len() > 2048 => {
                    return Err(SettingsError(
                        "--secret-id is longer than 2048 characters".into(),
                    ));
                }
                Some(_) => {}
            },
            StoreKind::Local if self.secret_id.is_some() => {
                return Err(SettingsError(
                    "--secret-id only applies to --store aws-sm".into(),
                ));
            }
            StoreKind::Local => {}
        }
        match target {
            TargetKind::Postgres => {
                let Some(role) = self.role.as_deref() else {
                    return Err(SettingsError(
                        "the postgres target needs a login role (--role NAME)".into(),
                    ));
                };
                // NAMEDATALEN is 64: names are at most 63 bytes, and `alternating` appends `_a`.
                let max = match self.strategy() {
                    RotationStrategy::Single => 63,
                    RotationStrategy::Alternating => 61,
                };
                if role.is_empty() || role.len() > max || role.contains('\0') {
                    return Err(SettingsError(format!(
                        "--role must be 1 to {max} bytes without NUL for strategy {}",
                        self.strategy().name()
                    )));
                }
                if role.starts_with("pg_") {
                    return Err(SettingsError(
                        "--role must not start with `pg_` (reserved for PostgreSQL's own roles)"
                            .into(),
                    ));
                }
            }
            TargetKind::None if self.role.is_some() || self.strategy.is_some() => {
                return Err(SettingsError(
                    "--role and --strategy only apply to --target postgres".into(),
                ));
            }
            TargetKind::None => {}
        }
        Ok(())
    }
}

/// The name of an AWS secret given by name or by ARN: a full ARN ends in `:secret:` and the
/// name with a dash and six characters AWS added.
fn secret_name(id: &str) -> &str {
    let Some(rest) = id
        .strip_prefix("arn:")
        .and_then(|a| a.split_once(":secret:"))
        .map(|(_, name)| name)
    else {
        return id;
    };
    match rest.rsplit_once('-') {
        Some((name, suffix))
            if suffix.len() == 6 && suffix.bytes().all(|b| b.is_ascii_alphanumeric()) =>
        {
            name
        }
        _ => rest,
    }
}

/// Store or target settings that do not fit (see [`BackendSettings::check`]).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct SettingsError(String);

/// How a credential is kept fresh.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Rotate when the current version is this old (seconds). `None`: only on demand or leak.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_secs: Option<u64>,
    /// How long the previous version stays valid after a scheduled rotation (seconds).
    #[serde(default)]
    pub grace_secs: u64,
    /// Revoke when unused for this long (seconds). `None`: never for idleness.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_revoke_after_secs: Option<u64>,
    /// Team or person to page about this credential.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// How much harm a misuse does; policies may ask approvals for manual actions on `high`.
    #[serde(default, skip_serializing_if = "BlastRadius::is_low")]
    pub blast_radius: BlastRadius,
    /// Free labels policies may test (`resource.tags.contains("pci")`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

impl Policy {
    /// Checks every duration against its bounds in [`crate::duration`]: `max_age` and
    /// `idle_revoke_after` from 1 s to 10 years, `grace` from 0 to 1 year and never longer
    /// than `max_age`. Registration calls it before anything is written; workers call it on a
    /// record read back from the inventory before acting on it, since anyone with write
    /// access to the bucket could have put a zero or an overflowing value there.
    pub fn validate(&self) -> Result<(), crate::duration::OutOfRange> {
        use crate::duration::{GRACE, IDLE_REVOKE_AFTER, MAX_AGE};
        if let Some(max_age) = self.max_age_secs {
            MAX_AGE.check(max_age)?;
        }
        if let Some(idle) = self.idle_revoke_after_secs {
            IDLE_REVOKE_AFTER.check(idle)?;
        }
        let grace = self
            .max_age_secs
            .map_or(GRACE, |max_age| GRACE.at_most(max_age, "max-age"));
        grace.check(self.grace_secs)?;
        Ok(())
    }
}

#[cfg(test)]
mod settings_tests {
    use super::*;
    use crate::credential::*;
    use time::macros::datetime;
    use uuid::Uuid;

    fn alternating(versions: &[(Stage, &str)]) -> Credential {
        Credential {
            id: "pg/app".parse().unwrap(),
            store: StoreKind::Local,
            target: TargetKind::Postgres,
            policy: Policy {
                max_age_secs: None,
                grace_secs: 0,
                idle_revoke_after_secs: None,
                owner: None,
                ..Default::default()
            },
            settings: BackendSettings {
                role: Some("app".into()),
                strategy: Some(RotationStrategy::Alternating),
                ..BackendSettings::default()
            },
            versions: versions
                .iter()
                .enumerate()
                .map(|(i, (stage, login))| Version {
                    id: Uuid::from_u128(i as u128 + 1),
                    stage: *stage,
                    fingerprint: None,
                    created_by: format!("op-{i}"),
                    login: Some((*login).to_owned()),
                    created_at: datetime!(2026-01-01 0:00 UTC),
                    activated_at: None,
                    demoted_at: None,
                    revoked_at: None,
                    revoke_reason: None,
                    revoked_by: None,
                    at_target: AtTarget::Set,
                })
                .collect(),
            created_at: datetime!(2026-01-01 0:00 UTC),
            last_used_at: None,
            claim: None,
            consumers: Vec::new(),
            retired: None,
            claim_epoch: 0,
            rotation_retry: None,
        }
    }

    #[test]
    fn alternating_versions_take_the_role_the_current_one_does_not_use() {
        assert_eq!(
            alternating(&[]).login_for_new_version().as_deref(),
            Some("app_a")
        );
        let c = alternating(&[(Stage::Current, "app_a")]);
        assert_eq!(c.login_for_new_version().as_deref(), Some("app_b"));
        let c = alternating(&[(Stage::Previous, "app_a"), (Stage::Current, "app_b")]);
        assert_eq!(c.login_for_new_version().as_deref(), Some("app_a"));
        // The current one leaked and was revoked: the live previous keeps its role.
        let c = alternating(&[(Stage::Previous, "app_a"), (Stage::Revoked, "app_b")]);
        assert_eq!(c.login_for_new_version().as_deref(), Some("app_b"));
    }

    #[test]
    fn single_uses_the_role_and_none_has_no_login() {
        let mut c = alternating(&[(Stage::Current, "app")]);
        c.settings.strategy = None;
        assert_eq!(c.login_for_new_version().as_deref(), Some("app"));
        c.settings = BackendSettings::default();
        assert_eq!(c.login_for_new_version(), None);
    }

    #[test]
    fn settings_are_checked_against_store_and_target() {
        let pg = |role: &str, strategy| BackendSettings {
            role: Some(role.into()),
            strategy: Some(strategy),
            ..BackendSettings::default()
        };
        let ok = pg("app", RotationStrategy::Alternating);
        assert!(ok.check(StoreKind::Local, TargetKind::Postgres).is_ok());
        assert!(ok.check(StoreKind::Local, TargetKind::None).is_err());
        assert!(
            ok.check(StoreKind::AwsSm, TargetKind::Postgres).is_err(),
            "aws-sm needs a secret id"
        );
        assert!(
            pg(&"r".repeat(62), RotationStrategy::Alternating)
                .check(StoreKind::Local, TargetKind::Postgres)
                .is_err()
        );
        assert!(
            pg(&"r".repeat(63), RotationStrategy::Single)
                .check(StoreKind::Local, TargetKind::Postgres)
                .is_ok()
        );
        assert!(
            pg("pg_monitor", RotationStrategy::Single)
                .check(StoreKind::Local, TargetKind::Postgres)
                .is_err()
        );
        assert!(
            BackendSettings::default()
                .check(StoreKind::Local, TargetKind::Postgres)
                .is_err()
        );
        let sm = BackendSettings {
            secret_id: Some("prod/app".into()),
            ..Default::default()
        };
        assert!(sm.check(StoreKind::AwsSm, TargetKind::None).is_ok());
        assert!(sm.check(StoreKind::Local, TargetKind::None).is_err());
    }

    #[test]
    fn every_managed_role_and_secret_is_bound_once_whatever_its_spelling() {
        let pg = |role: &str, strategy| BackendSettings {
            role: Some(role.into()),
            strategy,
            ..BackendSettings::default()
        };
        let single = pg("app", None).bindings(StoreKind::Local, TargetKind::Postgres);
        let alternating = pg("app", Some(RotationStrategy::Alternating))
            .bindings(StoreKind::Local, TargetKind::Postgres);
        assert_eq!(single, ["bind.postgres.617070"]);
        assert_eq!(alternating.len(), 3, "app_a, app_b and the base role app");
        assert!(alternating.contains(&single[0]), "both claim role app");
        let a = pg("app_a", None).bindings(StoreKind::Local, TargetKind::Postgres);
        assert!(alternating.contains(&a[0]));
        let aws = |id: &str| BackendSettings {
            secret_id: Some(id.into()),
            ..BackendSettings::default()
        };
        let by_name = aws("prod/db").bindings(StoreKind::AwsSm, TargetKind::None);
        let by_arn = aws("arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/db-Ab12Cd")
            .bindings(StoreKind::AwsSm, TargetKind::None);
        assert_eq!(by_name, by_arn);
        assert_ne!(
            by_name,
            aws("prod/db2").bindings(StoreKind::AwsSm, TargetKind::None)
        );
        assert!(
            BackendSettings::default()
                .bindings(StoreKind::Local, TargetKind::None)
                .is_empty()
        );
        for key in single.iter().chain(&alternating).chain(&by_name) {
            assert!(
                key.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
                "{key} is a valid KV key"
            );
        }
    }

    #[test]
    fn records_without_a_value_format_are_hex_and_new_ones_keep_theirs() {
        let old: BackendSettings = serde_json::from_str(r#"{"role":"app"}"#).unwrap();
        assert_eq!(old.value_format, None);
        assert_eq!(old.value_format(), ValueFormat::Hex);
        let new = BackendSettings {
            value_format: Some(ValueFormat::Checksummed),
            ..old
        };
        let json = serde_json::to_value(&new).unwrap();
        assert_eq!(json["value_format"], "checksummed");
        let back: BackendSettings = serde_json::from_value(json).unwrap();
        assert_eq!(back.value_format(), ValueFormat::Checksummed);
        assert!(
            serde_json::from_str::<BackendSettings>(r#"{"value_format":"base64"}"#).is_err(),
            "an unknown format is refused, not read as hex"
        );
    }

    #[test]
    fn credentials_without_settings_keep_their_json_shape() {
        let c = alternating(&[]);
        let mut plain = c.clone();
        plain.settings = BackendSettings::default();
        plain.target = TargetKind::None;
        let json = serde_json::to_value(&plain).unwrap();
        assert!(json.get("settings").is_none());
        let back: Credential = serde_json::from_value(serde_json::to_value(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }
}
