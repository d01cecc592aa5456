//! The give-up is durable: a message is terminated only once its DLQ copy is stored, whatever
//! stands in the way — a DLQ that cannot be written to on the last delivery, a worker stopped
//! while it is down, a message that kills every worker holding it. The DLQ is made unavailable
//! the ways a real server refuses it: a stream limit that rejects every message (the server
//! answers "maximum bytes exceeded"), or no stream at all (the publish times out); `init` brings
//! it back. The consume runtime runs in-process against a real nats-server.

use crate::harness::{Env, Stored, stream_messages};
use futures::StreamExt;
use keyloop_nats::runtime::consume;
use keyloop_nats::{Bus, ConsumeConfig, Handler, HandlerError, Role};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const ROLE: Role = Role::LeakResponder;

/// A handler that fails transiently every time and counts its calls.
fn always_failing(calls: Arc<AtomicU64>) -> Handler {
    Arc::new(move |_| {
        calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Err(HandlerError::transient("the backend is down (test)")) })
    })
}

/// Retries in milliseconds, so a message reaches its give-up point at once.
fn fast_retries() -> ConsumeConfig {
    ConsumeConfig {
        base_retry_delay: Duration::from_millis(1),
        max_retry_delay: Duration::from_millis(5),
        ..Default::default()
    }
}

/// Runs the consume loop of [`ROLE`] on `bus` until the returned token is cancelled.
fn run_worker(
    bus: &Bus,
    config: ConsumeConfig,
    handler: Handler,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<Result<(), keyloop_nats::Error>>,
) {
    let stop = CancellationToken::new();
    let task = tokio::spawn(consume(bus.clone(), ROLE, config, handler, stop.clone()));
    (stop, task)
}

/// How a test makes the DLQ unavailable (`init` undoes either).
enum DlqFault {
    /// A byte limit no message fits under, new messages discarded: the server refuses every
    /// DLQ copy at once.
    Full,
    /// No DLQ stream: nothing stores a copy.
    Missing,
}

/// A server with keyloop's layout whose DLQ `fault` makes unavailable, its bus, and a watch on
/// DLQ writes (see [`watch_dlq_writes`]).
async fn without_dlq(fault: DlqFault) -> (Env, Bus, async_nats::Subscriber) {
    use async_nats::jetstream::stream::DiscardPolicy;
    let env = Env::start().await;
    let bus = env.bus.clone();
    let dlq = bus.topology.dlq_stream();
    match fault {
        DlqFault::Full => {
            let stream = bus.js.get_stream(&dlq).await.unwrap();
            let mut config = stream.cached_info().config.clone();
            config.max_bytes = 1;
            config.discard = DiscardPolicy::New;
            bus.js
                .update_stream(config)
                .await
                .expect("limit the DLQ stream");
        }
        DlqFault::Missing => {
            bus.js
                .delete_stream(&dlq)
                .await
                .expect("delete the DLQ stream");
        }
    }
    let attempts = watch_dlq_writes(&bus).await;
    (env, bus, attempts)
}

async fn publish_poison(bus: &Bus) -> Vec<u8> {
    let payload = b"{\"poison\": true}".to_vec();
    bus.publish_raw(
        &bus.topology.leak_detected(),
        "poison-1",
        async_nats::HeaderMap::new(),
        payload.clone(),
    )
    .await
    .expect("publish the poison message");
    payload
}

/// Every DLQ write tried from now on: each is a publish on the DLQ subject, which a core
/// subscription sees whether or not a stream stores it. (Being a subscriber, it also keeps the
/// server from answering "no responders" when no stream listens: such a write times out.)
async fn watch_dlq_writes(bus: &Bus) -> async_nats::Subscriber {
    let attempts = bus
        .client
        .subscribe(bus.topology.dlq(ROLE.name()))
        .await
        .unwrap();
    bus.client.flush().await.unwrap();
    attempts
}

/// Waits until `n` DLQ writes were tried (see [`watch_dlq_writes`]).
async fn dlq_attempts(attempts: &mut async_nats::Subscriber, n: usize) {
    for i in 0..n {
        tokio::time::timeout(Duration::from_secs(30), attempts.next())
            .await
            .unwrap_or_else(|_| panic!("only {i} DLQ writes were tried, expected {n}"))
            .expect("subscription open");
    }
}

/// Reads what the DLQ stream stores, from its start.
struct DlqReader(async_nats::jetstream::consumer::pull::Ordered);

impl DlqReader {
    async fn open(bus: &Bus) -> Self {
        use async_nats::jetstream::consumer::pull::OrderedConfig;
        let stream = bus.js.get_stream(bus.topology.dlq_stream()).await.unwrap();
        let consumer = stream
            .create_consumer(OrderedConfig::default())
            .await
            .unwrap();
        Self(consumer.messages().await.unwrap())
    }

