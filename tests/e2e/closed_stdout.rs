//! A reader that goes away ends a command quietly: `keyloop replay | head -1` exits with 141
//! (the SIGPIPE convention) and no panic, instead of `println!`'s "failed printing to stdout".

use crate::harness::Env;
use keyloop_core::event::{CloudEvent, SCHEDULE_TICK_TYPE, ScheduleTick};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncBufReadExt;

/// Lines enough to overflow a pipe's buffer (64 KiB on Linux) several times over, so the
/// command is still writing when the reader goes.
const EVENTS: i64 = 3_000;

#[tokio::test]
async fn replay_into_a_pipe_closed_after_one_line_exits_141_without_a_panic() {
    let env = Env::start().await;
    for i in 0..EVENTS {
        let tick = CloudEvent::new(
            format!("tick-test-{i}"),
            "keyloop/test",
            SCHEDULE_TICK_TYPE,
            ScheduleTick {
                window_start: i,
                window_secs: 60,
            },
        );
        env.bus
            .publish_event(&env.bus.topology.schedule_tick(), &tick)
            .await
            .unwrap();
    }
    let mut child = env
        .keyloop()
        .args(["replay", "--ticks"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap());
    let mut header = String::new();
    stdout.read_line(&mut header).await.unwrap();
    assert!(header.starts_with("TIME (UTC)"), "{header}");
    let mut first = String::new();
    stdout.read_line(&mut first).await.unwrap();
    assert!(first.contains("schedule.tick"), "{first}");
    drop(stdout);
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("replay ends once its reader is gone")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(141), "{stderr}");
    assert!(stderr.trim().is_empty(), "nothing to say: {stderr}");
}
