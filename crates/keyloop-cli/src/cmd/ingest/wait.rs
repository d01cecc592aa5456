//! `keyloop ingest --wait`: the outcome of each finding. The leak-responder answers every leak
//! with one lifecycle event, `leak_matched`, `leak_inert` or `leak_unmatched`, whose
//! `causationid` is the leak's id; they are subscribed to (core NATS, on
//! `<prefix>.lifecycle.<kind>.*`) before the first leak is published, so none is missed.
//!
//! A finding is one or more values (the value, the password in it, TruffleHog's `RawV2`): it
//! is `matched` when any of its values matched a live credential or lease, `inert` when one
//! matched a dead one, `unmatched` only when every value matched nothing. A leak the stream
//! already had (the same finding ingested within its dedup window) was handled then and is
//! not awaited: `already_ingested` unless its outcome happens to arrive now. No value, digest
//! or tag is printed; the credential id, version and lease id are.
//!
//! Memory: one small record per finding and per published value, for the run (leak ids and
//! digests kept as 128-bit numbers; detectors and locations only for the findings listed).

use anyhow::Result;
use futures::StreamExt;
use keyloop_core::ingest::PartOf;
use keyloop_core::{Fingerprint, LeakFinding, LeakLocation, LifecycleEvent, LifecycleKind};
use keyloop_nats::Bus;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// The outcome of a finding (or of one published leak).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Kind {
    /// A value matched a live credential version or lease: it is being revoked.
    Matched,
    /// A value matched a version or lease that was already dead.
    Inert,
    /// No value matched anything keyloop manages.
    Unmatched,
    /// No outcome arrived within `--timeout`.
    TimedOut,
    /// Published before (deduplicated); its outcome was decided then.
    AlreadyIngested,
}

impl Kind {
    /// The word for people.
    pub(crate) const fn word(self) -> &'static str {
        match self {
            Self::Matched => "matched",
            Self::Inert => "inert",
            Self::Unmatched => "unmatched",
            Self::TimedOut => "timed out",
            Self::AlreadyIngested => "already ingested",
        }
    }
}

/// What the leak-responder said about one leak.
#[derive(Debug, Clone)]
struct Said {
    kind: Kind,
    credential: Option<String>,
    version: Option<uuid::Uuid>,
    lease: Option<uuid::Uuid>,
}

/// One published leak, followed.
#[derive(Debug, Default)]
struct Leak {
    /// Its outcome is waited for (it was newly stored).
    awaited: bool,
    said: Option<Said>,
}

/// A leak id (`leak-` and 32 hex digits, [`LeakFinding::dedup_key`]) as a number.
type LeakKey = u128;

/// The key of leak id `id`; `None` for an id ingest does not make.
fn leak_key(id: &str) -> Option<LeakKey> {
    let hex = id.strip_prefix("leak-")?;
    (hex.len() == 32).then(|| u128::from_str_radix(hex, 16).ok())?
}

/// The id of a leak key.
fn leak_id(key: LeakKey) -> String {
    format!("leak-{key:032x}")
}

#[derive(Debug, Default)]
struct Board {
    leaks: HashMap<LeakKey, Leak>,
    /// Awaited leaks without an outcome yet.
    open: usize,
}