    /// The next stored copy.
    async fn next(&mut self) -> Stored {
        let msg = tokio::time::timeout(Duration::from_secs(30), self.0.next())
            .await
            .expect("a copy reaches the DLQ")
            .expect("ordered consumer open")
            .unwrap();
        Stored {
            subject: msg.subject.to_string(),
            headers: msg
                .headers
                .iter()
                .flat_map(|h| h.iter())
                .flat_map(|(k, vs)| vs.iter().map(move |v| (k.to_string(), v.to_string())))
                .collect(),
            payload: msg.payload.to_vec(),
        }
    }
}

/// Brings the DLQ back (`init`) and returns the first copy it stores.
async fn restore_dlq_and_take_its_copy(bus: &Bus) -> Stored {
    bus.topology
        .init(&bus.js)
        .await
        .expect("init restores the DLQ");
    DlqReader::open(bus).await.next().await
}

fn header<'a>(m: &'a Stored, name: &str) -> &'a str {
    m.headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("DLQ copy has no {name} header: {:?}", m.headers))
}

/// After the consumer has stopped (its last acks flushed): the original is settled, and the
/// DLQ holds exactly one copy of it.
async fn assert_settled_with_one_copy(env: &Env, payload: &[u8]) -> Stored {
    let info = env.consumer_info(ROLE).await.expect("consumer info");
    assert_eq!(
        (info.num_ack_pending, info.num_pending),
        (0, 0),
        "the original was terminated once its copy was stored"
    );
    let dlq = stream_messages(&env.bus, &env.bus.topology.dlq_stream()).await;
    assert_eq!(dlq.len(), 1, "exactly one DLQ copy: {dlq:?}");
    assert_eq!(dlq[0].subject, "keyloop.dlq.leak-responder");
    assert_eq!(dlq[0].payload, payload, "the DLQ holds the message whole");
    assert_eq!(
        header(&dlq[0], keyloop_nats::bus::DLQ_SUBJECT_HEADER),
        "keyloop.leak.detected"
    );
    dlq.into_iter().next().unwrap()
}

#[tokio::test]
async fn a_message_whose_dlq_write_fails_on_its_last_delivery_stays_in_hand_until_the_dlq_takes_it()
{
    let (env, bus, mut attempts) = without_dlq(DlqFault::Full).await;
    let calls = Arc::new(AtomicU64::new(0));
    let (stop, worker) = run_worker(&bus, fast_retries(), always_failing(calls.clone()));
    let payload = publish_poison(&bus).await;

    // Three failed writes: the worker keeps trying instead of handing the message back to a
    // consumer that would never deliver it again.
    dlq_attempts(&mut attempts, 3).await;
    let info = env.consumer_info(ROLE).await.unwrap();
    assert_eq!(info.num_ack_pending, 1, "the message is still in hand");
    assert_eq!(
        info.config.max_deliver, -1,
        "the consumer never gives a message up itself"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        keyloop_nats::topology::GIVE_UP_AFTER,
        "the handler ran on every delivery up to the give-up point, and not again"
    );

    let copy = restore_dlq_and_take_its_copy(&bus).await;
    assert_eq!(
        header(&copy, keyloop_nats::bus::DLQ_REASON_HEADER),
        "gave up after 20 deliveries: the backend is down (test)"
    );
    stop.cancel();
    worker.await.unwrap().unwrap();
    let copy = assert_settled_with_one_copy(&env, &payload).await;
    assert_eq!(
        header(&copy, keyloop_nats::bus::DLQ_DELIVERIES_HEADER),
        "20"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 20);
}

#[tokio::test]
async fn a_worker_stopped_while_the_dlq_is_down_hands_the_message_back_and_its_next_delivery_dead_letters_it()
 {
    let (env, bus, mut attempts) = without_dlq(DlqFault::Missing).await;
    let (stop, worker) = run_worker(&bus, fast_retries(), always_failing(Arc::default()));
    let payload = publish_poison(&bus).await;
    // A DLQ write is under way (it will time out: no stream answers) when the worker stops.
    dlq_attempts(&mut attempts, 1).await;
    stop.cancel();
    worker.await.unwrap().unwrap();

    // A new worker gets the message once more (a delivery past the give-up point) and tries
    // to dead-letter it without running its handler; the DLQ is still down, then comes back.
    let calls = Arc::new(AtomicU64::new(0));
    let (stop, worker) = run_worker(&bus, fast_retries(), always_failing(calls.clone()));
    dlq_attempts(&mut attempts, 1).await;
    let copy = restore_dlq_and_take_its_copy(&bus).await;
    assert!(
        header(&copy, keyloop_nats::bus::DLQ_REASON_HEADER)
            .starts_with("gave up after 20 deliveries: the last one ended without an outcome"),
        "{:?}",
        copy.headers
    );
    stop.cancel();
    worker.await.unwrap().unwrap();
    assert_settled_with_one_copy(&env, &payload).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "the handler had its deliveries already"
    );
}

