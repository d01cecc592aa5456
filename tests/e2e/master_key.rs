//! The local store is bound to one master key: every process that opens it with another key
//! (`up`, `worker` — the api role included —, `credential register --local`) stops at once and says which key
//! the store expects and which it was given, by id, never the key itself; `keyloop up` never
//! makes a second dev key for a store that has one; and a store from before key check values
//! is upgraded by its own key only.

use crate::harness::Env;
use futures::StreamExt;
use keyloop_backends::MasterKey;
use keyloop_backends::local::{KEY_CHECK_KEY, KeyId};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;
use tokio::process::Command;

/// A key file of `key` (mode 0600) in the env's directory.
fn key_file(env: &Env, name: &str, key: &MasterKey) -> PathBuf {
    let path = env.file(name, key.to_hex().as_bytes());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    path
}

async fn output(mut cmd: Command, args: &[&str]) -> Output {
    tokio::time::timeout(Duration::from_secs(30), cmd.args(args).output())
        .await
        .unwrap_or_else(|_| panic!("keyloop {args:?} did not stop on its own"))
        .unwrap()
}

/// Asserts a refusal: exit 1, each of `expect` in stderr, nothing on stdout, and neither key
/// anywhere in the output.
fn assert_refused(out: &Output, what: &str, expect: &[&str], keys: &[&MasterKey]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what}: {}\n{stderr}",
        out.status
    );
    for e in expect {
        assert!(stderr.contains(e), "{what}: no `{e}` in\n{stderr}");
    }
    assert!(out.stdout.is_empty(), "{what} printed data");
    for k in keys {
        let hex = k.to_hex();
        assert!(
            !stderr.contains(hex.as_str())
                && !String::from_utf8_lossy(&out.stdout).contains(hex.as_str()),
            "{what} printed a master key"
        );
    }
}

async fn key_check(env: &Env) -> Option<String> {
    let kv = env
        .bus
        .kv(&env.bus.topology.secrets_bucket())
        .await
        .unwrap();
    kv.get(KEY_CHECK_KEY)
        .await
        .unwrap()
        .map(|b| String::from_utf8(b.to_vec()).unwrap())
}

#[tokio::test]
async fn every_command_that_opens_the_store_refuses_a_wrong_key_and_names_both_key_ids() {
    let env = Env::start().await;
    let right = env.master_key();
    let value = env.register_and_reveal("svc/keyed").await;
    let wrong = MasterKey::generate();
    let wrong_file = key_file(&env, "wrong.key", &wrong);
    let (right_id, wrong_id) = (KeyId::of(&right).to_string(), KeyId::of(&wrong).to_string());
    let wrong_path = wrong_file.to_str().unwrap();
    let expect = [
        "wrong master key",
        &*format!("belongs to master key id {right_id}"),
        &*format!("the key given has id {wrong_id}"),
        &*format!(
            "came from the key file {wrong_path} (--master-key-file / KEYLOOP_MASTER_KEY_FILE)"
        ),
        "--master-key-file FILE",
        "KEYLOOP_MASTER_KEY",
    ];
    let commands: [&[&str]; 4] = [
        &["worker", "api"],
        &["credential", "register", "svc/other", "--local"],
        &["worker", "revoker", "rotator", "sweeper"],
        &["up", "--tick-interval", "1s"],
    ];
    for args in commands {
        let mut cmd = env.keyloop();
        cmd.env("KEYLOOP_MASTER_KEY_FILE", &wrong_file);
        let out = output(cmd, args).await;
        assert_refused(
            &out,
            &format!("{args:?} with a wrong key file"),
            &expect,
            &[&right, &wrong],
        );
    }
    // The same key from the environment: the message says so.
    let mut cmd = env.keyloop();
    cmd.env_remove("KEYLOOP_MASTER_KEY_FILE")
        .env("KEYLOOP_MASTER_KEY", wrong.to_hex().as_str());
    let out = output(cmd, &["credential", "register", "svc/other", "--local"]).await;
    assert_refused(
        &out,
        "a local registration with a wrong KEYLOOP_MASTER_KEY",
        &[
            &*format!("belongs to master key id {right_id}"),
            "came from the KEYLOOP_MASTER_KEY variable",
        ],
        &[&right, &wrong],
    );

    // Nothing was written with the wrong key; the right one still reads the value.
    let listed = env.ok(&["credential", "list", "--json"]).await;
    assert_eq!(listed.lines().count(), 1, "only svc/keyed: {listed}");
    assert_eq!(
        env.ok(&["credential", "reveal", "svc/keyed"])
            .await
            .trim_end(),
        value
    );
    let check = key_check(&env).await.expect("a key check value");
    assert!(
        check.starts_with(&format!("keyloop-key-check/1 {right_id} ")),
        "{check}"
    );
}

/// `keyloop up` against `env`'s server with its own data directory and no key given.
fn up(env: &Env, data_dir: &Path) -> Command {
    let mut cmd = env.keyloop();
    cmd.env_remove("KEYLOOP_MASTER_KEY_FILE")
        .env("KEYLOOP_DATA_DIR", data_dir)
        .args(["up", "--tick-interval", "1s"]);
    cmd
}

