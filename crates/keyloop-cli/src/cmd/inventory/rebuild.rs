//! The inventory as the lifecycle stream alone says it is (DESIGN invariant 5), and how it
//! differs from the live one: pure, so every rule is unit-tested. What the lifecycle records of
//! a credential is its versions (created, rotation started, rotated, revoked: stage, value tag,
//! revoke reason) and whether it is retired; policy, settings and target accounts are not
//! events, so they are not compared. The fingerprint index holds digests no event carries
//! (invariant 9): it is checked, not rebuilt — every entry must point at a version or lease the
//! lifecycle knows, and every version with a value must have an entry.

use keyloop_core::{
    Credential, FingerprintTag, LifecycleEvent, LifecycleKind, RevokeReason, Stage,
};
use keyloop_nats::FingerprintRef;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use uuid::Uuid;

/// One version as far as the lifecycle says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct VersionState {
    pub(crate) stage: Stage,
    pub(crate) fingerprint: Option<FingerprintTag>,
    pub(crate) revoke_reason: Option<RevokeReason>,
}

/// One credential as far as the lifecycle says.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct CredentialState {
    pub(crate) retired: bool,
    pub(crate) versions: BTreeMap<Uuid, VersionState>,
}

/// Credential id → state.
pub(crate) type State = BTreeMap<String, CredentialState>;

/// One way the rebuilt and the live inventory differ.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Difference {
    pub(crate) credential: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) version: Option<Uuid>,
    pub(crate) what: String,
    pub(crate) rebuilt: String,
    pub(crate) live: String,
}

fn version_mut<'a>(
    state: &'a mut State,
    cred: &str,
    v: Uuid,
    stage: Stage,
) -> &'a mut VersionState {
    state
        .entry(cred.to_owned())
        .or_default()
        .versions
        .entry(v)
        .or_insert(VersionState {
            stage,
            fingerprint: None,
            revoke_reason: None,
        })
}

/// The inventory `events` (the lifecycle stream, oldest first) describe.
pub(crate) fn from_lifecycle(events: &[LifecycleEvent]) -> State {
    let mut state = State::new();
    for e in events {
        let d = &e.data;
        // Lease events carry no credential: leases are not credential records.
        let Some(cred) = d.credential.as_ref().map(|c| c.to_string()) else {
            continue;
        };
        match (d.kind, d.version) {
            (LifecycleKind::Created, Some(v)) => {
                let version = version_mut(&mut state, &cred, v, Stage::Current);
                version.stage = d.stage.unwrap_or(Stage::Current);
                version.fingerprint = d.fingerprint.clone().or(version.fingerprint.take());
            }
            (LifecycleKind::RotationStarted, Some(v)) => {
                let version = version_mut(&mut state, &cred, v, Stage::Pending);
                if d.fingerprint.is_some() {
                    version.fingerprint = d.fingerprint.clone();
                }
            }
            (LifecycleKind::Rotated, Some(v)) => {
                let c = state.entry(cred.clone()).or_default();
                for (id, other) in &mut c.versions {
                    if *id != v && other.stage == Stage::Current {
                        other.stage = Stage::Previous;
                    }
                }
                if let Some(p) = d.previous_version
                    && let Some(prev) = c.versions.get_mut(&p)
                    && prev.stage != Stage::Revoked
                {
                    prev.stage = Stage::Previous;
                }
                version_mut(&mut state, &cred, v, Stage::Current).stage = Stage::Current;
            }
            (LifecycleKind::Revoked, Some(v)) => {
                let version = version_mut(&mut state, &cred, v, Stage::Revoked);
                version.stage = Stage::Revoked;
                version.revoke_reason = d.revoke_reason;
            }
            (LifecycleKind::Retired, _) => state.entry(cred).or_default().retired = true,
            _ => {}
        }
    }
    state
}

