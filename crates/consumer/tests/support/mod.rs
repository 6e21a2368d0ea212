//! Scenario helpers: a topic, a group, a database and an output dir of the test's own,
//! and the real `consumer` binary run against them.

#![allow(dead_code)]

pub mod outputs;
pub mod services;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use events::UserEvent;
use tokio_postgres::Client;

pub struct Scenario {
    pub brokers: String,
    pub topic: String,
    pub group: String,
    pub db_url: String,
    pub db: Client,
    pub out: tempfile::TempDir,
}

impl Scenario {
    pub async fn new(partitions: i32) -> Self {
        Self::on(&testkit::brokers(), &testkit::database_url(), partitions).await
    }

    /// A scenario on given services (the fault suite brings its own).
    pub async fn on(brokers: &str, database_url: &str, partitions: i32) -> Self {
        let topic = testkit::unique("users");
        testkit::create_topic_on(brokers, &topic, partitions).await;
        let (db_url, db) = testkit::fresh_database_on(database_url).await;
        Self {
            brokers: brokers.to_string(),
            topic,
            group: testkit::unique("group"),
            db_url,
            db,
            out: tempfile::tempdir().unwrap(),
        }
    }

    /// A scenario on `brokers` for an existing (or not yet created) `topic`, with
    /// a fresh database on the PostgreSQL under test: for brokers the test client
    /// cannot create topics on (behind TLS, SASL, a mock).
    pub async fn without_topic(brokers: &str, topic: &str) -> Self {
        let (db_url, db) = testkit::fresh_database().await;
        Self {
            brokers: brokers.to_string(),
            topic: topic.to_string(),
            group: testkit::unique("group"),
            db_url,
            db,
            out: tempfile::tempdir().unwrap(),
        }
    }

    pub fn out_dir(&self) -> &Path {
        self.out.path()
    }

    /// The consumer binary with this scenario's services and names.
    pub fn command(&self, extra: &[&str]) -> Command {
        let defaults = [
            ("--brokers", self.brokers.as_str()),
            ("--topic", &self.topic),
            ("--group", &self.group),
            ("--database-url", &self.db_url),
            ("--output-dir", self.out_dir().to_str().unwrap()),
            ("--trigger-interval", "200ms"),
            ("--connect-timeout", "5s"),
        ];
        let mut c = Command::new(env!("CARGO_BIN_EXE_consumer"));
        for (flag, value) in defaults {
            if !extra.contains(&flag) {
                c.args([flag, value]);
            }
        }
        c.args(extra).env("RUST_LOG", "info,tokio_postgres=warn");
        c
    }

    /// Runs `--available-now` to completion (bounded).
    pub fn run_available_now(&self, extra: &[&str]) -> Output {
        let mut args = vec!["--available-now"];
        args.extend_from_slice(extra);
        run_bounded(self.command(&args), Duration::from_secs(120))
    }

