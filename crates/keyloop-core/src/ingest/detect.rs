//! Telling a report's format from its first bytes: the keys of its first object (of the
//! document, of its first line, or of the first element of its array) name the tool. Used to
//! choose the format (`keyloop ingest auto`) and to say what a report of the wrong named
//! format looks like.
//!
//! The first bytes are kept in a zeroized buffer ([`Prefix`]) and scanned with a small
//! tokenizer that records object keys at one depth and skips every value, so no value is
//! copied out of the buffer; keys are only compared with known field names, never shown.

use super::Format;
use std::io::{self, Read};
use zeroize::Zeroizing;

/// How much of the input is kept to tell its format.
const HEAD_BYTES: usize = 64 * 1024;

/// What the first bytes of a report say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Looks {
    /// Nothing but white space, `null` or `[]`: a report without findings.
    Empty,
    /// A report of this format.
    Like(Format),
    /// None of the formats; what it looks like instead.
    Unknown(&'static str),
}

/// The input, with its first bytes kept to tell its format: either read ahead until they do
/// (sniffing, for [`super::Choice::Auto`]) or recorded as the parser reads them.
pub(crate) struct Prefix<R> {
    inner: R,
    /// The first bytes; never grown beyond its capacity, so never moved unzeroized.
    head: Zeroizing<Vec<u8>>,
    /// How much of `head` was handed out.
    served: usize,
    /// The input ended within `head`.
    ended: bool,
}

impl<R: Read> Prefix<R> {
    /// Keeps the first bytes as they are read.
    pub(crate) fn recording(inner: R) -> Self {
        Self {
            inner,
            head: Zeroizing::new(Vec::with_capacity(HEAD_BYTES)),
            served: 0,
            ended: false,
        }
    }

    /// Reads ahead until the first bytes tell the format, the input ends, or
    /// [`HEAD_BYTES`] are read.
    pub(crate) fn sniffing(inner: R) -> Result<Self, String> {
        let mut prefix = Self::recording(inner);
        while prefix.head.len() < HEAD_BYTES && judge(&prefix.head, false).is_none() {
            if prefix.fill().map_err(|e| super::json::unreadable(&e))? == 0 {
                break;
            }
        }
        Ok(prefix)
    }

    /// Reads more of the input into `head`; 0 at its end.
    fn fill(&mut self) -> io::Result<usize> {
        let len = self.head.len();
        self.head.resize(HEAD_BYTES, 0);
        let read = loop {
            match self.inner.read(&mut self.head[len..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => break other,
            }
        };
        let n = *read.as_ref().unwrap_or(&0);
        self.head.truncate(len + n);
        self.ended |= n == 0 && read.is_ok();
        read
    }

    /// What the bytes kept so far say.
    pub(crate) fn looks(&self) -> Looks {
        judge(&self.head, self.ended).unwrap_or(Looks::Unknown(
            "its first 64 KiB match no format keyloop reads",
        ))
    }
}

impl<R: Read> Read for Prefix<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.served == self.head.len() && self.head.len() < HEAD_BYTES {
            // Never past the end: a reader asked again may not say so twice.
            if self.ended || self.fill()? == 0 {
                return Ok(0);
            }
        }
        if self.served < self.head.len() {
            let n = out.len().min(self.head.len() - self.served);
            out[..n].copy_from_slice(&self.head[self.served..self.served + n]);
            self.served += n;
            return Ok(n);
        }
        if self.ended {
            return Ok(0);
        }
        let n = self.inner.read(out)?;
        self.ended = n == 0 && !out.is_empty();
        Ok(n)
    }
}

/// The top-level value the scan found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Top {
    Nothing,
    Object,
    Array,
    Null,
    Other,
}

/// What the scan of the first bytes saw.
#[derive(Debug)]
struct Scan<'a> {
    top: Top,
    /// The keys of the first object: the document, its first line, or its array's first
    /// element.
    keys: Vec<&'a [u8]>,
    /// That object was read to its end.
    closed: bool,
    /// The array's first element is not an object.
    element_not_object: bool,
    /// The array ended with no element.
    empty_array: bool,
}

