//! The operator's commands: `status`, `validate`, `replay-dead-letters` and
//! `reset-offsets`. None of them joins the consumer group, so each is safe to run
//! beside a live pipeline (`reset-offsets` refuses to run beside one).
//!
//! They print for people on stdout and return the same errors as the pipeline, so
//! a failure is one line and a non-zero exit.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use tokio_postgres::Client;
use tracing::debug;

use crate::Error;
use crate::config::{Command, Config};
use crate::sink::postgres::PgError;

mod replay;
mod reset;
mod status;
mod validate;

pub use replay::{DEAD_LETTER_HEADER, REPLAY_HEADER};

/// Runs one operator command.
pub async fn run(config: &Config, command: &Command) -> Result<(), Error> {
    match command {
        Command::Status => status::run(config).await,
        Command::Validate => validate::run(config).await,
        Command::ReplayDeadLetters(args) => replay::run(config, args).await,
        Command::ResetOffsets(args) => reset::run(config, args).await,
    }
}

/// The client context of the commands' Kafka clients: librdkafka's own log lines
/// and client errors go to debug. A broker closing an idle admin connection makes
/// librdkafka log `AllBrokersDown` at error level, which an operator would read as
/// an outage; whether the command failed is what its result says.
pub(crate) struct Quiet;

impl ClientContext for Quiet {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, line: &str) {
        debug!(message = "librdkafka.", ?level, facility, line);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        debug!(message = "Kafka client error.", error = %error, detail = %reason);
    }
}

impl ConsumerContext for Quiet {}

/// A consumer of the commands (never subscribed).
pub(crate) type AdminConsumer = BaseConsumer<Quiet>;

fn pg_err(e: tokio_postgres::Error) -> Error {
    Error::Postgres(PgError::from(e))
}

/// A partition's low and high watermarks, asked of the broker (ListOffsets).
fn watermarks(
    consumer: &AdminConsumer,
    topic: &str,
    partition: i32,
    timeout: Duration,
) -> Result<(i64, i64), Error> {
    consumer
        .fetch_watermarks(topic, partition, timeout)
        .map_err(Error::kafka("cannot read watermarks"))
}

/// A consumer that never subscribes: metadata, watermarks and group listings only.
async fn admin_consumer(config: &Config) -> Result<(AdminConsumer, Vec<i32>), Error> {
    let mut client =
        common::kafka::client_config(&config.brokers, &config.security, &config.kafka_options)?;
    let count = crate::source::require_topic(&client, config, &config.topic, "").await?;
    client
        .set("group.id", &config.group)
        .set("enable.auto.commit", "false");
    let consumer: AdminConsumer = client
        .create_with_context(Quiet)
        .map_err(|e| Error::Config(format!("Kafka consumer: {e}")))?;
    Ok((consumer, (0..count as i32).collect()))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Interrupted(format!("a Kafka lookup did not finish: {e}")))?
}

/// Members of the group as the broker sees them, with its state.
fn group_members(
    consumer: &AdminConsumer,
    group: &str,
    timeout: Duration,
) -> Result<(usize, String), Error> {
    let list = consumer
        .fetch_group_list(Some(group), timeout)
        .map_err(Error::kafka("cannot describe the consumer group"))?;
    Ok(list
        .groups()
        .iter()
        .find(|g| g.name() == group)
        .map_or((0, "Unknown".into()), |g| {
            (g.members().len(), g.state().to_string())
        }))
}

async fn stored_offsets(
    client: &Client,
    config: &Config,
) -> Result<BTreeMap<i32, (i64, String)>, Error> {
    crate::ledger::all(client, &config.group, &config.topic)
        .await
        .map_err(|e| match e.code() {
            Some(c) if *c == tokio_postgres::error::SqlState::UNDEFINED_TABLE => Error::State(
                "no pipeline_offsets table in this database: the consumer has not run here".into(),
            ),
            _ => pg_err(e),
        })
}
