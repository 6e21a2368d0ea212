//! One micro-batch: collected record by record, transformed (every output's
//! query run, each output encoded for COPY) on a worker thread, possibly while the
//! batch before it commits, then given each partition's move and committed.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::record_batch::RecordBatch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::Error;
use crate::config::Config;
use crate::dead_letter::{DeadLetter, Provenance};
use crate::decode::BatchBuilder;
use crate::ledger::Advance;
use crate::outputs::Output;
use crate::partitions::Partitions;
use crate::sink::copy::{self, Encoded};
use crate::sink::postgres::{Guard, Mode};

/// One micro-batch being collected.
pub struct Collecting {
    pub builder: BatchBuilder,
    /// Per partition: first and last offset taken.
    pub ranges: BTreeMap<i32, (i64, i64)>,
    pub started: Instant,
}

impl Default for Collecting {
    fn default() -> Self {
        Self::new()
    }
}

impl Collecting {
    pub fn new() -> Self {
        Self {
            builder: BatchBuilder::new(),
            ranges: BTreeMap::new(),
            started: Instant::now(),
        }
    }

    pub fn full(&self, config: &Config) -> bool {
        self.builder.records() >= config.max_batch_records
            || self.builder.bytes() >= config.max_batch_bytes
    }
}

/// One output's share of a prepared batch.
pub struct OutputRows {
    /// The query's output: the part file's rows.
    pub rows: Vec<RecordBatch>,
    /// The same rows encoded for COPY into the output's table.
    pub encoded: Encoded,
    /// The input records behind the rows (for rows PostgreSQL refuses).
    pub provenance: Provenance,
}

impl OutputRows {
    pub fn num_rows(&self) -> usize {
        self.rows.iter().map(RecordBatch::num_rows).sum()
    }
}

/// A collected batch, transformed and encoded for every output: what the commit
/// needs but each partition's move, which depends on the batch committed before.
pub struct Transformed {
    pub records: u64,
    /// Per partition: first and last offset taken.
    pub ranges: BTreeMap<i32, (i64, i64)>,
    /// In the order of the outputs.
    pub outputs: Vec<OutputRows>,
    pub dead: Vec<DeadLetter>,
    pub input_rows: usize,
    pub failed_rows: usize,
    pub started: Instant,
}

/// A batch ready to commit: transformed, with each partition's move.
pub struct Prepared {
    pub id: Uuid,
    pub batch: Transformed,
    pub advances: Vec<Advance>,
}

/// A batch being transformed on a worker thread (so that it can overlap the commit
/// of the batch before it), under the assignment generation it was read in.
pub struct Preparing {
    task: JoinHandle<Result<Transformed, Error>>,
    pub generation: u64,
}

impl Preparing {
    pub fn start(batch: Collecting, outputs: Arc<[Output]>, show: usize, generation: u64) -> Self {
        let task = tokio::spawn(async move { transform(batch, &outputs, show).await });
        Self { task, generation }
    }

    pub async fn finish(mut self) -> Result<Transformed, Error> {
        match (&mut self.task).await {
            Ok(done) => done,
            Err(e) => Err(Error::State(format!("transforming a batch failed: {e}"))),
        }
    }
}

