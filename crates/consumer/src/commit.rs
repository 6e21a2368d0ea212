//! The exactly-once commit of a batch, read top to bottom in one place.
//!
//! A batch is committed in three steps, and recovered from any crash between them:
//! 1. **Stage** each output's part file: written and fsynced under this
//!    instance's private staging directory, invisible to readers of the output
//!    directory.
//! 2. **One PostgreSQL transaction** for the whole batch: every output's rows
//!    (binary COPY into the output's staging table, then its upsert, append or
//!    merge statement, isolating rows PostgreSQL refuses), the dead letters, each
//!    partition's offset moved *only if it still holds what this consumer last saw*
//!    (else another consumer took the partition: roll back, [`Outcome::Conflict`]),
//!    and the batch's row in the batch log. Then COMMIT. So every output holds a
//!    batch, or none does: a merge adds a batch's partial aggregate exactly once.
//! 3. **Promote** the part files (a rename into each output's directory) once the
//!    transaction committed; discard them when it did not.
//!
//! A commit whose answer was lost (the connection died during COMMIT) is retried;
//! the retry finds the offsets already moved, and the batch log says whether it
//! was this very batch that moved them. At start-up, [`Committer::recover`] settles
//! what a dead process left staged: files of batches in the log are promoted, the
//! others deleted (their records are read again, from the stored offsets).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use datafusion::arrow::array::BooleanArray;
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::record_batch::RecordBatch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

use crate::Error;
use crate::batch::OutputRows;
use crate::dead_letter::{self, DeadLetter};
use crate::ledger::{self, Advance, BatchRecord};
use crate::retry::Retry;
use crate::sink::copy::{Encoded, RowAt};
use crate::sink::csv::{CsvSink, Staged, part_name};
use crate::sink::postgres::{self, Mode, PgError, PgSink, Table};

/// How long a transaction under way may go on once the consumer is stopping.
const GRACE_ON_STOP: Duration = Duration::from_secs(5);
/// Longest wait between attempts of the file steps and the batch-log lookup.
const FILE_RETRY_MAX: Duration = Duration::from_secs(10);

/// One batch, ready to commit.
pub struct Batch<'a> {
    pub id: Uuid,
    /// Each output's rows (part file rows, their COPY encoding, their provenance),
    /// in the order of the target's tables.
    pub outputs: &'a [OutputRows],
    /// Records refused before the sink (decode and transform).
    pub dead_letters: &'a [DeadLetter],
    /// Each partition's move: from the stored offset to the next after the batch.
    pub advances: &'a [Advance],
    /// Records the batch covers (rows and dead letters).
    pub records: u64,
}

/// What a committed batch wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// Per output, in output order.
    pub rows_written: Vec<u64>,
    /// Rows refused by the encoder or PostgreSQL, stored as dead letters.
    pub rejected_rows: u64,
    /// All dead letters of the batch (the batch's own plus the rejected rows).
    pub dead_letters: u64,
    /// The promoted part files (none: no rows, or left for recovery when stopping).
    pub part_files: Vec<String>,
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
    rows_written: Vec<u64>,
    rejected_rows: u64,
    dead_letters: u64,
}

impl Figures {
    /// The figures a committed batch recorded (rows written per output, dead
    /// letters); the dead letters beyond the batch's own were refused rows.
    fn recorded(recorded: &ledger::Recorded, batch: &Batch<'_>, tables: &[Table]) -> Self {
        let ours = batch.dead_letters.len() as u64;
        Self {
            rows_written: recorded.rows_of(tables.iter().map(|t| t.output.as_str())),
            rejected_rows: recorded.dead_letters.saturating_sub(ours),
            dead_letters: recorded.dead_letters,
        }
    }
}

/// A part file staged for output number `.0`.
type StagedFile = (usize, Staged);

/// How the transaction itself ended, with the part file it staged.
enum Transaction {
    Committed {
        figures: Figures,
        staged: Vec<StagedFile>,
    },
    /// Another writer moved an offset first (or our own COMMIT landed and its
    /// answer was lost: the batch log tells).
    Conflict { staged: Vec<StagedFile> },
}

/// Commits batches to PostgreSQL and the output directory.
pub struct Committer {
    pg: PgSink,
    /// Each output's part files, in output order (`None`: it writes none).
    csv: Vec<Option<CsvSink>>,
    max_backoff: Duration,
    retries: metrics::Counter,
}

