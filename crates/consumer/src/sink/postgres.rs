//! PostgreSQL: the consumer's session, and how a batch's rows get into a table.
//!
//! Each output's rows are staged with binary COPY into a temporary table of its
//! own, then written with the output's write statement (`sink::table`: upsert,
//! append or merge). A row that the database refuses must neither stop nor loop
//! the pipeline: [`copy_rows`] and [`write_rows`] retry their statement on halves
//! of the batch under savepoints until the refused rows are isolated. Which
//! failures are about rows, which heal by waiting and which need an operator is
//! decided once, by SQLSTATE, in [`fault`] (`sink::pg_error`).
//!
//! The batch's transaction itself (rows, dead letters, offsets, batch log) is
//! `commit`'s; the pipeline's own tables are the `ledger`'s.

use std::collections::VecDeque;
use std::time::Duration;

use futures::SinkExt;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, Transaction};
use tracing::{info, warn};
use uuid::Uuid;

use super::copy::Encoded;
pub use super::pg_error::{ConnectError, Fault, PgCause, PgError, fault, fault_of, reason};
pub use super::pg_tls::Endpoint;
pub use super::table::{Combine, Mode, Table};
use super::{Column, quote_ident};
use crate::dead_letter::RANK_COLUMNS;
use crate::ledger::{self, locks};

/// The rule that decides whether an incoming row may replace the stored row of
/// its key: "latest wins", by a rule the user can see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Guard {
    /// By the Kafka position of the row's record, stored with the row in
    /// [`RANK_COLUMNS`]: an older record of the same partition never overwrites a
    /// newer one (a reset, a replayed dead letter, which keeps its original
    /// position); across partitions, which have no order, the later write wins.
    Kafka,
    /// By an output column (`--order-by`, quoted): a row whose value is lower never
    /// overwrites one whose value is higher; a null never overwrites a value.
    Column(String),
}

impl Guard {
    /// The table's columns under this guard: the output's, plus the rank columns
    /// for [`Guard::Kafka`].
    pub fn columns(&self, output: &[Column]) -> Vec<Column> {
        let mut columns = output.to_vec();
        if *self == Guard::Kafka {
            columns.push(Column {
                name: RANK_COLUMNS[0].into(),
                pg: super::PgType::Int4,
            });
            columns.push(Column {
                name: RANK_COLUMNS[1].into(),
                pg: super::PgType::Int8,
            });
        }
        columns
    }
}

/// Where everything goes, with identifiers already checked and quoted: each
/// output's table, and the pipeline's own (dead letters, offsets by group and topic).
#[derive(Debug, Clone)]
pub struct Target {
    pub tables: Vec<Table>,
    pub dead_letter_table: String,
    pub group: String,
    pub topic: String,
}

/// The consumer's PostgreSQL session: a connection that holds the instance and
/// group locks, re-established (locks included) when it is lost.
pub struct PgSink {
    instance: Uuid,
    config: Endpoint,
    client: Option<Client>,
    target: Target,
    display: String,
    /// Each output's write statement, in output order.
    writes: Vec<String>,
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
                    .map_err(|cause| PgError::Connect {
                        target: display.clone(),
                        cause,
                    })?
            }
            Err(cause) => {
                return Err(PgError::Connect {
                    target: display,
                    cause,
                });
            }
        };
        let writes = target.tables.iter().map(Table::write_sql).collect();
        lock_session(&client, instance, &target.group).await?;
        let mut sink = Self {
            instance,
            config,
            client: Some(client),
            target,
            display,
            writes,
            retry: timeout,
        };
        sink.prepare_schema().await?;
        Ok(sink)
    }

    /// `user@host:port/db` for messages.
    pub fn display(&self) -> &str {
        &self.display
    }

    /// Where rows, dead letters and offsets go.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The live client, reconnecting if the connection was lost.
    pub async fn client(&mut self) -> Result<&mut Client, PgError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            self.client = None;
            let client =
                connect(&self.config, self.retry)
                    .await
                    .map_err(|cause| PgError::Connect {
                        target: self.display.clone(),
                        cause,
                    })?;
            stage_tables(&client, &self.target).await?;
            // The old session may linger on the server for a while (a half-open
            // connection) still holding our instance lock: wait a bounded time and
            // let the caller's backoff try again, rather than hang here.
            client.batch_execute("SET lock_timeout = '5s'").await?;
            lock_session(&client, self.instance, &self.target.group).await?;
            client.batch_execute("RESET lock_timeout").await?;
            info!(message = "Reconnected to PostgreSQL.", target = %self.display);
            self.client = Some(client);
        }
        match self.client.as_mut() {
            Some(c) => Ok(c),
            None => Err(PgError::Connect {
                target: self.display.clone(),
                cause: ConnectError::Closed,
            }),
        }
    }

    /// The client with the target and each output's write statement, for a
    /// batch's transaction (reconnecting if needed).
    pub async fn session(&mut self) -> Result<(&mut Client, &Target, &[String]), PgError> {
        self.client().await?;
        match self.client.as_mut() {
            Some(c) => Ok((c, &self.target, &self.writes)),
            None => Err(PgError::Connect {
                target: self.display.clone(),
                cause: ConnectError::Closed,
            }),
        }
    }

    /// Creates the tables if missing, checks an existing table against the output
    /// columns (adding new ones, refusing type changes), under an advisory lock so
    /// that consumers starting together do not race each other's DDL.
    async fn prepare_schema(&mut self) -> Result<(), PgError> {
        let target = self.target.clone();
        let client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&locks::SCHEMA])
            .await?;
        tx.batch_execute(ledger::DDL).await?;
        ledger::upgrade(&tx).await?;
        tx.batch_execute(&crate::dead_letter::ddl(&target.dead_letter_table))
            .await?;
        if !crate::dead_letter::upgraded(&tx, &target.dead_letter_table).await? {
            tx.batch_execute(&crate::dead_letter::upgrade(&target.dead_letter_table))
                .await?;
        }
        for table in &target.tables {
            for ddl in table.plan(&tx).await? {
                tx.batch_execute(&ddl).await?;
                info!(message = "Changed the table.", table = %table.name, ddl = %ddl);
            }
        }
        tx.commit().await?;
        let client = self.client().await?;
        stage_tables(client, &target).await
    }
}

