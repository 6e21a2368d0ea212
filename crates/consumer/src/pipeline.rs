//! The micro-batch loop: collect, transform, write, commit, repeat.
//!
//! While one batch is being written, the loop keeps polling Kafka and decodes the
//! next batch (pausing the partitions once that one is full), so the consumer stays
//! in its group however long PostgreSQL takes, and fetching overlaps writing.
//! ARCHITECTURE.md describes the offset protocol this loop implements.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{Int32Type, Int64Type, TimestampMillisecondType};
use datafusion::arrow::record_batch::RecordBatch;
use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

use crate::Error;
use crate::config::Config;
use crate::decode::{BatchBuilder, DeadLetter, Origin};
use crate::offsets::Advance;
use crate::sink::copy;
use crate::sink::csv::{CsvSink, Staged, part_name};
use crate::sink::postgres::{BatchWrite, Outcome, PgSink, Target};
use crate::sink::{self, column_ident, table_ident};
use crate::source::{self, KafkaConsumer, OffsetOracle, PipelineContext};
use crate::telemetry::{Metrics, Readiness};
use crate::transform::Transform;

/// How long a write may go on with the next batch full and nobody polling before
/// the partitions are paused and polling resumes. Well under `max.poll.interval.ms`
/// and short enough that a rebalance waits at most this long for us.
const HOLD_BEFORE_PAUSE: Duration = Duration::from_secs(3);

/// How often gauges and readiness are refreshed while nothing else happens.
const OBSERVE_EVERY: Duration = Duration::from_secs(1);

/// What a run did, for the final log line and the tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunSummary {
    pub batches: u64,
    pub records: u64,
    pub rows_written: u64,
    pub dead_letters: u64,
}

/// Runs the consumer until `shutdown` resolves (or, with `--available-now`, until
/// everything present at start-up is committed).
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<RunSummary, Error> {
    let stop = CancellationToken::new();
    // Its own task: the rebalance callback may block the loop's thread (waiting for
    // PostgreSQL), and a signal must still be noticed then.
    let trigger = stop.clone();
    let watcher = tokio::spawn(async move {
        shutdown.await;
        trigger.cancel();
    });
    let result = run_until(config, stop).await;
    watcher.abort();
    result
}

/// What the configuration gives once checked without any service: identifiers
/// validated and quoted, the transform planned, the output columns.
pub(crate) struct Checked {
    pub table: String,
    pub dead_letter_table: String,
    pub key: String,
    pub transform: Transform,
    pub columns: Vec<sink::Column>,
}

