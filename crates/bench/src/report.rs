//! The benchmark's figures: as JSON for tools and the throughput picture, and as a
//! Markdown table for people (the README quotes it), with each target and whether
//! it holds.

use serde::Serialize;

use crate::cpu::Shares;
use crate::latency::{Measured, WARM_UP_MS};
use crate::limits::Rate;

/// Targets of issues 6 and 14, on a 2-core machine with broker and PostgreSQL
/// beside us.
pub const CONSUMER_VS_LIMIT: f64 = 0.8;
pub const CONSUMER_CPU_US: f64 = 2.5;
pub const PRODUCER_VS_RAW: f64 = 0.8;
pub const LATENCY_P99_MS: f64 = 300.0;
pub const PEAK_RSS_MB: f64 = 150.0;
pub const STARTUP_MS: f64 = 1000.0;

#[derive(Debug, Clone, Serialize)]
pub struct Producer {
    pub events_per_s: f64,
    pub vs_raw: f64,
}

/// What a consumer run did, measured from the outside (ours and the Python one).
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    pub records: u64,
    pub rows_written: u64,
    pub seconds: f64,
    pub records_per_s: f64,
    pub rows_per_s: f64,
    pub cpu_seconds: f64,
    /// The CPU of the run: the consumer's, the broker's and PostgreSQL's.
    pub cpu: Shares,
    pub peak_rss_mb: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Consumer {
    pub batch_records: u64,
    #[serde(flatten)]
    pub run: Throughput,
    pub rows_in_table: u64,
    pub csv_rows: u64,
    pub batches: u64,
    pub startup_to_first_commit_ms: f64,
    /// Of which: joining the group until partitions were assigned.
    pub startup_to_assignment_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub rate: u32,
    pub achieved_rate: f64,
    pub trigger_ms: u64,
    pub percentiles: Measured,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub date: String,
    pub machine: String,
    pub broker: String,
    pub postgres: String,
    pub events: u64,
    pub partitions: i32,
    pub batch_records: u64,
    pub avg_event_bytes: f64,
    pub raw_consume: Rate,
    pub pg_write: Rate,
    pub raw_produce: Rate,
    pub producer: Producer,
    pub consumer: Consumer,
    pub consumer_vs_pg_limit: f64,
    pub consumer_vs_consume_limit: f64,
    /// The Python baseline, when an interpreter for it was given.
    pub python: Option<Throughput>,
    /// The consumer at each batch size measured (the run's own first).
    pub by_batch: Vec<Consumer>,
    pub latency: Latency,
}

/// CPU model and count, from /proc (Linux).
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    format!("{cores} cores ({model}), {mem_gib:.0} GiB")
}

fn holds(ok: bool) -> &'static str {
    if ok { "yes" } else { "**no**" }
}

