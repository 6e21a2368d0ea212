//! The fault-injection suite: the guarantee under crashes, outages and group churn.
//! Each scenario prints one summary line (`fault-suite: ...`) with its figures and
//! fails if anything was lost or duplicated.

mod support;

use std::process::Child;
use std::time::{Duration, Instant};

use events::{Generator, UserEvent};
use rand::Rng;
use support::services::{PrivateBroker, PrivatePostgres, producer_bin};
use support::{Figures, Scenario, signal, text};

const FAST_REJOIN: [&str; 4] = [
    "-X",
    "session.timeout.ms=6000",
    "-X",
    "heartbeat.interval.ms=500",
];

/// Measures the outcome, reports the scenario's summary line, then fails on any
/// loss or duplicate (every scenario ends this way).
async fn report_and_check(
    s: &Scenario,
    name: &str,
    events: &[UserEvent],
    bad: usize,
    extra: &str,
    started: Instant,
) {
    let f: Figures = s.measure(events, bad as i64).await;
    support::report(&format!(
        "fault-suite: {name} events={} {extra} seconds={} lost={} duplicated={} dead_letters={}",
        events.len() + bad,
        started.elapsed().as_secs(),
        f.lost,
        f.duplicated,
        f.dead_letters
    ));
    assert_eq!((f.lost, f.duplicated), (0, 0));
    s.assert_exactly_once(events, bad as i64).await;
}

/// Publishes `events` (keyed by id) plus `bad` malformed payloads, in chunks, in the
/// background, so that faults hit a consumer that is busy.
fn publish_in_background(
    s: &Scenario,
    events: Vec<UserEvent>,
    bad: usize,
) -> tokio::task::JoinHandle<()> {
    publish_paced(s, events, bad, Duration::from_millis(150))
}

/// Publishes in chunks of 2,500 (and a share of the bad messages), `pause` apart.
fn publish_paced(
    s: &Scenario,
    events: Vec<UserEvent>,
    bad: usize,
    pause: Duration,
) -> tokio::task::JoinHandle<()> {
    let (brokers, topic) = (s.brokers.clone(), s.topic.clone());
    tokio::spawn(async move {
        let records: Vec<testkit::Record> = events
            .iter()
            .map(|e| (e.key().map(<[u8]>::to_vec), Some(e.to_json())))
            .collect();
        let chunks = records.chunks(2_500).count().max(1);
        for (i, chunk) in records.chunks(2_500).enumerate() {
            testkit::produce_on(&brokers, &topic, chunk, None).await;
            let from = i * bad / chunks;
            let to = (i + 1) * bad / chunks;
            let junk: Vec<testkit::Record> = (from..to)
                .map(|j| {
                    (
                        Some(format!("bad{j}").into_bytes()),
                        Some(format!("{{bad json {j}").into_bytes()),
                    )
                })
                .collect();
            testkit::produce_on(&brokers, &topic, &junk, None).await;
            tokio::time::sleep(pause).await;
        }
    })
}

async fn wait_for_log(s: &Scenario, log: &str, what: &str) {
    testkit::eventually(
        &format!("{what:?} in log {log}"),
        Duration::from_secs(60),
        || async { s.log(log).contains(what).then_some(()) },
    )
    .await;
}

async fn batches(s: &Scenario) -> i64 {
    s.try_count("SELECT count(*) FROM pipeline_batches")
        .await
        .unwrap_or(0)
}

async fn wait_for_progress(s: &Scenario, beyond: i64) -> i64 {
    testkit::eventually("a committed batch", Duration::from_secs(90), || async {
        let n = batches(s).await;
        (n > beyond).then_some(n)
    })
    .await
}

/// Like `wait_for_progress`, but `None` once every record is committed (a consumer
/// that has caught up commits nothing new).
async fn wait_for_progress_or_done(s: &Scenario, beyond: i64, total: i64) -> Option<i64> {
    testkit::eventually("a committed batch", Duration::from_secs(90), || async {
        let n = batches(s).await;
        if n > beyond {
            return Some(Some(n));
        }
        let stored: i64 = s.stored_offsets().await.values().sum();
        (stored == total).then_some(None)
    })
    .await
}

