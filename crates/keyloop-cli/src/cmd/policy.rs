//! `keyloop policy default | schema | check FILE`: the policy engine's default policy and
//! schema, printed as a starting point for `--policy`, and a file checked as the workers check
//! it at start (`--json`: the same as JSON).

use crate::cli::PolicyCommand;
use crate::output;
use anyhow::Result;
use keyloop_core::policy::{DEFAULT_POLICY, SCHEMA};
use std::process::ExitCode;

pub(crate) fn run(json: bool, command: PolicyCommand) -> Result<ExitCode> {
    match command {
        PolicyCommand::Default => print(json, "policy", DEFAULT_POLICY),
        PolicyCommand::Schema => print(json, "schema", SCHEMA),
        PolicyCommand::Check { file, api_admins } => {
            let groups = crate::config::groups(&api_admins, &[])?;
            let engine = crate::config::policy_engine(Some(&file), &groups)?;
            let ids = engine.policy_ids();
            if json {
                output::json_line(&serde_json::json!({
                    "file": file.display().to_string(),
                    "valid": true,
                    "policies": ids,
                }))?;
            } else {
                output::line(format_args!(
                    "{}: valid; policies: {}",
                    file.display(),
                    ids.join(", ")
                ))?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn print(json: bool, key: &str, text: &str) -> Result<ExitCode> {
    if json {
        output::json_line(&serde_json::json!({ key: text }))?;
    } else {
        output::text(text)?;
    }
    Ok(ExitCode::SUCCESS)
}