/// The live inventory, reduced to what the lifecycle records.
pub(crate) fn from_inventory(credentials: &[Credential]) -> State {
    credentials
        .iter()
        .map(|c| {
            let versions = c
                .versions
                .iter()
                .map(|v| {
                    (
                        v.id,
                        VersionState {
                            stage: v.stage,
                            fingerprint: v.fingerprint.clone(),
                            revoke_reason: v.revoke_reason,
                        },
                    )
                })
                .collect();
            (
                c.id.to_string(),
                CredentialState {
                    retired: c.retired.is_some(),
                    versions,
                },
            )
        })
        .collect()
}

fn shown<T: std::fmt::Debug>(v: &Option<T>) -> String {
    v.as_ref()
        .map_or_else(|| "-".to_owned(), |v| format!("{v:?}").to_lowercase())
}

/// Every difference between `rebuilt` and `live`.
pub(crate) fn diff(rebuilt: &State, live: &State) -> Vec<Difference> {
    let mut out = Vec::new();
    let ids: BTreeSet<&String> = rebuilt.keys().chain(live.keys()).collect();
    for id in ids {
        let d = |version, what: &str, rebuilt: String, live: String| Difference {
            credential: id.clone(),
            version,
            what: what.to_owned(),
            rebuilt,
            live,
        };
        let (r, l) = match (rebuilt.get(id), live.get(id)) {
            (Some(r), Some(l)) => (r, l),
            (Some(r), None) => {
                out.push(d(
                    None,
                    "credential",
                    format!("{} version(s)", r.versions.len()),
                    "missing".into(),
                ));
                continue;
            }
            (None, Some(l)) => {
                out.push(d(
                    None,
                    "credential",
                    "no event".into(),
                    format!("{} version(s)", l.versions.len()),
                ));
                continue;
            }
            (None, None) => continue,
        };
        if r.retired != l.retired {
            out.push(d(
                None,
                "retired",
                r.retired.to_string(),
                l.retired.to_string(),
            ));
        }
        let versions: BTreeSet<&Uuid> = r.versions.keys().chain(l.versions.keys()).collect();
        for v in versions {
            match (r.versions.get(v), l.versions.get(v)) {
                (Some(a), Some(b)) => {
                    if a.stage != b.stage {
                        out.push(d(
                            Some(*v),
                            "stage",
                            a.stage.name().into(),
                            b.stage.name().into(),
                        ));
                    }
                    if a.fingerprint != b.fingerprint {
                        out.push(d(
                            Some(*v),
                            "fingerprint",
                            shown(&a.fingerprint),
                            shown(&b.fingerprint),
                        ));
                    }
                    if a.revoke_reason != b.revoke_reason {
                        out.push(d(
                            Some(*v),
                            "revoke reason",
                            shown(&a.revoke_reason),
                            shown(&b.revoke_reason),
                        ));
                    }
                }
                (Some(a), None) => out.push(d(
                    Some(*v),
                    "version",
                    a.stage.name().into(),
                    "missing".into(),
                )),
                (None, Some(b)) => out.push(d(
                    Some(*v),
                    "version",
                    "no event".into(),
                    b.stage.name().into(),
                )),
                (None, None) => {}
            }
        }
    }
    out
}