/// The leak-responder's outcomes, subscribed to before publishing.
pub(crate) struct Watch {
    board: Arc<Mutex<Board>>,
    changed: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Watch {
    /// Subscribes to `leak_matched`, `leak_inert` and `leak_unmatched` of every credential.
    pub(crate) async fn subscribe(bus: &Bus) -> Result<Self> {
        let mut subscriptions = Vec::new();
        for kind in [
            LifecycleKind::LeakMatched,
            LifecycleKind::LeakInert,
            LifecycleKind::LeakUnmatched,
        ] {
            let subject = bus.topology.lifecycle(kind.name(), "*");
            subscriptions.push(bus.client.subscribe(subject).await?);
        }
        // The server has the subscriptions before the first leak goes out.
        bus.client.flush().await?;
        let board: Arc<Mutex<Board>> = Arc::default();
        let changed: Arc<Notify> = Arc::default();
        let (b, c) = (board.clone(), changed.clone());
        let mut events = futures::stream::select_all(subscriptions);
        let task = tokio::spawn(async move {
            while let Some(message) = events.next().await {
                let Ok(event) = serde_json::from_slice::<LifecycleEvent>(&message.payload) else {
                    continue;
                };
                if record(&mut b.lock().expect("board lock"), &event) {
                    c.notify_waiters();
                }
            }
        });
        Ok(Self {
            board,
            changed,
            task,
        })
    }

    /// Expects the outcome of leak `id`, about to be published.
    pub(crate) fn expect(&self, id: &str) {
        let Some(key) = leak_key(id) else {
            return;
        };
        let mut board = self.board.lock().expect("board lock");
        let leak = board.leaks.entry(key).or_default();
        if !leak.awaited && leak.said.is_none() {
            leak.awaited = true;
            board.open += 1;
        }
    }

    /// Leak `id` was stored before: its outcome is not waited for.
    pub(crate) fn already_ingested(&self, id: &str) {
        let mut board = self.board.lock().expect("board lock");
        if let Some(leak) = leak_key(id).and_then(|key| board.leaks.get_mut(&key))
            && leak.awaited
        {
            leak.awaited = false;
            if leak.said.is_none() {
                board.open -= 1;
            }
        }
    }

    /// Waits until every awaited leak has its outcome, or `timeout`; true when all came.
    pub(crate) async fn wait(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            if self.board.lock().expect("board lock").open == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.board.lock().expect("board lock").open == 0;
            }
        }
    }

    /// The state of leak `key`.
    fn state(&self, key: LeakKey) -> (Kind, Option<Said>) {
        let board = self.board.lock().expect("board lock");
        match board.leaks.get(&key) {
            Some(Leak {
                said: Some(said), ..
            }) => (said.kind, Some(said.clone())),
            Some(Leak { awaited: false, .. }) => (Kind::AlreadyIngested, None),
            _ => (Kind::TimedOut, None),
        }
    }
}

/// Records `event` on the board when it answers a followed leak; true when it did.
fn record(board: &mut Board, event: &LifecycleEvent) -> bool {
    let kind = match event.data.kind {
        LifecycleKind::LeakMatched => Kind::Matched,
        LifecycleKind::LeakInert => Kind::Inert,
        LifecycleKind::LeakUnmatched => Kind::Unmatched,
        _ => return false,
    };
    let Some(leak) = event
        .causationid
        .as_deref()
        .and_then(leak_key)
        .and_then(|key| board.leaks.get_mut(&key))
    else {
        return false;
    };
    if leak.said.is_some() {
        return false;
    }
    leak.said = Some(Said {
        kind,
        credential: event.data.credential.as_ref().map(ToString::to_string),
        version: event.data.version,
        lease: event.data.lease.as_ref().map(|l| l.lease_id),
    });
    if leak.awaited {
        board.open -= 1;
    }
    true
}

/// One value of a finding: the leak that carries it, and what part of the finding it is.
#[derive(Debug)]
struct Member {
    leak: LeakKey,
    part: Option<PartOf>,
}

/// One finding of the report.
#[derive(Debug)]
struct Group {
    /// Its detector and location, for the findings listed.
    listed: Option<Box<(String, LeakLocation)>>,
    members: Vec<Member>,
}

/// The findings of the report and the leaks that carry their values.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    groups: Vec<Group>,
    /// The leak of each value published so far, by the first 128 bits of each of its digests.
    leaks_by_value: HashMap<(bool, u128), LeakKey>,
}

/// Keys of a value: the first 128 bits of each digest it has (`true`: SHA-256).
fn keys(fingerprint: &Fingerprint) -> impl Iterator<Item = (bool, u128)> + '_ {
    let prefix = |hex: &str| u128::from_str_radix(hex.get(..32)?, 16).ok();
    let sha256 = fingerprint
        .sha256
        .as_deref()
        .and_then(prefix)
        .map(|k| (true, k));
    let sha1 = fingerprint
        .sha1
        .as_deref()
        .and_then(prefix)
        .map(|k| (false, k));
    sha256.into_iter().chain(sha1)
}

impl Tracker {
    /// A new finding starts.
    pub(crate) fn finding(&mut self, finding: &LeakFinding) {
        let listed = (self.groups.len() < super::LISTED)
            .then(|| Box::new((finding.detector.clone(), finding.location.clone())));
        self.groups.push(Group {
            listed,
            members: Vec::new(),
        });
    }

