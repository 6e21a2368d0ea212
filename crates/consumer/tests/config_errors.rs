//! Bad configuration ends the consumer at start-up with a one-line reason and a
//! non-zero exit, within seconds, with nothing written anywhere.

mod support;

use std::time::{Duration, Instant};

use support::services::PrivatePostgres;
use support::{Scenario, run_bounded, text};

/// Runs the consumer expecting a start-up failure; returns its last stderr line.
fn refused(s: &Scenario, args: &[&str]) -> String {
    let started = Instant::now();
    let out = run_bounded(s.command(args), Duration::from_secs(30));
    assert!(!out.status.success(), "should fail: {args:?}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    let stderr = text(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default().to_string();
    assert!(last.starts_with("consumer: error: "), "{stderr}");
    support::report(&format!(
        "fault-suite: bad-config args={:?} exit={} seconds={:.1} error={last:?}",
        args.join(" "),
        out.status.code().unwrap_or(-1),
        started.elapsed().as_secs_f64()
    ));
    last
}

async fn nothing_written(s: &Scenario) {
    let tables = s
        .count("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'")
        .await;
    assert_eq!(tables, 0, "no table created");
    assert!(s.part_files().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_transform_that_does_not_plan_is_refused_before_anything_is_consumed() {
    let s = Scenario::new(1).await;
    let sql = s.out_dir().join(".bad.sql");
    std::fs::write(&sql, "SELECT id, no_such_column FROM events").unwrap();
    let line = refused(&s, &["--transform-sql", sql.to_str().unwrap()]);
    assert!(
        line.contains("transform SQL does not plan") && line.contains("no_such_column"),
        "{line}"
    );
    nothing_written(&s).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_broker_and_database_are_named() {
    let s = Scenario::new(1).await;
    let line = refused(&s, &["--brokers", "127.0.0.1:1"]);
    assert!(
        line.contains("cannot reach Kafka brokers at 127.0.0.1:1"),
        "{line}"
    );
    let line = refused(&s, &["--database-url", "postgres://postgres@127.0.0.1:1/x"]);
    assert!(
        line.contains("cannot connect to PostgreSQL (postgres@127.0.0.1:1/x)"),
        "{line}"
    );
    nothing_written(&s).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_credentials_are_refused() {
    let s = Scenario::new(1).await;
    let config: tokio_postgres::Config = s.db_url.parse().unwrap();
    let host = match &config.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let url = format!("postgres://no_such_role:wrong@{host}:{port}/postgres");
    let line = refused(&s, &["--database-url", &url]);
    assert!(line.contains("cannot connect to PostgreSQL"), "{line}");
    assert!(line.contains("no_such_role"), "{line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unwritable_output_dir_and_a_missing_topic_are_refused() {
    let s = Scenario::new(1).await;
    let line = refused(&s, &["--output-dir", "/proc/users-pipeline/out"]);
    assert!(line.contains("/proc/users-pipeline/out"), "{line}");
    let line = refused(&s, &["--topic", "no_such_topic_here"]);
    assert!(
        line.contains("topic \"no_such_topic_here\" does not exist"),
        "{line}"
    );
    nothing_written(&s).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn identifiers_cannot_carry_sql() {
    let s = Scenario::new(1).await;
    for table in ["users\"; DROP TABLE x; --", "a;b", "users'"] {
        let line = refused(&s, &["--table", table]);
        assert!(line.contains("invalid table name"), "{line}");
    }
    let line = refused(&s, &["--dead-letter-table", "dl; DELETE"]);
    assert!(line.contains("invalid table name"), "{line}");
    let line = refused(&s, &["--key-column", "id\" OR 1=1"]);
    assert!(line.contains("invalid column name"), "{line}");
    nothing_written(&s).await;
}

#[test]
fn a_bad_flag_value_is_a_usage_error() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_consumer"))
        .args(["--trigger-interval", "soon"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--trigger-interval"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_password_is_refused() {
    let pg = PrivatePostgres::start_with_password("right-secret");
    let s = Scenario::new(1).await;
    let line = refused(
        &s,
        &["--database-url", &pg.url_with_password("wrong-secret")],
    );
    assert!(line.contains("password authentication failed"), "{line}");
    // The right password works (the check above is about the password, not the server).
    let ok = testkit::connect(&pg.url_with_password("right-secret")).await;
    assert_eq!(
        ok.query_one("SELECT 1", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
}
