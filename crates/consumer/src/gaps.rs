//! Positions outside the log: found, decided, recorded, never silent.
//!
//! Positions are checked against the log at every assignment, and again whenever
//! a fetch finds one out of range: the consumer runs with `auto.offset.reset=error`,
//! so librdkafka never moves a position by itself but stops fetching the partition
//! and reports `AUTO_OFFSET_RESET`. Either way [`resolve`] asks the broker for each
//! owned partition's log start and end (ListOffsets) and:
//! - **before the start** (retention deleted records before they were read): reading
//!   goes on at the log start; the lost range goes to `pipeline_gaps`, the metrics
//!   (`users_pipeline_records_lost_total`) and an error-level log line; a stored
//!   offset below the start moves to it, so the loss is counted once;
//! - **past the end** (the topic was recreated, Kafka's data lost, offsets restored
//!   from a backup): `--offsets-past-end fail` (the default) stops with the
//!   command that repairs it; `earliest`/`latest` moves the stored offset there,
//!   recorded in `pipeline_gaps`, and the batch being collected is dropped (its
//!   records of that partition came from the old log);
//! - **inside**: nothing to do.
//!
//! librdkafka refuses to seek a partition it stopped fetching, so after a fetch
//! error, or a move, the owned partitions are assigned again (the eager protocol
//! allows the application to), each at the position it reads on from.

use std::collections::HashMap;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::Error;
use crate::commit::Committer;
use crate::config::{Config, PastEnd};
use crate::ledger::Gap;
use crate::partitions::{InLog, Partitions, locate};
use crate::retry::{Retriable, Retry};
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

/// What the loop must do after [`resolve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolved {
    /// Nothing changed.
    Unchanged,
    /// Partitions were assigned again at their positions; the batch goes on.
    Reassigned,
    /// A partition's log was replaced: the batch being collected must be dropped;
    /// every partition was assigned again at what PostgreSQL holds.
    DropBatch,
}

/// Where reading of a partition outside its log goes on, and what is recorded.
struct Move {
    kind: &'static str,
    resumed: i64,
    /// Move the stored offset from this value to `resumed`.
    store: Option<i64>,
    lost: i64,
}

/// Finds the owned partitions whose position is outside their log and decides
/// for each (see the module doc).
pub async fn resolve(
    l: Loop<'_>,
    check: Check,
    committer: &mut Committer,
    stop: &CancellationToken,
) -> Result<Resolved, Error> {
    let owned = l.partitions.owned();
    let Some(logs) = list_offsets(l.config, &owned, check, stop).await? else {
        return Ok(Resolved::Unchanged);
    };
    let mut moved: HashMap<i32, i64> = HashMap::new();
    let mut replaced = false;
    for p in owned {
        let (Some(position), Some(&(low, high))) = (l.partitions.position(p), logs.get(&p)) else {
            continue;
        };
        let stored = l.partitions.stored(p);
        let Some(m) = decide(l.config, p, position, stored, (low, high))? else {
            continue;
        };
        let gap = Gap {
            group: &l.config.group,
            topic: &l.config.topic,
            partition: p,
            kind: m.kind,
            position,
            log_start: low,
            log_end: high,
            resumed_at: m.resumed,
        };
        match committer.record_gap(&gap, m.store, stop).await? {
            None => return Ok(Resolved::Unchanged), // stopping
            Some(false) => {
                // Another consumer owns it now; the coming rebalance settles it.
                warn!(
                    message = "Another consumer moved the partition's offset first.",
                    partition = p
                );
                continue;
            }
            Some(true) => {}
        }
        error!(
            message = "Partition position outside the log; recorded in pipeline_gaps.",
            partition = p,
            kind = m.kind,
            position,
            log_start = low,
            log_end = high,
            resumed_at = m.resumed,
            records_lost = m.lost
        );
        l.metrics.gap(m.kind, m.lost as u64);
        let now_stored = if m.store.is_some() {
            Some(m.resumed)
        } else {
            stored
        };
        l.partitions.on_moved(p, now_stored, m.resumed);
        replaced |= m.kind == PAST_END;
        moved.insert(p, m.resumed);
    }
    if moved.is_empty() && check == Check::Assignment {
        return Ok(Resolved::Unchanged);
    }
    reassign(l, replaced)?;
    Ok(if replaced {
        Resolved::DropBatch
    } else {
        Resolved::Reassigned
    })
}

/// The `kind` of a `pipeline_gaps` row (and the metric's label): a stored offset
/// past the log's end, moved by `--offsets-past-end`.
pub const PAST_END: &str = "past_log_end";
/// The `kind` of a `pipeline_gaps` row: records deleted by retention before they
/// were read.
pub const BEFORE_START: &str = "before_log_start";

/// What to do with a partition at `position` in the log `low..=high`: nothing
/// (`None`, inside), a move, or (past the end, `--offsets-past-end fail`) an error.
fn decide(
    config: &Config,
    partition: i32,
    position: i64,
    stored: Option<i64>,
    (low, high): (i64, i64),
) -> Result<Option<Move>, Error> {
    Ok(match locate(position, low, high) {
        InLog::Inside => None,
        InLog::BeforeStart { lost } => Some(Move {
            kind: BEFORE_START,
            resumed: low,
            // Nothing of the partition is in the batch: the stored offset moves to
            // the log start with the gap's record (else the next commit moves it).
            store: stored.filter(|s| *s == position),
            lost,
        }),
        InLog::PastEnd { .. } => {
            let resumed = match config.offsets_past_end {
                PastEnd::Fail => {
                    return Err(Error::OffsetPastEnd {
                        topic: config.topic.clone(),
                        group: config.group.clone(),
                        partition,
                        stored: position,
                        log_end: high,
                    });
                }
                PastEnd::Earliest => low,
                PastEnd::Latest => high,
            };
            Some(Move {
                kind: PAST_END,
                resumed,
                store: stored,
                lost: 0,
            })
        }
    })
}

