//! The incident model from hand-made event logs: time to revoke from the first detection of a
//! value, later uses of the leaked version only, the rest of a report, and nothing found.

use super::report::{Selector, build};
use crate::cmd::replay::filter::IdMatch;
use keyloop_core::event::{LeakDetected, lifecycle_event};
use keyloop_core::{
    CloudEvent, Fingerprint, LeakFinding, LeakLocation, LifecycleData, LifecycleEvent,
    LifecycleKind, RevokeReason, Secret, Stage,
};
use time::{Duration, OffsetDateTime};

const T0: i64 = 1_800_000_000;

fn at(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(T0).unwrap() + Duration::milliseconds(ms)
}

fn leak(id: &str, value: &str, batch: &str, file: &str, ms: i64) -> LeakDetected {
    let finding = LeakFinding {
        fingerprint: Fingerprint::of(&Secret::new(value.to_owned())),
        detector: "gitleaks:generic-api-key".into(),
        location: LeakLocation {
            repo: Some("org/app".into()),
            file: Some(file.into()),
            line: Some(3),
            commit: Some(format!("c0ffee{batch}")),
            url: None,
        },
    };
    let mut e = CloudEvent::new(
        id,
        "keyloop/ingest/gitleaks",
        "dev.keyloop.leak.detected",
        finding,
    )
    .caused_by(Some(id.into()), None)
    .in_batch(Some(batch.into()));
    e.time = at(ms);
    e
}

fn event(
    kind: LifecycleKind,
    cred: &str,
    version: uuid::Uuid,
    chain: Option<&str>,
    ms: i64,
    f: impl FnOnce(&mut LifecycleData),
) -> LifecycleEvent {
    let mut data = LifecycleData::new(kind, Some(cred.parse().unwrap()), Some(version));
    f(&mut data);
    let mut e = lifecycle_event("keyloop/test", &format!("{cred}/{ms}"), data)
        .caused_by(chain.map(str::to_owned), None);
    e.time = at(ms);
    e
}

#[test]
fn time_to_revoke_counts_from_the_first_detection_of_the_value_and_later_uses_are_listed() {
    let (v1, v2, other) = (
        uuid::Uuid::now_v7(),
        uuid::Uuid::now_v7(),
        uuid::Uuid::now_v7(),
    );
    // The value was found first in an earlier report, which nobody acted on (still pending),
    // then again; the second leak is the one that matched.
    let leaks = vec![
        leak("leak-early", "hunter2-value", "batch-a", "old.env", 0),
        leak("leak-1", "hunter2-value", "batch-b", "app.env", 5_000),
        leak("leak-2", "other-value", "batch-b", "other.env", 5_001),
    ];
    let life = vec![
        event(
            LifecycleKind::LeakMatched,
            "svc/api",
            v1,
            Some("leak-1"),
            5_010,
            |d| {
                d.matched_stage = Some(Stage::Current);
            },
        ),
        event(LifecycleKind::Used, "svc/api", v1, None, 5_011, |d| {
            d.actor = Some("attacker-ci".into())
        }),
        event(
            LifecycleKind::Revoked,
            "svc/api",
            v1,
            Some("leak-1"),
            5_020,
            |d| {
                d.revoke_reason = Some(RevokeReason::Leak);
            },
        ),
        event(
            LifecycleKind::Rotated,
            "svc/api",
            v2,
            Some("leak-1"),
            5_040,
            |d| {
                d.previous_version = Some(v1);
            },
        ),
        event(
            LifecycleKind::VerifyDenied,
            "svc/api",
            v1,
            None,
            9_000,
            |d| {
                d.actor = Some("ops".into());
            },
        ),
        // A use of another version, and a use before any leak: neither is listed.
        event(LifecycleKind::Used, "svc/api", other, None, 6_000, |_| {}),
        event(LifecycleKind::Used, "svc/api", v1, None, -1_000, |_| {}),
    ];
    let i = build(&Selector::Leak("leak-1".into()), &leaks, &life).unwrap();
    let f = &i.findings[0];
    assert_eq!(
        (f.leak_id.as_str(), f.outcome.as_str()),
        ("leak-1", "matched")
    );
    assert_eq!(f.first_leak_id, "leak-early");
    assert_eq!(f.credential.as_deref(), Some("svc/api"));
    assert_eq!(f.stage.as_deref(), Some("current"));
    assert_eq!(
        f.time_to_revoke_ms,
        Some(5_020),
        "from the first detection, not 20 ms"
    );
    assert_eq!(f.new_version, Some(v2.to_string()));
    let after: Vec<_> = f
        .after
        .iter()
        .map(|a| (a.kind.as_str(), a.actor.as_deref()))
        .collect();
    assert_eq!(
        after,
        [
            ("used", Some("attacker-ci")),
            ("verify_denied", Some("ops"))
        ]
    );
    // The rest of the report: the other finding of batch-b, still pending.
    assert_eq!(i.findings.len(), 2);
    assert_eq!(
        (
            i.findings[1].leak_id.as_str(),
            i.findings[1].outcome.as_str()
        ),
        ("leak-2", "pending")
    );
    assert!(
        i.timeline.windows(2).all(|w| w[0].time <= w[1].time),
        "timeline in order"
    );
    assert!(
        !serde_json::to_string(&i).unwrap().contains(
            &Fingerprint::of(&Secret::new("hunter2-value".to_owned()))
                .sha256
                .unwrap()
        )
    );
}

#[test]
fn a_report_a_credential_and_a_lease_each_select_their_findings() {
    let v = uuid::Uuid::now_v7();
    let leaks = vec![
        leak("leak-1", "a", "batch-x", "a.env", 0),
        leak("leak-2", "b", "batch-x", "b.env", 1),
        leak("leak-3", "c", "batch-y", "c.env", 2),
    ];
    let life = vec![event(
        LifecycleKind::LeakMatched,
        "svc/b",
        v,
        Some("leak-2"),
        10,
        |_| {},
    )];
    let ids = |s: Selector| -> Vec<String> {
        build(&s, &leaks, &life)
            .unwrap()
            .findings
            .into_iter()
            .map(|f| f.leak_id)
            .collect()
    };
    assert_eq!(
        ids(Selector::Report("batch-x".into())),
        ["leak-1", "leak-2"]
    );
    assert_eq!(
        ids(Selector::Credential("svc/b".parse().unwrap())),
        ["leak-2"]
    );
    let none = build(&Selector::Report("batch-z".into()), &leaks, &life).unwrap_err();
    assert!(none.to_string().contains("report batch-z"), "{none}");
    let lease = build(
        &Selector::Lease(IdMatch::Short("0badf00d".into())),
        &leaks,
        &life,
    );
    assert!(lease.is_err(), "an unknown lease is nothing found");
    let missing = build(&Selector::Leak("leak-9".into()), &leaks, &life).unwrap_err();
    assert!(
        missing
            .to_string()
            .contains("keyloop replay --type leak.detected"),
        "{missing}"
    );
}
