//! Printing: tables for people, JSON for machines (`--json`). Never a secret value, except
//! `credential reveal` and `task start`, whose whole purpose is to print one on stdout, and
//! never a full digest of one: versions and events show their fingerprint tag (`fp:…`), which
//! no leak can be built from (`keyloop_core::FingerprintTag`).
//!
//! Everything goes to stdout through [`line`], [`text`] and [`json_line`], never `println!`
//! (which panics when stdout is closed). A reader that goes away (`keyloop replay | head -1`)
//! makes them return [`StdoutClosed`]: the command stops there, its clean-up runs, and the
//! process exits with [`STDOUT_CLOSED_EXIT`] and no message.

use keyloop_core::duration::format_duration;
use keyloop_core::{Credential, LifecycleEvent};
use serde::Serialize;
use std::fmt;
use std::io::Write;
use std::time::Duration;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The exit code of a command whose stdout was closed by its reader: 141 (128 + SIGPIPE), what
/// a shell reports for a program stopped by a closed pipe, so `set -o pipefail` still sees
/// that the output was cut short.
pub(crate) const STDOUT_CLOSED_EXIT: u8 = 141;

/// Standard output was closed by its reader: nobody reads what the command would print.
#[derive(Debug)]
pub(crate) struct StdoutClosed;

impl fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("standard output was closed by its reader")
    }
}

impl std::error::Error for StdoutClosed {}

/// Prints `text` and a newline on stdout.
pub(crate) fn line(text: impl fmt::Display) -> anyhow::Result<()> {
    write(format_args!("{text}\n"))
}

/// Prints `text` on stdout as it is.
pub(crate) fn text(text: &str) -> anyhow::Result<()> {
    write(format_args!("{text}"))
}

/// Prints `value` as one JSON line.
pub(crate) fn json_line<T: Serialize>(value: &T) -> anyhow::Result<()> {
    line(serde_json::to_string(value).expect("output serializes"))
}

fn write(args: fmt::Arguments<'_>) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_fmt(args)
        .and_then(|()| out.flush())
        .map_err(stdout_error)
}

/// A failed write to stdout: [`StdoutClosed`] when the reader has gone, else what failed.
pub(crate) fn stdout_error(e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        StdoutClosed.into()
    } else {
        anyhow::Error::new(e).context("cannot write to standard output")
    }
}

pub(crate) fn ts(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_else(|_| t.to_string())
}

fn short(id: &uuid::Uuid) -> String {
    let s = id.to_string();
    s[s.len() - 8..].to_owned()
}

/// One line per credential.
pub(crate) fn credential_row(c: &Credential) -> String {
    let current = c
        .current()
        .map_or_else(|| "none".to_owned(), |v| short(&v.id));
    let live = c.live_versions().len();
    let max_age = c.policy.max_age_secs.map_or_else(
        || "-".to_owned(),
        |s| format_duration(Duration::from_secs(s)),
    );
    format!(
        "{:<32} store={:<6} target={:<8} current={current:<8} live={live} max_age={max_age}",
        c.id,
        c.store.name(),
        c.target.name(),
    )
}

/// When the credential was last used and what falls due next: the scheduled rotation, the end
/// of the previous version's grace, and the idle revocation, as the sweeper computes them.
fn schedule_lines(c: &Credential) -> String {
    use keyloop_core::duration::checked_after;
    let p = &c.policy;
    let when = |t: Option<OffsetDateTime>| t.map_or_else(|| "out of range".to_owned(), ts);
    let mut out = format!(
        "  last use: {}\n",
        c.last_used_at.map_or_else(|| "never".to_owned(), ts)
    );
    let live = !c.live_versions().is_empty() && c.retired.is_none();
    match (p.idle_revoke_after_secs, live) {
        (Some(idle), true) => out.push_str(&format!(
            "  idle after: {} unused: revoked at {} unless used before\n",
            format_duration(Duration::from_secs(idle)),
            when(checked_after(c.last_activity(), idle))
        )),
        (Some(idle), false) => out.push_str(&format!(
            "  idle after: {} unused (nothing live to revoke)\n",
            format_duration(Duration::from_secs(idle))
        )),
        (None, _) => out.push_str("  idle after: never (no idle policy)\n"),
    }
    let current = c.current();
    match (p.max_age_secs, current, &c.rotation_retry, live) {
        (_, _, Some(r), true) => out.push_str(&format!(
            "  next rotation: {} (a retry)\n",
            ts(r.next_attempt_at)
        )),
        (Some(max_age), Some(v), None, true) => out.push_str(&format!(
            "  next rotation: {} (every {})\n",
            when(checked_after(
                v.activated_at.unwrap_or(v.created_at),
                max_age
            )),
            format_duration(Duration::from_secs(max_age))
        )),
        _ => out.push_str("  next rotation: none scheduled\n"),
    }
    if let Some(prev) = c.in_stage(keyloop_core::Stage::Previous)
        && let Some(demoted) = prev.demoted_at
    {
        out.push_str(&format!(
            "  grace ends: {} (version {} stops working then)\n",
            when(checked_after(demoted, p.grace_secs)),
            short(&prev.id)
        ));
    }
    out
}