/// Assigns the owned partitions again, each where reading goes on: its position
/// (or, when the batch is dropped, what PostgreSQL holds), `--starting-offsets`
/// where neither exists. This restarts the fetch librdkafka stopped.
fn reassign(l: Loop<'_>, drop_batch: bool) -> Result<(), Error> {
    let mut tpl = TopicPartitionList::new();
    let mut positions = Vec::new();
    // Where librdkafka would hand out the next record, for partitions of which
    // nothing was taken or stored (read from `--starting-offsets` until now).
    let handed_out = l.consumer.position().ok();
    for p in l.partitions.owned() {
        let stored = l.partitions.stored(p);
        let at = if drop_batch {
            stored
        } else {
            l.partitions.position(p)
        };
        let next = handed_out
            .as_ref()
            .and_then(|f| f.find_partition(&l.config.topic, p))
            .map(|e| e.offset())
            .filter(|o| matches!(o, Offset::Offset(_)));
        // When the batch is dropped, what it took must be read again: no shortcut.
        let offset = at
            .map(Offset::Offset)
            .or(next.filter(|_| !drop_batch))
            .unwrap_or(l.config.starting_offsets.offset());
        tpl.add_partition_offset(&l.config.topic, p, offset)
            .map_err(Error::kafka("assigning partitions again"))?;
        positions.push((p, stored, at));
    }
    l.consumer
        .assign(&tpl)
        .map_err(Error::kafka("assigning partitions again"))?;
    if drop_batch {
        // Everything is read again from what PostgreSQL holds.
        let stored: HashMap<i32, i64> = positions
            .iter()
            .filter_map(|(p, s, _)| s.map(|s| (*p, s)))
            .collect();
        l.partitions.on_rewind(&stored);
    } else {
        for (p, stored, at) in positions {
            if let Some(at) = at {
                l.partitions.on_moved(p, stored, at);
            }
        }
    }
    Ok(())
}

/// Each partition's log start and end, asked of the broker (ListOffsets). After a
/// fetch error the answer is needed: asked again with backoff until it comes
/// (`None` when stopping). After an assignment it is a precaution: without an
/// answer the check is skipped, and a fetch out of range brings it back.
async fn list_offsets(
    config: &Config,
    partitions: &[i32],
    check: Check,
    stop: &CancellationToken,
) -> Result<Option<HashMap<i32, (i64, i64)>>, Error> {
    if check == Check::Assignment {
        return match ask_offsets(config, partitions.to_vec()).await {
            Ok(logs) => Ok(Some(logs)),
            Err(error) => {
                warn!(message = "Cannot check the stored offsets against the log; skipped.", error = %error);
                Ok(None)
            }
        };
    }
    Retry::new(
        "reading the partitions' log start and end",
        stop,
        config.max_retry_backoff,
    )
    .run(async || {
        ask_offsets(config, partitions.to_vec())
            .await
            .map_err(Unanswered)
    })
    .await
    .map_err(|Unanswered(e)| e)
}

/// A ListOffsets that failed: the broker may answer the next one.
struct Unanswered(Error);

impl std::fmt::Display for Unanswered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl Retriable for Unanswered {
    fn retriable(&self) -> bool {
        true
    }
}

async fn ask_offsets(
    config: &Config,
    partitions: Vec<i32>,
) -> Result<HashMap<i32, (i64, i64)>, Error> {
    let client =
        common::kafka::client_config(&config.brokers, &config.security, &config.kafka_options)?;
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn config(policy: &str) -> Config {
        Config::try_parse_from(["consumer", "--offsets-past-end", policy]).unwrap()
    }

    #[test]
    fn inside_the_log_nothing_moves() {
        let c = config("fail");
        assert!(decide(&c, 0, 10, Some(10), (0, 20)).unwrap().is_none());
        assert!(decide(&c, 0, 20, Some(20), (0, 20)).unwrap().is_none());
    }

    #[test]
    fn before_the_start_reading_goes_on_at_the_start_and_the_loss_is_counted() {
        let c = config("fail");
        let m = decide(&c, 0, 5, Some(5), (40, 90)).unwrap().unwrap();
        assert_eq!(
            (m.kind, m.resumed, m.store, m.lost),
            (BEFORE_START, 40, Some(5), 35)
        );
        // Records of the partition are in the batch: the next commit moves the offset.
        let m = decide(&c, 0, 7, Some(5), (40, 90)).unwrap().unwrap();
        assert_eq!((m.resumed, m.store, m.lost), (40, None, 33));
    }

    #[test]
    fn past_the_end_fails_with_the_repair_unless_a_policy_says_where() {
        let e = decide(&config("fail"), 2, 606, Some(606), (0, 30))
            .err()
            .unwrap();
        let line = e.to_string();
        assert!(line.contains("partition 2") && line.contains("606") && line.contains("end 30"));
        assert!(line.contains("reset-offsets"), "{line}");
        let m = decide(&config("earliest"), 2, 606, Some(606), (4, 30))
            .unwrap()
            .unwrap();
        assert_eq!((m.kind, m.resumed, m.store), (PAST_END, 4, Some(606)));
        let m = decide(&config("latest"), 2, 606, Some(606), (4, 30))
            .unwrap()
            .unwrap();
        assert_eq!(m.resumed, 30);
    }
}
