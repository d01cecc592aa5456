//! The notification a lifecycle event makes, as Slack-compatible JSON; pure, so every kind is
//! unit-tested. Words for people and the ids to act on, never a value, token or digest.

use keyloop_core::{LifecycleEvent, LifecycleKind};
use serde_json::{Value, json};

/// The webhook body for `event`, or `None` when it is not a notification (an `issued` whose
/// outcome is not `notify`, or a kind the notifier does not post).
pub fn render(event: &LifecycleEvent) -> Option<Value> {
    let d = &event.data;
    let about = d
        .credential
        .as_ref()
        .map(|c| format!("credential `{c}`"))
        .or_else(|| {
            d.lease.as_ref().map(|l| {
                format!(
                    "lease `{}` of scope `{}` for task `{}`",
                    l.lease_id, l.scope, l.task_id
                )
            })
        });
    let approval = d.approval.as_ref();
    let held = approval.map(|a| {
        format!(
            "{} `{}` asked by `{}` (approval `{}`, {} of {} approval(s))",
            a.action, a.resource, a.requester, a.id, a.grants, a.approvers_needed
        )
    });
    let headline = match d.kind {
        LifecycleKind::Issued if d.outcome.as_deref() == Some("notify") => {
            format!(
                "JIT credential issued (notify tier): {}",
                about.clone().unwrap_or_default()
            )
        }
        LifecycleKind::ApprovalRequested => format!(
            "Approval requested: {}. Decide with `keyloop approvals approve {}` or `keyloop approvals deny {} --reason TEXT`",
            held.clone().unwrap_or_default(),
            approval.map_or("ID", |a| a.id.as_str()),
            approval.map_or("ID", |a| a.id.as_str()),
        ),
        LifecycleKind::ApprovalGranted => {
            format!("Approval granted: {}", held.clone().unwrap_or_default())
        }
        LifecycleKind::ApprovalDenied => {
            format!("Approval denied: {}", held.clone().unwrap_or_default())
        }
        LifecycleKind::ApprovalExpired => format!(
            "Approval expired undecided: {}",
            held.clone().unwrap_or_default()
        ),
        LifecycleKind::BudgetTripped => format!(
            "Revocation budget tripped for target `{}`: further idle, scheduled and manual revocations are held (approval `{}`)",
            approval.map_or("?", |a| a.resource.as_str()),
            approval.map_or("?", |a| a.id.as_str())
        ),
        LifecycleKind::BudgetReleased => format!(
            "Revocation budget released for target `{}` (approval `{}`): the held revocations run",
            approval.map_or("?", |a| a.resource.as_str()),
            approval.map_or("?", |a| a.id.as_str())
        ),
        _ => return None,
    };
    let mut lines = vec![format!("*keyloop* {headline}")];
    if let Some(actor) = &d.actor {
        lines.push(format!("by `{actor}`"));
    }
    if let Some(detail) = &d.detail {
        lines.push(detail.clone());
    }
    if !d.policies.is_empty() {
        lines.push(format!("policies: {}", d.policies.join(", ")));
    }
    lines.push(format!("event `{}`", event.id));
    let text = lines.join("\n");
    Some(json!({
        "text": text,
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}],
        "keyloop": {
            "event_id": event.id,
            "kind": d.kind.name(),
            "credential": d.credential,
            "lease": d.lease.as_ref().map(|l| l.lease_id),
            "approval": approval.map(|a| a.id.clone()),
            "actor": d.actor,
            "policies": d.policies,
            "correlation": event.correlationid,
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyloop_core::LifecycleData;
    use keyloop_core::event::{ApprovalInfo, lifecycle_event};

    fn event(kind: LifecycleKind, outcome: Option<&str>) -> LifecycleEvent {
        let mut data = LifecycleData::new(kind, Some("svc/vault".parse().unwrap()), None);
        data.outcome = outcome.map(str::to_owned);
        data.actor = Some("ops".into());
        data.policies = vec!["high-blast-radius-needs-approval".into()];
        data.approval = Some(ApprovalInfo {
            id: "ap-1".into(),
            action: "revoke".into(),
            resource: "svc/vault".into(),
            requester: "ops".into(),
            approvers_needed: 1,
            grants: 0,
            expires_at: time::OffsetDateTime::UNIX_EPOCH,
        });
        lifecycle_event("keyloop/test", "t", data)
    }

    #[test]
    fn every_approval_and_budget_kind_is_a_slack_message_naming_what_and_how_to_act() {
        for kind in [
            LifecycleKind::ApprovalRequested,
            LifecycleKind::ApprovalGranted,
            LifecycleKind::ApprovalDenied,
            LifecycleKind::ApprovalExpired,
            LifecycleKind::BudgetTripped,
            LifecycleKind::BudgetReleased,
        ] {
            let body = render(&event(kind, Some("approve")))
                .unwrap_or_else(|| panic!("{} is a notification", kind.name()));
            let text = body["text"].as_str().unwrap();
            assert_eq!(body["blocks"][0]["text"]["text"], text);
            assert_eq!(body["blocks"][0]["text"]["type"], "mrkdwn");
            assert!(text.contains("ap-1") && text.contains("event `"), "{text}");
            assert_eq!(body["keyloop"]["kind"], kind.name());
        }
        let requested = render(&event(LifecycleKind::ApprovalRequested, None)).unwrap();
        assert!(
            requested["text"]
                .as_str()
                .unwrap()
                .contains("keyloop approvals approve ap-1")
        );
    }

    #[test]
    fn only_a_notify_tier_issue_is_posted_and_nothing_else() {
        assert!(render(&event(LifecycleKind::Issued, Some("notify"))).is_some());
        assert!(render(&event(LifecycleKind::Issued, Some("allow"))).is_none());
        assert!(render(&event(LifecycleKind::Revoked, None)).is_none());
        assert!(render(&event(LifecycleKind::LeakMatched, None)).is_none());
    }
}
