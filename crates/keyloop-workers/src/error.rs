//! The workers' error: what went wrong in the domain's words — a credential not registered or
//! registered already, a claim another operation holds — over the NATS layer's and the
//! backends' errors, which are kept as the source (never flattened into a string). Whether
//! retrying can help is [`Error::retry`], the classification every keyloop error shares; the
//! consume runtime redelivers or dead-letters on it.

use keyloop_backends::BackendError;
use keyloop_core::Retry;
use keyloop_nats::HandlerError;
use std::fmt;

/// What went wrong, as a worker sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Unreachable, slow, lost a race: retry.
    Transient,
    /// The request or the data is wrong: retrying gives the same answer.
    Permanent,
    /// Something that should exist does not (a credential, a lease, a bucket).
    NotFound,
    /// Something that must not exist already does (registering an existing credential, a
    /// role or secret another credential manages).
    AlreadyExists,
    /// Another operation holds the credential's claim: retry once it is released or lapses.
    Busy,
}

/// A worker step failed.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    what: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl Error {
    /// An error of `kind` about `what`, with its cause.
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

    /// A store or target call of `step` failed.
    pub fn backend(e: BackendError, step: &str) -> Self {
        let kind = match e.kind {
            Retry::Transient => ErrorKind::Transient,
            Retry::Permanent => ErrorKind::Permanent,
        };
        Self::new(kind, step, e)
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether retrying can help: a transient failure, or a busy claim.
    pub fn retry(&self) -> Retry {
        match self.kind {
            ErrorKind::Transient | ErrorKind::Busy => Retry::Transient,
            ErrorKind::Permanent | ErrorKind::NotFound | ErrorKind::AlreadyExists => {
                Retry::Permanent
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
        match (&self.source, self.what.is_empty()) {
            (Some(s), true) => write!(f, "{s}"),
            (Some(s), false) => write!(f, "{}: {s}", self.what),
            (None, _) => f.write_str(&self.what),
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

/// The NATS layer's failure, in the workers' terms; the original stays its source.
impl From<keyloop_nats::Error> for Error {
    fn from(e: keyloop_nats::Error) -> Self {
        use keyloop_nats::ErrorKind as K;
        let kind = match e.kind() {
            K::Transient => ErrorKind::Transient,
            K::Permanent => ErrorKind::Permanent,
            K::NotFound => ErrorKind::NotFound,
            K::AlreadyExists => ErrorKind::AlreadyExists,
        };
        Self {
            kind,
            what: String::new(),
            source: Some(Box::new(e)),
        }
    }
}

impl From<Error> for HandlerError {
    fn from(e: Error) -> Self {
        HandlerError::from_error(e.retry(), e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_claim_is_retried_and_a_missing_credential_is_not() {
        assert_eq!(
            Error::msg(ErrorKind::Busy, "busy").retry(),
            Retry::Transient
        );
        assert_eq!(
            Error::msg(ErrorKind::NotFound, "x").retry(),
            Retry::Permanent
        );
        let nats = keyloop_nats::Error::msg(keyloop_nats::ErrorKind::Transient, "read inventory");
        let e = Error::from(nats);
        assert_eq!(e.kind(), ErrorKind::Transient);
        assert_eq!(e.to_string(), "read inventory");
        assert!(
            std::error::Error::source(&e).is_some(),
            "the NATS error is kept, not flattened"
        );
        let e = Error::backend(BackendError::permanent("refused"), "set the password");
        assert_eq!(e.to_string(), "set the password: refused");
        let handler = HandlerError::from(e);
        assert_eq!(handler.kind, Retry::Permanent);
        assert!(std::error::Error::source(&handler).is_some());
    }
}