    /// Starts a streaming consumer in the background.
    pub fn spawn(&self, extra: &[&str], log: &str) -> Child {
        let file = std::fs::File::create(self.out_dir().join(format!(".{log}.log"))).unwrap();
        self.command(extra)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap()
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.out_dir().join(format!(".{name}.log"))).unwrap_or_default()
    }

    /// Publishes events keyed by id.
    pub async fn publish(&self, events: &[UserEvent]) {
        let records: Vec<testkit::Record> = events
            .iter()
            .map(|e| (e.key().map(<[u8]>::to_vec), Some(e.to_json())))
            .collect();
        testkit::produce_on(&self.brokers, &self.topic, &records, None).await;
    }

    /// Rows of the users table: id -> (first_name, email).
    pub async fn table(&self, table: &str) -> HashMap<String, (Option<String>, Option<String>)> {
        self.db
            .query(&format!("SELECT id, first_name, email FROM {table}"), &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), (r.get(1), r.get(2))))
            .collect()
    }

    pub async fn count(&self, sql: &str) -> i64 {
        self.db.query_one(sql, &[]).await.unwrap().get(0)
    }

    /// Like `count`, but `None` while the consumer has not created the tables yet.
    pub async fn try_count(&self, sql: &str) -> Option<i64> {
        self.db.query_one(sql, &[]).await.ok().map(|r| r.get(0))
    }

    /// Stored next offsets per partition.
    pub async fn stored_offsets(&self) -> BTreeMap<i32, i64> {
        self.db
            .query(
                r#"SELECT "partition", next_offset FROM pipeline_offsets WHERE consumer_group = $1 AND topic = $2"#,
                &[&self.group, &self.topic],
            )
            .await
            .map(|rows| rows.iter().map(|r| (r.get(0), r.get(1))).collect())
            .unwrap_or_default()
    }

    /// The visible part files, in batch order (their names carry time-ordered ids),
    /// each as (header, rows).
    pub fn part_files(&self) -> Vec<(String, Vec<String>, Vec<Vec<String>>)> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(self.out_dir())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
            // Other outputs' part files live in directories of their own.
            .filter(|p| p.is_file())
            .collect();
        names.sort();
        names
            .into_iter()
            .map(|p| {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                assert!(
                    name.starts_with("part-00000-") && name.ends_with("-c000.csv"),
                    "unexpected visible file {name}"
                );
                let mut r = csv::Reader::from_path(&p).unwrap();
                let header = r.headers().unwrap().iter().map(str::to_string).collect();
                let rows = r
                    .records()
                    .map(|rec| rec.unwrap().iter().map(str::to_string).collect())
                    .collect();
                (name, header, rows)
            })
            .collect()
    }

    /// Staged files left behind in any staging directory: the output dir's, and
    /// those of other outputs in its subdirectories.
    pub fn staged_files(&self) -> Vec<PathBuf> {
        let subdirs = std::fs::read_dir(self.out_dir())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir());
        std::iter::once(self.out_dir().to_path_buf())
            .chain(subdirs)
            .flat_map(|dir| {
                std::fs::read_dir(dir.join(".staging"))
                    .into_iter()
                    .flatten()
                    .flatten()
            })
            .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
            .map(|f| f.path())
            .filter(|p| p.extension().is_some_and(|e| e == "csv"))
            .collect()
    }

    /// Checks the exactly-once invariants of the default transform against the
    /// events that were published: the table holds the latest value of every id,
    /// the files hold each committed batch's rows once, offsets cover everything.
    pub async fn assert_exactly_once(&self, published: &[UserEvent], dead_letters: i64) {
        let expected = latest_by_id(published);
        let table = self.table("users").await;
        assert_eq!(table.len(), expected.len(), "one row per distinct id");
        for (id, e) in &expected {
            let got = table.get(id).unwrap_or_else(|| panic!("id {id} missing"));
            assert_eq!(
                got,
                &(Some(e.first_name.clone()), Some(e.email.clone())),
                "latest value of {id}"
            );
        }
        assert_eq!(
            self.count("SELECT count(*) FROM dead_letters").await,
            dead_letters,
            "dead letters"
        );
        assert_eq!(
            self.count(
                r#"SELECT count(*) FROM (SELECT "partition", "offset" FROM dead_letters
                   WHERE stage = 'decode' GROUP BY 1, 2 HAVING count(*) > 1) d"#
            )
            .await,
            0,
            "no dead letter stored twice"
        );
        // Every committed batch's file exists once; no file without a committed batch.
        let committed: Vec<String> = self
            .db
            .query(
                "SELECT part_file FROM pipeline_batches WHERE part_file IS NOT NULL AND consumer_group = $1
                 AND coalesce((outputs->>'users')::bigint, rows_written) > 0",
                &[&self.group],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let files = self.part_files();
        let mut names: Vec<&str> = files.iter().map(|(n, _, _)| n.as_str()).collect();
        let mut want: Vec<&str> = committed.iter().map(String::as_str).collect();
        names.sort_unstable();
        want.sort_unstable();
        assert_eq!(names, want, "part files = committed batches");
        let rows_in_files: usize = files.iter().map(|(_, _, rows)| rows.len()).sum();
        let rows_written = self.count(USERS_ROWS_WRITTEN).await;
        assert_eq!(
            rows_in_files as i64, rows_written,
            "every written row in exactly one file"
        );
        // The last file mentioning an id has its latest value.
        let mut last: HashMap<String, Vec<String>> = HashMap::new();
        for (_, header, rows) in &files {
            assert_eq!(header.len(), 12, "{header:?}");
            for row in rows {
                last.insert(row[0].clone(), row.clone());
            }
        }
        assert_eq!(last.len(), expected.len());
        for (id, e) in &expected {
            assert_eq!(last[id][1], e.first_name, "CSV latest value of {id}");
        }
        assert!(
            self.staged_files().is_empty(),
            "staged files left: {:?}",
            self.staged_files()
        );
    }
}