fn int(v: f64) -> String {
    let s = format!("{:.0}", v);
    let (sign, digits) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

/// One line of the table: measurement, figure, target, whether it holds.
type Row = [String; 4];

/// A figure without a target.
fn info(what: impl Into<String>, figure: String) -> Row {
    [what.into(), figure, String::new(), String::new()]
}

/// A figure with its target.
fn target(what: impl Into<String>, figure: String, target: String, ok: bool) -> Row {
    [what.into(), figure, target, holds(ok).into()]
}

/// Latency percentiles as the table spells them.
fn spread(p: &crate::latency::Percentiles) -> String {
    format!(
        "p50 {:.0} ms, p95 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} messages)",
        p.p50_ms,
        p.p95_ms,
        p.p99_ms,
        p.max_ms,
        int(p.messages as f64)
    )
}

impl Report {
    /// The table the README quotes.
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "Benchmark of {date}: {events} events of ~{bytes:.0} bytes, {p} partitions, \
             {b}-record batches.\nMachine: {machine}. Broker: {broker}. PostgreSQL {pg}, \
             same machine.\n\n",
            date = self.date,
            events = int(self.events as f64),
            bytes = self.avg_event_bytes,
            p = self.partitions,
            b = self.batch_records,
            machine = self.machine,
            broker = self.broker,
            pg = self.postgres,
        );
        out.push_str("| Measurement | Figure | Target | Holds |\n|---|---|---|---|\n");
        let rows = self
            .limit_rows()
            .into_iter()
            .chain(self.pipeline_rows())
            .chain(self.latency_rows());
        for r in rows {
            out.push_str(&format!("| {} | {} | {} | {} |\n", r[0], r[1], r[2], r[3]));
        }
        out
    }

    /// What the broker and PostgreSQL can do on their own.
    fn limit_rows(&self) -> Vec<Row> {
        vec![
            info(
                "Limit: raw consume (rdkafka, counting only)",
                format!(
                    "{} msg/s ({:.1} MB/s){}",
                    int(self.raw_consume.per_s()),
                    self.raw_consume.mb_per_s(),
                    self.raw_consume
                        .cpu_seconds
                        .map_or(String::new(), |cpu| format!(
                            ", {:.2} µs CPU per message (librdkafka alone)",
                            per_record_us(cpu, self.raw_consume.count)
                        ))
                ),
            ),
            info(
                "Limit: PostgreSQL write (binary COPY + upsert, pre-encoded)",
                format!("{} rows/s", int(self.pg_write.per_s())),
            ),
            info(
                "Limit: raw producer loop (pre-encoded bytes)",
                format!("{} events/s", int(self.raw_produce.per_s())),
            ),
        ]
    }

    /// The PostgreSQL limit in records per second (its rows are the records' ids).
    fn pg_limit_records_per_s(&self) -> f64 {
        self.events as f64 / self.pg_write.seconds.max(1e-9)
    }

    /// The consumer's rate against the lower of its two limits.
    pub fn consumer_vs_limit(&self) -> f64 {
        let limit = self.raw_consume.per_s().min(self.pg_limit_records_per_s());
        self.consumer.run.records_per_s / limit.max(1e-9)
    }

    /// The two binaries against their targets.
    fn pipeline_rows(&self) -> Vec<Row> {
        let c = &self.consumer;
        let mut rows = vec![
            target(
                "Producer",
                format!(
                    "{} events/s = {:.2} x raw loop",
                    int(self.producer.events_per_s),
                    self.producer.vs_raw
                ),
                format!(">= {PRODUCER_VS_RAW} x raw loop"),
                self.producer.vs_raw >= PRODUCER_VS_RAW,
            ),
            target(
                "Consumer end to end (`--available-now`)",
                format!(
                    "{} records/s = {:.2} x the lower limit ({:.2} x consume limit, {:.2} x \
                     PostgreSQL limit; {} records, {} rows in {:.1} s)",
                    int(c.run.records_per_s),
                    self.consumer_vs_limit(),
                    self.consumer_vs_consume_limit,
                    c.run.records_per_s / self.pg_limit_records_per_s().max(1e-9),
                    int(c.run.records as f64),
                    int(c.run.rows_written as f64),
                    c.run.seconds,
                ),
                format!(">= {CONSUMER_VS_LIMIT} x min(consume, PostgreSQL)"),
                self.consumer_vs_limit() >= CONSUMER_VS_LIMIT,
            ),
            target(
                "Consumer CPU per record (user + sys)",
                format!(
                    "{:.2} µs ({:.2} s for {} records)",
                    per_record_us(c.run.cpu_seconds, c.run.records),
                    c.run.cpu_seconds,
                    int(c.run.records as f64)
                ),
                format!("<= {CONSUMER_CPU_US} µs"),
                per_record_us(c.run.cpu_seconds, c.run.records) <= CONSUMER_CPU_US,
            ),
            info(
                "CPU of the consumer's run, by process",
                cpu_split("consumer", &c.run.cpu),
            ),
        ];
        rows.extend(self.python_rows());
        rows.extend([
            target(
                format!("Consumer peak RSS ({}-record batches)", self.batch_records),
                format!("{:.0} MB", c.run.peak_rss_mb),
                format!("< {PEAK_RSS_MB:.0} MB"),
                c.run.peak_rss_mb < PEAK_RSS_MB,
            ),
            info("Consumer peak RSS by batch size", self.rss_by_batch()),
            target(
                "Start-up to first committed batch",
                format!(
                    "{:.0} ms (partitions assigned after {:.0} ms)",
                    c.startup_to_first_commit_ms, c.startup_to_assignment_ms
                ),
                format!("< {STARTUP_MS:.0} ms"),
                c.startup_to_first_commit_ms < STARTUP_MS,
            ),
        ]);
        rows
    }

    /// The Python baseline, and whether the consumer is ahead of it.
    fn python_rows(&self) -> Vec<Row> {
        let Some(py) = &self.python else {
            return vec![info(
                "Python consumer (confluent-kafka, json, psycopg2 COPY + upsert)",
                "not run (`bench --python`; scripts/bench.sh gives it)".into(),
            )];
        };
        let ahead = self.consumer.run.records_per_s / py.records_per_s.max(1e-9);
        vec![
            target(
                "Python consumer (confluent-kafka, json, psycopg2 COPY + upsert)",
                format!(
                    "{} records/s ({} rows in {:.1} s), {:.2} µs CPU per record, peak RSS \
                     {:.0} MB; the consumer: {ahead:.2} x its rate",
                    int(py.records_per_s),
                    int(py.rows_written as f64),
                    py.seconds,
                    per_record_us(py.cpu_seconds, py.records),
                    py.peak_rss_mb,
                ),
                "the consumer ahead".into(),
                ahead > 1.0,
            ),
            info(
                "CPU of the Python run, by process",
                cpu_split("Python", &py.cpu),
            ),
        ]
    }

    /// Peak RSS at each batch size, and what 10,000 more records per batch cost.
    fn rss_by_batch(&self) -> String {
        let points: Vec<(f64, f64)> = self
            .by_batch
            .iter()
            .map(|c| (c.batch_records as f64, c.run.peak_rss_mb))
            .collect();
        let each = self
            .by_batch
            .iter()
            .map(|c| {
                format!(
                    "{}: {:.0} MB",
                    int(c.batch_records as f64),
                    c.run.peak_rss_mb
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        match slope(&points) {
            Some(s) => format!("{each}; {:.1} MB per 10,000-record batch", s * 10_000.0),
            None => each,
        }
    }

    /// Latency in the steady state, against the target, and over every message.
    fn latency_rows(&self) -> Vec<Row> {
        let steady = &self.latency.percentiles.steady;
        vec![
            target(
                format!(
                    "Latency at {} events/s, trigger {} ms (commit - Kafka timestamp), after the first {} s",
                    int(self.latency.achieved_rate),
                    self.latency.trigger_ms,
                    WARM_UP_MS / 1000
                ),
                spread(steady),
                format!("p99 < {LATENCY_P99_MS:.0} ms"),
                steady.p99_ms < LATENCY_P99_MS,
            ),
            info(
                "Latency, every message (first seconds included)",
                spread(&self.latency.percentiles.all),
            ),
        ]
    }
}

/// CPU seconds per record, in microseconds.
fn per_record_us(cpu_seconds: f64, records: u64) -> f64 {
    cpu_seconds * 1e6 / records.max(1) as f64
}

/// "consumer 0.9 s (31%), broker 1.3 s, PostgreSQL 0.7 s".
fn cpu_split(pipeline: &str, cpu: &Shares) -> String {
    let known = |v: Option<f64>| v.map_or("not measured".to_string(), |s| format!("{s:.2} s"));
    let share = cpu.pipeline_share().map_or(String::new(), |s| {
        format!(" ({:.0}% of the three)", s * 100.0)
    });
    format!(
        "{pipeline} {:.2} s{share}, broker {}, PostgreSQL {}",
        cpu.pipeline_s,
        known(cpu.broker_s),
        known(cpu.postgres_s)
    )
}

/// The least-squares slope of y over x (`None` for fewer than two distinct x).
fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    let (mx, my) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x / n, b + y / n));
    let sxx: f64 = points.iter().map(|(x, _)| (x - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|(x, y)| (x - mx) * (y - my)).sum();
    (points.len() >= 2 && sxx > 0.0).then(|| sxy / sxx)
}

#[cfg(test)]
mod tests {
    use super::{int, slope};

    #[test]
    fn memory_per_batch_is_the_fitted_slope() {
        let points = [(10_000.0, 100.0), (20_000.0, 130.0), (40_000.0, 190.0)];
        let s = slope(&points).unwrap();
        assert!((s * 10_000.0 - 30.0).abs() < 1e-9, "{s}");
        assert_eq!(slope(&[(10_000.0, 100.0)]), None);
        assert_eq!(slope(&[(1.0, 1.0), (1.0, 2.0)]), None);
    }

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(int(0.0), "0");
        assert_eq!(int(999.4), "999");
        assert_eq!(int(1000.0), "1,000");
        assert_eq!(int(211567.0), "211,567");
        assert_eq!(int(-1234567.0), "-1,234,567");
    }
}
