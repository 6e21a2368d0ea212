//! `bench`: the pipeline measured against the machine's limits, side by side, in
//! one run. It prints a Markdown table, writes the figures as JSON, and says which
//! targets hold. It times nothing in a test: it reports, and `scripts/bench.sh`
//! renders the figures as `images/throughput.png`.
//!
//! Steps (each on its own topic, group and tables, in a database of its own):
//! 1. limits: a raw producer loop, a consumer that only counts, PostgreSQL writes of
//!    pre-encoded batches;
//! 2. the `producer` binary publishing the same events;
//! 3. the `consumer` binary with `--available-now` over them;
//! 4. latency at a steady rate with a short trigger interval;
//! 5. start-up to the first committed batch (from step 3).

mod child;
mod cpu;
mod latency;
mod limits;
mod report;
mod runs;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;

use crate::report::{Latency, Producer, Report};

/// Measures producer, consumer, latency and start-up against the raw limits of
/// Kafka and PostgreSQL on this machine, in one run.
#[derive(Debug, Parser)]
#[command(name = "bench", version, about)]
struct Config {
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "localhost:9092")]
    brokers: String,
    /// PostgreSQL server; the benchmark works in a fresh database `bench_<run>` on it.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres:postgres@localhost:5432/postgres"
    )]
    database_url: String,
    /// Events to publish and consume.
    #[arg(long, env = "BENCH_EVENTS", default_value_t = 200_000)]
    events: usize,
    /// Partitions of the benchmark topics.
    #[arg(long, env = "BENCH_PARTITIONS", default_value_t = 3)]
    partitions: i32,
    /// Records per batch, for the consumer and the PostgreSQL limit alike.
    #[arg(long, env = "BENCH_BATCH_RECORDS", default_value_t = 10_000)]
    batch_records: usize,
    /// Seed of the synthetic events.
    #[arg(long, env = "BENCH_SEED", default_value_t = 42)]
    seed: u64,
    /// Steady producer rate of the latency step (events/s).
    #[arg(long, env = "BENCH_LATENCY_RATE", default_value_t = 5_000)]
    latency_rate: u32,
    /// How long the latency step publishes.
    #[arg(long, env = "BENCH_LATENCY_DURATION", default_value = "30s",
          value_parser = humantime::parse_duration)]
    latency_duration: Duration,
    /// The consumer's trigger interval in the latency step.
    #[arg(long, env = "BENCH_LATENCY_TRIGGER", default_value = "100ms",
          value_parser = humantime::parse_duration)]
    latency_trigger: Duration,
    /// Directory holding the `producer` and `consumer` binaries (default: next to this one).
    #[arg(long, env = "BENCH_BIN_DIR")]
    bin_dir: Option<PathBuf>,
    /// Where the figures are written as JSON.
    #[arg(long, env = "BENCH_JSON", default_value = "bench-results/bench.json")]
    json: PathBuf,
    /// What the broker is, for the report (e.g. "tansu 0.6.0, sqlite engine").
    #[arg(long, env = "BENCH_BROKER_LABEL")]
    broker_label: Option<String>,
    /// Keep the benchmark's database afterwards (dropped by default).
    #[arg(long, env = "BENCH_KEEP")]
    keep: bool,
    /// The broker's process id, when it runs on this machine: its CPU is shown
    /// beside the consumer's (scripts/bench.sh passes tansu's).
    #[arg(long, env = "BENCH_BROKER_PID")]
    broker_pid: Option<i32>,
    /// A Python interpreter with confluent-kafka and psycopg2: runs the plain Python
    /// consumer as the baseline row (scripts/bench.sh makes one; none: not run).
    #[arg(long, env = "BENCH_PYTHON")]
    python: Option<PathBuf>,
    /// The Python consumer (default: scripts/python_consumer.py of this repository).
    #[arg(long, env = "BENCH_PYTHON_CONSUMER")]
    python_consumer: Option<PathBuf>,
    /// Further batch sizes the consumer runs at, for its memory per batch size.
    #[arg(
        long,
        env = "BENCH_RSS_BATCHES",
        value_delimiter = ',',
        default_value = "20000,40000"
    )]
    rss_batches: Vec<usize>,
}

