//! The one error type of keyloop's NATS layer. Callers branch on [`ErrorKind`], what the
//! layer itself can tell (unreachable, missing, a key that exists); whether retrying can help
//! is [`Error::retry`], the classification every keyloop error shares. What a key means to the
//! domain (a registered credential, a busy claim) is the workers' to say.

use std::fmt;

/// What went wrong, as the NATS layer sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The server was unreachable, slow, or a compare-and-set kept losing: retry.
    Transient,
    /// The request or the data is wrong: retrying gives the same answer.
    Permanent,
    /// Something that should exist does not (a bucket before `keyloop init`, a record).
    NotFound,
    /// A record created with "only if absent" exists already.
    AlreadyExists,
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

    /// Whether retrying can help: only a transient failure.
    pub fn retry(&self) -> keyloop_core::Retry {
        match self.kind {
            ErrorKind::Transient => keyloop_core::Retry::Transient,
            ErrorKind::Permanent | ErrorKind::NotFound | ErrorKind::AlreadyExists => {
                keyloop_core::Retry::Permanent
            }
        }
    }

    /// True when retrying may succeed.
    pub fn is_transient(&self) -> bool {
        self.retry().is_transient()
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
