//! Invariant 9, the half about digests: no full digest of a live value is published. A digest is
//! all a leak event needs to match, so whoever read one and may publish leaks could have that
//! credential revoked at will. After a registration, a rotation (with a grace, so two versions
//! are live) and a leak, every message the server routed — lifecycle events, inventory writes,
//! commands, API traffic — and every output of `credential register`/`show`/`list`/`rotate`
//! and `replay`, for people and `--json`, is searched for the SHA-256 and SHA-1 of each value
//! (computed here from `credential reveal`). The only places allowed to hold them are the
//! detectors' own leak findings and a lookup in the fingerprint index under an unhashed key (the
//! fallback for indexes written before keys were hashed: a request only its sender and the
//! server see). The index's own keys, written by the workers, are hashes of the digests. What
//! people see instead is each version's tag (`fp:` and 8 hex), and a leak built from a tag
//! matches nothing.

use crate::harness::{Env, Events, Stored, Wiretap, gitleaks_report, lifecycle, path_str};
use keyloop_core::{Fingerprint, LifecycleKind, Secret, Stage};
use std::time::Duration;

const ID: &str = "svc/digests";

/// The full digests of `value`, and the 16-hex prefixes `credential show` used to print.
fn digests(value: &str) -> Vec<String> {
    let fp = Fingerprint::of(&Secret::from(value));
    let (sha256, sha1) = (fp.sha256.unwrap(), fp.sha1.unwrap());
    vec![sha256[..16].to_owned(), sha1[..16].to_owned(), sha256, sha1]
}

fn tag(value: &str) -> String {
    Fingerprint::of(&Secret::from(value))
        .tag()
        .unwrap()
        .to_string()
}