fn main() -> ExitCode {
    let config = Config::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bench: error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn step(what: &str) {
    eprintln!("bench: {what}");
}

/// What every phase of one run shares.
struct Run<'a> {
    config: &'a Config,
    bin_dir: PathBuf,
    id: String,
    kafka: rdkafka::ClientConfig,
    /// The run's own database.
    db_url: String,
    /// The run's scratch directory (output dirs).
    work: PathBuf,
    /// The broker and PostgreSQL, whose CPU each step reads beside the pipeline's.
    tracked: cpu::Tracked,
}

impl Run<'_> {
    /// A topic name of this run.
    fn topic(&self, what: &str) -> String {
        format!("bench_{}_{what}", self.id)
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let bin_dir = binaries(&config)?;
    let id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let kafka = common::kafka::client_config(&config.brokers, &Default::default(), &[])?;
    common::kafka::check_reachable(&kafka, "__bench_probe", Duration::from_secs(10)).await?;
    let db = format!("bench_{id}");
    let work = std::env::temp_dir().join(format!("users-pipeline-bench-{id}"));
    std::fs::create_dir_all(&work)?;
    let mut r = Run {
        config: &config,
        bin_dir,
        db_url: with_database(&config.database_url, &db),
        id,
        kafka,
        work,
        tracked: cpu::Tracked::default(),
    };
    let (n, p) = (config.events, config.partitions);
    let limits = run_limits(&r).await?;
    let client = connect(&r.db_url).await?;
    r.tracked = runs::tracked(&client, config.broker_pid).await?;

    let (consumer, python, by_batch) = run_consumers(&r, &client, &limits).await?;

    // 4. Latency at a steady rate.
    step(&format!(
        "latency: {} events/s for {:?}, trigger interval {:?}",
        config.latency_rate, config.latency_duration, config.latency_trigger
    ));
    let latency = run_latency(&r, &client).await?;

    let report = Report {
        date: chrono_date(),
        machine: report::machine(),
        broker: config
            .broker_label
            .clone()
            .unwrap_or_else(|| format!("Kafka at {}", config.brokers)),
        postgres: client
            .query_one("SHOW server_version", &[])
            .await?
            .get::<_, String>(0),
        events: n as u64,
        partitions: p,
        batch_records: config.batch_records as u64,
        avg_event_bytes: limits.avg_bytes,
        raw_consume: limits.raw_consume,
        pg_write: limits.pg_write,
        raw_produce: limits.raw_produce,
        producer: Producer {
            events_per_s: limits.producer,
            vs_raw: limits.producer / limits.raw_produce.per_s(),
        },
        consumer_vs_pg_limit: consumer.run.rows_per_s / limits.pg_write.per_s(),
        consumer_vs_consume_limit: consumer.run.records_per_s / limits.raw_consume.per_s(),
        consumer,
        python,
        by_batch,
        latency,
    };
    drop(client);
    if !config.keep {
        drop_database(&config.database_url, &db).await;
        let _ = std::fs::remove_dir_all(&r.work);
    }
    write_report(&config, &report)
}

/// Step 3: the consumer end to end, then the Python baseline, then the consumer at
/// larger batches (its memory per batch size).
async fn run_consumers(
    r: &Run<'_>,
    client: &tokio_postgres::Client,
    limits: &Limits,
) -> anyhow::Result<(
    report::Consumer,
    Option<report::Throughput>,
    Vec<report::Consumer>,
)> {
    let config = r.config;
    step("consumer --available-now");
    let (topic, ids) = (&limits.topic, limits.ids);
    let consumer = runs::consumer(r, client, topic, config.batch_records, "users", ids).await?;
    let python = match &config.python {
        Some(python) => {
            step("Python consumer (the baseline)");
            Some(runs::python(r, client, python, topic, ids).await?)
        }
        None => None,
    };
    let mut by_batch = vec![consumer.clone()];
    for &batch in &config.rss_batches {
        step(&format!("consumer --available-now, {batch}-record batches"));
        let table = format!("users_b{batch}");
        by_batch.push(runs::consumer(r, client, topic, batch, &table, ids).await?);
    }
    Ok((consumer, python, by_batch))
}

