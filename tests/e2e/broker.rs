//! Broker faults: the single server restarted mid-run (same store), and the stream leader of a
//! 3-node cluster killed mid-run. Workers reconnect and finish; nothing is lost or doubled.

use crate::harness::{Env, Follower, path_str};
use keyloop_core::{LifecycleEvent, LifecycleKind};
use keyloop_nats::Role;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// Registers `n` credentials and writes a generic report leaking each of them.
async fn credentials_and_report(env: &Env, n: usize) -> std::path::PathBuf {
    let creds = env
        .register_all((0..n).map(|i| format!("svc/b-{i:03}")))
        .await;
    env.generic_report("leaks.jsonl", creds.iter().map(|c| c.value.as_str()))
}

fn rotated_credentials(events: &[LifecycleEvent]) -> usize {
    events
        .iter()
        .filter(|e| e.data.kind == LifecycleKind::Rotated)
        .filter_map(|e| e.subject.clone())
        .collect::<HashSet<_>>()
        .len()
}

/// Every credential revoked and rotated exactly once; no event stored twice.
fn assert_exactly_once(events: &[LifecycleEvent], n: usize) {
    let ids: HashSet<_> = events.iter().map(|e| e.id.clone()).collect();
    assert_eq!(
        ids.len(),
        events.len(),
        "no lifecycle event is stored twice"
    );
    let mut per: HashMap<String, (usize, usize)> = HashMap::new();
    for e in events {
        let entry = per
            .entry(e.subject.clone().unwrap_or_default())
            .or_default();
        match e.data.kind {
            LifecycleKind::Revoked => entry.0 += 1,
            LifecycleKind::Rotated => entry.1 += 1,
            _ => {}
        }
    }
    for i in 0..n {
        let id = format!("svc/b-{i:03}");
        assert_eq!(per.get(&id), Some(&(1, 1)), "{id}: (revoked, rotated)");
    }
}

/// Waits for every credential to be rotated; if that does not happen, prints what the consumers
/// and the worker say before failing, because a broker fault is hard to reproduce by hand.
async fn finish_or_explain(
    env: &Env,
    follower: &Follower,
    worker: &crate::harness::Worker,
    n: usize,
) {
    let finished = follower
        .reached(Duration::from_secs(90), |e| rotated_credentials(e) >= n)
        .await;
    if finished {
        return;
    }
    eprintln!(
        "lifecycle events stored: {}",
        crate::harness::lifecycle(&env.bus).await.len()
    );
    for role in [Role::LeakResponder, Role::Revoker, Role::Rotator] {
        if let Some(info) = env.consumer_info(role).await {
            eprintln!(
                "{}: pending {} ack_pending {} redelivered {} leader {:?}",
                role.name(),
                info.num_pending,
                info.num_ack_pending,
                info.num_redelivered,
                info.cluster.as_ref().and_then(|c| c.leader.clone())
            );
        }
    }
    for line in worker
        .log_text()
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .take(40)
    {
        eprintln!("worker: {}", &line[..line.len().min(300)]);
    }
    panic!(
        "only {} of {n} credentials were rotated within 90 s",
        rotated_credentials(&follower.events())
    );
}

#[tokio::test]
async fn workers_finish_after_the_server_restarts_mid_run() {
    const N: usize = 300;
    let mut env = Env::start().await;
    let report = credentials_and_report(&env, N).await;
    let worker = env.worker("worker", &["leak-responder", "rotator", "revoker"]);
    let follower = Follower::lifecycle(&env.bus).await;
    env.ok(&["ingest", "generic", path_str(&report)]).await;
    follower
        .wait("work under way", Duration::from_secs(30), |e| {
            e.iter()
                .filter(|e| e.data.kind == LifecycleKind::Revoked)
                .count()
                >= 20
        })
        .await;
    let restarted = Instant::now();
    env.server.as_mut().unwrap().restart().await;
    let done_before = rotated_credentials(&follower.events());
    finish_or_explain(&env, &follower, &worker, N).await;
    println!(
        "server killed (-9) and restarted with {done_before}/{N} rotated; the rest finished {:?} later",
        restarted.elapsed()
    );
    assert_exactly_once(&follower.events(), N);
}

#[tokio::test]
async fn killing_the_stream_leader_of_a_3_node_cluster_loses_and_doubles_nothing() {
    const N: usize = 200;
    let mut env = Env::start_cluster().await;
    let report = credentials_and_report(&env, N).await;
    let worker = env.worker("worker", &["leak-responder", "rotator", "revoker"]);
    let follower = Follower::lifecycle(&env.bus).await;
    env.ok(&["ingest", "generic", path_str(&report)]).await;
    follower
        .wait("work under way", Duration::from_secs(30), |e| {
            e.iter()
                .filter(|e| e.data.kind == LifecycleKind::Revoked)
                .count()
                >= 20
        })
        .await;
    let mut stream = env
        .bus
        .js
        .get_stream(env.bus.topology.commands_stream())
        .await
        .unwrap();
    let leader = stream
        .info()
        .await
        .unwrap()
        .cluster
        .clone()
        .and_then(|c| c.leader)
        .expect("the commands stream has a leader");
    let index = keyloop_testkit::TestCluster::index_of(&leader).expect("node name");
    let killed = Instant::now();
    env.cluster.as_mut().unwrap().kill(index).await;
    let done_before = rotated_credentials(&follower.events());
    finish_or_explain(&env, &follower, &worker, N).await;
    println!(
        "killed stream leader {leader} (-9) with {done_before}/{N} rotated; the rest finished {:?} later",
        killed.elapsed()
    );
    assert_exactly_once(&follower.events(), N);
}
