//! Where the format parsers hand their entries ([`Sink`]), and what a usable entry is before it
//! is handed on ([`Hashed`]): the finding of the reported value and the parts of it that are
//! credentials of their own (the password of a URI), all hashed here.

use super::embedded::{self, Embedded};
use super::{Entry, Part, PartOf, Rejected};
use crate::fingerprint::Fingerprint;
use crate::leak::{LeakFinding, LeakLocation};
use crate::secret::Secret;
use std::ops::ControlFlow;

/// At most this many parts are handed on for one finding.
const MAX_PARTS: usize = 16;

/// A usable entry of a report: its finding and the findings of the credentials inside it.
#[derive(Debug)]
pub(crate) struct Hashed {
    finding: LeakFinding,
    parts: Vec<Part>,
}

impl Hashed {
    /// The finding of `secret` (hashed here), with the passwords of the URIs and connection
    /// strings in it as its parts.
    pub(crate) fn of(secret: &Secret, detector: String, location: LeakLocation) -> Self {
        let mut found = Self {
            finding: LeakFinding {
                fingerprint: Fingerprint::of(secret),
                detector,
                location,
            },
            parts: Vec::new(),
        };
        found.embedded_in(secret);
        found
    }

    /// A finding that carries digests only (no value to look into).
    pub(crate) fn digests(finding: LeakFinding) -> Self {
        Self {
            finding,
            parts: Vec::new(),
        }
    }

    /// Adds `secret`, another value the detector reported with this finding (TruffleHog's
    /// `RawV2` and `SecretParts`), and the passwords in it.
    pub(crate) fn with_companion(&mut self, secret: &Secret) {
        self.add(PartOf::Companion, Fingerprint::of(secret));
        self.embedded_in(secret);
    }

    /// Adds the passwords of the URIs and connection strings in `secret`.
    fn embedded_in(&mut self, secret: &Secret) {
        for (kind, password) in embedded::passwords(secret.expose()) {
            let of = match kind {
                Embedded::UriPassword => PartOf::UriPassword,
                Embedded::ConnectionPassword => PartOf::ConnectionPassword,
            };
            self.add(of, Fingerprint::of(&password));
        }
    }

    /// Adds a part, unless it is a value this finding already has.
    fn add(&mut self, of: PartOf, fingerprint: Fingerprint) {
        let known = self.finding.fingerprint == fingerprint
            || self
                .parts
                .iter()
                .any(|p| p.finding.fingerprint == fingerprint);
        if !known && self.parts.len() < MAX_PARTS {
            self.parts.push(Part {
                finding: LeakFinding {
                    fingerprint,
                    detector: self.finding.detector.clone(),
                    location: self.finding.location.clone(),
                },
                of,
            });
        }
    }
}

/// Where the format parsers hand their entries: the caller's callback, with counts and the
/// two ways a walk ends early (the callback stopped it; the document is not of the format).
pub(crate) struct Sink<'a> {
    emit: &'a mut dyn FnMut(Entry) -> ControlFlow<()>,
    pub(crate) findings: u64,
    pub(crate) parts: u64,
    pub(crate) rejected: u64,
    /// The callback asked to stop.
    pub(crate) stopped: bool,
    /// Why the whole document is refused, set by a visitor before it unwinds the
    /// deserializer (whose own message could quote the input).
    pub(crate) refused: Option<String>,
}

impl<'a> Sink<'a> {
    pub(crate) fn new(emit: &'a mut dyn FnMut(Entry) -> ControlFlow<()>) -> Self {
        Self {
            emit,
            findings: 0,
            parts: 0,
            rejected: 0,
            stopped: false,
            refused: None,
        }
    }

    fn send(&mut self, entry: Entry) -> ControlFlow<()> {
        let flow = (self.emit)(entry);
        self.stopped |= flow.is_break();
        flow
    }

    /// Hands on a finding, then its parts.
    pub(crate) fn found(&mut self, found: Hashed) -> ControlFlow<()> {
        self.findings += 1;
        self.send(Entry::Finding(found.finding))?;
        for part in found.parts {
            self.parts += 1;
            self.send(Entry::Part(part))?;
        }
        ControlFlow::Continue(())
    }

    /// Hands on a rejection.
    pub(crate) fn reject(&mut self, position: String, reason: String) -> ControlFlow<()> {
        self.rejected += 1;
        self.send(Entry::Rejected(Rejected { position, reason }))
    }

    /// Hands on a finding, or its rejection at `position` (only formatted when needed).
    pub(crate) fn outcome(
        &mut self,
        position: impl FnOnce() -> String,
        outcome: Result<Hashed, String>,
    ) -> ControlFlow<()> {
        match outcome {
            Ok(found) => self.found(found),
            Err(reason) => self.reject(position(), reason),
        }
    }
}