/// The figures measured before the consumer runs.
struct Limits {
    avg_bytes: f64,
    raw_produce: limits::Rate,
    /// The producer binary's rate (events/s).
    producer: f64,
    raw_consume: limits::Rate,
    pg_write: limits::Rate,
    /// Distinct ids the PostgreSQL limit run wrote.
    ids: usize,
    /// The topic the producer binary filled (the consumer reads it).
    topic: String,
}

/// The limits (raw producer loop, raw consume, PostgreSQL write of pre-encoded
/// rows) and the producer binary, on the same synthetic events.
async fn run_limits(r: &Run<'_>) -> anyhow::Result<Limits> {
    let (config, n, p) = (r.config, r.config.events, r.config.partitions);

    step(&format!(
        "generating {n} synthetic events (seed {})",
        config.seed
    ));
    let events = std::sync::Arc::new(limits::events(config.seed, n));
    let avg_bytes = events.iter().map(|e| e.payload.len()).sum::<usize>() as f64 / n.max(1) as f64;

    // 1a. Raw producer loop.
    let raw_topic = r.topic("raw");
    common::kafka::ensure_topic(&r.kafka, &raw_topic, p, 1, Duration::from_secs(10)).await?;
    step("raw producer loop");
    let raw_produce = {
        let (kafka, t, events) = (r.kafka.clone(), raw_topic.clone(), events.clone());
        tokio::task::spawn_blocking(move || limits::raw_produce(&kafka, &t, &events)).await??
    };

    // 2. The producer binary, same events.
    let events_topic = r.topic("events");
    step("producer binary");
    let producer = run_producer(r, &events_topic)?;

    // 1b. Raw consume of the producer's topic.
    step("raw consumer");
    let raw_consume = {
        let (kafka, t) = (r.kafka.clone(), events_topic.clone());
        tokio::task::spawn_blocking(move || limits::raw_consume(&kafka, &t, p, n as u64)).await??
    };

    // 1c. PostgreSQL write limit of the same rows.
    step("PostgreSQL write limit");
    let encoded = limits::encode_batches(&events, config.batch_records, p, "limit_users").await?;
    let (pg_write, limit_ids) = limits::pg_write(&r.db_url, &encoded).await?;
    Ok(Limits {
        avg_bytes,
        raw_produce,
        producer,
        raw_consume,
        pg_write,
        ids: limit_ids.len(),
        topic: events_topic,
    })
}

/// The directory of the `producer` and `consumer` binaries under test.
fn binaries(config: &Config) -> anyhow::Result<PathBuf> {
    let bin_dir = match &config.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no directory of the bench binary")?
            .to_path_buf(),
    };
    for bin in ["producer", "consumer"] {
        if !bin_dir.join(bin).is_file() {
            bail!(
                "no {bin} binary in {} (build with `cargo build --release --bins`)",
                bin_dir.display()
            );
        }
    }
    Ok(bin_dir)
}

/// The producer binary publishes the run's events; returns its rate.
fn run_producer(r: &Run<'_>, topic: &str) -> anyhow::Result<f64> {
    let n = r.config.events;
    let (count, seed, partitions) = (
        n.to_string(),
        r.config.seed.to_string(),
        r.config.partitions.to_string(),
    );
    let child = child::spawn(
        &r.bin_dir,
        "producer",
        &r.config.brokers,
        &[
            "--topic",
            topic,
            "--count",
            &count,
            "--seed",
            &seed,
            "--partitions",
            &partitions,
        ],
    )?;
    let (sent, rate) = child_summary(child, Duration::from_secs(300))?;
    if sent != n as u64 {
        bail!("the producer sent {sent} events, not {n}");
    }
    Ok(rate)
}

