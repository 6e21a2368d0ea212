//! PostgreSQL: rows, dead letters and offsets of a batch in one transaction.
//!
//! Rows are staged with binary COPY into a temporary table, then merged with one
//! `INSERT ... SELECT DISTINCT ON (key) ... ON CONFLICT DO UPDATE`, which keeps the
//! last row per key of the batch (so a query that forgets to de-duplicate never hits
//! "ON CONFLICT DO UPDATE command cannot affect row a second time"). A row that the
//! database refuses (a constraint the user added, say) must neither stop nor loop
//! the pipeline: the merge is retried on halves of the batch under savepoints until
//! the offending rows are isolated, and those become dead letters carrying the
//! database's message. Connection errors are not data errors: the caller retries the
//! whole transaction.

use std::collections::VecDeque;
use std::time::Duration;

use futures::SinkExt;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, GenericClient, NoTls, Transaction};
use tracing::{info, warn};
use uuid::Uuid;

use super::copy::Encoded;
use super::{Column, quote_ident};
use crate::decode::DeadLetter;
use crate::offsets::{self, Advance};

/// Errors of the PostgreSQL sink.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("cannot connect to PostgreSQL ({target}): {reason}")]
    Connect { target: String, reason: String },
    #[error("invalid --database-url: {0}")]
    Url(String),
    #[error("table {table}: {reason}")]
    Schema { table: String, reason: String },
    #[error("PostgreSQL: {0}")]
    Db(String),
    #[error("database {0:?} does not exist")]
    NoDatabase(String),
}

impl PgError {
    pub(crate) fn db(e: &tokio_postgres::Error) -> Self {
        PgError::Db(reason(e))
    }
}

/// The most useful one-line description of a driver error.
pub fn reason(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} ({})", db.message(), db.code().code());
    }
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

/// True when the error is about the data (SQLSTATE classes 22 and 23): retrying the
/// same rows cannot help, isolating them can.
fn is_data_error(e: &tokio_postgres::Error) -> bool {
    e.code()
        .is_some_and(|c| c.code().starts_with("22") || c.code().starts_with("23"))
}

/// What the sink needs to know about a batch.
pub struct BatchWrite<'a> {
    pub id: Uuid,
    pub encoded: &'a Encoded,
    pub dead_letters: &'a [DeadLetter],
    pub advances: &'a [Advance],
    pub part_file: Option<&'a str>,
    pub records: u64,
}

/// How a batch's transaction ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Committed {
        rows_written: u64,
        /// Rows the database refused, stored as dead letters.
        rejected_rows: u64,
        dead_letters: u64,
    },
    /// Another writer moved an offset first: nothing was written.
    Conflict,
}

/// Where everything goes, with identifiers already checked and quoted.
#[derive(Debug, Clone)]
pub struct Target {
    pub table: String,
    pub key: String,
    pub columns: Vec<Column>,
    pub dead_letter_table: String,
    pub group: String,
    pub topic: String,
}

/// A connection and the statements of a batch.
pub struct PgSink {
    instance: Uuid,
    config: tokio_postgres::Config,
    client: Option<Client>,
    target: Target,
    display: String,
    upsert: String,
    retry: Duration,
}

impl PgSink {
    /// Connects (creating the database if it is missing and the server allows it),
    /// then creates or checks the tables. Any failure here is final.
    pub async fn connect(
        url: &str,
        timeout: Duration,
        target: Target,
        instance: Uuid,
    ) -> Result<Self, PgError> {
        let config = parse_url(url, timeout)?;
        let display = describe(&config);
        let client = match connect(&config, timeout).await {
            Ok(c) => c,
            Err(e) if e.code() == Some(&SqlState::INVALID_CATALOG_NAME) => {
                create_database(&config, timeout).await?;
                connect(&config, timeout)
                    .await
                    .map_err(|e| PgError::Connect {
                        target: display.clone(),
                        reason: e.reason(),
                    })?
            }
            Err(e) => {
                return Err(PgError::Connect {
                    target: display,
                    reason: e.reason(),
                });
            }
        };
        let upsert = upsert_sql(&target);
        lock_instance(&client, instance).await?;
        lock_group(&client, &target.group).await?;
        let mut sink = Self {
            instance,
            config,
            client: Some(client),
            target,
            display,
            upsert,
            retry: timeout,
        };
        sink.prepare_schema().await?;
        Ok(sink)
    }

