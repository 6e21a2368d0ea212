//! End-to-end latency: for every message, the moment its batch committed in
//! PostgreSQL minus the message's Kafka timestamp (set by the producer when it
//! handed the event to librdkafka).
//!
//! The commit moment comes from `pipeline_batches.committed_at`, written with
//! `clock_timestamp()` as the last statement of the batch's transaction; each batch
//! records the offset range it covered per partition, so every message maps to
//! exactly one batch. Both clocks are this machine's when PostgreSQL runs here.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio_postgres::Client;
use uuid::Uuid;

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Percentiles {
    pub messages: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Messages of the first seconds are also reported apart: they wait for the
/// consumer's first fetch of the new partitions (about a second on tansu), which
/// is start-up, not the steady state.
pub const WARM_UP_MS: i64 = 5_000;

/// Latency over every message, and over those after the warm-up.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Measured {
    pub all: Percentiles,
    pub steady: Percentiles,
}

/// A committed batch's range in one partition: `[from, until)` committed at `at_ms`.
struct Range {
    from: i64,
    until: i64,
    at_ms: f64,
}

/// Reads the batches a group committed for `topic`.
async fn ranges(
    client: &Client,
    group: &str,
    topic: &str,
) -> anyhow::Result<HashMap<i32, Vec<Range>>> {
    let rows = client
        .query(
            "SELECT offsets, extract(epoch FROM committed_at)::float8 * 1000
             FROM pipeline_batches WHERE consumer_group = $1 AND topic = $2",
            &[&group, &topic],
        )
        .await?;
    let mut out: HashMap<i32, Vec<Range>> = HashMap::new();
    for row in rows {
        let offsets: serde_json::Value = row.get(0);
        let at_ms: f64 = row.get(1);
        let Some(map) = offsets.as_object() else {
            continue;
        };
        for (p, r) in map {
            let partition: i32 = p.parse().context("partition in pipeline_batches")?;
            let (Some(from), Some(until)) = (r["from"].as_i64(), r["until"].as_i64()) else {
                bail!("unexpected offsets in pipeline_batches: {r}");
            };
            out.entry(partition)
                .or_default()
                .push(Range { from, until, at_ms });
        }
    }
    for v in out.values_mut() {
        v.sort_by_key(|r| r.from);
    }
    Ok(out)
}

/// The Kafka timestamps of every message of `topic`, per partition and offset.
fn timestamps(
    base: &ClientConfig,
    topic: &str,
    partitions: i32,
    expected: u64,
) -> anyhow::Result<Vec<(i32, i64, i64)>> {
    let mut config = base.clone();
    config
        .set("group.id", format!("bench-ts-{}", Uuid::new_v4()))
        .set("enable.auto.commit", "false");
    let consumer: BaseConsumer = config.create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut out = Vec::with_capacity(expected as usize);
    while (out.len() as u64) < expected {
        if Instant::now() > deadline {
            bail!("read {} of {expected} timestamps in 300 s", out.len());
        }
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m?;
            let ts = m
                .timestamp()
                .to_millis()
                .context("a message without a timestamp")?;
            out.push((m.partition(), m.offset(), ts));
        }
    }
    Ok(out)
}

/// Latency of every message of `topic` as committed by `group`.
pub async fn measure(
    base: &ClientConfig,
    client: &Client,
    group: &str,
    topic: &str,
    partitions: i32,
    expected: u64,
) -> anyhow::Result<Measured> {
    let ranges = ranges(client, group, topic).await?;
    let (base, topic_owned) = (base.clone(), topic.to_string());
    let stamps =
        tokio::task::spawn_blocking(move || timestamps(&base, &topic_owned, partitions, expected))
            .await??;
    let first_ts = stamps.iter().map(|s| s.2).min().unwrap_or(0);
    let mut latencies = Vec::with_capacity(stamps.len());
    let mut steady = Vec::with_capacity(stamps.len());
    for (p, offset, ts) in stamps {
        let range = ranges.get(&p).and_then(|v| {
            let i = v.partition_point(|r| r.from <= offset);
            i.checked_sub(1).map(|i| &v[i]).filter(|r| offset < r.until)
        });
        let Some(range) = range else {
            bail!("message {p}:{offset} is in no committed batch");
        };
        let latency = range.at_ms - ts as f64;
        latencies.push(latency);
        if ts >= first_ts + WARM_UP_MS {
            steady.push(latency);
        }
    }
    Ok(Measured {
        all: percentiles(latencies),
        steady: percentiles(steady),
    })
}

/// Nearest-rank percentiles.
pub fn percentiles(mut v: Vec<f64>) -> Percentiles {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| -> f64 {
        if v.is_empty() {
            return f64::NAN;
        }
        let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
        v[rank - 1]
    };
    Percentiles {
        messages: v.len() as u64,
        p50_ms: at(0.50),
        p95_ms: at(0.95),
        p99_ms: at(0.99),
        max_ms: v.last().copied().unwrap_or(f64::NAN),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let p = percentiles((1..=100).rev().map(f64::from).collect());
        assert_eq!(p.messages, 100);
        assert_eq!(
            (p.p50_ms, p.p95_ms, p.p99_ms, p.max_ms),
            (50.0, 95.0, 99.0, 100.0)
        );
        let one = percentiles(vec![7.0]);
        assert_eq!((one.p50_ms, one.p99_ms), (7.0, 7.0));
    }
}
