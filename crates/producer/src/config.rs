//! The producer's command line. Every flag can also be set through its env var, so
//! the same binary is configured the same way from a shell, docker compose or CI.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use common::cli::LogFormat;

use crate::Error;
use crate::source::Source;

/// Publishes JSON user events to a Kafka topic.
#[derive(Debug, Clone, Parser)]
#[command(name = "producer", version, about, long_about = None)]
pub struct Config {
    /// Where events come from: `synthetic` (offline, seeded), `randomuser` (the
    /// Random User API over HTTPS) or `file PATH` (NDJSON replay; each line a flat
    /// event or a raw Random User API result). In the env var: `file:PATH`.
    #[arg(long, env = "PRODUCER_SOURCE", num_args = 1..=2, value_delimiter = ':',
          value_names = ["KIND", "PATH"], default_value = "synthetic")]
    pub source: Vec<String>,

    /// Stop after this many events. With neither --count nor --duration the
    /// producer runs for 60 s, like the original.
    #[arg(long, env = "PRODUCER_COUNT")]
    pub count: Option<u64>,

    /// Stop after this long (e.g. `60s`, `5m`); `0` runs until stopped.
    #[arg(long, env = "PRODUCER_DURATION", value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,

    /// Events per second; 0 publishes as fast as the broker takes them.
    #[arg(long, env = "PRODUCER_RATE", default_value_t = 0.0)]
    pub rate: f64,

    /// Seed of the synthetic source: the same seed gives the same events. Unset, a
    /// new seed is drawn on every start (and logged), so a restarted producer
    /// publishes new users rather than the same ones again.
    #[arg(long, env = "PRODUCER_SEED")]
    pub seed: Option<u64>,

    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "localhost:9092")]
    pub brokers: String,

    /// Topic to publish to.
    #[arg(long, env = "KAFKA_TOPIC", default_value = "users_created")]
    pub topic: String,

    /// Partitions of the topic when the producer has to create it.
    #[arg(long, env = "KAFKA_PARTITIONS", default_value_t = 3)]
    pub partitions: i32,

    /// Replication factor of the topic when the producer has to create it.
    #[arg(long, env = "KAFKA_REPLICATION_FACTOR", default_value_t = 1)]
    pub replication_factor: i32,

    /// Compression codec of the record batches: none, gzip, snappy, lz4 or zstd.
    #[arg(long, env = "PRODUCER_COMPRESSION", value_enum, default_value = "lz4")]
    pub compression: Compression,

    /// How long to wait for the brokers to answer at start-up before giving up.
    #[arg(long, env = "KAFKA_CONNECT_TIMEOUT", default_value = "10s",
          value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,

    /// How long a message may wait for its delivery before it counts as failed.
    #[arg(long, env = "PRODUCER_DELIVERY_TIMEOUT", default_value = "30s",
          value_parser = humantime::parse_duration)]
    pub delivery_timeout: Duration,

    /// How long the final flush may take on exit.
    #[arg(long, env = "PRODUCER_FLUSH_TIMEOUT", default_value = "30s",
          value_parser = humantime::parse_duration)]
    pub flush_timeout: Duration,

    /// TLS and SASL to Kafka.
    #[command(flatten)]
    pub security: common::security::Security,

    /// Extra librdkafka options, `-X key=value` (repeatable; `,`-separated in the env
    /// var), e.g. `-X ssl.endpoint.identification.algorithm=none`.
    #[arg(
        short = 'X',
        long = "kafka-option",
        env = "PRODUCER_KAFKA_OPTIONS",
        value_delimiter = ','
    )]
    pub kafka_options: Vec<String>,

    /// Base URL of the Random User API.
    #[arg(
        long,
        env = "RANDOMUSER_URL",
        default_value = "https://randomuser.me/api/"
    )]
    pub randomuser_url: String,

    /// Users fetched per Random User API request.
    #[arg(long, env = "RANDOMUSER_BATCH", default_value_t = 100)]
    pub randomuser_batch: u32,

    /// Attempts per Random User API request before giving up.
    #[arg(long, env = "RANDOMUSER_ATTEMPTS", default_value_t = 5)]
    pub randomuser_attempts: u32,

    /// With `--source file`: stop at the first bad line instead of counting it and
    /// going on.
    #[arg(long, env = "PRODUCER_STOP_ON_BAD_LINE")]
    pub stop_on_bad_line: bool,

    /// How often a progress line is logged.
    #[arg(long, env = "PRODUCER_PROGRESS_INTERVAL", default_value = "5s",
          value_parser = humantime::parse_duration)]
    pub progress_interval: Duration,

    /// Serve Prometheus `/metrics`, `/healthz` and `/readyz` on this address (off
    /// when unset), e.g. `0.0.0.0:9465`.
    #[arg(long, env = "PRODUCER_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,

    /// Progress display: `auto` (a bar on a terminal when the count is known, log
    /// lines otherwise), `bar` or `log`.
    #[arg(long, env = "PRODUCER_PROGRESS", value_enum, default_value = "auto")]
    pub progress: Progress,

    /// Log format: text or json.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// A record batch codec (librdkafka's `compression.type`); the client is built