/// The format `head` tells, or `None` when more of it is needed (`complete`: there is no
/// more).
fn judge(head: &[u8], complete: bool) -> Option<Looks> {
    let scan = scan(head);
    let has = |names: &[&str]| {
        scan.keys
            .iter()
            .any(|k| names.iter().any(|n| n.as_bytes() == *k))
    };
    let settled = scan.closed || complete || head.len() >= HEAD_BYTES;
    match scan.top {
        Top::Nothing if complete => Some(Looks::Empty),
        Top::Nothing => None,
        Top::Null => {
            let text = head.trim_ascii();
            if text == b"null" {
                Some(Looks::Empty)
            } else if b"null".starts_with(text) && !complete {
                None
            } else {
                Some(Looks::Unknown("it is not JSON"))
            }
        }
        Top::Other if head.starts_with(&[0xFF, 0xFE]) || head.starts_with(&[0xFE, 0xFF]) => {
            Some(Looks::Unknown("it is UTF-16 text; convert it to UTF-8"))
        }
        Top::Other => Some(Looks::Unknown("it is not JSON")),
        Top::Object => {
            let decided = if has(&["runs"]) {
                Some(Format::Sarif)
            } else if has(&["findings", "rule", "finding", "access_map", "audit"]) {
                Some(Format::Kingfisher)
            } else if has(&["results", "plugins_used", "filters_used"]) {
                Some(Format::DetectSecrets)
            } else if has(&["alert", "secret_type"]) {
                Some(Format::Github)
            } else if has(&[
                "SourceMetadata",
                "DetectorName",
                "DetectorType",
                "Raw",
                "RawV2",
            ]) {
                Some(Format::Trufflehog)
            } else if has(&["Secret", "RuleID", "StartLine"]) {
                // gitleaks writes an array; JSON lines of its findings are betterleaks'.
                Some(Format::Betterleaks)
            } else if has(&["filePath", "sourceContent"]) {
                Some(Format::Secretlint)
            } else if has(&["sha256", "sha1"]) {
                Some(Format::Generic)
            } else {
                None
            };
            match decided {
                Some(format) => Some(Looks::Like(format)),
                None if !settled => None,
                // Ambiguous alone (GitHub alerts have `secret` too), settled once the object
                // ends without a GitHub key.
                None if has(&["secret"]) => Some(Looks::Like(Format::Generic)),
                None if has(&["level", "msg"]) => Some(Looks::Like(Format::Trufflehog)),
                None => Some(Looks::Unknown("a JSON object of no format keyloop reads")),
            }
        }
        Top::Array => {
            if scan.empty_array {
                return Some(Looks::Empty);
            }
            if scan.element_not_object {
                return Some(Looks::Unknown(
                    "a JSON array of something else than findings",
                ));
            }
            if !settled {
                return None;
            }
            let format = if has(&[
                "Attributes",
                "ValidationStatus",
                "MatchContext",
                "CaptureGroups",
            ]) {
                Format::Betterleaks
            } else if has(&["Secret", "RuleID", "StartLine", "Match"]) {
                Format::Gitleaks
            } else if has(&["rule", "finding", "matches"]) {
                Format::Kingfisher
            } else if has(&["filePath", "messages", "sourceContent"]) {
                Format::Secretlint
            } else if has(&["alert", "secret_type", "action"]) {
                Format::Github
            } else {
                return Some(Looks::Unknown(
                    "a JSON array of objects of no format keyloop reads",
                ));
            };
            Some(Looks::Like(format))
        }
    }
}

