//! The exactly-once commit of a batch, read top to bottom in one place.
//!
//! A batch is committed in three steps, and recovered from any crash between them:
//! 1. **Stage** the part file: written and fsynced under this instance's private
//!    staging directory, invisible to readers of the output directory.
//! 2. **One PostgreSQL transaction**: the rows (binary COPY into a staging table,
//!    then one upsert that isolates rows PostgreSQL refuses), the dead letters, each
//!    partition's offset moved *only if it still holds what this consumer last saw*
//!    (else another consumer took the partition: roll back, [`Outcome::Conflict`]),
//!    and the batch's row in the batch log. Then COMMIT.
//! 3. **Promote** the part file (a rename into the output directory) once the
//!    transaction committed; discard it when it did not.
//!
//! A commit whose answer was lost (the connection died during COMMIT) is retried;
//! the retry finds the offsets already moved, and the batch log says whether it
//! was this very batch that moved them. At start-up, [`Committer::recover`] settles
//! what a dead process left staged: files of batches in the log are promoted, the
//! others deleted (their records are read again, from the stored offsets).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use datafusion::arrow::array::BooleanArray;
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::record_batch::RecordBatch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

use crate::Error;
use crate::dead_letter::{self, DeadLetter, Provenance};
use crate::ledger::{self, Advance, BatchRecord};
use crate::retry::Retry;
use crate::sink::copy::{Encoded, RowAt};
use crate::sink::csv::{CsvSink, Staged, part_name};
use crate::sink::postgres::{self, PgError, PgSink};

/// How long a transaction under way may go on once the consumer is stopping.
const GRACE_ON_STOP: Duration = Duration::from_secs(5);
/// Longest wait between attempts of the file steps and the batch-log lookup.
const FILE_RETRY_MAX: Duration = Duration::from_secs(10);

/// One batch, ready to commit.
pub struct Batch<'a> {
    pub id: Uuid,
    /// The transform's output: the part file's rows.
    pub output: &'a [RecordBatch],
    /// The same rows encoded for COPY (rows the encoder refused are in it too).
    pub encoded: &'a Encoded,
    /// Records refused before the sink (decode and transform).
    pub dead_letters: &'a [DeadLetter],
    /// The input records behind the output rows (for rows PostgreSQL refuses).
    pub provenance: &'a Provenance,
    /// Each partition's move: from the stored offset to the next after the batch.
    pub advances: &'a [Advance],
    /// Records the batch covers (rows and dead letters).
    pub records: u64,
}

/// What a committed batch wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub rows_written: u64,
    /// Rows refused by the encoder or PostgreSQL, stored as dead letters.
    pub rejected_rows: u64,
    /// All dead letters of the batch (the batch's own plus the rejected rows).
    pub dead_letters: u64,
    /// The promoted part file (`None`: no rows, or left for recovery when stopping).
    pub part_file: Option<String>,
}

/// How a commit ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Committed(Committed),
    /// Another consumer moved an offset first: nothing was written; the records
    /// must be read again from the stored offsets.
    Conflict,
    /// The consumer is stopping; whatever is staged is settled at the next start.
    Stopped,
}

/// What a batch wrote, as its transaction counted it.
struct Figures {
    rows_written: u64,
    rejected_rows: u64,
    dead_letters: u64,
}

impl Figures {
    /// The figures a committed batch recorded (rows written, dead letters); the
    /// dead letters beyond the batch's own were refused rows.
    fn recorded((rows_written, dead_letters): (u64, u64), batch: &Batch<'_>) -> Self {
        let ours = batch.dead_letters.len() as u64;
        Self {
            rows_written,
            rejected_rows: dead_letters.saturating_sub(ours),
            dead_letters,
        }
    }
}

/// How the transaction itself ended, with the part file it staged.
enum Transaction {
    Committed {
        figures: Figures,
        staged: Option<Staged>,
    },
    /// Another writer moved an offset first (or our own COMMIT landed and its
    /// answer was lost: the batch log tells).
    Conflict { staged: Option<Staged> },
}