#[tokio::test]
async fn a_long_dlq_outage_does_not_hold_up_the_messages_behind_a_poison_one() {
    let (env, bus, mut attempts) = without_dlq(DlqFault::Full).await;
    // One message at a time: a poison message kept in hand for as long as the DLQ is down
    // would stop everything behind it (a revocation, say).
    let (served_tx, mut served) = tokio::sync::mpsc::unbounded_channel();
    let handler: Handler = Arc::new(move |delivery| {
        let served_tx = served_tx.clone();
        Box::pin(async move {
            if delivery.message.payload.starts_with(b"{\"poison\"") {
                return Err(HandlerError::transient("the backend is down (test)"));
            }
            let _ = served_tx.send(());
            Ok(())
        })
    });
    let config = ConsumeConfig {
        concurrency: 1,
        dlq_hold: Duration::from_millis(300),
        ..fast_retries()
    };
    let (stop, worker) = run_worker(&bus, config, handler);
    let payload = publish_poison(&bus).await;
    // The poison message has reached its give-up point and the DLQ refuses it; then a live
    // message arrives.
    dlq_attempts(&mut attempts, 1).await;
    bus.publish_raw(
        &bus.topology.leak_detected(),
        "live-1",
        async_nats::HeaderMap::new(),
        b"{\"live\": true}".to_vec(),
    )
    .await
    .unwrap();
    tokio::time::timeout(Duration::from_secs(30), served.recv())
        .await
        .expect("the live message is served while the DLQ is still down");

    let copy = restore_dlq_and_take_its_copy(&bus).await;
    assert!(
        header(&copy, keyloop_nats::bus::DLQ_REASON_HEADER).starts_with("gave up after "),
        "{:?}",
        copy.headers
    );
    stop.cancel();
    worker.await.unwrap().unwrap();
    assert_settled_with_one_copy(&env, &payload).await;
}

#[tokio::test]
async fn a_message_that_kills_every_worker_holding_it_ends_in_the_dlq_once() {
    let env = Env::start().await;
    let bus = env.bus.clone();
    // A short ack wait, so a dead worker's message comes back in a second.
    let (stream, _) = bus.topology.consumer_of(ROLE);
    let mut config = bus.topology.consumer_config(ROLE);
    config.ack_wait = Duration::from_secs(1);
    bus.js
        .get_stream(&stream)
        .await
        .unwrap()
        .update_consumer(config)
        .await
        .unwrap();
    let give_up = ConsumeConfig {
        give_up_after: 2,
        ..fast_retries()
    };
    let payload = publish_poison(&bus).await;
    let mut dlq = DlqReader::open(&bus).await;

    // Each delivery "kills" its worker: the handler never returns, and the worker is torn
    // down with its connection, acking nothing. Deliveries come back after the ack wait until
    // one is past the give-up point: that one goes to the DLQ without reaching a handler.
    let mut killed = 0;
    let copy = loop {
        let worker_bus = Bus::connect(&env.url, keyloop_nats::Topology::default())
            .await
            .unwrap();
        let (entered_tx, mut entered) = tokio::sync::mpsc::unbounded_channel();
        let hang: Handler = Arc::new(move |_| {
            let _ = entered_tx.send(());
            Box::pin(std::future::pending())
        });
        let (stop, worker) = run_worker(&worker_bus, give_up.clone(), hang);
        tokio::select! {
            _ = entered.recv() => {
                killed += 1;
                assert!(killed <= 2, "a handler ran past the give-up point");
                worker.abort();
                let _ = worker.await;
            }
            copy = dlq.next() => {
                stop.cancel();
                worker.await.unwrap().unwrap();
                break copy;
            }
        }
    };
    assert!(
        killed >= 1,
        "the message killed its workers before it was given up"
    );
    let reason = header(&copy, keyloop_nats::bus::DLQ_REASON_HEADER);
    assert!(
        reason.starts_with("gave up after ") && reason.contains("ended without an outcome"),
        "{reason}"
    );
    assert_settled_with_one_copy(&env, &payload).await;
}

#[tokio::test]
async fn init_lifts_the_delivery_limit_of_consumers_made_by_an_older_init() {
    let env = Env::start().await;
    let bus = &env.bus;
    for role in Role::CONSUMING {
        let (stream, _) = bus.topology.consumer_of(role);
        let mut old = bus.topology.consumer_config(role);
        old.max_deliver = 20;
        bus.js
            .get_stream(&stream)
            .await
            .unwrap()
            .update_consumer(old)
            .await
            .unwrap();
    }
    env.ok(&["init"]).await;
    env.ok(&["init"]).await;
    for role in Role::CONSUMING {
        let info = env.consumer_info(role).await.unwrap();
        assert_eq!(info.config.max_deliver, -1, "{}", role.name());
        assert_eq!(info.config.ack_wait, keyloop_nats::topology::ACK_WAIT);
    }
    let dlq = bus
        .js
        .get_stream(bus.topology.dlq_stream())
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .duplicate_window;
    assert_eq!(dlq, keyloop_nats::topology::LIFECYCLE_DEDUP_WINDOW);
}