    /// `host:port/db` for messages.
    pub fn display(&self) -> &str {
        &self.display
    }

    /// The live client, reconnecting if the connection was lost.
    pub async fn client(&mut self) -> Result<&mut Client, PgError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = None;
            let client = connect(&self.config, self.retry)
                .await
                .map_err(|e| PgError::Connect {
                    target: self.display.clone(),
                    reason: e.reason(),
                })?;
            stage_table(&client, &self.target).await?;
            // The old session may linger on the server for a while (a half-open
            // connection) still holding our instance lock: wait a bounded time and
            // let the caller's backoff try again, rather than hang here.
            client
                .batch_execute("SET lock_timeout = '5s'")
                .await
                .map_err(|e| PgError::db(&e))?;
            lock_instance(&client, self.instance).await?;
            lock_group(&client, &self.target.group).await?;
            client
                .batch_execute("RESET lock_timeout")
                .await
                .map_err(|e| PgError::db(&e))?;
            info!(message = "Reconnected to PostgreSQL.", target = %self.display);
            self.client = Some(client);
        }
        self.client
            .as_mut()
            .ok_or_else(|| PgError::Db("no connection".into()))
    }

    /// Creates the tables if missing, checks an existing table against the output
    /// columns (adding new ones, refusing type changes), under an advisory lock so
    /// that consumers starting together do not race each other's DDL.
    async fn prepare_schema(&mut self) -> Result<(), PgError> {
        let target = self.target.clone();
        let client = self.client().await?;
        let tx = client.transaction().await.map_err(|e| PgError::db(&e))?;
        tx.execute("SELECT pg_advisory_xact_lock(7215001)", &[])
            .await
            .map_err(|e| PgError::db(&e))?;
        tx.batch_execute(offsets::DDL)
            .await
            .map_err(|e| PgError::db(&e))?;
        tx.batch_execute(&dead_letter_ddl(&target.dead_letter_table))
            .await
            .map_err(|e| PgError::db(&e))?;
        for ddl in plan_table(&tx, &target).await? {
            tx.batch_execute(&ddl).await.map_err(|e| PgError::db(&e))?;
            info!(message = "Changed the table.", table = %target.table, ddl = %ddl);
        }
        tx.commit().await.map_err(|e| PgError::db(&e))?;
        let client = self.client().await?;
        stage_table(client, &target).await
    }

    /// Writes one batch in one transaction. `Err` means nothing was written and the
    /// same call may be retried; [`Outcome::Conflict`] means it must not be.
    pub async fn write(&mut self, batch: &BatchWrite<'_>) -> Result<Outcome, PgError> {
        let target = self.target.clone();
        let upsert = self.upsert.clone();
        let client = self.client().await?;
        write(client, &target, &upsert, batch)
            .await
            .map_err(|e| PgError::db(&e))
    }

    /// The figures recorded for a batch (rows written, dead letters), or `None` when
    /// it did not commit. Used when a commit's answer was lost.
    pub async fn recorded(&mut self, batch: Uuid) -> Result<Option<(u64, u64)>, PgError> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT rows_written, dead_letters FROM pipeline_batches WHERE batch_id = $1",
                &[&batch],
            )
            .await
            .map_err(|e| PgError::db(&e))?;
        Ok(row.map(|r| (r.get::<_, i64>(0) as u64, r.get::<_, i64>(1) as u64)))
    }

    /// The stored next offsets of the given partitions.
    pub async fn load_offsets(
        &mut self,
        partitions: &[i32],
    ) -> Result<std::collections::HashMap<i32, i64>, PgError> {
        let (group, topic) = (self.target.group.clone(), self.target.topic.clone());
        let client = self.client().await?;
        offsets::load(client, &group, &topic, partitions)
            .await
            .map_err(|e| PgError::db(&e))
    }

    /// Takes a dead instance's session lock. While its old database session still
    /// exists (a COMMIT it sent may still become visible), this fails: then its staged
    /// files must not be judged yet.
    pub async fn try_lock_instance(&mut self, instance: Uuid) -> Result<bool, PgError> {
        let client = self.client().await?;
        let row = client
            .query_one(
                "SELECT pg_try_advisory_lock($1)",
                &[&instance_key(instance)],
            )
            .await
            .map_err(|e| PgError::db(&e))?;
        Ok(row.get(0))
    }

    /// Releases a lock taken with [`PgSink::try_lock_instance`].
    pub async fn unlock_instance(&mut self, instance: Uuid) -> Result<(), PgError> {
        let client = self.client().await?;
        client
            .execute("SELECT pg_advisory_unlock($1)", &[&instance_key(instance)])
            .await
            .map_err(|e| PgError::db(&e))?;
        Ok(())
    }

    /// Which of the given batches committed.
    pub async fn committed(
        &mut self,
        batches: &[Uuid],
    ) -> Result<std::collections::HashSet<Uuid>, PgError> {
        let client = self.client().await?;
        offsets::committed(&*client, batches)
            .await
            .map_err(|e| PgError::db(&e))
    }

    /// Logs a failed attempt and forgets a broken connection.
    pub fn failed(&mut self, e: &PgError, attempt: u32, retry_in: Duration) {
        warn!(
            message = "PostgreSQL write failed, retrying the batch.",
            error = %e,
            attempt,
            retry_in = ?retry_in
        );
        if self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
        }
    }
}

