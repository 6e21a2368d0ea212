//! The offset store: PostgreSQL, not Kafka, knows how far the pipeline got.
//!
//! Each partition's next offset is written in the same transaction as the rows and
//! dead letters it covers, so data and position can never disagree. The update is
//! conditional on the value the writer last saw: a consumer that lost its partitions
//! to another (and does not know it yet) fails the check and its transaction rolls
//! back instead of overwriting the new owner's progress. Every committed batch is
//! also recorded by id, which is how CSV part files left staged by a crash are
//! resolved (see `sink::csv`) and how a commit whose acknowledgement was lost is
//! recognised.

use std::collections::{HashMap, HashSet};

use tokio_postgres::{Client, GenericClient, Transaction};
use uuid::Uuid;

/// Tables of the offset store; created if missing.
pub const DDL: &str = r#"
CREATE TABLE IF NOT EXISTS pipeline_offsets (
    consumer_group text        NOT NULL,
    topic          text        NOT NULL,
    "partition"    integer     NOT NULL,
    next_offset    bigint      NOT NULL,
    batch_id       uuid,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, "partition")
);
CREATE TABLE IF NOT EXISTS pipeline_batches (
    batch_id       uuid        PRIMARY KEY,
    consumer_group text        NOT NULL,
    topic          text        NOT NULL,
    output_table   text        NOT NULL,
    part_file      text,
    records        bigint      NOT NULL,
    rows_written   bigint      NOT NULL,
    dead_letters   bigint      NOT NULL,
    offsets        jsonb       NOT NULL,
    committed_at   timestamptz NOT NULL DEFAULT now()
);
"#;

/// One partition's move in a batch: from the offset the writer believes is stored
/// (`None`: nothing stored yet) to the next offset after the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advance {
    pub partition: i32,
    pub expected: Option<i64>,
    pub next: i64,
    /// First offset read in this batch (for logs and the batch record).
    pub first: i64,
}

/// Records still to process in a partition: from the stored offset (or the log's
/// start when none is stored) to the high watermark.
pub fn lag(stored: Option<i64>, low: i64, high: i64) -> i64 {
    (high - stored.unwrap_or(low)).max(0)
}

/// The stored next offsets of `partitions`.
pub async fn load(
    client: &Client,
    group: &str,
    topic: &str,
    partitions: &[i32],
) -> Result<HashMap<i32, i64>, tokio_postgres::Error> {
    let rows = client
        .query(
            r#"SELECT "partition", next_offset FROM pipeline_offsets
               WHERE consumer_group = $1 AND topic = $2 AND "partition" = ANY($3)"#,
            &[&group, &topic, &partitions],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Every stored offset of a group on a topic, with when it last moved (as text).
pub async fn all(
    client: &Client,
    group: &str,
    topic: &str,
) -> Result<std::collections::BTreeMap<i32, (i64, String)>, tokio_postgres::Error> {
    let rows = client
        .query(
            r#"SELECT "partition", next_offset, to_char(updated_at, 'YYYY-MM-DD HH24:MI:SS TZ')
               FROM pipeline_offsets WHERE consumer_group = $1 AND topic = $2"#,
            &[&group, &topic],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect())
}

/// Sets a partition's offset whatever it held (`consumer reset-offsets`, which
/// makes sure no consumer of the group runs).
pub async fn overwrite(
    tx: &Transaction<'_>,
    group: &str,
    topic: &str,
    partition: i32,
    next: i64,
) -> Result<(), tokio_postgres::Error> {
    tx.execute(
        r#"INSERT INTO pipeline_offsets (consumer_group, topic, "partition", next_offset, batch_id)
           VALUES ($1, $2, $3, $4, NULL)
           ON CONFLICT (consumer_group, topic, "partition")
           DO UPDATE SET next_offset = EXCLUDED.next_offset, batch_id = NULL, updated_at = now()"#,
        &[&group, &topic, &partition, &next],
    )
    .await?;
    Ok(())
}

/// Moves one partition's offset if, and only if, it still holds the expected value.
/// Returns false when another writer moved it first.
pub async fn advance(
    tx: &Transaction<'_>,
    group: &str,
    topic: &str,
    batch: Uuid,
    a: &Advance,
) -> Result<bool, tokio_postgres::Error> {
    let n = match a.expected {
        Some(expected) => {
            tx.execute(
                r#"UPDATE pipeline_offsets SET next_offset = $5, batch_id = $6, updated_at = now()
                   WHERE consumer_group = $1 AND topic = $2 AND "partition" = $3 AND next_offset = $4"#,
                &[&group, &topic, &a.partition, &expected, &a.next, &batch],
            )
            .await?
        }
        None => {
            tx.execute(
                r#"INSERT INTO pipeline_offsets (consumer_group, topic, "partition", next_offset, batch_id)
                   VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING"#,
                &[&group, &topic, &a.partition, &a.next, &batch],
            )
            .await?
        }
    };
    Ok(n == 1)
}

/// Which of `batches` were committed.
pub async fn committed(
    client: &impl GenericClient,
    batches: &[Uuid],
) -> Result<HashSet<Uuid>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT batch_id FROM pipeline_batches WHERE batch_id = ANY($1)",
            &[&batches],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