impl Committer {
    /// `max_backoff` bounds the wait between attempts while PostgreSQL is away;
    /// `retries` counts those attempts.
    pub fn new(
        pg: PgSink,
        csv: Vec<Option<CsvSink>>,
        max_backoff: Duration,
        retries: metrics::Counter,
    ) -> Self {
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
        let sinks: Vec<&CsvSink> = self.csv.iter().flatten().collect();
        let mut orphans = sinks
            .iter()
            .map(|c| c.orphans())
            .collect::<Result<Vec<_>, _>>()?;
        let dead: BTreeSet<Uuid> = orphans.iter().flat_map(|o| o.instances()).collect();
        let mut locked = Vec::new();
        for instance in dead {
            if try_lock_instance(&mut self.pg, instance).await? {
                locked.push(instance);
            } else {
                warn!(
                    message = "A previous consumer's database session is still open; its staged files are left for a later start.",
                    instance = %instance
                );
                orphans.iter_mut().for_each(|o| o.skip_instance(instance));
            }
        }
        let ids: Vec<Uuid> = orphans
            .iter()
            .flat_map(|o| o.files.iter().map(|(id, _)| *id))
            .collect();
        let committed = if ids.is_empty() {
            Default::default()
        } else {
            ledger::committed(&*self.pg.client().await?, &ids)
                .await
                .map_err(PgError::from)?
        };
        let (mut promoted, mut deleted) = (0, 0);
        for (csv, orphans) in sinks.iter().zip(orphans) {
            let (p, d) = csv.resolve(orphans, &committed)?;
            (promoted, deleted) = (promoted + p, deleted + d);
        }
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
                    let figures = Figures::recorded(&recorded, batch, &pg.target().tables);
                    let staged = staged_files(csv, batch.id);
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
                Some(Some(recorded)) => {
                    let tables = &self.pg.target().tables;
                    (Figures::recorded(&recorded, batch, tables), staged)
                }
                Some(None) => {
                    for (i, s) in staged {
                        if let Some(csv) = &self.csv[i] {
                            csv.discard(s);
                        }
                    }
                    return Ok(Outcome::Conflict);
                }
                None => return Ok(Outcome::Stopped),
            },
        };
        // Committed: the files must appear. Retried until they do, or left to the
        // next start's recovery when stopping.
        let mut part_files = Vec::new();
        for (i, s) in &staged {
            let Some(csv) = &self.csv[*i] else { continue };
            let promoted = Retry::new("promoting the part file", stop, FILE_RETRY_MAX)
                .run(async || csv_promote(csv, s))
                .await?;
            match promoted {
                Some(path) => part_files.push(path),
                None => break,
            }
        }
        Ok(Outcome::Committed(Committed {
            rows_written: figures.rows_written,
            rejected_rows: figures.rejected_rows,
            dead_letters: figures.dead_letters,
            part_files,
        }))
    }

    /// Whether a batch committed, and with which figures, asked until PostgreSQL
    /// answers: guessing "no" could delete the part file of a committed batch.
    /// `None` when stopping.
    async fn recorded(
        &mut self,
        id: Uuid,
        stop: &CancellationToken,
    ) -> Result<Option<Option<ledger::Recorded>>, PgError> {
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

/// Takes a dead instance's session lock; fails while its session still exists.
async fn try_lock_instance(pg: &mut PgSink, instance: Uuid) -> Result<bool, PgError> {
    let client = pg.client().await?;
    let row = client
        .query_one(
            "SELECT pg_try_advisory_lock($1)",
            &[&ledger::locks::instance(instance)],
        )
        .await?;
    Ok(row.get(0))
}

fn csv_promote(csv: &CsvSink, staged: &Staged) -> Result<String, crate::sink::csv::CsvError> {
    csv.promote(staged).map(|p| p.display().to_string())
}

/// The part files of a batch still staged, per output.
fn staged_files(csv: &[Option<CsvSink>], batch: Uuid) -> Vec<StagedFile> {
    csv.iter()
        .enumerate()
        .filter_map(|(i, c)| Some((i, c.as_ref()?.staged(batch)?)))
        .collect()
}

/// Steps 1 and 2: the batch's one transaction, every output's rows in it, each
/// output's part file staged before its COMMIT, once the rows PostgreSQL refuses
/// are known (a file holds exactly the rows written). `Err` means nothing was
/// committed.
async fn transaction(
    pg: &mut PgSink,
    csv: &[Option<CsvSink>],
    batch: &Batch<'_>,
) -> Result<Transaction, Error> {
    let (client, target, writes) = pg.session().await?;
    let mut tx = client.transaction().await?;
    let mut dead: Vec<DeadLetter> = batch.dead_letters.to_vec();
    let (mut staged, mut rows_written, mut rejected_rows) = (Vec::new(), Vec::new(), 0);
    let tables = target.tables.iter().zip(writes).zip(batch.outputs);
    for (i, ((table, write), out)) in tables.enumerate() {
        let written = write_output(&mut tx, table, write, &out.encoded).await?;
        if let Some(sink) = &csv[i]
            && let Some(s) = stage_written(sink, batch.id, &out.rows, &written.not_written)?
        {
            staged.push((i, s));
        }
        rejected_rows += written.refused.len() as u64;
        let refused = match target.tables.len() {
            1 => written.refused,
            _ => written
                .refused
                .into_iter()
                .map(|(at, r)| (at, format!("output {:?}: {r}", table.output)))
                .collect(),
        };
        dead.extend(
            out.provenance
                .dead_letters(&out.rows, refused, &target.topic),
        );
        rows_written.push(written.rows);
    }
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
    let part_file = staged.first().map(|(_, s)| part_name(s.batch));
    let tables: Vec<&str> = target.tables.iter().map(|t| t.name.as_str()).collect();
    let record = BatchRecord {
        id: batch.id,
        group: &target.group,
        topic: &target.topic,
        output_table: &tables.join(", "),
        part_file: part_file.as_deref(),
        records: batch.records,
        rows_written: rows_written.iter().sum(),
        per_output: target
            .tables
            .iter()
            .map(|t| t.output.as_str())
            .zip(rows_written.iter().copied())
            .collect(),
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

/// What writing one output's rows did.
struct Written {
    rows: u64,
    /// Rows refused by the encoder or PostgreSQL, with the reason.
    refused: Vec<(RowAt, String)>,
    /// Rows not in the table as staged: refused, kept out by the guard, or
    /// superseded in the batch (upsert). The part file leaves them out.
    not_written: HashSet<RowAt>,
}

/// One output's rows into its table: COPY into its stage, then its write
/// statement, both isolating the rows PostgreSQL refuses.
async fn write_output(
    tx: &mut tokio_postgres::Transaction<'_>,
    table: &Table,
    write: &str,
    encoded: &Encoded,
) -> Result<Written, Error> {
    let mut refused: Vec<(RowAt, String)> = encoded
        .rejected
        .iter()
        .map(|r| (r.at, r.reason.clone()))
        .collect();
    let mut not_written: HashSet<RowAt> = refused.iter().map(|(at, _)| *at).collect();
    if encoded.rows == 0 {
        return Ok(Written {
            rows: 0,
            refused,
            not_written,
        });
    }
    let copy_refused = postgres::copy_rows(tx, table, encoded).await?;
    let (rows, write_refused) = postgres::write_rows(tx, write, encoded.rows).await?;
    let staged_rows = encoded.rows as usize - copy_refused.len() - write_refused.len();
    if matches!(table.mode, Mode::Upsert(_)) && (rows as usize) < staged_rows {
        // Some rows were kept out by the guard or superseded: find which.
        let skipped = postgres::not_written(tx, table).await?;
        not_written.extend(skipped.iter().map(|ord| encoded.rows_at[*ord as usize]));
    }
    let at = |(ord, reason): (i64, String)| (encoded.rows_at[ord as usize], reason);
    refused.extend(copy_refused.into_iter().chain(write_refused).map(at));
    not_written.extend(refused.iter().map(|(at, _)| *at));
    Ok(Written {
        rows,
        refused,
        not_written,
    })
}

/// Stages the part file of the rows written: the output without the rows that
/// were refused, kept out by the guard or superseded.
fn stage_written(
    csv: &CsvSink,
    batch: Uuid,
    rows: &[RecordBatch],
    not_written: &HashSet<RowAt>,
) -> Result<Option<Staged>, Error> {
    let kept;
    let rows = if not_written.is_empty() {
        rows
    } else {
        kept = without(rows, not_written)?;
        &kept[..]
    };
    Ok(csv.stage(batch, rows)?)
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