async fn write(
    client: &mut Client,
    target: &Target,
    upsert: &str,
    batch: &BatchWrite<'_>,
) -> Result<Outcome, tokio_postgres::Error> {
    let mut tx = client.transaction().await?;
    let mut rows_written = 0u64;
    let mut dead: Vec<DeadLetter> = batch.dead_letters.to_vec();
    let mut rejected_rows = 0u64;
    for r in &batch.encoded.rejected {
        dead.push(sink_dead_letter(
            &target.topic,
            r.row_json.clone(),
            r.reason.clone(),
        ));
        rejected_rows += 1;
    }
    if batch.encoded.rows > 0 {
        let copy = format!(
            "COPY pg_temp.pipeline_stage ({}, __ord) FROM STDIN (FORMAT binary)",
            target
                .columns
                .iter()
                .map(|c| quote_ident(&c.name))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let sink = tx.copy_in(&copy).await?;
        futures::pin_mut!(sink);
        // The encoded batch is shared, so a retry costs no re-encoding.
        sink.send(batch.encoded.bytes.clone()).await?;
        sink.finish().await?;
        let (written, refused) = merge(&mut tx, upsert, batch.encoded.rows, &target.topic).await?;
        rows_written = written;
        rejected_rows += refused.len() as u64;
        dead.extend(refused);
    }
    if !dead.is_empty() {
        insert_dead_letters(&tx, &target.dead_letter_table, batch.id, &dead).await?;
    }
    for a in batch.advances {
        if !offsets::advance(&tx, &target.group, &target.topic, batch.id, a).await? {
            tx.rollback().await?;
            return Ok(Outcome::Conflict);
        }
    }
    let ranges: serde_json::Value = batch
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
    // The last statement before COMMIT, with the wall clock rather than now() (the
    // transaction's start): committed_at is when the rows became visible, give or
    // take the commit itself, which is what end-to-end latency is measured against.
    tx.execute(
        "INSERT INTO pipeline_batches (batch_id, consumer_group, topic, output_table, part_file,
                                           records, rows_written, dead_letters, offsets,
                                           committed_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, clock_timestamp())",
        &[
            &batch.id,
            &target.group,
            &target.topic,
            &target.table,
            &batch.part_file,
            &(batch.records as i64),
            &(rows_written as i64),
            &(dead.len() as i64),
            &ranges,
        ],
    )
    .await?;
    tx.commit().await?;
    Ok(Outcome::Committed {
        rows_written,
        rejected_rows,
        dead_letters: dead.len() as u64,
    })
}

