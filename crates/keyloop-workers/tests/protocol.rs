//! The rotation and registration protocols with no server: every record in memory
//! (`WorkerContext::in_memory`), values in an in-memory store, and a target that models
//! password accounts the way PostgreSQL does (one password per login role; `NOLOGIN` stops it;
//! a value logs in only on the role whose password it is). The same fault injector the workers
//! use makes every store and target operation fail permanently, fail transiently for more
//! calls than the in-process retries absorb, or "crash" (the operation's future dropped right
//! after the call succeeded, then the command delivered again to a replica).
//!
//! After every case: exactly one current version, nothing pending, no claim left, the current
//! value logs in as its role, and the next rotation works. The real-server version of this
//! matrix (PostgreSQL logins, Secrets Manager labels) is `tests/e2e/fault_matrix.rs`.

use futures::future::BoxFuture;
use keyloop_backends::{BackendError, Faults, Store, Target, resilience};
use keyloop_core::event::RotateCommand;
use keyloop_core::{
    AtTarget, BackendSettings, Credential, CredentialId, LifecycleKind, Policy, RevokeReason,
    RotationReason, RotationStrategy, Secret, Stage, StoreKind, TargetKind,
};
use keyloop_workers::ops::{self, Cause, Registration};
use keyloop_workers::records::memory::MemoryOutbox;
use keyloop_workers::{Backends, WorkerContext, rotator};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

/// Values by credential and version, and every value ever stored (destroyed ones too).
#[derive(Debug, Default)]
struct MemoryStore {
    values: Mutex<HashMap<(CredentialId, Uuid), Secret>>,
    ever_stored: Mutex<Vec<Secret>>,
}

impl Store for MemoryStore {
    fn put_new<'a>(
        &'a self,
        c: &'a Credential,
        v: Uuid,
        value: Secret,
    ) -> BoxFuture<'a, Result<Secret, BackendError>> {
        let mut values = self.values.lock().unwrap();
        let stored = values.entry((c.id.clone(), v)).or_insert(value).clone();
        self.ever_stored.lock().unwrap().push(stored.clone());
        Box::pin(async move { Ok(stored) })
    }

    fn get<'a>(
        &'a self,
        c: &'a Credential,
        v: Uuid,
    ) -> BoxFuture<'a, Result<Option<Secret>, BackendError>> {
        let found = self.values.lock().unwrap().get(&(c.id.clone(), v)).cloned();
        Box::pin(async move { Ok(found) })
    }

    fn destroy<'a>(
        &'a self,
        c: &'a Credential,
        v: Uuid,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        self.values.lock().unwrap().remove(&(c.id.clone(), v));
        Box::pin(async { Ok(()) })
    }
}

/// Login roles with one password each, as PostgreSQL keeps them.
#[derive(Debug, Default)]
struct Accounts {
    roles: Mutex<HashMap<String, Option<Secret>>>,
}

impl Accounts {
    fn create(&self, role: &str, password: &str) {
        self.roles
            .lock()
            .unwrap()
            .insert(role.to_owned(), Some(Secret::from(password)));
    }

    /// A login as `role` with `value` (what the test checks; never faulted).
    fn logs_in(&self, role: &str, value: &Secret) -> bool {
        self.roles.lock().unwrap().get(role) == Some(&Some(value.clone()))
    }

    fn role(c: &Credential, v: Uuid) -> Result<String, BackendError> {
        c.version(v)
            .and_then(|v| v.login.clone())
            .or_else(|| c.settings.role.clone())
            .ok_or_else(|| BackendError::permanent("no role"))
    }
}

