//! The report as it is read: in fixed-size chunks into a buffer zeroized on drop, a byte-order
//! mark looked for, and the encoding checked on the way.

use std::io::{self, BufRead, Read};
use zeroize::Zeroize;

/// How much of the input is read at a time.
const CHUNK_BYTES: usize = 64 * 1024;

/// Whether [`Input`] checks that the input is UTF-8 as it reads it. Documents are checked as
/// a whole (one bad byte ends the document); line formats check each line and reject only it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Utf8 {
    Check,
    PerLine,
}

/// The report as it is read: a UTF-16 byte-order mark is refused, a UTF-8 one skipped; the
/// bytes are read in chunks into a buffer that is zeroized when dropped and, in
/// [`Utf8::Check`] mode, checked to be UTF-8 as they arrive.
pub(super) struct Input<R> {
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
    pub(super) not_utf8_at: Option<u64>,
    /// Whether anything but JSON whitespace was read ([`Utf8::Check`] only).
    pub(super) content: bool,
}

impl<R: Read> Input<R> {
    /// Reads the first bytes to look for a byte-order mark.
    pub(super) fn open(inner: R, utf8: Utf8) -> Result<Self, String> {
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
    pub(super) fn position(&self) -> u64 {
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
pub(crate) fn unreadable(e: &io::Error) -> String {
    format!("cannot read the input ({})", e.kind())
}