/// Upserts rows `0..rows` of the stage, isolating refused rows. Returns the rows
/// written and the refused rows as dead letters.
async fn merge(
    tx: &mut Transaction<'_>,
    upsert: &str,
    rows: i64,
    topic: &str,
) -> Result<(u64, Vec<DeadLetter>), tokio_postgres::Error> {
    let mut pending = VecDeque::from([(0i64, rows)]);
    let mut written = 0u64;
    let mut refused = Vec::new();
    while let Some((lo, hi)) = pending.pop_front() {
        let sp = tx.savepoint("merge").await?;
        match sp.execute(upsert, &[&lo, &hi]).await {
            Ok(n) => {
                sp.commit().await?;
                written += n;
            }
            Err(e) if is_data_error(&e) => {
                sp.rollback().await?;
                if hi - lo == 1 {
                    let row: String = tx
                        .query_one(
                            "SELECT (to_jsonb(s) - '__ord')::text FROM pg_temp.pipeline_stage s WHERE __ord = $1",
                            &[&lo],
                        )
                        .await?
                        .get(0);
                    refused.push(sink_dead_letter(topic, row, reason(&e)));
                } else {
                    // Halves in order, so that later rows still win over earlier ones.
                    let mid = lo + (hi - lo) / 2;
                    pending.push_front((mid, hi));
                    pending.push_front((lo, mid));
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok((written, refused))
}

fn sink_dead_letter(topic: &str, row_json: String, reason: String) -> DeadLetter {
    DeadLetter {
        topic: Some(topic.to_string()),
        partition: None,
        offset: None,
        timestamp: None,
        key: None,
        payload: Some(row_json.into_bytes()),
        reason,
        stage: "sink",
    }
}

async fn insert_dead_letters(
    tx: &Transaction<'_>,
    table: &str,
    batch: Uuid,
    dead: &[DeadLetter],
) -> Result<u64, tokio_postgres::Error> {
    let topics: Vec<Option<&str>> = dead.iter().map(|d| d.topic.as_deref()).collect();
    let partitions: Vec<Option<i32>> = dead.iter().map(|d| d.partition).collect();
    let offsets: Vec<Option<i64>> = dead.iter().map(|d| d.offset).collect();
    let timestamps: Vec<Option<chrono::DateTime<chrono::Utc>>> = dead
        .iter()
        .map(|d| {
            // Kafka timestamps are arbitrary integers: keep what PostgreSQL can store
            // (chrono itself refuses years past PostgreSQL's upper bound).
            d.timestamp
                .filter(|ms| *ms >= super::copy::PG_MIN_TIMESTAMP_MICROS / 1000)
                .and_then(chrono::DateTime::from_timestamp_millis)
        })
        .collect();
    let keys: Vec<Option<&[u8]>> = dead.iter().map(|d| d.key.as_deref()).collect();
    let payloads: Vec<Option<&[u8]>> = dead.iter().map(|d| d.payload.as_deref()).collect();
    let reasons: Vec<&str> = dead.iter().map(|d| d.reason.as_str()).collect();
    let stages: Vec<&str> = dead.iter().map(|d| d.stage).collect();
    tx.execute(
        &format!(
            r#"INSERT INTO {table} (topic, "partition", "offset", "timestamp", "key", payload, reason, stage, batch_id)
               SELECT t, p, o, ts, k, v, r, s, $9
               FROM unnest($1::text[], $2::int4[], $3::int8[], $4::timestamptz[], $5::bytea[],
                           $6::bytea[], $7::text[], $8::text[]) AS d(t, p, o, ts, k, v, r, s)"#
        ),
        &[
            &topics,
            &partitions,
            &offsets,
            &timestamps,
            &keys,
            &payloads,
            &reasons,
            &stages,
            &batch,
        ],
    )
    .await
}

/// What the output table needs: nothing, a CREATE TABLE, or ALTERs adding new
/// columns. Refuses type changes and a table without a unique index on the key.
/// Runs nothing, so `consumer validate` can print it.
pub async fn plan_table(
    client: &impl GenericClient,
    target: &Target,
) -> Result<Vec<String>, PgError> {
    let schema_error = |reason: String| PgError::Schema {
        table: target.table.clone(),
        reason,
    };
    let existing = client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod)
             FROM pg_attribute a
             WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
             ORDER BY a.attnum",
            &[&target.table],
        )
        .await
        .map_err(|e| PgError::db(&e))?;
    if existing.is_empty() {
        let cols: Vec<String> = target
            .columns
            .iter()
            .map(|c| format!("{} {}", quote_ident(&c.name), c.pg.sql()))
            .collect();
        return Ok(vec![format!(
            "CREATE TABLE {} ({}, PRIMARY KEY ({}))",
            target.table,
            cols.join(", "),
            target.key
        )]);
    }
    let mut plan = Vec::new();
    for c in &target.columns {
        match existing.iter().find(|r| r.get::<_, String>(0) == c.name) {
            Some(row) => {
                let have: String = row.get(1);
                if have != c.pg.sql() {
                    return Err(schema_error(format!(
                        "column {:?} is {have} but the transform now produces {}; \
                         migrate the table or CAST in the query",
                        c.name,
                        c.pg.sql()
                    )));
                }
            }
            None => plan.push(format!(
                "ALTER TABLE {} ADD COLUMN {} {}",
                target.table,
                quote_ident(&c.name),
                c.pg.sql()
            )),
        }
    }
    let unique = client
        .query_opt(
            "SELECT 1 FROM pg_index i
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
             WHERE i.indrelid = to_regclass($1) AND i.indisunique
               AND i.indnkeyatts = 1 AND a.attname = $2
               -- ON CONFLICT (key) can only use a plain, valid, immediate index.
               AND i.indpred IS NULL AND i.indexprs IS NULL
               AND i.indimmediate AND i.indisvalid",
            &[&target.table, &unquote(&target.key)],
        )
        .await
        .map_err(|e| PgError::db(&e))?;
    if unique.is_none() {
        return Err(schema_error(format!(
            "no primary key or unique index on {} alone, which the upsert needs",
            target.key
        )));
    }
    Ok(plan)
}

/// Connects to the database of `url` without creating anything (operator commands).
pub async fn connect_existing(url: &str, timeout: Duration) -> Result<(Client, String), PgError> {
    let config = parse_url(url, timeout)?;
    let display = describe(&config);
    let client = connect(&config, timeout).await.map_err(|e| {
        if e.code() == Some(&SqlState::INVALID_CATALOG_NAME) {
            PgError::NoDatabase(config.get_dbname().unwrap_or_default().to_string())
        } else {
            PgError::Connect {
                target: display.clone(),
                reason: e.reason(),
            }
        }
    })?;
    Ok((client, display))
}

/// The DDL of the dead-letter table (also printed by `consumer validate`).
pub fn dead_letter_ddl(table: &str) -> String {
    format!(
        r#"CREATE TABLE IF NOT EXISTS {table} (
            id          bigserial   PRIMARY KEY,
            topic       text,
            "partition" integer,
            "offset"    bigint,
            "timestamp" timestamptz,
            "key"       bytea,
            payload     bytea,
            reason      text        NOT NULL,
            stage       text        NOT NULL,
            batch_id    uuid,
            created_at  timestamptz NOT NULL DEFAULT now(),
            replayed_at timestamptz
        )"#
    )
}

/// The merge statement of a batch: rows `$1..$2` of the stage into the table, last
/// row per key winning. Public for the benchmark, which measures it on its own.
pub fn upsert_sql(t: &Target) -> String {
    let cols: Vec<String> = t.columns.iter().map(|c| quote_ident(&c.name)).collect();
    let list = cols.join(", ");
    let updates: Vec<String> = cols
        .iter()
        .filter(|c| **c != t.key)
        .map(|c| format!("{c} = EXCLUDED.{c}"))
        .collect();
    let action = if updates.is_empty() {
        "NOTHING".to_string()
    } else {
        format!("UPDATE SET {}", updates.join(", "))
    };
    format!(
        "INSERT INTO {table} ({list})
         SELECT DISTINCT ON ({key}) {list} FROM pg_temp.pipeline_stage
         WHERE __ord >= $1 AND __ord < $2
         ORDER BY {key}, __ord DESC
         ON CONFLICT ({key}) DO {action}",
        table = t.table,
        key = t.key
    )
}

/// The per-connection staging table; its rows vanish at each commit.
async fn stage_table(client: &Client, t: &Target) -> Result<(), PgError> {
    let cols: Vec<String> = t
        .columns
        .iter()
        .map(|c| format!("{} {}", quote_ident(&c.name), c.pg.sql()))
        .collect();
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS pg_temp.pipeline_stage;
             CREATE TEMP TABLE pipeline_stage ({}, __ord bigint NOT NULL) ON COMMIT DELETE ROWS",
            cols.join(", ")
        ))
        .await
        .map_err(|e| PgError::db(&e))
}

