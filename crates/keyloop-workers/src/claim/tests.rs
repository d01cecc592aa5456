use super::*;

fn claim(holder: &str, token: u64, beat: u64) -> Claim {
    Claim {
        op: "op".into(),
        holder: holder.into(),
        deadline: OffsetDateTime::UNIX_EPOCH,
        token,
        beat,
    }
}

#[tokio::test(start_paused = true)]
async fn a_claim_lapses_only_after_it_looked_the_same_for_a_whole_ttl_by_our_clock() {
    let watch = ClaimWatch::default();
    let id: CredentialId = "svc/x".parse().unwrap();
    let ttl = Duration::from_secs(15);
    // The recorded deadline (1970) means nothing: first sight starts the count.
    assert!(!watch.lapsed(&id, &claim("a", 1, 0), ttl));
    tokio::time::advance(ttl / 2).await;
    // A renewal (a new beat) starts the count again.
    assert!(!watch.lapsed(&id, &claim("a", 1, 1), ttl));
    tokio::time::advance(ttl / 2 + Duration::from_secs(1)).await;
    assert!(
        !watch.lapsed(&id, &claim("a", 1, 1), ttl),
        "renewed less than a TTL ago"
    );
    tokio::time::advance(ttl / 2).await;
    assert!(
        watch.lapsed(&id, &claim("a", 1, 1), ttl),
        "silent for a TTL"
    );
    // Another holder's claim is a new claim.
    assert!(!watch.lapsed(&id, &claim("b", 2, 0), ttl));
}

#[tokio::test(start_paused = true)]
async fn a_holder_stops_acting_before_any_waiter_may_take_its_claim_over() {
    let ttl = Duration::from_secs(15);
    let f = Fence::new(&"svc/x".parse().unwrap(), "op", "me", 3, ttl);
    f.confirmed(Instant::now());
    assert!(f.check_live().is_ok());
    tokio::time::advance(ttl - ttl / 6 - Duration::from_millis(1)).await;
    assert!(f.check_live().is_ok());
    tokio::time::advance(Duration::from_millis(1)).await;
    // A waiter that saw the write no earlier than it was sent still waits another sixth of
    // the TTL: the holder has already stopped.
    assert_eq!(f.check_live().unwrap_err().kind(), ErrorKind::Busy);
    // A renewal that gets through makes it live again.
    f.confirmed(Instant::now());
    assert!(f.check_live().is_ok());
}

#[test]
fn a_record_claimed_by_another_token_stops_the_old_holder_for_good() {
    let f = Fence::new(
        &"svc/x".parse().unwrap(),
        "op",
        "me",
        3,
        Duration::from_secs(15),
    );
    let mut record: Credential = serde_json::from_value(serde_json::json!({
        "id": "svc/x", "store": "local", "target": "none",
        "policy": {"grace_secs": 0}, "versions": [],
        "created_at": "2026-01-01T00:00:00Z"
    }))
    .unwrap();
    record.claim = Some(claim("me", 3, 7));
    assert!(f.check_record(&record).is_ok());
    // The same holder process, but a newer claim (its own operation taken over again).
    record.claim = Some(claim("me", 4, 0));
    assert!(f.check_record(&record).is_err());
    record.claim = Some(claim("me", 3, 8));
    assert!(f.check_record(&record).is_ok(), "the record is fine again");
    assert!(f.check_live().is_err(), "but the fence stays lost");
}

fn record(id: &str) -> Credential {
    serde_json::from_value(serde_json::json!({
        "id": id, "store": "local", "target": "none",
        "policy": {"grace_secs": 0}, "versions": [],
        "created_at": "2026-01-01T00:00:00Z"
    }))
    .unwrap()
}

async fn in_memory_with(id: &str) -> (WorkerContext, CredentialId) {
    let ctx = WorkerContext::in_memory(crate::context::Backends::default());
    ctx.inventory.create(&record(id)).await.unwrap();
    (ctx, id.parse().unwrap())
}

#[tokio::test]
async fn a_claim_taken_at_once_fails_busy_without_waiting_even_for_its_own_operation() {
    let (ctx, id) = in_memory_with("svc/at-once").await;
    let other = ctx.replica();
    let started = std::time::Instant::now();
    with_claim(&ctx, &id, "leak-revoke/x", async {
        let take = Take {
            known: None,
            at_once: true,
        };
        let again = with_claim_from(&other, &id, "leak-revoke/x", take, async { Ok(()) }).await;
        assert_eq!(again.unwrap_err().kind(), ErrorKind::Busy);
        Ok(())
    })
    .await
    .unwrap();
    assert!(
        started.elapsed() < CLAIM_WAIT / 2,
        "it did not wait for the claim"
    );
    // Not at once, the same operation takes its own claim over (a redelivery after a crash),
    // and the first holder is fenced off.
    with_claim(&ctx, &id, "leak-revoke/x", async {
        with_claim(&other, &id, "leak-revoke/x", async { Ok(()) }).await?;
        let late = update_credential(&ctx, &id, |_| Ok(Change::Write(()))).await;
        assert_eq!(late.unwrap_err().kind(), ErrorKind::Busy);
        Ok(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn under_a_claim_reads_are_what_the_last_write_returned() {
    let (ctx, id) = in_memory_with("svc/known").await;
    with_claim(&ctx, &id, "op", async {
        update_credential(&ctx, &id, |c| {
            c.policy.owner = Some("mine".into());
            Ok(Change::Write(()))
        })
        .await?;
        // Another writer (a use, an owner change) moves the record on.
        ctx.inventory
            .update(&id, |c| {
                c.policy.owner = Some("theirs".into());
                Ok(Change::Write(()))
            })
            .await?;
        // The holder's read is its own last write...
        let seen = read_credential(&ctx, &id).await?;
        assert_eq!(seen.policy.owner.as_deref(), Some("mine"));
        // ...and its next write, a compare-and-set on that revision, reads and decides again.
        let decided_on =
            update_credential(&ctx, &id, |c| Ok(Change::Write(c.policy.owner.clone()))).await?;
        assert_eq!(decided_on.as_deref(), Some("theirs"));
        Ok(())
    })
    .await
    .unwrap();
}