impl Target for Accounts {
    fn apply<'a>(
        &'a self,
        c: &'a Credential,
        v: Uuid,
        value: &'a Secret,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        let result = Self::role(c, v).map(|role| {
            self.roles.lock().unwrap().insert(role, Some(value.clone()));
        });
        Box::pin(async move { result })
    }

    fn test<'a>(
        &'a self,
        c: &'a Credential,
        v: Uuid,
        value: &'a Secret,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        let result = Self::role(c, v).and_then(|role| {
            if self.logs_in(&role, value) {
                Ok(())
            } else {
                Err(BackendError::transient(format!("login as {role} refused")))
            }
        });
        Box::pin(async move { result })
    }

    fn accepts<'a>(
        &'a self,
        c: &'a Credential,
        v: Uuid,
        value: &'a Secret,
    ) -> BoxFuture<'a, Result<bool, BackendError>> {
        let result = Self::role(c, v).map(|role| self.logs_in(&role, value));
        Box::pin(async move { result })
    }

    /// As the postgres target: the role is disabled when this version's value may be its
    /// password (a pending one only once set, not after a rollback; no newer current or
    /// previous version on the role), then a login with the value must fail.
    fn invalidate<'a>(
        &'a self,
        c: &'a Credential,
        v: Uuid,
        value: Option<&'a Secret>,
        _reason: RevokeReason,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        let result = Self::role(c, v).and_then(|role| {
            let pos = c.versions.iter().position(|x| x.id == v).unwrap_or(0);
            let this = &c.versions[pos];
            let unset = this.stage == Stage::Pending && this.at_target != AtTarget::Set;
            let newer = c.versions[pos + 1..].iter().any(|x| {
                x.login.as_deref() == Some(role.as_str())
                    && matches!(x.stage, Stage::Current | Stage::Previous)
            });
            if !unset && !newer {
                self.roles.lock().unwrap().insert(role.clone(), None);
            }
            match value {
                Some(value) if self.logs_in(&role, value) => {
                    Err(BackendError::permanent("the revoked value still logs in"))
                }
                _ => Ok(()),
            }
        });
        Box::pin(async move { result })
    }
}

/// A world: the records in memory, one store, the accounts.
struct World {
    ctx: WorkerContext,
    store: Arc<MemoryStore>,
    accounts: Arc<Accounts>,
    outbox: Arc<MemoryOutbox>,
}

impl World {
    fn new() -> Self {
        let store = Arc::new(MemoryStore::default());
        let accounts = Arc::new(Accounts::default());
        let backends = Backends {
            local: Some(store.clone()),
            postgres: Some(accounts.clone()),
            ..Backends::default()
        };
        let outbox = Arc::new(MemoryOutbox::default());
        let mut ctx = WorkerContext::in_memory(backends);
        ctx.outbox = outbox.clone();
        Self {
            ctx,
            store,
            accounts,
            outbox,
        }
    }

    /// The same records and backends, as another process with these faults sees them.
    fn process(&self, faults: Option<Arc<Faults>>) -> WorkerContext {
        let mut ctx = self.ctx.replica();
        ctx.backends.faults = faults;
        ctx
    }

    fn registration(&self, id: &CredentialId, strategy: RotationStrategy) -> Registration {
        let base = format!("app_{}", id.as_str().replace(['/', '-'], "_"));
        match strategy {
            RotationStrategy::Single => self.accounts.create(&base, "set-by-a-human"),
            RotationStrategy::Alternating => {
                self.accounts.create(&format!("{base}_a"), "set-by-a-human")
            }
        }
        Registration {
            id: id.clone(),
            store: StoreKind::Local,
            target: TargetKind::Postgres,
            policy: Policy {
                max_age_secs: None,
                grace_secs: 3600,
                idle_revoke_after_secs: None,
                owner: None,
                ..Default::default()
            },
            settings: BackendSettings {
                role: Some(base),
                strategy: Some(strategy),
                ..BackendSettings::default()
            },
        }
    }

    /// Whether the fingerprint index still has an entry for a value the store was ever given.
    async fn indexes_a_stored_value(&self) -> bool {
        let stored = self.store.ever_stored.lock().unwrap().clone();
        for value in stored {
            let keys = keyloop_core::Fingerprint::of(&value).index_keys();
            if self.ctx.fingerprints.lookup(&keys).await.unwrap().is_some() {
                return true;
            }
        }
        false
    }

