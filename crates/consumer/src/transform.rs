//! The micro-batch transform: one SQL query run by DataFusion, Spark's replacement.
//!
//! The query is planned once at start-up against the input schema, so a query that
//! cannot run is refused before anything is consumed, and its output schema decides
//! the PostgreSQL table and the CSV header before the first batch arrives.

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::execution::context::SQLOptions;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::decode::input_schema;

/// The default query, shipped in the repository as `sql/default_transform.sql`.
pub const DEFAULT_SQL: &str = include_str!("../sql/default_transform.sql");

/// The name under which each batch is visible to the query.
pub const INPUT_TABLE: &str = "events";

/// Errors of planning or running the transform: DataFusion's own message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TransformError(#[from] datafusion::error::DataFusionError);

/// A query, nothing else: DDL (CREATE TABLE ...), DML (INSERT, COPY TO) and
/// statements (SET) are refused at planning, with DataFusion's reason.
fn only_queries() -> SQLOptions {
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
}

/// A planned query.
pub struct Transform {
    ctx: SessionContext,
    sql: String,
    output: SchemaRef,
}

impl Transform {
    /// Plans `sql` against the input schema and returns the transform, or
    /// DataFusion's message when the query does not plan.
    pub async fn new(sql: &str) -> Result<Self, TransformError> {
        // One batch at a time: repartitioning it over threads costs more than it saves.
        let config = SessionConfig::new()
            .with_target_partitions(1)
            .with_information_schema(false);
        let ctx = SessionContext::new_with_config(config);
        let empty = RecordBatch::new_empty(input_schema());
        ctx.register_batch(INPUT_TABLE, empty)?;
        let df = ctx.sql_with_options(sql, only_queries()).await?;
        // Plan the physical side too: some errors only show up there.
        let plan = df.create_physical_plan().await?;
        let output = plan.schema();
        ctx.deregister_table(INPUT_TABLE)?;
        Ok(Self {
            ctx,
            sql: sql.to_string(),
            output,
        })
    }

    /// The columns the query produces.
    pub fn output_schema(&self) -> SchemaRef {
        self.output.clone()
    }

    /// Runs the query over one batch.
    pub async fn run(&self, batch: RecordBatch) -> Result<Vec<RecordBatch>, TransformError> {
        let table = MemTable::try_new(input_schema(), vec![vec![batch]])?;
        self.ctx.deregister_table(INPUT_TABLE)?;
        self.ctx.register_table(INPUT_TABLE, Arc::new(table))?;
        let out = self
            .ctx
            .sql_with_options(&self.sql, only_queries())
            .await?
            .collect()
            .await?;
        Ok(out.into_iter().filter(|b| b.num_rows() > 0).collect())
    }

