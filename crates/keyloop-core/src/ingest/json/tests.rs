//! Unit tests of the JSON plumbing: zeroizing, taking secrets, and errors that never quote the
//! input.

use super::document::document;
use super::input::{Input, Utf8};
use super::lines::{MAX_LINE_BYTES, read_line};
use super::scrubbed::{Scrubbed, scrub};
use super::*;
use crate::ingest::Entry;
use crate::ingest::sink::Sink;
use serde::de::IgnoredAny;
use serde_json::Value;
use std::io::{self, Read};
use std::ops::ControlFlow;

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
    // Blank is a clean scan, not an error.
    assert_eq!(read_document(b"  \n\t "), Ok(()));
    assert_eq!(read_document(b""), Ok(()));
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
    let doc = Scrubbed::parse(r#"{"a":12,"b":"7","c":0,"d":-3,"e":1.5,"f":"x"}"#).expect("JSON");
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
