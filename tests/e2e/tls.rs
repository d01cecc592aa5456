//! TLS to NATS with certificates made by the test: the checked-in `single.conf` serves TLS
//! only (every secured test runs its whole flow over it); a client trusting another CA, or
//! none, is refused with a message that names `--nats-ca`; a server that verifies clients
//! takes keyloop's `--nats-cert`/`--nats-key` and refuses a client without them.

use crate::harness::{Env, KEYLOOP, test_certs};
use keyloop_testkit::TestServer;
use std::process::Stdio;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

/// `keyloop ARGS` against `url` with only the given variables of the NATS connection.
async fn keyloop(url: &str, vars: &[(&str, String)], args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(KEYLOOP);
    for var in [
        "KEYLOOP_NATS_USER",
        "KEYLOOP_NATS_PASSWORD",
        "KEYLOOP_NATS_CA",
        "KEYLOOP_NATS_CERT",
        "KEYLOOP_NATS_KEY",
        "KEYLOOP_MASTER_KEY",
        "KEYLOOP_MASTER_KEY_FILE",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("KEYLOOP_NATS_URL", url)
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd.output().await.unwrap()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn the_deploy_config_serves_tls_only_and_a_client_of_another_ca_is_refused() {
    let env = Env::start_secured().await;
    assert!(env.url.starts_with("tls://"), "{}", env.url);
    // The whole CLI path works over it (the control plane too).
    env.ok(&["credential", "register", "svc/tls", "--store", "local"])
        .await;
    assert!(env.ok(&["credential", "list"]).await.contains("svc/tls"));

    // The server says to anyone who connects that it speaks TLS only.
    let plain = env.server.as_ref().unwrap().url().replace("nats://", "");
    let mut socket = tokio::net::TcpStream::connect(&plain).await.unwrap();
    let mut info = vec![0u8; 4096];
    let n = socket.read(&mut info).await.unwrap();
    let info = String::from_utf8_lossy(&info[..n]);
    assert!(
        info.starts_with("INFO ") && info.contains("\"tls_required\":true"),
        "{info}"
    );

    let ops = |ca: Option<String>| {
        let mut vars = vec![
            ("KEYLOOP_NATS_USER", "ops".to_owned()),
            (
                "KEYLOOP_NATS_PASSWORD",
                crate::harness::nats_password("ops"),
            ),
        ];
        vars.extend(ca.map(|ca| ("KEYLOOP_NATS_CA", ca)));
        vars
    };
    let url = env.url.clone();
    let ok = keyloop(
        &url,
        &ops(Some(test_certs().ca().display().to_string())),
        &["replay"],
    )
    .await;
    assert!(ok.status.success(), "{}", stderr(&ok));

    for (what, vars) in [
        (
            "another CA",
            ops(Some(test_certs().other_ca().display().to_string())),
        ),
        ("the system's roots only", ops(None)),
    ] {
        let out = keyloop(&url, &vars, &["replay"]).await;
        assert!(!out.status.success(), "{what}: connected");
        let err = stderr(&out);
        assert!(
            err.contains("TLS with the NATS server at tls://127.0.0.1:")
                && err.contains("--nats-ca"),
            "{what}: {err}"
        );
        assert!(
            !err.contains(&crate::harness::nats_password("ops")),
            "{err}"
        );
    }
    // A plain URL to it is TLS all the same (the server requires it), and refused the same
    // way without the CA.
    let out = keyloop(env.server.as_ref().unwrap().url(), &ops(None), &["replay"]).await;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--nats-ca"), "{}", stderr(&out));

    // Files that are not there are named before anything is tried.
    let out = keyloop(&url, &ops(Some("/nonexistent/ca.pem".into())), &["replay"]).await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot read --nats-ca /nonexistent/ca.pem"),
        "{}",
        stderr(&out)
    );
    let out = keyloop(&url, &[], &["replay", "--nats-cert", "/tmp/x.pem"]).await;
    assert_eq!(out.status.code(), Some(2), "a certificate without its key");
    assert!(stderr(&out).contains("--nats-key"), "{}", stderr(&out));
}

#[tokio::test]
async fn a_server_that_verifies_clients_takes_keyloops_client_certificate_only() {
    let certs = test_certs();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mtls.conf");
    std::fs::write(
        &config,
        format!(
            "jetstream {{ sync_interval: always }}\ntls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n  timeout: 2\n}}\n",
            certs.server_cert().display(),
            certs.server_key().display(),
            certs.ca().display()
        ),
    )
    .unwrap();
    let server = TestServer::start_with_config(&config, &[], &[]).await;
    let url = crate::harness::tls_url(server.url());
    let ca = ("KEYLOOP_NATS_CA", certs.ca().display().to_string());
    let with_cert = [
        ca.clone(),
        (
            "KEYLOOP_NATS_CERT",
            certs.client_cert().display().to_string(),
        ),
        ("KEYLOOP_NATS_KEY", certs.client_key().display().to_string()),
    ];
    let out = keyloop(&url, &with_cert, &["init"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = keyloop(&url, &with_cert, &["replay", "--json"]).await;
    assert!(out.status.success(), "{}", stderr(&out));

    let out = keyloop(&url, std::slice::from_ref(&ca), &["replay"]).await;
    assert!(
        !out.status.success(),
        "connected without a client certificate"
    );
    let err = stderr(&out);
    assert!(
        err.contains("TLS with the NATS server") && err.contains("--nats-cert"),
        "{err}"
    );
}
