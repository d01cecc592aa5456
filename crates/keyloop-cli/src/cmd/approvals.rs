//! `keyloop approvals list | show ID | approve ID | deny ID --reason TEXT`: the approvals the
//! policy holds, decided through the control plane as the proved actor (your NATS user). Also
//! [`held`], what `rotate`, `revoke` and `credential retire` say when their request is held.

use crate::api_client;
use crate::cli::{ApprovalsCommand, Global};
use crate::{config, output};
use anyhow::Result;
use keyloop_core::api::{ApprovalIdRequest, ApprovalsRequest, Decided, DenyRequest, Queued, Verb};
use keyloop_core::policy::{Approval, ApprovalState};
use std::process::ExitCode;
use time::OffsetDateTime;

/// The exit code of a request held for an approval (`rotate`, `revoke`, `credential retire`,
/// `task start` without `--wait`): accepted, not done yet.
pub(crate) const EXIT_HELD: u8 = 3;

pub(crate) async fn run(g: &Global, command: ApprovalsCommand) -> Result<ExitCode> {
    let bus = config::connect(g).await?;
    match command {
        ApprovalsCommand::List { all } => {
            let list: Vec<Approval> =
                api_client::call(g, &bus, Verb::Approvals, &ApprovalsRequest { all }).await?;
            if g.json {
                for a in &list {
                    output::json_line(a)?;
                }
            } else if list.is_empty() {
                output::line(if all {
                    "no approvals"
                } else {
                    "no pending approvals you asked for or may decide (`--all` for the decided ones)"
                })?;
            } else {
                output::line(format_args!(
                    "{:<42} {:<8} {:<12} {:<28} {:<24} {:<7} {}",
                    "ID", "STATE", "ACTION", "RESOURCE", "REQUESTER", "GRANTS", "EXPIRES"
                ))?;
                let now = OffsetDateTime::now_utc();
                for a in &list {
                    output::line(format_args!(
                        "{:<42} {:<8} {:<12} {:<28} {:<24} {:<7} {}",
                        a.id,
                        a.state_at(now).name(),
                        a.action,
                        a.resource,
                        a.requester,
                        format!("{}/{}", a.grants.len(), a.need.approvers),
                        output::ts(a.expires_at)
                    ))?;
                }
            }
        }
        ApprovalsCommand::Show { id } => {
            let a: Approval =
                api_client::call(g, &bus, Verb::Approval, &ApprovalIdRequest { id }).await?;
            if g.json {
                output::json_line(&a)?;
            } else {
                output::text(&detail(&a))?;
            }
        }
        ApprovalsCommand::Approve { id } => {
            let d: Decided =
                api_client::call(g, &bus, Verb::Approve, &ApprovalIdRequest { id }).await?;
            decided(g, &d)?;
        }
        ApprovalsCommand::Deny { id, reason } => {
            let d: Decided =
                api_client::call(g, &bus, Verb::Deny, &DenyRequest { id, reason }).await?;
            decided(g, &d)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn decided(g: &Global, d: &Decided) -> Result<()> {
    if g.json {
        return output::json_line(d);
    }
    let a = &d.approval;
    let state = a.state_at(OffsetDateTime::now_utc());
    let what = format!("{} {}", a.action, a.resource);
    match (state, &d.op_id) {
        (ApprovalState::Pending, _) => output::line(format_args!(
            "approval {} counted ({} of {}); {what} waits for more approvers",
            a.id,
            a.grants.len(),
            a.need.approvers
        )),
        (ApprovalState::Used, Some(op)) => output::line(format_args!(
            "approval {} granted: {what} runs now (follow with `keyloop replay --correlation {op}`)",
            a.id
        )),
        (ApprovalState::Granted, _) => output::line(format_args!(
            "approval {} granted: {what} is issued to {} when it asks again",
            a.id, a.requester
        )),
        (ApprovalState::Denied, _) => output::line(format_args!(
            "approval {} denied: {what} is dropped; {} reads your reason",
            a.id, a.requester
        )),
        (state, _) => output::line(format_args!("approval {} is {}", a.id, state.name())),
    }
}

fn detail(a: &Approval) -> String {
    let mut out = format!(
        "approval   {}\nstate      {}\naction     {}\nresource   {}\nrequester  {}\nreason     {}\nneeds      {}\npolicies   {}\nrequested  {}\nexpires    {}\n",
        a.id,
        a.state_at(OffsetDateTime::now_utc()).name(),
        a.action,
        a.resource,
        a.requester,
        a.reason,
        a.need.describe(),
        a.policies.join(", "),
        output::ts(a.requested_at),
        output::ts(a.expires_at),
    );
    for g in &a.grants {
        out.push_str(&format!("granted    by {} at {}\n", g.by, output::ts(g.at)));
    }
    if let Some((by, why)) = &a.denied {
        out.push_str(&format!("denied     by {by}: {why}\n"));
    }
    if let keyloop_core::policy::Held::RevokeBatch { commands, .. } = &a.held {
        out.push_str(&format!("holds      {} revocation(s)\n", commands.len()));
        for c in commands {
            out.push_str(&format!(
                "           {} {} ({})\n",
                c.credential,
                c.version
                    .map_or_else(|| "all live versions".to_owned(), |v| v.to_string()),
                c.reason.name()
            ));
        }
    }
    out
}

/// What a `rotate`, `revoke` or `retire` whose request the policy held says: `Some(exit)`
/// when held (the caller stops there), `None` when it was sent.
pub(crate) fn held(g: &Global, what: &str, queued: &Queued) -> Result<Option<ExitCode>> {
    let Some(approval) = &queued.approval else {
        return Ok(None);
    };
    if g.json {
        output::json_line(queued)?;
    } else {
        output::line(format_args!(
            "{what} is held for approval {approval} (the policy asks for one); it runs as {} once granted: an approver runs `keyloop approvals approve {approval}` (see `keyloop approvals show {approval}`)",
            queued.op_id
        ))?;
    }
    Ok(Some(ExitCode::from(EXIT_HELD)))
}