/// Checks names and plans the SQL; shared by the pipeline and `consumer validate`.
pub(crate) async fn check(config: &Config) -> Result<Checked, Error> {
    let table = table_ident(&config.table).map_err(Error::Config)?;
    let dead_letter_table = table_ident(&config.dead_letter_table).map_err(Error::Config)?;
    let key = column_ident(&config.key_column).map_err(Error::Config)?;
    let transform = Transform::new(&config.sql()?).await?;
    let columns = sink::columns(&transform.output_schema()).map_err(Error::Config)?;
    if !columns.iter().any(|c| c.name == config.key_column) {
        return Err(Error::Config(format!(
            "the transform's output has no key column {:?} (columns: {}); \
             select it or set --key-column",
            config.key_column,
            columns
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(Checked {
        table,
        dead_letter_table,
        key,
        transform,
        columns,
    })
}

async fn run_until(config: Config, stop: CancellationToken) -> Result<RunSummary, Error> {
    let started = Instant::now();
    // Everything that can be checked without a service comes first.
    let Checked {
        table,
        dead_letter_table,
        key,
        transform,
        columns,
    } = check(&config).await?;
    let instance = Uuid::new_v4();
    let csv = CsvSink::open(&config.output_dir, instance)?;
    let readiness = Readiness::new(&config)?;
    if let Some(addr) = config.metrics_addr {
        let handle = common::telemetry::install(Duration::from_secs(30))?;
        let bound = common::telemetry::serve(addr, handle, readiness.check(), stop.clone()).await?;
        info!(message = "Serving /metrics, /healthz and /readyz.", addr = %bound);
    }
    let metrics = Metrics::new(&config.topic);

    let probe = common::kafka::client_config(&config.brokers, &config.kafka_options)?;
    let partitions =
        common::kafka::check_reachable(&probe, &config.topic, config.connect_timeout).await?;
    if partitions.is_none() {
        return Err(Error::Config(format!(
            "topic {:?} does not exist on {} (the producer creates it; or create it with --partitions)",
            config.topic, config.brokers
        )));
    }

    let target = Target {
        table,
        key,
        columns: columns.clone(),
        dead_letter_table,
        group: config.group.clone(),
        topic: config.topic.clone(),
    };
    let mut pg = PgSink::connect(
        &config.database_url,
        config.connect_timeout,
        target,
        instance,
    )
    .await?;

    // Resolve what dead processes left staged: promote committed batches' files.
    let mut orphans = csv.orphans()?;
    let mut locked = Vec::new();
    for dead in orphans.instances() {
        if pg.try_lock_instance(dead).await? {
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
        HashSet::new()
    } else {
        pg.committed(&ids).await?
    };
    let (promoted, deleted) = csv.resolve(orphans, &committed)?;
    if promoted + deleted > 0 {
        info!(
            message = "Resolved staged part files of a previous run.",
            promoted, deleted
        );
    }
    for dead in locked {
        pg.unlock_instance(dead).await?;
    }

    let oracle = OffsetOracle::start(
        sink::postgres::parse_url(&config.database_url, config.connect_timeout)?,
        config.group.clone(),
        config.topic.clone(),
        config.connect_timeout,
    );
    let context = PipelineContext::new(
        config.topic.clone(),
        config.starting_offsets,
        oracle,
        stop.clone(),
        config.connect_timeout,
    );
    let consumer = source::create(&config, context)?;
    info!(
        message = "Consumer started.",
        topic = %config.topic,
        group = %config.group,
        postgres = %pg.display(),
        output_dir = %config.output_dir.display(),
        available_now = config.available_now,
        startup_ms = started.elapsed().as_millis() as u64
    );

    let mut state = LoopState {
        config: &config,
        consumer: &consumer,
        generation: 0,
        assigned: HashMap::new(),
        committed: HashMap::new(),
        consumed: HashMap::new(),
        eof: HashSet::new(),
        targets: HashMap::new(),
        metrics,
        readiness: &readiness,
    };
    let mut sinks = Sinks {
        pg: &mut pg,
        csv: &csv,
        transform: &transform,
        columns: &columns,
    };
    let mut summary = RunSummary::default();
    let result = state.run(&mut sinks, &stop, &mut summary).await;
    consumer.unsubscribe();
    info!(
        message = "Consumer stopped.",
        batches = summary.batches,
        records = summary.records,
        rows_written = summary.rows_written,
        dead_letters = summary.dead_letters
    );
    result.map(|()| summary)
}

struct Sinks<'a> {
    pg: &'a mut PgSink,
    csv: &'a CsvSink,
    transform: &'a Transform,
    columns: &'a [sink::Column],
}

/// One micro-batch being collected.
struct Collecting {
    builder: BatchBuilder,
    /// Per partition: first and last offset taken.
    ranges: BTreeMap<i32, (i64, i64)>,
    started: Instant,
}

impl Collecting {
    fn new() -> Self {
        Self {
            builder: BatchBuilder::new(),
            ranges: BTreeMap::new(),
            started: Instant::now(),
        }
    }

    fn full(&self, config: &Config) -> bool {
        self.builder.records() >= config.max_batch_records
            || self.builder.bytes() >= config.max_batch_bytes
    }
}

struct LoopState<'a> {
    config: &'a Config,
    consumer: &'a KafkaConsumer,
    generation: u64,
    /// Partitions this consumer owns, as of `generation`.
    assigned: HashMap<i32, Option<i64>>,
    /// The next offset PostgreSQL holds for each owned partition, as far as we know.
    committed: HashMap<i32, Option<i64>>,
    /// The next offset after the last message taken, per partition.
    consumed: HashMap<i32, i64>,
    /// `--available-now`: partitions that reached their end.
    eof: HashSet<i32>,
    /// `--available-now`: the high watermark first seen per partition.
    targets: HashMap<i32, i64>,
    metrics: Metrics,
    readiness: &'a Readiness,
}

impl LoopState<'_> {
    async fn run(
        &mut self,
        sinks: &mut Sinks<'_>,
        stop: &CancellationToken,
        summary: &mut RunSummary,
    ) -> Result<(), Error> {
        let mut batch = Collecting::new();
        // Wakes an idle loop so that gauges and readiness stay fresh.
        let mut tick = tokio::time::interval(OBSERVE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            if stop.is_cancelled() {
                return Ok(());
            }
            if self.sync_generation() {
                batch = Collecting::new();
            }
            let records = batch.builder.records();
            let finished = self.config.available_now && self.all_done();
            let due = records > 0 && batch.started.elapsed() >= self.config.trigger_interval;
            if records > 0 && (batch.full(self.config) || due || finished) {
                batch = self.process(batch, sinks, stop, summary).await?;
                continue;
            }
            if finished {
                return Ok(());
            }
            let deadline = batch.started + self.config.trigger_interval;
            // `--available-now` re-checks the watermarks while nothing arrives.
            let wake = match (records > 0, self.config.available_now) {
                (true, true) => deadline.min(Instant::now() + Duration::from_millis(100)),
                (true, false) => deadline,
                (false, _) => Instant::now() + Duration::from_millis(100),
            };
            tokio::select! {
                biased;
                () = stop.cancelled() => return Ok(()),
                () = tokio::time::sleep_until(wake.into()),
                    if records > 0 || self.config.available_now => {}
                // Before `recv`: a steady stream must not starve the refresh.
                _ = tick.tick() => self.observe(),
                m = self.consumer.recv() => self.take(&mut batch, m)?,
            }
        }
    }

    /// Picks up a rebalance. Returns true when the batch being collected must be
    /// dropped (it was read under the previous assignment).
    fn sync_generation(&mut self) -> bool {
        let generation = self.consumer.context().generation();
        if generation == self.generation {
            return false;
        }
        let a = self.consumer.context().assignment();
        self.generation = a.generation;
        self.committed = a.stored.clone();
        self.assigned = a.stored;
        self.consumed.clear();
        self.eof.clear();
        true
    }

    /// Takes one polled message (or event) into `batch`.
    fn take(
        &mut self,
        batch: &mut Collecting,
        message: Result<BorrowedMessage<'_>, KafkaError>,
    ) -> Result<(), Error> {
        if self.sync_generation() {
            *batch = Collecting::new();
        }
        match message {
            Ok(m) => {
                let p = m.partition();
                if !self.assigned.contains_key(&p) || m.topic() != self.config.topic {
                    return Ok(()); // not ours (any more): its owner reads it
                }
                let floor = batch
                    .ranges
                    .get(&p)
                    .map(|r| r.1 + 1)
                    .max(self.committed.get(&p).copied().flatten());
                if floor.is_some_and(|f| m.offset() < f) {
                    return Ok(()); // already committed: a replay after a rebalance
                }
                if batch.builder.records() == 0 {
                    // The trigger interval counts from the batch's first record.
                    batch.started = Instant::now();
                }
                self.metrics.records.increment(1);
                self.metrics
                    .bytes
                    .increment((m.payload_len() + m.key().map_or(0, <[u8]>::len)) as u64);
                batch.builder.push(
                    &Origin {
                        topic: m.topic(),
                        partition: p,
                        offset: m.offset(),
                        timestamp: m.timestamp().to_millis(),
                        key: m.key(),
                    },
                    m.payload(),
                );
                batch
                    .ranges
                    .entry(p)
                    .and_modify(|r| r.1 = m.offset())
                    .or_insert((m.offset(), m.offset()));
                self.consumed.insert(p, m.offset() + 1);
                self.eof.remove(&p);
                Ok(())
            }
            Err(KafkaError::PartitionEOF(p)) => {
                self.eof.insert(p);
                Ok(())
            }
            Err(KafkaError::MessageConsumptionFatal(code)) => {
                Err(Error::KafkaRuntime(format!("fatal consumer error: {code}")))
            }
            Err(e) => {
                // Transport errors and the like: librdkafka retries by itself.
                warn!(message = "Kafka consumer error.", error = %e);
                Ok(())
            }
        }
    }

    /// `--available-now`: every owned partition has been read up to the high
    /// watermark first seen for it. Watermarks come from fetch responses (cached by
    /// librdkafka), which every broker answers correctly, unlike ListOffsets.
    fn all_done(&mut self) -> bool {
        if self.generation == 0 || !self.consumer.context().settled() {
            return false;
        }
        let partitions: Vec<i32> = self.assigned.keys().copied().collect();
        partitions.into_iter().all(|p| {
            let Some((low, high)) = source::cached_watermarks(self.consumer, &self.config.topic, p)
            else {
                return false;
            };
            let target = *self.targets.entry(p).or_insert(high);
            let position = self
                .consumed
                .get(&p)
                .copied()
                .or_else(|| self.committed.get(&p).copied().flatten());
            // EOF also covers trailing transaction markers, which are never delivered.
            self.eof.contains(&p)
                || match position {
                    Some(position) => position >= target,
                    // Nothing stored and nothing read: done only if the partition is empty.
                    None => low >= target,
                }
        })
    }

    /// Transforms and commits one batch. Returns the next batch, collected meanwhile.
    async fn process(
        &mut self,
        batch: Collecting,
        sinks: &mut Sinks<'_>,
        stop: &CancellationToken,
        summary: &mut RunSummary,
    ) -> Result<Collecting, Error> {
        let started = Instant::now();
        let records = batch.builder.records();
        let ranges = batch.ranges;
        let (input, mut dead) = batch.builder.finish();
        let input_rows = input.num_rows();
        let (output, failed) = sinks.transform.run_isolating(input).await;
        dead.extend(
            failed
                .iter()
                .map(|(row, reason)| transform_dead_letter(row, reason)),
        );
        let output_rows: usize = output.iter().map(RecordBatch::num_rows).sum();
        if self.config.show > 0 && output_rows > 0 {
            show(&output, self.config.show);
        }
        let encoded = copy::encode(&output, sinks.columns)?;
        let id = Uuid::now_v7();
        let staged = stage_with_retries(sinks.csv, id, &output, stop).await;
        let Some(staged) = staged else {
            return Ok(Collecting::new()); // stopping
        };
        let advances: Vec<Advance> = ranges
            .iter()
            .map(|(p, (first, last))| Advance {
                partition: *p,
                expected: self.committed.get(p).copied().flatten(),
                next: last + 1,
                first: *first,
            })
            .collect();
        let part_file = staged.as_ref().map(|s| part_name(s.batch));
        let write = BatchWrite {
            id,
            encoded: &encoded,
            dead_letters: &dead,
            advances: &advances,
            part_file: part_file.as_deref(),
            records,
        };

        // Keep polling (and collecting the next batch) while the batch is written.
        // Once the next batch is full, polling stops and librdkafka's bounded queue
        // holds what arrives; only a write that outlasts HOLD_BEFORE_PAUSE pauses
        // the partitions, so that polling (and the group membership it keeps alive)
        // can go on. Pausing is the exception because librdkafka drops what it
        // prefetched when a partition is paused, and fetches it again on resume.
        let mut next = Collecting::new();
        let generation = self.generation;
        let mut paused: Option<TopicPartitionList> = None;
        let mut full_since: Option<Instant> = None;
        // Pausing was attempted for the current assignment (whether it worked or
        // not: a failed pause goes back to polling rather than spinning).
        let mut pause_tried = false;
        let mut tick = tokio::time::interval(OBSERVE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let write_started = Instant::now();
        let retries = self.metrics.postgres_retries.clone();
        let outcome = {
            let attempt = write_with_retries(
                sinks.pg,
                &write,
                stop,
                self.config.max_retry_backoff,
                &retries,
            );
            tokio::pin!(attempt);
            loop {
                let holding = !pause_tried && full_since.is_some();
                let pause_at = full_since.unwrap_or_else(Instant::now) + HOLD_BEFORE_PAUSE;
                tokio::select! {
                    biased;
                    outcome = &mut attempt => break outcome,
                    () = tokio::time::sleep_until(pause_at.into()), if holding => {
                        paused = self.pause();
                        pause_tried = true;
                    }
                    _ = tick.tick() => self.observe(),
                    m = self.consumer.recv(), if !holding => {
                        let seen = self.generation;
                        self.take(&mut next, m)?;
                        if self.generation != seen {
                            // A rebalance: `next` was reset and the new assignment is
                            // not paused; hold (and pause) afresh when it fills.
                            full_since = None;
                            paused = None;
                            pause_tried = false;
                        }
                        if full_since.is_none() && next.full(self.config) {
                            full_since = Some(Instant::now());
                        }
                    }
                }
            }
        };
        self.metrics
            .commit_duration
            .record(write_started.elapsed().as_secs_f64());
        if let Some(tpl) = paused {
            // librdkafka resumes at the next message not yet handed to us.
            self.consumer
                .resume(&tpl)
                .map_err(|e| Error::KafkaRuntime(format!("cannot resume partitions: {e}")))?;
        }
        let outcome = match outcome {
            Some(Outcome::Conflict) => match committed_with_retries(sinks.pg, id, stop).await {
                // The commit went through but its answer was lost: take the figures
                // the batch recorded (dead letters beyond ours were refused rows).
                Some(Some((rows_written, dead_letters))) => Outcome::Committed {
                    rows_written,
                    rejected_rows: dead_letters.saturating_sub(dead.len() as u64),
                    dead_letters,
                },
                Some(None) => Outcome::Conflict,
                None => return Ok(next), // stopping: the staged file is resolved at the next start
            },
            Some(o) => o,
            None => return Ok(next), // stopping; a staged file is resolved at the next start
        };
        match outcome {
            Outcome::Committed {
                rows_written,
                rejected_rows,
                dead_letters,
            } => {
                let file = match &staged {
                    Some(s) => Some(promote_with_retries(sinks.csv, s, stop).await),
                    None => None,
                };
                for a in &advances {
                    if self.assigned.contains_key(&a.partition) {
                        self.committed.insert(a.partition, Some(a.next));
                    }
                }
                if self.generation != generation {
                    // Partitions were re-assigned while we wrote, positioned at offsets
                    // read before this commit landed: what `next` holds may overlap the
                    // batch just committed. Drop it, and seek every owned partition back
                    // to what PostgreSQL now holds: librdkafka's fetch position is past
                    // what `next` held, and those records must be read again.
                    next = Collecting::new();
                    self.seek_to_stored(sinks.pg, stop).await;
                }
                self.commit_to_kafka(&advances);
                let elapsed = started.elapsed();
                let filtered = input_rows.saturating_sub(output_rows + failed.len());
                self.metrics.batches.increment(1);
                self.metrics.batch_duration.record(elapsed.as_secs_f64());
                self.metrics.rows_written.increment(rows_written);
                self.metrics.rows_filtered.increment(filtered as u64);
                self.metrics.dead_letters(
                    dead.iter()
                        .map(|d| d.stage)
                        .chain((0..rejected_rows).map(|_| "sink")),
                );
                self.metrics.committed_now();
                self.observe();
                summary.batches += 1;
                summary.records += records;
                summary.rows_written += rows_written;
                summary.dead_letters += dead_letters;
                info!(
                    message = "Batch committed.",
                    batch = %id,
                    records,
                    rows_out = output_rows,
                    rows_written,
                    filtered,
                    dead_letters,
                    rejected_rows,
                    partitions = %describe_ranges(&advances),
                    part_file = file.flatten().as_deref().unwrap_or("-"),
                    duration_ms = elapsed.as_millis() as u64,
                    rows_per_s = (records as f64 / elapsed.as_secs_f64().max(1e-6)).round() as u64,
                );
                Ok(next)
            }
            Outcome::Conflict => {
                if let Some(s) = staged {
                    sinks.csv.discard(s);
                }
                warn!(
                    message = "Another consumer moved the offsets first; batch dropped, rewinding to the stored offsets.",
                    batch = %id,
                    partitions = %describe_ranges(&advances)
                );
                self.rewind(sinks.pg, stop).await;
                Ok(Collecting::new())
            }
        }
    }

    /// Refreshes the per-partition gauges and the readiness flag (on the one-second
    /// tick and after each commit).
    fn observe(&mut self) {
        let settled = self.generation > 0 && self.consumer.context().settled();
        self.readiness.set_assigned(settled);
        if !settled {
            return;
        }
        let owned = self
            .assigned
            .keys()
            .map(|p| {
                let stored = self.committed.get(p).copied().flatten();
                let marks = source::cached_watermarks(self.consumer, &self.config.topic, *p);
                (*p, (stored, marks))
            })
            .collect();
        self.metrics.partitions(&owned);
    }

    fn pause(&self) -> Option<TopicPartitionList> {
        let tpl = self.consumer.assignment().ok()?;
        self.consumer.pause(&tpl).ok()?;
        Some(tpl)
    }

    /// Re-reads the stored offsets of the owned partitions and seeks to them. After
    /// a rebalance there is nothing to do: the new assignment starts at stored offsets.
    async fn rewind(&mut self, pg: &mut PgSink, stop: &CancellationToken) {
        if self.sync_generation() {
            return;
        }
        self.seek_to_stored(pg, stop).await;
    }

    /// Seeks every owned partition to the offset PostgreSQL holds for it (or the
    /// starting position when it holds none).
    async fn seek_to_stored(&mut self, pg: &mut PgSink, stop: &CancellationToken) {
        let partitions: Vec<i32> = self.assigned.keys().copied().collect();
        let max = self.config.max_retry_backoff;
        let Some(stored) = retry("reading stored offsets", stop, max, async || {
            pg.load_offsets(&partitions).await
        })
        .await
        else {
            return;
        };
        for p in partitions {
            let offset = match stored.get(&p) {
                Some(o) => Offset::Offset(*o),
                None => self.config.starting_offsets.offset(),
            };
            if let Err(e) =
                self.consumer
                    .seek(&self.config.topic, p, offset, Duration::from_secs(10))
            {
                // Most likely revoked meanwhile: the next assignment positions it.
                warn!(message = "Cannot seek partition.", partition = p, error = %e);
            }
            self.committed.insert(p, stored.get(&p).copied());
        }
        self.consumed.clear();
    }

    /// Advisory: lets standard lag tools see the progress. PostgreSQL has the truth.
    fn commit_to_kafka(&self, advances: &[Advance]) {
        let mut tpl = TopicPartitionList::new();
        for a in advances
            .iter()
            .filter(|a| self.assigned.contains_key(&a.partition))
        {
            let _ =
                tpl.add_partition_offset(&self.config.topic, a.partition, Offset::Offset(a.next));
        }
        if tpl.count() > 0 {
            let _ = self.consumer.commit(&tpl, CommitMode::Async);
        }
    }
}

/// Writes the batch, retrying with backoff until it commits, conflicts, or the
/// consumer stops (`None`). An attempt under way when stopping gets a short grace.
async fn write_with_retries(
    pg: &mut PgSink,
    write: &BatchWrite<'_>,
    stop: &CancellationToken,
    max_backoff: Duration,
    retries: &metrics::Counter,
) -> Option<Outcome> {
    let mut delay = Duration::from_millis(200);
    let mut attempt = 1;
    loop {
        let result = tokio::select! {
            biased;
            r = pg.write(write) => r,
            () = async { stop.cancelled().await; tokio::time::sleep(Duration::from_secs(5)).await } => return None,
        };
        match result {
            Ok(outcome) => return Some(outcome),
            Err(e) => {
                retries.increment(1);
                pg.failed(&e, attempt, delay);
                tokio::select! {
                    () = stop.cancelled() => return None,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(max_backoff);
                attempt += 1;
            }
        }
    }
}

/// Runs `op` until it succeeds, with exponential backoff (200 ms doubling up to
/// `max`) and a log line per failure. `None` when the consumer stops first.
async fn retry<T, E: std::fmt::Display>(
    what: &str,
    stop: &CancellationToken,
    max: Duration,
    mut op: impl AsyncFnMut() -> Result<T, E>,
) -> Option<T> {
    let mut delay = Duration::from_millis(200);
    let mut attempt = 1u32;
    loop {
        match op().await {
            Ok(v) => return Some(v),
            Err(e) => {
                warn!(message = "Retrying.", what, error = %e, attempt, retry_in = ?delay);
                tokio::select! {
                    () = stop.cancelled() => return None,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(max);
                attempt += 1;
            }
        }
    }
}

/// Asks whether a batch committed (and with which figures), until PostgreSQL
/// answers: guessing "no" could delete the part file of a committed batch.
async fn committed_with_retries(
    pg: &mut PgSink,
    id: Uuid,
    stop: &CancellationToken,
) -> Option<Option<(u64, u64)>> {
    retry(
        "checking whether the batch committed",
        stop,
        Duration::from_secs(10),
        async || pg.recorded(id).await,
    )
    .await
}

/// Stages the part file, retrying while the disk refuses.
async fn stage_with_retries(
    csv: &CsvSink,
    id: Uuid,
    output: &[RecordBatch],
    stop: &CancellationToken,
) -> Option<Option<Staged>> {
    retry(
        "writing the part file",
        stop,
        Duration::from_secs(10),
        async || csv.stage(id, output).inspect_err(|_| csv.discard_all()),
    )
    .await
}

/// Promotes a committed batch's file; the batch is committed, so this must happen:
/// retry until it does (or leave it to the next start's recovery when stopping).
async fn promote_with_retries(
    csv: &CsvSink,
    staged: &Staged,
    stop: &CancellationToken,
) -> Option<String> {
    retry(
        "promoting the part file",
        stop,
        Duration::from_secs(10),
        async || csv.promote(staged).map(|p| p.display().to_string()),
    )
    .await
}

/// An input row the transform could not process, kept with its Kafka coordinates.
fn transform_dead_letter(row: &RecordBatch, reason: &str) -> DeadLetter {
    let topic = row
        .column_by_name("topic")
        .map(|a| a.as_string::<i32>().value(0).to_string());
    let partition = row
        .column_by_name("partition")
        .map(|a| a.as_primitive::<Int32Type>().value(0));
    let offset = row
        .column_by_name("offset")
        .map(|a| a.as_primitive::<Int64Type>().value(0));
    let timestamp = row.column_by_name("timestamp").and_then(|a| {
        let a = a.as_primitive::<TimestampMillisecondType>();
        a.is_valid(0).then(|| a.value(0))
    });
    let key = row.column_by_name("key").and_then(|a| {
        let a = a.as_binary::<i32>();
        a.is_valid(0).then(|| a.value(0).to_vec())
    });
    let fields: Vec<usize> = (0..events::FIELDS.len()).collect();
    let payload = row
        .project(&fields)
        .map(|r| copy::row_json(&r, 0).into_bytes())
        .ok();
    DeadLetter {
        topic,
        partition,
        offset,
        timestamp,
        key,
        payload,
        reason: format!("transform failed: {reason}"),
        stage: "transform",
    }
}

fn describe_ranges(advances: &[Advance]) -> String {
    advances
        .iter()
        .map(|a| format!("{}:[{}..{})", a.partition, a.first, a.next))
        .collect::<Vec<_>>()
        .join(" ")
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