    async fn credential(&self, id: &CredentialId) -> Credential {
        self.ctx.inventory.require(id).await.unwrap().0
    }

    /// The invariant after any failure (see the module docs); returns the current value.
    async fn working(&self, id: &CredentialId, when: &str) -> Result<Secret, String> {
        let cred = self.credential(id).await;
        let stages: Vec<_> = cred.versions.iter().map(|v| v.stage.name()).collect();
        let current: Vec<_> = cred
            .versions
            .iter()
            .filter(|v| v.stage == Stage::Current)
            .collect();
        if current.len() != 1 {
            return Err(format!("{when}: {} current ({stages:?})", current.len()));
        }
        if cred.versions.iter().any(|v| v.stage == Stage::Pending) {
            return Err(format!("{when}: pending left ({stages:?})"));
        }
        if let Some(claim) = &cred.claim {
            return Err(format!("{when}: claim of {} left", claim.op));
        }
        let value = self
            .store
            .get(&cred, current[0].id)
            .await
            .unwrap()
            .ok_or_else(|| format!("{when}: current value gone"))?;
        let role = current[0].login.clone().unwrap_or_default();
        if !self.accounts.logs_in(&role, &value) {
            return Err(format!(
                "{when}: the current value does NOT log in as {role} ({stages:?})"
            ));
        }
        Ok(value)
    }

    async fn rotate_healthy(&self, id: &CredentialId, op: &str) -> Result<(), String> {
        let cmd = rotation(id, op);
        rotator::execute(&self.process(None), &cmd, &cause(), false)
            .await
            .map_err(|e| format!("healthy rotation {op}: {e}"))
    }
}

fn cause() -> Cause {
    Cause {
        source: "keyloop/test".into(),
        ..Cause::default()
    }
}

