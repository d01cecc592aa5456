//! `keyloop ingest serve` through the real binary on a real nats-server: GitHub's partner
//! program (a signed batch naming a managed value is labelled and the value revoked; bad and
//! unknown signatures are refused and publish nothing; a 1,000-token batch is answered whole),
//! GitGuardian's signed webhooks, the generic endpoint's bearer token, the body and rate limits,
//! and a clean stop on SIGTERM. No value ever reaches the server's log.

use crate::harness::{Env, Events, path_str, stream_messages};
use keyloop_core::event::CloudEvent;
use keyloop_core::{Fingerprint, LeakFinding, LifecycleKind, Secret, Stage};
use keyloop_testkit::webhook::{GithubSigner, HttpResponse, gitguardian_headers, post};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Child;

const ALL_ROLES: [&str; 3] = ["leak-responder", "rotator", "revoker"];
const PARTNER: &str = "/github/secret-scanning";

/// A running `keyloop ingest serve`; killed on drop.
struct Serving {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Serving {
    /// Starts `ingest serve` on a free loopback port with `args`, and waits for the line that
    /// says where it listens.
    async fn start(env: &Env, args: &[&str], vars: &[(&str, &str)]) -> Self {
        Self::start_as(env, env.keyloop(), args, vars).await
    }

