//! JSON plumbing shared by the format parsers: reading the input in fixed-size chunks (checking
//! its encoding on the way), walking JSON lines one line at a time and JSON documents one
//! element at a time, parsing into values whose strings are zeroized on drop, taking a plaintext
//! field straight into a [`Secret`], and describing what is wrong without ever quoting the input
//! (a report's text is full of secret values, so no reason built here contains any of it).
//!
//! Memory is bounded by the largest line or element, never by the report: the reader keeps one
//! 64 KiB chunk (zeroized when it is dropped), a line format one line (at most
//! [`MAX_LINE_BYTES`]), a document format one element of its array. One copy is out of our
//! hands: serde_json's scratch buffer for strings with escapes, which it drops unzeroized.

use super::{Rejected, Sink};
use crate::leak::LeakFinding;
use crate::secret::Secret;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;
use std::io::{self, BufRead, Read};
use std::marker::PhantomData;
use std::ops::{ControlFlow, Deref, DerefMut};
use zeroize::Zeroize;

/// The longest line a line format accepts; a longer one is rejected (and skipped) without being
/// held. TruffleHog's longest lines (a finding with its `ExtraData`) are a few KiB.
pub(crate) const MAX_LINE_BYTES: usize = 1 << 20;

/// How much of the input is read at a time.
const CHUNK_BYTES: usize = 64 * 1024;

/// A parsed JSON value whose strings are all zeroized when it is dropped: a report holds
/// plaintext in fields we read (`Secret`, `Raw`) and in fields we ignore (`Match`, `RawV2`).
/// Its `Deserialize` zeroizes what it built so far when the input turns out to be malformed
/// halfway, so a failed parse leaves no copied value behind either.
#[derive(Default)]
pub(crate) struct Scrubbed(Value);

