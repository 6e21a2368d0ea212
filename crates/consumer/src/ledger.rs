//! The ledger: the pipeline's own tables in PostgreSQL and its advisory locks.
//!
//! - `pipeline_offsets`, the offset store: PostgreSQL, not Kafka, knows how far the
//!   pipeline got.
//! - `pipeline_batches`, the batch log: one row per committed batch.
//! - `pipeline_replays`, the replays of dead letters (`consumer replay-dead-letters`).
//! - [`locks`]: every advisory-lock key the pipeline takes, named.
//!
//! The user's own tables (the output table, the dead-letter table) live in
//! `sink::postgres` and `dead_letter`.
//!
//! Each partition's next offset is written in the same transaction as the rows and
//! dead letters it covers, so data and position can never disagree. The update is
//! conditional on the value the writer last saw: a consumer that lost its partitions
//! to another (and does not know it yet) fails the check and its transaction rolls
//! back instead of overwriting the new owner's progress. Every committed batch is
//! also recorded by id, which is how CSV part files left staged by a crash are
//! resolved (see `sink::csv`) and how a commit whose acknowledgement was lost is
//! recognised.

use std::collections::{BTreeMap, HashMap, HashSet};

use tokio_postgres::{Client, GenericClient, Transaction};
use uuid::Uuid;

/// Tables of the offset store and the batch log; created if missing.
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
    committed_at   timestamptz NOT NULL DEFAULT now(),
    outputs        jsonb
);
CREATE TABLE IF NOT EXISTS pipeline_gaps (
    id             bigserial   PRIMARY KEY,
    consumer_group text        NOT NULL,
    topic          text        NOT NULL,
    "partition"    integer     NOT NULL,
    kind           text        NOT NULL,
    position       bigint      NOT NULL,
    log_start      bigint      NOT NULL,
    log_end        bigint      NOT NULL,
    resumed_at     bigint      NOT NULL,
    detected_at    timestamptz NOT NULL DEFAULT now()
);
"#;

/// One partition's move in a batch: from the offset the writer believes is stored
/// (`None`: nothing stored yet) to the next offset after the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advance {
    pub partition: i32,
    pub stored: Option<i64>,
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
) -> Result<BTreeMap<i32, (i64, String)>, tokio_postgres::Error> {
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
    let n = match a.stored {
        Some(stored) => {
            tx.execute(
                r#"UPDATE pipeline_offsets SET next_offset = $5, batch_id = $6, updated_at = now()
                   WHERE consumer_group = $1 AND topic = $2 AND "partition" = $3 AND next_offset = $4"#,
                &[&group, &topic, &a.partition, &stored, &a.next, &batch],
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

/// Brings a batch log created by an earlier version up to date (the per-output
/// figures). Checked first: `ALTER TABLE` locks the table even when there is
/// nothing to add.
pub async fn upgrade(tx: &Transaction<'_>) -> Result<(), tokio_postgres::Error> {
    let has: bool = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'pipeline_batches'::regclass
                            AND attname = 'outputs' AND NOT attisdropped)",
            &[],
        )
        .await?
        .get(0);
    if !has {
        tx.batch_execute("ALTER TABLE pipeline_batches ADD COLUMN IF NOT EXISTS outputs jsonb")
            .await?;
    }
    Ok(())
}

/// What a committed batch recorded: rows written per output (by name), and dead
/// letters. Only asked of this process's own batches, which always record their
/// outputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub per_output: BTreeMap<String, u64>,
    pub dead_letters: u64,
}

impl Recorded {
    /// The rows written into each of `outputs`, in their order.
    pub fn rows_of<'a>(&self, outputs: impl Iterator<Item = &'a str>) -> Vec<u64> {
        outputs
            .map(|o| self.per_output.get(o).copied().unwrap_or(0))
            .collect()
    }
}

/// The figures a committed batch recorded, or `None` when it did not commit.
/// Used when a commit's answer was lost.
pub async fn recorded(
    client: &impl GenericClient,
    batch: Uuid,
) -> Result<Option<Recorded>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT dead_letters, outputs FROM pipeline_batches WHERE batch_id = $1",
            &[&batch],
        )
        .await?;
    Ok(row.map(|r| {
        let outputs: Option<serde_json::Value> = r.get(1);
        let per_output = outputs
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default();
        Recorded {
            per_output,
            dead_letters: r.get::<_, i64>(0) as u64,
        }
    }))
}