    /// [`Serving::start`] from `cmd` (`keyloop` as some user).
    async fn start_as(
        env: &Env,
        mut cmd: tokio::process::Command,
        args: &[&str],
        vars: &[(&str, &str)],
    ) -> Self {
        let log = env
            .dir
            .path()
            .join(format!("serve-{}.log", uuid::Uuid::now_v7().simple()));
        cmd.args(["ingest", "serve", "--listen", "127.0.0.1:0", "--json"])
            .args(args)
            .env("RUST_LOG", "debug")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start keyloop ingest serve");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("ingest serve says where it listens within 30 s")
            .unwrap()
            .unwrap_or_else(|| {
                panic!(
                    "ingest serve exited: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            });
        let listening: serde_json::Value = serde_json::from_str(&first).unwrap();
        let addr = listening["listening"].as_str().unwrap().parse().unwrap();
        Self { child, addr, log }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn post(&self, path: &str, headers: &[(&str, String)], body: Vec<u8>) -> HttpResponse {
        post(self.addr, path, headers, body).await
    }

    /// Sends SIGTERM.
    fn terminate(&self) {
        let pid = self.child.id().expect("still running");
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }

    /// Waits until the log shows `line`.
    async fn logged(&self, line: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !self.log_text().contains(line) {
            assert!(
                std::time::Instant::now() < deadline,
                "ingest serve never logged {line:?}:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// SIGTERM, and the exit status.
    async fn stop(&mut self) -> std::process::ExitStatus {
        self.terminate();
        tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("ingest serve stops within 20 s of SIGTERM")
            .unwrap()
    }
}

/// The leak findings stored on `leak.detected`.
async fn leaks(env: &Env) -> Vec<LeakFinding> {
    stream_messages(&env.bus, &env.bus.topology.events_stream())
        .await
        .into_iter()
        .filter(|m| m.subject == env.bus.topology.leak_detected())
        .map(|m| {
            serde_json::from_slice::<CloudEvent<LeakFinding>>(&m.payload)
                .unwrap()
                .data
        })
        .collect()
}

fn sha256_hex(value: &str) -> String {
    Fingerprint::of(&Secret::from(value)).sha256.unwrap()
}

/// A partner-program batch, as GitHub sends it.
fn batch(tokens: &[(&str, &str)]) -> Vec<u8> {
    let matches: Vec<_> = tokens
        .iter()
        .map(|(token, source)| {
            serde_json::json!({
                "token": token,
                "type": "keyloop_token",
                "url": "https://github.com/acme/app/blob/0123456789abcdef0123456789abcdef01234567/deploy/.env",
                "source": source,
            })
        })
        .collect();
    serde_json::to_vec(&matches).unwrap()
}

#[tokio::test]
async fn a_signed_partner_batch_labels_the_managed_token_and_revokes_it() {
    let env = Env::start().await;
    let _worker = env.worker("worker", &ALL_ROLES);
    let value = env.register_and_reveal("saas/partner-token").await;
    let old_version = env.credential("saas/partner-token").await.versions[0].id;
    let signer = GithubSigner::generate("key-current", true);
    let keys = env.file(
        "github-keys.json",
        GithubSigner::key_list(&[&signer]).as_bytes(),
    );
    let events = Events::subscribe(&env.bus).await;
    let mut serving = Serving::start(&env, &["--github-keys", path_str(&keys)], &[]).await;

    let strangers = ["FAKE-partner-e2e-0001", "FAKE-partner-e2e-0002"];
    let body = batch(&[
        (value.as_str(), "content"),
        (strangers[0], "commit"),
        (strangers[1], "issue_comment"),
    ]);
    let headers = signer.headers(&body);
    let answer = serving.post(PARTNER, &headers, body).await;
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(
        answer.json(),
        serde_json::json!([
            {"token_hash": sha256_hex(&value), "token_type": "keyloop_token", "label": "true_positive"},
            {"token_hash": sha256_hex(strangers[0]), "token_type": "keyloop_token", "label": "false_positive"},
            {"token_hash": sha256_hex(strangers[1]), "token_type": "keyloop_token", "label": "false_positive"},
        ])
    );

    events
        .wait(
            "the leaked version revoked and replaced",
            Duration::from_secs(10),
            |evs| {
                evs.iter().any(|e| {
                    e.data.kind == LifecycleKind::Rotated
                        && e.subject.as_deref() == Some("saas/partner-token")
                })
            },
        )
        .await;
    let cred = env.credential("saas/partner-token").await;
    assert_eq!(cred.version(old_version).unwrap().stage, Stage::Revoked);
    assert_ne!(cred.current().unwrap().id, old_version);

    let stored = leaks(&env).await;
    assert_eq!(stored.len(), 3);
    assert_eq!(stored[0].detector, "github:keyloop_token@content");
    assert_eq!(stored[0].location.repo.as_deref(), Some("acme/app"));
    assert_eq!(stored[0].location.file.as_deref(), Some("deploy/.env"));

    // The same batch again: the same labels (a dead version is still keyloop's), nothing new.
    let body = batch(&[(value.as_str(), "content")]);
    let again = serving.post(PARTNER, &signer.headers(&body), body).await;
    assert_eq!(again.json()[0]["label"], "true_positive");
    assert_eq!(leaks(&env).await.len(), 3, "deduplicated");

    assert!(serving.stop().await.success());
    let log = serving.log_text();
    assert!(log.contains("webhook handled"), "{log}");
    for secret in [value.as_str(), strangers[0], strangers[1], &headers[1].1] {
        assert!(
            !log.contains(secret),
            "the log shows a value or signature:\n{log}"
        );
    }
}

#[tokio::test]
async fn bad_or_unknown_signatures_are_refused_and_publish_nothing() {
    let env = Env::start().await;
    let listed = GithubSigner::generate("key-listed", true);
    let unlisted = GithubSigner::generate("key-unlisted", true);
    let keys = env.file(
        "github-keys.json",
        GithubSigner::key_list(&[&listed]).as_bytes(),
    );
    let serving = Serving::start(&env, &["--github-keys", path_str(&keys)], &[]).await;
    let body = batch(&[("FAKE-partner-e2e-0003", "content")]);

    let tampered = batch(&[("FAKE-partner-e2e-0004", "content")]);
    let cases = [
        ("tampered body", listed.headers(&body), tampered),
        (
            "another key's signature",
            vec![
                ("Github-Public-Key-Identifier", listed.id().to_owned()),
                ("Github-Public-Key-Signature", unlisted.sign(&body)),
            ],
            body.clone(),
        ),
        ("unknown key", unlisted.headers(&body), body.clone()),
        ("no signature", vec![], body.clone()),
    ];
    for (case, headers, sent) in cases {
        let answer = serving.post(PARTNER, &headers, sent).await;
        assert_eq!(answer.status, 401, "{case}");
        let error = answer.json()["error"].as_str().unwrap().to_owned();
        assert!(!error.contains("FAKE-partner"), "{case}: {error}");
    }
    assert!(leaks(&env).await.is_empty(), "nothing published");

    // The same body, rightly signed, goes through.
    let answer = serving.post(PARTNER, &listed.headers(&body), body).await;
    assert_eq!(answer.status, 200);
    assert_eq!(leaks(&env).await.len(), 1);
    assert!(!serving.log_text().contains("FAKE-partner"));
}

#[tokio::test]
async fn a_thousand_token_batch_gets_a_thousand_feedback_entries() {
    let env = Env::start().await;
    let value = env.register_and_reveal("saas/batch-token").await;
    let signer = GithubSigner::generate("key-current", true);
    let keys = env.file(
        "github-keys.json",
        GithubSigner::key_list(&[&signer]).as_bytes(),
    );
    let serving = Serving::start(&env, &["--github-keys", path_str(&keys)], &[]).await;
    let tokens: Vec<String> = (0..1_000)
        .map(|i| {
            if i == 500 {
                value.clone()
            } else {
                format!("FAKE-partner-batch-{i:04}")
            }
        })
        .collect();
    let pairs: Vec<(&str, &str)> = tokens.iter().map(|t| (t.as_str(), "content")).collect();
    let body = batch(&pairs);
    let answer = serving.post(PARTNER, &signer.headers(&body), body).await;
    assert_eq!(answer.status, 200);
    let feedback = answer.json();
    let entries = feedback.as_array().unwrap();
    assert_eq!(entries.len(), 1_000);
    for (i, (entry, token)) in entries.iter().zip(&tokens).enumerate() {
        let label = if i == 500 {
            "true_positive"
        } else {
            "false_positive"
        };
        assert_eq!(entry["token_hash"], sha256_hex(token), "entry {i}");
        assert_eq!(entry["label"], label, "entry {i}");
    }
    assert_eq!(leaks(&env).await.len(), 1_000);
}

#[tokio::test]
async fn gitguardian_and_generic_webhooks_are_verified_and_their_values_published() {
    let env = Env::start().await;
    let gg_token = "FAKE-gg-signature-token-e2e";
    let bearer = "FAKE-generic-bearer-e2e";
    let bearer_file = env.file("generic.token", format!("{bearer}\n").as_bytes());
    let mut serving = Serving::start(
        &env,
        &["--generic-token-file", path_str(&bearer_file)],
        &[("KEYLOOP_GITGUARDIAN_TOKEN", gg_token)],
    )
    .await;
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };

    // GitGuardian: a scan result carries its values; an incident event none.
    let scan = serde_json::to_vec(&serde_json::json!({
        "type": "Test", "gitguardian_link": "https://dashboard.gitguardian.com/workspace/1/incidents/2",
        "matches": [{"type": "client_secret", "match": "FAKE-gg-e2e-match-0001"}]
    }))
    .unwrap();
    let ts = format!("{:.6}", now());
    let answer = serving
        .post(
            "/gitguardian",
            &gitguardian_headers(gg_token, &ts, &scan),
            scan.clone(),
        )
        .await;
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(answer.json()["published"], 1);
    let incident = br#"{"source":"GitGuardian","action":"incident_triggered","incident":{"id":7,"secret_hash":"x","hmsl_hash":"y"}}"#.to_vec();
    let answer = serving
        .post(
            "/gitguardian",
            &gitguardian_headers(gg_token, &ts, &incident),
            incident.clone(),
        )
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["published"], 0);
    assert!(
        answer.json()["not_acted_on"]
            .as_str()
            .unwrap()
            .contains("no secret value")
    );
    let stale = format!("{:.0}", now() - 600.0);
    let answer = serving
        .post(
            "/gitguardian",
            &gitguardian_headers(gg_token, &stale, &scan),
            scan.clone(),
        )
        .await;
    assert_eq!(answer.status, 401, "a replay ten minutes late");
    let answer = serving
        .post(
            "/gitguardian",
            &gitguardian_headers("FAKE-gg-wrong", &ts, &scan),
            scan,
        )
        .await;
    assert_eq!(answer.status, 401);

    // Generic: the bearer token, then keyloop's generic lines.
    let lines =
        b"{\"secret\":\"FAKE-generic-e2e-0001\",\"repo\":\"acme/app\"}\n{\"nope\":1}\n".to_vec();
    let answer = serving
        .post(
            "/generic",
            &[("Authorization", "Bearer FAKE-wrong".into())],
            lines.clone(),
        )
        .await;
    assert_eq!(answer.status, 401);
    assert!(
        answer
            .header("www-authenticate")
            .unwrap()
            .starts_with("Bearer")
    );
    let auth = [("Authorization", format!("Bearer {bearer}"))];
    let answer = serving.post("/generic", &auth, lines).await;
    assert_eq!(answer.status, 422, "one line rejected, the other published");
    assert_eq!(answer.json()["published"], 1);
    assert_eq!(answer.json()["rejected"][0]["position"], "line 2");
    let answer = serving
        .post("/generic", &auth, b"secret=FAKE-generic-e2e-0002".to_vec())
        .await;
    assert_eq!(answer.status, 400);
    assert!(!String::from_utf8_lossy(&answer.body).contains("FAKE-generic"));

    // Endpoints not configured are not served.
    let answer = serving.post(PARTNER, &[], b"[]".to_vec()).await;
    assert_eq!(answer.status, 404);

    let stored = leaks(&env).await;
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[0].detector, "gitguardian:client_secret");
    assert_eq!(stored[1].location.repo.as_deref(), Some("acme/app"));
    assert!(serving.stop().await.success());
    let log = serving.log_text();
    for secret in [gg_token, bearer, "FAKE-gg-e2e-match", "FAKE-generic-e2e"] {
        assert!(!log.contains(secret), "the log shows {secret}:\n{log}");
    }
}

#[tokio::test]
async fn bodies_over_the_limit_and_requests_over_the_rate_are_refused() {
    let env = Env::start().await;
    let serving = Serving::start(
        &env,
        &[
            "--max-body-mib",
            "1",
            "--rate-limit",
            "1",
            "--rate-burst",
            "3",
        ],
        &[("KEYLOOP_INGEST_GENERIC_TOKEN", "FAKE-generic-bearer-limits")],
    )
    .await;
    let auth = [(
        "Authorization",
        "Bearer FAKE-generic-bearer-limits".to_owned(),
    )];
    let big = vec![b' '; (1 << 20) + 1];
    let answer = serving.post("/generic", &auth, big).await;
    assert_eq!(answer.status, 413);
    assert!(
        answer.json()["error"]
            .as_str()
            .unwrap()
            .contains("--max-body-mib")
    );
    // Two more within the burst of three, then 429 until a token is back.
    for _ in 0..2 {
        let answer = serving
            .post(
                "/generic",
                &auth,
                b"{\"sha1\":\"a9993e364706816aba3e25717850c26c9cd0d89d\"}".to_vec(),
            )
            .await;
        assert_eq!(answer.status, 200);
    }
    let answer = serving.post("/generic", &auth, b"{}".to_vec()).await;
    assert_eq!(answer.status, 429);
    assert_eq!(answer.header("retry-after"), Some("1"));
    // Health probes are not limited.
    let mut client = keyloop_testkit::webhook::HttpClient::connect(serving.addr)
        .await
        .unwrap();
    let health = client
        .send("GET", "/healthz", &[], Vec::new())
        .await
        .unwrap();
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["nats"], "connected");
}

#[tokio::test]
async fn a_stop_lets_the_request_in_hand_finish() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = Env::start().await;
    let mut serving = Serving::start(
        &env,
        &[],
        &[("KEYLOOP_INGEST_GENERIC_TOKEN", "FAKE-generic-bearer-stop")],
    )
    .await;
    let body = b"{\"sha1\":\"a9993e364706816aba3e25717850c26c9cd0d89d\",\"repo\":\"acme/stop\"}\n";
    let (first, rest) = body.split_at(10);
    let mut conn = tokio::net::TcpStream::connect(serving.addr).await.unwrap();
    let head = format!(
        "POST /generic HTTP/1.1\r\nHost: keyloop\r\nAuthorization: Bearer FAKE-generic-bearer-stop\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(first).await.unwrap();
    // The request is in hand (its head read, its body not yet) when the stop is asked for.
    serving.logged("request received").await;
    serving.terminate();
    serving.logged("shutdown requested").await;
    conn.write_all(rest).await.unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"published\":1"), "{answer}");
    let status = tokio::time::timeout(Duration::from_secs(20), serving.child.wait())
        .await
        .expect("ingest serve stops once the request is answered")
        .unwrap();
    assert!(status.success());
    assert_eq!(leaks(&env).await.len(), 1);
    // Nothing listens any more.
    assert!(tokio::net::TcpStream::connect(serving.addr).await.is_err());
}

#[tokio::test]
async fn the_detector_user_serves_the_endpoints_that_need_no_index_lookup() {
    let env = Env::start_secured().await;
    let vars = [
        (
            "KEYLOOP_INGEST_GENERIC_TOKEN",
            "FAKE-generic-bearer-secured",
        ),
        ("KEYLOOP_GITGUARDIAN_TOKEN", "FAKE-gg-token-secured"),
    ];
    let mut serving = Serving::start_as(&env, env.keyloop_as("detector"), &[], &vars).await;
    let auth = [(
        "Authorization",
        "Bearer FAKE-generic-bearer-secured".to_owned(),
    )];
    let line = b"{\"secret\":\"FAKE-generic-secured-0001\"}\n".to_vec();
    let answer = serving.post("/generic", &auth, line).await;
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert!(serving.stop().await.success());

    // The partner endpoint labels its answers from the fingerprint index, which the detector
    // user may not read: refused at start, with what the user lacks.
    let signer = GithubSigner::generate("key-current", true);
    let keys = env.file(
        "github-keys.json",
        GithubSigner::key_list(&[&signer]).as_bytes(),
    );
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        env.keyloop_as("detector")
            .args([
                "ingest",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--github-keys",
            ])
            .arg(&keys)
            .output(),
    )
    .await
    .expect("ingest serve gives up within 30 s")
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("$JS.API.DIRECT.GET.KV_keyloop_fingerprints.>"),
        "{stderr}"
    );
}
