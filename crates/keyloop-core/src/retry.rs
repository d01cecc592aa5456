//! The one classification every keyloop error carries: whether retrying can help. Backends,
//! the NATS layer and the workers each have their own error type (with their own kinds where
//! the domain needs them: a busy claim, an id already registered), and each says which of these
//! two it is, so the consume runtime decides redelivery or the DLQ one way.

/// Whether retrying can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Retry {
    /// Unreachable, throttled, timed out, lost a race: try again later.
    Transient,
    /// Misconfigured, refused, malformed, corrupt: retrying gives the same answer.
    Permanent,
}

impl Retry {
    /// True for [`Retry::Transient`].
    pub fn is_transient(self) -> bool {
        self == Self::Transient
    }
}
