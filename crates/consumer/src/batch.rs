//! One micro-batch: collected record by record, then prepared for its commit
//! (transformed, encoded for COPY, each partition's move computed).

use std::collections::BTreeMap;
use std::time::Instant;

use datafusion::arrow::record_batch::RecordBatch;
use uuid::Uuid;

use crate::Error;
use crate::config::Config;
use crate::dead_letter::{DeadLetter, Provenance};
use crate::decode::BatchBuilder;
use crate::ledger::Advance;
use crate::partitions::Partitions;
use crate::sink::copy::{self, Encoded};
use crate::sink::postgres::{Guard, Target};
use crate::transform::Transform;

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

/// A collected batch, transformed and encoded: what the commit needs, and the
/// figures the log line reports.
pub struct Prepared {
    pub id: Uuid,
    pub records: u64,
    pub output: Vec<RecordBatch>,
    pub encoded: Encoded,
    pub dead: Vec<DeadLetter>,
    pub provenance: Provenance,
    pub advances: Vec<Advance>,
    pub input_rows: usize,
    pub output_rows: usize,
    pub failed_rows: usize,
    pub started: Instant,
}

/// Runs the transform (isolating rows it fails on), encodes the output for
/// COPY, and says how far each partition moves.
pub async fn prepare(
    batch: Collecting,
    transform: &Transform,
    target: &Target,
    config: &Config,
    partitions: &Partitions,
) -> Result<Prepared, Error> {
    let started = Instant::now();
    let records = batch.builder.records();
    let (input, mut dead) = batch.builder.finish();
    let input_rows = input.num_rows();
    let provenance = Provenance::new(input.clone(), &config.key_column);
    let (output, failed) = transform.run_isolating(input).await;
    dead.extend(
        failed
            .iter()
            .map(|(row, reason)| DeadLetter::transform_failed(row, reason)),
    );
    let output_rows: usize = output.iter().map(RecordBatch::num_rows).sum();
    if config.show > 0 && output_rows > 0 {
        show(&output, config.show);
    }
    // The table's columns: under the Kafka guard, each row with its record's rank.
    let encoded = match target.guard {
        Guard::Kafka => copy::encode(&provenance.ranked(&output)?, &target.columns)?,
        Guard::Column(_) => copy::encode(&output, &target.columns)?,
    };
    let advances = batch
        .ranges
        .iter()
        .map(|(p, (first, last))| Advance {
            partition: *p,
            stored: partitions.stored(*p),
            next: last + 1,
            first: *first,
        })
        .collect();
    Ok(Prepared {
        id: Uuid::now_v7(),
        records,
        output,
        encoded,
        dead,
        provenance,
        advances,
        input_rows,
        output_rows,
        failed_rows: failed.len(),
        started,
    })
}

/// `--show N`: the first N rows, like Spark's `df.show()`.
fn show(output: &[RecordBatch], n: usize) {
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
