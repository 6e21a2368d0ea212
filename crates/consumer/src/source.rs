//! The Kafka side of the consumer: group membership and where each partition starts.
//!
//! Kafka's committed offsets are advisory here; PostgreSQL holds the real ones. So
//! when partitions are assigned, the rebalance callback asks PostgreSQL for their
//! stored offsets and hands them to `assign` itself, before any fetch begins: the
//! consumer never starts from a position PostgreSQL does not know. (Seeking after
//! assignment instead would race librdkafka's own committed-offset lookup.)
//!
//! The callback runs inside librdkafka's poll and must answer synchronously, so the
//! lookup goes to a small dedicated thread with its own connection (the
//! [`OffsetOracle`]). The main loop learns about every rebalance through a
//! generation counter and the positions recorded here.

use std::collections::HashMap;
use std::ffi::CString;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::time::Duration;

use common::backoff::Backoff;
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::{Config, StartingOffsets};
use crate::ledger;

/// The consumer type of the pipeline.
pub type KafkaConsumer = StreamConsumer<PipelineContext>;

/// What the main loop needs to know about the current assignment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assignment {
    /// Bumped on every rebalance; a batch collected under an older generation is
    /// dropped, never committed.
    pub generation: u64,
    /// Assigned partitions and the offset PostgreSQL held for each when it was
    /// assigned (`None`: nothing stored yet).
    pub stored: HashMap<i32, Option<i64>>,
    /// True after an assignment, false after a revocation (a rebalance in progress).
    pub settled: bool,
}

/// A lookup request: partitions, and where to send their stored offsets.
type Lookup = (Vec<i32>, SyncSender<Result<HashMap<i32, i64>, String>>);

/// Looks up stored offsets on behalf of the rebalance callback.
pub struct OffsetOracle {
    tx: tokio::sync::mpsc::UnboundedSender<Lookup>,
}

impl OffsetOracle {
    /// Starts the lookup thread with its own runtime and connection.
    pub fn start(
        pg: crate::sink::postgres::Endpoint,
        group: String,
        topic: String,
        timeout: Duration,
    ) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Lookup>();
        let spawned = std::thread::Builder::new()
            .name("offset-oracle".into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(async move {
                    let mut client: Option<tokio_postgres::Client> = None;
                    while let Some((partitions, reply)) = rx.recv().await {
                        if client
                            .as_ref()
                            .is_none_or(tokio_postgres::Client::is_closed)
                        {
                            client = crate::sink::postgres::connect_plain(&pg, timeout)
                                .await
                                .ok();
                        }
                        let result = match &client {
                            Some(c) => ledger::load(c, &group, &topic, &partitions)
                                .await
                                .map_err(|e| crate::sink::postgres::reason(&e)),
                            None => Err("cannot connect to PostgreSQL".to_string()),
                        };
                        let _ = reply.send(result);
                    }
                });
            });
        if let Err(e) = spawned {
            warn!(message = "Cannot start the offset lookup thread.", error = %e);
        }
        Self { tx }
    }

    fn load(&self, partitions: Vec<i32>, timeout: Duration) -> Result<HashMap<i32, i64>, String> {
        let (reply, answer) = sync_channel(1);
        self.tx
            .send((partitions, reply))
            .map_err(|_| "offset lookup thread is gone".to_string())?;
        answer
            .recv_timeout(timeout + Duration::from_secs(1))
            .map_err(|_| format!("no answer within {timeout:?}"))?
    }
}

/// The consumer context: logs rebalances, positions assigned partitions at their
/// stored offsets, and records the assignment for the main loop.
pub struct PipelineContext {
    topic: String,
    starting: StartingOffsets,
    oracle: OffsetOracle,
    stop: CancellationToken,
    retry: Duration,
    assignment: Mutex<Assignment>,
    /// `assignment.generation`, read without the lock: the loop asks after every
    /// message whether a rebalance happened.
    generation: AtomicU64,
    /// The first client error that waiting cannot heal (a failed login, a
    /// certificate that does not verify): the loop stops with it.
    /// Set once (the first wins); read lock-free on every turn of the loop.
    permanent: std::sync::OnceLock<String>,
}

