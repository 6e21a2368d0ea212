//! The benchmark's figures: as JSON for tools and the throughput picture, and as a
//! Markdown table for people (the README quotes it), with each target and whether
//! it holds.

use serde::Serialize;

use crate::latency::{Measured, WARM_UP_MS};
use crate::limits::Rate;

/// Targets of issue 6, on a 2-core machine with broker and PostgreSQL beside us.
pub const CONSUMER_VS_PG_LIMIT: f64 = 0.8;
pub const PRODUCER_VS_RAW: f64 = 0.8;
pub const LATENCY_P99_MS: f64 = 300.0;
pub const PEAK_RSS_MB: f64 = 150.0;
pub const STARTUP_MS: f64 = 1000.0;

#[derive(Debug, Clone, Serialize)]
pub struct Producer {
    pub events_per_s: f64,
    pub vs_raw: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Consumer {
    pub records: u64,
    pub rows_written: u64,
    pub rows_in_table: u64,
    pub csv_rows: u64,
    pub batches: u64,
    pub seconds: f64,
    pub rows_per_s: f64,
    pub records_per_s: f64,
    pub cpu_seconds: f64,
    pub peak_rss_mb: f64,
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
                    "{} msg/s ({:.1} MB/s)",
                    int(self.raw_consume.per_s()),
                    self.raw_consume.mb_per_s()
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

    /// The two binaries against their targets.
    fn pipeline_rows(&self) -> Vec<Row> {
        let c = &self.consumer;
        vec![
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
                    "{} rows/s = {:.2} x PostgreSQL limit ({} records in {:.1} s; {:.2} x consume limit)",
                    int(c.rows_per_s),
                    self.consumer_vs_pg_limit,
                    int(c.records as f64),
                    c.seconds,
                    self.consumer_vs_consume_limit
                ),
                format!(">= {CONSUMER_VS_PG_LIMIT} x PostgreSQL limit"),
                self.consumer_vs_pg_limit >= CONSUMER_VS_PG_LIMIT,
            ),
            info(
                "Consumer CPU",
                format!(
                    "{:.2} s ({:.0} µs per record)",
                    c.cpu_seconds,
                    c.cpu_seconds * 1e6 / c.records.max(1) as f64
                ),
            ),
            target(
                format!("Consumer peak RSS ({}-record batches)", self.batch_records),
                format!("{:.0} MB", c.peak_rss_mb),
                format!("< {PEAK_RSS_MB:.0} MB"),
                c.peak_rss_mb < PEAK_RSS_MB,
            ),
            target(
                "Start-up to first committed batch",
                format!(
                    "{:.0} ms (partitions assigned after {:.0} ms)",
                    c.startup_to_first_commit_ms, c.startup_to_assignment_ms
                ),
                format!("< {STARTUP_MS:.0} ms"),
                c.startup_to_first_commit_ms < STARTUP_MS,
            ),
        ]
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

#[cfg(test)]
mod tests {
    use super::int;

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(int(0.0), "0");
        assert_eq!(int(999.4), "999");
        assert_eq!(int(1000.0), "1,000");
        assert_eq!(int(211567.0), "211,567");
        assert_eq!(int(-1234567.0), "-1,234,567");
    }
}
