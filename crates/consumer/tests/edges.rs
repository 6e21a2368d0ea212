//! The edges of the exactly-once promise: records PostgreSQL refuses for reasons of
//! every kind, and stored offsets that no longer match the log.

mod support;

use std::time::Duration;

use events::{Generator, UserEvent};
use rand::Rng;
use rand::distr::Alphanumeric;
use support::{Scenario, latest_by_id, report, text};

/// A value no btree index row can hold (PostgreSQL's limit is about 2.7 kB after
/// compression; random text barely compresses).
fn huge_text() -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(20_000)
        .map(char::from)
        .collect()
}

/// A first run that creates the table, then a CHECK the user adds: emails without
/// an @ are refused from now on.
async fn warm_up_with_email_check(s: &Scenario, seed: u64, events: usize) {
    let warm: Vec<UserEvent> = Generator::new(seed).take(events).collect();
    s.publish(&warm).await;
    let out = s.run_available_now(&[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    s.db.batch_execute("ALTER TABLE users ADD CONSTRAINT email_has_at CHECK (email LIKE '%@%')")
        .await
        .unwrap();
}

/// Refused rows keep their record's coordinates, so they can be replayed and are
/// stored once.
async fn assert_every_dead_letter_has_coordinates(s: &Scenario) {
    let missing = s
        .count(r#"SELECT count(*) FROM dead_letters WHERE "offset" IS NULL"#)
        .await;
    assert_eq!(missing, 0, "dead letters without coordinates");
}

#[tokio::test(flavor = "multi_thread")]
async fn poison_rows_of_several_kinds_become_dead_letters_and_the_stream_goes_on() {
    let s = Scenario::new(2).await;
    // A first run creates the table; then the user adds a trigger, an index and a
    // CHECK, as users do.
    let warm: Vec<UserEvent> = Generator::new(81).take(10).collect();
    s.publish(&warm).await;
    let out = s.run_available_now(&[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    s.db.batch_execute(
        r#"CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
             IF NEW.first_name = 'POISON' THEN RAISE EXCEPTION 'poison user %', NEW.id; END IF;
             RETURN NEW;
           END $$;
           CREATE TRIGGER refuse_poison BEFORE INSERT OR UPDATE ON users
             FOR EACH ROW EXECUTE FUNCTION refuse_poison();
           CREATE INDEX users_address ON users (address);
           ALTER TABLE users ADD CONSTRAINT email_has_at CHECK (email LIKE '%@%');"#,
    )
    .await
    .unwrap();

    let mut events: Vec<UserEvent> = Generator::new(82).take(3_000).collect();
    let (mut raised, mut too_large, mut unchecked) = (Vec::new(), Vec::new(), Vec::new());
    for (i, e) in events.iter_mut().enumerate() {
        e.id = Some(format!("edge-{i}")); // distinct ids: each poison row is its own
        match i % 100 {
            7 => {
                e.first_name = "POISON".into();
                raised.push(i);
            }
            31 => {
                e.address = huge_text();
                too_large.push(i);
            }
            77 => {
                e.email = "no-at-sign".into();
                unchecked.push(i);
            }
            _ => {}
        }
    }
    s.publish(&events).await;
    let started = std::time::Instant::now();
    let out = s.run_available_now(&["--max-batch-records", "500"]);
    assert!(
        out.status.success(),
        "a poison record must not stop the pipeline: {}",
        text(&out.stderr)
    );
    let poison = raised.len() + too_large.len() + unchecked.len();
    let by_code = |code: &'static str| {
        let s = &s;
        async move {
            s.count(&format!(
                "SELECT count(*) FROM dead_letters WHERE stage = 'sink' AND reason LIKE '%({code})'"
            ))
            .await as usize
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    let (p0001, c54000, c23514) = (
        by_code("P0001").await,
        by_code("54000").await,
        by_code("23514").await,
    );
    let written = s
        .count("SELECT count(*) FROM users WHERE id LIKE 'edge-%'")
        .await as usize;
    let in_files: Vec<String> = s
        .part_files()
        .into_iter()
        .flat_map(|(_, _, rows)| rows.into_iter().map(|r| r[0].clone()))
        .filter(|id| id.starts_with("edge-"))
        .collect();
    let distinct: std::collections::HashSet<&String> = in_files.iter().collect();
    let lost = (events.len() - poison).saturating_sub(written);
    let duplicated = in_files.len() - distinct.len();
    report(&format!(
        "fault-suite: poison-records records={} dead_letters=P0001:{p0001},54000:{c54000},23514:{c23514} \
         seconds={seconds:.1} lost={lost} duplicated={duplicated}",
        events.len()
    ));
    assert_eq!(p0001, raised.len(), "trigger RAISE");
    assert_eq!(c54000, too_large.len(), "index row too large");
    assert_eq!(c23514, unchecked.len(), "CHECK violation");
    assert_eq!((lost, duplicated), (0, 0));
    assert_eq!(written, events.len() - poison, "every other row written");
    assert_eq!(
        in_files.len(),
        written,
        "the files hold exactly the rows written"
    );
    let stored: i64 = s.stored_offsets().await.values().sum();
    assert_eq!(
        stored as usize,
        warm.len() + events.len(),
        "offsets cover every record"
    );
    assert_every_dead_letter_has_coordinates(&s).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_statement_no_row_can_pass_stops_the_consumer_and_a_fix_resumes_it() {
    let s = Scenario::new(1).await;
    let events: Vec<UserEvent> = Generator::new(83).take(20).collect();
    s.publish(&events[..10]).await;
    let out = s.run_available_now(&[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // An audit trigger whose table is missing fails every row the same way: about
    // the schema, not the rows, so isolating rows would make every record a dead
    // letter. The consumer stops instead, and resumes once the schema is fixed.
    s.db.batch_execute(
        r#"CREATE FUNCTION audit_user() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN INSERT INTO users_audit (id) VALUES (NEW.id); RETURN NEW; END $$;
           CREATE TRIGGER audit_user AFTER INSERT OR UPDATE ON users
             FOR EACH ROW EXECUTE FUNCTION audit_user();"#,
    )
    .await
    .unwrap();
    s.publish(&events[10..]).await;
    let started = std::time::Instant::now();
    let out = s.run_available_now(&[]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "must not pretend success: {stderr}");
    assert!(started.elapsed() < Duration::from_secs(60), "bounded");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("consumer: error:")
            && last.contains("users_audit")
            && last.contains("42P01"),
        "one line naming the cause: {stderr}"
    );
    assert_eq!(
        s.stored_offsets().await.values().sum::<i64>(),
        10,
        "nothing of the refused batch committed"
    );
    assert_eq!(s.count("SELECT count(*) FROM dead_letters").await, 0);
    s.db.batch_execute("CREATE TABLE users_audit (id text)")
        .await
        .unwrap();
    let out = s.run_available_now(&[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let all = latest_by_id(&events).len() as i64;
    assert_eq!(s.count("SELECT count(*) FROM users").await, all);
    assert!(s.count("SELECT count(*) FROM users_audit").await > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stored_offset_past_the_log_end_stops_with_the_repair_then_a_policy_resumes() {
    let s = Scenario::new(1).await;
    let events: Vec<UserEvent> = Generator::new(84).take(30).collect();
    s.publish(&events[..10]).await;
    let out = s.run_available_now(&[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The offsets of the topic's previous life, as after `docker compose down` with
    // PostgreSQL's volume kept, or offsets restored from a backup.
    s.db.execute("UPDATE pipeline_offsets SET next_offset = 606", &[])
        .await
        .unwrap();
    s.publish(&events[10..]).await;
    let out = s.run_available_now(&[]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "never a silent exit 0: {stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    for needle in [
        "partition 0",
        "606",
        "end 30",
        "reset-offsets",
        "--offsets-past-end",
    ] {
        assert!(last.contains(needle), "{needle:?} in {last}");
    }
    let first = latest_by_id(&events[..10]).len() as i64;
    assert_eq!(s.count("SELECT count(*) FROM users").await, first);

    let status = s.command(&["status"]).output().unwrap();
    assert!(!status.status.success(), "status reports the fault");
    assert!(
        text(&status.stdout).contains("PAST END +576"),
        "{}",
        text(&status.stdout)
    );

    let out = s.run_available_now(&["--offsets-past-end", "earliest"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let all = latest_by_id(&events).len() as i64;
    assert_eq!(s.count("SELECT count(*) FROM users").await, all);
    let gap = s
        .db
        .query_one(
            r#"SELECT kind, "partition", position, log_start, log_end, resumed_at FROM pipeline_gaps"#,
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            gap.get::<_, String>(0),
            gap.get::<_, i32>(1),
            gap.get::<_, i64>(2),
            gap.get::<_, i64>(3),
            gap.get::<_, i64>(4),
            gap.get::<_, i64>(5)
        ),
        ("past_log_end".to_string(), 0, 606, 0, 30, 0)
    );
    assert_eq!(s.stored_offsets().await.get(&0), Some(&30));
    report(&format!(
        "fault-suite: offsets-past-end stored=606 log_end=30 without_policy=refused \
         policy=earliest rows={all} gap_rows=1 lost=0 duplicated=0"
    ));
}

/// The event with every text field reduced to ASCII.
fn ascii(mut e: UserEvent) -> UserEvent {
    for f in [
        &mut e.first_name,
        &mut e.last_name,
        &mut e.gender,
        &mut e.address,
        &mut e.post_code,
        &mut e.email,
        &mut e.username,
        &mut e.phone,
        &mut e.picture,
    ] {
        f.retain(|c| c.is_ascii());
    }
    e
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_copy_refuses_are_dead_letters_with_their_record_and_stay_out_of_the_files() {
    let s = Scenario::new(1).await;
    // A database whose encoding cannot hold every name, as legacy databases are.
    let name = testkit::unique("latin");
    s.db.batch_execute(&format!(
        "CREATE DATABASE {name} ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
    ))
    .await
    .unwrap();
    let url = testkit::with_database(&s.db_url, &name);
    let mut events: Vec<UserEvent> = Generator::new(85).take(200).map(ascii).collect();
    let mut poisoned = Vec::new();
    for (i, e) in events.iter_mut().enumerate() {
        e.id = Some(format!("enc-{i}"));
        if i % 50 == 7 {
            e.first_name = "李雷".into();
            poisoned.push(format!("enc-{i}"));
        }
    }
    s.publish(&events).await;
    let out = s.run_available_now(&["--database-url", &url]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let db = testkit::connect(&url).await;
    let rows = db
        .query(
            r#"SELECT payload, reason, "partition", "offset", stage
               FROM dead_letters ORDER BY "offset""#,
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), poisoned.len());
    for (row, id) in rows.iter().zip(&poisoned) {
        let (payload, reason): (Vec<u8>, String) = (row.get(0), row.get(1));
        let payload = String::from_utf8(payload).unwrap();
        assert!(reason.ends_with("(22P05)"), "{reason}");
        assert_eq!(row.get::<_, String>(4), "sink");
        assert_eq!(row.get::<_, Option<i32>>(2), Some(0), "coordinates kept");
        let offset: Option<i64> = row.get(3);
        assert_eq!(offset, id.strip_prefix("enc-").and_then(|n| n.parse().ok()));
        // The record's event, as the decoder read it: replayable to its partition.
        assert!(payload.contains(&format!("\"id\":\"{id}\"")), "{payload}");
        assert!(payload.contains("李雷"), "{payload}");
    }
    let written: i64 = db
        .query_one("SELECT count(*) FROM users", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(written as usize, events.len() - poisoned.len());
    let file_ids: Vec<String> = s
        .part_files()
        .into_iter()
        .flat_map(|(_, _, rows)| rows.into_iter().map(|r| r[0].clone()))
        .collect();
    assert_eq!(
        file_ids.len() as i64,
        written,
        "files hold exactly the rows written"
    );
    assert!(poisoned.iter().all(|p| !file_ids.contains(p)));
}

#[tokio::test(flavor = "multi_thread")]
async fn reading_the_topic_again_stores_each_dead_letter_once() {
    let s = Scenario::new(2).await;
    warm_up_with_email_check(&s, 86, 5).await;
    let mut events: Vec<UserEvent> = Generator::new(87).take(300).collect();
    for (i, e) in events.iter_mut().enumerate() {
        e.id = Some(format!("again-{i}"));
        if i % 60 == 3 {
            e.email = "refused".into();
        }
    }
    s.publish(&events).await;
    let malformed: Vec<testkit::Record> = (0..4)
        .map(|i| (None, Some(format!("{{not json {i}").into_bytes())))
        .collect();
    testkit::produce_on(&s.brokers, &s.topic, &malformed, None).await;
    let out = s.run_available_now(&[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let first = s.count("SELECT count(*) FROM dead_letters").await;
    assert_eq!(first, 5 + 4, "5 refused rows, 4 malformed payloads");

    let reset = s
        .command(&["reset-offsets", "--to", "earliest"])
        .output()
        .unwrap();
    assert!(reset.status.success(), "{}", text(&reset.stderr));
    let out = s.run_available_now(&[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        s.count("SELECT count(*) FROM dead_letters").await,
        first,
        "the same records refused again are not stored twice"
    );
    assert_every_dead_letter_has_coordinates(&s).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_older_record_never_overwrites_a_newer_one_even_replayed_or_reread() {
    let s = Scenario::new(1).await;
    warm_up_with_email_check(&s, 88, 3).await;
    let mut old = Generator::new(89).next().unwrap();
    old.id = Some("guard-1".into());
    old.first_name = "Old".into();
    old.email = "refused-without-at".into();
    let mut new = old.clone();
    new.first_name = "New".into();
    new.email = "new@example.com".into();
    // The old version is refused (a dead letter), the new one written after it.
    s.publish(std::slice::from_ref(&old)).await;
    s.publish(std::slice::from_ref(&new)).await;
    let out = s.run_available_now(&["--max-batch-records", "1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let first_name = async || -> String {
        s.db.query_one("SELECT first_name FROM users WHERE id = 'guard-1'", &[])
            .await
            .unwrap()
            .get(0)
    };
    assert_eq!(first_name().await, "New");

    // The operator fixes the constraint and replays the dead letter: the old event
    // comes back with its original position and must not win over the new one.
    s.db.batch_execute("ALTER TABLE users DROP CONSTRAINT email_has_at")
        .await
        .unwrap();
    let replay = s.command(&["replay-dead-letters"]).output().unwrap();
    assert!(replay.status.success(), "{}", text(&replay.stderr));
    let out = s.run_available_now(&[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        first_name().await,
        "New",
        "a replayed old event keeps its rank"
    );

    // Reading everything again from the start changes nothing either.
    let reset = s
        .command(&["reset-offsets", "--to", "earliest"])
        .output()
        .unwrap();
    assert!(reset.status.success(), "{}", text(&reset.stderr));
    let out = s.run_available_now(&["--max-batch-records", "1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(first_name().await, "New");
    let rank: (Option<i32>, Option<i64>) = {
        let r =
            s.db.query_one(
                "SELECT _kafka_partition, _kafka_offset FROM users WHERE id = 'guard-1'",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(
        rank,
        (Some(0), Some(4)),
        "the new record's position is stored"
    );
    // The part files hold the rows written: the old event never, though it was read
    // three times (refused, replayed, re-read).
    let names: Vec<String> = s
        .part_files()
        .into_iter()
        .flat_map(|(_, _, rows)| rows)
        .filter(|row| row[0] == "guard-1")
        .map(|row| row[1].clone())
        .collect();
    assert!(
        !names.is_empty() && names.iter().all(|n| n == "New"),
        "{names:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn order_by_keeps_the_row_with_the_highest_value_across_partitions() {
    let s = Scenario::new(2).await;
    let mut newer = Generator::new(90).next().unwrap();
    newer.id = Some("ordered-1".into());
    newer.registered_date = "2021-06-01T00:00:00.000Z".into();
    newer.first_name = "Newer".into();
    let mut older = newer.clone();
    older.registered_date = "2019-06-01T00:00:00.000Z".into();
    older.first_name = "Older".into();
    let record = |e: &UserEvent| (None, Some(e.to_json()));
    // The newer event on partition 1 is read first; the older one arrives later on
    // partition 0: by Kafka position it would win, by registered_date it must not.
    testkit::produce_on(&s.brokers, &s.topic, &[record(&newer)], Some(1)).await;
    let args = ["--order-by", "registered_date"];
    let out = s.run_available_now(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    testkit::produce_on(&s.brokers, &s.topic, &[record(&older)], Some(0)).await;
    let out = s.run_available_now(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let name: String =
        s.db.query_one("SELECT first_name FROM users WHERE id = 'ordered-1'", &[])
            .await
            .unwrap()
            .get(0);
    assert_eq!(name, "Newer");
    let bad = s.run_available_now(&["--order-by", "no_such_column"]);
    assert!(!bad.status.success());
    assert!(
        text(&bad.stderr).contains("--order-by"),
        "{}",
        text(&bad.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn available_now_assigned_no_partition_says_so_and_fails() {
    let s = Scenario::new(1).await;
    let events: Vec<UserEvent> = Generator::new(91).take(10).collect();
    s.publish(&events).await;
    // A streaming member holds the only partition (the range assignor gives it to
    // the member whose id sorts first; member ids start with the client id).
    let mut holder = s.spawn(&["-X", "client.id=aaa-holder"], "holder");
    testkit::eventually(
        "the holder is assigned",
        Duration::from_secs(30),
        || async {
            s.log("holder")
                .contains("Partitions assigned.")
                .then_some(())
        },
    )
    .await;
    let started = std::time::Instant::now();
    let out = s.run_available_now(&["--connect-timeout", "2s", "-X", "client.id=zzz-late"]);
    let stderr = text(&out.stderr);
    support::signal(&holder, "TERM");
    let _ = holder.wait();
    assert!(
        !out.status.success(),
        "exit 0 having read nothing: {stderr}"
    );
    assert!(stderr.contains("no partition"), "{stderr}");
    assert!(stderr.contains("Waiting."), "a warning first: {stderr}");
    assert!(started.elapsed() < Duration::from_secs(60), "bounded");
}