impl PipelineContext {
    pub fn new(
        topic: String,
        starting: StartingOffsets,
        oracle: OffsetOracle,
        stop: CancellationToken,
        retry: Duration,
    ) -> Self {
        Self {
            topic,
            starting,
            oracle,
            stop,
            retry,
            assignment: Mutex::new(Assignment::default()),
            generation: AtomicU64::new(0),
            permanent: std::sync::OnceLock::new(),
        }
    }

    /// The client error that waiting cannot heal, if librdkafka reported one.
    pub fn permanent_error(&self) -> Option<&str> {
        self.permanent.get().map(String::as_str)
    }

    /// The current assignment.
    pub fn assignment(&self) -> Assignment {
        self.assignment
            .lock()
            .map(|a| a.clone())
            .unwrap_or_default()
    }

    /// Whether the last rebalance event was an assignment, cheaply.
    pub fn settled(&self) -> bool {
        self.assignment.lock().map(|a| a.settled).unwrap_or(false)
    }

    /// The current generation, cheaply.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Starts a new generation: `change` is applied to the assignment under its
    /// lock, and the generation the loop reads moves only after it.
    fn next_generation(&self, change: impl FnOnce(&mut Assignment)) {
        if let Ok(mut a) = self.assignment.lock() {
            a.generation += 1;
            change(&mut a);
            self.generation.store(a.generation, Ordering::Release);
        }
    }

    /// Stored offsets of `partitions`, retried with backoff while PostgreSQL is
    /// unreachable (the consumer cannot start reading without them) unless stopping.
    fn stored_offsets(&self, partitions: Vec<i32>) -> Option<HashMap<i32, i64>> {
        // A blocking loop (the callback runs inside librdkafka's poll), on the
        // workspace's one backoff schedule.
        let mut backoff = Backoff::new(crate::retry::FIRST_DELAY, Duration::from_secs(5));
        loop {
            match self.oracle.load(partitions.clone(), self.retry) {
                Ok(found) => return Some(found),
                Err(e) => {
                    if self.stop.is_cancelled() {
                        return None;
                    }
                    let delay = backoff.fail();
                    warn!(
                        message = "Cannot read stored offsets for assigned partitions, retrying.",
                        error = %e,
                        attempt = backoff.failures(),
                        retry_in = ?delay
                    );
                    std::thread::sleep(delay);
                }
            }
        }
    }
}

impl ClientContext for PipelineContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            // End of partition is news, not an error (`enable.partition.eof`).
            Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF) => {
                debug!(message = "Reached the end of a partition.", detail = %reason);
            }
            Some(code) if common::kafka::permanent(code, reason) => {
                let line = common::kafka::describe_client_error(&error, reason);
                error!(message = "Kafka client error that waiting cannot heal; stopping.", error = %line);
                let _ = self.permanent.set(line);
            }
            _ => warn!(message = "Kafka client error.", error = %error, detail = %reason),
        }
    }
}

impl ConsumerContext for PipelineContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(tpl) = rebalance else {
            return;
        };
        let partitions: Vec<i32> = tpl
            .elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        let stored = self.stored_offsets(partitions.clone());
        let mut assigned = HashMap::new();
        for mut elem in tpl.elements_for_topic(&self.topic) {
            let p = elem.partition();
            let offset = match stored.as_ref().map(|s| s.get(&p).copied()) {
                Some(Some(next)) => Offset::Offset(next),
                _ => self.starting.offset(),
            };
            if let Err(e) = elem.set_offset(offset) {
                warn!(message = "Cannot set the start offset.", partition = p, error = %e);
            }
            // Without an answer (only when stopping) nothing may be committed.
            if let Some(s) = &stored {
                assigned.insert(p, s.get(&p).copied());
            }
        }
        info!(
            message = "Partitions assigned.",
            topic = %self.topic,
            partitions = ?partitions,
            stored = ?stored
        );
        self.next_generation(|a| {
            a.stored.extend(assigned);
            a.settled = true;
        });
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(_) => {}
            Rebalance::Revoke(tpl) => {
                let revoked: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                info!(message = "Partitions revoked.", partitions = ?revoked);
                self.next_generation(|a| {
                    a.settled = false;
                    for p in revoked {
                        a.stored.remove(&p);
                    }
                });
            }
            Rebalance::Error(e) => {
                warn!(message = "Rebalance failed.", error = %e);
                self.next_generation(|_| {});
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _: &TopicPartitionList) {
        if let Err(e) = result {
            // Kafka's offsets are only for lag tools; PostgreSQL holds the real ones.
            debug!(message = "Advisory offset commit to Kafka failed.", error = %e);
        }
    }
}

