//! The `consumer`: Kafka -> DataFusion SQL -> PostgreSQL and CSV, exactly once.
//!
//! # Layout
//! - [`config`]: the command line (every flag has an env var).
//! - [`source`]: the group consumer; partitions start at offsets read from PostgreSQL.
//! - [`decode`]: payloads to Arrow rows, or dead letters with a reason.
//! - [`transform`]: the batch's SQL query, run by DataFusion.
//! - [`sink`]: PostgreSQL (rows, dead letters, offsets in one transaction) and CSV
//!   part files (staged, then promoted once the transaction committed).
//! - [`offsets`]: the offset store and the batch log in PostgreSQL.
//! - [`pipeline`]: the micro-batch loop tying them together.
//! - [`operator`]: `status`, `validate`, `replay-dead-letters`, `reset-offsets`.
//! - [`telemetry`]: Prometheus metrics and the readiness check.
//!
//! ARCHITECTURE.md at the repository root explains the delivery guarantee.

pub mod config;
pub mod decode;
pub mod offsets;
pub mod operator;
pub mod pipeline;
pub mod sink;
pub mod source;
pub mod telemetry;
pub mod transform;

pub use config::Config;
pub use pipeline::{RunSummary, run};

/// Everything that stops the consumer. Start-up problems end up here with a
/// one-line reason; mid-run problems are retried instead, except these.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Kafka(#[from] common::Error),
    #[error("Kafka: {0}")]
    KafkaRuntime(String),
    #[error("transform SQL does not plan: {0}")]
    Transform(#[from] transform::TransformError),
    #[error(transparent)]
    Postgres(#[from] sink::postgres::PgError),
    #[error("output: {0}")]
    Csv(#[from] sink::csv::CsvError),
    #[error("encoding a batch for PostgreSQL: {0}")]
    Encode(#[from] datafusion::arrow::error::ArrowError),
}