/// with all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    /// librdkafka's name of the codec.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Progress {
    Auto,
    Bar,
    Log,
}

/// When the producer stops by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub count: Option<u64>,
    pub duration: Option<Duration>,
}

impl Config {
    /// The parsed `--source`.
    pub fn source(&self) -> Result<Source, Error> {
        match self.source.as_slice() {
            [kind] if kind == "synthetic" => Ok(Source::Synthetic {
                seed: self.seed.unwrap_or_else(rand::random),
            }),
            [kind] if kind == "randomuser" => Ok(Source::RandomUser {
                url: self.randomuser_url.clone(),
                batch: self.randomuser_batch.max(1),
                attempts: self.randomuser_attempts.max(1),
            }),
            [kind, path] if kind == "file" => Ok(Source::File {
                path: PathBuf::from(path),
                stop_on_bad_line: self.stop_on_bad_line,
            }),
            [kind] if kind == "file" => Err(Error::BadSource(
                "`file` needs a path: --source file PATH".into(),
            )),
            other => Err(Error::BadSource(format!(
                "{:?}: expected synthetic, randomuser or file PATH",
                other.join(" ")
            ))),
        }
    }

    /// The stop condition: the original's 60 s when nothing is said, and no limit for
    /// a replay file (it ends by itself).
    pub fn limit(&self) -> Limit {
        let duration = match self.duration {
            Some(d) if d.is_zero() => None,
            Some(d) => Some(d),
            None if self.count.is_none() && self.source.first().is_none_or(|k| k != "file") => {
                Some(Duration::from_secs(60))
            }
            None => None,
        };
        Limit {
            count: self.count,
            duration,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Config {
        Config::try_parse_from(std::iter::once("producer").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn sources_parse() {
        assert!(matches!(
            parse(&["--seed", "42"]).source(),
            Ok(Source::Synthetic { seed: 42 })
        ));
        // Unset, every start draws its own seed.
        let seeds: std::collections::HashSet<u64> = (0..4)
            .map(|_| match parse(&[]).source() {
                Ok(Source::Synthetic { seed }) => seed,
                _ => unreachable!(),
            })
            .collect();
        assert!(seeds.len() > 1, "{seeds:?}");
        assert!(matches!(
            parse(&["--source", "file", "/tmp/x.ndjson"]).source(),
            Ok(Source::File { path, .. }) if path.to_str() == Some("/tmp/x.ndjson")
        ));
        assert!(matches!(
            parse(&["--source", "file:/tmp/y"]).source(),
            Ok(Source::File { path, .. }) if path.to_str() == Some("/tmp/y")
        ));
        assert!(parse(&["--source", "file"]).source().is_err());
        let err = parse(&["--source", "kafka"])
            .source()
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected synthetic"), "{err}");
    }

    #[test]
    fn limits_default_to_sixty_seconds_only_without_count() {
        assert_eq!(parse(&[]).limit().duration, Some(Duration::from_secs(60)));
        assert_eq!(parse(&["--count", "5"]).limit().duration, None);
        assert_eq!(parse(&["--duration", "0"]).limit().duration, None);
        assert_eq!(parse(&["--source", "file", "x"]).limit().duration, None);
        assert_eq!(
            parse(&["--duration", "2m"]).limit().duration,
            Some(Duration::from_secs(120))
        );
    }

    #[test]
    fn bad_flags_are_refused() {
        let r = Config::try_parse_from(["producer", "--rate", "fast"]);
        assert!(r.is_err());
        let r = Config::try_parse_from(["producer", "--duration", "soon"]);
        assert!(r.is_err());
    }
}
