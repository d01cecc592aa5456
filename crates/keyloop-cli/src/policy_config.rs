//! The policy the workers decide with: the Cedar file (`--policy`) and its groups
//! (`--api-admins`, `--policy-group`), and how approvals run (`--approval-ttl`,
//! `--revocation-budget`).

use crate::config::duration_flag;
use anyhow::{Context, Result};
use keyloop_core::policy::{Groups, PolicyEngine};
use std::path::Path;

/// The policy's groups: `admins` from --api-admins, the others from --policy-group
/// `NAME=actor,actor`.
pub(crate) fn groups(admins: &[String], specs: &[String]) -> Result<Groups> {
    let mut groups = Groups::with_admins(admins.iter().cloned());
    for spec in specs {
        let Some((name, members)) = spec.split_once('=') else {
            anyhow::bail!(
                "--policy-group {spec:?} is not NAME=actor,actor (e.g. --policy-group sre=alice,bob)"
            );
        };
        let name = name.trim();
        let valid = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.#:/@".contains(&b))
        };
        if !valid(name) {
            anyhow::bail!("--policy-group {spec:?}: a group name is letters, digits and `-_.#:/@`");
        }
        for member in members.split(',').map(str::trim).filter(|m| !m.is_empty()) {
            if !valid(member) {
                anyhow::bail!("--policy-group {spec:?}: {member:?} is not an actor name");
            }
            groups.add(name, member);
        }
    }
    Ok(groups)
}

/// `--approval-ttl` and `--revocation-budget`.
pub(crate) fn approval_settings(
    args: &crate::cli::RunArgs,
) -> Result<keyloop_workers::ApprovalSettings> {
    let open_for = duration_flag(keyloop_core::duration::APPROVAL_TTL, &args.approval_ttl)?;
    let spec = args.revocation_budget.trim();
    let budget = if spec.eq_ignore_ascii_case("off") {
        None
    } else {
        let parsed = spec
            .split_once('/')
            .and_then(|(n, w)| Some((n.trim().parse::<u32>().ok().filter(|n| *n > 0)?, w.trim())));
        let Some((max, window)) = parsed else {
            anyhow::bail!(
                "--revocation-budget {spec:?} is not N/WINDOW with N at least 1 (e.g. 100/1m), or `off`"
            );
        };
        Some(keyloop_workers::RevocationBudget {
            max,
            window: duration_flag(keyloop_core::duration::BUDGET_WINDOW, window)?,
        })
    };
    Ok(keyloop_workers::ApprovalSettings { open_for, budget })
}

/// Largest policy file read.
const MAX_POLICY_BYTES: u64 = 1024 * 1024;

/// The policy engine of `--policy` (or the default policy), its `admins` group the api's
/// admins. A file that does not load is refused with every problem as `FILE:LINE:COLUMN:
/// what`, and what to do.
pub(crate) fn policy_engine(file: Option<&Path>, groups: &Groups) -> Result<PolicyEngine> {
    let groups = groups.clone();
    let Some(path) = file else {
        return Ok(PolicyEngine::default_policy(groups));
    };
    let text = read_policy(path)?;
    PolicyEngine::load(&text, &path.display().to_string(), groups).map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        anyhow::anyhow!(
            "policy {} is refused:\n{}\nfix it (the schema: `keyloop policy schema`; a starting point: `keyloop policy default`)",
            path.display(),
            lines.join("\n")
        )
    })
}

/// The text of a policy file, at most [`MAX_POLICY_BYTES`].
fn read_policy(path: &Path) -> Result<String> {
    use std::io::Read;
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot read policy {}", path.display()))?;
    let mut text = String::new();
    file.take(MAX_POLICY_BYTES + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read policy {} as UTF-8 text", path.display()))?;
    if text.len() as u64 > MAX_POLICY_BYTES {
        anyhow::bail!("policy {} is over {MAX_POLICY_BYTES} bytes", path.display());
    }
    Ok(text)
}
