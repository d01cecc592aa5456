//! Pipelined publishes (`keyloop_nats::pipeline`) in the consume runtime, against a real
//! nats-server: a handler's publishes are stored in the order it made them, also when one of
//! them is lost (as a publish written just before the connection drops is) and the handler goes
//! on regardless: nothing after it is written, the delivery fails as a transient fault, the
//! message is not acked, and its next delivery publishes again — the lost one first — with the
//! streams keeping one copy of each.

use crate::harness::{Env, stream_messages};
use keyloop_nats::runtime::consume;
use keyloop_nats::{ConsumeConfig, Handler, Role};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn a_handlers_pipelined_publishes_are_stored_in_order_and_one_not_stored_fails_it_until_all_are()
 {
    let env = Env::start().await;
    let bus = env.bus.clone();
    let calls = Arc::new(AtomicU64::new(0));
    let events: Vec<String> = (0..20)
        .map(|i| {
            bus.topology
                .lifecycle("rotated", &format!("svc.pipelined-{i:02}"))
        })
        .collect();
    let handler: Handler = {
        let (bus, calls, events) = (bus.clone(), calls.clone(), events.clone());
        Arc::new(move |delivery| {
            let (bus, calls, events) = (bus.clone(), calls.clone(), events.clone());
            Box::pin(async move {
                let attempt = calls.fetch_add(1, Ordering::SeqCst) + 1;
                assert_eq!(attempt, delivery.attempt);
                for (i, subject) in events.iter().enumerate() {
                    let id = format!("pipelined-{i:02}");
                    // On the first delivery, event 9 is lost: no stream takes the subject it
                    // goes to, so its publish is never stored.
                    let subject = if attempt == 1 && i == 9 {
                        "keyloop-test.nowhere"
                    } else {
                        subject.as_str()
                    };
                    // Failures are not returned: the handler goes on as a step that falls back
                    // would, and still nothing after the lost one may be written.
                    let _ = bus
                        .publish_pipelined(subject, &id, Default::default(), id.clone().into())
                        .await;
                }
                Ok(())
            })
        })
    };
    let stop = CancellationToken::new();
    let config = ConsumeConfig {
        base_retry_delay: Duration::from_millis(1),
        max_retry_delay: Duration::from_millis(5),
        ..Default::default()
    };
    let worker = tokio::spawn(consume(
        bus.clone(),
        Role::LeakResponder,
        config,
        handler,
        stop.clone(),
    ));
    bus.publish_raw(
        &bus.topology.leak_detected(),
        "pipelined-leak",
        Default::default(),
        b"{}".to_vec(),
    )
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let info = env.consumer_info(Role::LeakResponder).await.unwrap();
        if calls.load(Ordering::SeqCst) >= 2 && info.num_pending == 0 && info.num_ack_pending == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the message was not settled: {} calls, {} pending, {} unacked",
            calls.load(Ordering::SeqCst),
            info.num_pending,
            info.num_ack_pending
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    worker.await.unwrap().unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the first delivery failed on the lost publish, the second was acked"
    );
    // Had events 10 to 19 been written after 9 was lost, they would be stored before the 9 of
    // the second delivery (or, their acknowledgements awaited, the first delivery acked).
    let stored: Vec<String> = stream_messages(&bus, &bus.topology.lifecycle_stream())
        .await
        .into_iter()
        .map(|m| String::from_utf8(m.payload).unwrap())
        .collect();
    let expected: Vec<String> = (0..20).map(|i| format!("pipelined-{i:02}")).collect();
    assert_eq!(stored, expected, "each once, in the order written");
    assert!(
        stream_messages(&bus, &bus.topology.dlq_stream())
            .await
            .is_empty()
    );
}