/// Scans `head` (possibly cut anywhere) for its top-level value and the keys of its first
/// object; values are skipped, never copied.
fn scan(head: &[u8]) -> Scan<'_> {
    let mut scan = Scan {
        top: Top::Nothing,
        keys: Vec::new(),
        closed: false,
        element_not_object: false,
        empty_array: false,
    };
    let bytes = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head);
    let Some(start) = bytes.iter().position(|b| !b.is_ascii_whitespace()) else {
        return scan;
    };
    scan.top = match bytes[start] {
        b'{' => Top::Object,
        b'[' => Top::Array,
        b'n' => Top::Null,
        _ => Top::Other,
    };
    let target = match scan.top {
        Top::Object => 1,
        Top::Array => 2,
        _ => return scan,
    };
    // Open containers: `true` for an object. `key` is set where an object expects a key.
    let mut stack: Vec<bool> = Vec::new();
    let mut key = false;
    let mut i = start;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'"' => {
                if stack.len() == 1 && target == 2 {
                    scan.element_not_object = true;
                    return scan;
                }
                let from = i + 1;
                i = from;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                if i >= bytes.len() {
                    break;
                }
                if key && stack.len() == target && stack.last() == Some(&true) && i - from <= 64 {
                    scan.keys.push(&bytes[from..i]);
                }
            }
            b'{' | b'[' => {
                if stack.len() == 1 && target == 2 && b == b'[' {
                    scan.element_not_object = true;
                    return scan;
                }
                stack.push(b == b'{');
                key = b == b'{';
            }
            b'}' | b']' => {
                stack.pop();
                if stack.len() + 1 == target {
                    scan.closed = true;
                    return scan;
                }
                if stack.is_empty() {
                    // An array closed before any element.
                    scan.empty_array = scan.top == Top::Array;
                    return scan;
                }
            }
            b':' => key = false,
            b',' => key = stack.last() == Some(&true),
            c if c.is_ascii_whitespace() => {}
            _ => {
                // A number or literal: an element that is not an object, where one matters.
                if stack.len() == 1 && target == 2 {
                    scan.element_not_object = true;
                    return scan;
                }
            }
        }
        i += 1;
    }
    scan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn looks(text: &str) -> Looks {
        judge(text.as_bytes(), true).expect("a complete input is judged")
    }

    #[test]
    fn each_format_is_told_by_its_first_object() {
        let cases = [
            (r#"[{"RuleID":"a","Secret":"FAKE-1"}]"#, Format::Gitleaks),
            (
                r#"[{"RuleID":"a","Secret":"FAKE-1","Attributes":{}}]"#,
                Format::Betterleaks,
            ),
            (
                "{\"RuleID\":\"a\",\"Secret\":\"FAKE-1\"}\n",
                Format::Betterleaks,
            ),
            (
                r#"{"SourceMetadata":{},"Raw":"FAKE-2"}"#,
                Format::Trufflehog,
            ),
            (
                r#"{"level":"info-0","msg":"running source"}"#,
                Format::Trufflehog,
            ),
            (
                r#"{"findings":[{"rule":{},"finding":{}}]}"#,
                Format::Kingfisher,
            ),
            (
                r#"{"rule":{"id":"x"},"finding":{"snippet":"FAKE-3"}}"#,
                Format::Kingfisher,
            ),
            (r#"[{"rule":{"id":"x"},"finding":{}}]"#, Format::Kingfisher),
            (
                r#"[{"filePath":"a","sourceContent":"FAKE-4","messages":[]}]"#,
                Format::Secretlint,
            ),
            (
                r#"{"$schema":"x","version":"2.1.0","runs":[]}"#,
                Format::Sarif,
            ),
            (
                r#"{"version":"1.5.0","plugins_used":[],"results":{}}"#,
                Format::DetectSecrets,
            ),
            (
                r#"{"action":"created","alert":{"secret":"FAKE-5"}}"#,
                Format::Github,
            ),
            (
                r#"[{"number":1,"secret_type":"x","secret":"FAKE-6"}]"#,
                Format::Github,
            ),
            (r#"{"secret":"FAKE-7","file":"a"}"#, Format::Generic),
            (r#"{"sha1":"00"}"#, Format::Generic),
        ];
        for (text, format) in cases {
            assert_eq!(looks(text), Looks::Like(format), "{text}");
        }
    }

    #[test]
    fn a_decisive_key_is_enough_and_an_ambiguous_one_waits() {
        // Cut in the middle of a TruffleHog line: its first key tells.
        assert_eq!(
            judge(br#"{"SourceMetadata":{"Data":{"Git":{"fi"#, false),
            Some(Looks::Like(Format::Trufflehog))
        );
        assert_eq!(judge(br#"{"secret":"FAKE-8","#, false), None);
        assert_eq!(judge(br#"[{"RuleID":"a""#, false), None);
        assert_eq!(judge(b"  ", false), None);
    }

    #[test]
    fn empty_reports_and_other_inputs() {
        for text in ["", " \n\t", "null", "[]", " [ ]\n", "\u{feff}[]"] {
            assert_eq!(looks(text), Looks::Empty, "{text:?}");
        }
        for text in [
            "Found unverified result",
            "[1, 2]",
            r#"["a"]"#,
            r#"{"a":1}"#,
            "[[1]]",
        ] {
            assert!(matches!(looks(text), Looks::Unknown(_)), "{text}");
        }
    }

    #[test]
    fn keys_of_nested_objects_and_values_do_not_count() {
        assert_eq!(
            looks(r#"{"a":{"runs":1},"b":"runs","c":["Secret"]}"#),
            Looks::Unknown("a JSON object of no format keyloop reads")
        );
        assert_eq!(
            looks(r#"{"note":"a \"runs\" b","secret":"x"}"#),
            Looks::Like(Format::Generic)
        );
    }

    #[test]
    fn sniffed_bytes_are_handed_out_again_before_the_rest() {
        let text = format!(r#"{{"Raw":"FAKE-9"}}{}"#, "\n".repeat(100_000));
        let mut prefix = Prefix::sniffing(text.as_bytes()).expect("readable");
        assert_eq!(prefix.looks(), Looks::Like(Format::Trufflehog));
        let mut all = Vec::new();
        prefix.read_to_end(&mut all).expect("readable");
        assert_eq!(all, text.as_bytes());
        let mut recording = Prefix::recording(text.as_bytes());
        let mut all = Vec::new();
        recording.read_to_end(&mut all).expect("readable");
        assert_eq!(all, text.as_bytes());
        assert_eq!(recording.looks(), Looks::Like(Format::Trufflehog));
    }
}