/// A streaming consumer with a short trigger while the producer publishes at a
/// steady rate; latency per message from the batch log.
async fn run_latency(r: &Run<'_>, client: &tokio_postgres::Client) -> anyhow::Result<Latency> {
    let config = r.config;
    let topic = r.topic("latency");
    let group = format!("bench_{}_latency", r.id);
    let p = config.partitions;
    common::kafka::ensure_topic(&r.kafka, &topic, p, 1, Duration::from_secs(10)).await?;
    let out = r.work.join("latency_output").display().to_string();
    let trigger = humantime::format_duration(config.latency_trigger).to_string();
    let mut consumer = child::spawn(
        &r.bin_dir,
        "consumer",
        &config.brokers,
        &[
            "--topic",
            &topic,
            "--group",
            &group,
            "--database-url",
            &r.db_url,
            "--table",
            "latency_users",
            "--dead-letter-table",
            "latency_dead_letters",
            "--output-dir",
            &out,
            "--trigger-interval",
            &trigger,
        ],
    )?;
    consumer.wait_for("Partitions assigned.", Duration::from_secs(60))?;
    let (rate, duration, seed) = (
        config.latency_rate.to_string(),
        humantime::format_duration(config.latency_duration).to_string(),
        (config.seed + 1).to_string(),
    );
    let producer = child::spawn(
        &r.bin_dir,
        "producer",
        &config.brokers,
        &[
            "--topic",
            &topic,
            "--rate",
            &rate,
            "--duration",
            &duration,
            "--seed",
            &seed,
        ],
    )?;
    let limit = config.latency_duration + Duration::from_secs(120);
    let (sent, achieved_rate) = child_summary(producer, limit)?;
    wait_committed(client, &group, &topic, sent).await?;
    consumer.terminate();
    consumer.finish(Duration::from_secs(30))?;
    let percentiles = latency::measure(&r.kafka, client, &group, &topic, p, sent).await?;
    Ok(Latency {
        rate: config.latency_rate,
        achieved_rate,
        trigger_ms: config.latency_trigger.as_millis() as u64,
        percentiles,
    })
}

/// Waits (at most 120 s) until the group's stored offsets cover `sent` records.
async fn wait_committed(
    client: &tokio_postgres::Client,
    group: &str,
    topic: &str,
    sent: u64,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let committed: i64 = client
            .query_one(
                "SELECT coalesce(sum(next_offset), 0)::bigint FROM pipeline_offsets
                 WHERE consumer_group = $1 AND topic = $2",
                &[&group, &topic],
            )
            .await?
            .get(0);
        if committed as u64 >= sent {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the latency consumer committed {committed} of {sent} in time");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The figures as JSON, and the table on stdout.
fn write_report(config: &Config, report: &Report) -> anyhow::Result<()> {
    if let Some(dir) = config.json.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&config.json, serde_json::to_vec_pretty(report)?)
        .with_context(|| format!("cannot write {}", config.json.display()))?;
    println!("{}", report.markdown());
    eprintln!("bench: figures written to {}", config.json.display());
    Ok(())
}

/// Waits for a producer and reads its summary line: events sent and its rate.
fn child_summary(child: child::Running, timeout: Duration) -> anyhow::Result<(u64, f64)> {
    let finished = child.finish(timeout)?;
    let line = finished.summary_line("the producer", "sent=")?;
    match (field(line, "sent="), field(line, "rate=")) {
        (Some(sent), Some(rate)) => Ok((sent as u64, rate)),
        _ => bail!("cannot read the producer's summary line: {line}"),
    }
}

pub(crate) fn field(line: &str, name: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(name))
        .and_then(|v| v.trim_end_matches('s').parse().ok())
}

fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let base = match base.rfind('/') {
        Some(i) if base[..i].contains("//") && i > base.find("//").unwrap_or(0) + 1 => &base[..i],
        _ => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

/// A connection made the way the consumer makes its own (the same `sslmode`, so TLS
/// or not), so that the PostgreSQL limit measures the consumer's transport.
async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let endpoint = consumer::sink::postgres::parse_url(url, Duration::from_secs(10))
        .with_context(|| "invalid --database-url")?;
    endpoint
        .connect(|_| {})
        .await
        .with_context(|| "cannot connect to PostgreSQL")
}

async fn drop_database(url: &str, db: &str) {
    if let Ok(client) = connect(url).await {
        let _ = client
            .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
            .await;
    }
}

fn chrono_date() -> String {
    chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string()
}