/// The advisory-lock key of a consumer instance.
fn instance_key(instance: Uuid) -> i64 {
    let b = instance.as_bytes();
    i64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// Holds this instance's session lock for as long as its connection lives.
/// The advisory-lock key of a consumer group (computed by PostgreSQL, so that
/// operator commands get the same key with plain SQL).
pub const GROUP_LOCK_KEY: &str = "hashtext('users-pipeline-group:' || $1)::bigint";

/// Every running consumer holds its group's lock in shared mode for as long as its
/// connection lives: `reset-offsets` takes it exclusively, which is refused while
/// any consumer of the group runs, whatever the broker can tell about the group.
async fn lock_group(client: &Client, group: &str) -> Result<(), PgError> {
    client
        .execute(
            &format!("SELECT pg_advisory_lock_shared({GROUP_LOCK_KEY})"),
            &[&group],
        )
        .await
        .map_err(|e| PgError::db(&e))?;
    Ok(())
}

async fn lock_instance(client: &Client, instance: Uuid) -> Result<(), PgError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&instance_key(instance)])
        .await
        .map_err(|e| PgError::db(&e))?;
    Ok(())
}

/// Why a connection attempt failed.
enum ConnectError {
    Pg(tokio_postgres::Error),
    Timeout(Duration),
}

