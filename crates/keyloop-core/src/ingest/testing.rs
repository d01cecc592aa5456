//! Collecting parsers for tests, whose inputs are small.

use super::sink::Sink;
use super::*;

/// Every entry of one report.
#[derive(Debug, Default)]
pub(crate) struct Parsed {
    /// Usable findings, in input order.
    pub(crate) findings: Vec<LeakFinding>,
    /// Parts of findings, in input order.
    pub(crate) parts: Vec<Part>,
    /// Unusable entries, in input order.
    pub(crate) rejected: Vec<Rejected>,
}

impl Parsed {
    fn push(&mut self, entry: Entry) -> ControlFlow<()> {
        match entry {
            Entry::Finding(f) => self.findings.push(f),
            Entry::Part(p) => self.parts.push(p),
            Entry::Rejected(r) => self.rejected.push(r),
        }
        ControlFlow::Continue(())
    }
}

/// Parses `input` with one format's `parse` and collects its entries.
pub(crate) fn collect(
    parse: impl FnOnce(&[u8], &mut Sink<'_>) -> Result<(), String>,
    input: &str,
) -> Result<Parsed, String> {
    let mut parsed = Parsed::default();
    let mut push = |entry| parsed.push(entry);
    let mut sink = Sink::new(&mut push);
    parse(input.as_bytes(), &mut sink)?;
    Ok(parsed)
}

/// [`super::parse`], collected.
pub(crate) fn parse_all(choice: impl Into<Choice>, input: &[u8]) -> Result<Parsed, IngestError> {
    let mut parsed = Parsed::default();
    super::parse(choice, input, |entry| parsed.push(entry))?;
    Ok(parsed)
}
