//! Credentials and their versions: the inventory record that workers update with
//! compare-and-set, and the rules for moving a version between stages. One file per part:
//! ids, settings and policy, versions, the record. Everything is re-exported here, so every
//! type keeps its one path (`keyloop_core::credential::…`, and the crate root).

mod id;
mod record;
mod settings;
mod version;

pub use id::{CredentialId, CredentialIdError};
pub use record::{Claim, Credential, PendingUndo, Promotion, Retired, RotationRetry};
pub use settings::{
    BackendSettings, BlastRadius, Policy, RotationStrategy, SettingsError, StoreKind, TargetKind,
};
pub use version::{AtTarget, RevokeReason, RotationReason, Stage, Version};
