//! Unit tests of the `postgres` target that need no server: which version holds which role,
//! quoting, verifiers, the DSN in messages, JIT role names.

use super::jit::{check_jit_name, timestamp_literal};
use super::target::holds_role;
use super::*;
use keyloop_core::{AtTarget, Credential, Stage, Version};
use uuid::Uuid;

fn credential(versions: &[(Stage, &str)]) -> Credential {
    use keyloop_core::{BackendSettings, Policy, StoreKind, TargetKind};
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
            ..Default::default()
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
                fingerprint: None,
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
        consumers: Vec::new(),
        retired: None,
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
