//! The `consumer`: Kafka -> DataFusion SQL -> PostgreSQL and CSV, exactly once.
//!
//! # Layout
//! - [`config`]: the command line (every flag has an env var) and the checks that
//!   need no service.
//! - [`source`]: the group consumer; partitions start at offsets read from PostgreSQL.
//! - [`partitions`]: per-partition progress and the loop's decisions on it (what to
//!   take, what a rebalance or a rewind resets, when `--available-now` is done).
//! - [`batch`]: one micro-batch, collected, then prepared (transform, encode).
//! - [`decode`]: payloads to Arrow rows, or dead letters with a reason.
//! - [`gaps`]: positions outside the log (retention, a recreated topic), decided
//!   and recorded, never silent.
//! - [`dead_letter`]: dead letters, built and stored in one place.
//! - [`outputs`]: the pipeline's outputs (a query, a table and its write mode,
//!   part files), from the flags or a pipeline file.
//! - [`transform`]: an output's SQL query, run by DataFusion.
//! - [`commit`]: the exactly-once commit of a batch: the part file staged, one
//!   PostgreSQL transaction (rows, dead letters, offsets, batch log), the file
//!   promoted; and the recovery of what a dead process left staged.
//! - [`ledger`]: the pipeline's own tables (offsets, batch log, replays) and its
//!   advisory locks.
//! - [`sink`]: the outputs' tables in PostgreSQL (upsert, append, merge), CSV part
//!   files, binary COPY.
//! - [`backpressure`]: when to stop polling, and when to pause, while a batch commits.
//! - [`retry`]: what is worth retrying, and the backoff loop that does it.
//! - [`pipeline`]: the micro-batch loop driving them.
//! - [`operator`]: `status`, `validate`, `replay-dead-letters`, `reset-offsets`.
//! - [`telemetry`]: Prometheus metrics and the readiness check.
//! - [`memory`]: the C allocator's arenas (one), set before any thread starts.
//!
//! ARCHITECTURE.md at the repository root explains the delivery guarantee.

pub mod backpressure;
pub mod batch;
pub mod commit;
pub mod config;
pub mod dead_letter;
pub mod decode;
pub mod gaps;
pub mod ledger;
pub mod memory;
pub mod operator;
pub mod outputs;
pub mod partitions;
pub mod pipeline;
pub mod retry;
pub mod sink;
pub mod source;
pub mod telemetry;
pub mod transform;

pub use config::Config;
pub use pipeline::{RunSummary, run};

/// Everything that stops the consumer (or an operator command) with a one-line
/// reason. Start-up problems end up here; mid-run problems are retried instead
/// while [`retry::Retriable`] says a retry can help.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// What the user configured cannot work (a flag, a name, a file).
    #[error("{0}")]
    Config(String),
    /// The pipeline's state forbids the operation now (running consumers, a pending
    /// replay, a table the consumer has not created yet).
    #[error("{0}")]
    State(String),
    #[error("topic {topic:?} does not exist on {brokers}{hint}")]
    NoTopic {
        topic: String,
        brokers: String,
        hint: &'static str,
    },
    #[error(transparent)]
    Kafka(#[from] common::Error),
    #[error("Kafka: {context}: {source}")]
    KafkaRuntime {
        context: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// A consume error that waiting cannot heal: nothing of what follows can be
    /// read until an operator acts.
    #[error(
        "Kafka: cannot go on reading {topic:?}: {reason}. Nothing after the stored offsets \
         was written; fix the cause (credentials, ACLs, certificates, a client without \
         the codec) and start again, or skip a corrupt record batch with `consumer \
         reset-offsets`"
    )]
    KafkaPermanent { topic: String, reason: String },
    #[error("transform SQL does not plan: {0}")]
    Transform(#[from] transform::TransformError),
    #[error(transparent)]
    Postgres(#[from] sink::postgres::PgError),
    #[error("output: {0}")]
    Csv(#[from] sink::csv::CsvError),
    #[error("encoding a batch for PostgreSQL: {0}")]
    Encode(#[from] datafusion::arrow::error::ArrowError),
    #[error("{0}")]
    Interrupted(String),
    #[error(
        "partition {partition} of topic {topic:?}: the stored offset {stored} is past the log's \
         end {log_end} (the topic was recreated, or Kafka's data lost); nothing was read. Choose, \
         then run `consumer reset-offsets --group {group} --topic {topic} --to earliest` (read \
         what the log holds now) or `--to latest` (skip it), or start with \
         --offsets-past-end earliest|latest"
    )]
    OffsetPastEnd {
        topic: String,
        group: String,
        partition: i32,
        stored: i64,
        log_end: i64,
    },
}

impl Error {
    /// A Kafka client error, with what was being done.
    pub fn kafka(context: impl Into<String>) -> impl FnOnce(rdkafka::error::KafkaError) -> Self {
        let context = context.into();
        move |source| Error::KafkaRuntime { context, source }
    }
}

impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Self {
        Error::Postgres(e.into())
    }
}

impl retry::Retriable for Error {
    fn retriable(&self) -> bool {
        match self {
            Error::Postgres(e) => e.retriable(),
            Error::Csv(e) => e.retriable(),
            _ => false,
        }
    }
}