impl Scrubbed {
    /// Parses one JSON text.
    pub(crate) fn parse(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// The value, leaving `Null` behind (so this wrapper has nothing left to scrub).
    fn take(mut self) -> Value {
        std::mem::take(&mut self.0)
    }
}

impl Deref for Scrubbed {
    type Target = Value;
    fn deref(&self) -> &Value {
        &self.0
    }
}

impl DerefMut for Scrubbed {
    fn deref_mut(&mut self) -> &mut Value {
        &mut self.0
    }
}

impl Drop for Scrubbed {
    fn drop(&mut self) {
        scrub(&mut self.0);
    }
}

/// Zeroizes every string in `value`. Object keys cannot be changed in place; they are field
/// names and file paths, not values. Depth is bounded by serde_json's recursion limit.
fn scrub(value: &mut Value) {
    match value {
        Value::String(s) => s.zeroize(),
        Value::Array(items) => items.iter_mut().for_each(scrub),
        Value::Object(fields) => fields.values_mut().for_each(scrub),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

impl<'de> serde::Deserialize<'de> for Scrubbed {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ScrubbedVisitor)
    }
}

/// Builds a [`Scrubbed`] the way serde_json builds a `Value`, but inside a `Scrubbed` from the
/// first element on, so an error halfway through drops (and zeroizes) what was built.
struct ScrubbedVisitor;

impl<'de> Visitor<'de> for ScrubbedVisitor {
    type Value = Scrubbed;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Scrubbed, E> {
        Ok(Scrubbed(Value::Bool(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Scrubbed, E> {
        Ok(Scrubbed(Value::from(v)))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Scrubbed, E> {
        Ok(Scrubbed(Value::from(v)))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Scrubbed, E> {
        Ok(Scrubbed(
            serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number),
        ))
    }

    fn visit_str<E>(self, v: &str) -> Result<Scrubbed, E> {
        Ok(Scrubbed(Value::String(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Scrubbed, E> {
        Ok(Scrubbed(Value::String(v)))
    }

    fn visit_unit<E>(self) -> Result<Scrubbed, E> {
        Ok(Scrubbed(Value::Null))
    }

    fn visit_none<E>(self) -> Result<Scrubbed, E> {
        Ok(Scrubbed(Value::Null))
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Scrubbed, D::Error> {
        serde::Deserialize::deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scrubbed, A::Error> {
        let mut out = Scrubbed(Value::Array(Vec::new()));
        while let Some(item) = seq.next_element::<Scrubbed>()? {
            if let Value::Array(items) = &mut out.0 {
                items.push(item.take());
            }
        }
        Ok(out)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scrubbed, A::Error> {
        let mut out = Scrubbed(Value::Object(Map::new()));
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value::<Scrubbed>()?.take();
            if let Value::Object(fields) = &mut out.0
                && let Some(mut replaced) = fields.insert(key, value)
            {
                // A repeated key: the first value is dropped here, so scrub it.
                scrub(&mut replaced);
            }
        }
        Ok(out)
    }
}

/// Whether [`Input`] checks that the input is UTF-8 as it reads it. Documents are checked as
/// a whole (one bad byte ends the document); line formats check each line and reject only it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Utf8 {
    Check,
    PerLine,
}

/// The report as it is read: a UTF-16 byte-order mark is refused, a UTF-8 one skipped; the
/// bytes are read in chunks into a buffer that is zeroized when dropped and, in
/// [`Utf8::Check`] mode, checked to be UTF-8 as they arrive.
struct Input<R> {
    inner: R,
    buf: Box<[u8]>,
    pos: usize,
    filled: usize,
    /// Offset in the input of `buf[0]`.
    offset: u64,
    utf8: Utf8,
    /// The start of a multi-byte character cut off at the end of the last chunk.
    partial: [u8; 4],
    partial_len: usize,
    /// Where the first byte that is not UTF-8 is, once found ([`Utf8::Check`] only).
    not_utf8_at: Option<u64>,
    /// Whether anything but JSON whitespace was read ([`Utf8::Check`] only).
    content: bool,
}

impl<R: Read> Input<R> {
    /// Reads the first bytes to look for a byte-order mark.
    fn open(inner: R, utf8: Utf8) -> Result<Self, String> {
        let mut input = Self {
            inner,
            buf: vec![0; CHUNK_BYTES].into_boxed_slice(),
            pos: 0,
            filled: 0,
            offset: 0,
            utf8,
            partial: [0; 4],
            partial_len: 0,
            not_utf8_at: None,
            content: false,
        };
        // A short read (a pipe) may return fewer bytes than a mark; read until there are three.
        while input.filled < 3 {
            match input.inner.read(&mut input.buf[input.filled..]) {
                Ok(0) => break,
                Ok(n) => input.filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(unreadable(&e)),
            }
        }
        let head = &input.buf[..input.filled];
        if head.starts_with(&[0xFF, 0xFE]) || head.starts_with(&[0xFE, 0xFF]) {
            return Err("input is UTF-16 text; convert it to UTF-8 \
                        (PowerShell: `Out-File -Encoding utf8`)"
                .into());
        }
        if head.starts_with(b"\xEF\xBB\xBF") {
            input.pos = 3;
        }
        input.check(input.pos);
        Ok(input)
    }

    /// Checks `buf[from..filled]`, the bytes just read, in [`Utf8::Check`] mode.
    fn check(&mut self, from: usize) {
        if self.utf8 != Utf8::Check || self.not_utf8_at.is_some() {
            return;
        }
        let mut rest = &self.buf[from..self.filled];
        let mut at = self.offset + from as u64;
        if !self.content {
            self.content = rest
                .iter()
                .any(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
        }
        if self.partial_len > 0 {
            // Complete the character cut off at the end of the previous chunk.
            let width = utf8_width(self.partial[0]);
            let take = (width - self.partial_len).min(rest.len());
            self.partial[self.partial_len..self.partial_len + take].copy_from_slice(&rest[..take]);
            self.partial_len += take;
            rest = &rest[take..];
            at += take as u64;
            if self.partial_len < width {
                return;
            }
            if std::str::from_utf8(&self.partial[..width]).is_err() {
                self.not_utf8_at = Some(at - width as u64);
                return;
            }
            self.partial_len = 0;
        }
        if let Err(e) = std::str::from_utf8(rest) {
            let valid = e.valid_up_to();
            match e.error_len() {
                Some(_) => self.not_utf8_at = Some(at + valid as u64),
                // A character cut off by the end of the chunk: finished by the next one.
                None => {
                    let tail = &rest[valid..];
                    self.partial[..tail.len()].copy_from_slice(tail);
                    self.partial_len = tail.len();
                }
            }
        }
    }

    /// The input offset of the next byte to be read.
    fn position(&self) -> u64 {
        self.offset + self.pos as u64
    }
}

/// How many bytes the UTF-8 character starting with `lead` has (the lead of a cut-off character
/// is always a valid lead byte: `from_utf8` reported it as incomplete, not invalid).
const fn utf8_width(lead: u8) -> usize {
    match lead {
        0xF0..=0xFF => 4,
        0xE0..=0xEF => 3,
        _ => 2,
    }
}

impl<R: Read> BufRead for Input<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.not_utf8_at.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "input is not UTF-8",
            ));
        }
        if self.pos == self.filled {
            self.offset += self.filled as u64;
            self.pos = 0;
            self.filled = 0;
            let n = loop {
                match self.inner.read(&mut self.buf) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    other => break other?,
                }
            };
            self.filled = n;
            if n == 0 && self.partial_len > 0 && self.utf8 == Utf8::Check {
                // The input ends inside a character.
                self.not_utf8_at = Some(self.offset - self.partial_len as u64);
            }
            self.check(0);
            if self.not_utf8_at.is_some() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "input is not UTF-8",
                ));
            }
        }
        Ok(&self.buf[self.pos..self.filled])
    }

    fn consume(&mut self, amount: usize) {
        self.pos = (self.pos + amount).min(self.filled);
    }
}

impl<R: Read> Read for Input<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<R> Drop for Input<R> {
    fn drop(&mut self) {
        self.buf.zeroize();
        self.partial.zeroize();
    }
}

/// A read error, in words: the OS's description of it, which never holds input.
fn unreadable(e: &io::Error) -> String {
    format!("cannot read the input ({})", e.kind())
}

/// The serde_json deserializer over an [`Input`], as the format parsers see it.
type JsonDe<'i, R> = serde_json::Deserializer<serde_json::de::IoRead<&'i mut Input<R>>>;

/// Implements the scalar `visit_*` methods of a [`Visitor`] but `visit_unit` (null, which some
/// formats accept) by calling `self.other(found)`, for visitors that want an array or an
/// object: serde's default methods would describe the unexpected value by quoting it.
macro_rules! scalars_are_other {
    () => {
        fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Self::Value, E> {
            self.other($crate::ingest::json::Found("a boolean"))
        }
        fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Self::Value, E> {
            self.other($crate::ingest::json::Found("a number"))
        }
        fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Self::Value, E> {
            self.other($crate::ingest::json::Found("a number"))
        }
        fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Self::Value, E> {
            self.other($crate::ingest::json::Found("a number"))
        }
        fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Self::Value, E> {
            self.other($crate::ingest::json::Found("a string"))
        }
    };
}
pub(crate) use scalars_are_other;

/// A report format that is one JSON document: what it does with the top-level value. Whatever
/// it does not take refuses the whole document ("expected …, found …").
pub(crate) trait Document {
    /// What the format looks like, for errors.
    const EXPECTED: &'static str;

    /// Whether a top-level `null` is a report without findings.
    const NULL_IS_EMPTY: bool = false;

    /// The top-level value is an array.
    fn array<'de, A: SeqAccess<'de>>(sink: &mut Sink<'_>, seq: A) -> Result<(), A::Error> {
        let _ = seq;
        Err(refuse_found::<Self, _>(sink, Found("an array")))
    }

    /// The top-level value is an object.
    fn object<'de, A: MapAccess<'de>>(sink: &mut Sink<'_>, map: A) -> Result<(), A::Error> {
        let _ = map;
        Err(refuse_found::<Self, _>(sink, Found("an object")))
    }
}

/// Walks a report of document format `D`, handing entries to the sink as they are reached.
pub(crate) fn walk<D: Document>(input: impl Read, sink: &mut Sink<'_>) -> Result<(), String> {
    document(input, D::EXPECTED, sink, |de, sink| {
        de.deserialize_any(TopLevel::<D> {
            sink,
            format: PhantomData,
        })
    })
}

/// Refuses a document of format `D` whose top-level value is `found`.
fn refuse_found<D: Document + ?Sized, E: de::Error>(sink: &mut Sink<'_>, found: Found) -> E {
    refuse(sink, format!("expected {}, found {}", D::EXPECTED, found.0))
}

/// The top-level value of a document of format `D`.
struct TopLevel<'s, 'a, D> {
    sink: &'s mut Sink<'a>,
    format: PhantomData<D>,
}

impl<D: Document> TopLevel<'_, '_, D> {
    fn other<E: de::Error>(self, found: Found) -> Result<(), E> {
        Err(refuse_found::<D, E>(self.sink, found))
    }
}

impl<'de, D: Document> Visitor<'de> for TopLevel<'_, '_, D> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(D::EXPECTED)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        D::array(self.sink, seq)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        D::object(self.sink, map)
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        if D::NULL_IS_EMPTY {
            Ok(())
        } else {
            self.other(Found("null"))
        }
    }

