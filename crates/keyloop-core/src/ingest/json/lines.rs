//! Report formats that are JSON lines: one object a line, one line in memory at a time, a bad
//! line rejected on its own, and an input in which no line is an object refused as a whole.

use super::fields::kind;
use super::input::{Input, Utf8, unreadable};
use super::scrubbed::Scrubbed;
use super::syntax_problem;
use crate::ingest::Rejected;
use crate::ingest::sink::{Hashed, Sink};
use serde_json::{Map, Value};
use std::io::{self, BufRead, Read};
use std::ops::ControlFlow;
use zeroize::Zeroize;

/// The longest line a line format accepts; a longer one is rejected (and skipped) without being
/// held. TruffleHog's longest lines (a finding with its `ExtraData`) are a few KiB.
pub(crate) const MAX_LINE_BYTES: usize = 1 << 20;

/// What happened to one object of a JSON-lines input.
pub(crate) enum LineOutcome {
    /// A usable finding.
    Finding(Hashed),
    /// An unusable entry, with the reason.
    Rejected(String),
    /// Not a finding at all (a log line); dropped silently.
    Skipped,
}

/// Rejected lines held back until the first JSON object shows the input is of a line format,
/// so an input of another kind (CSV, a JSON document) is one error rather than a rejection per
/// line. Past this many the held ones are handed on and the rest follow as they come.
const HELD_BACK: usize = 1_000;

/// Walks JSON lines: each non-blank line is one object, handed to `on_object` and then to the
/// sink, one line in memory at a time. A line that is not a JSON object (or not UTF-8, or
/// longer than [`MAX_LINE_BYTES`]) is rejected; an input in which no line is a JSON object is
/// not of this format at all, and is an error naming `expected`.
pub(crate) fn lines(
    input: impl Read,
    expected: &str,
    sink: &mut Sink<'_>,
    mut on_object: impl FnMut(&mut Map<String, Value>) -> LineOutcome,
) -> Result<(), String> {
    let mut input = Input::open(input, Utf8::PerLine)?;
    // Never reallocated (a line longer than this is not kept), so no copy of a line is freed
    // without being zeroized.
    let mut line = Vec::with_capacity(MAX_LINE_BYTES + 2);
    let mut held: Vec<Rejected> = Vec::new();
    let mut objects = 0u64;
    let mut content = false;
    let mut first_not_utf8: Option<u64> = None;
    let mut number = 0u64;
    let result = loop {
        wipe(&mut line);
        let start = input.position();
        let too_long = match read_line(&mut input, &mut line) {
            Ok(None) => break Ok(()),
            Ok(Some(too_long)) => too_long,
            Err(e) => break Err(unreadable(&e)),
        };
        number += 1;
        let position = || format!("line {number}");
        let rejected = if too_long {
            content = true;
            Some(format!(
                "line is longer than {} MiB; a finding is one short line",
                MAX_LINE_BYTES >> 20
            ))
        } else {
            let bytes = line.strip_suffix(b"\n").unwrap_or(&line);
            let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
            match std::str::from_utf8(bytes) {
                Err(e) => {
                    content = true;
                    first_not_utf8.get_or_insert(start + e.valid_up_to() as u64);
                    Some(format!(
                        "not UTF-8 text (invalid byte at column {})",
                        e.valid_up_to() + 1
                    ))
                }
                Ok(text) if text.trim().is_empty() => continue,
                Ok(text) => {
                    content = true;
                    let outcome = object_outcome(text, &mut on_object);
                    objects += u64::from(outcome.is_ok());
                    match outcome {
                        Ok(LineOutcome::Finding(finding)) => {
                            if release(&mut held, sink).is_break() || sink.found(finding).is_break()
                            {
                                break Ok(());
                            }
                            None
                        }
                        Ok(LineOutcome::Skipped) => None,
                        Ok(LineOutcome::Rejected(reason)) | Err(reason) => Some(reason),
                    }
                }
            }
        };
        if let Some(reason) = rejected {
            let rejected = Rejected {
                position: position(),
                reason,
            };
            if objects == 0 && held.len() < HELD_BACK {
                held.push(rejected);
            } else if release(&mut held, sink).is_break()
                || sink.reject(rejected.position, rejected.reason).is_break()
            {
                break Ok(());
            }
        } else if objects > 0 && release(&mut held, sink).is_break() {
            break Ok(());
        }
    };
    wipe(&mut line);
    result?;
    if sink.stopped {
        return Ok(());
    }
    if !content {
        // An empty report: a clean scan (TruffleHog prints nothing when it finds nothing).
        return Ok(());
    }
    if objects == 0 {
        // What was held back is dropped: the whole input is refused instead.
        return Err(match first_not_utf8 {
            Some(at) => format!("input is not UTF-8 text (invalid byte at offset {at})"),
            None => format!("no line is a JSON object; expected {expected}"),
        });
    }
    let _ = release(&mut held, sink);
    Ok(())
}

/// Zeroizes the bytes of `line` and empties it (its capacity is left as it is: zeroizing all of
/// it for every line would cost a megabyte a line).
fn wipe(line: &mut Vec<u8>) {
    line.as_mut_slice().zeroize();
    line.clear();
}

/// Parses one line and runs `on_object` on it; `Err` with the reason for a line that is not a
/// JSON object.
fn object_outcome(
    text: &str,
    on_object: &mut impl FnMut(&mut Map<String, Value>) -> LineOutcome,
) -> Result<LineOutcome, String> {
    let mut value = Scrubbed::parse(text)
        .map_err(|e| format!("not JSON ({} at column {})", syntax_problem(&e), e.column()))?;
    let found = kind(&value);
    let Some(object) = value.as_object_mut() else {
        return Err(format!("expected a JSON object, found {found}"));
    };
    Ok(on_object(object))
}

/// Hands the held-back rejections to the sink, in order.
fn release(held: &mut Vec<Rejected>, sink: &mut Sink<'_>) -> ControlFlow<()> {
    for r in held.drain(..) {
        sink.reject(r.position, r.reason)?;
    }
    ControlFlow::Continue(())
}

/// Reads one line (with its `\n`) into `line`. `None` at the end of the input; `Some(true)`
/// when the line was longer than [`MAX_LINE_BYTES`]: it is skipped to its end, and `line` is
/// left empty rather than holding a piece of it.
pub(super) fn read_line(input: &mut impl BufRead, line: &mut Vec<u8>) -> io::Result<Option<bool>> {
    let mut read = 0usize;
    let mut too_long = false;
    loop {
        let available = input.fill_buf()?;
        if available.is_empty() {
            return Ok((read > 0).then_some(too_long));
        }
        let (chunk, ends) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..=i], true),
            None => (available, false),
        };
        if !too_long {
            if line.len() + chunk.len() > MAX_LINE_BYTES + 2 {
                too_long = true;
                wipe(line);
            } else {
                line.extend_from_slice(chunk);
            }
        }
        let n = chunk.len();
        input.consume(n);
        read += n;
        if ends {
            return Ok(Some(too_long));
        }
    }
}
