//! The micro-batch transform: one SQL query run by DataFusion, Spark's replacement.
//!
//! The query is planned once at start-up against the input schema, so a query that
//! cannot run is refused before anything is consumed, and its output schema decides
//! the PostgreSQL table and the CSV header before the first batch arrives.
//!
//! The physical plan made then is also the one every batch runs: `events` is a
//! table whose scan reads the batch handed to that run (through the run's task
//! context), so a batch costs its execution only, not a parse, an analysis, two
//! optimiser passes and a physical planning of the same SQL again. Before each run
//! the plan's per-execution state is reset (a hash join's build side, a top-k's
//! filter, metrics); a plan DataFusion cannot reset that way is planned per batch.

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::execution::TaskContext;
use datafusion::execution::context::SQLOptions;
use datafusion::logical_expr::{Expr, LogicalPlan, Volatility};
use datafusion::physical_plan::execution_plan::reset_plan_states;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream, collect};
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::decode::input_schema;

mod latest;

pub(crate) use latest::highest_ranked;

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

/// The batch one run reads as `events`, carried by that run's task context.
#[derive(Debug)]
struct RunInput(RecordBatch);

/// The `events` table's one partition: whatever batch the run executing it carries
/// (nothing when planning).
#[derive(Debug)]
struct CurrentBatch(SchemaRef);

impl PartitionStream for CurrentBatch {
    fn schema(&self) -> &SchemaRef {
        &self.0
    }

    fn execute(&self, ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let input = ctx.session_config().get_extension::<RunInput>();
        let batches = input.map(|i| Ok(i.0.clone())).into_iter();
        Box::pin(RecordBatchStreamAdapter::new(
            self.0.clone(),
            futures::stream::iter(batches),
        ))
    }
}

/// Whether a physical plan may run again once its state is reset: DataFusion's
/// `reset_plan_states` does not cover a recursive query's work table.
fn reusable(plan: &Arc<dyn ExecutionPlan>) -> bool {
    let name = plan.name();
    if name == "RecursiveQueryExec" || name == "WorkTableExec" {
        return false;
    }
    plan.children().into_iter().all(reusable)
}