/// The rows of every part file in `dir` (another output's directory).
pub fn csv_rows(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "csv"))
        .map(|p| csv::Reader::from_path(&p).unwrap().records().count())
        .sum()
}

/// Rows written into the users output by every batch (with several outputs,
/// `rows_written` is their sum).
const USERS_ROWS_WRITTEN: &str = "SELECT coalesce(sum(coalesce((outputs->>'users')::bigint, rows_written)), 0)::bigint FROM pipeline_batches";

/// What a fault scenario measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Figures {
    pub lost: i64,
    pub duplicated: i64,
    pub dead_letters: i64,
}

impl Scenario {
    /// Counts what was lost and what was duplicated, without failing (the summary
    /// line is printed first; `assert_exactly_once` then says exactly what is wrong).
    pub async fn measure(&self, published: &[UserEvent], bad: i64) -> Figures {
        let expected = latest_by_id(published);
        let table = self.table("users").await;
        let right = expected
            .iter()
            .filter(|(id, e)| {
                table.get(*id) == Some(&(Some(e.first_name.clone()), Some(e.email.clone())))
            })
            .count() as i64;
        let dead = self.count("SELECT count(*) FROM dead_letters").await;
        let distinct_dead = self
            .count(r#"SELECT count(DISTINCT ("partition", "offset")) FROM dead_letters"#)
            .await;
        let records = self
            .count("SELECT coalesce(sum(records), 0)::bigint FROM pipeline_batches")
            .await;
        let written = self.count(USERS_ROWS_WRITTEN).await;
        let in_files: i64 = self.part_files().iter().map(|f| f.2.len() as i64).sum();
        let total = published.len() as i64 + bad;
        Figures {
            lost: (expected.len() as i64 - right)
                + (bad - distinct_dead).max(0)
                + (total - records).max(0),
            duplicated: (records - total).max(0)
                + (dead - distinct_dead)
                + (in_files - written).abs()
                + self.staged_files().len() as i64,
            dead_letters: dead,
        }
    }
}

/// Prints a fault-suite summary line and appends it to `$FAULT_SUITE_SUMMARY`
/// (cargo test hides a passing test's output; scripts/test.sh prints that file).
pub fn report(line: &str) {
    println!("{line}");
    if let Some(path) = std::env::var_os("FAULT_SUITE_SUMMARY") {
        use std::io::Write;
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
        {
            let _ = writeln!(file, "{line}");
        }
    }
}

/// The latest event per id, in publishing order (an id is always on one partition).
pub fn latest_by_id(events: &[UserEvent]) -> HashMap<String, UserEvent> {
    let mut m = HashMap::new();
    for e in events {
        if let Some(id) = &e.id {
            m.insert(id.clone(), e.clone());
        }
    }
    m
}

/// Runs a command, killing it after `limit`.
pub fn run_bounded(mut command: Command, limit: Duration) -> Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "command did not finish within {limit:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Sends a signal to a child process.
pub fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}