/// Whether a message routed by the server may carry a digest: a lookup in the fingerprint
/// index under an unhashed key (`…KV_keyloop_fingerprints.$KV.keyloop_fingerprints.sha256.<d>`,
/// the fallback for old indexes), or a detector's leak finding (its digests are what it
/// reports). Never a write to the index (`$KV.keyloop_fingerprints.…`): its keys are hashed.
fn may_hold_digests(m: &Stored) -> bool {
    let legacy_lookup = ["sha256.", "sha1."].iter().any(|kind| {
        m.subject.starts_with(&format!(
            "$JS.API.DIRECT.GET.KV_keyloop_fingerprints.$KV.keyloop_fingerprints.{kind}"
        ))
    });
    legacy_lookup
        || String::from_utf8_lossy(&m.payload).contains(r#""type":"dev.keyloop.leak.detected""#)
}

#[tokio::test]
async fn no_full_digest_of_a_live_value_leaves_the_fingerprint_index() {
    let env = Env::start().await;
    let _worker = env.worker("worker", &["leak-responder", "rotator", "revoker"]);
    let events = Events::subscribe(&env.bus).await;
    let wiretap = Wiretap::start(&env.bus).await;
    let mut outputs = Vec::new();

    // v1, then a rotation to v2 with v1 live (previous) for an hour.
    outputs.push(
        env.ok(&[
            "credential",
            "register",
            ID,
            "--store",
            "local",
            "--grace",
            "1h",
            "--json",
        ])
        .await,
    );
    let v1 = env
        .ok(&["credential", "reveal", ID])
        .await
        .trim_end()
        .to_owned();
    outputs.push(env.ok(&["rotate", ID]).await);
    let v2 = env
        .ok(&["credential", "reveal", ID])
        .await
        .trim_end()
        .to_owned();
    let cred = env.credential(ID).await;
    assert_eq!(
        cred.versions.iter().map(|v| v.stage).collect::<Vec<_>>(),
        [Stage::Previous, Stage::Current],
        "two live versions"
    );

    // What people see: each version's tag, the same in `show` and in the events.
    let show = env.ok(&["credential", "show", ID]).await;
    for value in [&v1, &v2] {
        assert!(
            show.contains(&tag(value)),
            "show names {}:\n{show}",
            tag(value)
        );
    }
    let stored = lifecycle(&env.bus).await;
    let tag_of = |kind: LifecycleKind| {
        stored
            .iter()
            .find(|e| e.data.kind == kind)
            .and_then(|e| e.data.fingerprint.as_ref())
            .map(ToString::to_string)
    };
    assert_eq!(tag_of(LifecycleKind::Created), Some(tag(&v1)));
    assert_eq!(tag_of(LifecycleKind::RotationStarted), Some(tag(&v2)));
    outputs.push(show);
    for args in [
        &["credential", "show", ID, "--json"][..],
        &["credential", "list"],
        &["credential", "list", "--json"],
        &["replay"],
        // No leak yet: the inbound events replayed here hold no digest either.
        &["replay", "--json"],
    ] {
        outputs.push(env.ok(args).await);
    }

    // A leak built from what people see matches nothing: the tag (with or without `fp:`)
    // reported as the leaked value gives `leak_unmatched`; reported as a digest it is refused.
    let shown = tag(&v2);
    let hex = shown.trim_start_matches("fp:");
    let report = format!(
        "{{\"secret\":\"{shown}\"}}\n{{\"secret\":\"{hex}\"}}\n{{\"sha256\":\"{shown}\"}}\n{{\"sha1\":\"{hex}\"}}\n"
    );
    let report = env.file("tags.jsonl", report.as_bytes());
    let out = env
        .run(&["ingest", "generic", path_str(&report), "--json"])
        .await;
    assert_eq!(
        out.status.code(),
        Some(3),
        "the digest-shaped lines are refused"
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let leaks: Vec<String> = serde_json::from_value(summary["leak_ids"].clone()).unwrap();
    assert_eq!(leaks.len(), 2, "{summary}");
    events
        .wait(
            "leak_unmatched for both tags",
            Duration::from_secs(10),
            |seen| {
                leaks.iter().all(|leak| {
                    seen.iter().any(|e| {
                        e.data.kind == LifecycleKind::LeakUnmatched
                            && e.causationid.as_deref() == Some(leak.as_str())
                    })
                })
            },
        )
        .await;

    // The control: a leak of the real value (v1, live as previous) does match, and its
    // `leak_matched` names v1 by its tag.
    let report = env.file("v1.json", &gitleaks_report(&v1, "old.env"));
    env.ok(&["ingest", "gitleaks", path_str(&report)]).await;
    events
        .wait("v1 revoked", Duration::from_secs(10), |seen| {
            seen.iter().any(|e| {
                e.data.kind == LifecycleKind::Revoked && e.data.version == Some(cred.versions[0].id)
            })
        })
        .await;
    let stored = lifecycle(&env.bus).await;
    let matched: Vec<_> = stored
        .iter()
        .filter(|e| e.data.kind == LifecycleKind::LeakMatched)
        .collect();
    assert_eq!(matched.len(), 1, "only the real value matched");
    assert_eq!(matched[0].data.version, Some(cred.versions[0].id));
    assert_eq!(
        matched[0]
            .data
            .fingerprint
            .as_ref()
            .map(ToString::to_string),
        Some(tag(&v1))
    );
    assert!(
        !stored.iter().any(|e| e.data.kind == LifecycleKind::Revoked
            && e.data.version == Some(cred.versions[1].id)),
        "the tags revoked nothing: v2 is still live"
    );
    for args in [&["credential", "show", ID][..], &["replay"]] {
        outputs.push(env.ok(args).await);
    }

    // Nowhere a digest of either value: not in what the CLI printed, not in any message the
    // server routed outside the fingerprint index and the leak findings.
    let secret_digests: Vec<_> = [&v1, &v2].into_iter().flat_map(|v| digests(v)).collect();
    for out in &outputs {
        for d in &secret_digests {
            assert!(!out.contains(d.as_str()), "a digest in CLI output:\n{out}");
        }
    }
    let messages = wiretap.messages().await;
    assert!(
        messages
            .iter()
            .any(|m| m.subject.starts_with("$KV.keyloop_inventory.")),
        "the wiretap saw the inventory writes"
    );
    let index_writes: Vec<_> = messages
        .iter()
        .filter(|m| m.subject.starts_with("$KV.keyloop_fingerprints."))
        .collect();
    assert!(
        index_writes.len() >= 4,
        "the wiretap saw the index writes (two keys per value): {}",
        index_writes.len()
    );
    assert!(
        index_writes
            .iter()
            .all(|m| m.subject.starts_with("$KV.keyloop_fingerprints.v1.")),
        "every index key is hashed"
    );
    for m in messages.iter().filter(|m| !may_hold_digests(m)) {
        let payload = String::from_utf8_lossy(&m.payload);
        for d in &secret_digests {
            let found = m.subject.contains(d.as_str())
                || payload.contains(d.as_str())
                || m.headers.iter().any(|(_, v)| v.contains(d.as_str()));
            assert!(
                !found,
                "a digest on {}: {:?} {payload}",
                m.subject, m.headers
            );
        }
    }
}

/// An index written before its keys were hashed (`sha256.<digest>`, `sha1.<digest>`) still
/// matches a leak after the upgrade: lookups fall back to the unhashed keys.
#[tokio::test]
async fn a_version_indexed_under_the_old_unhashed_keys_is_still_matched_by_a_leak() {
    let env = Env::start().await;
    let _worker = env.worker("worker", &["leak-responder", "rotator", "revoker"]);
    let events = Events::subscribe(&env.bus).await;
    let value = env.register_and_reveal("svc/upgraded").await;
    let version = env.credential("svc/upgraded").await.versions[0].id;

    // Rewrite its entries as an older keyloop wrote them.
    let index = env
        .bus
        .js
        .get_key_value(env.bus.topology.fingerprint_bucket())
        .await
        .unwrap();
    let fp = Fingerprint::of(&Secret::from(value.as_str()));
    let entry = index
        .get(fp.index_keys()[0].clone())
        .await
        .unwrap()
        .expect("indexed under the hashed key");
    for (hashed, legacy) in fp.index_keys().into_iter().zip([
        format!("sha256.{}", fp.sha256.as_deref().unwrap()),
        format!("sha1.{}", fp.sha1.as_deref().unwrap()),
    ]) {
        index.put(legacy, entry.clone()).await.unwrap();
        index.purge(hashed).await.unwrap();
    }

    let report = env.file("leak.json", &gitleaks_report(&value, "a.env"));
    env.ok(&["ingest", "gitleaks", path_str(&report)]).await;
    events
        .wait(
            "the old entry matched and the version was revoked",
            Duration::from_secs(10),
            |seen| {
                seen.iter()
                    .any(|e| e.data.kind == LifecycleKind::LeakMatched)
                    && seen.iter().any(|e| {
                        e.data.kind == LifecycleKind::Revoked && e.data.version == Some(version)
                    })
            },
        )
        .await;
}
