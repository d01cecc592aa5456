//! The one error type of keyloop's NATS layer. Callers branch on [`ErrorKind`]: a transient
//! error is worth retrying (nak with backoff), a permanent one is not (DLQ).

use std::fmt;

/// Whether retrying can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The server was unreachable, slow, or a compare-and-set kept losing: retry.
    Transient,
    /// The request or the data is wrong: retrying gives the same answer.
    Permanent,
    /// Something that should exist does not (a bucket before `keyloop init`, a credential).
    NotFound,
    /// Something that must not exist already does (registering an existing credential).
    AlreadyExists,
    /// Another operation holds the credential's claim: retry once it is released or expires.
    Busy,
}

/// An operation on NATS failed.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    what: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl Error {
    /// An error of `kind` about `what` (which names the subject, bucket or key), with its cause.
    pub fn new(
        kind: ErrorKind,
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self {
            kind,
            what: what.into(),
            source: Some(source.into()),
        }
    }

    /// An error with no underlying cause.
    pub fn msg(kind: ErrorKind, what: impl Into<String>) -> Self {
        Self {
            kind,
            what: what.into(),
            source: None,
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// True when retrying may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self.kind, ErrorKind::Transient | ErrorKind::Busy)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(s) => write!(f, "{}: {s}", self.what),
            None => f.write_str(&self.what),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}
