//! Operations: `/metrics`, `/healthz`, `/readyz` scraped from the real binary during
//! a real run; a real Prometheus scraping it with the shipped rules; and the
//! operator commands (`status`, `validate`, `reset-offsets`, `replay-dead-letters`)
//! against real services.

mod support;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rdkafka::Message;
use support::Scenario;
use support::services::PrivatePostgres;

const MALFORMED: usize = 3;

/// Samples of one metric family: labels (as text) -> value.
fn samples(text: &str, name: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, labels) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            Some((labels.to_string(), value.parse::<f64>().ok()?))
        })
        .collect()
}

fn total(text: &str, name: &str) -> f64 {
    samples(text, name).values().sum()
}

async fn get(url: &str) -> Option<(u16, String)> {
    let r = reqwest::get(url).await.ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().await.ok()?))
}

/// Publishes `n` events plus some payloads that are not JSON.
async fn publish_with_malformed(s: &Scenario, n: usize) -> Vec<events::UserEvent> {
    let events: Vec<_> = events::Generator::new(7).take(n).collect();
    s.publish(&events).await;
    let bad: Vec<testkit::Record> = (0..MALFORMED)
        .map(|i| (None, Some(format!("not json {i}").into_bytes())))
        .collect();
    testkit::produce_on(&s.brokers, &s.topic, &bad, None).await;
    events
}