/// Creates the group consumer, subscribed to the topic.
pub fn create(config: &Config, context: PipelineContext) -> Result<KafkaConsumer, crate::Error> {
    let mut client = common::kafka::client_config(&config.brokers, &config.security, &[])?;
    client
        .set("group.id", &config.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        // Never reset silently: a position outside the log (past its end, or
        // before its start after retention) comes to the loop as an error, which
        // decides and records what happens (`--offsets-past-end`, `pipeline_gaps`).
        // Partitions with nothing stored start at `--starting-offsets`, set in the
        // assignment itself, so this setting never applies to them.
        .set("auto.offset.reset", "error")
        .set("isolation.level", "read_committed")
        .set("partition.assignment.strategy", "range,roundrobin");
    for (key, value) in FetchPacing::of(config.max_batch_bytes, config.trigger_interval).settings()
    {
        client.set(key, value);
    }
    for option in &config.kafka_options {
        let (k, v) = common::kafka::parse_option(option)?;
        check_override(&k, &v).map_err(crate::Error::Config)?;
        client.set(k, v);
    }
    let consumer: KafkaConsumer = client
        .create_with_context(context)
        .map_err(|e| crate::Error::Config(format!("Kafka consumer: {e}")))?;
    consumer
        .subscribe(&[&config.topic])
        .map_err(crate::Error::kafka(format!(
            "cannot subscribe to {}",
            config.topic
        )))?;
    Ok(consumer)
}

/// How librdkafka paces its fetches for this pipeline, derived from the batch limit
/// and the trigger interval (`-X` overrides any of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchPacing {
    /// `queued.max.messages.kbytes`: what librdkafka buffers ahead of the pipeline.
    pub queue_kbytes: u64,
    /// `fetch.wait.max.ms`: how long a fetch waits for data.
    pub wait_max: Duration,
    /// `fetch.queue.backoff.ms`: how long fetching pauses once that buffer is full.
    pub queue_backoff: Duration,
}

impl FetchPacing {
    pub fn of(max_batch_bytes: u64, trigger_interval: Duration) -> Self {
        let ms = Duration::from_millis;
        Self {
            // Bound the buffer (backpressure) to about one batch's bytes. Its
            // message-count floor stays at the default: lowering it to one batch
            // made the benchmark 1.7 times slower, for no memory saved (measured
            // before the backoff below was set, whose second may explain it).
            queue_kbytes: (max_batch_bytes / 1024).clamp(1_024, 65_536),
            // Some brokers (tansu) hold every fetch for the full wait, which then
            // adds straight to end-to-end latency.
            wait_max: (trigger_interval / 2).clamp(ms(10), ms(500)),
            // librdkafka's default, a second, idled a pipeline whose buffer had
            // filled: the loop empties the buffer in a fraction of a trigger
            // interval, then waited out the rest of the second with nothing to
            // take. On 200,000 events (issue 14): 3.3-4.5 s to the last commit at
            // the default, 2.6-2.9 s at 5-100 ms, at the same CPU per record.
            queue_backoff: (trigger_interval / 20).clamp(ms(10), ms(100)),
        }
    }

