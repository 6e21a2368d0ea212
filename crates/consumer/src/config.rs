//! The consumer's command line. Every flag has an env var, so docker compose, a
//! shell and the tests configure the same binary the same way.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use common::cli::LogFormat;

/// Where to start in a partition for which PostgreSQL holds no offset yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StartingOffsets {
    Earliest,
    Latest,
}

impl StartingOffsets {
    /// Where a partition without a stored offset starts.
    pub fn offset(self) -> rdkafka::Offset {
        match self {
            StartingOffsets::Earliest => rdkafka::Offset::Beginning,
            StartingOffsets::Latest => rdkafka::Offset::End,
        }
    }
}

/// What to do with a partition whose stored offset lies past its log's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PastEnd {
    /// Stop with an error naming the partition, both offsets and the repair command.
    Fail,
    /// Read the partition's log from its start (the new log's records are new).
    Earliest,
    /// Read from the log's end (skip what the new log holds).
    Latest,
}

/// `--max-batch-bytes` unless given: 16 MiB.
pub const DEFAULT_MAX_BATCH_BYTES: u64 = 16 * 1024 * 1024;

/// Reads user events from Kafka in micro-batches, transforms each batch with
/// DataFusion SQL and writes the result exactly once to PostgreSQL and CSV files.
#[derive(Debug, Clone, Parser)]
#[command(name = "consumer", version, about, long_about = None)]
pub struct Config {
    /// Kafka bootstrap servers.
    #[arg(
        long,
        env = "KAFKA_BROKERS",
        default_value = "localhost:9092",
        global = true
    )]
    pub brokers: String,

    /// Topic to read.
    #[arg(
        long,
        env = "KAFKA_TOPIC",
        default_value = "users_created",
        global = true
    )]
    pub topic: String,

    /// Consumer group. Offsets are stored in PostgreSQL under this name.
    #[arg(
        long = "group",
        env = "KAFKA_GROUP_ID",
        default_value = "users-pipeline",
        global = true
    )]
    pub group: String,

    /// PostgreSQL connection URL. The database is created if it is missing and the
    /// server allows it. TLS as in libpq: `?sslmode=disable|prefer|require|verify-ca|
    /// verify-full` (default prefer) and `sslrootcert`, `sslcert`, `sslkey`. Keep a
    /// password out of the flag (visible in `ps`): use the env var.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres:postgres@localhost:5432/userdb",
        hide_env_values = true,
        global = true
    )]
    pub database_url: String,

    /// Table the output rows are upserted into (created if missing).
    #[arg(long, env = "TABLE", default_value = "users", global = true)]
    pub table: String,

    /// Key column of the table: a row whose key comes again replaces the old one.
    #[arg(long, env = "KEY_COLUMN", default_value = "id", global = true)]
    pub key_column: String,

    /// Which row wins when a key comes again: by default the one whose Kafka record
    /// is newer in its partition (the record's partition and offset are stored in
    /// the columns `_kafka_partition` and `_kafka_offset`); with this, the one with
    /// the higher value of this output column (e.g. an event time), across
    /// partitions. A row never replaces a newer one, even when replayed or re-read.
    #[arg(long, env = "ORDER_BY", global = true)]
    pub order_by: Option<String>,

    /// Table that keeps every message that could not be processed, with the reason.
    #[arg(
        long,
        env = "DEAD_LETTER_TABLE",
        default_value = "dead_letters",
        global = true
    )]
    pub dead_letter_table: String,

    /// Directory of the CSV part files.
    #[arg(long, env = "OUTPUT_DIR", default_value = "output_data", global = true)]
    pub output_dir: PathBuf,

    /// Where to start in partitions for which no offset is stored yet.
    #[arg(long, env = "STARTING_OFFSETS", value_enum, default_value = "earliest")]
    pub starting_offsets: StartingOffsets,

    /// When a partition's stored offset lies past its log's end (the topic was
    /// deleted and recreated, Kafka's data lost, offsets restored from a backup):
    /// `fail` stops with the command that repairs it; `earliest` or `latest` moves
    /// the stored offset there. Each case is recorded in the table `pipeline_gaps`.
    /// (Records lost to retention before they were read are always skipped and
    /// recorded there.)
    #[arg(long, env = "OFFSETS_PAST_END", value_enum, default_value = "fail")]
    pub offsets_past_end: PastEnd,

    /// A batch closes this long after it started collecting (or earlier when full).
    #[arg(long, env = "TRIGGER_INTERVAL", default_value = "1s",
          value_parser = humantime::parse_duration)]
    pub trigger_interval: Duration,

    /// A batch closes when it holds this many records.
    #[arg(long, env = "MAX_BATCH_RECORDS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_batch_records: u64,

    /// A batch closes when its payloads add up to this many bytes.
    #[arg(long, env = "MAX_BATCH_BYTES", default_value_t = DEFAULT_MAX_BATCH_BYTES,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_batch_bytes: u64,

    /// A SQL file replacing the default transform. It reads the table `events` and
    /// its output columns decide the PostgreSQL table and the CSV header.
    #[arg(long, env = "TRANSFORM_SQL", global = true)]
    pub transform_sql: Option<PathBuf>,

    /// A pipeline file (TOML) defining several outputs, each a query, a table with a
    /// write mode (upsert, append, merge) and optionally part files; replaces
    /// --transform-sql, --table, --key-column and --order-by, which are refused
    /// beside it (see README, "Several outputs").
    #[arg(long, env = "PIPELINE", global = true,
          conflicts_with_all = ["transform_sql", "order_by", "table", "key_column"])]
    pub pipeline: Option<PathBuf>,

    /// Process everything present at start-up, commit, and exit 0.
    #[arg(long, env = "AVAILABLE_NOW")]
    pub available_now: bool,

    /// Print the first N output rows of each batch as a table.
    #[arg(long, env = "SHOW_ROWS", default_value_t = 0)]
    pub show: usize,

    /// How long to wait for Kafka and PostgreSQL at start-up before giving up.
    #[arg(long, env = "CONNECT_TIMEOUT", default_value = "10s",
          value_parser = humantime::parse_duration, global = true)]
    pub connect_timeout: Duration,

    /// Longest pause between two attempts while PostgreSQL is unreachable mid-run.
    #[arg(long, env = "MAX_RETRY_BACKOFF", default_value = "10s",
          value_parser = humantime::parse_duration)]
    pub max_retry_backoff: Duration,

    /// TLS and SASL to Kafka.
    #[command(flatten)]
    pub security: common::security::Security,

    /// Extra librdkafka options, `-X key=value` (repeatable; `,`-separated in the env var).
    #[arg(
        short = 'X',
        long = "kafka-option",
        env = "CONSUMER_KAFKA_OPTIONS",
        value_delimiter = ',',
        global = true
    )]
    pub kafka_options: Vec<String>,

    /// Serve Prometheus `/metrics`, `/healthz` and `/readyz` on this address (off
    /// when unset), e.g. `0.0.0.0:9464`.
    #[arg(long, env = "METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,

    /// An operator command instead of the pipeline (safe beside a running one).
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Log format: text or json.
    #[arg(
        long,
        env = "LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,
}