/// A staged row PostgreSQL refused: its `__ord` and the server's reason.
pub type Refused = (i64, String);

/// Stages the batch's rows for the merge (binary COPY into this session's staging
/// table), isolating rows COPY refuses ([`Fault::Rows`]: a character the
/// database's encoding cannot hold, a date out of its range): the COPY is retried
/// on halves under savepoints down to single rows. Any other failure is returned.
pub async fn copy_rows(
    tx: &mut Transaction<'_>,
    table: &Table,
    encoded: &Encoded,
) -> Result<Vec<Refused>, tokio_postgres::Error> {
    let copy = table.copy_sql();
    isolate(tx, encoded.rows, async |sp, lo, hi| {
        let sink = sp.copy_in(&copy).await?;
        futures::pin_mut!(sink);
        // Slices of the encoded batch: a retry costs no re-encoding and no copy.
        for chunk in encoded.range(lo as usize, hi as usize) {
            sink.send(chunk).await?;
        }
        sink.finish().await.map(|_| ())
    })
    .await
}

/// Writes rows `0..rows` of a stage into its table with the output's write
/// statement ([`Table::write_sql`]), isolating the rows PostgreSQL refuses
/// ([`Fault::Rows`]). Returns the rows written and the refused ones; any other
/// failure is returned for the caller to retry or report. Halves run in order, so
/// later rows still win over earlier ones.
pub async fn write_rows(
    tx: &mut Transaction<'_>,
    write: &str,
    rows: i64,
) -> Result<(u64, Vec<Refused>), tokio_postgres::Error> {
    let mut written = 0u64;
    let refused = isolate(tx, rows, async |sp, lo, hi| {
        written += sp.execute(write, &[&lo, &hi]).await?;
        Ok(())
    })
    .await?;
    Ok((written, refused))
}