async fn wait_until_all_committed(s: &Scenario, total: i64, logs: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let stored = s.stored_offsets().await;
        if stored.values().sum::<i64>() == total {
            return;
        }
        if Instant::now() > deadline {
            for l in logs {
                eprintln!("---- log {l}:\n{}", s.log(l));
            }
            panic!("not every offset committed within 180 s: {stored:?}, want {total} in all");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn stop(mut child: Child, s: &Scenario, log: &str) {
    // A signal before the handler is installed would kill it the default way.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !s.log(log).contains("Consumer started.") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(&child, "TERM");
    let status = child.wait().unwrap();
    assert!(status.success(), "SIGTERM exits 0; log:\n{}", s.log(log));
}

#[tokio::test(flavor = "multi_thread")]
async fn crash_loop_with_sigkill_and_sigterm() {
    let started = Instant::now();
    let s = Scenario::new(3).await;
    let events: Vec<_> = Generator::new(61).take(50_000).collect();
    let bad = 50;
    // Paced so that the stream outlasts the kill rounds: the consumer drains a
    // backlog in a second or two, and a round needs fresh records to commit.
    let publisher = publish_paced(&s, events.clone(), bad, Duration::from_millis(2_500));
    let total = (events.len() + bad) as i64;
    // Three outputs in one transaction per batch: users (upsert), the shipped
    // sign-ups aggregate (merge) and a log of every record (append), so that a kill
    // that double-counted or lost a batch anywhere shows in the aggregate check.
    let pipeline = support::outputs::example_with_log(s.out_dir());
    let args = [
        &["--max-batch-records", "1000", "--trigger-interval", "50ms"][..],
        &["--pipeline", pipeline.to_str().unwrap()],
        &FAST_REJOIN,
    ]
    .concat();
    let (mut kills, mut restarts, mut seen) = (0, 0, 0);
    for round in 0..10 {
        let child = s.spawn(&args, &format!("crash{round}"));
        restarts += 1;
        if wait_for_progress_or_done(&s, seen, total).await.is_none() {
            // Everything is committed already: nothing left to interrupt.
            signal(&child, "KILL");
            let mut child = child;
            let _ = child.wait();
            break;
        }
        let pause = rand::rng().random_range(0..400);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        signal(&child, "KILL");
        let mut child = child;
        let _ = child.wait();
        kills += 1;
        seen = batches(&s).await;
    }
    let child = s.spawn(&args, "term");
    restarts += 1;
    seen = wait_for_progress_or_done(&s, seen, total)
        .await
        .unwrap_or(seen);
    stop(child, &s, "term");
    publisher.await.unwrap();
    let out = s.run_available_now(&args);
    restarts += 1;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let logged = s.count("SELECT count(*) FROM signups_log").await;
    let mismatches = s.count(support::outputs::AGGREGATE_VS_LOG).await;
    report_and_check(
        &s,
        "crash-loop",
        &events,
        bad,
        &format!(
            "kills={kills} sigterms=1 restarts={restarts} batches={seen}+ outputs=3 \
             logged={logged} aggregate_mismatches={mismatches}"
        ),
        started,
    )
    .await;
    s.assert_outputs_exactly_once(events.len() as i64).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_outage_mid_run() {
    let started = Instant::now();
    let pg = PrivatePostgres::start();
    let s = Scenario::on(&testkit::brokers(), &pg.url(), 3).await;
    let events: Vec<_> = Generator::new(71).take(20_000).collect();
    let publisher = publish_in_background(&s, events.clone(), 20);
    let child = s.spawn(
        &["--max-batch-records", "1000", "--max-retry-backoff", "1s"],
        "pg",
    );
    wait_for_progress(&s, 0).await;
    pg.down();
    tokio::time::sleep(Duration::from_secs(5)).await;
    pg.up();
    publisher.await.unwrap();
    // The test's own connection was cut with the server: reconnect.
    let s = Scenario {
        db: testkit::connect(&s.db_url).await,
        ..s
    };
    wait_until_all_committed(&s, events.len() as i64 + 20, &["pg"]).await;
    stop(child, &s, "pg");
    let log = s.log("pg");
    let retries = log.matches("retrying").count();
    assert!(
        retries > 0,
        "the consumer retried while PostgreSQL was down:\n{log}"
    );
    report_and_check(
        &s,
        "postgres-outage",
        &events,
        20,
        &format!("outage_s=5 retry_lines={retries}"),
        started,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_restart_mid_run() {
    let started = Instant::now();
    let mut broker = PrivateBroker::start();
    let s = Scenario::on(&broker.brokers(), &testkit::database_url(), 3).await;
    // The real producer publishes through the restart.
    let mut producer = std::process::Command::new(producer_bin())
        .args([
            "--brokers",
            &broker.brokers(),
            "--topic",
            &s.topic,
            "--count",
            "20000",
        ])
        .args([
            "--rate",
            "4000",
            "--seed",
            "81",
            "--delivery-timeout",
            "120s",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let child = s.spawn(&["--max-batch-records", "1000"], "broker");
    wait_for_progress(&s, 0).await;
    broker.restart(Duration::from_secs(2));
    let out = producer.wait().unwrap();
    assert!(
        out.success(),
        "the producer recovered and delivered everything"
    );
    let events: Vec<_> = Generator::new(81).take(20_000).collect();
    wait_until_all_committed(&s, events.len() as i64, &["broker"]).await;
    stop(child, &s, "broker");
    report_and_check(&s, "broker-restart", &events, 0, "restarts=1", started).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn group_churn_join_leave_and_kill() {
    let started = Instant::now();
    let s = Scenario::new(6).await;
    let events: Vec<_> = Generator::new(91).take(30_000).collect();
    let publisher = publish_in_background(&s, events.clone(), 30);
    let args = [
        &["--max-batch-records", "800", "--trigger-interval", "100ms"][..],
        &FAST_REJOIN,
    ]
    .concat();
    // Members join one after another (tansu's coordinator mishandles several
    // members joining at the same instant).
    let a = s.spawn(&args, "a");
    wait_for_log(&s, "a", "Partitions assigned").await;
    let b = s.spawn(&args, "b");
    wait_for_log(&s, "b", "Partitions assigned").await;
    // c is a static member (KIP-345): killed with -9 and restarted under the same
    // group.instance.id, it takes its own place back at once.
    let static_args = [&args[..], &["-X", "group.instance.id=churn-c"]].concat();
    let mut c = s.spawn(&static_args, "c");
    wait_for_log(&s, "c", "Batch committed").await;
    stop(b, &s, "b"); // leaves
    wait_for_log(&s, "a", "Partitions revoked").await;
    let seen = batches(&s).await;
    wait_for_progress(&s, seen).await;
    signal(&c, "KILL"); // dies
    let _ = c.wait();
    let c2 = s.spawn(&static_args, "c2"); // restarted, as a supervisor would
    publisher.await.unwrap();
    wait_until_all_committed(&s, events.len() as i64 + 30, &["a", "b", "c", "c2"]).await;
    stop(a, &s, "a");
    stop(c2, &s, "c2");
    report_and_check(
        &s,
        "group-churn",
        &events,
        30,
        "consumers=3 joined=1 left=1 killed=1 restarted=1",
        started,
    )
    .await;
}
