//! The real `consumer` binary over real Kafka and PostgreSQL: where every message lands.

mod support;

use events::Generator;
use support::{Scenario, text};

/// Key, payload, and what the dead letter's reason must mention.
type Malformed = (Option<Vec<u8>>, Option<Vec<u8>>, &'static str);

/// Malformed payloads of every kind, with what each must become.
fn malformed() -> Vec<Malformed> {
    let deep = format!("{{\"id\":{}1{}}}", "[".repeat(300), "]".repeat(300));
    vec![
        (
            Some(b"k1".to_vec()),
            Some(b"{not json".to_vec()),
            "invalid event",
        ),
        (
            Some(b"k2".to_vec()),
            Some(b"\xff\xfe\xfd".to_vec()),
            "not UTF-8",
        ),
        (
            Some(b"k3".to_vec()),
            Some(b"[1,2,3]".to_vec()),
            "JSON array",
        ),
        (
            Some(b"k4".to_vec()),
            Some(b"\"just a string\"".to_vec()),
            "JSON string",
        ),
        (
            Some(b"k5".to_vec()),
            Some(br#"{"id":"x1","first_name":{"nested":true}}"#.to_vec()),
            "found an object",
        ),
        (Some(b"k6".to_vec()), Some(Vec::new()), "empty payload"),
        (Some(b"k7".to_vec()), None, "tombstone"),
        (
            Some(b"k8".to_vec()),
            Some(deep.into_bytes()),
            "found an array",
        ),
        (
            Some(b"k9".to_vec()),
            Some(format!("\"{}\"", "x".repeat(1024 * 1024 - 16)).into_bytes()),
            "JSON string",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn events_and_malformed_payloads_land_where_they_belong() {
    let s = Scenario::new(3).await;
    let events: Vec<_> = Generator::new(11).take(1500).collect();
    s.publish(&events).await;
    let bad = malformed();
    let records: Vec<testkit::Record> =
        bad.iter().map(|(k, v, _)| (k.clone(), v.clone())).collect();
    testkit::produce(&s.topic, &records, Some(1)).await;
    // Valid but odd: missing fields, unknown fields, numbers for strings, a null id.
    let odd: Vec<testkit::Record> = vec![
        (Some(b"m1".to_vec()), Some(br#"{"id":"m1"}"#.to_vec())),
        (
            Some(b"m2".to_vec()),
            Some(r#"{"id":"m2","first_name":"Zoë","email":"z@example.com","post_code":12345,"extra":{"deep":[1,2]}}"#.as_bytes().to_vec()),
        ),
        (None, Some(br#"{"id":null,"first_name":"NoId"}"#.to_vec())),
        (
            Some(b"m3".to_vec()),
            Some(format!("{{\"id\":\"m3\",\"x\":{}1{}}}", "[".repeat(3000), "]".repeat(3000)).into_bytes()),
        ),
    ];
    testkit::produce(&s.topic, &odd, Some(2)).await;

    let out = s.run_available_now(&["--max-batch-records", "200"]);
    assert!(out.status.success(), "stderr:\n{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("Batch committed."), "{stderr}");

    // The table: latest value per id of the valid events, plus the two odd rows.
    let mut expected = support::latest_by_id(&events);
    let table = s.table("users").await;
    assert_eq!(table.len(), expected.len() + 3);
    assert!(
        table.contains_key("m3"),
        "deep nesting in an unknown field is skipped"
    );
    assert_eq!(table["m1"], (None, None), "missing fields are null");
    assert_eq!(
        table["m2"],
        (Some("Zoë".into()), Some("z@example.com".into()))
    );
    let pc: String =
        s.db.query_one("SELECT post_code FROM users WHERE id = 'm2'", &[])
            .await
            .unwrap()
            .get(0);
    assert_eq!(
        pc, "12345",
        "a JSON number in a string field becomes its text"
    );
    for (id, e) in expected.drain() {
        assert_eq!(table[&id], (Some(e.first_name), Some(e.email)), "{id}");
    }
    // Timestamps were parsed into timestamptz.
    let typed = s
        .count("SELECT count(*) FROM users WHERE dob IS NOT NULL AND registered_date > dob")
        .await;
    assert!(typed > 1000, "{typed}");

    // Dead letters: exactly the malformed ones, each once, with the raw bytes and reason.
    let rows =
        s.db.query(
            r#"SELECT "offset", "key", payload, reason, stage FROM dead_letters ORDER BY "offset""#,
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), bad.len());
    for (row, (key, payload, reason)) in rows.iter().zip(&bad) {
        assert_eq!(row.get::<_, Option<Vec<u8>>>(1), *key);
        assert_eq!(row.get::<_, Option<Vec<u8>>>(2), *payload, "raw bytes kept");
        let why: String = row.get(3);
        assert!(why.contains(reason), "{why:?} should mention {reason:?}");
        assert_eq!(row.get::<_, String>(4), "decode");
    }

    // Offsets cover everything that was published.
    let stored = s.stored_offsets().await;
    let total: i64 = stored.values().sum();
    assert_eq!(
        total as usize,
        events.len() + bad.len() + odd.len(),
        "{stored:?}"
    );

    // Files: header = the table's columns, every written row in exactly one file.
    let files = s.part_files();
    assert!(files.len() >= 3, "several batches: {}", files.len());
    assert_eq!(files[0].1, events::FIELDS);
    let rows_in_files: usize = files.iter().map(|f| f.2.len()).sum();
    let written = s
        .count("SELECT sum(rows_written)::bigint FROM pipeline_batches")
        .await;
    assert_eq!(rows_in_files as i64, written);
    assert!(s.staged_files().is_empty());
    let rows = s.count("SELECT count(*) FROM users").await;
    support::report(&format!(
        "fault-suite: bad-input messages={} malformed={} odd_but_valid={} rows={rows} dead_letters={} checked=rows,dead_letters,offsets,files",
        events.len() + bad.len() + odd.len(),
        bad.len(),
        odd.len(),
        rows_dead(&s).await
    ));
}

async fn rows_dead(s: &Scenario) -> i64 {
    s.count("SELECT count(*) FROM dead_letters").await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_run_only_processes_what_is_new() {
    let s = Scenario::new(2).await;
    let mut g = Generator::new(21);
    let first: Vec<_> = g.by_ref().take(500).collect();
    s.publish(&first).await;
    let out = s.run_available_now(&[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let batches_before = s.count("SELECT count(*) FROM pipeline_batches").await;

    // Nothing new: a run commits nothing and exits 0.
    let out = s.run_available_now(&[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        s.count("SELECT count(*) FROM pipeline_batches").await,
        batches_before
    );

    let second: Vec<_> = g.take(300).collect();
    s.publish(&second).await;
    let out = s.run_available_now(&[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let records = s
        .count("SELECT sum(records)::bigint FROM pipeline_batches")
        .await;
    assert_eq!(
        records, 800,
        "each message read into exactly one committed batch"
    );
    let all: Vec<_> = first.into_iter().chain(second).collect();
    s.assert_exactly_once(&all, 0).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_custom_transform_shapes_the_table_and_files_and_refused_rows_are_kept() {
    let s = Scenario::new(1).await;
    let sql = s.out_dir().join(".transform.sql");
    std::fs::write(
        &sql,
        r#"SELECT id, upper(last_name) AS last_name_upper, character_length(email) AS email_len,
                  gender, "offset" AS kafka_offset
           FROM events WHERE id IS NOT NULL"#,
    )
    .unwrap();
    // A constraint the user added: rows breaking it must become dead letters, not stop us.
    s.db
        .batch_execute(
            "CREATE TABLE users (id text PRIMARY KEY, last_name_upper text, email_len integer,
                                 gender text CHECK (gender IN ('male', 'female')), kafka_offset bigint)",
        )
        .await
        .unwrap();
    let records: Vec<testkit::Record> = [
        r#"{"id":"1","last_name":"Öztürk","email":"a@b.c","gender":"male"}"#,
        r#"{"id":"2","last_name":"Lefèvre","email":"abc@d.e","gender":"other"}"#,
        r#"{"id":"1","last_name":"Gagné","email":"x@y.zz","gender":"female"}"#,
        r#"{"id":"3","last_name":"Smith","email":"s@t.u","gender":"female"}"#,
    ]
    .iter()
    .map(|p| (None, Some(p.as_bytes().to_vec())))
    .collect();
    testkit::produce(&s.topic, &records, Some(0)).await;

    let out = s.run_available_now(&["--transform-sql", sql.to_str().unwrap(), "--show", "5"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("last_name_upper"),
        "--show prints the rows"
    );

    let rows =
        s.db.query(
            "SELECT id, last_name_upper, email_len, kafka_offset FROM users ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    let got: Vec<(String, String, i32, i64)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(
        got,
        vec![
            ("1".into(), "GAGNÉ".into(), 6, 2),
            ("3".into(), "SMITH".into(), 5, 3),
        ],
        "duplicate keys in one batch: the last wins, with no ON CONFLICT error"
    );
    let dead =
        s.db.query(
            "SELECT stage, reason, convert_from(payload, 'UTF8') FROM dead_letters",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].get::<_, String>(0), "sink");
    assert!(
        dead[0].get::<_, String>(1).contains("check constraint"),
        "{}",
        dead[0].get::<_, String>(1)
    );
    // The refused row's record, as read from Kafka (replayable), with its coordinates.
    assert!(
        dead[0]
            .get::<_, String>(2)
            .contains("\"last_name\":\"Lefèvre\""),
        "{}",
        dead[0].get::<_, String>(2)
    );
    let offset: Option<i64> =
        s.db.query_one(r#"SELECT "offset" FROM dead_letters"#, &[])
            .await
            .unwrap()
            .get(0);
    assert_eq!(offset, Some(1));

    let files = s.part_files();
    assert_eq!(files.len(), 1);
    assert_eq!(
        files[0].1,
        [
            "id",
            "last_name_upper",
            "email_len",
            "gender",
            "kafka_offset"
        ]
    );
    assert_eq!(
        files[0].2.len(),
        3,
        "the file holds the query's output rows, less the one PostgreSQL refused"
    );
    assert!(files[0].2.iter().all(|row| row[0] != "2"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_output_column_is_added_and_a_type_change_refused() {
    let s = Scenario::new(1).await;
    testkit::produce(
        &s.topic,
        &[(None, Some(br#"{"id":"1","email":"a@b.c"}"#.to_vec()))],
        None,
    )
    .await;
    let v1 = s.out_dir().join(".v1.sql");
    std::fs::write(&v1, "SELECT id, email FROM events").unwrap();
    let out = s.run_available_now(&["--transform-sql", v1.to_str().unwrap(), "--table", "t"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let v2 = s.out_dir().join(".v2.sql");
    std::fs::write(
        &v2,
        "SELECT id, email, character_length(email) AS n FROM events",
    )
    .unwrap();
    testkit::produce(
        &s.topic,
        &[(None, Some(br#"{"id":"2","email":"xy@z"}"#.to_vec()))],
        None,
    )
    .await;
    let out = s.run_available_now(&["--transform-sql", v2.to_str().unwrap(), "--table", "t"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rows =
        s.db.query("SELECT id, n FROM t ORDER BY id", &[])
            .await
            .unwrap();
    let got: Vec<(String, Option<i32>)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got, vec![("1".into(), None), ("2".into(), Some(4))]);

    let v3 = s.out_dir().join(".v3.sql");
    std::fs::write(
        &v3,
        "SELECT id, character_length(email) AS email FROM events",
    )
    .unwrap();
    let out = s.run_available_now(&["--transform-sql", v3.to_str().unwrap(), "--table", "t"]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("column \"email\" is text but the transform now produces integer"),
        "{stderr}"
    );
}
