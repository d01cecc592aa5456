//! JSON plumbing shared by the format parsers: reading the input in fixed-size chunks (checking
//! its encoding on the way), walking JSON lines one line at a time and JSON documents one
//! element at a time, parsing into values whose strings are zeroized on drop, taking a plaintext
//! field straight into a [`Secret`](crate::secret::Secret), and describing what is wrong
//! without ever quoting the input (a report's text is full of secret values, so no reason
//! built here contains any of it).
//!
//! Memory is bounded by the largest line or element, never by the report: the reader keeps one
//! 64 KiB chunk (zeroized when it is dropped), a line format one line (at most
//! [`MAX_LINE_BYTES`](lines::MAX_LINE_BYTES)), a document format one element of its array. One
//! copy is out of our hands: serde_json's scratch buffer for strings with escapes, which it
//! drops unzeroized.
//!
//! One file per concern: `input.rs` (reading in chunks, checking the encoding), `scrubbed.rs`
//! (values zeroized on drop), `document.rs` (a document walked an element at a time),
//! `lines.rs` (JSON lines), `fields.rs` (reading a finding's fields), and here the words for a
//! parse failure that the walkers share.

mod document;
pub(crate) mod fields;
mod input;
mod lines;
mod scrubbed;
#[cfg(test)]
mod tests;

pub(crate) use document::{
    Document, Found, collect_map, drain_map, each_element, refuse, scalars_are_other, stop, walk,
    walk_each,
};
pub(crate) use fields::{SecretField, kind, line, take_secret, text};
pub(crate) use input::unreadable;
pub(crate) use lines::{LineOutcome, lines};
pub(crate) use scrubbed::Scrubbed;

use std::io::Read;

/// The first byte of `input` that is not JSON white space (after a UTF-8 byte-order mark), and
/// the whole input again from that byte on; `None` for an input of white space only. For
/// formats that are a JSON document or JSON lines, told apart by that byte.
pub(crate) fn first_byte(mut input: impl Read) -> Result<(Option<u8>, impl Read), String> {
    let mut byte = [0u8; 1];
    let mut at = 0u64;
    let first = loop {
        match input.read(&mut byte) {
            Ok(0) => break None,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(unreadable(&e)),
        }
        let mark = at < 3 && byte[0] == b"\xEF\xBB\xBF"[at as usize];
        at += 1;
        if !mark && !matches!(byte[0], b' ' | b'\t' | b'\n' | b'\r') {
            break Some(byte[0]);
        }
    };
    let head = first.map_or(&[][..], |_| &byte[..]).to_vec();
    Ok((first, std::io::Cursor::new(head).chain(input)))
}

/// serde_json's description of a parse failure, without its position. Syntax and end-of-input
/// messages are fixed phrases ("expected value", "trailing characters"); data errors can quote
/// the input (`invalid type: string "…"`), so they are never passed through.
fn syntax_problem(err: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match err.classify() {
        Category::Syntax | Category::Eof => {
            let full = err.to_string();
            let position = format!(" at line {} column {}", err.line(), err.column());
            match full.strip_suffix(&position) {
                Some(phrase) => phrase.to_owned(),
                None => "malformed JSON".to_owned(),
            }
        }
        Category::Data => "unexpected value".to_owned(),
        Category::Io => "unreadable input".to_owned(),
    }
}