/// Every way the fingerprint index disagrees with the rebuilt inventory: an entry pointing at
/// a version (or lease) the lifecycle never mentions, or a version with a value and no entry.
pub(crate) fn index_diff(
    entries: &[(String, FingerprintRef)],
    rebuilt: &State,
    leases: &BTreeSet<Uuid>,
) -> Vec<Difference> {
    let mut out = Vec::new();
    let mut indexed: BTreeSet<(String, Uuid)> = BTreeSet::new();
    for (key, target) in entries {
        match target {
            FingerprintRef::Version {
                credential,
                version,
            } => {
                let id = credential.to_string();
                let known = rebuilt
                    .get(&id)
                    .is_some_and(|c| c.versions.contains_key(version));
                if !known {
                    out.push(Difference {
                        credential: id.clone(),
                        version: Some(*version),
                        what: "fingerprint entry".into(),
                        rebuilt: "no such version".into(),
                        live: format!("entry {}…", &key[..key.len().min(12)]),
                    });
                }
                indexed.insert((id, *version));
            }
            FingerprintRef::Lease { lease } if !leases.contains(lease) => out.push(Difference {
                credential: format!("lease {lease}"),
                version: None,
                what: "fingerprint entry".into(),
                rebuilt: "no such lease".into(),
                live: format!("entry {}…", &key[..key.len().min(12)]),
            }),
            FingerprintRef::Lease { .. } => {}
        }
    }
    for (id, c) in rebuilt {
        for (v, state) in &c.versions {
            if state.fingerprint.is_some() && !indexed.contains(&(id.clone(), *v)) {
                out.push(Difference {
                    credential: id.clone(),
                    version: Some(*v),
                    what: "fingerprint entry".into(),
                    rebuilt: format!("{} value", state.stage.name()),
                    live: "not indexed".into(),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyloop_core::LifecycleData;
    use keyloop_core::event::lifecycle_event;

    fn ev(kind: LifecycleKind, v: Uuid, f: impl FnOnce(&mut LifecycleData)) -> LifecycleEvent {
        let mut d = LifecycleData::new(kind, Some("svc/a".parse().unwrap()), Some(v));
        f(&mut d);
        lifecycle_event("keyloop/test", &format!("{v}/{}", kind.name()), d)
    }

    fn tag(t: &str) -> Option<FingerprintTag> {
        Some(FingerprintTag::parse(t).unwrap())
    }

    #[test]
    fn a_rotation_and_a_grace_end_fold_into_stages() {
        let (v1, v2, v3) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let events = [
            ev(LifecycleKind::Created, v1, |d| {
                d.fingerprint = tag("fp:00000001")
            }),
            ev(LifecycleKind::RotationStarted, v2, |d| {
                d.fingerprint = tag("fp:00000002")
            }),
            ev(LifecycleKind::Rotated, v2, |d| {
                d.previous_version = Some(v1)
            }),
            ev(LifecycleKind::Revoked, v1, |d| {
                d.revoke_reason = Some(RevokeReason::GraceEnded)
            }),
            ev(LifecycleKind::RotationStarted, v3, |d| {
                d.fingerprint = tag("fp:00000003")
            }),
        ];
        let state = from_lifecycle(&events);
        let c = &state["svc/a"];
        let stages: Vec<_> = [v1, v2, v3].iter().map(|v| c.versions[v].stage).collect();
        assert_eq!(stages, [Stage::Revoked, Stage::Current, Stage::Pending]);
        assert_eq!(
            c.versions[&v1].revoke_reason,
            Some(RevokeReason::GraceEnded)
        );
        assert_eq!(c.versions[&v2].fingerprint, tag("fp:00000002"));
        assert!(diff(&state, &state).is_empty());

        let mut live = state.clone();
        let lc = live.get_mut("svc/a").unwrap();
        lc.versions.get_mut(&v2).unwrap().stage = Stage::Previous;
        lc.versions.remove(&v3);
        lc.retired = true;
        let found: Vec<_> = diff(&state, &live).into_iter().map(|d| d.what).collect();
        assert_eq!(found, ["retired", "stage", "version"]);
    }

    #[test]
    fn the_index_must_point_at_known_versions_and_cover_every_value() {
        let (v1, stray) = (Uuid::now_v7(), Uuid::now_v7());
        let state = from_lifecycle(&[ev(LifecycleKind::Created, v1, |d| {
            d.fingerprint = tag("fp:00000001")
        })]);
        let entry = |v| FingerprintRef::Version {
            credential: "svc/a".parse().unwrap(),
            version: v,
        };
        let ok = [("v1.sha256.aa".to_owned(), entry(v1))];
        assert!(index_diff(&ok, &state, &BTreeSet::new()).is_empty());
        let bad = [("v1.sha256.bb".to_owned(), entry(stray))];
        let found = index_diff(&bad, &state, &BTreeSet::new());
        assert_eq!(
            found.len(),
            2,
            "a stray entry and an unindexed value: {found:?}"
        );
        let lease = [(
            "v1.sha256.cc".to_owned(),
            FingerprintRef::Lease { lease: stray },
        )];
        assert_eq!(
            index_diff(&lease, &state, &BTreeSet::from([stray])).len(),
            1
        );
    }
}
