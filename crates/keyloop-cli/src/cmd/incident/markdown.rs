//! The incident report as markdown: readable in a terminal, pasteable into a ticket.

use super::report::{Attempt, Finding, Incident};
use crate::cmd::replay::row::human_time;
use std::fmt::Write;
use time::OffsetDateTime;

fn at(t: Option<OffsetDateTime>) -> String {
    t.map_or_else(|| "—".to_owned(), |t| format!("{} UTC", human_time(t)))
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

fn place(f: &Finding) -> String {
    let l = &f.location;
    // What the detector said: the repository when it named one, the file, the line.
    let mut s = l.repo.clone().unwrap_or_default();
    if let Some(file) = &l.file {
        let _ = write!(s, "{}`{file}`", if s.is_empty() { "" } else { " " });
        if let Some(line) = l.line {
            let _ = write!(s, " line {line}");
        }
    }
    if let Some(c) = &l.commit {
        let _ = write!(s, ", commit `{}`", &c[..c.len().min(12)]);
    }
    if s.is_empty() {
        s.push_str("an unnamed place");
    }
    if let Some(u) = &l.url {
        let _ = write!(s, " ({u})");
    }
    s
}

fn attempts(out: &mut String, list: &[Attempt]) {
    out.push_str("\n| time (UTC) | what | who | detail |\n|---|---|---|---|\n");
    for a in list {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            human_time(a.time),
            a.kind,
            cell(a.actor.as_deref().unwrap_or("-")),
            cell(a.detail.as_deref().unwrap_or(""))
        );
    }
}

/// The report as markdown.
pub(crate) fn render(i: &Incident) -> String {
    let mut out = format!(
        "# Incident: {}\n\nFrom the event log ({} events read). {} finding(s), {} JIT lease(s).\n",
        i.about,
        i.events_read,
        i.findings.len(),
        i.leases.len()
    );
    for (n, f) in i.findings.iter().enumerate() {
        let heading = if n == 0 {
            "Finding"
        } else {
            "Same report or commit"
        };
        let _ = writeln!(out, "\n## {heading}: {}\n", f.leak_id);
        let _ = writeln!(
            out,
            "- **Detected** {} by `{}` in {}",
            at(Some(f.detected_at)),
            f.detector,
            place(f)
        );
        if let Some(b) = &f.batch {
            let _ = writeln!(out, "- **Report** `{b}`");
        }
        let first = if f.first_leak_id == f.leak_id {
            "this finding".to_owned()
        } else {
            format!("`{}`", f.first_leak_id)
        };
        let _ = writeln!(
            out,
            "- **Value** `{}`, first detected {} ({first})",
            f.fingerprint,
            at(Some(f.first_detected_at))
        );
        let matched = match (&f.credential, &f.lease) {
            (_, Some(l)) => format!("JIT lease `{l}`"),
            (Some(c), None) => format!(
                "credential `{c}` version `{}` ({}), owner {}",
                f.version.as_deref().unwrap_or("?"),
                f.stage.as_deref().unwrap_or("?"),
                f.owner.as_deref().unwrap_or("unknown")
            ),
            (None, None) => "nothing keyloop manages".to_owned(),
        };
        let _ = writeln!(out, "- **Outcome** {}: {matched}", f.outcome);
        let ttr = f
            .time_to_revoke_ms
            .map(|ms| format!(", **{ms} ms** after the first detection"))
            .unwrap_or_default();
        let _ = writeln!(out, "- **Revoked** {}{ttr}", at(f.revoked_at));
        let rotated = f
            .new_version
            .as_ref()
            .map(|v| format!(" to version `{v}`"))
            .unwrap_or_default();
        let _ = writeln!(out, "- **Rotated** {}{rotated}", at(f.rotated_at));
        if f.after.is_empty() {
            let _ = writeln!(out, "- **Used or tried after the leak**: never");
        } else {
            let _ = writeln!(
                out,
                "- **Used or tried after the leak**: {} time(s)",
                f.after.len()
            );
            attempts(&mut out, &f.after);
        }
    }
    for l in &i.leases {
        let _ = writeln!(out, "\n## JIT lease {}\n", l.lease_id);
        let _ = writeln!(
            out,
            "- scope `{}`, task `{}`, agent {}",
            l.scope,
            l.task,
            l.agent.as_deref().unwrap_or("-")
        );
        let _ = writeln!(out, "- **Issued** {}", at(l.issued_at));
        let _ = writeln!(
            out,
            "- **Ended** {} {}",
            l.ended.as_deref().unwrap_or("not yet"),
            at(l.ended_at)
        );
        if !l.uses.is_empty() {
            attempts(&mut out, &l.uses);
        }
    }
    out.push_str("\n## Timeline\n\n| time (UTC) | event | about | detail |\n|---|---|---|---|\n");
    for e in &i.timeline {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            human_time(e.time),
            e.kind,
            cell(&e.about),
            cell(&e.text)
        );
    }
    out
}
