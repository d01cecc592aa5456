//! Rotating the master key itself, as the runbook says: the control plane and workers get the
//! new key and the previous one and are restarted (they read values under either and seal
//! under the new one: a rotation meanwhile writes under the new key), `keyloop store rekey`
//! re-seals every value and moves the store's key check value (run again, it finds nothing to
//! do), and then, with the new key alone, every value reads back as it was while a process with
//! the previous key alone is refused before it reads anything.

use crate::harness::Env;
use keyloop_backends::MasterKey;
use std::process::Stdio;

async fn with_keys(env: &Env, args: &[&str]) -> std::process::Output {
    env.keyloop_with_keys()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .unwrap()
}

fn text(out: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_master_key_is_rotated_without_losing_a_value_and_the_old_key_is_refused_after() {
    let env = Env::start().await;
    let ids = ["svc/rekey-a", "svc/rekey-b", "svc/rekey-c"];
    let mut values = Vec::new();
    for id in ids {
        values.push(env.register_and_reveal(id).await);
    }
    let old = env.master_key();
    let new = MasterKey::generate();
    let new_file = env.file("new-master.key", new.to_hex().as_bytes());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&new_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    // Without the previous key, the new key alone is refused: nothing was re-keyed yet.
    env.set_env("KEYLOOP_MASTER_KEY_FILE", new_file.display().to_string());
    let out = with_keys(&env, &["store", "rekey"]).await;
    assert!(!out.status.success());
    assert!(
        text(&out).1.contains("KEYLOOP_MASTER_KEY_PREVIOUS"),
        "{:?}",
        text(&out)
    );

    // Both keys: the control plane reads every value, and a rotation seals under the new key.
    env.set_env("KEYLOOP_MASTER_KEY_PREVIOUS", old.to_hex().to_string());
    let _worker = env.worker("worker", &["rotator", "revoker"]);
    for (id, value) in ids.iter().zip(&values) {
        assert_eq!(&env.ok(&["credential", "reveal", id]).await.trim(), value);
    }
    env.ok(&["rotate", ids[2]]).await;
    let rotated = env
        .ok(&["credential", "reveal", ids[2]])
        .await
        .trim()
        .to_owned();
    assert_ne!(rotated, values[2]);
    values[2] = rotated;

    let out = with_keys(&env, &["store", "rekey", "--json"]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["check_swapped"], true, "{report}");
    assert!(report["resealed"].as_u64().unwrap() >= 2, "{report}");
    assert!(
        report["already"].as_u64().unwrap() >= 1,
        "the rotated value: {report}"
    );
    assert!(!stdout.contains(&values[0]) && !stderr.contains(&values[0]));
    // Again: nothing left to do.
    let again: serde_json::Value = serde_json::from_str(
        text(&with_keys(&env, &["store", "rekey", "--json"]).await)
            .0
            .trim(),
    )
    .unwrap();
    assert_eq!(again["resealed"], 0, "{again}");

    // The new key alone reads every value back.
    env.set_env("KEYLOOP_MASTER_KEY_PREVIOUS", "");
    for (id, value) in ids.iter().zip(&values) {
        assert_eq!(&env.ok(&["credential", "reveal", id]).await.trim(), value);
    }
    // The previous key alone is refused, naming both key ids.
    let old_file = env.dir.path().join("master.key");
    env.set_env("KEYLOOP_MASTER_KEY_FILE", old_file.display().to_string());
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        with_keys(&env, &["worker", "rotator"]),
    )
    .await
    .expect("a rotator with the old key alone is refused at start, not left running");
    let (stdout, stderr) = text(&out);
    assert!(
        !out.status.success(),
        "the old key still opens the store: {stderr}"
    );
    assert!(
        stderr.contains(&keyloop_backends::local::KeyId::of(&new).to_string())
            && stderr.contains(&keyloop_backends::local::KeyId::of(&old).to_string()),
        "{stderr}"
    );
    assert!(!stdout.contains(&values[0]));
}
