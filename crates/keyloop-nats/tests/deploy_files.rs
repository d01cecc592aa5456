//! The deployment files in `deploy/` name the same streams, consumers, buckets and roles as
//! [`Topology`], give every role its own NATS user (its own consumer, DLQ subject and inbox,
//! and the secrets bucket only where values are touched), and hold no secret. A text check (no YAML parser in the tree): the manifests
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

/// The NATS users of `deploy/nats/users.conf`: one per worker role, the control plane, the
/// clients.
const CLIENT_USERS: [&str; 6] = [
    "detector",
    "ingest",
    "orchestrator-a",
    "orchestrator-b",
    "ops",
    "admin",
];

/// `KEYLOOP_NATS_<USER>_PASSWORD`, `<USER>_PERMISSIONS`: the user's name in capitals, `-` as `_`.
fn upper(user: &str) -> String {
    user.to_uppercase().replace('-', "_")
}

/// The permissions block `<USER>_PERMISSIONS = { … }` of permissions.conf (up to the next one).
fn permissions_of<'a>(permissions: &'a str, user: &str) -> &'a str {
    let head = format!("\n{}_PERMISSIONS = {{", upper(user));
    let start = permissions
        .find(&head)
        .unwrap_or_else(|| panic!("permissions.conf has {head:?}"));
    let rest = &permissions[start + head.len()..];
    let end = rest.find("_PERMISSIONS = {").unwrap_or(rest.len());
    &rest[..end]
}

fn all_users() -> Vec<String> {
    Role::ALL
        .iter()
        .map(|r| r.name().to_owned())
        .chain(CLIENT_USERS.iter().map(|u| (*u).to_owned()))
        .collect()
}

#[test]
fn every_user_has_its_password_variable_its_permissions_and_its_own_inbox_only() {
    let users = read("nats/users.conf");
    let permissions = read("nats/permissions.conf");
    let server = read("k8s/nats.yaml");
    let compose = read("compose.yaml");
    let listed = users.matches("{ user: ").count();
    assert_eq!(
        listed,
        all_users().len(),
        "users.conf lists exactly these users"
    );
    for user in all_users() {
        let var = format!("KEYLOOP_NATS_{}_PASSWORD", upper(&user));
        let line = users
            .lines()
            .find(|l| l.contains(&format!("{{ user: {user},")))
            .unwrap_or_else(|| panic!("users.conf has user {user}"));
        assert!(line.contains(&format!("password: ${var},")), "{line}");
        assert!(
            line.contains(&format!("permissions: ${}_PERMISSIONS }}", upper(&user))),
            "{line}"
        );
        assert!(
            server.contains(&format!("- name: {var}\n")),
            "k8s/nats.yaml sets {var}"
        );
        assert!(
            server.contains(&format!("key: {user}-password}}")),
            "k8s/nats.yaml takes {var} from keyloop-nats-server/{user}-password"
        );
        assert!(
            compose.contains(&format!("{var}: ${{{var}:?")),
            "compose passes {var}"
        );
        let block = permissions_of(&permissions, &user);
        let inboxes: Vec<_> = block.matches("\"_INBOX_").collect();
        assert_eq!(inboxes.len(), 1, "{user} reads one inbox");
        assert!(
            block.contains(&format!("\"_INBOX_{user}.>\"")),
            "{user} reads its own inbox"
        );
    }
}