/// A credential and its versions, for people.
pub(crate) fn credential_detail(c: &Credential) -> String {
    let mut out = format!("{}\n", credential_row(c));
    if let Some(owner) = &c.policy.owner {
        out.push_str(&format!("  owner: {owner}\n"));
    }
    out.push_str(&format!(
        "  blast radius: {}\n",
        c.policy.blast_radius.name()
    ));
    if !c.policy.tags.is_empty() {
        out.push_str(&format!("  tags: {}\n", c.policy.tags.join(", ")));
    }
    if let Some(secret) = &c.settings.secret_id {
        out.push_str(&format!("  secret: {secret}\n"));
    }
    if let Some(role) = &c.settings.role {
        out.push_str(&format!(
            "  role: {role} (strategy {})\n",
            c.settings.strategy().name()
        ));
    }
    if let Some(r) = &c.rotation_retry {
        out.push_str(&format!(
            "  rotation failing: {} in a row; next attempt {} (or `keyloop rotate {}` now)\n    last error: {}\n",
            r.failures,
            ts(r.next_attempt_at),
            c.id,
            r.last_error
        ));
    }
    if let Some(registering) = c.versions.iter().find(|v| {
        v.stage == keyloop_core::Stage::Pending
            && keyloop_workers::ops::is_registration(&v.created_by)
    }) {
        out.push_str(&format!(
            "  registration not finished ({}): run the same `keyloop credential register {} …` again\n",
            registering.created_by, c.id
        ));
    }
    out.push_str(&schedule_lines(c));
    out.push_str(&format!(
        "  values: {} (scanner rules: `keyloop rules TOOL`)\n  grace: {}\n  versions (oldest first):\n",
        c.settings.value_format().name(),
        format_duration(Duration::from_secs(c.policy.grace_secs))
    ));
    for v in &c.versions {
        out.push_str(&format!(
            "    {}  {:<8}  created {}",
            v.id,
            v.stage.name(),
            ts(v.created_at)
        ));
        if let Some(login) = &v.login {
            out.push_str(&format!("  role {login}"));
        }
        match (v.stage, v.at_target) {
            (keyloop_core::Stage::Pending, keyloop_core::AtTarget::NotSet) => {
                out.push_str("  (not yet at the target)")
            }
            (keyloop_core::Stage::Pending, keyloop_core::AtTarget::RolledBack) => {
                out.push_str("  (rolled back at the target)")
            }
            _ => {}
        }
        if let Some(t) = v.revoked_at {
            out.push_str(&format!(
                "  revoked {} ({})",
                ts(t),
                v.revoke_reason.map_or("", |r| r.name())
            ));
        }
        // The tag, never a digest: a digest of a live value is all a leak needs to match.
        match &v.fingerprint {
            Some(tag) => out.push_str(&format!("\n      {tag}\n")),
            None => out.push('\n'),
        }
    }
    out
}

/// One lifecycle event, for people.
pub(crate) fn lifecycle_row(e: &LifecycleEvent) -> String {
    format!("{}  {}", ts(e.time), lifecycle_columns(e))
}

/// A lifecycle event's kind, credential and details, aligned: [`lifecycle_row`] after its time.
pub(crate) fn lifecycle_columns(e: &LifecycleEvent) -> String {
    let d = &e.data;
    let mut line = format!(
        "{:<18} {:<28}",
        d.kind.name(),
        d.credential.as_ref().map_or("-", |c| c.as_str())
    );
    if let Some(v) = &d.version {
        line.push_str(&format!(" v={}", short(v)));
    }
    if let Some(l) = &d.lease {
        line.push_str(&format!(
            " lease={} scope={} task={}",
            short(&l.lease_id),
            l.scope,
            l.task_id
        ));
    }
    if let Some(r) = d.revoke_reason {
        line.push_str(&format!(" reason={}", r.name()));
    }
    if let Some(ms) = d.time_to_revoke_ms {
        line.push_str(&format!(" time_to_revoke={ms}ms"));
    }
    if let Some(s) = d.matched_stage {
        line.push_str(&format!(" matched={}", s.name()));
    }
    if let Some(p) = &d.previous_version {
        line.push_str(&format!(" previous={}", short(p)));
    }
    if let Some(tag) = &d.fingerprint {
        line.push_str(&format!(" {tag}"));
    }
    if let Some(detail) = &d.detail {
        line.push_str(&format!(" detail={detail:?}"));
    }
    if let Some(a) = &d.actor {
        line.push_str(&format!(" actor={a}"));
    }
    if let Some(a) = &d.approval {
        line.push_str(&format!(
            " approval={} grants={}/{}",
            a.id, a.grants, a.approvers_needed
        ));
    }
    if !d.policies.is_empty() {
        line.push_str(&format!(" policies={}", d.policies.join(",")));
    }
    if let Some(c) = &e.correlationid {
        line.push_str(&format!(" correlation={c}"));
    }
    if let Some(b) = &e.batchid {
        line.push_str(&format!(" batch={b}"));
    }
    line
}
