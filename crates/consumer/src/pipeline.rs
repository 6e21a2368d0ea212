//! The micro-batch loop: collect, transform, commit, repeat.
//!
//! While one batch commits, the loop keeps polling Kafka and collects the next
//! batch, so fetching overlaps writing and the consumer stays in its group however
//! long PostgreSQL takes; [`crate::backpressure`] decides when polling holds and
//! when the partitions are paused. The next batch, once full, is transformed on a
//! worker thread meanwhile ([`Preparing`]), so that it is ready to commit when the
//! commit before it ends; one batch at most is ever in a PostgreSQL transaction.
//! What to take and when a run is done is asked of [`Partitions`]; how a batch
//! commits is [`Committer`]'s. ARCHITECTURE.md describes the offset protocol this
//! loop drives.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer, MessageStream};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use uuid::Uuid;

use crate::Error;
use crate::backpressure::{Backpressure, HOLD_BEFORE_PAUSE};
use crate::batch::{Collecting, Prepared, Preparing};
use crate::commit::{self, Committed, Committer, Outcome};
use crate::config::Config;
use crate::dead_letter::{self, Stage};
use crate::decode::Origin;
use crate::gaps;
use crate::ledger::Advance;
use crate::outputs::Output;
use crate::partitions::Partitions;
use crate::sink::csv::CsvSink;
use crate::sink::postgres::PgSink;
use crate::source::{self, KafkaConsumer, OffsetOracle, PipelineContext};
use crate::telemetry::{Metrics, Readiness};

/// How often gauges and readiness are refreshed while nothing else happens.
const OBSERVE_EVERY: Duration = Duration::from_secs(1);

/// How often `--available-now` re-checks the watermarks while nothing arrives.
const AVAILABLE_NOW_RECHECK: Duration = Duration::from_millis(100);

/// How long `--available-now` waits for a partition when the group assigned it none
/// (other members hold them all) before it gives up, in `--connect-timeout`s.
const NO_ASSIGNMENT_WAIT: u32 = 3;

/// At most this many messages that librdkafka already holds are taken in one turn
/// of the loop (about a millisecond's worth at full speed).
const BURST: usize = 1024;

/// What one poll of librdkafka's queue gives: a message, or an event as an error.
type Polled<'a> = Result<BorrowedMessage<'a>, KafkaError>;

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