    scalars_are_other!();
}

/// Walks one JSON document: `walk` drives the deserializer (handing entries to the sink as it
/// reaches them), then nothing but whitespace may follow. Entries already handed on stay
/// handed on when the document turns out to be malformed further down; the error says where.
/// `expected` names what the format looks like.
fn document<'s, R: Read>(
    input: R,
    expected: &str,
    sink: &mut Sink<'s>,
    walk: impl FnOnce(&mut JsonDe<'_, R>, &mut Sink<'s>) -> serde_json::Result<()>,
) -> Result<(), String> {
    let mut input = Input::open(input, Utf8::Check)?;
    let result = {
        let mut de = serde_json::Deserializer::from_reader(&mut input);
        walk(&mut de, sink).and_then(|()| de.end())
    };
    let Err(e) = result else {
        return Ok(());
    };
    if sink.stopped {
        return Ok(());
    }
    if let Some(reason) = sink.refused.take() {
        return Err(reason);
    }
    if let Some(at) = input.not_utf8_at {
        return Err(format!(
            "input is not UTF-8 text (invalid byte at offset {at})"
        ));
    }
    if !input.content {
        return Err("empty input".into());
    }
    if e.classify() == serde_json::error::Category::Io {
        let e: io::Error = e.into();
        return Err(unreadable(&e));
    }
    Err(format!(
        "not JSON ({} at line {} column {}); expected {expected}",
        syntax_problem(&e),
        e.line(),
        e.column()
    ))
}