/// Operator commands: each reads or changes the pipeline's state in PostgreSQL and
/// Kafka without joining the consumer group.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Per partition: the offset stored in PostgreSQL, the broker's high watermark
    /// and the lag.
    Status,
    /// Check the configuration, both services and the transform SQL; print the table
    /// changes the consumer would make. Changes nothing.
    Validate,
    /// Re-publish dead letters (after fixing their payloads in the table) and mark
    /// them replayed, exactly once.
    ReplayDeadLetters(ReplayArgs),
    /// Set the group's stored offsets. Refused while the group has members.
    ResetOffsets(ResetArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// Only dead letters with an id at least this.
    #[arg(long, env = "REPLAY_FROM_ID")]
    pub from_id: Option<i64>,
    /// Only dead letters with an id at most this.
    #[arg(long, env = "REPLAY_TO_ID")]
    pub to_id: Option<i64>,
    /// Only dead letters whose reason contains this text (case-insensitive).
    #[arg(long, env = "REPLAY_REASON")]
    pub reason: Option<String>,
    /// Topic to publish to (default: the dead letter's own topic, else --topic).
    #[arg(long, env = "REPLAY_TO_TOPIC")]
    pub to_topic: Option<String>,
    /// Print what would be replayed; publish and mark nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ResetArgs {
    /// `earliest`, `latest`, an RFC 3339 timestamp (the first offset at or after
    /// it), or explicit offsets `PARTITION=OFFSET,...`.
    #[arg(long = "to", env = "RESET_TO")]
    pub to: String,
    /// Print the change; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Reset even when the broker lists members of the group (consumers of this
    /// pipeline are always refused).
    #[arg(long)]
    pub force: bool,
}