fn kill(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn run_command(s: &Scenario, args: &[&str]) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_consumer"));
    c.args([
        "--brokers",
        &s.brokers,
        "--topic",
        &s.topic,
        "--group",
        &s.group,
        "--database-url",
        &s.db_url,
        "--connect-timeout",
        "5s",
    ])
    .args(args)
    .stdin(Stdio::null());
    support::run_bounded(c, Duration::from_secs(60))
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_match_what_the_run_did() {
    let s = Scenario::new(3).await;
    let events = publish_with_malformed(&s, 1500).await;
    let port = testkit::free_port();
    let addr = format!("127.0.0.1:{port}");
    let consumer = s.spawn(&["--metrics-addr", &addr], "metrics");
    let base = format!("http://{addr}");

    let healthz = testkit::eventually("/healthz answers", Duration::from_secs(30), || async {
        get(&format!("{base}/healthz"))
            .await
            .filter(|(c, _)| *c == 200)
    })
    .await;
    assert_eq!(healthz.1.trim(), "ok");

    let expected_ids: std::collections::HashSet<&str> =
        events.iter().filter_map(|e| e.id.as_deref()).collect();
    let expected_records = (events.len() + MALFORMED) as f64;
    // Caught up: every record counted and every partition's lag back to 0.
    let text = testkit::eventually(
        "metrics show the run caught up",
        Duration::from_secs(60),
        || async {
            let (_, text) = get(&format!("{base}/metrics")).await?;
            let lags = samples(&text, "users_pipeline_partition_lag");
            (total(&text, "users_pipeline_records_consumed_total") == expected_records
                && lags.len() == 3
                && lags.values().all(|v| *v == 0.0))
            .then_some(text)
        },
    )
    .await;
    let rows_in_table = s.count("SELECT count(*) FROM users").await;
    let dead_letters = s.count("SELECT count(*) FROM dead_letters").await;
    let batches = s.count("SELECT count(*) FROM pipeline_batches").await;
    let written: i64 = s
        .count("SELECT coalesce(sum(rows_written), 0)::bigint FROM pipeline_batches")
        .await;
    assert_eq!(rows_in_table as usize, expected_ids.len());
    assert_eq!(
        total(&text, "users_pipeline_rows_written_total"),
        written as f64
    );
    assert_eq!(total(&text, "users_pipeline_batches_total"), batches as f64);
    assert_eq!(dead_letters as usize, MALFORMED);
    let by_reason = samples(&text, "users_pipeline_dead_letters_total");
    assert_eq!(
        by_reason.get("reason=\"malformed\""),
        Some(&(MALFORMED as f64)),
        "{by_reason:?}"
    );
    // Rows without an id and repeated ids are filtered by the transform.
    let filtered = total(&text, "users_pipeline_rows_filtered_total");
    assert_eq!(
        filtered,
        (events.len() as i64 - written) as f64,
        "filtered rows = valid records - rows written"
    );
    let payload_bytes: usize = events
        .iter()
        .map(|e| e.to_json().len() + e.key().map_or(0, <[u8]>::len))
        .sum::<usize>()
        + (0..MALFORMED)
            .map(|i| format!("not json {i}").len())
            .sum::<usize>();
    assert_eq!(
        total(&text, "users_pipeline_bytes_consumed_total"),
        payload_bytes as f64
    );
    let stored: f64 = samples(&text, "users_pipeline_partition_stored_offset")
        .values()
        .sum();
    assert_eq!(
        stored, expected_records,
        "stored offsets add up to every record"
    );
    assert!(text.contains("users_pipeline_batch_duration_seconds_bucket"));
    assert!(text.contains("users_pipeline_commit_duration_seconds_count"));
    assert_eq!(total(&text, "users_pipeline_consumer_build_info"), 1.0);

    let (code, body) = get(&format!("{base}/readyz")).await.expect("readyz");
    assert_eq!((code, body.trim()), (200, "ready"));
    kill(consumer);
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_is_not_ready_while_the_database_is_down() {
    let pg = PrivatePostgres::start();
    let s = Scenario::on(&testkit::brokers(), &pg.url(), 2).await;
    s.publish(&events::Generator::new(3).take(50).collect::<Vec<_>>())
        .await;
    let addr = format!("127.0.0.1:{}", testkit::free_port());
    let consumer = s.spawn(&["--metrics-addr", &addr], "readyz");
    let url = format!("http://{addr}/readyz");
    testkit::eventually(
        "ready with the database up",
        Duration::from_secs(60),
        || async { get(&url).await.filter(|(c, _)| *c == 200) },
    )
    .await;
    pg.down();
    let (_, body) = testkit::eventually(
        "not ready with the database down",
        Duration::from_secs(30),
        || async { get(&url).await.filter(|(c, _)| *c == 503) },
    )
    .await;
    assert!(body.contains("PostgreSQL"), "{body}");
    // The process itself is alive all along.
    let health = get(&url.replace("readyz", "healthz"))
        .await
        .expect("healthz");
    assert_eq!(health.0, 200);
    pg.up();
    testkit::eventually(
        "ready again once the database is back",
        Duration::from_secs(60),
        || async { get(&url).await.filter(|(c, _)| *c == 200) },
    )
    .await;
    kill(consumer);
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_the_consumer_with_the_shipped_rules() {
    let prometheus = which("prometheus").expect(
        "the `prometheus` binary (Debian package prometheus) is needed: scripts/test.sh installs it",
    );
    let s = Scenario::new(2).await;
    let events: Vec<_> = events::Generator::new(11).take(700).collect();
    s.publish(&events).await;
    let metrics_addr = format!("127.0.0.1:{}", testkit::free_port());
    let consumer = s.spawn(&["--metrics-addr", &metrics_addr], "prom");

    let dir = tempfile::tempdir().unwrap();
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../monitoring/rules.yml");
    std::fs::copy(&rules, dir.path().join("rules.yml")).unwrap();
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - rules.yml\n\
             scrape_configs:\n  - job_name: users-pipeline-consumer\n    static_configs:\n      - targets: [\"{metrics_addr}\"]\n"
        ),
    )
    .unwrap();
    let web = format!("127.0.0.1:{}", testkit::free_port());
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let server = Command::new(prometheus)
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start prometheus");

    let query = format!("http://{web}/api/v1/query?query=users_pipeline_records_consumed_total");
    let value = testkit::eventually(
        "Prometheus has scraped the whole run",
        Duration::from_secs(90),
        || async {
            let (_, body) = get(&query).await?;
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            let n: f64 = v["data"]["result"][0]["value"][1].as_str()?.parse().ok()?;
            (n == events.len() as f64).then_some(n)
        },
    )
    .await;
    assert_eq!(value, 700.0);
    // The shipped rules loaded and the recording rule evaluates.
    let (_, rules) = get(&format!("http://{web}/api/v1/rules"))
        .await
        .expect("rules");
    assert!(rules.contains("UsersPipelineLagGrowing"), "{rules}");
    assert!(
        !rules.contains("\"health\":\"err\""),
        "a rule fails to evaluate: {rules}"
    );
    let lag_query = format!("http://{web}/api/v1/query?query=users_pipeline:lag:sum");
    testkit::eventually(
        "the lag recording rule reads 0",
        Duration::from_secs(60),
        || async {
            let (_, body) = get(&lag_query).await?;
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            (v["data"]["result"][0]["value"][1].as_str()? == "0").then_some(())
        },
    )
    .await;
    kill(server);
    kill(consumer);
}

fn which(bin: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join(bin))
        .find(|p| p.is_file())
}

#[tokio::test(flavor = "multi_thread")]
async fn status_and_validate_read_without_changing_anything() {
    let s = Scenario::new(2).await;
    // Before any run: validate plans the whole schema and creates nothing.
    let out = run_command(&s, &["validate"]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(text.contains("CREATE TABLE \"users\""), "{text}");
    assert!(text.contains("valid"), "{text}");
    assert_eq!(
        s.try_count("SELECT count(*) FROM pg_tables WHERE tablename = 'users'")
            .await,
        Some(0),
        "validate created a table"
    );
    // A query naming a missing column fails validation with DataFusion's reason.
    let bad = s.out_dir().join("bad.sql");
    std::fs::write(&bad, "SELECT id, nope FROM events").unwrap();
    let out = run_command(&s, &["--transform-sql", bad.to_str().unwrap(), "validate"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nope"),
        "{out:?}"
    );

    let events: Vec<_> = events::Generator::new(5).take(400).collect();
    s.publish(&events).await;
    let out = s.run_available_now(&[]);
    assert!(out.status.success(), "{out:?}");
    let out = run_command(&s, &["status"]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    let stored = s.stored_offsets().await;
    for (p, o) in &stored {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(&p.to_string()))
            .unwrap_or_else(|| panic!("no line for partition {p}: {text}"));
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols[1], o.to_string(), "{line}");
        assert_eq!(cols[2], o.to_string(), "high watermark = stored: {line}");
        assert_eq!(cols[3], "0", "{line}");
    }
    assert!(text.contains("total lag: 0"), "{text}");

    // More events arrive: status reports them as lag, without consuming them.
    s.publish(&events::Generator::new(6).take(100).collect::<Vec<_>>())
        .await;
    let out = run_command(&s, &["status"]);
    assert!(stdout(&out).contains("total lag: 100"), "{}", stdout(&out));
    assert_eq!(s.stored_offsets().await, stored, "status moved offsets");
    let out = run_command(&s, &["validate"]);
    assert!(
        stdout(&out).contains("nothing to change"),
        "{}",
        stdout(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reset_offsets_rewinds_and_is_refused_while_the_group_runs() {
    let s = Scenario::new(2).await;
    s.publish(&events::Generator::new(8).take(300).collect::<Vec<_>>())
        .await;
    assert!(s.run_available_now(&[]).status.success());
    let batches_before = s.count("SELECT count(*) FROM pipeline_batches").await;

    let out = run_command(&s, &["reset-offsets", "--to", "0=10,1=0", "--dry-run"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        s.stored_offsets().await.values().sum::<i64>(),
        300,
        "dry run wrote"
    );

    let out = run_command(&s, &["reset-offsets", "--to", "earliest"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        s.stored_offsets()
            .await
            .values()
            .copied()
            .collect::<Vec<_>>(),
        vec![0, 0]
    );
    // The next run reads everything again.
    assert!(s.run_available_now(&[]).status.success());
    assert_eq!(s.stored_offsets().await.values().sum::<i64>(), 300);
    let reread: i64 = s
        .count(&format!(
            "SELECT coalesce(sum(records), 0)::bigint FROM pipeline_batches WHERE batch_id NOT IN \
             (SELECT batch_id FROM pipeline_batches ORDER BY committed_at LIMIT {batches_before})"
        ))
        .await;
    assert_eq!(reread, 300);

    let bad = run_command(&s, &["reset-offsets", "--to", "middle"]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--to"),
        "{bad:?}"
    );

    // With a consumer of the group running, the reset is refused.
    let live = s.spawn(&[], "live");
    testkit::eventually(
        "the live consumer joined",
        Duration::from_secs(30),
        || async { s.log("live").contains("Partitions assigned.").then_some(()) },
    )
    .await;
    let refused = run_command(&s, &["reset-offsets", "--to", "latest"]);
    kill(live);
    assert!(!refused.status.success(), "{refused:?}");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("running consumers"), "{err}");
    assert_eq!(s.stored_offsets().await.values().sum::<i64>(), 300);
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_dead_letters_republishes_fixed_payloads_exactly_once() {
    let s = Scenario::new(1).await;
    let good: Vec<_> = events::Generator::new(9).take(20).collect();
    s.publish(&good).await;
    let broken = r#"{"id": "replay-1", "first_name": "Ada" "#; // cut short
    testkit::produce_on(
        &s.brokers,
        &s.topic,
        &[(Some(b"replay-1".to_vec()), Some(broken.as_bytes().to_vec()))],
        None,
    )
    .await;
    assert!(s.run_available_now(&[]).status.success());
    assert_eq!(s.count("SELECT count(*) FROM dead_letters").await, 1);

    // Fix the payload in place, then replay it.
    s.db.execute(
        r#"UPDATE dead_letters SET payload = convert_to('{"id": "replay-1", "first_name": "Ada"}', 'UTF8')"#,
        &[],
    )
    .await
    .unwrap();
    let out = run_command(&s, &["replay-dead-letters", "--reason", "INVALID event"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout(&out).contains("replayed 1 dead letter"),
        "{}",
        stdout(&out)
    );
    assert_eq!(
        s.count("SELECT count(*) FROM dead_letters WHERE replayed_at IS NOT NULL")
            .await,
        1
    );
    // Again: nothing left to replay, nothing published twice.
    let again = run_command(&s, &["replay-dead-letters"]);
    assert!(
        stdout(&again).contains("no dead letters to replay"),
        "{again:?}"
    );

    assert!(s.run_available_now(&[]).status.success());
    let ada: Option<String> =
        s.db.query_one("SELECT first_name FROM users WHERE id = 'replay-1'", &[])
            .await
            .unwrap()
            .get(0);
    assert_eq!(ada.as_deref(), Some("Ada"));
    // The topic holds the replayed message exactly once.
    let all = testkit::consume(&s.topic, 22, Duration::from_secs(20));
    let replayed = all
        .iter()
        .filter(|m| m.key() == Some(b"replay-1".as_slice()))
        .count();
    assert_eq!(replayed, 2, "the broken original and one replay");
}

/// A replay killed after publishing but before marking: the next run finds its
/// messages by header, marks those dead letters, and publishes nothing twice.
#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_replay_is_settled_from_the_topic() {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let s = Scenario::new(1).await;
    let bad: Vec<testkit::Record> = (0..2)
        .map(|i| (None, Some(format!("broken {i}").into_bytes())))
        .collect();
    testkit::produce_on(&s.brokers, &s.topic, &bad, None).await;
    assert!(s.run_available_now(&[]).status.success());
    let ids: Vec<i64> =
        s.db.query("SELECT id FROM dead_letters ORDER BY id", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
    assert_eq!(ids.len(), 2);
    // Fix both, then simulate a run that recorded its replay of both, published only
    // the first, and died.
    s.db.execute(
        r#"UPDATE dead_letters SET payload = convert_to('{"id": "fixed-' || id || '"}', 'UTF8')"#,
        &[],
    )
    .await
    .unwrap();
    let check = run_command(&s, &["replay-dead-letters", "--dry-run"]);
    assert!(
        stdout(&check).contains("2 dead letter(s) would go"),
        "{check:?}"
    );
    let replay = uuid::Uuid::now_v7();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    s.db.execute(
        "INSERT INTO pipeline_replays (replay_id, dead_letter_table, topic, ids, started_ms)
         VALUES ($1, 'dead_letters', $2, $3, $4)",
        &[&replay, &s.topic, &ids, &now_ms],
    )
    .await
    .unwrap();
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &s.brokers)
        .create()
        .unwrap();
    let (replay_text, first) = (replay.to_string(), ids[0].to_string());
    let payload = format!(r#"{{"id": "fixed-{}"}}"#, ids[0]);
    producer
        .send(
            FutureRecord::<(), String>::to(&s.topic)
                .payload(&payload)
                .headers(
                    OwnedHeaders::new()
                        .insert(Header {
                            key: "users-pipeline-replay",
                            value: Some(replay_text.as_bytes()),
                        })
                        .insert(Header {
                            key: "users-pipeline-dead-letter-id",
                            value: Some(first.as_bytes()),
                        }),
                ),
            Duration::from_secs(10),
        )
        .await
        .unwrap();

    // Its heartbeat is fresh: its messages could still be in flight, so no verdict.
    let early = run_command(&s, &["replay-dead-letters"]);
    assert!(!early.status.success(), "{early:?}");
    assert!(
        String::from_utf8_lossy(&early.stderr).contains("may still be in flight"),
        "{early:?}"
    );
    s.db.execute(
        "UPDATE pipeline_replays SET heartbeat_at = clock_timestamp() - interval '1 minute'",
        &[],
    )
    .await
    .unwrap();
    let out = run_command(&s, &["replay-dead-letters"]);
    assert!(out.status.success(), "{out:?}");
    let text = stdout(&out);
    assert!(
        text.contains("1 of its 2 dead letter(s) had been published"),
        "{text}"
    );
    assert!(text.contains("replayed 1 dead letter"), "{text}");
    assert_eq!(
        s.count("SELECT count(*) FROM dead_letters WHERE replayed_at IS NOT NULL")
            .await,
        2
    );
    // The topic: 2 broken originals, then each fixed payload exactly once (the
    // consumer reads to the end: 4 records in all).
    assert!(s.run_available_now(&[]).status.success());
    assert_eq!(s.stored_offsets().await.values().sum::<i64>(), 4);
    let all = testkit::consume(&s.topic, 4, Duration::from_secs(20));
    let mut fixed: Vec<String> = all
        .iter()
        .filter_map(|m| m.payload())
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .filter(|p| p.contains("fixed-"))
        .collect();
    fixed.sort();
    let mut expected: Vec<String> = ids
        .iter()
        .map(|i| format!(r#"{{"id": "fixed-{i}"}}"#))
        .collect();
    expected.sort();
    assert_eq!(fixed, expected);
}