/// What the batch log records of a batch.
pub struct BatchRecord<'a> {
    pub id: Uuid,
    pub group: &'a str,
    pub topic: &'a str,
    /// The outputs' tables, `, `-separated.
    pub output_table: &'a str,
    pub part_file: Option<&'a str>,
    pub records: u64,
    /// Rows written, in all and per output name.
    pub rows_written: u64,
    pub per_output: BTreeMap<&'a str, u64>,
    pub dead_letters: u64,
    pub advances: &'a [Advance],
}

/// Records a batch in its transaction: the last statement before COMMIT, with the
/// wall clock rather than now() (the transaction's start), so `committed_at` is when
/// the rows became visible, give or take the commit itself (what end-to-end latency
/// is measured against).
pub async fn record_batch(
    tx: &Transaction<'_>,
    b: &BatchRecord<'_>,
) -> Result<(), tokio_postgres::Error> {
    let ranges: serde_json::Value = b
        .advances
        .iter()
        .map(|a| {
            (
                a.partition.to_string(),
                serde_json::json!({"from": a.first, "until": a.next}),
            )
        })
        .collect::<serde_json::Map<_, _>>()
        .into();
    tx.execute(
        "INSERT INTO pipeline_batches (batch_id, consumer_group, topic, output_table, part_file,
                                       records, rows_written, dead_letters, offsets, outputs,
                                       committed_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, clock_timestamp())",
        &[
            &b.id,
            &b.group,
            &b.topic,
            &b.output_table,
            &b.part_file,
            &(b.records as i64),
            &(b.rows_written as i64),
            &(b.dead_letters as i64),
            &ranges,
            &serde_json::json!(b.per_output),
        ],
    )
    .await?;
    Ok(())
}

/// A partition whose position was outside its log, and where reading went on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap<'a> {
    pub group: &'a str,
    pub topic: &'a str,
    pub partition: i32,
    /// `before_log_start` (records lost to retention) or `past_log_end`.
    pub kind: &'static str,
    /// Where reading was to go on (the stored offset, or after the last record taken).
    pub position: i64,
    pub log_start: i64,
    pub log_end: i64,
    /// Where reading went on instead.
    pub resumed_at: i64,
}

/// Records a gap, so that no loss and no reset is ever silent.
pub async fn record_gap(tx: &Transaction<'_>, g: &Gap<'_>) -> Result<(), tokio_postgres::Error> {
    tx.execute(
        r#"INSERT INTO pipeline_gaps (consumer_group, topic, "partition", kind, position,
                                      log_start, log_end, resumed_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"#,
        &[
            &g.group,
            &g.topic,
            &g.partition,
            &g.kind,
            &g.position,
            &g.log_start,
            &g.log_end,
            &g.resumed_at,
        ],
    )
    .await?;
    Ok(())
}

