//! `keyloop store rekey`: rotate the local store's master key itself. With the new key given as
//! usual (`--master-key-file` / `KEYLOOP_MASTER_KEY`) and the store's current key as
//! `KEYLOOP_MASTER_KEY_PREVIOUS` (or `_FILE`), every value is re-sealed under the new key and
//! the store's key check value moves to it (see `keyloop_backends::local::rekey`). The
//! procedure: give the rotator, revoker and api both keys and restart them (they read both and
//! seal under the new one), run this (again if it was interrupted: it resumes), then restart
//! them with the new key alone and destroy the old one.

use crate::cli::Global;
use crate::{config, output};
use anyhow::{Context, Result, bail};
use clap::Subcommand;
use keyloop_backends::local::{KeyId, LocalStore};
use serde_json::json;
use std::io::IsTerminal;
use std::process::ExitCode;

/// Exit code when some value opens under neither key (the check value then stays).
const EXIT_UNREADABLE: u8 = 3;

#[derive(Debug, Subcommand)]
pub(crate) enum StoreCommand {
    /// Re-seal every value of the local store under the new master key (given as usual) from
    /// the previous one (KEYLOOP_MASTER_KEY_PREVIOUS or KEYLOOP_MASTER_KEY_PREVIOUS_FILE), then
    /// make the new key the store's. Resumes where an interrupted run stopped. Exit 3 when some
    /// value opens under neither key (the store then stays the previous key's).
    Rekey,
}

pub(crate) async fn run(g: &Global, command: StoreCommand) -> Result<ExitCode> {
    let StoreCommand::Rekey = command;
    let Some(new) = config::master_key(g)? else {
        bail!(
            "no new master key: give it with --master-key-file FILE (mode 0600) or KEYLOOP_MASTER_KEY (make one with `openssl rand -hex 32`)"
        );
    };
    let Some(previous) = config::previous_master_key()? else {
        bail!(
            "no previous master key: set KEYLOOP_MASTER_KEY_PREVIOUS (or KEYLOOP_MASTER_KEY_PREVIOUS_FILE) to the key the store has now, and --master-key-file / KEYLOOP_MASTER_KEY to the new one"
        );
    };
    if KeyId::of(&new.key) == KeyId::of(&previous) {
        bail!(
            "the new master key ({}) is the previous one: make a new key with `openssl rand -hex 32`",
            new.source
        );
    }
    let bus = config::connect(g).await?;
    let bucket = bus.topology.secrets_bucket();
    let kv = bus
        .kv(&bucket)
        .await
        .with_context(|| format!("open bucket {bucket} (run `keyloop init`)"))?;
    let store = LocalStore::open_checked_with(kv, &new.key, Some(&previous))
        .await
        .with_context(|| {
            format!(
                "the local store is neither the new key's ({}) nor the previous key's ({}); nothing was changed",
                KeyId::of(&new.key),
                KeyId::of(&previous)
            )
        })?;
    let terminal = std::io::stderr().is_terminal();
    let progress = |done: usize, total: usize| {
        if terminal && total >= 100 && (done.is_multiple_of(100) || done == total) {
            eprint!("\rre-sealing: {done}/{total} values");
            if done == total {
                eprintln!();
            }
        }
    };
    let report = store
        .rekey(&new.key, &progress)
        .await
        .map_err(|e| anyhow::anyhow!("{}; run the same command again: it resumes", e.message))?;
    let new_id = KeyId::of(&new.key).to_string();
    if g.json {
        output::json_line(&json!({
            "resealed": report.resealed,
            "already": report.already,
            "unreadable": report.unreadable,
            "key_id": if report.check_swapped { new_id.clone() } else { KeyId::of(&previous).to_string() },
            "check_swapped": report.check_swapped,
        }))?;
    } else {
        output::line(format_args!(
            "re-sealed {} value(s) under key {new_id} ({} already were)",
            report.resealed, report.already
        ))?;
    }
    if !report.check_swapped {
        eprintln!(
            "error: {} value(s) open under neither key ({}); the store stays key {}'s. Find who wrote them (a process with a third key?), or destroy them by revoking their versions, then run this again",
            report.unreadable.len(),
            report.unreadable.join(", "),
            KeyId::of(&previous)
        );
        return Ok(ExitCode::from(EXIT_UNREADABLE));
    }
    if !g.json {
        output::line(format_args!(
            "the local store's key is now {new_id}: restart the rotator, revoker and api with it alone (without KEYLOOP_MASTER_KEY_PREVIOUS), then destroy the previous key"
        ))?;
    }
    Ok(ExitCode::SUCCESS)
}
