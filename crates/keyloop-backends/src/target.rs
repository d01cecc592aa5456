//! The `none` target: nothing outside keyloop checks the value, so applying, testing and
//! invalidating are no-ops. The value dies when its store destroys it.

use crate::{BackendError, Target};
use futures::future::BoxFuture;
use keyloop_core::{Credential, RevokeReason, Secret};
use uuid::Uuid;

/// A target that accepts anything and needs nothing done.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoneTarget;

impl Target for NoneTarget {
    fn apply<'a>(
        &'a self,
        _: &'a Credential,
        _: Uuid,
        _: &'a Secret,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async { Ok(()) })
    }

    fn test<'a>(
        &'a self,
        _: &'a Credential,
        _: Uuid,
        _: &'a Secret,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async { Ok(()) })
    }

    fn invalidate<'a>(
        &'a self,
        _: &'a Credential,
        _: Uuid,
        _: Option<&'a Secret>,
        _: RevokeReason,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async { Ok(()) })
    }

    fn holds_values(&self) -> bool {
        false
    }
}
