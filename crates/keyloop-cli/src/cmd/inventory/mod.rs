//! `keyloop inventory rebuild --dry-run`: the inventory as `KEYLOOP_LIFECYCLE` alone says it
//! is, compared with the live one, and the fingerprint index checked against it (DESIGN
//! invariant 5; the rules are in [`rebuild`]). Reading the buckets needs a NATS user allowed to
//! (`admin` in the checked-in config): the `ops` user may not read the inventory.

mod rebuild;

use crate::cli::{Global, InventoryCommand, ReplayArgs, ReplayStream};
use crate::{config, output};
use anyhow::{Context, Result, bail};
use keyloop_core::LifecycleEvent;
use std::collections::BTreeSet;
use std::process::ExitCode;

/// Exit code when the live inventory or index differs from the rebuild.
const EXIT_DIFFERENT: u8 = 3;

pub(crate) async fn run(g: &Global, command: InventoryCommand) -> Result<ExitCode> {
    let InventoryCommand::Rebuild { dry_run } = command;
    if !dry_run {
        bail!(
            "keyloop will not overwrite the live inventory: the lifecycle records each version's stage, value tag and revocation, but not a credential's policy, settings or target accounts, so a rebuild written back would lose them. Run `keyloop inventory rebuild --dry-run` to compare"
        );
    }
    let bus = config::connect(g).await?;
    let args = ReplayArgs {
        stream: ReplayStream::Lifecycle,
        ..Default::default()
    };
    let events: Vec<LifecycleEvent> = crate::cmd::replay::collect(&bus, &args)
        .await?
        .iter()
        .filter_map(|e| e.lifecycle())
        .collect();
    let advice = "this NATS user may not read it: run as one that may (admin)";
    let credentials = bus
        .inventory()
        .await
        .with_context(|| format!("open the inventory bucket; {advice}"))?
        .list()
        .await
        .with_context(|| format!("read the inventory; {advice}"))?;
    let entries = bus
        .fingerprints()
        .await
        .with_context(|| format!("open the fingerprint index; {advice}"))?
        .entries()
        .await
        .with_context(|| format!("read the fingerprint index; {advice}"))?;
    let rebuilt = rebuild::from_lifecycle(&events);
    let leases: BTreeSet<uuid::Uuid> = events
        .iter()
        .filter_map(|e| e.data.lease.as_ref().map(|l| l.lease_id))
        .collect();
    let mut differences = rebuild::diff(&rebuilt, &rebuild::from_inventory(&credentials));
    differences.extend(rebuild::index_diff(&entries, &rebuilt, &leases));
    let versions: usize = rebuilt.values().map(|c| c.versions.len()).sum();
    if g.json {
        output::json_line(&serde_json::json!({
            "lifecycle_events": events.len(),
            "credentials": rebuilt.len(),
            "versions": versions,
            "fingerprint_entries": entries.len(),
            "differences": differences,
        }))?;
    } else {
        output::line(format_args!(
            "rebuilt from {} lifecycle events: {} credential(s), {versions} version(s); {} fingerprint entries checked",
            events.len(),
            rebuilt.len(),
            entries.len()
        ))?;
        if differences.is_empty() {
            output::line(
                "no differences: the live inventory and fingerprint index match the lifecycle",
            )?;
        } else {
            output::line(format_args!(
                "{} difference(s):\n{:<28} {:<10} {:<18} {:<20} LIVE",
                differences.len(),
                "CREDENTIAL",
                "VERSION",
                "WHAT",
                "REBUILT"
            ))?;
            for d in &differences {
                let v = d.version.map(|v| v.to_string()).unwrap_or_default();
                output::line(format_args!(
                    "{:<28} {:<10} {:<18} {:<20} {}",
                    d.credential,
                    &v[v.len().saturating_sub(8)..],
                    d.what,
                    d.rebuilt,
                    d.live
                ))?;
            }
        }
    }
    Ok(if differences.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_DIFFERENT)
    })
}
