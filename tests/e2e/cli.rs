//! The CLI's promises to a person: the demo runs on a fresh machine, errors say what to do,
//! output has a `--json` form.

use crate::harness::{Env, KEYLOOP};
use std::process::Stdio;

#[tokio::test]
async fn demo_runs_the_whole_loop_and_exits_zero() {
    let out = tokio::process::Command::new(KEYLOOP)
        .arg("demo")
        .arg("--json")
        .env(
            "KEYLOOP_NATS_SERVER",
            keyloop_testkit::nats_server_binary().await,
        )
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(summary["credential"], "saas/stripe-payouts");
    assert!(summary["time_to_revoke_ms"].as_u64().is_some());
    assert_eq!(summary["duplicate_ingest_deduplicated"], 1);
}

#[tokio::test]
async fn errors_name_the_credential_and_the_next_step() {
    let env = Env::start().await;
    let out = env.run(&["credential", "show", "pg/missing"]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("pg/missing") && stderr.contains("credential list"),
        "{stderr}"
    );

    let out = env
        .run(&["credential", "register", "bad id with spaces"])
        .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid credential id"));

    env.ok(&[
        "credential",
        "register",
        "pg/app",
        "--max-age",
        "30d",
        "--grace",
        "1h",
    ])
    .await;
    let out = env.run(&["credential", "register", "pg/app"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already registered"));

    let out = env
        .run(&["worker", "rotator", "--master-key-file", "/nonexistent"])
        .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("master key"));

    let out = env.run(&["worker", "janitor"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown worker role"));

    let out = env
        .keyloop()
        .args(["credential", "list"])
        .env("KEYLOOP_NATS_URL", "nats://127.0.0.1:1")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no NATS server answers"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn show_list_and_replay_have_json_forms_without_values() {
    let env = Env::start().await;
    let value = env.register_and_reveal("saas/json").await;
    let list = env.ok(&["credential", "list", "--json"]).await;
    let cred: serde_json::Value = serde_json::from_str(list.lines().next().unwrap()).unwrap();
    assert_eq!(cred["id"], "saas/json");
    assert_eq!(cred["versions"][0]["stage"], "current");
    let show = env.ok(&["--json", "credential", "show", "saas/json"]).await;
    // A version shows its fingerprint tag, never a digest a leak could be built from.
    let shown: serde_json::Value = serde_json::from_str(show.trim()).unwrap();
    let tag = shown["versions"][0]["fingerprint"].as_str().unwrap();
    assert!(tag.starts_with("fp:") && tag.len() == 11, "{show}");
    assert!(!show.contains("sha256") && !show.contains("sha1"), "{show}");
    let replay = env
        .ok(&["replay", "--credential", "saas/json", "--json"])
        .await;
    let kinds: Vec<String> = replay
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["data"]["kind"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(kinds, ["created", "used"]);
    for out in [&list, &show, &replay] {
        assert!(!out.contains(&value));
    }
    let init = env.ok(&["init", "--json"]).await;
    let init: serde_json::Value = serde_json::from_str(init.trim()).unwrap();
    assert_eq!(init["streams"].as_array().unwrap().len(), 4);
}

#[tokio::test]
async fn up_starts_its_own_server_and_every_worker_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("nats://127.0.0.1:{port}");
    let nats_server = keyloop_testkit::nats_server_binary().await;
    let keyloop = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(KEYLOOP);
        cmd.args(args)
            .env("KEYLOOP_NATS_URL", &url)
            .env("KEYLOOP_DATA_DIR", dir.path())
            .env("KEYLOOP_NATS_SERVER", &nats_server)
            .env_remove("KEYLOOP_MASTER_KEY")
            .env_remove("KEYLOOP_MASTER_KEY_FILE")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    };
    let log = std::fs::File::create(dir.path().join("up.log")).unwrap();
    let mut up = keyloop(&["up", "--tick-interval", "1s"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();

    // `up` is ready when its dev key exists and the CLI can list credentials through the server
    // it started (a child process's start-up has no event to await, so poll it).
    let mut ready = false;
    for _ in 0..200 {
        if dir.path().join("master.key").is_file()
            && keyloop(&["credential", "list"])
                .output()
                .await
                .unwrap()
                .status
                .success()
        {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let up_log = || std::fs::read_to_string(dir.path().join("up.log")).unwrap_or_default();
    assert!(ready, "keyloop up did not become ready:\n{}", up_log());
    let key = dir.path().join("master.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600,
            "dev key is private"
        );
    }
    assert!(
        up_log().contains("created a dev master key"),
        "{}",
        up_log()
    );

    // The CLI finds the dev key in the data directory; the JIT issuer of `up` answers.
    assert!(
        keyloop(&["credential", "register", "svc/up"])
            .output()
            .await
            .unwrap()
            .status
            .success()
    );
    let value = keyloop(&["credential", "reveal", "svc/up"])
        .output()
        .await
        .unwrap();
    assert!(value.status.success() && value.stdout.starts_with(b"klc_"));
    let task = keyloop(&[
        "task", "start", "t-up", "--agent", "a", "--scope", "read", "--ttl", "1m",
    ])
    .output()
    .await
    .unwrap();
    assert!(
        task.status.success(),
        "{}",
        String::from_utf8_lossy(&task.stderr)
    );

    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(up.id().unwrap().to_string())
        .status();
    let status = tokio::time::timeout(std::time::Duration::from_secs(20), up.wait())
        .await
        .expect("up exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}\n{}", up_log());
    // Its child server is gone with it.
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err(),
        "the child nats-server stopped"
    );
}
