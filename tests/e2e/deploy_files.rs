//! The checked-in deploy files keep the durability they promise: every nats-server config in
//! `deploy/nats/` (with its includes) sets JetStream `sync_interval: always` — Jepsen's 2025
//! analysis of NATS 2.12 lost acknowledged writes on power loss with the default fsync interval
//! — the Kubernetes StatefulSet and the compose file run such a config, and the Kubernetes init
//! job creates R3 streams and buckets; every config serves clients over TLS only and a
//! cluster's routes speak mutual TLS, and every client in the manifests connects with
//! `tls://` and the servers' CA. That the same files still boot a real nats-server is
//! proved by the tests that start them (`least_privilege.rs`, `Env::start_secured`).

use std::path::{Path, PathBuf};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// `text` without `#` and `//` comments (nats-server's config syntax).
fn strip_comments(text: &str) -> String {
    text.lines()
        .map(|line| {
            let cut = [line.find('#'), line.find("//")]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(line.len());
            &line[..cut]
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The config at `path` with its `include` lines replaced by the included files' text
/// (relative to the including file, as nats-server resolves them), comments removed.
fn resolve(path: &Path) -> String {
    let dir = path.parent().expect("a config file has a directory");
    strip_comments(&read(path))
        .lines()
        .map(|line| match line.trim().strip_prefix("include ") {
            Some(included) => resolve(&dir.join(included.trim().trim_matches(['"', '\'']))),
            None => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Why the resolved config `text` does not fsync every JetStream write, or `None` when it
/// does: exactly one `jetstream` key, a block, holding `sync_interval: always`.
fn sync_always_problem(text: &str) -> Option<String> {
    let keys: Vec<usize> = text
        .match_indices("jetstream")
        .filter(|(i, _)| text[..*i].chars().last().is_none_or(char::is_whitespace))
        .map(|(i, _)| i)
        .collect();
    let [start] = keys[..] else {
        return Some(format!(
            "expected one `jetstream` block, found {} `jetstream` keys",
            keys.len()
        ));
    };
    let rest = text[start + "jetstream".len()..].trim_start();
    if !rest.starts_with('{') {
        return Some(format!(
            "`jetstream` is not a block (`{}`): set `jetstream {{ sync_interval: always }}`",
            rest.lines().next().unwrap_or_default().trim()
        ));
    }
    let Some(body) = blocks(text, "jetstream").into_iter().next() else {
        return Some("the `jetstream` block is not closed".to_owned());
    };
    let always = sets(body, "sync_interval", Some("always"));
    (!always).then(|| "the `jetstream` block does not set `sync_interval: always`".to_owned())
}

/// The bodies of every `key { … }` block of `text` (at any depth), in order.
fn blocks<'a>(text: &'a str, key: &str) -> Vec<&'a str> {
    text.match_indices(key)
        .filter(|(i, _)| text[..*i].chars().last().is_none_or(char::is_whitespace))
        .filter_map(|(i, _)| {
            let rest = text[i + key.len()..].trim_start();
            let body = rest.strip_prefix('{')?;
            let mut depth = 1;
            let end = body.char_indices().find_map(|(j, c)| {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                (depth == 0).then_some(j)
            })?;
            Some(&body[..end])
        })
        .collect()
}

/// Whether a block body sets `key` (to `value`, when given).
fn sets(body: &str, key: &str, value: Option<&str>) -> bool {
    body.lines().any(|line| {
        let line = line.trim().replace([':', '='], " ");
        let words: Vec<&str> = line.split_whitespace().collect();
        matches!(words[..], [k, v] if k == key && value.is_none_or(|want| v.trim_matches(['"', '\'']) == want))
    })
}

/// Why the resolved config `text` lets a client or a route speak plain text, or `None`.
fn tls_problem(text: &str) -> Option<String> {
    let clusters = blocks(text, "cluster");
    let mut outside = text.to_owned();
    for c in &clusters {
        outside = outside.replace(c, "");
    }
    let client_tls = blocks(&outside, "tls");
    let [tls] = client_tls[..] else {
        return Some(format!(
            "expected one client `tls {{ cert_file, key_file }}` block, found {}",
            client_tls.len()
        ));
    };
    if !(sets(tls, "cert_file", None) && sets(tls, "key_file", None)) {
        return Some("the client `tls` block lacks cert_file or key_file".to_owned());
    }
    for cluster in clusters {
        let route_tls = blocks(cluster, "tls");
        let ok = route_tls.len() == 1
            && ["cert_file", "key_file", "ca_file"]
                .iter()
                .all(|k| sets(route_tls[0], k, None))
            && sets(route_tls[0], "verify", Some("true"));
        if !ok {
            return Some(
                "the `cluster` block needs `tls { cert_file, key_file, ca_file, verify: true }`"
                    .to_owned(),
            );
        }
    }
    None
}

/// Every file of `deploy/nats/` that configures a server (it, or a file it includes, sets
/// `listen`), as (name, resolved text).
fn server_configs() -> Vec<(String, String)> {
    let dir = deploy_dir().join("nats");
    let mut configs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "conf"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, resolve(&p))
        })
        .filter(|(_, text)| text.lines().any(|l| l.trim_start().starts_with("listen")))
        .collect();
    configs.sort();
    configs
}

/// The config file a manifest starts nats-server with (`-c /etc/nats/NAME`), as NAME.
fn started_config(manifest: &str) -> String {
    let at = manifest
        .find("/etc/nats/")
        .unwrap_or_else(|| panic!("no `-c /etc/nats/…` argument in:\n{manifest}"));
    manifest[at + "/etc/nats/".len()..]
        .split(|c: char| !(c.is_alphanumeric() || c == '.' || c == '-' || c == '_'))
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn every_deploy_nats_config_fsyncs_each_jetstream_write() {
    let configs = server_configs();
    let names: Vec<&str> = configs.iter().map(|(n, _)| n.as_str()).collect();
    for expected in ["single.conf", "cluster.conf", "cluster-node1.conf"] {
        assert!(
            names.contains(&expected),
            "{expected} is not seen as a server config: {names:?}"
        );
    }
    let problems: Vec<String> = configs
        .iter()
        .filter_map(|(name, text)| sync_always_problem(text).map(|p| format!("{name}: {p}")))
        .collect();
    assert!(problems.is_empty(), "deploy/nats: {problems:#?}");
}

#[test]
fn every_deploy_nats_config_serves_tls_only_and_routes_verify_each_other() {
    let problems: Vec<String> = server_configs()
        .iter()
        .filter_map(|(name, text)| tls_problem(text).map(|p| format!("{name}: {p}")))
        .collect();
    assert!(problems.is_empty(), "deploy/nats: {problems:#?}");
}

#[test]
fn every_client_in_the_manifests_connects_with_tls_and_the_servers_ca() {
    let dir = deploy_dir();
    for file in ["k8s/workers.yaml", "k8s/init-job.yaml", "compose.yaml"] {
        // YAML comments are whole `#` lines here (a URL's `//` is not one).
        let text: String = read(&dir.join(file))
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n");
        let urls: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("://") && (l.contains("nats") || l.contains("4222")))
            .filter(|l| !l.contains("http://"))
            .collect();
        assert!(!urls.is_empty(), "{file}: no NATS URL");
        for url in &urls {
            assert!(
                url.contains("tls://"),
                "{file}: a plain NATS URL: {}",
                url.trim()
            );
        }
        assert_eq!(
            text.matches("KEYLOOP_NATS_CA").count(),
            urls.len(),
            "{file}: every client with a NATS URL is given the CA"
        );
    }
}

#[test]
fn tls_check_refuses_plain_text_clients_and_routes() {
    let good = "tls {\n cert_file: a\n key_file: b\n}\ncluster {\n tls {\n cert_file: a\n key_file: b\n ca_file: c\n verify: true\n }\n}\n";
    assert_eq!(tls_problem(good), None);
    assert!(tls_problem("listen: 1\n").is_some(), "no tls at all");
    assert!(
        tls_problem(
            "cluster {\n tls {\n cert_file: a\n key_file: b\n ca_file: c\n verify: true\n }\n}\n"
        )
        .is_some(),
        "routes only"
    );
    assert!(
        tls_problem("tls {\n cert_file: a\n key_file: b\n}\ncluster {\n listen: 1\n}\n").is_some(),
        "plain routes"
    );
    assert!(
        tls_problem(&good.replace("verify: true", "verify: false")).is_some(),
        "unverified routes"
    );
}

#[test]
fn kubernetes_and_compose_run_a_config_that_fsyncs_and_init_creates_r3() {
    let dir = deploy_dir();
    let statefulset = started_config(&read(&dir.join("k8s/nats.yaml")));
    let kustomization = read(&dir.join("kustomization.yaml"));
    assert!(
        kustomization.contains(&format!("nats/{statefulset}")),
        "the StatefulSet runs {statefulset}, which the config map generator does not ship"
    );
    let compose = started_config(&read(&dir.join("compose.yaml")));
    for name in [statefulset, compose] {
        let text = resolve(&dir.join("nats").join(&name));
        assert_eq!(sync_always_problem(&text), None, "{name}");
    }
    let init = strip_comments(&read(&dir.join("k8s/init-job.yaml")));
    let args = init
        .lines()
        .find(|l| l.trim_start().starts_with("args:"))
        .expect("the init job has args");
    let args: Vec<String> = args
        .split(['[', ']', ',', '"'])
        .map(|a| a.trim().to_owned())
        .filter(|a| !a.is_empty() && a != "args:")
        .collect();
    assert_eq!(args, ["init", "--replicas", "3"], "init job args");
}

#[test]
fn sync_interval_check_refuses_what_loses_writes() {
    let ok = "listen: 1\njetstream {\n  sync_interval: always\n}\n";
    assert_eq!(sync_always_problem(ok), None);
    assert_eq!(
        sync_always_problem("jetstream { sync_interval = \"always\" \n}"),
        None
    );
    for bad in [
        "jetstream: enabled\n",
        "jetstream {\n  max_file_store: 1G\n}\n",
        "jetstream {\n  sync_interval: 2m\n}\n",
        &strip_comments("jetstream {\n  # sync_interval: always\n}\n"),
        "jetstream {\n  sync_interval: always\n}\njetstream: enabled\n",
        "",
    ] {
        assert!(sync_always_problem(bad).is_some(), "accepted {bad:?}");
    }
}
