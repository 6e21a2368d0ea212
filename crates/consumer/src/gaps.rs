//! Positions outside the log: found, decided, recorded, never silent.
//!
//! Positions are checked against the log at every assignment, and again whenever
//! a fetch finds one out of range: the consumer runs with `auto.offset.reset=error`,
//! so librdkafka never moves a position by itself but stops fetching the partition
//! and reports `AUTO_OFFSET_RESET`. Either way [`resolve`] asks the broker for each
//! owned partition's log start and end (ListOffsets) and:
//! - **before the start** (retention deleted records before they were read): reading
//!   goes on at the log start; the lost range goes to `pipeline_gaps`, the metrics
//!   (`users_pipeline_records_lost_total`) and an error-level log line;
//! - **past the end** (the topic was recreated, Kafka's data lost, offsets restored
//!   from a backup): `--offsets-past-end fail` (the default) stops with the
//!   command that repairs it; `earliest`/`latest` moves the stored offset there,
//!   recorded in `pipeline_gaps`;
//! - **inside**: nothing to do after an assignment; after a fetch error the partition
//!   is sought to its position, which restarts its fetch.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::Offset;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::Error;
use crate::commit::Committer;
use crate::config::{Config, PastEnd};
use crate::ledger::Gap;
use crate::partitions::{InLog, Partitions, locate};
use crate::source::KafkaConsumer;
use crate::telemetry::Metrics;

/// Why positions are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Check {
    /// Partitions were assigned at their stored offsets: are those in the log?
    Assignment,
    /// librdkafka found a position out of range and stopped fetching it.
    FetchError,
}

/// What resolving needs of the loop.
pub struct Loop<'a> {
    pub config: &'a Config,
    pub consumer: &'a KafkaConsumer,
    pub partitions: &'a mut Partitions,
    pub metrics: &'a Metrics,
}

/// Finds the owned partitions whose position is outside their log and decides
/// for each (see the module doc).
pub async fn resolve(
    l: Loop<'_>,
    check: Check,
    committer: &mut Committer,
    stop: &CancellationToken,
) -> Result<(), Error> {
    let owned = l.partitions.owned();
    let logs = list_offsets(l.config, owned.clone()).await?;
    for p in owned {
        let (Some(position), Some(&(low, high))) = (l.partitions.position(p), logs.get(&p)) else {
            continue;
        };
        let stored = l.partitions.stored(p);
        let (kind, resumed, store, lost) = match locate(position, low, high) {
            InLog::Inside => {
                if check == Check::FetchError {
                    seek(&l, p, position);
                }
                continue;
            }
            InLog::BeforeStart { lost } => ("before_log_start", low, None, lost),
            InLog::PastEnd { .. } => {
                let resumed = match l.config.offsets_past_end {
                    PastEnd::Fail => {
                        return Err(Error::OffsetPastEnd {
                            topic: l.config.topic.clone(),
                            group: l.config.group.clone(),
                            partition: p,
                            stored: position,
                            log_end: high,
                        });
                    }
                    PastEnd::Earliest => low,
                    PastEnd::Latest => high,
                };
                ("past_log_end", resumed, stored, 0)
            }
        };
        let gap = Gap {
            group: &l.config.group,
            topic: &l.config.topic,
            partition: p,
            kind,
            position,
            log_start: low,
            log_end: high,
            resumed_at: resumed,
        };
        match committer.record_gap(&gap, store, stop).await? {
            None => return Ok(()), // stopping
            Some(false) => {
                warn!(
                    message =
                        "Another consumer moved the partition's offset first; it is theirs now.",
                    partition = p
                );
                continue;
            }
            Some(true) => {}
        }
        error!(
            message = "Partition position outside the log; recorded in pipeline_gaps.",
            partition = p,
            kind,
            position,
            log_start = low,
            log_end = high,
            resumed_at = resumed,
            records_lost = lost
        );
        l.metrics.gap(kind, lost as u64);
        seek(&l, p, resumed);
        let now_stored = if store.is_some() {
            Some(resumed)
        } else {
            stored
        };
        l.partitions.on_moved(p, now_stored, resumed);
    }
    Ok(())
}

/// Each partition's log start and end, asked of the broker (ListOffsets).
async fn list_offsets(
    config: &Config,
    partitions: Vec<i32>,
) -> Result<HashMap<i32, (i64, i64)>, Error> {
    let client = common::kafka::client_config(&config.brokers, &config.kafka_options)?;
    let (topic, timeout) = (config.topic.clone(), config.connect_timeout);
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = client.create().map_err(Error::kafka("offset lookup"))?;
        partitions
            .into_iter()
            .map(|p| {
                consumer
                    .fetch_watermarks(&topic, p, timeout)
                    .map(|w| (p, w))
                    .map_err(Error::kafka(format!(
                        "cannot read partition {p}'s log start and end"
                    )))
            })
            .collect()
    })
    .await
    .map_err(|e| Error::Interrupted(format!("the offset lookup did not finish: {e}")))?
}

fn seek(l: &Loop<'_>, partition: i32, offset: i64) {
    let topic = &l.config.topic;
    let timeout = Duration::from_secs(10);
    if let Err(e) = l
        .consumer
        .seek(topic, partition, Offset::Offset(offset), timeout)
    {
        // Most likely revoked meanwhile: the next assignment positions it.
        warn!(message = "Cannot seek partition.", partition, error = %e);
    }
}
