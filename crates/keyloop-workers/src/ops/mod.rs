//! Steps shared by workers and the CLI, one file each: where an operation came from
//! ([`Cause`]), registering a credential, revoking a version, recording a use, filing what a
//! rotation leaves due, ending a lease. Modules are private; everything is re-exported here,
//! so every item has one path (`ops::register`, `ops::revoke_version`, …).

mod cause;
mod lease;
mod register;
mod revoke;
mod schedule;
mod usage;

pub use cause::Cause;
pub use lease::end_lease;
pub use register::{REGISTER_OP_PREFIX, Registered, Registration, is_registration, register};
pub use revoke::{RevokeVersion, Revoked, restore, revoke_version};
pub(crate) use schedule::due_after;
pub use schedule::schedule_after_rotation;
pub use usage::{USE_RECORD_INTERVAL_SECS, record_use};

use crate::error::{Error, ErrorKind};
use keyloop_core::event::stable_id;
use uuid::Uuid;

/// The id of the version a rotation creates: derived from the operation, so a retried
/// rotation finds the version it already made.
pub fn version_for_op(op: &str) -> Uuid {
    stable_id(&format!("version/{op}"))
}

/// A store or target call of `step` failed (see [`Error::backend`]).
pub(crate) fn backend(e: keyloop_backends::BackendError, step: &str) -> Error {
    Error::backend(e, step)
}

/// Whether an operation that failed with `error` gives up now: a permanent error does at once,
/// a transient one on the message's last delivery. Messages about credentials that do not exist
/// are not failures of an operation (they go to the DLQ as bad input).
pub fn gives_up(error: &Error, last_attempt: bool) -> bool {
    error.kind() != ErrorKind::NotFound && (!error.is_transient() || last_attempt)
}