/// Commits batches to PostgreSQL and the output directory.
pub struct Committer {
    pg: PgSink,
    csv: CsvSink,
    max_backoff: Duration,
    retries: metrics::Counter,
}

impl Committer {
    /// `max_backoff` bounds the wait between attempts while PostgreSQL is away;
    /// `retries` counts those attempts.
    pub fn new(pg: PgSink, csv: CsvSink, max_backoff: Duration, retries: metrics::Counter) -> Self {
        Self {
            pg,
            csv,
            max_backoff,
            retries,
        }
    }

    /// Where rows, dead letters and offsets go.
    pub fn target(&self) -> &crate::sink::postgres::Target {
        self.pg.target()
    }

    /// `user@host:port/db` of the PostgreSQL session, for messages.
    pub fn postgres(&self) -> &str {
        self.pg.display()
    }

    /// Settles what dead processes left staged: files of committed batches are
    /// promoted, the others deleted. An instance whose database session still
    /// exists (its COMMIT may still land) is left for a later start. Returns
    /// (promoted, deleted).
    pub async fn recover(&mut self) -> Result<(usize, usize), Error> {
        let mut orphans = self.csv.orphans()?;
        let mut locked = Vec::new();
        for dead in orphans.instances() {
            if self.try_lock_instance(dead).await? {
                locked.push(dead);
            } else {
                warn!(
                    message = "A previous consumer's database session is still open; its staged files are left for a later start.",
                    instance = %dead
                );
                orphans.skip_instance(dead);
            }
        }
        let ids: Vec<Uuid> = orphans.files.iter().map(|(id, _)| *id).collect();
        let committed = if ids.is_empty() {
            Default::default()
        } else {
            ledger::committed(&*self.pg.client().await?, &ids)
                .await
                .map_err(PgError::from)?
        };
        let (promoted, deleted) = self.csv.resolve(orphans, &committed)?;
        if promoted + deleted > 0 {
            info!(
                message = "Resolved staged part files of a previous run.",
                promoted, deleted
            );
        }
        for dead in locked {
            let client = self.pg.client().await?;
            client
                .execute(
                    "SELECT pg_advisory_unlock($1)",
                    &[&ledger::locks::instance(dead)],
                )
                .await
                .map_err(PgError::from)?;
        }
        Ok((promoted, deleted))
    }

