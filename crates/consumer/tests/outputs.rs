//! Several outputs of one stream (`--pipeline`): each write mode against a real
//! broker and PostgreSQL, and the shipped example, checked against what was
//! published and against each other.

mod support;

use events::Generator;
use support::outputs::example_with_log;
use support::{Scenario, latest_by_id, text};

#[tokio::test(flavor = "multi_thread")]
async fn upsert_append_and_merge_outputs_agree_with_what_was_published() {
    let s = Scenario::new(3).await;
    let pipeline = example_with_log(s.out_dir());
    let pipeline = pipeline.to_str().unwrap();
    let first: Vec<_> = Generator::new(151).take(3_000).collect();
    s.publish(&first).await;
    testkit::produce(
        &s.topic,
        &[(Some(b"bad".to_vec()), Some(b"{no".to_vec()))],
        Some(0),
    )
    .await;
    let args = ["--pipeline", pipeline, "--max-batch-records", "400"];
    let out = s.run_available_now(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // A second run merges into the stored groups (the ON CONFLICT path): the same
    // users again, as a producer that re-sent them would publish them.
    let second: Vec<_> = Generator::new(151).take(2_000).collect();
    s.publish(&second).await;
    let out = s.run_available_now(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let all: Vec<_> = first.iter().chain(&second).cloned().collect();

    // append: every record once; merge: the GROUP BY of the log.
    let (_, groups) = s.assert_outputs_exactly_once(all.len() as i64).await;
    let signups = s
        .count("SELECT sum(signups)::bigint FROM signups_per_minute_by_country")
        .await;
    let with_id = all.iter().filter(|e| e.id.is_some()).count() as i64;
    assert_eq!(
        signups, with_id,
        "every record with an id is a sign-up, counted once"
    );
    assert!(groups >= 5, "a group per country and minute: {groups}");
    // upsert: the latest of every id; the dead letter kept once.
    let table = s.table("users").await;
    assert_eq!(table.len(), latest_by_id(&all).len());
    assert_eq!(s.count("SELECT count(*) FROM dead_letters").await, 1);
    // Each output's part files hold what its table took, in its own directory.
    let merged_rows = support::csv_rows(&s.out_dir().join("signups_per_minute_by_country"));
    let batch_rows = s
        .count("SELECT sum((outputs->>'signups_per_minute_by_country')::bigint)::bigint FROM pipeline_batches")
        .await;
    // One partial row per group and batch, in the files as in the table's writes.
    assert_eq!(merged_rows as i64, batch_rows);
    assert!(
        batch_rows > groups,
        "later batches merged into stored groups"
    );
    let users_rows: usize = s.part_files().iter().map(|f| f.2.len()).sum();
    let users_written = s
        .count("SELECT sum((outputs->>'users')::bigint)::bigint FROM pipeline_batches")
        .await;
    assert_eq!(users_rows as i64, users_written);
}

#[tokio::test(flavor = "multi_thread")]
async fn merge_rules_sum_min_max_and_last_combine_across_batches() {
    // One partition: the last batch holds the newest records of every gender.
    let s = Scenario::new(1).await;
    let pipeline = s.out_dir().join(".genders.toml");
    std::fs::write(
        &pipeline,
        r#"
[[output]]
name = "by_gender"
mode = "merge"
key = ["gender"]
sql = """
SELECT coalesce(gender, '?') AS gender, count(*) AS n, sum("offset") AS offsets,
       min("offset") AS first_offset, max("offset") AS last_offset,
       max("offset") AS newest_in_batch
FROM events GROUP BY 1
"""
merge = { n = "count", offsets = "sum", first_offset = "min", last_offset = "max", newest_in_batch = "last" }
"#,
    )
    .unwrap();
    let events: Vec<_> = Generator::new(161).take(2_500).collect();
    s.publish(&events).await;
    let out = s.run_available_now(&[
        "--pipeline",
        pipeline.to_str().unwrap(),
        "--max-batch-records",
        "300",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let batches = s.count("SELECT count(*) FROM pipeline_batches").await;
    assert!(batches >= 9, "several batches merged: {batches}");
    let rows = s
        .db
        .query(
            "SELECT gender, n, offsets::bigint, first_offset, last_offset, newest_in_batch FROM by_gender",
            &[],
        )
        .await
        .unwrap();
    let mut expected: std::collections::HashMap<String, (i64, i64, i64, i64)> = Default::default();
    for (offset, e) in events.iter().enumerate() {
        let o = offset as i64;
        let g = expected
            .entry(e.gender.clone())
            .or_insert((0, 0, i64::MAX, -1));
        *g = (g.0 + 1, g.1 + o, g.2.min(o), g.3.max(o));
    }
    assert_eq!(rows.len(), expected.len());
    for r in rows {
        let gender: String = r.get(0);
        let (n, sum, min, max) = expected[&gender];
        let got: (i64, i64, i64, i64, i64) = (r.get(1), r.get(2), r.get(3), r.get(4), r.get(5));
        assert_eq!(got, (n, sum, min, max, max), "{gender}");
    }
    assert!(s.part_files().is_empty(), "no part_files: no files");
}

#[tokio::test(flavor = "multi_thread")]
async fn validate_prints_every_outputs_ddl_and_a_bad_file_its_line() {
    let s = Scenario::new(1).await;
    let pipeline = example_with_log(s.out_dir());
    let out = support::run_bounded(
        s.command(&["--pipeline", pipeline.to_str().unwrap(), "validate"]),
        std::time::Duration::from_secs(60),
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    for ddl in [
        "CREATE TABLE \"users\" (\"id\" text,",
        "CREATE TABLE \"signups_per_minute_by_country\" (\"country\" text, \"minute\" timestamp with time zone, \"signups\" bigint",
        "PRIMARY KEY (\"country\", \"minute\"))",
        "CREATE TABLE \"signups_log\" (\"partition\" integer,",
        "ON CONFLICT (\"country\", \"minute\") DO UPDATE SET \"signups\" = COALESCE(cur.\"signups\" + EXCLUDED.\"signups\"",
    ] {
        assert!(stdout.contains(ddl), "{ddl:?} not in:\n{stdout}");
    }
    let bad = s.out_dir().join(".bad.toml");
    std::fs::write(&bad, "[[output]]\nname = \"x\"\nmode = \"merge\"\nkey = [\"gender\"]\nsql = \"SELECT gender, count(*) AS n FROM events GROUP BY 1\"\n").unwrap();
    let out = s.run_available_now(&["--pipeline", bad.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    let line = stderr
        .lines()
        .find(|l| l.contains("error"))
        .unwrap_or(&stderr)
        .to_string();
    assert!(
        line.contains(":3: output \"x\": value column \"n\" has no combine rule"),
        "{stderr}"
    );
}
