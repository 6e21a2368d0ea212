//! The pipeline file the multi-output tests and the fault suite run: the shipped
//! example plus an append log of every record, against which the merged
//! aggregate is checked.

use std::path::Path;

use super::Scenario;

/// The shipped example: users (upsert) and signups_per_minute_by_country (merge).
pub const EXAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/pipelines/users_and_signups.toml"
);

/// The example's country and minute, as an append log of every record can carry
/// them (no WHERE: every record is logged once).
const LOG: &str = r#"
[[output]]
name = "signups_log"
mode = "append"
part_files = "signups_log"
sql = """
SELECT "partition", "offset", id, gender,
       coalesce(nullif(trim(regexp_replace(address, '^.*,', '')), ''), 'unknown') AS country,
       arrow_cast(date_trunc('minute', "timestamp"), 'Timestamp(Microsecond, Some("UTC"))') AS minute,
       arrow_cast(try_cast(dob AS TIMESTAMP), 'Timestamp(Microsecond, Some("UTC"))') AS dob
FROM events
"""
"#;

/// The example's outputs plus the append log, written next to the example's SQL.
pub fn example_with_log(dir: &Path) -> std::path::PathBuf {
    let example = std::fs::read_to_string(EXAMPLE).unwrap();
    let sql = Path::new(EXAMPLE)
        .parent()
        .unwrap()
        .join("signups_per_minute_by_country.sql");
    let example = example.replace(
        "sql_file = \"signups_per_minute_by_country.sql\"",
        &format!("sql_file = {:?}", sql.display().to_string()),
    );
    let path = dir.join(".pipeline.toml");
    std::fs::write(&path, format!("{example}\n{LOG}")).unwrap();
    path
}

/// Rows of `sql` that differ between the merged aggregate and a GROUP BY over the
/// append log of every record: both must hold the same groups and values.
pub const AGGREGATE_VS_LOG: &str = r#"
SELECT count(*) FROM signups_per_minute_by_country a
FULL JOIN (SELECT country, minute, count(*) AS signups, min(dob) AS oldest, max(dob) AS youngest
           FROM signups_log WHERE id IS NOT NULL AND minute IS NOT NULL
           GROUP BY country, minute) g USING (country, minute)
WHERE a.signups IS DISTINCT FROM g.signups
   OR a.oldest_born IS DISTINCT FROM g.oldest OR a.youngest_born IS DISTINCT FROM g.youngest"#;

impl Scenario {
    /// Checks the outputs of [`example_with_log`] after `records` good records:
    /// the log holds each once, the aggregate equals the GROUP BY over it. Returns
    /// (log rows, aggregate groups).
    pub async fn assert_outputs_exactly_once(&self, records: i64) -> (i64, i64) {
        let logged = self.count("SELECT count(*) FROM signups_log").await;
        let distinct = self
            .count(r#"SELECT count(DISTINCT ("partition", "offset")) FROM signups_log"#)
            .await;
        assert_eq!(
            (logged, distinct),
            (records, records),
            "every record logged once"
        );
        assert_eq!(
            self.count(AGGREGATE_VS_LOG).await,
            0,
            "the merged aggregate equals a GROUP BY over the log: no double counting"
        );
        let files = super::csv_rows(&self.out_dir().join("signups_log"));
        assert_eq!(
            files as i64, logged,
            "the log's part files hold its rows once"
        );
        let groups = self
            .count("SELECT count(*) FROM signups_per_minute_by_country")
            .await;
        (logged, groups)
    }
}