    /// A value of the current finding is published as leak `id`.
    pub(crate) fn value(&mut self, fingerprint: &Fingerprint, id: &str, part: Option<PartOf>) {
        let Some(leak) = leak_key(id) else {
            return;
        };
        for key in keys(fingerprint) {
            self.leaks_by_value.entry(key).or_insert(leak);
        }
        self.member(leak, part);
    }

    /// A value of the current finding was published earlier in the report.
    pub(crate) fn repeat(&mut self, fingerprint: &Fingerprint, part: Option<PartOf>) {
        let leak = keys(fingerprint).find_map(|key| self.leaks_by_value.get(&key).copied());
        if let Some(leak) = leak {
            self.member(leak, part);
        }
    }

    fn member(&mut self, leak: LeakKey, part: Option<PartOf>) {
        if let Some(group) = self.groups.last_mut()
            && !group.members.iter().any(|m| m.leak == leak)
        {
            group.members.push(Member { leak, part });
        }
    }

    /// The outcome of every finding, as `watch` has them now.
    pub(crate) fn outcomes(&self, watch: &Watch) -> Outcomes {
        let mut outcomes = Outcomes::default();
        for (index, group) in self.groups.iter().enumerate() {
            let states: Vec<_> = group
                .members
                .iter()
                .map(|m| (m, watch.state(m.leak)))
                .collect();
            let first = |kind: Kind| states.iter().find(|(_, (k, _))| *k == kind);
            let decided = [
                Kind::Matched,
                Kind::Inert,
                Kind::TimedOut,
                Kind::AlreadyIngested,
            ]
            .into_iter()
            .find_map(first);
            let (kind, member, said) = match decided {
                Some((member, (kind, said))) => (*kind, Some(*member), said.clone()),
                None if states.is_empty() => (Kind::TimedOut, None, None),
                None => (Kind::Unmatched, None, None),
            };
            outcomes.count(kind);
            let Some(listed) = &group.listed else {
                outcomes.findings_not_listed += 1;
                continue;
            };
            let (detector, location) = listed.as_ref();
            let said = said.unwrap_or(Said {
                kind,
                credential: None,
                version: None,
                lease: None,
            });
            outcomes.findings.push(FindingOutcome {
                finding: index as u64 + 1,
                outcome: kind,
                detector: detector.clone(),
                location: location.clone(),
                credential: said.credential,
                version: said.version,
                lease: said.lease,
                matched_by: member
                    .filter(|_| matches!(kind, Kind::Matched | Kind::Inert))
                    .map(|m| m.part.map_or("the value", PartOf::describe)),
                leak_ids: group.members.iter().map(|m| leak_id(m.leak)).collect(),
            });
        }
        outcomes
    }
}

/// The outcomes of a report's findings (`--wait`).
#[derive(Debug, Default, Serialize)]
pub(crate) struct Outcomes {
    pub(crate) matched: u64,
    pub(crate) inert: u64,
    pub(crate) unmatched: u64,
    pub(crate) timed_out: u64,
    pub(crate) already_ingested: u64,
    /// The first [`super::LISTED`] findings, in report order.
    pub(crate) findings: Vec<FindingOutcome>,
    /// Findings beyond those listed (counted above).
    pub(crate) findings_not_listed: u64,
}

impl Outcomes {
    fn count(&mut self, kind: Kind) {
        *match kind {
            Kind::Matched => &mut self.matched,
            Kind::Inert => &mut self.inert,
            Kind::Unmatched => &mut self.unmatched,
            Kind::TimedOut => &mut self.timed_out,
            Kind::AlreadyIngested => &mut self.already_ingested,
        } += 1;
    }
}

/// The outcome of one finding.
#[derive(Debug, Serialize)]
pub(crate) struct FindingOutcome {
    /// 1-based, in report order (usable findings only).
    pub(crate) finding: u64,
    pub(crate) outcome: Kind,
    pub(crate) detector: String,
    pub(crate) location: LeakLocation,
    /// The credential whose version the finding matched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) credential: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) version: Option<uuid::Uuid>,
    /// The JIT lease the finding matched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) lease: Option<uuid::Uuid>,
    /// Which value of the finding matched: `the value`, `the password in a URI`, ….
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) matched_by: Option<&'static str>,
    /// The leak events of its values (their correlation ids).
    pub(crate) leak_ids: Vec<String>,
}
