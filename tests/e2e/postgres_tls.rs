//! The postgres target over TLS, against a real PostgreSQL cluster that serves TLS with a
//! certificate made by the test and refuses every session without it (`hostssl` only): each
//! `sslmode` of the admin DSN does what libpq's does — `disable` is refused by the server,
//! `prefer` and `require` encrypt, `verify-ca` checks the chain (another CA is refused) but not
//! the name, `verify-full` checks both (a host name the certificate lacks is refused, and so is
//! a server whose CA is not among the system's roots) — and a refusal says to check `sslmode`
//! and `sslrootcert`. Each registration that works is proved by a login with the value keyloop
//! set; then a leak of one of them is revoked by a worker over `verify-full`.

use crate::harness::{Env, Events, gitleaks_report, path_str, test_certs};
use keyloop_core::LifecycleKind;
use keyloop_testkit::postgres::{TestPostgres, unique_name};
use std::time::Duration;

/// `(user, password, port)` of a `postgres://user:password@127.0.0.1:port/db` DSN.
fn parts(dsn: &str) -> (String, String, u16) {
    let rest = dsn.strip_prefix("postgres://").unwrap();
    let (login, addr) = rest.split_once('@').unwrap();
    let (user, password) = login.split_once(':').unwrap();
    let port = addr.split_once(':').unwrap().1.split('/').next().unwrap();
    (user.into(), password.into(), port.parse().unwrap())
}

#[tokio::test]
async fn every_sslmode_does_what_libpq_does_against_a_server_that_requires_tls() {
    let certs = test_certs();
    let (env, pg) = tokio::join!(Env::start(), TestPostgres::start_with_tls(certs));
    let admin = pg.create_admin().await;
    let (user, password, port) = parts(&admin);
    let ca = certs.ca().display().to_string();
    let other_ca = certs.other_ca().display().to_string();
    let by_name = |host: &str, mode: &str, root: &str| {
        format!(
            "host={host} hostaddr=127.0.0.1 port={port} user={user} password='{password}' dbname=postgres sslmode={mode} sslrootcert='{root}'"
        )
    };
    let cases: Vec<(&str, String, Result<(), &str>)> = vec![
        (
            "disable",
            format!("{admin}?sslmode=disable"),
            Err("no encryption"),
        ),
        ("prefer (the default)", admin.clone(), Ok(())),
        ("require", format!("{admin}?sslmode=require"), Ok(())),
        (
            "verify-ca, another CA",
            format!("{admin}?sslmode=verify-ca&sslrootcert={other_ca}"),
            Err("TLS was refused"),
        ),
        (
            "verify-ca, a name the certificate lacks",
            by_name("not-in-the-cert.example", "verify-ca", &ca),
            Ok(()),
        ),
        (
            "verify-full, a name the certificate lacks",
            by_name("not-in-the-cert.example", "verify-full", &ca),
            Err("TLS was refused"),
        ),
        (
            "verify-full, the system's roots only",
            format!("{admin}?sslmode=verify-full"),
            Err("TLS was refused"),
        ),
        (
            "verify-full",
            format!("{admin}?sslmode=verify-full&sslrootcert={ca}"),
            Ok(()),
        ),
    ];
    let mut registered = Vec::new();
    for (i, (what, dsn, expected)) in cases.iter().enumerate() {
        let role = unique_name("tls_app");
        pg.superuser()
            .await
            .batch_execute(&format!(
                "CREATE ROLE {role} LOGIN PASSWORD 'set-by-a-human-{i}'"
            ))
            .await
            .unwrap();
        env.set_env("KEYLOOP_POSTGRES_DSN", dsn.clone());
        let id = format!("pg/tls-{i}");
        let out = env
            .run(&[
                "credential",
                "register",
                &id,
                "--store",
                "local",
                "--target",
                "postgres",
                "--role",
                &role,
            ])
            .await;
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        match expected {
            Ok(()) => {
                assert!(out.status.success(), "{what}: {err}");
                let value = env
                    .ok(&["credential", "reveal", &id])
                    .await
                    .trim()
                    .to_owned();
                pg.connect_as(&role, &value, "postgres")
                    .await
                    .unwrap_or_else(|e| {
                        panic!("{what}: the value keyloop set does not log in: {e}")
                    });
                registered.push((id, role, value, dsn.clone()));
            }
            Err(says) => {
                assert!(!out.status.success(), "{what}: registered");
                assert!(err.contains(says), "{what}: {err}");
                assert!(
                    err.contains("sslmode") && !err.contains(&password),
                    "{what}: names what to check, never the password: {err}"
                );
                assert!(
                    pg.connect_as(&role, &format!("set-by-a-human-{i}"), "postgres")
                        .await
                        .is_ok(),
                    "{what}: the role is untouched"
                );
            }
        }
    }
    assert_eq!(registered.len(), 4);

    // A worker over verify-full revokes a leaked value: its login fails from then on.
    let (id, role, value, dsn) = registered.pop().unwrap();
    env.set_env("KEYLOOP_POSTGRES_DSN", dsn);
    let events = Events::subscribe(&env.bus).await;
    let _worker = env.worker("worker", &["leak-responder", "rotator", "revoker"]);
    let report = env.file("leak.json", &gitleaks_report(&value, "db.env"));
    env.ok(&["ingest", "gitleaks", path_str(&report)]).await;
    events
        .wait("the leaked value revoked", Duration::from_secs(30), |e| {
            e.iter().any(|e| {
                e.data.kind == LifecycleKind::Revoked && e.subject.as_deref() == Some(id.as_str())
            })
        })
        .await;
    assert!(
        pg.connect_as(&role, &value, "postgres").await.is_err(),
        "the leaked value still logs in"
    );
    // Every session keyloop opened was TLS: the server accepts no other.
    assert!(
        pg.log_text().contains("SSL enabled"),
        "the server logged its TLS sessions"
    );
}
