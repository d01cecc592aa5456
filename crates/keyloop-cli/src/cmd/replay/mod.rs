//! `keyloop replay`: lifecycle, inbound and DLQ messages in order, from any point in time.
//! Reads the streams with ordered consumers up to their last message at the time of the call,
//! merges them by stored time, filters them ([`filter`]), and with `--follow` goes on with
//! what is stored after. Human output is an aligned table with a header; `--json` is JSON
//! Lines: one CloudEvent per line, and for a DLQ entry its metadata (never its payload).

pub(crate) mod filter;
pub(crate) mod read;
pub(crate) mod row;

pub(crate) use filter::Filter;
pub(crate) use read::collect;
pub(crate) use row::Replayed;

use crate::cli::{Global, ReplayArgs};
use crate::{config, output};
use anyhow::Result;
use std::process::ExitCode;

pub(crate) async fn run(g: &Global, args: ReplayArgs) -> Result<ExitCode> {
    let bus = config::connect(g).await?;
    let filter = Filter::from_args(&args)?;
    let progress = read::Progress::on_terminal(!g.json);
    let history = read::history(&bus, &args, &filter, &progress).await?;
    progress.done();
    if !g.json {
        if history.events.is_empty() && !args.follow {
            eprintln!("no events match");
            return Ok(ExitCode::SUCCESS);
        }
        output::line(row::HEADER)?;
    }
    for e in &history.events {
        print(g, e)?;
    }
    if args.follow {
        let stop = super::shutdown_on_signal();
        let mut live = read::follow(&bus, &args, &history.last_seen).await?;
        loop {
            let next = tokio::select! {
                () = stop.cancelled() => break,
                next = futures::StreamExt::next(&mut live) => next,
            };
            match next {
                Some(Ok(e)) if filter.keeps(&e) => print(g, &e)?,
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => break,
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print(g: &Global, e: &Replayed) -> Result<()> {
    if g.json {
        output::json_line(&e.json())
    } else {
        output::line(e.render())
    }
}