fn rotation(id: &CredentialId, op: &str) -> RotateCommand {
    RotateCommand {
        credential: id.clone(),
        reason: RotationReason::Manual,
        op_id: op.to_owned(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Permanent,
    Transient,
    Crash,
}

fn faults(op: &str, fault: Fault) -> Arc<Faults> {
    let spec = match fault {
        Fault::Permanent => format!("permanent={op}"),
        Fault::Transient => format!("flaky={op}:3"),
        Fault::Crash => format!("crash={op}"),
    };
    Arc::new(Faults::parse(&spec).unwrap().hang_on_crash())
}

/// Delivers a rotation under `fault` as the runtime would: once (permanent), again until it
/// succeeds (transient), or until the crash and then once more to a replica.
async fn rotate_under(w: &World, cmd: &RotateCommand, fault: Fault, f: Arc<Faults>) {
    let ctx = w.process(Some(f.clone()));
    match fault {
        Fault::Permanent => {
            let _ = rotator::execute(&ctx, cmd, &cause(), false).await;
        }
        Fault::Transient => {
            for delivery in 1..=20 {
                if rotator::execute(&ctx, cmd, &cause(), delivery == 20)
                    .await
                    .is_ok()
                {
                    break;
                }
            }
        }
        Fault::Crash => {
            let cause = cause();
            let crashed = tokio::select! {
                _ = rotator::execute(&ctx, cmd, &cause, false) => false,
                () = f.crashed() => true,
            };
            if crashed {
                rotator::execute(&w.process(None), cmd, &cause, false)
                    .await
                    .expect("the redelivered rotation finishes");
            }
        }
    }
}

#[tokio::test]
async fn every_fault_at_every_step_of_a_rotation_leaves_a_working_current_value() {
    let mut broken = Vec::new();
    let mut cases = 0;
    for strategy in [RotationStrategy::Single, RotationStrategy::Alternating] {
        for op in resilience::OPERATIONS {
            for fault in [Fault::Permanent, Fault::Transient, Fault::Crash] {
                cases += 1;
                let w = World::new();
                let id: CredentialId = format!("pg/{}-{op}-{fault:?}", strategy.name())
                    .to_lowercase()
                    .parse()
                    .unwrap();
                ops::register(&w.process(None), w.registration(&id, strategy), &cause())
                    .await
                    .unwrap();
                // A first rotation, so a previous version exists and every step is on the path.
                w.rotate_healthy(&id, "first").await.unwrap();
                let f = faults(op, fault);
                rotate_under(&w, &rotation(&id, "faulty"), fault, f.clone()).await;
                let outcome = match w.working(&id, "after the faulty rotation").await {
                    Ok(before) => match w.rotate_healthy(&id, "next").await {
                        Ok(()) => match w.working(&id, "after the next rotation").await {
                            Ok(after) if after == before => {
                                Err("the next rotation did not change the value".into())
                            }
                            other => other.map(|_| ()),
                        },
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(e),
                };
                assert!(
                    f.injected() > 0,
                    "{strategy:?} {op} {fault:?}: fault never fired"
                );
                if let Err(e) = outcome {
                    let failed: Vec<_> = w
                        .outbox
                        .lifecycle()
                        .into_iter()
                        .filter(|e| e.data.kind == LifecycleKind::RotationFailed)
                        .filter_map(|e| e.data.detail)
                        .collect();
                    broken.push(format!("{strategy:?} {op} {fault:?}: {e}; {failed:?}"));
                }
            }
        }
    }
    assert_eq!(cases, 42);
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[tokio::test]
async fn a_single_rotation_whose_new_password_fails_its_test_rolls_back_to_the_current_value() {
    let w = World::new();
    let id: CredentialId = "pg/rollback".parse().unwrap();
    ops::register(
        &w.process(None),
        w.registration(&id, RotationStrategy::Single),
        &cause(),
    )
    .await
    .unwrap();
    let before = w.working(&id, "registered").await.unwrap();
    let broken = w.process(Some(faults("test", Fault::Permanent)));
    let e = rotator::execute(&broken, &rotation(&id, "fails"), &cause(), false)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("injected permanent fault in test"));
    assert_eq!(w.working(&id, "after").await.unwrap(), before);
    let cred = w.credential(&id).await;
    let failed = cred.versions.last().unwrap();
    assert_eq!(failed.stage, Stage::Revoked);
    assert_eq!(failed.at_target, AtTarget::RolledBack);
    let events = w.outbox.lifecycle();
    let detail = events
        .iter()
        .find(|e| e.data.kind == LifecycleKind::RotationFailed)
        .and_then(|e| e.data.detail.clone())
        .unwrap();
    assert!(
        detail.contains("rolled back: the account was given version"),
        "{detail}"
    );
}

#[tokio::test]
async fn a_rotation_that_cannot_roll_back_rolls_forward_when_the_new_value_logs_in() {
    // The store cannot be read: the current value cannot be given back, but the new one is in
    // hand and works at the target, so the rotation finishes instead.
    let w = World::new();
    let id: CredentialId = "pg/forward".parse().unwrap();
    ops::register(
        &w.process(None),
        w.registration(&id, RotationStrategy::Single),
        &cause(),
    )
    .await
    .unwrap();
    let before = w.working(&id, "registered").await.unwrap();
    let broken = w.process(Some(faults("get", Fault::Permanent)));
    rotator::execute(&broken, &rotation(&id, "forward"), &cause(), false)
        .await
        .expect("rolled forward");
    let after = w.working(&id, "rolled forward").await.unwrap();
    assert_ne!(after, before);
    assert!(
        w.outbox
            .lifecycle()
            .iter()
            .any(|e| e.data.kind == LifecycleKind::Rotated)
    );
}

#[tokio::test]
async fn a_rotation_that_can_neither_roll_back_nor_forward_keeps_its_value_for_the_next_one() {
    // The target refuses every change and the store cannot be read: nothing can be repaired
    // now. Nothing is destroyed, and the next rotation repairs the pending version first.
    let w = World::new();
    let id: CredentialId = "pg/stuck".parse().unwrap();
    ops::register(
        &w.process(None),
        w.registration(&id, RotationStrategy::Single),
        &cause(),
    )
    .await
    .unwrap();
    let before = w.working(&id, "registered").await.unwrap();
    let broken = w.process(Some(Arc::new(
        Faults::parse("permanent=apply,get").unwrap(),
    )));
    assert!(
        rotator::execute(&broken, &rotation(&id, "stuck"), &cause(), false)
            .await
            .is_err()
    );
    let cred = w.credential(&id).await;
    let pending = cred.in_stage(Stage::Pending).expect("kept, not destroyed");
    assert_eq!(pending.at_target, AtTarget::Set);
    assert!(
        w.store.get(&cred, pending.id).await.unwrap().is_some(),
        "its value is kept"
    );
    let role = cred.current().unwrap().login.clone().unwrap();
    assert!(
        w.accounts.logs_in(&role, &before),
        "the current value still works"
    );
    let detail = w
        .outbox
        .lifecycle()
        .iter()
        .find(|e| e.data.kind == LifecycleKind::RotationFailed)
        .and_then(|e| e.data.detail.clone())
        .unwrap();
    assert!(detail.contains("could neither roll back"), "{detail}");
    // Once the backends work, the next rotation retires it (the account still has the current
    // value, so there is nothing to give back) and rotates.
    w.rotate_healthy(&id, "next").await.unwrap();
    let after = w.working(&id, "after the next rotation").await.unwrap();
    assert_ne!(after, before);
}

#[tokio::test]
async fn every_fault_in_a_registration_leaves_the_role_as_it_was_or_taken_over() {
    let mut broken = Vec::new();
    for strategy in [RotationStrategy::Single, RotationStrategy::Alternating] {
        for op in resilience::OPERATIONS {
            for fault in [Fault::Permanent, Fault::Transient, Fault::Crash] {
                let w = World::new();
                let id: CredentialId = format!("pg/reg-{}-{op}-{fault:?}", strategy.name())
                    .to_lowercase()
                    .parse()
                    .unwrap();
                let reg = w.registration(&id, strategy);
                let first_role = match strategy {
                    RotationStrategy::Single => reg.settings.role.clone().unwrap(),
                    RotationStrategy::Alternating => {
                        format!("{}_a", reg.settings.role.as_ref().unwrap())
                    }
                };
                let f = faults(op, fault);
                let ctx = w.process(Some(f.clone()));
                let result = match fault {
                    Fault::Crash => {
                        let cause = cause();
                        let crashed = tokio::select! {
                            r = ops::register(&ctx, reg.clone(), &cause) => Some(r),
                            () = f.crashed() => None,
                        };
                        match crashed {
                            Some(r) => r,
                            None => ops::register(&w.process(None), reg.clone(), &cause).await,
                        }
                    }
                    Fault::Transient => match ops::register(&ctx, reg.clone(), &cause()).await {
                        Err(e) if e.is_transient() => {
                            ops::register(&ctx, reg.clone(), &cause()).await
                        }
                        other => other,
                    },
                    Fault::Permanent => ops::register(&ctx, reg.clone(), &cause()).await,
                };
                let original = Secret::from("set-by-a-human");
                let recorded = w.ctx.inventory.get(&id).await.unwrap();
                let outcome = match (&result, recorded) {
                    (Err(_), None) if w.indexes_a_stored_value().await => {
                        Err("nothing registered, but its value is still in the fingerprint index (the record keeps only a tag: the keys come from the value)".into())
                    }
                    (Err(_), None) if w.accounts.logs_in(&first_role, &original) => Ok(()),
                    (Err(e), None) => Err(format!("nothing registered but locked out: {e}")),
                    (Err(e), Some(_)) => Err(format!("a record left behind: {e}")),
                    (Ok(_), None) => Err("registered without a record".into()),
                    (Ok(_), Some(_)) if w.accounts.logs_in(&first_role, &original) => {
                        Err("registered, but the original password still works".into())
                    }
                    (Ok(_), Some(_)) => w.working(&id, "registered").await.map(|_| ()),
                };
                if fault != Fault::Permanent && result.is_err() {
                    broken.push(format!(
                        "{strategy:?} {op} {fault:?}: run again, a registration must finish: {:?}",
                        result.err()
                    ));
                } else if let Err(e) = outcome {
                    broken.push(format!("{strategy:?} {op} {fault:?}: {e}"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[tokio::test]
async fn a_registration_records_its_value_format_and_every_rotation_keeps_it() {
    use keyloop_core::ValueFormat;
    let w = World::new();
    let formats = [
        ("pg/default-format", None, ValueFormat::Checksummed),
        ("pg/hex-format", Some(ValueFormat::Hex), ValueFormat::Hex),
        (
            "pg/checksummed-format",
            Some(ValueFormat::Checksummed),
            ValueFormat::Checksummed,
        ),
    ];
    for (id, asked, expected) in formats {
        let id: CredentialId = id.parse().unwrap();
        let mut reg = w.registration(&id, RotationStrategy::Single);
        reg.settings.value_format = asked;
        ops::register(&w.process(None), reg, &cause())
            .await
            .unwrap();
        let recorded = w.credential(&id).await.settings.value_format;
        assert_eq!(
            recorded,
            Some(expected),
            "{id}: recorded, whatever was asked"
        );
        let mut values = vec![w.working(&id, "registered").await.unwrap()];
        for op in ["rotate/1", "rotate/2"] {
            w.rotate_healthy(&id, op).await.unwrap();
            values.push(w.working(&id, op).await.unwrap());
        }
        for v in &values {
            assert_eq!(ValueFormat::recognize(v.expose()), Some(expected), "{id}");
        }
    }

    // A record from before value formats existed has none: its rotations stay hex.
    let id: CredentialId = "pg/default-format".parse().unwrap();
    w.ctx
        .inventory
        .update(&id, |c| {
            c.settings.value_format = None;
            Ok(keyloop_nats::Change::Write(()))
        })
        .await
        .unwrap();
    w.rotate_healthy(&id, "rotate/old-record").await.unwrap();
    let value = w.working(&id, "old record rotated").await.unwrap();
    assert_eq!(
        ValueFormat::recognize(value.expose()),
        Some(ValueFormat::Hex)
    );
}

#[tokio::test]
async fn an_interrupted_registration_finishes_in_the_format_it_recorded_first() {
    use keyloop_core::ValueFormat;
    let w = World::new();
    let id: CredentialId = "pg/interrupted-format".parse().unwrap();
    let reg = w.registration(&id, RotationStrategy::Single);
    let f = faults("apply", Fault::Crash);
    let (ctx, first) = (w.process(Some(f.clone())), cause());
    tokio::select! {
        r = ops::register(&ctx, reg.clone(), &first) => {
            panic!("the crash at apply did not happen: {r:?}")
        }
        () = f.crashed() => {}
    }
    let recorded = w.credential(&id).await;
    assert_eq!(recorded.versions[0].stage, Stage::Pending);
    assert_eq!(
        recorded.settings.value_format,
        Some(ValueFormat::Checksummed)
    );

    // Run again asking for another format: refused, nothing changed.
    let mut other = reg.clone();
    other.settings.value_format = Some(ValueFormat::Hex);
    let e = ops::register(&w.process(None), other, &cause())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), keyloop_workers::ErrorKind::AlreadyExists, "{e}");
    assert!(
        e.to_string().contains("run it again with the same flags"),
        "{e}"
    );

    // Run again as first (no format asked): it finishes in the recorded one.
    ops::register(&w.process(None), reg, &cause())
        .await
        .unwrap();
    let value = w.working(&id, "finished").await.unwrap();
    assert_eq!(
        ValueFormat::recognize(value.expose()),
        Some(ValueFormat::Checksummed)
    );
}
