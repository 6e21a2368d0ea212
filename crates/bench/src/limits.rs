//! The machine's limits with the pipeline out of the way: what Kafka gives a
//! consumer that only counts bytes, what a producer loop sending pre-encoded bytes
//! reaches, and what PostgreSQL takes when the rows arrive already encoded.
//!
//! Each is measured with the same client settings and statements as the pipeline
//! uses, so that the ratio between the pipeline and its limit is about the pipeline
//! and nothing else.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use consumer::dead_letter::Provenance;
use consumer::decode::{BatchBuilder, Origin};
use consumer::sink;
use consumer::sink::copy::{self, Encoded};
use consumer::sink::postgres::{Guard, Mode, PgSink, Table, Target};
use consumer::transform::{DEFAULT_SQL, Transform};
use futures::SinkExt;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{ClientConfig, Message};
use uuid::Uuid;

use crate::cpu;

/// One pre-encoded event.
pub struct Event {
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

/// The first `n` events of the synthetic source with `seed`: the very events the
/// producer binary publishes with the same seed.
pub fn events(seed: u64, n: usize) -> Vec<Event> {
    events::Generator::new(seed)
        .take(n)
        .map(|e| Event {
            key: e.key().map(<[u8]>::to_vec),
            payload: e.to_json(),
        })
        .collect()
}

/// A rate measurement.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Rate {
    pub count: u64,
    pub bytes: u64,
    pub seconds: f64,
    /// CPU seconds it cost (user + system, every thread), where measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_seconds: Option<f64>,
}

impl Rate {
    pub fn per_s(&self) -> f64 {
        self.count as f64 / self.seconds.max(1e-9)
    }
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.seconds.max(1e-9)
    }
}

/// Publishes pre-encoded events with the producer binary's client settings, every
/// delivery acknowledged, timed from the first send to the last acknowledgement.
pub fn raw_produce(base: &ClientConfig, topic: &str, events: &[Event]) -> anyhow::Result<Rate> {
    let mut config = base.clone();
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "500000");
    let producer: ThreadedProducer<_> = config.create().context("raw producer")?;
    let started = Instant::now();
    let mut bytes = 0u64;
    for e in events {
        let mut record = BaseRecord::<Vec<u8>, Vec<u8>>::to(topic).payload(&e.payload);
        if let Some(k) = &e.key {
            record = record.key(k);
        }
        bytes += e.payload.len() as u64;
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => bail!("raw producer: {e}"),
            }
        }
    }
    producer
        .flush(Duration::from_secs(120))
        .context("raw producer flush")?;
    Ok(Rate {
        count: events.len() as u64,
        bytes,
        seconds: started.elapsed().as_secs_f64(),
        cpu_seconds: None,
    })
}