impl ConnectError {
    fn code(&self) -> Option<&SqlState> {
        match self {
            ConnectError::Pg(e) => e.code(),
            ConnectError::Timeout(_) => None,
        }
    }

    fn reason(&self) -> String {
        match self {
            ConnectError::Pg(e) => reason(e),
            ConnectError::Timeout(t) => format!("no answer within {t:?}"),
        }
    }
}

async fn connect(
    config: &tokio_postgres::Config,
    timeout: Duration,
) -> Result<Client, ConnectError> {
    let (client, connection) = match tokio::time::timeout(timeout, config.connect(NoTls)).await {
        Ok(r) => r.map_err(ConnectError::Pg)?,
        Err(_) => return Err(ConnectError::Timeout(timeout)),
    };
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            warn!(message = "PostgreSQL connection closed.", error = %reason(&e));
        }
    });
    Ok(client)
}

async fn create_database(
    config: &tokio_postgres::Config,
    timeout: Duration,
) -> Result<(), PgError> {
    let name = config.get_dbname().unwrap_or("postgres").to_string();
    let mut admin = config.clone();
    admin.dbname("postgres");
    let client = connect(&admin, timeout)
        .await
        .map_err(|e| PgError::Connect {
            target: describe(&admin),
            reason: format!(
                "database {name:?} is missing and cannot be created: {}",
                e.reason()
            ),
        })?;
    match client
        .batch_execute(&format!("CREATE DATABASE {}", quote_ident(&name)))
        .await
    {
        Ok(()) => {
            info!(message = "Created database.", database = %name);
            Ok(())
        }
        Err(e) if e.code() == Some(&SqlState::DUPLICATE_DATABASE) => Ok(()),
        Err(e) => Err(PgError::Connect {
            target: describe(config),
            reason: format!(
                "database {name:?} is missing and cannot be created: {}",
                reason(&e)
            ),
        }),
    }
}

fn describe(config: &tokio_postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(s) => s.clone(),
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{}@{host}:{port}/{}",
        config.get_user().unwrap_or("?"),
        config.get_dbname().unwrap_or("?")
    )
}

fn unquote(quoted: &str) -> String {
    quoted
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(quoted)
        .replace("\"\"", "\"")
}

/// Connects without any of the start-up work (for the offset lookup thread).
pub(crate) async fn connect_plain(
    config: &tokio_postgres::Config,
    timeout: Duration,
) -> Result<Client, String> {
    connect(config, timeout).await.map_err(|e| e.reason())
}

/// Parses `--database-url` the way the sink does.
pub fn parse_url(url: &str, timeout: Duration) -> Result<tokio_postgres::Config, PgError> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| PgError::Url(reason(&e)))?;
    config.connect_timeout(timeout);
    config.application_name("users-pipeline-consumer");
    Ok(config)
}
