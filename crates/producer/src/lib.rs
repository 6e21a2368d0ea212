//! The `producer`: publishes user events to a Kafka topic, reliably and fast.
//!
//! # Layout
//! - [`config`]: the command line (every flag has an env var).
//! - [`source`]: where events come from: the synthetic generator, the Random User
//!   API, or an NDJSON replay file. Sources run as a task feeding chunks of events
//!   through a bounded channel, so a slow broker slows the source down.
//! - [`publish`]: the idempotent Kafka producer and its delivery accounting.
//!
//! [`run`] ties them together and returns a [`Summary`]; `main` maps it to an exit code.

pub mod config;
pub mod publish;
pub mod source;

use std::future::Future;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::info;

pub use config::Config;
pub use publish::Summary;

/// Prometheus names of the producer's metrics.
pub const SENT: &str = "users_pipeline_producer_events_sent_total";
pub const DELIVERED: &str = "users_pipeline_producer_events_delivered_total";
pub const FAILED: &str = "users_pipeline_producer_events_failed_total";

/// Everything that ends a producer run early.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Kafka(#[from] common::Error),
    #[error("Kafka producer: {0}")]
    Producer(#[from] rdkafka::error::KafkaError),
    #[error("invalid --source: {0}")]
    BadSource(String),
    #[error("cannot read {path}: {reason}")]
    File { path: String, reason: String },
    #[error("{path}:{line}: {reason} (stopping because of --stop-on-bad-line)")]
    BadLine {
        path: String,
        line: u64,
        reason: String,
    },
    #[error("Random User API at {url} unreachable after {attempts} attempts: {reason}")]
    RandomUser {
        url: String,
        attempts: u32,
        reason: String,
    },
}

/// Publishes events until the count, the duration or the source runs out, or until
/// `shutdown` resolves; then flushes what is in flight and reports.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<Summary, Error> {
    let source = config.source()?;
    let client =
        common::kafka::client_config(&config.brokers, &config.security, &config.kafka_options)?;
    ensure_topic(&client, &config).await?;
    let stop_telemetry = tokio_util::sync::CancellationToken::new();
    let _stop_guard = stop_telemetry.clone().drop_guard();
    serve_telemetry(&config, &stop_telemetry).await?;
    let sent_total = metrics::counter!(SENT);
    let publisher = publish::Publisher::new(&client, &config)?;
    let bar = progress_bar(&config);
    // The bar redraws often; log lines come once per --progress-interval.
    let progress_every = match bar {
        Some(_) => PROGRESS_TICK.min(config.progress_interval),
        None => config.progress_interval,
    };
    let (tx, mut rx) = mpsc::channel::<Vec<events::UserEvent>>(64);
    let feeder = tokio::spawn(source.feed(tx));

    let limit = config.limit();
    let started = Instant::now();
    let deadline = limit.duration.map(|d| started + d);
    let mut sent: u64 = 0;
    let mut last_log = started;
    tokio::pin!(shutdown);
    'outer: loop {
        let next = tokio::select! {
            biased;
            () = &mut shutdown => break,
            () = sleep_until(deadline) => break,
            chunk = rx.recv() => chunk,
        };
        let Some(chunk) = next else { break };
        for event in chunk {
            if limit.count.is_some_and(|c| sent >= c) {
                break 'outer;
            }
            if config.rate > 0.0 {
                let due = started + Duration::from_secs_f64(sent as f64 / config.rate);
                if let Some(wait) = due.checked_duration_since(Instant::now())
                    && wait > Duration::from_millis(1)
                {
                    tokio::select! {
                        biased;
                        () = &mut shutdown => break 'outer,
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            }
            publisher.send(&event).await?;
            sent += 1;
            sent_total.increment(1);
            // Per event, not per chunk: at a low --rate a chunk takes minutes.
            if last_log.elapsed() >= progress_every {
                last_log = Instant::now();
                report_progress(&bar, &publisher, sent, started);
            }
        }
        if limit.count.is_some_and(|c| sent >= c) {
            break;
        }
    }
    drop(rx);
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let bad_input = match feeder.await {
        Ok(Ok(stats)) => stats.bad_lines,
        Ok(Err(e)) => {
            // The source failed: still flush what was handed to Kafka before reporting.
            publisher.flush(config.flush_timeout).await;
            return Err(e);
        }
        Err(join) => return Err(Error::BadSource(join.to_string())),
    };
    Ok(publisher
        .finish(sent, bad_input, started, config.flush_timeout)
        .await)
}

/// Creates the topic when the brokers answer but it does not exist yet.
async fn ensure_topic(client: &rdkafka::ClientConfig, config: &Config) -> Result<(), Error> {
    let partitions =
        common::kafka::check_reachable(client, &config.topic, config.connect_timeout).await?;
    if partitions.is_some() {
        return Ok(());
    }
    let created = common::kafka::ensure_topic(
        client,
        &config.topic,
        config.partitions,
        config.replication_factor,
        config.connect_timeout,
    )
    .await?;
    if created {
        info!(
            message = "Created topic.",
            topic = %config.topic,
            partitions = config.partitions
        );
    }
    Ok(())
}

/// `--metrics-addr`: serves `/metrics`, `/healthz` and `/readyz` until `stop`.
async fn serve_telemetry(
    config: &Config,
    stop: &tokio_util::sync::CancellationToken,
) -> Result<(), Error> {
    let Some(addr) = config.metrics_addr else {
        return Ok(());
    };
    let handle = common::telemetry::install(Duration::from_secs(300))?;
    common::telemetry::build_info("users_pipeline_producer", env!("CARGO_PKG_VERSION"));
    // Ready once the broker answered and the topic exists, which is now.
    let ready: common::telemetry::ReadyCheck = std::sync::Arc::new(|| Box::pin(async { Ok(()) }));
    let bound = common::telemetry::serve(addr, handle, ready, stop.clone()).await?;
    info!(message = "Serving /metrics, /healthz and /readyz.", addr = %bound);
    Ok(())
}

/// How often the progress bar is redrawn.
const PROGRESS_TICK: Duration = Duration::from_millis(200);

/// Redraws the bar, or logs a progress line.
fn report_progress(
    bar: &Option<indicatif::ProgressBar>,
    publisher: &publish::Publisher,
    sent: u64,
    started: Instant,
) {
    match bar {
        Some(bar) => {
            bar.set_position(sent);
            let failed = publisher.failed();
            if failed > 0 {
                bar.set_message(format!("{failed} failed"));
            }
        }
        None => {
            info!(
                message = "Publishing.",
                sent,
                delivered = publisher.delivered(),
                failed = publisher.failed(),
                events_per_s = format!("{:.0}", sent as f64 / started.elapsed().as_secs_f64())
            );
        }
    }
}

/// A progress bar on stderr when it is a terminal and the count is known (or when
/// asked for); `None` means periodic log lines instead.
fn progress_bar(config: &Config) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    let count = config.limit().count?;
    let show = match config.progress {
        config::Progress::Bar => true,
        config::Progress::Log => false,
        config::Progress::Auto => std::io::stderr().is_terminal(),
    };
    if !show {
        return None;
    }
    let bar = indicatif::ProgressBar::new(count);
    let style = indicatif::ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} events, {per_sec}, eta {eta} {msg}",
    )
    .ok()?;
    bar.set_style(style);
    Some(bar)
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}