    /// The librdkafka settings.
    pub fn settings(&self) -> [(&'static str, String); 3] {
        [
            ("queued.max.messages.kbytes", self.queue_kbytes.to_string()),
            ("fetch.wait.max.ms", self.wait_max.as_millis().to_string()),
            (
                "fetch.queue.backoff.ms",
                self.queue_backoff.as_millis().to_string(),
            ),
        ]
    }
}

/// The number of partitions of `topic`, asked of the brokers with `client`; fails
/// within `--connect-timeout` when they cannot be reached, or with
/// [`crate::Error::NoTopic`] (and `hint`) when the topic does not exist.
pub async fn require_topic(
    client: &rdkafka::ClientConfig,
    config: &Config,
    topic: &str,
    hint: &'static str,
) -> Result<usize, crate::Error> {
    common::kafka::check_reachable(client, topic, config.connect_timeout)
        .await?
        .ok_or_else(|| crate::Error::NoTopic {
            topic: topic.to_string(),
            brokers: config.brokers.clone(),
            hint,
        })
}

/// Refuses `-X` overrides of the settings the offset protocol rests on, with the
/// reason.
pub fn check_override(key: &str, value: &str) -> Result<(), String> {
    let why = match key {
        "enable.auto.commit" | "enable.auto.offset.store" => {
            "offsets are stored in PostgreSQL with the data; Kafka's are advisory"
        }
        "enable.partition.eof" => "--available-now needs the end-of-partition events",
        "isolation.level" => "aborted transactions must never be written",
        "auto.offset.reset" => {
            "a position outside the log is decided by --offsets-past-end and recorded in \
             pipeline_gaps; where nothing is stored, use --starting-offsets"
        }
        "partition.assignment.strategy" if value.contains("cooperative") => {
            "the offset protocol needs eager rebalancing (every partition revoked and \
             re-positioned from PostgreSQL)"
        }
        "group.protocol" if value != "classic" => {
            "the offset protocol needs eager rebalancing (every partition revoked and \
             re-positioned from PostgreSQL)"
        }
        _ => return Ok(()),
    };
    Err(format!("-X {key}={value} is not supported: {why}"))
}

/// The low and high watermarks librdkafka last saw in a fetch response for
/// `partition`, without a request to the broker. Fetch responses carry correct
/// watermarks on every broker, where ListOffsets answers may not (tansu's memory engine).
pub fn cached_watermarks(
    consumer: &KafkaConsumer,
    topic: &str,
    partition: i32,
) -> Option<(i64, i64)> {
    let topic = CString::new(topic).ok()?;
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the client pointer is valid for the consumer's lifetime and the call
    // only reads librdkafka's cached state into the two out-parameters.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_client().ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
        .then_some((low.max(0), high))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetch_pacing_follows_the_batch_limit_and_the_trigger_interval() {
        let ms = Duration::from_millis;
        let defaults = FetchPacing::of(
            crate::config::DEFAULT_MAX_BATCH_BYTES,
            Duration::from_secs(1),
        );
        assert_eq!(
            defaults.settings(),
            [
                ("queued.max.messages.kbytes", "16384".to_string()),
                ("fetch.wait.max.ms", "500".to_string()),
                ("fetch.queue.backoff.ms", "50".to_string()),
            ]
        );
        let fast = FetchPacing::of(100 << 10, ms(100));
        assert_eq!(
            (fast.queue_kbytes, fast.wait_max, fast.queue_backoff),
            (1_024, ms(50), ms(10)),
            "floors: 1 MiB buffered, 10 ms between fetches when full"
        );
        let slow = FetchPacing::of(1 << 30, Duration::from_secs(60));
        assert_eq!(
            (slow.queue_kbytes, slow.wait_max, slow.queue_backoff),
            (65_536, ms(500), ms(100)),
            "ceilings: a long trigger interval never idles a full pipeline for long"
        );
    }

    #[test]
    fn overrides_the_protocol_rests_on_are_refused_with_a_reason() {
        for (k, v) in [
            ("enable.auto.commit", "true"),
            ("enable.auto.offset.store", "true"),
            ("enable.partition.eof", "false"),
            ("isolation.level", "read_uncommitted"),
            ("auto.offset.reset", "earliest"),
            ("partition.assignment.strategy", "cooperative-sticky"),
            ("group.protocol", "consumer"),
        ] {
            let e = check_override(k, v).unwrap_err();
            assert!(
                e.starts_with(&format!("-X {k}={v} is not supported: ")),
                "{e}"
            );
        }
        for (k, v) in [
            ("fetch.max.bytes", "1000000"),
            ("partition.assignment.strategy", "roundrobin"),
            ("group.protocol", "classic"),
            ("group.instance.id", "a"),
        ] {
            assert!(check_override(k, v).is_ok(), "{k}");
        }
    }
}
