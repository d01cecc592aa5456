//! keyloop's domain: credentials and their versions, leak findings, lifecycle events
//! (CloudEvents 1.0), commands, fingerprints, the `Secret` type, JIT leases and their policy,
//! workload identities proved by verified tokens, and the policy engine that decides who may
//! do what. Pure data and rules, no I/O, so every other crate shares one vocabulary and the
//! JSON Schemas in `schemas/` come from here.

pub mod api;
pub mod credential;
pub mod duration;
pub mod event;
pub mod fingerprint;
pub mod identity;
pub mod ingest;
pub mod leak;
pub mod lease;
pub mod policy;
pub mod retry;
pub mod schema;
pub mod secret;
pub mod value_format;

pub use credential::{
    AtTarget, BackendSettings, BlastRadius, Claim, Credential, CredentialId, PendingUndo, Policy,
    Retired, RevokeReason, RotationReason, RotationRetry, RotationStrategy, Stage, StoreKind,
    TargetKind, Version,
};
pub use event::{CloudEvent, LifecycleData, LifecycleEvent, LifecycleKind};
pub use fingerprint::{Fingerprint, FingerprintTag};
pub use leak::{LeakFinding, LeakLocation};
pub use lease::{JitPolicy, Lease, LeaseState, Tier};
pub use retry::Retry;
pub use secret::Secret;
pub use value_format::ValueFormat;
