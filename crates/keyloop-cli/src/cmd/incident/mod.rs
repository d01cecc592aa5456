//! `keyloop incident`: the first questions of an incident answered from the event log alone —
//! when was this value leaked, when was it dead and how fast (from its first detection), was it
//! rotated, who used or tried it afterwards, what else the same report exposed, which JIT
//! leases were involved. Markdown for people, `--json` for machines, `--html FILE` for a
//! self-contained page with the timeline drawn. Reads what `keyloop replay` reads; the owner of
//! each credential comes from the control plane when it answers.

mod html;
mod markdown;
pub(crate) mod report;

use crate::cli::{Global, IncidentArgs, ReplayArgs};
use crate::cmd::replay::filter::IdMatch;
use crate::{api_client, config, output};
use anyhow::{Context, Result};
use keyloop_core::api::{IdRequest, Verb};
use keyloop_core::{Credential, LifecycleEvent};
use report::Selector;
use std::collections::HashMap;
use std::process::ExitCode;

/// Exit code when nothing in the log matches what was asked.
const EXIT_NOT_FOUND: u8 = 4;

pub(crate) async fn run(g: &Global, args: IncidentArgs) -> Result<ExitCode> {
    let selector = selector(&args)?;
    let bus = config::connect(g).await?;
    let events = crate::cmd::replay::collect(
        &bus,
        &ReplayArgs {
            since: args.since.clone(),
            ..Default::default()
        },
    )
    .await?;
    let leaks: Vec<_> = events.iter().filter_map(|e| e.leak()).collect();
    let lifecycle: Vec<LifecycleEvent> = events.iter().filter_map(|e| e.lifecycle()).collect();
    let mut incident = match report::build(&selector, &leaks, &lifecycle) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(EXIT_NOT_FOUND));
        }
    };
    // The owner as the inventory knows it now; the report stands without it.
    let mut owners: HashMap<String, Option<String>> = HashMap::new();
    for f in &mut incident.findings {
        let Some(id) = f.credential.clone() else {
            continue;
        };
        if !owners.contains_key(&id)
            && let Ok(parsed) = super::credential::parse_id(&id)
        {
            let shown: Result<Credential> =
                api_client::call(g, &bus, Verb::Show, &IdRequest { id: parsed }).await;
            owners.insert(id.clone(), shown.ok().and_then(|c| c.policy.owner.clone()));
        }
        f.owner = owners.get(&id).cloned().flatten();
    }
    if let Some(path) = &args.html {
        std::fs::write(path, html::render(&incident))
            .with_context(|| format!("write the HTML report to {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if g.json {
        output::json_line(&incident)?;
    } else {
        output::text(&markdown::render(&incident))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn selector(args: &IncidentArgs) -> Result<Selector> {
    Ok(if let Some(leak) = &args.leak {
        Selector::Leak(leak.trim().to_owned())
    } else if let Some(batch) = &args.report {
        Selector::Report(batch.trim().to_owned())
    } else if let Some(c) = &args.credential {
        Selector::Credential(super::credential::parse_id(c)?)
    } else {
        let lease = args.lease.as_deref().unwrap_or_default();
        Selector::Lease(IdMatch::parse("--lease", lease)?)
    })
}

#[cfg(test)]
mod tests;