/// Reads `topic` from the beginning with a consumer that only counts, until
/// `expected` messages arrived. Timed from the assignment to the last message.
pub fn raw_consume(
    base: &ClientConfig,
    topic: &str,
    partitions: i32,
    expected: u64,
) -> anyhow::Result<Rate> {
    let mut config = base.clone();
    config
        .set("group.id", format!("bench-raw-{}", Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        // The pipeline's own buffering limit, so both read under the same rules.
        .set("queued.max.messages.kbytes", "65536");
    let consumer: BaseConsumer = config.create().context("raw consumer")?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    // This process does nothing else meanwhile: its CPU is librdkafka's fetching
    // and handing over each message, the floor under any Kafka consumer's cost.
    let cpu_before = cpu::own_cpu();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(300);
    let (mut count, mut bytes) = (0u64, 0u64);
    while count < expected {
        if Instant::now() > deadline {
            bail!("raw consumer read {count} of {expected} messages in 300 s");
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                count += 1;
                bytes += (m.payload_len() + m.key().map_or(0, <[u8]>::len)) as u64;
            }
            Some(Err(e)) => bail!("raw consumer: {e}"),
            None => {}
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu_after = cpu::own_cpu();
    Ok(Rate {
        count,
        bytes,
        seconds,
        cpu_seconds: cpu_before
            .zip(cpu_after)
            .map(|(a, b)| b.saturating_sub(a).as_secs_f64()),
    })
}

/// Rows of the default transform, encoded for COPY, in batches like the pipeline's.
pub struct Encodedbatches {
    pub batches: Vec<Encoded>,
    pub rows: u64,
    pub target: Target,
}

/// Decodes, transforms and encodes `events` in batches of `batch` records, the way
/// the pipeline would, so the limit below measures PostgreSQL alone.
pub async fn encode_batches(
    events: &[Event],
    batch: usize,
    partitions: i32,
    table: &str,
) -> anyhow::Result<Encodedbatches> {
    let transform = Transform::new(DEFAULT_SQL).await?;
    let columns = sink::columns(&transform.output_schema()).map_err(anyhow::Error::msg)?;
    let mut batches = Vec::new();
    let mut rows = 0;
    for (n, chunk) in events.chunks(batch.max(1)).enumerate() {
        let mut builder = BatchBuilder::new();
        for (i, e) in chunk.iter().enumerate() {
            let offset = (n * batch + i) as i64;
            builder.push(
                &Origin {
                    topic: "bench",
                    partition: (offset % i64::from(partitions.max(1))) as i32,
                    offset,
                    timestamp: Some(0),
                    key: e.key.as_deref(),
                    rank: None,
                },
                Some(&e.payload),
            );
        }
        let (input, _) = builder.finish();
        let provenance = Provenance::new(input.clone(), &["id".to_string()]);
        let output = transform.run(input).await?;
        // As the pipeline encodes it: each row with its record's rank (the guard).
        let encoded = copy::encode(
            &provenance.ranked(&output)?,
            &Guard::Kafka.columns(&columns),
        )?;
        rows += encoded.rows as u64;
        batches.push(encoded);
    }
    let users = Table::new(
        table,
        sink::table_ident(table).map_err(anyhow::Error::msg)?,
        vec![sink::column_ident("id").map_err(anyhow::Error::msg)?],
        &columns,
        Mode::Upsert(Guard::Kafka),
        0,
    );
    let target = Target {
        tables: vec![users],
        dead_letter_table: sink::table_ident(&format!("{table}_dead_letters"))
            .map_err(anyhow::Error::msg)?,
        group: "bench-limit".into(),
        topic: "bench".into(),
    };
    Ok(Encodedbatches {
        batches,
        rows,
        target,
    })
}

/// Writes the pre-encoded batches, one transaction each: binary COPY into the
/// staging table, then the pipeline's own merge statement. Nothing else.
pub async fn pg_write(
    url: &str,
    encoded: &Encodedbatches,
) -> anyhow::Result<(Rate, HashSet<String>)> {
    let mut pg = PgSink::connect(
        url,
        Duration::from_secs(10),
        encoded.target.clone(),
        Uuid::new_v4(),
    )
    .await?;
    let copy_sql = encoded.target.tables[0].copy_sql();
    let upsert = encoded.target.tables[0].write_sql();
    let client = pg.client().await?;
    let started = Instant::now();
    let mut bytes = 0u64;
    for b in &encoded.batches {
        let tx = client.transaction().await?;
        let sink = tx.copy_in(&copy_sql).await?;
        futures::pin_mut!(sink);
        sink.send(b.bytes.clone()).await?;
        sink.finish().await?;
        tx.execute(&upsert, &[&0i64, &b.rows]).await?;
        tx.commit().await?;
        bytes += b.bytes.len() as u64;
    }
    let seconds = started.elapsed().as_secs_f64();
    let ids: HashSet<String> = client
        .query(
            &format!("SELECT id FROM {}", encoded.target.tables[0].name),
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok((
        Rate {
            count: encoded.rows,
            bytes,
            seconds,
            cpu_seconds: None,
        },
        ids,
    ))
}