impl Drop for Preparing {
    /// A batch dropped (a rebalance, a conflict, stopping) stops being transformed.
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Transformed {
    /// The batch with each partition's move from what `partitions` holds stored.
    pub fn ready(self, partitions: &Partitions) -> Prepared {
        let advances = self
            .ranges
            .iter()
            .map(|(p, (first, last))| Advance {
                partition: *p,
                stored: partitions.stored(*p),
                next: last + 1,
                first: *first,
            })
            .collect();
        Prepared {
            id: Uuid::now_v7(),
            batch: self,
            advances,
        }
    }
}

/// Runs every output's query (isolating the records a query fails on) and encodes
/// each output for COPY. `show`: rows printed per output (`--show`).
pub async fn transform(
    batch: Collecting,
    outputs: &[Output],
    show: usize,
) -> Result<Transformed, Error> {
    let started = Instant::now();
    let records = batch.builder.records();
    let (input, mut dead) = batch.builder.finish();
    let input_rows = input.num_rows();
    let transformed = transform_all(outputs, input).await?;
    let failed_rows = transformed.dead.len();
    dead.extend(transformed.dead);
    let mut prepared = Vec::with_capacity(outputs.len());
    for (output, rows) in outputs.iter().zip(transformed.rows) {
        if show > 0 && !rows.is_empty() {
            if outputs.len() > 1 {
                println!("output {}:", output.name);
            }
            show_rows(&rows, show);
        }
        let provenance = Provenance::new(transformed.input.clone(), &output.provenance_key);
        let columns = &output.table.columns;
        // Under the Kafka guard, each row with its record's rank.
        let encoded = match output.table.mode {
            Mode::Upsert(Guard::Kafka) => copy::encode(&provenance.ranked(&rows)?, columns)?,
            _ => copy::encode(&rows, columns)?,
        };
        prepared.push(OutputRows {
            rows,
            encoded,
            provenance,
        });
    }
    Ok(Transformed {
        records,
        ranges: batch.ranges,
        outputs: prepared,
        dead,
        input_rows,
        failed_rows,
        started,
    })
}

/// Every output's rows of a batch, from the input they were all computed on.
struct AllOutputs {
    input: RecordBatch,
    rows: Vec<Vec<RecordBatch>>,
    dead: Vec<DeadLetter>,
}

/// Runs every output's query over the batch. A record that any output's query
/// fails on is taken out of every output's input and becomes one dead letter, so
/// that the outputs agree on which records they took: replaying it later feeds
/// each output once. An output is run again only when another one failed on a
/// record it took (at most once per newly failing record; none in the usual case).
async fn transform_all(outputs: &[Output], input: RecordBatch) -> Result<AllOutputs, Error> {
    let mut input = input;
    let mut rows: Vec<Option<Vec<RecordBatch>>> = vec![None; outputs.len()];
    let mut excluded: Vec<usize> = vec![0; outputs.len()];
    let mut failed: HashSet<(i32, i64)> = HashSet::new();
    let mut dead = Vec::new();
    loop {
        // `input` holds every record but these.
        let before = failed.len();
        let mut new = false;
        for (i, output) in outputs.iter().enumerate() {
            if rows[i].is_some() {
                continue;
            }
            let (out, refused) = output.transform.run_isolating(input.clone()).await;
            excluded[i] = before + refused.len();
            for (row, reason) in refused {
                if failed.insert(positions(&row)[0]) {
                    new = true;
                    let reason = match outputs.len() {
                        1 => reason,
                        _ => format!("output {:?}: {reason}", output.name),
                    };
                    dead.push(DeadLetter::transform_failed(&row, &reason));
                }
            }
            rows[i] = Some(out);
        }
        if !new {
            break;
        }
        input = without(&input, &failed)?;
        for (i, r) in rows.iter_mut().enumerate() {
            if excluded[i] != failed.len() {
                *r = None;
            }
        }
    }
    Ok(AllOutputs {
        input,
        rows: rows.into_iter().map(Option::unwrap_or_default).collect(),
        dead,
    })
}

/// The (partition, offset) of each `events` row: unique within a batch.
fn positions(batch: &RecordBatch) -> Vec<(i32, i64)> {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::{Int32Type, Int64Type};
    let (Some(p), Some(o)) = (
        batch.column_by_name("partition"),
        batch.column_by_name("offset"),
    ) else {
        return vec![(-1, -1); batch.num_rows()];
    };
    let (p, o) = (p.as_primitive::<Int32Type>(), o.as_primitive::<Int64Type>());
    p.values()
        .iter()
        .copied()
        .zip(o.values().iter().copied())
        .collect()
}

/// The input without the records at `failed`.
fn without(input: &RecordBatch, failed: &HashSet<(i32, i64)>) -> Result<RecordBatch, Error> {
    use datafusion::arrow::array::BooleanArray;
    let keep: BooleanArray = positions(input)
        .iter()
        .map(|at| Some(!failed.contains(at)))
        .collect();
    Ok(datafusion::arrow::compute::filter_record_batch(
        input, &keep,
    )?)
}

/// `--show N`: the first N rows, like Spark's `df.show()`.
fn show_rows(output: &[RecordBatch], n: usize) {
    let mut left = n;
    let mut head = Vec::new();
    for b in output {
        if left == 0 {
            break;
        }
        let take = left.min(b.num_rows());
        head.push(b.slice(0, take));
        left -= take;
    }
    if let Ok(table) = datafusion::arrow::util::pretty::pretty_format_batches(&head) {
        println!("{table}");
    }
}