#[tokio::test]
async fn a_second_up_with_another_data_dir_refuses_instead_of_making_a_new_dev_key() {
    let env = Env::start().await;
    let kv = env
        .bus
        .kv(&env.bus.topology.secrets_bucket())
        .await
        .unwrap();
    let mut recorded = kv.watch(KEY_CHECK_KEY).await.unwrap();
    let (first_dir, second_dir) = (env.dir.path().join("up-1"), env.dir.path().join("up-2"));
    let log = std::fs::File::create(env.dir.path().join("up-1.log")).unwrap();
    let mut first = up(&env, &first_dir)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    // The first `up` is using the store once its key check value is recorded.
    tokio::time::timeout(Duration::from_secs(20), recorded.next())
        .await
        .expect("the first `up` records its key")
        .unwrap()
        .unwrap();
    let first_key =
        MasterKey::from_hex(&std::fs::read_to_string(first_dir.join("master.key")).unwrap())
            .unwrap();
    let first_id = KeyId::of(&first_key).to_string();

    let out = output(up(&env, &second_dir), &[]).await;
    assert_refused(
        &out,
        "second up",
        &[
            &*format!("belongs to master key id {first_id}"),
            "no key was given",
            "not creating a new dev key",
            "--master-key-file FILE or KEYLOOP_MASTER_KEY",
            "--data-dir",
        ],
        &[&first_key],
    );
    assert!(
        !second_dir.join("master.key").exists(),
        "no second dev key was made"
    );
    // Given the first one's key, a second `up` would start; the first is still the only owner.
    let check = key_check(&env).await.unwrap();
    assert!(check.contains(&first_id), "{check}");

    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(first.id().unwrap().to_string())
        .status();
    let status = tokio::time::timeout(Duration::from_secs(20), first.wait())
        .await
        .expect("up stops on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn a_store_from_before_key_checks_is_upgraded_by_its_key_and_refused_to_another() {
    let env = Env::start().await;
    let right = env.master_key();
    let value = env.register_and_reveal("svc/old").await;
    // A store written before key check values existed: values, no check value.
    let kv = env
        .bus
        .kv(&env.bus.topology.secrets_bucket())
        .await
        .unwrap();
    kv.purge(KEY_CHECK_KEY).await.unwrap();
    assert_eq!(key_check(&env).await, None);

    let wrong = MasterKey::generate();
    let wrong_file = key_file(&env, "wrong.key", &wrong);
    let wrong_id = KeyId::of(&wrong).to_string();
    let mut cmd = env.keyloop();
    cmd.env("KEYLOOP_MASTER_KEY_FILE", &wrong_file);
    let out = output(cmd, &["credential", "register", "svc/probe", "--local"]).await;
    assert_refused(
        &out,
        "a local registration on an old store with a wrong key",
        &[
            "holds 1 value(s) written before stores recorded their key",
            &*format!("none decrypts with the key given (id {wrong_id})"),
            "--master-key-file FILE",
        ],
        &[&right, &wrong],
    );
    assert_eq!(
        key_check(&env).await,
        None,
        "the wrong key was not recorded"
    );
    // Nor does `up` make a dev key for it.
    let fresh_dir = env.dir.path().join("up-fresh");
    let out = output(up(&env, &fresh_dir), &[]).await;
    assert_refused(
        &out,
        "up on an old store without a key",
        &[
            "holds values sealed under a master key",
            "not creating a new dev key",
        ],
        &[&right],
    );
    assert!(!fresh_dir.join("master.key").exists());

    // Its own key opens it and records the check value on the way.
    env.ok(&["credential", "register", "svc/probe", "--local"])
        .await;
    assert_eq!(
        env.ok(&["credential", "reveal", "svc/old"])
            .await
            .trim_end(),
        value
    );
    let right_id = KeyId::of(&right).to_string();
    let check = key_check(&env).await.expect("recorded by the right key");
    assert!(
        check.starts_with(&format!("keyloop-key-check/1 {right_id} ")),
        "{check}"
    );
    let mut cmd = env.keyloop();
    cmd.env("KEYLOOP_MASTER_KEY_FILE", &wrong_file);
    let out = output(cmd, &["credential", "register", "svc/probe2", "--local"]).await;
    assert_refused(
        &out,
        "a local registration with a wrong key after the upgrade",
        &[&*format!("belongs to master key id {right_id}")],
        &[&right, &wrong],
    );
}

#[tokio::test]
async fn concurrent_first_opens_record_one_key_check_and_every_opener_accepts_it() {
    let env = Env::start().await;
    let kv = env
        .bus
        .js
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket: "race_secrets".into(),
            history: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    let key = MasterKey::generate();
    let opens = (0..8).map(|_| keyloop_backends::LocalStore::open_checked(kv.clone(), &key));
    for opened in futures::future::join_all(opens).await {
        opened.expect("the same key opens the store however the race went");
    }
    let entry = kv
        .entry(KEY_CHECK_KEY)
        .await
        .unwrap()
        .expect("a check value");
    assert_eq!(entry.revision, 1, "recorded once, by the race's winner");
    let other = MasterKey::generate();
    assert!(
        keyloop_backends::LocalStore::open_checked(kv, &other)
            .await
            .is_err(),
        "another key is refused"
    );
}
