//! Edge code shared by the `producer` and `consumer` binaries.
//!
//! # Layout
//! - [`backoff`]: the exponential backoff schedule of every retry loop.
//! - [`cli`]: log set-up (`--log-format text|json`) and the shutdown signal.
//! - [`kafka`]: client configuration, a bounded broker reachability check and topic
//!   creation through the admin API.
//! - [`security`]: TLS and SASL flags for secured clusters, and a secret type that
//!   never prints.
//! - [`telemetry`]: `/metrics`, `/healthz` and `/readyz` for operators.

pub mod backoff;
pub mod cli;
pub mod kafka;
pub mod security;
pub mod telemetry;

/// Errors of the shared Kafka helpers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach Kafka brokers at {brokers} within {timeout:?}: {reason}")]
    Unreachable {
        brokers: String,
        timeout: std::time::Duration,
        reason: String,
    },
    #[error("invalid Kafka client option {0:?}: expected KEY=VALUE")]
    BadOption(String),
    #[error("Kafka client configuration rejected: {0}")]
    Config(String),
    #[error("cannot create topic {topic}: {reason}")]
    CreateTopic { topic: String, reason: String },
    #[error("{0}")]
    Telemetry(String),
    #[error("Kafka security settings: {0}")]
    Security(String),
}
