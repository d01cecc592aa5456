//! JSON Schemas of every message keyloop publishes, generated from the Rust types. `keyloop
//! schemas DIR` writes them; a test fails when the files in `schemas/` drift from the types.

use crate::event::{
    CloudEvent, CredentialUsed, LifecycleData, RevokeCommand, RevokeLeaseCommand, RotateCommand,
    ScheduleTick, TaskCompleted,
};
use crate::leak::LeakFinding;
use crate::lease::{IssueRequest, VerifyReply};

/// `(file name, pretty JSON schema)` for every published message type.
pub fn all() -> Vec<(&'static str, String)> {
    fn render<T: schemars::JsonSchema>() -> String {
        let schema = schemars::schema_for!(T);
        let mut s = serde_json::to_string_pretty(&schema).expect("schemas serialize");
        s.push('\n');
        s
    }
    vec![
        ("leak.detected.json", render::<CloudEvent<LeakFinding>>()),
        ("lifecycle.json", render::<CloudEvent<LifecycleData>>()),
        ("cmd.revoke.json", render::<CloudEvent<RevokeCommand>>()),
        ("cmd.rotate.json", render::<CloudEvent<RotateCommand>>()),
        (
            "cmd.lease.revoke.json",
            render::<CloudEvent<RevokeLeaseCommand>>(),
        ),
        ("schedule.tick.json", render::<CloudEvent<ScheduleTick>>()),
        ("task.completed.json", render::<CloudEvent<TaskCompleted>>()),
        (
            "credential.used.json",
            render::<CloudEvent<CredentialUsed>>(),
        ),
        ("jit.issue.request.json", render::<IssueRequest>()),
        ("token.verify.reply.json", render::<VerifyReply>()),
    ]
}

#[cfg(test)]
mod tests {
    /// The checked-in schemas are what the types say. Regenerate with `just schemas`
    /// (`cargo run -p keyloop-cli -- schemas schemas`).
    #[test]
    fn checked_in_schemas_match_the_types() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas");
        for (name, expected) in super::all() {
            let path = dir.join(name);
            let actual = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                actual == expected,
                "schemas/{name} is out of date with the Rust types; run `just schemas` (or `cargo run -p keyloop-cli -- schemas schemas`) and commit the result"
            );
        }
    }
}