/// Moves a partition's stored offset from `from` to `to` if, and only if, it still
/// holds `from` (another consumer may own the partition now). Returns false when
/// it did not.
pub async fn move_stored(
    tx: &Transaction<'_>,
    group: &str,
    topic: &str,
    partition: i32,
    from: i64,
    to: i64,
) -> Result<bool, tokio_postgres::Error> {
    let n = tx
        .execute(
            r#"UPDATE pipeline_offsets SET next_offset = $5, batch_id = NULL, updated_at = now()
               WHERE consumer_group = $1 AND topic = $2 AND "partition" = $3 AND next_offset = $4"#,
            &[&group, &topic, &partition, &from, &to],
        )
        .await?;
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

/// Every advisory-lock key the pipeline takes, in one place. Keys computed by
/// PostgreSQL are SQL expressions (with `$1` the name they are derived from), so
/// operator commands and consumers get the same key whatever their language.
pub mod locks {
    use uuid::Uuid;

    /// Serialises the schema changes of consumers starting together
    /// (`pg_advisory_xact_lock`).
    pub const SCHEMA: i64 = 7_215_001;

    /// A consumer group's lock, `$1` the group name: every running consumer holds it
    /// in shared mode for its whole life; `reset-offsets` takes it exclusively.
    pub const GROUP: &str = "hashtext('users-pipeline-group:' || $1)::bigint";

    /// The lock of a dead-letter table's replays, `$1` the table name: one replay
    /// of a table at a time.
    pub const REPLAY: &str = "hashtext('replay:' || to_regclass($1)::oid::text)::bigint";

    /// A consumer instance's session lock: held while its database session lives,
    /// so the staged files of an instance whose COMMIT may still land are never
    /// judged by another.
    pub fn instance(id: Uuid) -> i64 {
        let b = id.as_bytes();
        i64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    }
}

/// The replays of dead letters (`consumer replay-dead-letters`).
pub mod replays {
    use tokio_postgres::{Client, Transaction};
    use uuid::Uuid;

    /// The replay log; created by the first replay.
    pub const DDL: &str = r#"
CREATE TABLE IF NOT EXISTS pipeline_replays (
    replay_id         uuid        PRIMARY KEY,
    dead_letter_table text        NOT NULL,
    topic             text        NOT NULL,
    ids               bigint[]    NOT NULL,
    started_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- The replayer's own clock (ms), which also stamps the messages it publishes.
    started_ms        bigint      NOT NULL,
    heartbeat_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    completed_at      timestamptz
);
"#;

    /// A replay that did not complete.
    pub struct Pending {
        pub id: Uuid,
        pub topic: String,
        pub ids: Vec<i64>,
        pub started_ms: i64,
        /// Seconds since its last heartbeat.
        pub silent_s: f64,
    }

    /// The incomplete replays of a dead-letter table.
    pub async fn pending(
        client: &Client,
        table: &str,
    ) -> Result<Vec<Pending>, tokio_postgres::Error> {
        let rows = client
            .query(
                "SELECT replay_id, topic, ids, started_ms,
                        extract(epoch FROM clock_timestamp() - heartbeat_at)::float8
                 FROM pipeline_replays WHERE dead_letter_table = $1 AND completed_at IS NULL",
                &[&table],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| Pending {
                id: r.get(0),
                topic: r.get(1),
                ids: r.get(2),
                started_ms: r.get(3),
                silent_s: r.get(4),
            })
            .collect())
    }

    /// Records a replay as pending, before anything is published.
    pub async fn start(
        client: &Client,
        id: Uuid,
        table: &str,
        topic: &str,
        ids: &[i64],
        started_ms: i64,
    ) -> Result<(), tokio_postgres::Error> {
        client
            .execute(
                "INSERT INTO pipeline_replays (replay_id, dead_letter_table, topic, ids, started_ms)
                 VALUES ($1, $2, $3, $4, $5)",
                &[&id, &table, &topic, &ids, &started_ms],
            )
            .await?;
        Ok(())
    }

    /// Proves the replayer alive.
    pub async fn heartbeat(client: &Client, id: Uuid) -> Result<(), tokio_postgres::Error> {
        client
            .execute(
                "UPDATE pipeline_replays SET heartbeat_at = clock_timestamp() WHERE replay_id = $1",
                &[&id],
            )
            .await?;
        Ok(())
    }

    /// Marks the published dead letters replayed and the replay completed.
    pub async fn finish(
        tx: &Transaction<'_>,
        table: &str,
        id: Uuid,
        published: &[i64],
    ) -> Result<(), tokio_postgres::Error> {
        tx.execute(
            &format!("UPDATE {table} SET replayed_at = now() WHERE id = ANY($1)"),
            &[&published],
        )
        .await?;
        tx.execute(
            "UPDATE pipeline_replays SET completed_at = now() WHERE replay_id = $1",
            &[&id],
        )
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_counts_from_the_stored_offset_or_the_log_start() {
        assert_eq!(lag(Some(40), 0, 100), 60);
        assert_eq!(lag(None, 10, 100), 90);
        assert_eq!(lag(Some(100), 0, 100), 0);
    }

    #[test]
    fn instance_keys_differ_per_instance() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        assert_ne!(locks::instance(a), locks::instance(b));
        assert_eq!(locks::instance(a), locks::instance(a));
    }
}