/// Ends a walk early because the whole document is not of the format: the reason goes to the
/// sink (serde's own messages can quote the input), the error only unwinds the deserializer.
pub(crate) fn refuse<E: de::Error>(sink: &mut Sink<'_>, reason: String) -> E {
    sink.refused = Some(reason);
    E::custom("refused")
}

/// Ends a walk early because the sink asked to stop.
pub(crate) fn stop<E: de::Error>() -> E {
    E::custom("stopped")
}

/// Hands each element of a JSON array to `on_element` (with its 0-based index) as soon as it is
/// parsed; only one element is in memory at a time.
pub(crate) fn each_element<'de, A: SeqAccess<'de>>(
    mut seq: A,
    mut on_element: impl FnMut(usize, Scrubbed) -> ControlFlow<()>,
) -> Result<(), A::Error> {
    let mut index = 0;
    while let Some(item) = seq.next_element::<Scrubbed>()? {
        if on_element(index, item).is_break() {
            return Err(stop());
        }
        index += 1;
    }
    Ok(())
}

/// The JSON type a visitor was handed instead of what it wanted, with an article.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Found(pub(crate) &'static str);

/// Consumes the rest of an object a visitor does not want and says it was one.
pub(crate) fn drain_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<Found, A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(Found("an object"))
}