async fn run_until(config: Config, stop: CancellationToken) -> Result<RunSummary, Error> {
    let started = Instant::now();
    // Everything that can be checked without a service comes first.
    let checked = config.check().await?;
    let instance = Uuid::new_v4();
    let csv = checked
        .outputs
        .iter()
        .map(|o| {
            o.part_files
                .as_deref()
                .map(|dir| CsvSink::open(dir, instance))
                .transpose()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let readiness = Readiness::new(&config)?;
    if let Some(addr) = config.metrics_addr {
        let handle = common::telemetry::install(Duration::from_secs(30))?;
        let bound = common::telemetry::serve(addr, handle, readiness.check(), stop.clone()).await?;
        info!(message = "Serving /metrics, /healthz and /readyz.", addr = %bound);
    }
    let names: Vec<&str> = checked.outputs.iter().map(|o| o.name.as_str()).collect();
    let metrics = Metrics::new(&config.topic, &names);

    check_topic(&config).await?;

    let target = checked.target(&config);
    let pg = PgSink::connect(
        &config.database_url,
        config.connect_timeout,
        target,
        instance,
    )
    .await?;
    let mut committer = Committer::new(
        pg,
        csv,
        config.max_retry_backoff,
        metrics.postgres_retries.clone(),
    );
    committer.recover().await?;

    let consumer = join_group(&config, &stop)?;
    info!(
        message = "Consumer started.",
        topic = %config.topic,
        group = %config.group,
        postgres = %committer.postgres(),
        output_dir = %config.output_dir.display(),
        available_now = config.available_now,
        startup_ms = started.elapsed().as_millis() as u64
    );

    let mut state = LoopState {
        config: &config,
        consumer: &consumer,
        messages: consumer.stream(),
        partitions: Partitions::default(),
        outputs: checked.outputs.into(),
        preparing: None,
        metrics,
        readiness: &readiness,
        summary: RunSummary::default(),
        check_log: None,
        unassigned_since: None,
    };
    let result = state.run(&mut committer, &stop).await;
    consumer.unsubscribe();
    let summary = state.summary;
    summary.log();
    result.map(|()| summary)
}

impl RunSummary {
    fn log(&self) {
        info!(
            message = "Consumer stopped.",
            batches = self.batches,
            records = self.records,
            rows_written = self.rows_written,
            dead_letters = self.dead_letters
        );
    }
}

/// The original position a replayed dead letter carries in its headers.
fn replayed_rank(headers: &rdkafka::message::BorrowedHeaders) -> Option<(i32, i64)> {
    dead_letter::origin_rank(
        dead_letter::header(headers, dead_letter::ORIGIN_PARTITION_HEADER),
        dead_letter::header(headers, dead_letter::ORIGIN_OFFSET_HEADER),
    )
}

/// Fails fast (within `--connect-timeout`) when the brokers cannot be reached or
/// the topic does not exist.
async fn check_topic(config: &Config) -> Result<(), Error> {
    let probe =
        common::kafka::client_config(&config.brokers, &config.security, &config.kafka_options)?;
    let hint = " (the producer creates it; or create it with --partitions)";
    source::require_topic(&probe, config, &config.topic, hint).await?;
    Ok(())
}

/// Creates the group consumer, whose rebalance callback positions assigned
/// partitions at the offsets PostgreSQL holds (through the offset oracle).
fn join_group(config: &Config, stop: &CancellationToken) -> Result<KafkaConsumer, Error> {
    let oracle = OffsetOracle::start(
        crate::sink::postgres::parse_url(&config.database_url, config.connect_timeout)?,
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
    source::create(config, context)
}

struct LoopState<'a> {
    config: &'a Config,
    consumer: &'a KafkaConsumer,
    /// The consumer's messages, one stream for the whole run (each `recv` would
    /// register and unregister a waker, under a lock, per message).
    messages: MessageStream<'a, PipelineContext>,
    partitions: Partitions,
    /// What each batch is transformed into and written to.
    outputs: Arc<[Output]>,
    /// The next batch, full, being transformed while the one before it commits.
    preparing: Option<Preparing>,
    metrics: Metrics,
    readiness: &'a Readiness,
    summary: RunSummary,
    /// Positions to check against the log: after an assignment, or because
    /// librdkafka reported one out of range (`AUTO_OFFSET_RESET`).
    check_log: Option<gaps::Check>,
    /// `--available-now`: since when the settled assignment has been empty.
    unassigned_since: Option<Instant>,
}

impl<'a> LoopState<'a> {
    async fn run(
        &mut self,
        committer: &mut Committer,
        stop: &CancellationToken,
    ) -> Result<(), Error> {
        let mut batch = Collecting::new();
        // Wakes an idle loop so that gauges and readiness stay fresh.
        let mut tick = tokio::time::interval(OBSERVE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            if stop.is_cancelled() {
                return Ok(());
            }
            if let Some(reason) = self.consumer.context().permanent_error() {
                return Err(Error::KafkaPermanent {
                    topic: self.config.topic.clone(),
                    reason: reason.to_string(),
                });
            }
            if self.sync_generation() {
                batch = Collecting::new();
            }
            if let Some(check) = self.check_log.take() {
                let l = gaps::Loop {
                    config: self.config,
                    consumer: self.consumer,
                    partitions: &mut self.partitions,
                    metrics: &self.metrics,
                };
                if gaps::resolve(l, check, committer, stop).await? == gaps::Resolved::DropBatch {
                    batch = Collecting::new();
                    self.preparing = None;
                }
            }
            if let Some(next) = self.preparing.take() {
                batch = self.process(next, batch, committer, stop).await?;
                continue;
            }
            let records = batch.builder.records();
            let finished = self.config.available_now && self.all_done()?;
            let due = records > 0 && batch.started.elapsed() >= self.config.trigger_interval;
            if records > 0 && (batch.full(self.config) || due || finished) {
                let next = self.start_preparing(std::mem::take(&mut batch));
                batch = self.process(next, batch, committer, stop).await?;
                continue;
            }
            if finished {
                return Ok(());
            }
            let deadline = batch.started + self.config.trigger_interval;
            let recheck = Instant::now() + AVAILABLE_NOW_RECHECK;
            let wake = match (records > 0, self.config.available_now) {
                (true, true) => deadline.min(recheck),
                (true, false) => deadline,
                (false, _) => recheck,
            };
            tokio::select! {
                biased;
                () = stop.cancelled() => return Ok(()),
                () = tokio::time::sleep_until(wake.into()),
                    if records > 0 || self.config.available_now => {}
                // Before the messages: a steady stream must not starve the refresh.
                _ = tick.tick() => self.observe(),
                Some(m) = self.messages.next() => self.take_burst(&mut batch, m)?,
            }
        }
    }

    /// Picks up a rebalance. Returns true when the batch being collected must be
    /// dropped (it was read under the previous assignment); so is a batch being
    /// transformed.
    fn sync_generation(&mut self) -> bool {
        let context = self.consumer.context();
        if context.generation() == self.partitions.generation() {
            return false;
        }
        self.preparing = None;
        let a = context.assignment();
        self.partitions.on_assignment(a.generation, &a.stored);
        if a.stored.values().any(Option::is_some) {
            self.check_log = self.check_log.max(Some(gaps::Check::Assignment));
        }
        // librdkafka keeps the application's pause flag on a partition that is
        // assigned again, and a pause made during a commit belongs to the previous
        // assignment: without this, a rebalance during a long write could leave a
        // partition paused for good.
        if let Ok(assigned) = self.consumer.assignment()
            && assigned.count() > 0
            && let Err(e) = self.consumer.resume(&assigned)
        {
            warn!(message = "Cannot resume the new assignment.", error = %e);
        }
        true
    }

    /// Takes `first`, then the messages librdkafka already holds, up to [`BURST`],
    /// without going round the loop for each: a turn's checks, timers and wakers
    /// cost more than decoding a message. Stops at a full batch, at a rebalance,
    /// when the loop has a log check to make, when the queue is empty, and with
    /// `--available-now` when a partition reaches its target (the loop decides
    /// whether the run is done: records written after the start are not its own).
    fn take_burst(&mut self, batch: &mut Collecting, first: Polled<'a>) -> Result<(), Error> {
        let generation = self.partitions.generation();
        let (mut m, mut taken) = (first, 0);
        loop {
            let partition = m.as_ref().ok().map(Message::partition);
            self.take(batch, m)?;
            taken += 1;
            let reached = self.config.available_now
                && partition.is_some_and(|p| self.partitions.reached_target(p));
            if taken == BURST
                || reached
                || batch.full(self.config)
                || self.check_log.is_some()
                || self.partitions.generation() != generation
            {
                return Ok(());
            }
            // Ready at once when librdkafka's queue holds a message or an event. A
            // message polled is taken: dropped, it would be lost (librdkafka's
            // position is past it).
            match self.messages.next().now_or_never() {
                Some(Some(next)) => m = next,
                _ => return Ok(()),
            }
        }
    }

    /// Takes one polled message (or event) into `batch`.
    fn take(&mut self, batch: &mut Collecting, message: Polled<'a>) -> Result<(), Error> {
        if self.sync_generation() {
            *batch = Collecting::new();
        }
        let m = match message {
            Ok(m) => m,
            Err(KafkaError::PartitionEOF(p)) => {
                self.partitions.on_end(p);
                return Ok(());
            }
            Err(KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset)) => {
                self.check_log = Some(gaps::Check::FetchError);
                return Ok(());
            }
            Err(e @ KafkaError::MessageConsumptionFatal(_)) => {
                return Err(Error::kafka("fatal consumer error")(e));
            }
            Err(KafkaError::MessageConsumption(code)) if common::kafka::permanent(code, "") => {
                return Err(Error::KafkaPermanent {
                    topic: self.config.topic.clone(),
                    reason: code.to_string(),
                });
            }
            Err(e) => {
                // Transport errors and the like: librdkafka retries by itself.
                warn!(message = "Kafka consumer error.", error = %e);
                return Ok(());
            }
        };
        let (topic, p, offset) = (m.topic(), m.partition(), m.offset());
        if topic != self.config.topic || !self.partitions.should_take(p, offset) {
            return Ok(());
        }
        if batch.builder.records() == 0 {
            // The trigger interval counts from the batch's first record.
            batch.started = Instant::now();
        }
        self.metrics.records.increment(1);
        self.metrics
            .bytes
            .increment((m.payload_len() + m.key().map_or(0, <[u8]>::len)) as u64);
        let origin = Origin {
            topic,
            partition: p,
            offset,
            timestamp: m.timestamp().to_millis(),
            key: m.key(),
            rank: m.headers().and_then(replayed_rank),
        };
        batch.builder.push(&origin, m.payload());
        batch
            .ranges
            .entry(p)
            .and_modify(|r| r.1 = offset)
            .or_insert((offset, offset));
        self.partitions.on_taken(p, offset);
        Ok(())
    }

    /// `--available-now`: the assignment is settled and every owned partition has
    /// been read up to its first-seen high watermark. Watermarks come from fetch
    /// responses (cached by librdkafka), which every broker answers correctly,
    /// unlike ListOffsets.
    /// An empty assignment is waited out for [`NO_ASSIGNMENT_WAIT`], then an error:
    /// exiting 0 having read nothing would claim a run that did not happen.
    fn all_done(&mut self) -> Result<bool, Error> {
        if !self.consumer.context().settled() {
            return Ok(false);
        }
        if self.partitions.owned().is_empty() {
            let wait = self.config.connect_timeout * NO_ASSIGNMENT_WAIT;
            let since = *self.unassigned_since.get_or_insert_with(|| {
                warn!(
                    message = "--available-now: the group assigned this consumer no partition; other members hold them. Waiting.",
                    group = %self.config.group,
                    wait = ?wait
                );
                Instant::now()
            });
            if since.elapsed() >= wait {
                return Err(Error::State(format!(
                    "--available-now: group {:?} assigned this consumer no partition of {:?} \
                     within {wait:?}: other members hold them all; stop them, or use another \
                     --group",
                    self.config.group, self.config.topic
                )));
            }
            return Ok(false);
        }
        self.unassigned_since = None;
        let (consumer, topic) = (self.consumer, &self.config.topic);
        Ok(self
            .partitions
            .all_done(|p| source::cached_watermarks(consumer, topic, p)))
    }

    /// Starts transforming a collected batch on a worker thread.
    fn start_preparing(&self, batch: Collecting) -> Preparing {
        let generation = self.partitions.generation();
        Preparing::start(batch, self.outputs.clone(), self.config.show, generation)
    }

    /// Commits one batch once transformed, collecting into `next` meanwhile.
    /// Returns the batch being collected.
    async fn process(
        &mut self,
        batch: Preparing,
        next: Collecting,
        committer: &mut Committer,
        stop: &CancellationToken,
    ) -> Result<Collecting, Error> {
        let generation = batch.generation;
        let transformed = batch.finish().await?;
        if self.partitions.generation() != generation {
            // Read under an earlier assignment (the new one starts at stored
            // offsets); `next` was collected under the current one.
            return Ok(next);
        }
        let prepared = transformed.ready(&self.partitions);
        let (outcome, mut next) = self
            .commit_while_polling(&prepared, next, committer, stop)
            .await?;
        match outcome {
            Outcome::Committed(committed) => {
                let advanced = prepared.advances.iter().map(|a| (a.partition, a.next));
                self.partitions.on_committed(advanced);
                if self.partitions.generation() != generation {
                    // Partitions were re-assigned while we wrote, positioned at offsets
                    // read before this commit landed: what `next` holds may overlap the
                    // batch just committed. Drop it, and seek every owned partition back
                    // to what PostgreSQL now holds: librdkafka's fetch position is past
                    // what `next` held, and those records must be read again.
                    next = Collecting::new();
                    self.preparing = None;
                    self.seek_to_stored(committer, stop).await?;
                }
                self.commit_to_kafka(&prepared.advances);
                self.report(&prepared, &committed);
                Ok(next)
            }
            Outcome::Conflict => {
                warn!(
                    message = "Another consumer moved the offsets first; batch dropped, rewinding to the stored offsets.",
                    batch = %prepared.id,
                    partitions = %describe_ranges(&prepared.advances)
                );
                self.preparing = None;
                self.rewind(committer, stop).await?;
                Ok(Collecting::new())
            }
            // Stopping: what is staged is resolved at the next start.
            Outcome::Stopped => {
                self.preparing = None;
                Ok(Collecting::new())
            }
        }
    }

    /// Commits the batch while polling goes on (collecting `next`) under
    /// [`Backpressure`]; `next`, once full, starts being transformed. Returns the
    /// outcome and the batch being collected.
    async fn commit_while_polling(
        &mut self,
        prepared: &Prepared,
        mut next: Collecting,
        committer: &mut Committer,
        stop: &CancellationToken,
    ) -> Result<(Outcome, Collecting), Error> {
        let batch = commit::Batch {
            id: prepared.id,
            outputs: &prepared.batch.outputs,
            dead_letters: &prepared.batch.dead,
            advances: &prepared.advances,
            records: prepared.batch.records,
        };
        let mut pressure = Backpressure::new(HOLD_BEFORE_PAUSE);
        let mut paused: Option<TopicPartitionList> = None;
        let mut tick = tokio::time::interval(OBSERVE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let write_started = Instant::now();
        let outcome = {
            let committing = committer.commit(&batch, stop);
            tokio::pin!(committing);
            loop {
                let pause_at = pressure.pause_at();
                tokio::select! {
                    biased;
                    outcome = &mut committing => break outcome,
                    () = tokio::time::sleep_until(pause_at.unwrap_or_else(Instant::now).into()),
                        if pause_at.is_some() => {
                        paused = self.pause();
                        pressure.on_pause_tried();
                    }
                    _ = tick.tick() => self.observe(),
                    Some(m) = self.messages.next(), if pressure.should_poll() => {
                        let seen = self.partitions.generation();
                        self.take_burst(&mut next, m)?;
                        if self.partitions.generation() != seen {
                            // `next` was reset and the new assignment is not paused.
                            paused = None;
                            pressure.on_rebalance();
                        }
                        let full = next.full(self.config);
                        pressure.on_taken(full, Instant::now());
                        if full && self.preparing.is_none() {
                            // Polling holds (then pauses) as before: nothing more is
                            // collected until this commit ends.
                            self.preparing = Some(self.start_preparing(std::mem::take(&mut next)));
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
                .map_err(Error::kafka("cannot resume partitions"))?;
        }
        Ok((outcome?, next))
    }

    /// Metrics, the run's summary and the log line of a committed batch.
    fn report(&mut self, p: &Prepared, c: &Committed) {
        let b = &p.batch;
        let elapsed = b.started.elapsed();
        let rows_out: Vec<usize> = b.outputs.iter().map(|o| o.num_rows()).collect();
        // Input rows an output's query did not turn into rows (an aggregate's are
        // not counted: its rows are groups, not records).
        let kept = b.input_rows.saturating_sub(b.failed_rows);
        for ((output, rows), written) in self.outputs.iter().zip(&rows_out).zip(&c.rows_written) {
            let filtered = match output.table.mode {
                crate::sink::postgres::Mode::Merge(_) => 0,
                _ => kept.saturating_sub(*rows),
            };
            self.metrics.output(&output.name, *written, filtered as u64);
        }
        self.metrics.batches.increment(1);
        self.metrics.batch_duration.record(elapsed.as_secs_f64());
        let sink_stage = (0..c.rejected_rows).map(|_| Stage::Sink);
        self.metrics
            .dead_letters(b.dead.iter().map(|d| d.stage).chain(sink_stage));
        self.metrics.committed_now();
        self.observe();
        let rows_written: u64 = c.rows_written.iter().sum();
        self.summary.batches += 1;
        self.summary.records += b.records;
        self.summary.rows_written += rows_written;
        self.summary.dead_letters += c.dead_letters;
        info!(
            message = "Batch committed.",
            batch = %p.id,
            records = b.records,
            rows_out = %describe_counts(&rows_out),
            rows_written = %describe_counts(&c.rows_written),
            filtered = kept.saturating_sub(rows_out.first().copied().unwrap_or(0)),
            dead_letters = c.dead_letters,
            rejected_rows = c.rejected_rows,
            partitions = %describe_ranges(&p.advances),
            part_file = %if c.part_files.is_empty() { "-".to_string() } else { c.part_files.join(" ") },
            duration_ms = elapsed.as_millis() as u64,
            rows_per_s = (b.records as f64 / elapsed.as_secs_f64().max(1e-6)).round() as u64,
        );
    }

    /// Refreshes the per-partition gauges and the readiness flag (on the one-second
    /// tick and after each commit).
    fn observe(&mut self) {
        let settled = self.partitions.generation() > 0 && self.consumer.context().settled();
        self.readiness.set_assigned(settled);
        if !settled {
            return;
        }
        let owned = self
            .partitions
            .owned()
            .into_iter()
            .map(|p| {
                let marks = source::cached_watermarks(self.consumer, &self.config.topic, p);
                (p, (self.partitions.stored(p), marks))
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
    async fn rewind(
        &mut self,
        committer: &mut Committer,
        stop: &CancellationToken,
    ) -> Result<(), Error> {
        if self.sync_generation() {
            return Ok(());
        }
        self.seek_to_stored(committer, stop).await
    }

    /// Seeks every owned partition to the offset PostgreSQL holds for it (or the
    /// starting position when it holds none).
    async fn seek_to_stored(
        &mut self,
        committer: &mut Committer,
        stop: &CancellationToken,
    ) -> Result<(), Error> {
        let partitions = self.partitions.owned();
        let Some(stored) = committer.stored_offsets(&partitions, stop).await? else {
            return Ok(()); // stopping
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
        }
        self.partitions.on_rewind(&stored);
        Ok(())
    }

    /// Advisory: lets standard lag tools see the progress. PostgreSQL has the truth.
    fn commit_to_kafka(&self, advances: &[Advance]) {
        let mut tpl = TopicPartitionList::new();
        for a in advances
            .iter()
            .filter(|a| self.partitions.owns(a.partition))
        {
            let _ =
                tpl.add_partition_offset(&self.config.topic, a.partition, Offset::Offset(a.next));
        }
        if tpl.count() > 0 {
            let _ = self.consumer.commit(&tpl, CommitMode::Async);
        }
    }
}

/// Per output figures for the log line: `12` with one output, `12/3` with two.
fn describe_counts<T: std::fmt::Display>(counts: &[T]) -> String {
    counts
        .iter()
        .map(T::to_string)
        .collect::<Vec<_>>()
        .join("/")
}

fn describe_ranges(advances: &[Advance]) -> String {
    advances
        .iter()
        .map(|a| format!("{}:[{}..{})", a.partition, a.first, a.next))
        .collect::<Vec<_>>()
        .join(" ")
}