    /// Takes a dead instance's session lock; fails while its session still exists.
    async fn try_lock_instance(&mut self, instance: Uuid) -> Result<bool, PgError> {
        let client = self.pg.client().await?;
        let row = client
            .query_one(
                "SELECT pg_try_advisory_lock($1)",
                &[&ledger::locks::instance(instance)],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Commits one batch: stage, transaction, promote (see the module doc).
    /// Failures that heal by waiting are retried until `stop`; an `Err` is one that
    /// cannot heal (nothing of the batch was committed).
    pub async fn commit(
        &mut self,
        batch: &Batch<'_>,
        stop: &CancellationToken,
    ) -> Result<Outcome, Error> {
        let (pg, csv) = (&mut self.pg, &self.csv);
        let mut attempts = 0;
        let written = Retry::new("writing the batch", stop, self.max_backoff)
            .grace_on_stop(GRACE_ON_STOP)
            .counting(self.retries.clone())
            .run(async || {
                attempts += 1;
                // A failed attempt may have committed with its answer lost: never
                // run (and re-stage) a batch the log already holds.
                if attempts > 1
                    && let Some(recorded) = ledger::recorded(&*pg.client().await?, batch.id).await?
                {
                    let figures = Figures::recorded(recorded, batch);
                    let staged = csv.staged(batch.id);
                    return Ok(Transaction::Committed { figures, staged });
                }
                transaction(pg, csv, batch).await
            })
            .await;
        let written = match written {
            Ok(Some(t)) => t,
            // Stopping: a staged file is settled at the next start.
            Ok(None) => return Ok(Outcome::Stopped),
            // Left staged: an earlier attempt may have committed with its answer
            // lost, and the next start settles the file against the batch log.
            Err(e) => return Err(e),
        };
        let (figures, staged) = match written {
            Transaction::Committed { figures, staged } => (figures, staged),
            Transaction::Conflict { staged } => match self.recorded(batch.id, stop).await? {
                // The commit went through but its answer was lost.
                Some(Some(recorded)) => (Figures::recorded(recorded, batch), staged),
                Some(None) => {
                    if let Some(s) = staged {
                        self.csv.discard(s);
                    }
                    return Ok(Outcome::Conflict);
                }
                None => return Ok(Outcome::Stopped),
            },
        };
        // Committed: the file must appear. Retried until it does, or left to the
        // next start's recovery when stopping.
        let part_file = match &staged {
            Some(s) => {
                Retry::new("promoting the part file", stop, FILE_RETRY_MAX)
                    .run(async || csv_promote(&self.csv, s))
                    .await?
            }
            None => None,
        };
        Ok(Outcome::Committed(Committed {
            rows_written: figures.rows_written,
            rejected_rows: figures.rejected_rows,
            dead_letters: figures.dead_letters,
            part_file,
        }))
    }

    /// Whether a batch committed, and with which figures, asked until PostgreSQL
    /// answers: guessing "no" could delete the part file of a committed batch.
    /// `None` when stopping.
    async fn recorded(
        &mut self,
        id: Uuid,
        stop: &CancellationToken,
    ) -> Result<Option<Option<(u64, u64)>>, PgError> {
        let pg = &mut self.pg;
        Retry::new("checking whether the batch committed", stop, FILE_RETRY_MAX)
            .grace_on_stop(GRACE_ON_STOP)
            .run(async || {
                let client = pg.client().await?;
                Ok::<_, PgError>(ledger::recorded(&*client, id).await?)
            })
            .await
    }

    /// Records a partition's position outside its log; with `store = Some(from)`,
    /// also moves the stored offset from `from` to where reading resumes (in the
    /// same transaction, only if it still holds `from`). Returns false when another
    /// consumer moved the offset first; `None` when stopping.
    pub async fn record_gap(
        &mut self,
        gap: &ledger::Gap<'_>,
        store: Option<i64>,
        stop: &CancellationToken,
    ) -> Result<Option<bool>, PgError> {
        let pg = &mut self.pg;
        Retry::new("recording an offset gap", stop, self.max_backoff)
            .grace_on_stop(GRACE_ON_STOP)
            .run(async || {
                let client = pg.client().await?;
                let tx = client.transaction().await?;
                if let Some(from) = store {
                    let (g, t, p) = (gap.group, gap.topic, gap.partition);
                    if !ledger::move_stored(&tx, g, t, p, from, gap.resumed_at).await? {
                        return Ok(false);
                    }
                }
                ledger::record_gap(&tx, gap).await?;
                tx.commit().await?;
                Ok::<_, PgError>(true)
            })
            .await
    }

    /// The offsets PostgreSQL holds for `partitions`, retried while it is away.
    /// `None` when stopping.
    pub async fn stored_offsets(
        &mut self,
        partitions: &[i32],
        stop: &CancellationToken,
    ) -> Result<Option<HashMap<i32, i64>>, PgError> {
        let pg = &mut self.pg;
        Retry::new("reading stored offsets", stop, self.max_backoff)
            .grace_on_stop(GRACE_ON_STOP)
            .run(async || {
                let (group, topic) = (pg.target().group.clone(), pg.target().topic.clone());
                let client = pg.client().await?;
                Ok::<_, PgError>(ledger::load(client, &group, &topic, partitions).await?)
            })
            .await
    }
}

fn csv_promote(csv: &CsvSink, staged: &Staged) -> Result<String, crate::sink::csv::CsvError> {
    csv.promote(staged).map(|p| p.display().to_string())
}

/// Steps 1 and 2: the batch's one transaction, with the part file staged before
/// its COMMIT, once the rows PostgreSQL refuses are known (the file holds exactly
/// the rows written). `Err` means nothing was committed.
async fn transaction(
    pg: &mut PgSink,
    csv: &CsvSink,
    batch: &Batch<'_>,
) -> Result<Transaction, Error> {
    let (client, target, upsert) = pg.session().await?;
    let mut tx = client.transaction().await?;
    let encoded = batch.encoded;
    let mut refused: Vec<(RowAt, String)> = encoded
        .rejected
        .iter()
        .map(|r| (r.at, r.reason.clone()))
        .collect();
    let mut rows_written = 0u64;
    let mut not_written: HashSet<RowAt> = refused.iter().map(|(at, _)| *at).collect();
    if encoded.rows > 0 {
        let copy_refused = postgres::copy_rows(&mut tx, target, encoded).await?;
        let (written, merge_refused) = postgres::merge(&mut tx, upsert, encoded.rows).await?;
        rows_written = written;
        let staged_rows = encoded.rows as usize - copy_refused.len() - merge_refused.len();
        if (written as usize) < staged_rows {
            // Some rows were kept out by the guard or superseded: find which.
            let skipped = postgres::not_written(&tx, target).await?;
            not_written.extend(skipped.iter().map(|ord| encoded.rows_at[*ord as usize]));
        }
        let at = |(ord, reason): (i64, String)| (encoded.rows_at[ord as usize], reason);
        refused.extend(copy_refused.into_iter().chain(merge_refused).map(at));
        not_written.extend(refused.iter().map(|(at, _)| *at));
    }
    let staged = stage_written(csv, batch, &not_written)?;
    let rejected_rows = refused.len() as u64;
    let mut dead: Vec<DeadLetter> = batch.dead_letters.to_vec();
    dead.extend(
        batch
            .provenance
            .dead_letters(batch.output, refused, &target.topic),
    );
    if !dead.is_empty() {
        let table = &target.dead_letter_table;
        dead_letter::insert(&mut tx, table, &target.group, batch.id, &dead).await?;
    }
    for a in batch.advances {
        if !ledger::advance(&tx, &target.group, &target.topic, batch.id, a).await? {
            tx.rollback().await?;
            return Ok(Transaction::Conflict { staged });
        }
    }
    let part_file = staged.as_ref().map(|s| part_name(s.batch));
    let record = BatchRecord {
        id: batch.id,
        group: &target.group,
        topic: &target.topic,
        output_table: &target.table,
        part_file: part_file.as_deref(),
        records: batch.records,
        rows_written,
        dead_letters: dead.len() as u64,
        advances: batch.advances,
    };
    ledger::record_batch(&tx, &record).await?;
    tx.commit().await?;
    let figures = Figures {
        rows_written,
        rejected_rows,
        dead_letters: dead.len() as u64,
    };
    Ok(Transaction::Committed { figures, staged })
}

/// Stages the part file of the rows written: the output without the rows that
/// were refused, kept out by the guard or superseded.
fn stage_written(
    csv: &CsvSink,
    batch: &Batch<'_>,
    not_written: &HashSet<RowAt>,
) -> Result<Option<Staged>, Error> {
    let kept;
    let rows = if not_written.is_empty() {
        batch.output
    } else {
        kept = without(batch.output, not_written)?;
        &kept[..]
    };
    Ok(csv.stage(batch.id, rows)?)
}

/// The output without the rows at the given places.
fn without(
    output: &[RecordBatch],
    drop: &HashSet<RowAt>,
) -> Result<Vec<RecordBatch>, datafusion::arrow::error::ArrowError> {
    let mut out = Vec::with_capacity(output.len());
    for (b, batch) in output.iter().enumerate() {
        let keep: Vec<bool> = (0..batch.num_rows())
            .map(|row| !drop.contains(&(b, row)))
            .collect();
        out.push(filter_record_batch(batch, &BooleanArray::from(keep))?);
    }
    Ok(out)
}