/// Whether the query calls a function that is not immutable: DataFusion folds a
/// stable one (`now()`, `current_date`, ...) into a constant when it plans, so a
/// plan made once would stamp every batch with the start-up time.
fn calls_time_or_volatile(plan: &LogicalPlan) -> bool {
    let not_immutable = |e: &Expr| {
        Ok(matches!(e, Expr::ScalarFunction(f)
            if f.func.signature().volatility != Volatility::Immutable))
    };
    let mut found = false;
    let _ = plan.apply_with_subqueries(|node| {
        node.apply_expressions(|e| {
            found |= e.exists(not_immutable)?;
            Ok(TreeNodeRecursion::Continue)
        })?;
        Ok(if found {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    found
}

/// A planned query.
pub struct Transform {
    ctx: SessionContext,
    sql: String,
    /// The plan every batch runs (reset first); `None`: planned per batch.
    plan: Option<Arc<dyn ExecutionPlan>>,
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
        ctx.register_udwf(latest::is_latest());
        let schema = input_schema();
        let events = StreamingTable::try_new(schema.clone(), vec![Arc::new(CurrentBatch(schema))])?;
        ctx.register_table(INPUT_TABLE, Arc::new(events))?;
        let transform = Self {
            ctx,
            sql: sql.to_string(),
            plan: None,
            output: Arc::new(datafusion::arrow::datatypes::Schema::empty()),
        };
        // The physical side too: some errors only show up there.
        let (plan, once) = transform.plan().await?;
        Ok(Self {
            output: plan.schema(),
            plan: (once && reusable(&plan)).then_some(plan),
            ..transform
        })
    }

    /// The physical plan, and whether planning it once is enough (no function
    /// whose value planning would freeze).
    async fn plan(&self) -> Result<(Arc<dyn ExecutionPlan>, bool), TransformError> {
        let df = self.ctx.sql_with_options(&self.sql, only_queries()).await?;
        let once = !calls_time_or_volatile(df.logical_plan());
        Ok((df.create_physical_plan().await?, once))
    }

    /// The columns the query produces.
    pub fn output_schema(&self) -> SchemaRef {
        self.output.clone()
    }

    /// Runs the query over one batch.
    pub async fn run(&self, batch: RecordBatch) -> Result<Vec<RecordBatch>, TransformError> {
        let plan = match &self.plan {
            Some(plan) => reset_plan_states(plan.clone())?,
            None => self.plan().await?.0,
        };
        let config = self
            .ctx
            .copied_config()
            .with_extension(Arc::new(RunInput(batch)));
        let task = TaskContext::from(&self.ctx.state()).with_session_config(config);
        let out = collect(plan, Arc::new(task)).await?;
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
    use datafusion::arrow::array::AsArray;
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

    /// Every row of the output as text, sorted.
    fn rows_of(out: &[RecordBatch]) -> Vec<String> {
        let text = datafusion::arrow::util::pretty::pretty_format_batches(out)
            .unwrap()
            .to_string();
        let mut lines: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with("| "))
            .skip(1)
            .map(str::to_string)
            .collect();
        lines.sort();
        lines
    }

    /// The plan made once runs every batch: no state of one run (a join's build
    /// side, a top-k's bound, an aggregate's filter) may leak into the next.
    #[tokio::test]
    async fn one_plan_runs_every_batch_with_nothing_left_from_the_last() {
        let queries = [
            // A hash join of the batch with itself.
            "SELECT a.id, b.first_name FROM events a JOIN events b ON a.id = b.id",
            // Top-k (a dynamic filter).
            "SELECT id FROM events ORDER BY post_code DESC LIMIT 1",
            // min/max (a dynamic filter in DataFusion 55).
            "SELECT min(post_code) AS lo, max(post_code) AS hi FROM events",
            // A recursive query: planned per batch.
            "WITH RECURSIVE r(n, id) AS (SELECT 1, id FROM events UNION ALL \
             SELECT n + 1, id FROM r WHERE n < 2) SELECT id, n FROM r",
            // The default query: a window over the whole batch, then a filter.
            DEFAULT_SQL,
        ];
        let first = [
            (1, r#"{"id":"a","first_name":"A","post_code":"5"}"#),
            (2, r#"{"id":"b","first_name":"B","post_code":"6"}"#),
        ];
        let second = [
            (3, r#"{"id":"c","first_name":"C","post_code":"1"}"#),
            (4, r#"{"id":"d","first_name":"D","post_code":"2"}"#),
        ];
        for sql in queries {
            let planned = Transform::new(sql).await.unwrap();
            planned.run(batch(&first)).await.unwrap();
            let reused = planned.run(batch(&second)).await.unwrap();
            let fresh = Transform::new(sql)
                .await
                .unwrap()
                .run(batch(&second))
                .await
                .unwrap();
            assert!(!rows_of(&fresh).is_empty(), "{sql}");
            assert_eq!(rows_of(&reused), rows_of(&fresh), "{sql}");
        }
    }

    /// The default query's "latest per id" (`is_latest`, no sort) keeps the same
    /// rows as the plain `row_number() OVER (PARTITION BY id ...) = 1`.
    #[tokio::test]
    async fn default_query_keeps_what_row_number_keeps() {
        let row_number = "WITH r AS (SELECT *, row_number() OVER (PARTITION BY id ORDER BY \
                          origin_partition DESC, origin_offset DESC) AS rn FROM events \
                          WHERE id IS NOT NULL) SELECT id, first_name FROM r WHERE rn = 1";
        let mut b = BatchBuilder::new();
        for i in 0..600i64 {
            // 3 partitions; ids repeat within and across them; some ids are null.
            let (partition, id) = ((i % 3) as i32, (i * 7919) % 97);
            let payload = match i % 50 {
                0 => r#"{"first_name":"no id"}"#.to_string(),
                _ => format!(r#"{{"id":"u{id}","first_name":"v{i}"}}"#),
            };
            let origin = Origin {
                topic: "t",
                partition,
                offset: i,
                timestamp: None,
                key: None,
                // Replayed dead letters rank by their original position, which is not
                // their own: here above every record of partition 0, below the others.
                rank: (i % 5 == 0).then_some((0, 10_000 - i)),
            };
            b.push(&origin, Some(payload.as_bytes()));
        }
        let input = b.finish().0;
        let expected = Transform::new(row_number).await.unwrap();
        let expected = rows_of(&expected.run(input.clone()).await.unwrap());
        let default = Transform::new(DEFAULT_SQL).await.unwrap();
        let out = default.run(input).await.unwrap();
        let projected: Vec<RecordBatch> = out.iter().map(|b| b.project(&[0, 1]).unwrap()).collect();
        assert_eq!(expected.len(), 97);
        assert_eq!(rows_of(&projected), expected);
    }

    /// Two replays of one dead letter carry the same rank: the default query keeps
    /// one row for the id, the one at the highest position (which breaks the tie),
    /// the row `Provenance` names too.
    #[tokio::test]
    async fn default_query_breaks_a_tie_of_ranks_by_position() {
        let mut b = BatchBuilder::new();
        let records = [
            (1, 7, None, "original"),
            (1, 8, Some((1, 3)), "first replay"),
            (1, 9, Some((1, 3)), "second replay"),
            (2, 4, Some((1, 3)), "replayed elsewhere"),
            (0, 5, Some((1, 3)), "replayed to partition 0"),
        ];
        for (partition, offset, rank, name) in records {
            let payload = format!(r#"{{"id":"x","first_name":"{name}"}}"#);
            b.push(
                &Origin::ranked(partition, offset, rank),
                Some(payload.as_bytes()),
            );
        }
        let input = b.finish().0;
        let t = Transform::new(DEFAULT_SQL).await.unwrap();
        let kept = async |rows: RecordBatch| -> Vec<String> {
            let out = t.run(rows).await.unwrap();
            out.iter()
                .flat_map(|b| {
                    let names = b.column(1).as_string::<i32>();
                    names
                        .iter()
                        .map(|n| n.unwrap_or("").to_string())
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        // The original's own rank (1, 7) beats the replays' (1, 3).
        assert_eq!(kept(input.clone()).await, ["original"]);
        // Among equal ranks the highest position wins: partition 2, then offset 9.
        assert_eq!(kept(input.slice(1, 4)).await, ["replayed elsewhere"]);
        assert_eq!(kept(input.slice(1, 2)).await, ["second replay"]);
        assert_eq!(kept(input.slice(1, 1)).await, ["first replay"]);
    }

    /// `now()` is folded into a constant when planning: such a query is planned per
    /// batch, so each batch gets its own time.
    #[tokio::test]
    async fn a_query_reading_the_clock_sees_each_batch_s_time() {
        let t = Transform::new("SELECT id, now() AS seen FROM events")
            .await
            .unwrap();
        assert!(t.plan.is_none());
        let rows = [(1, r#"{"id":"a"}"#)];
        let first = rows_of(&t.run(batch(&rows)).await.unwrap());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let second = rows_of(&t.run(batch(&rows)).await.unwrap());
        assert_ne!(first, second, "the second batch kept the first one's now()");
    }

    #[tokio::test]
    async fn a_recursive_query_is_planned_per_batch_others_once() {
        let once = Transform::new(DEFAULT_SQL).await.unwrap();
        assert!(once.plan.is_some());
        let recursive = Transform::new(
            "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) \
             SELECT e.id, r.n FROM events e CROSS JOIN r",
        )
        .await
        .unwrap();
        assert!(recursive.plan.is_none());
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
