//! What the consumer tells Prometheus, named once here so that the pipeline, the
//! README and the alert rules agree on the names.
//!
//! Counters and histograms are taken as handles at start-up (no registry lookup
//! per message); per-partition gauges are refreshed by the main loop's one-second
//! tick and after each commit, and vanish when not refreshed for a while, so a partition that moved
//! to another consumer stops being reported here.

use std::collections::HashMap;
use std::time::Duration;

use metrics::{Counter, Histogram, counter, gauge, histogram};

use crate::dead_letter::Stage;

pub const RECORDS_CONSUMED: &str = "users_pipeline_records_consumed_total";
pub const BYTES_CONSUMED: &str = "users_pipeline_bytes_consumed_total";
pub const ROWS_WRITTEN: &str = "users_pipeline_rows_written_total";
pub const ROWS_FILTERED: &str = "users_pipeline_rows_filtered_total";
pub const DEAD_LETTERS: &str = "users_pipeline_dead_letters_total";
pub const BATCHES: &str = "users_pipeline_batches_total";
pub const BATCH_DURATION: &str = "users_pipeline_batch_duration_seconds";
pub const COMMIT_DURATION: &str = "users_pipeline_commit_duration_seconds";
pub const POSTGRES_RETRIES: &str = "users_pipeline_postgres_retries_total";
pub const STORED_OFFSET: &str = "users_pipeline_partition_stored_offset";
pub const HIGH_WATERMARK: &str = "users_pipeline_partition_high_watermark";
pub const LAG: &str = "users_pipeline_partition_lag";
pub const LAST_COMMIT: &str = "users_pipeline_last_commit_timestamp_seconds";
pub const ASSIGNED_PARTITIONS: &str = "users_pipeline_assigned_partitions";
/// Positions found outside the log, by kind (`before_log_start`, `past_log_end`).
pub const OFFSET_GAPS: &str = "users_pipeline_offset_gaps_total";
/// Records deleted by retention before they were read.
pub const RECORDS_LOST: &str = "users_pipeline_records_lost_total";

/// One owned partition: the next offset PostgreSQL holds, and the low and high
/// watermarks last seen in a fetch response.
pub type PartitionState = (Option<i64>, Option<(i64, i64)>);

/// Handles of the consumer's metrics.
pub struct Metrics {
    pub records: Counter,
    pub bytes: Counter,
    /// Per output (the `output` label): rows written, rows filtered.
    outputs: HashMap<String, (Counter, Counter)>,
    pub batches: Counter,
    pub batch_duration: Histogram,
    pub commit_duration: Histogram,
    pub postgres_retries: Counter,
    topic: String,
    /// Unix time of the last commit, re-set on every refresh (gauges not set for a
    /// while vanish from `/metrics`).
    last_commit: Option<f64>,
    /// Partitions reported on the last refresh.
    reported: std::collections::HashSet<i32>,
}

impl Metrics {
    /// `outputs`: the outputs' names, each the `output` label of its row counters.
    pub fn new(topic: &str, outputs: &[&str]) -> Self {
        common::telemetry::build_info("users_pipeline_consumer", env!("CARGO_PKG_VERSION"));
        // Registered with zero so that a scrape before the first batch sees them.
        for stage in Stage::ALL {
            counter!(DEAD_LETTERS, "reason" => stage.metric_reason()).absolute(0);
        }
        for kind in [crate::gaps::BEFORE_START, crate::gaps::PAST_END] {
            counter!(OFFSET_GAPS, "kind" => kind).absolute(0);
        }
        counter!(RECORDS_LOST).absolute(0);
        Self {
            records: counter!(RECORDS_CONSUMED),
            bytes: counter!(BYTES_CONSUMED),
            outputs: outputs
                .iter()
                .map(|o| {
                    let label = [("output", o.to_string())];
                    let counters = (
                        counter!(ROWS_WRITTEN, &label),
                        counter!(ROWS_FILTERED, &label),
                    );
                    // Registered with zero: a scrape before the first batch sees them.
                    counters.0.increment(0);
                    counters.1.increment(0);
                    (o.to_string(), counters)
                })
                .collect(),
            batches: counter!(BATCHES),
            batch_duration: histogram!(BATCH_DURATION),
            commit_duration: histogram!(COMMIT_DURATION),
            postgres_retries: counter!(POSTGRES_RETRIES),
            topic: topic.to_string(),
            last_commit: None,
            reported: Default::default(),
        }
    }