#[test]
fn each_role_user_names_its_own_consumer_and_dlq_and_no_other_roles() {
    let topology = Topology::default();
    let permissions = read("nats/permissions.conf");
    for role in Role::ALL {
        let block = permissions_of(&permissions, role.name());
        for other in Role::CONSUMING {
            let (stream, _) = topology.consumer_of(other);
            let subjects = [
                format!("\"$JS.API.CONSUMER.INFO.{stream}.{}\"", other.name()),
                format!("\"$JS.API.CONSUMER.MSG.NEXT.{stream}.{}\"", other.name()),
                format!("\"$JS.ACK.{stream}.{}.>\"", other.name()),
                format!("\"{}\"", topology.dlq(other.name())),
            ];
            for subject in subjects {
                assert_eq!(
                    block.contains(&subject),
                    other == role,
                    "{} and {subject}",
                    role.name()
                );
            }
        }
        assert!(
            !block.contains("keyloop.dlq.>") && !block.contains("keyloop.cmd.>"),
            "{} sends named commands and its own DLQ entries only",
            role.name()
        );
        // Every worker context opens these three buckets.
        for bucket in [
            topology.inventory_bucket(),
            topology.fingerprint_bucket(),
            topology.due_bucket(),
        ] {
            let info = format!("\"$JS.API.STREAM.INFO.KV_{bucket}\"");
            assert!(block.contains(&info), "{} may use {info}", role.name());
        }
    }
    // Only the roles that touch values (and the control plane) may open the secrets bucket
    // (admin creates it, and reads or writes no bucket: see below).
    for user in all_users().into_iter().filter(|u| u != "admin") {
        let block = permissions_of(&permissions, &user);
        let touches = block.contains(&topology.secrets_bucket());
        let allowed = ["rotator", "revoker", "api"].contains(&user.as_str());
        assert_eq!(touches, allowed, "{user} and the secrets bucket");
    }
    let issuer = permissions_of(&permissions, Role::JitIssuer.name());
    for subject in [topology.jit_issue(), topology.token_verify()] {
        let queue = format!("\"{subject} jit-issuer\"");
        assert!(
            issuer.contains(&queue),
            "the jit-issuer serves {subject} in its queue group only"
        );
    }
}

#[test]
fn each_deployment_runs_as_its_roles_user_with_its_own_secret() {
    let workers = read("k8s/workers.yaml");
    for role in Role::ALL {
        let name = role.name();
        let deployment = documents(&workers)
            .into_iter()
            .find(|d| d.contains(&format!(r#"args: ["worker", "{name}"]"#)))
            .unwrap_or_else(|| panic!("a Deployment for {name}"));
        assert!(
            deployment.contains(&format!(
                "- name: KEYLOOP_NATS_USER\n              value: {name}\n"
            )),
            "{name}'s Deployment connects as {name}"
        );
        assert!(
            deployment.contains(&format!(
                "secretKeyRef: {{name: keyloop-nats-{name}, key: password}}"
            )),
            "{name}'s Deployment takes its password from keyloop-nats-{name}"
        );
        let key = deployment.contains("KEYLOOP_MASTER_KEY");
        let values = matches!(role, Role::Rotator | Role::Revoker | Role::Api);
        assert_eq!(
            key, values,
            "only the rotator, revoker and api get the master key"
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

#[test]
fn ops_asks_the_control_plane_and_admin_holds_the_layout_only() {
    let permissions = read("nats/permissions.conf");
    let ops = permissions_of(&permissions, "ops");
    let admin = permissions_of(&permissions, "admin");
    for (user, block) in [("ops", ops), ("admin", admin)] {
        for forbidden in [
            "\"$JS.API.>\"",
            "\"keyloop.lifecycle.>\" ]",
            "$KV.",
            "DIRECT.GET",
            "keyloop.cmd.",
            "STREAM.DELETE",
            "STREAM.PURGE",
            "MSG.DELETE",
            "MSG.GET",
        ] {
            assert!(!block.contains(forbidden), "{user} holds {forbidden}");
        }
    }
    let publish = ops.split("subscribe = {").next().unwrap();
    assert!(
        !publish.contains("keyloop.lifecycle."),
        "ops publishes no lifecycle event"
    );
    assert!(
        publish.contains("\"keyloop.api.ops.*\""),
        "ops asks the api as ops"
    );
    assert!(!ops.contains("STREAM.CREATE") && !ops.contains("STREAM.UPDATE"));
    assert!(!admin.contains("keyloop.api.") && !admin.contains("keyloop.lifecycle"));
    let topology = Topology::default();
    for role in Role::CONSUMING {
        let (stream, _) = topology.consumer_of(role);
        let create = format!("\"$JS.API.CONSUMER.CREATE.{stream}.{}\"", role.name());
        assert!(admin.contains(&create), "admin creates {create}");
    }
}
