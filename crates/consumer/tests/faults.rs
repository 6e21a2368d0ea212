//! Crashes, signals and several consumers: the guarantee still holds.

mod support;

use std::time::Duration;

use events::Generator;
use support::{Scenario, signal, text};

#[tokio::test(flavor = "multi_thread")]
async fn killed_with_sigkill_mid_stream_is_still_exactly_once() {
    let s = Scenario::new(3).await;
    let events: Vec<_> = Generator::new(31).take(20_000).collect();
    let mut bad: Vec<testkit::Record> = Vec::new();
    for i in 0..20 {
        bad.push((
            Some(format!("bad{i}").into_bytes()),
            Some(format!("{{broken {i}").into_bytes()),
        ));
    }
    // Publish in the background while the consumer is killed and restarted.
    let publisher = {
        let topic = s.topic.clone();
        let events = events.clone();
        let bad = bad.clone();
        tokio::spawn(async move {
            let records: Vec<testkit::Record> = events
                .iter()
                .map(|e| (e.key().map(<[u8]>::to_vec), Some(e.to_json())))
                .collect();
            for (i, chunk) in records.chunks(2_000).enumerate() {
                testkit::produce(&topic, chunk, None).await;
                testkit::produce(&topic, &bad[i * 2..i * 2 + 2], None).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    // A member killed with -9 stays in the group until its session times out; keep
    // that short so restarts rejoin quickly.
    let args = [
        "--max-batch-records",
        "700",
        "--trigger-interval",
        "50ms",
        "-X",
        "session.timeout.ms=6000",
        "-X",
        "heartbeat.interval.ms=500",
    ];
    let mut kills = 0;
    let mut last_batches = 0;
    for round in 0..4 {
        let mut child = s.spawn(&args, &format!("run{round}"));
        // Wait for progress since the last kill, then kill at a moment in the stream.
        let target = last_batches + 2;
        let reached = testkit::eventually("batches to commit", Duration::from_secs(60), || async {
            let n = s.try_count("SELECT count(*) FROM pipeline_batches").await?;
            (n >= target).then_some(n)
        })
        .await;
        tokio::time::sleep(Duration::from_millis(37 * (round + 1))).await;
        signal(&child, "KILL");
        let _ = child.wait();
        kills += 1;
        last_batches = reached;
    }
    publisher.await.unwrap();
    let out = s.run_available_now(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(kills, 4);
    s.assert_exactly_once(&events, bad.len() as i64).await;
    let records = s
        .count("SELECT sum(records)::bigint FROM pipeline_batches")
        .await;
    assert_eq!(
        records as usize,
        events.len() + bad.len(),
        "every message in exactly one committed batch"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_cleanly_and_a_restart_goes_on() {
    let s = Scenario::new(2).await;
    let events: Vec<_> = Generator::new(41).take(3_000).collect();
    s.publish(&events[..1_500]).await;
    let mut child = s.spawn(&["--max-batch-records", "300"], "term");
    testkit::eventually("first batches", Duration::from_secs(60), || async {
        let n = s.try_count("SELECT count(*) FROM pipeline_batches").await?;
        (n >= 1).then_some(())
    })
    .await;
    signal(&child, "TERM");
    let started = std::time::Instant::now();
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "exit 0 on SIGTERM; log:\n{}",
        s.log("term")
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    assert!(s.log("term").contains("Consumer stopped."));

    s.publish(&events[1_500..]).await;
    let out = s.run_available_now(&[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    s.assert_exactly_once(&events, 0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_consumers_in_one_group_split_the_partitions_exactly_once() {
    let s = Scenario::new(4).await;
    let events: Vec<_> = Generator::new(51).take(8_000).collect();
    s.publish(&events[..2_000]).await;
    let args = ["--max-batch-records", "400", "--trigger-interval", "100ms"];
    let a = s.spawn(&args, "a");
    let b = s.spawn(&args, "b");
    // Once both have been assigned partitions, the group's current generation holds
    // both: what is published from now on is split between them.
    testkit::eventually("both consumers joined", Duration::from_secs(60), || async {
        (s.log("a").contains("Partitions assigned.") && s.log("b").contains("Partitions assigned."))
            .then_some(())
    })
    .await;
    s.publish(&events[2_000..]).await;
    let expected_ids = support::latest_by_id(&events).len() as i64;
    let total = events.len() as i64;
    testkit::eventually("all offsets committed", Duration::from_secs(90), || async {
        let stored: i64 = s.stored_offsets().await.values().sum();
        (stored == total && s.count("SELECT count(*) FROM users").await == expected_ids)
            .then_some(())
    })
    .await;
    stop_both(&s, a, b);
    let (log_a, log_b) = (s.log("a"), s.log("b"));
    assert!(
        log_a.contains("Batch committed.") && log_b.contains("Batch committed."),
        "both worked:\nA:\n{log_a}\nB:\n{log_b}"
    );
    assert_every_record_once(&s, &events).await;
}

/// A rebalance while a batch's transaction is blocked: the consumer that keeps a
/// partition has already fetched past the batch (into the next one, which it must
/// drop), so after the commit it must read from the stored offset again, or the
/// records between the batch's end and its fetch position would be lost.
#[tokio::test(flavor = "multi_thread")]
async fn a_rebalance_during_a_blocked_write_loses_nothing() {
    let s = Scenario::new(2).await;
    let events: Vec<_> = Generator::new(61).take(3_000).collect();
    let args = ["--max-batch-records", "300", "--trigger-interval", "200ms"];
    let a = s.spawn(&args, "a");
    testkit::eventually(
        "A joined and made its tables",
        Duration::from_secs(30),
        || async {
            (s.log("a").contains("Partitions assigned.")
                && s.try_count("SELECT count(*) FROM pipeline_offsets")
                    .await
                    .is_some())
            .then_some(())
        },
    )
    .await;
    // Writes to the offset store wait behind this lock; reads (the assignment's
    // offset lookup) do not.
    let mut blocker = testkit::connect(&s.db_url).await;
    let tx = blocker.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE pipeline_offsets IN EXCLUSIVE MODE")
        .await
        .unwrap();
    // A small first batch (closed by the trigger interval) blocks; then plenty more,
    // so that what A reads again after the rebalance reaches past that batch's end.
    s.publish(&events[..100]).await;
    testkit::eventually("A's first batch is blocked", Duration::from_secs(30), || async {
        s.count(
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'pipeline_offsets'::regclass",
        )
        .await
        .gt(&0)
        .then_some(())
    })
    .await;
    // The rebalance comes while A polls for its next batch (not yet full, so not
    // paused): A's re-assigned partition is read again from the stored offset...
    let b = s.spawn(&args, "b");
    testkit::eventually("both rebalanced", Duration::from_secs(60), || async {
        (s.log("a").matches("Partitions assigned.").count() >= 2
            && s.log("b").contains("Partitions assigned."))
        .then_some(())
    })
    .await;
    // ...and past the blocked batch's end: A's next batch fills up (then holds, then
    // pauses) while the first is still blocked.
    s.publish(&events[100..]).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    tx.commit().await.unwrap();

    let total = events.len() as i64;
    let expected_ids = support::latest_by_id(&events).len() as i64;
    testkit::eventually(
        "every record committed",
        Duration::from_secs(90),
        || async {
            let records = s
                .try_count("SELECT coalesce(sum(records), 0)::bigint FROM pipeline_batches")
                .await?;
            let stored: i64 = s.stored_offsets().await.values().sum();
            (records >= total
                && stored == total
                && s.count("SELECT count(*) FROM users").await == expected_ids)
                .then_some(())
        },
    )
    .await;
    stop_both(&s, a, b);
    assert_every_record_once(&s, &events).await;
}

/// A member leaves while the other's partitions are paused (a write held longer
/// than the hold before pausing): librdkafka keeps the application's pause flag on a
/// partition assigned again, so without an explicit resume after the rebalance the
/// remaining consumer would never read its old partition again.
#[tokio::test(flavor = "multi_thread")]
async fn a_member_leaving_while_partitions_are_paused_leaves_none_paused() {
    let s = Scenario::new(2).await;
    let events: Vec<_> = Generator::new(62).take(4_000).collect();
    let args = ["--max-batch-records", "300", "--trigger-interval", "200ms"];
    let a = s.spawn(&args, "a");
    let mut b = s.spawn(&args, "b");
    testkit::eventually("both joined", Duration::from_secs(60), || async {
        (s.log("a").contains("Partitions assigned.")
            && s.log("b").contains("Partitions assigned.")
            && s.try_count("SELECT count(*) FROM pipeline_offsets")
                .await
                .is_some())
        .then_some(())
    })
    .await;
    let mut blocker = testkit::connect(&s.db_url).await;
    let tx = blocker.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE pipeline_offsets IN EXCLUSIVE MODE")
        .await
        .unwrap();
    s.publish(&events).await;
    testkit::eventually("both writes blocked", Duration::from_secs(30), || async {
        s.count(
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'pipeline_offsets'::regclass",
        )
        .await
        .ge(&2)
        .then_some(())
    })
    .await;
    // Past the hold: the next batches are full and both consumers have paused.
    tokio::time::sleep(Duration::from_secs(5)).await;
    signal(&b, "TERM");
    assert!(b.wait().unwrap().success(), "{}", s.log("b"));
    testkit::eventually(
        "A took both partitions",
        Duration::from_secs(60),
        || async { (s.log("a").matches("Partitions assigned.").count() >= 2).then_some(()) },
    )
    .await;
    tx.commit().await.unwrap();
    let total = events.len() as i64;
    testkit::eventually(
        "every record committed by A",
        Duration::from_secs(90),
        || async {
            let stored: i64 = s.stored_offsets().await.values().sum();
            (stored == total).then_some(())
        },
    )
    .await;
    let mut a = a;
    signal(&a, "TERM");
    assert!(a.wait().unwrap().success(), "{}", s.log("a"));
    // B left its blocked batch's file staged; the next start settles it.
    let out = s.run_available_now(&[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_every_record_once(&s, &events).await;
}

/// SIGTERM to both consumers; each must exit 0.
fn stop_both(s: &Scenario, mut a: std::process::Child, mut b: std::process::Child) {
    signal(&a, "TERM");
    signal(&b, "TERM");
    assert!(a.wait().unwrap().success(), "{}", s.log("a"));
    assert!(b.wait().unwrap().success(), "{}", s.log("b"));
}

/// Every id with its latest value, and every record in exactly one committed batch.
async fn assert_every_record_once(s: &Scenario, events: &[events::UserEvent]) {
    s.assert_exactly_once(events, 0).await;
    let records = s
        .count("SELECT sum(records)::bigint FROM pipeline_batches")
        .await;
    assert_eq!(
        records,
        events.len() as i64,
        "every record in exactly one committed batch"
    );
}
