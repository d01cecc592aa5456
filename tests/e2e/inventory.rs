//! The inventory's compare-and-set from a state the caller read earlier (`update_from`), which
//! the revoker and rotator use to save a read: a stale state must never overwrite a newer one.

use crate::harness::Env;
use keyloop_backends::MasterKey;
use keyloop_core::{Policy, StoreKind, TargetKind};
use keyloop_nats::Change;
use keyloop_workers::WorkerContext;
use keyloop_workers::ops::{self, Cause, Registration};

#[tokio::test]
async fn update_from_a_stale_state_rereads_and_keeps_the_newer_change() {
    let env = Env::start().await;
    let key =
        MasterKey::from_hex(&std::fs::read_to_string(env.dir.path().join("master.key")).unwrap())
            .unwrap();
    let ctx = WorkerContext::open(env.bus.clone(), Some(&key))
        .await
        .unwrap();
    let id: keyloop_core::CredentialId = "svc/cas".parse().unwrap();
    let reg = Registration {
        id: id.clone(),
        store: StoreKind::Local,
        target: TargetKind::None,
        policy: Policy {
            max_age_secs: None,
            grace_secs: 0,
            idle_revoke_after_secs: None,
            owner: None,
        },
    };
    ops::register(&ctx, reg, &Cause::default()).await.unwrap();
    let inventory = &ctx.inventory;

    // A fresh state is written with one compare-and-set.
    let fresh = inventory.require(&id).await.unwrap();
    let before = fresh.1;
    inventory
        .update_from(&id, fresh, |c| {
            c.policy.owner = Some("platform".into());
            Ok(Change::Write(()))
        })
        .await
        .unwrap();
    let (cred, after) = inventory.require(&id).await.unwrap();
    assert_eq!(cred.policy.owner.as_deref(), Some("platform"));
    assert!(after > before);

    // A stale one loses the compare-and-set; the decision is taken again on the newer state.
    let stale = (cred.clone(), before);
    let seen_owner = inventory
        .update_from(&id, stale, |c| {
            c.policy.grace_secs = 60;
            Ok(Change::Write(c.policy.owner.clone()))
        })
        .await
        .unwrap();
    assert_eq!(seen_owner.as_deref(), Some("platform"));
    let (cred, _) = inventory.require(&id).await.unwrap();
    assert_eq!(cred.policy.owner.as_deref(), Some("platform"));
    assert_eq!(cred.policy.grace_secs, 60);
}
