//! The deployment files in `deploy/` name the same streams, consumers, buckets and roles as
//! [`Topology`], and hold no secret. A text check (no YAML parser in the tree): the manifests
//! cannot be applied here, but they cannot silently drift from the code either. The server
//! configs themselves are run by the e2e tests (`least_privilege`).

use keyloop_nats::{Role, Topology};
use std::path::PathBuf;

fn read(path: &str) -> String {
    let full = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// The YAML documents of a file, split on `---` lines.
fn documents(text: &str) -> Vec<&str> {
    text.split("\n---\n").collect()
}

#[test]
fn every_consuming_role_has_a_deployment_and_a_scaled_object_on_its_consumer() {
    let topology = Topology::default();
    let workers = read("k8s/workers.yaml");
    let keda = read("k8s/keda.yaml");
    for role in Role::CONSUMING {
        let name = role.name();
        let (stream, _) = topology.consumer_of(role);
        let deployment = documents(&workers)
            .into_iter()
            .find(|d| {
                d.contains("kind: Deployment") && d.contains(&format!("name: keyloop-{name}\n"))
            })
            .unwrap_or_else(|| panic!("a Deployment for {name}"));
        assert!(
            deployment.contains(&format!(r#"args: ["worker", "{name}"]"#)),
            "{name}'s Deployment runs `keyloop worker {name}`"
        );
        let scaled = documents(&keda)
            .into_iter()
            .find(|d| d.contains(&format!("name: keyloop-{name}\n")))
            .unwrap_or_else(|| panic!("a ScaledObject for {name}"));
        for line in [
            "kind: ScaledObject".to_owned(),
            "type: nats-jetstream".to_owned(),
            format!("stream: {stream}\n"),
            format!("consumer: {name}\n"),
        ] {
            assert!(scaled.contains(&line), "{name}'s ScaledObject has `{line}`");
        }
        assert!(
            !scaled.contains("minReplicaCount: 0"),
            "{name} never scales to zero"
        );
    }
    assert!(workers.contains(r#"args: ["worker", "scheduler"]"#));
}

#[test]
fn worker_permissions_name_every_consumer_and_bucket_of_the_topology() {
    let topology = Topology::default();
    let permissions = read("nats/permissions.conf");
    let start = permissions
        .find("WORKER_PERMISSIONS")
        .expect("worker permissions");
    let end = permissions
        .find("OPS_PERMISSIONS")
        .expect("ops permissions");
    let worker = &permissions[start..end];
    for role in Role::CONSUMING {
        let (stream, _) = topology.consumer_of(role);
        for api in ["INFO", "MSG.NEXT"] {
            let subject = format!("\"$JS.API.CONSUMER.{api}.{stream}.{}\"", role.name());
            assert!(worker.contains(&subject), "worker may use {subject}");
        }
        let ack = format!("\"$JS.ACK.{stream}.{}.>\"", role.name());
        assert!(worker.contains(&ack), "worker may send {ack}");
    }
    for bucket in [
        topology.inventory_bucket(),
        topology.fingerprint_bucket(),
        topology.due_bucket(),
        topology.secrets_bucket(),
    ] {
        for subject in [
            format!("\"$KV.{bucket}.>\""),
            format!("\"$JS.API.STREAM.INFO.KV_{bucket}\""),
            format!("\"$JS.API.DIRECT.GET.KV_{bucket}.>\""),
        ] {
            assert!(worker.contains(&subject), "worker may use {subject}");
        }
    }
    for subject in [topology.jit_issue(), topology.token_verify()] {
        let queue = format!("\"{subject} jit-issuer\"");
        assert!(
            worker.contains(&queue),
            "worker serves {subject} in its queue group only"
        );
    }
}

#[test]
fn no_deployment_file_holds_a_secret() {
    for path in ["k8s/nats.yaml", "k8s/init-job.yaml", "k8s/workers.yaml"] {
        let text = read(path);
        let lines: Vec<_> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let name = line.trim().trim_start_matches("- ");
            let sensitive = ["PASSWORD", "MASTER_KEY", "ROUTE_"]
                .iter()
                .any(|s| name.contains(s));
            if name.starts_with("name: KEYLOOP_") && sensitive {
                assert_eq!(
                    lines.get(i + 1).map(|l| l.trim()),
                    Some("valueFrom:"),
                    "{path}:{}: {name} comes from a Secret",
                    i + 1
                );
            }
        }
    }
    let compose = read("compose.yaml");
    for line in compose.lines().map(str::trim) {
        let sensitive = line.contains("PASSWORD:") || line.contains("MASTER_KEY:");
        if line.starts_with("KEYLOOP_") && sensitive {
            let value = line.split_once(": ").map_or("", |(_, v)| v);
            assert!(
                value.starts_with("${"),
                "compose takes `{line}` from the environment"
            );
        }
    }
    let dockerfile = read("Dockerfile");
    assert!(
        !dockerfile.contains("KEYLOOP_MASTER_KEY="),
        "no key in the image"
    );
    assert!(
        !dockerfile.contains("KEYLOOP_NATS_PASSWORD="),
        "no password in the image"
    );
    assert!(
        dockerfile.contains("USER 65532:65532"),
        "the image runs as non-root"
    );
}