    /// What a batch did to an output.
    pub fn output(&self, name: &str, written: u64, filtered: u64) {
        if let Some((w, f)) = self.outputs.get(name) {
            w.increment(written);
            f.increment(filtered);
        }
    }

    pub fn dead_letters(&self, stages: impl IntoIterator<Item = Stage>) {
        for stage in stages {
            counter!(DEAD_LETTERS, "reason" => stage.metric_reason()).increment(1);
        }
    }

    /// A position outside the log was found (and `lost` records skipped).
    pub fn gap(&self, kind: &'static str, lost: u64) {
        counter!(OFFSET_GAPS, "kind" => kind).increment(1);
        counter!(RECORDS_LOST).increment(lost);
    }

    pub fn committed_now(&mut self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.last_commit = Some(now);
        gauge!(LAST_COMMIT).set(now);
    }

    /// Per owned partition: the offset PostgreSQL holds, the partition's watermarks
    /// as last seen in a fetch response, and the lag. Partitions owned at the last
    /// refresh but not now report a lag of 0 (their new owner reports theirs), so a
    /// sum over consumers stays right through a rebalance.
    pub fn partitions(&mut self, owned: &HashMap<i32, PartitionState>) {
        common::telemetry::build_info("users_pipeline_consumer", env!("CARGO_PKG_VERSION"));
        if let Some(t) = self.last_commit {
            gauge!(LAST_COMMIT).set(t);
        }
        gauge!(ASSIGNED_PARTITIONS).set(owned.len() as f64);
        let labels = |p: i32| [("topic", self.topic.clone()), ("partition", p.to_string())];
        for p in self.reported.iter().filter(|p| !owned.contains_key(p)) {
            gauge!(LAG, &labels(*p)).set(0.0);
        }
        for (p, (stored, marks)) in owned {
            let labels = labels(*p);
            if let Some(s) = stored {
                gauge!(STORED_OFFSET, &labels).set(*s as f64);
            }
            if let Some((low, high)) = marks {
                gauge!(HIGH_WATERMARK, &labels).set(*high as f64);
                let lag = crate::ledger::lag(*stored, *low, *high);
                gauge!(LAG, &labels).set(lag as f64);
            }
        }
        self.reported = owned.keys().copied().collect();
    }
}

/// What `/readyz` checks: the consumer holds a settled assignment in its group, and
/// PostgreSQL answers a query now (on a connection of its own, so a probe never
/// waits behind a batch).
pub struct Readiness {
    assigned: std::sync::Arc<std::sync::atomic::AtomicBool>,
    postgres: crate::sink::postgres::Endpoint,
    client: std::sync::Arc<tokio::sync::Mutex<Option<tokio_postgres::Client>>>,
}

/// How long `/readyz` waits for PostgreSQL before answering "not ready".
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

impl Readiness {
    pub fn new(config: &crate::Config) -> Result<Self, crate::Error> {
        Ok(Self {
            assigned: Default::default(),
            postgres: crate::sink::postgres::parse_url(&config.database_url, PROBE_TIMEOUT)?,
            client: Default::default(),
        })
    }

    pub fn set_assigned(&self, assigned: bool) {
        self.assigned
            .store(assigned, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn check(&self) -> common::telemetry::ReadyCheck {
        let assigned = self.assigned.clone();
        let postgres = self.postgres.clone();
        let client = self.client.clone();
        std::sync::Arc::new(move || {
            let (assigned, postgres, client) = (assigned.clone(), postgres.clone(), client.clone());
            Box::pin(async move {
                if !assigned.load(std::sync::atomic::Ordering::Relaxed) {
                    return Err("no partition assignment yet (joining the consumer group)".into());
                }
                let probe = async {
                    let mut slot = client.lock().await;
                    if slot.as_ref().is_none_or(tokio_postgres::Client::is_closed) {
                        let c =
                            crate::sink::postgres::connect_plain(&postgres, PROBE_TIMEOUT).await?;
                        *slot = Some(c);
                    }
                    let c = slot.as_ref().ok_or("no connection")?;
                    let result = c.simple_query("SELECT 1").await;
                    if let Err(e) = result {
                        *slot = None;
                        return Err(crate::sink::postgres::reason(&e));
                    }
                    Ok::<(), String>(())
                };
                match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(format!("PostgreSQL unreachable: {e}")),
                    Err(_) => Err(format!(
                        "PostgreSQL did not answer within {PROBE_TIMEOUT:?}"
                    )),
                }
            })
        })
    }
}