/// What the configuration gives once checked without any service: identifiers
/// validated and quoted, every output's query planned.
pub struct Checked {
    pub outputs: Vec<crate::outputs::Output>,
    pub dead_letter_table: String,
}

impl Checked {
    /// Where everything goes: each output's table, the dead-letter table, and this
    /// configuration's group and topic.
    pub fn target(&self, config: &Config) -> crate::sink::postgres::Target {
        crate::sink::postgres::Target {
            tables: self.outputs.iter().map(|o| o.table.clone()).collect(),
            dead_letter_table: self.dead_letter_table.clone(),
            group: config.group.clone(),
            topic: config.topic.clone(),
        }
    }
}

impl Config {
    /// Checks names and plans every output's SQL; shared by the pipeline and
    /// `consumer validate`.
    pub async fn check(&self) -> Result<Checked, crate::Error> {
        use crate::Error;
        let dead_letter_table =
            crate::sink::table_ident(&self.dead_letter_table).map_err(Error::Config)?;
        let specs = match &self.pipeline {
            Some(file) => crate::outputs::file::load(file, &self.output_dir)?,
            None => vec![crate::outputs::from_flags(self, self.sql()?)],
        };
        let outputs = crate::outputs::check_all(&specs, &dead_letter_table).await?;
        Ok(Checked {
            outputs,
            dead_letter_table,
        })
    }

    /// The transform SQL: the user's file, or the default shipped with the binary.
    pub fn sql(&self) -> Result<String, crate::Error> {
        match &self.transform_sql {
            None => Ok(crate::transform::DEFAULT_SQL.to_string()),
            Some(path) => std::fs::read_to_string(path).map_err(|e| {
                crate::Error::Config(format!(
                    "cannot read --transform-sql {}: {e}",
                    path.display()
                ))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The defaults as declared (parsing would pick up the environment's overrides).
    fn default_of(long: &str) -> String {
        use clap::CommandFactory;
        let command = Config::command();
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some(long))
            .unwrap_or_else(|| panic!("--{long}"));
        arg.get_default_values()[0].to_string_lossy().into_owned()
    }

    #[test]
    fn defaults_match_the_original_pipeline() {
        assert_eq!(default_of("topic"), "users_created");
        assert_eq!(default_of("table"), "users");
        assert_eq!(
            default_of("database-url"),
            "postgres://postgres:postgres@localhost:5432/userdb"
        );
        assert_eq!(default_of("output-dir"), "output_data");
        assert_eq!(default_of("trigger-interval"), "1s");
        assert_eq!(default_of("starting-offsets"), "earliest");
    }

    #[test]
    fn a_pipeline_file_replaces_the_single_output_flags() {
        let ok = Config::try_parse_from(["consumer", "--pipeline", "p.toml", "--group", "g"]);
        assert!(ok.is_ok_and(|c| c.pipeline.is_some()));
        for flag in ["--table", "--key-column", "--order-by", "--transform-sql"] {
            let args = ["consumer", "--pipeline", "p.toml", flag, "x"];
            let err = Config::try_parse_from(args).err().map(|e| e.to_string());
            assert!(
                err.is_some_and(|e| e.contains("cannot be used with")),
                "{flag}"
            );
        }
    }

    #[test]
    fn bad_values_are_refused_by_the_parser() {
        for args in [
            &["consumer", "--trigger-interval", "often"][..],
            &["consumer", "--max-batch-records", "0"],
            &["consumer", "--starting-offsets", "middle"],
        ] {
            assert!(Config::try_parse_from(args).is_err(), "{args:?}");
        }
    }
}