/// Upsert only: the staged rows that are not in the table as staged: kept out by
/// the guard (an older record), or superseded by a later row of the same key in
/// the batch. Their `__ord`s, so that the part file holds exactly the rows written.
pub async fn not_written(
    tx: &Transaction<'_>,
    table: &Table,
) -> Result<Vec<i64>, tokio_postgres::Error> {
    let rows = tx.query(&table.not_written_sql(), &[]).await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Runs `step` over rows `0..rows` under a savepoint; where it fails with
/// [`Fault::Rows`], rolls back and runs it on the two halves (in order), down to
/// single rows, which are refused with the server's reason. Bounded: at most
/// about 2 x rows attempts, however many rows are refused.
async fn isolate(
    tx: &mut Transaction<'_>,
    rows: i64,
    mut step: impl AsyncFnMut(&Transaction<'_>, i64, i64) -> Result<(), tokio_postgres::Error>,
) -> Result<Vec<Refused>, tokio_postgres::Error> {
    let mut pending = VecDeque::from([(0i64, rows)]);
    let mut refused = Vec::new();
    while let Some((lo, hi)) = pending.pop_front() {
        if lo >= hi {
            continue;
        }
        let sp = tx.savepoint("isolate").await?;
        match step(&sp, lo, hi).await {
            Ok(()) => sp.commit().await?,
            Err(e) if fault(&e) == Fault::Rows => {
                sp.rollback().await?;
                if hi - lo == 1 {
                    refused.push((lo, reason(&e)));
                } else {
                    let mid = lo + (hi - lo) / 2;
                    pending.push_front((mid, hi));
                    pending.push_front((lo, mid));
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(refused)
}

/// Connects to the database of `url` without creating anything (operator commands).
pub async fn connect_existing(url: &str, timeout: Duration) -> Result<(Client, String), PgError> {
    let config = parse_url(url, timeout)?;
    let display = describe(&config);
    let client = connect(&config, timeout).await.map_err(|e| {
        if e.code() == Some(&SqlState::INVALID_CATALOG_NAME) {
            PgError::NoDatabase(config.config.get_dbname().unwrap_or_default().to_string())
        } else {
            PgError::Connect {
                target: display.clone(),
                cause: e,
            }
        }
    })?;
    Ok((client, display))
}

/// The per-connection staging tables, one per output.
async fn stage_tables(client: &Client, t: &Target) -> Result<(), PgError> {
    for table in &t.tables {
        client.batch_execute(&table.stage_ddl()).await?;
    }
    Ok(())
}

/// Takes the session's advisory locks, held for as long as its connection lives:
/// the instance's (see [`locks::instance`]) and the group's in shared mode (see
/// [`locks::GROUP`]: `reset-offsets` is refused while any consumer of the group runs,
/// whatever the broker can tell about the group).
async fn lock_session(client: &Client, instance: Uuid, group: &str) -> Result<(), PgError> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&locks::instance(instance)])
        .await?;
    client
        .execute(
            &format!("SELECT pg_advisory_lock_shared({})", locks::GROUP),
            &[&group],
        )
        .await?;
    Ok(())
}

async fn connect(endpoint: &Endpoint, timeout: Duration) -> Result<Client, ConnectError> {
    fn closed(e: tokio_postgres::Error) {
        warn!(message = "PostgreSQL connection closed.", error = %reason(&e));
    }
    match tokio::time::timeout(timeout, endpoint.connect(closed)).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => {
            let host = describe_host(&endpoint.config);
            match endpoint.tls.explain(&reason(&e), &host) {
                Some(explained) => Err(ConnectError::Tls(explained)),
                None => Err(ConnectError::Pg(e)),
            }
        }
        Err(_) => Err(ConnectError::Timeout(timeout)),
    }
}

async fn create_database(config: &Endpoint, timeout: Duration) -> Result<(), PgError> {
    let name = config.config.get_dbname().unwrap_or("postgres").to_string();
    let admin = config.with_dbname("postgres");
    let client = connect(&admin, timeout)
        .await
        .map_err(|cause| PgError::CreateDatabase {
            target: describe(&admin),
            name: name.clone(),
            cause,
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
        Err(e) => Err(PgError::CreateDatabase {
            target: describe(config),
            name,
            cause: ConnectError::Pg(e),
        }),
    }
}

/// `user@host:port/db` (never the password) for messages.
fn describe(endpoint: &Endpoint) -> String {
    let config = &endpoint.config;
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{}@{}:{port}/{}",
        config.get_user().unwrap_or("?"),
        describe_host(config),
        config.get_dbname().unwrap_or("?")
    )
}

fn describe_host(config: &tokio_postgres::Config) -> String {
    config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(s) => s.clone(),
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into())
}

/// An identifier as it was before [`quote_ident`].
pub(crate) fn unquote(quoted: &str) -> String {
    quoted
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(quoted)
        .replace("\"\"", "\"")
}

/// Connects without any of the start-up work (for the offset lookup thread).
pub(crate) async fn connect_plain(config: &Endpoint, timeout: Duration) -> Result<Client, String> {
    connect(config, timeout).await.map_err(|e| e.to_string())
}

/// Parses `--database-url` the way the sink does.
pub fn parse_url(url: &str, timeout: Duration) -> Result<Endpoint, PgError> {
    let mut endpoint = Endpoint::parse(url).map_err(PgError::Url)?;
    endpoint.config.connect_timeout(timeout);
    endpoint.config.application_name("users-pipeline-consumer");
    Ok(endpoint)
}