    /// Runs the query, and when it fails on this batch (a user's CAST meeting a bad
    /// value, say), runs it on halves until the rows that make it fail are isolated.
    /// Returns the output and each failing input row with DataFusion's message.
    /// Halves run in order, so "last row per key wins" still holds downstream.
    pub async fn run_isolating(
        &self,
        batch: RecordBatch,
    ) -> (Vec<RecordBatch>, Vec<(RecordBatch, String)>) {
        let mut pending = std::collections::VecDeque::from([batch]);
        let (mut out, mut failed) = (Vec::new(), Vec::new());
        while let Some(part) = pending.pop_front() {
            match self.run(part.clone()).await {
                Ok(rows) => out.extend(rows),
                Err(e) if part.num_rows() <= 1 => {
                    if part.num_rows() == 1 {
                        failed.push((part, e.to_string()));
                    }
                }
                Err(_) => {
                    let mid = part.num_rows() / 2;
                    pending.push_front(part.slice(mid, part.num_rows() - mid));
                    pending.push_front(part.slice(0, mid));
                }
            }
        }
        (out, failed)
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::datatypes::{DataType, TimeUnit};
    use datafusion::assert_batches_eq;

    use super::*;
    use crate::decode::{BatchBuilder, Origin};

    fn batch(rows: &[(i64, &str)]) -> RecordBatch {
        let mut b = BatchBuilder::new();
        for (offset, payload) in rows {
            b.push(
                &Origin {
                    topic: "users_created",
                    partition: 0,
                    offset: *offset,
                    timestamp: Some(0),
                    key: None,
                    rank: None,
                },
                Some(payload.as_bytes()),
            );
        }
        b.finish().0
    }

    #[tokio::test]
    async fn default_query_drops_null_ids_keeps_latest_and_parses_dates() {
        let t = Transform::new(DEFAULT_SQL).await.unwrap();
        let out = t
            .run(batch(&[
                (
                    1,
                    r#"{"id":"a","first_name":"Old","dob":"1947-11-29T13:42:28.938Z"}"#,
                ),
                (2, r#"{"id":null,"first_name":"NoId"}"#),
                (3, r#"{"first_name":"Missing"}"#),
                (4, r#"{"id":"b","first_name":"Björk","dob":"not a date"}"#),
                (
                    5,
                    r#"{"id":"a","first_name":"New","dob":"1947-11-29T13:42:28.938Z"}"#,
                ),
            ]))
            .await
            .unwrap();
        let projected: Vec<RecordBatch> = out
            .iter()
            .map(|b| {
                let s = b.schema();
                let idx = ["id", "first_name", "dob"].map(|c| s.index_of(c).unwrap());
                b.project(&idx).unwrap()
            })
            .collect();
        let mut lines = datafusion::arrow::util::pretty::pretty_format_batches(&projected)
            .unwrap()
            .to_string()
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>();
        // Row order is not part of the contract: sort the body.
        let body_end = lines.len() - 1;
        lines[3..body_end].sort();
        let expected = [
            "+----+------------+--------------------------+",
            "| id | first_name | dob                      |",
            "+----+------------+--------------------------+",
            "| a  | New        | 1947-11-29T13:42:28.938Z |",
            "| b  | Björk      |                          |",
            "+----+------------+--------------------------+",
        ];
        assert_eq!(lines, expected);
    }

    #[tokio::test]
    async fn default_output_schema_is_the_users_table() {
        let t = Transform::new(DEFAULT_SQL).await.unwrap();
        let schema = t.output_schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, events::FIELDS);
        for (name, field) in names.iter().zip(schema.fields()) {
            match *name {
                "dob" | "registered_date" => assert!(
                    matches!(
                        field.data_type(),
                        DataType::Timestamp(TimeUnit::Microsecond, Some(tz)) if &**tz == "UTC"
                    ),
                    "{field:?}"
                ),
                _ => assert_eq!(field.data_type(), &DataType::Utf8, "{name}"),
            }
        }
    }

    #[tokio::test]
    async fn custom_query_changes_the_columns() {
        let t = Transform::new(
            "SELECT id, upper(last_name) AS last_name_upper, \"partition\", \"offset\" FROM events",
        )
        .await
        .unwrap();
        let out = t
            .run(batch(&[(7, r#"{"id":"x","last_name":"Öztürk"}"#)]))
            .await
            .unwrap();
        assert_batches_eq!(
            [
                "+----+-----------------+-----------+--------+",
                "| id | last_name_upper | partition | offset |",
                "+----+-----------------+-----------+--------+",
                "| x  | ÖZTÜRK          | 0         | 7      |",
                "+----+-----------------+-----------+--------+",
            ],
            &out
        );
    }

    #[tokio::test]
    async fn statements_other_than_a_query_are_refused() {
        for sql in [
            "CREATE TABLE t AS SELECT * FROM events",
            "INSERT INTO events SELECT * FROM events",
            "COPY events TO '/tmp/x.csv'",
            "SET datafusion.execution.batch_size = 1",
        ] {
            assert!(Transform::new(sql).await.is_err(), "{sql}");
        }
    }

    #[tokio::test]
    async fn a_query_that_does_not_plan_is_refused_with_datafusion_message() {
        let err = Transform::new("SELECT no_such_column FROM events")
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("no_such_column"), "{err}");
        assert!(Transform::new("SELEKT 1").await.is_err());
        assert!(Transform::new("SELECT * FROM other_table").await.is_err());
    }

    #[tokio::test]
    async fn a_row_that_fails_at_run_time_is_isolated() {
        let t = Transform::new("SELECT id, CAST(post_code AS INT) AS pc FROM events")
            .await
            .unwrap();
        let (out, failed) = t
            .run_isolating(batch(&[
                (1, r#"{"id":"a","post_code":"1"}"#),
                (2, r#"{"id":"b","post_code":"YB8 2DW"}"#),
                (3, r#"{"id":"c","post_code":"3"}"#),
            ]))
            .await;
        let rows: usize = out.iter().map(RecordBatch::num_rows).sum();
        assert_eq!(rows, 2);
        assert_eq!(failed.len(), 1);
        assert!(
            failed[0].1.contains("YB8 2DW") || failed[0].1.contains("Cast"),
            "{}",
            failed[0].1
        );
    }
}