/// Collects the rest of an object into a [`Scrubbed`] value (one alert, one finding).
pub(crate) fn collect_map<'de, A: MapAccess<'de>>(map: A) -> Result<Scrubbed, A::Error> {
    ScrubbedVisitor.visit_map(map)
}

/// What happened to one object of a JSON-lines input.
pub(crate) enum LineOutcome {
    /// A usable finding.
    Finding(LeakFinding),
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
                            if release(&mut held, sink).is_break()
                                || sink.finding(finding).is_break()
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
        return Err("empty input".into());
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
fn read_line(input: &mut impl BufRead, line: &mut Vec<u8>) -> io::Result<Option<bool>> {
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

/// The JSON type of a value, with an article, for "expected …, found …" reasons.
pub(crate) const fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// What a report holds where a plaintext value should be.
pub(crate) enum SecretField {
    /// The field is absent or null.
    Missing,
    /// The field is a string of only whitespace.
    Empty,
    /// The field is not a string; the JSON type is given.
    NotAString(&'static str),
    /// The value, moved out of the document (no copy is made).
    Value(Secret),
}

/// Moves the plaintext at `key` into a [`Secret`], leaving an empty string behind.
pub(crate) fn take_secret(object: &mut Map<String, Value>, key: &str) -> SecretField {
    match object.get_mut(key) {
        None | Some(Value::Null) => SecretField::Missing,
        Some(Value::String(s)) if s.trim().is_empty() => SecretField::Empty,
        Some(Value::String(s)) => SecretField::Value(Secret::new(std::mem::take(s))),
        Some(other) => SecretField::NotAString(kind(other)),
    }
}

/// A non-empty string at `key`; `None` when it is absent, null, empty or not a string.
/// Lenient on purpose: detectors' location fields vary across versions, and a location is
/// optional. Only for fields that never hold a secret.
pub(crate) fn text(object: &Map<String, Value>, key: &str) -> Option<String> {
    match object.get(key) {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// A 1-based line number at `key` (an integer, or a string of digits); `None` when it is
/// absent, zero (detectors use 0 for "unknown") or anything else.
pub(crate) fn line(object: &Map<String, Value>, key: &str) -> Option<u64> {
    let line = match object.get(key)? {
        Value::Number(n) => n.as_u64()?,
        Value::String(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    (line > 0).then_some(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::Entry;

    #[test]
    fn strings_are_zeroized_when_the_document_is_dropped() {
        let mut doc = Scrubbed::parse(r#"{"a":["FAKE-value-0001",{"b":"FAKE-value-0002"}]}"#)
            .expect("valid JSON");
        scrub(&mut doc);
        assert_eq!(*doc, serde_json::json!({"a": ["", {"b": ""}]}));
    }

    #[test]
    fn scrubbed_values_equal_what_serde_json_builds() {
        let text = r#"{"a":[1,-2,3.5,true,null,"x\u00e9"],"b":{"c":{}},"a2":18446744073709551615}"#;
        let ours = Scrubbed::parse(text).expect("valid JSON");
        let theirs: Value = serde_json::from_str(text).expect("valid JSON");
        assert_eq!(*ours, theirs);
    }

    #[test]
    fn taking_a_secret_leaves_an_empty_string_behind() {
        let mut doc = Scrubbed::parse(r#"{"Raw":"FAKE-value-0003"}"#).expect("valid JSON");
        let object = doc.as_object_mut().expect("an object");
        let SecretField::Value(secret) = take_secret(object, "Raw") else {
            panic!("expected a value");
        };
        assert_eq!(secret.expose(), "FAKE-value-0003");
        assert_eq!(object["Raw"], "");
    }

    /// Runs `document` over `input` with a walk that reads one value and ignores it.
    fn read_document(input: &[u8]) -> Result<(), String> {
        let mut emit = |_: Entry| ControlFlow::Continue(());
        let mut sink = Sink::new(&mut emit);
        document(input, "something", &mut sink, |de, _| {
            serde::Deserialize::deserialize(de).map(|_: IgnoredAny| ())
        })
    }

    #[test]
    fn syntax_errors_are_described_without_quoting_the_input() {
        let err = read_document(br#"{"Secret": "FAKE-value-0004" oops}"#).expect_err("malformed");
        assert!(
            err.starts_with("not JSON (expected `,` or `}` at line 1 column"),
            "{err}"
        );
        assert!(!err.contains("FAKE-value-0004"));
        assert!(!err.contains("oops"));
    }

    #[test]
    fn documents_that_are_not_utf8_utf16_or_blank_are_refused() {
        assert_eq!(
            read_document(b"\xEF\xBB\xBF[\xff]").expect_err("not UTF-8"),
            "input is not UTF-8 text (invalid byte at offset 4)"
        );
        assert_eq!(read_document(b"  \n\t ").expect_err("blank"), "empty input");
        assert_eq!(read_document(b"").expect_err("empty"), "empty input");
        let bad = read_document(b"[{\"Secret\":\"\xff\"}]").expect_err("not UTF-8");
        assert!(bad.contains("not UTF-8"), "{bad}");
        assert!(
            read_document(b"\xFF\xFE[\0]\0")
                .expect_err("UTF-16")
                .contains("UTF-16")
        );
        assert_eq!(read_document(b"\xEF\xBB\xBF[]"), Ok(()));
    }

    /// A reader that hands out its bytes `step` at a time, as a pipe may.
    struct Trickle<'a> {
        bytes: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(out.len()).min(self.bytes.len());
            out[..n].copy_from_slice(&self.bytes[..n]);
            self.bytes = &self.bytes[n..];
            Ok(n)
        }
    }

    #[test]
    fn utf8_is_checked_across_chunk_boundaries() {
        // Multi-byte characters cut at every possible point by 1- and 2-byte reads.
        let good = "[\"é€𝄞\", \"ok\"]".as_bytes();
        for step in [1, 2, 3] {
            let mut input = Input::open(Trickle { bytes: good, step }, Utf8::Check).unwrap();
            let mut all = Vec::new();
            input.read_to_end(&mut all).expect("valid UTF-8");
            assert_eq!(all, good);
        }
        for (bad, at) in [
            (&b"[\"\xe2\x82\"]"[..], 2),
            (b"[1] \xe2\x82", 4),
            (b"\"\xc3\x28\"", 1),
        ] {
            for step in [1, 2, 64] {
                let mut input = Input::open(Trickle { bytes: bad, step }, Utf8::Check).unwrap();
                let mut all = Vec::new();
                assert!(input.read_to_end(&mut all).is_err(), "{bad:?} step {step}");
                assert_eq!(input.not_utf8_at, Some(at), "{bad:?} step {step}");
            }
        }
    }

    #[test]
    fn line_numbers_are_positive_integers_or_nothing() {
        let doc =
            Scrubbed::parse(r#"{"a":12,"b":"7","c":0,"d":-3,"e":1.5,"f":"x"}"#).expect("JSON");
        let object = doc.as_object().expect("an object");
        assert_eq!(line(object, "a"), Some(12));
        assert_eq!(line(object, "b"), Some(7));
        for key in ["c", "d", "e", "f", "missing"] {
            assert_eq!(line(object, key), None, "{key}");
        }
    }

    #[test]
    fn a_line_longer_than_the_limit_is_skipped_whole() {
        let mut input = format!("{{\"x\":\"{}\"}}\r\n", "a".repeat(MAX_LINE_BYTES)).into_bytes();
        input.extend_from_slice(b"{\"y\":1}\n");
        let mut reader = Input::open(&input[..], Utf8::PerLine).unwrap();
        let mut line = Vec::new();
        assert_eq!(read_line(&mut reader, &mut line).unwrap(), Some(true));
        assert!(line.is_empty());
        assert_eq!(read_line(&mut reader, &mut line).unwrap(), Some(false));
        assert_eq!(line, b"{\"y\":1}\n");
        line.clear();
        assert_eq!(read_line(&mut reader, &mut line).unwrap(), None);
    }
}
