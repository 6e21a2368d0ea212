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

impl Report {
    /// The table the README quotes.
    pub fn markdown(&self) -> String {
        let c = &self.consumer;
        let l = &self.latency.percentiles.steady;
        let all = &self.latency.percentiles.all;
        let mut rows: Vec<[String; 4]> = vec![
            [
                "Limit: raw consume (rdkafka, counting only)".into(),
                format!(
                    "{} msg/s ({:.1} MB/s)",
                    int(self.raw_consume.per_s()),
                    self.raw_consume.mb_per_s()
                ),
                "".into(),
                "".into(),
            ],
            [
                "Limit: PostgreSQL write (binary COPY + upsert, pre-encoded)".into(),
                format!("{} rows/s", int(self.pg_write.per_s())),
                "".into(),
                "".into(),
            ],
            [
                "Limit: raw producer loop (pre-encoded bytes)".into(),
                format!("{} events/s", int(self.raw_produce.per_s())),
                "".into(),
                "".into(),
            ],
            [
                "Producer".into(),
                format!(
                    "{} events/s = {:.2} x raw loop",
                    int(self.producer.events_per_s),
                    self.producer.vs_raw
                ),
                format!(">= {PRODUCER_VS_RAW} x raw loop"),
                holds(self.producer.vs_raw >= PRODUCER_VS_RAW).into(),
            ],
            [
                "Consumer end to end (`--available-now`)".into(),
                format!(
                    "{} rows/s = {:.2} x PostgreSQL limit ({} records in {:.1} s; {:.2} x consume limit)",
                    int(c.rows_per_s),
                    self.consumer_vs_pg_limit,
                    int(c.records as f64),
                    c.seconds,
                    self.consumer_vs_consume_limit
                ),
                format!(">= {CONSUMER_VS_PG_LIMIT} x PostgreSQL limit"),
                holds(self.consumer_vs_pg_limit >= CONSUMER_VS_PG_LIMIT).into(),
            ],
            [
                "Consumer CPU".into(),
                format!(
                    "{:.2} s ({:.0} µs per record)",
                    c.cpu_seconds,
                    c.cpu_seconds * 1e6 / c.records.max(1) as f64
                ),
                "".into(),
                "".into(),
            ],
            [
                format!("Consumer peak RSS ({}-record batches)", self.batch_records),
                format!("{:.0} MB", c.peak_rss_mb),
                format!("< {PEAK_RSS_MB:.0} MB"),
                holds(c.peak_rss_mb < PEAK_RSS_MB).into(),
            ],
            [
                "Start-up to first committed batch".into(),
                format!(
                    "{:.0} ms (partitions assigned after {:.0} ms)",
                    c.startup_to_first_commit_ms, c.startup_to_assignment_ms
                ),
                format!("< {STARTUP_MS:.0} ms"),
                holds(c.startup_to_first_commit_ms < STARTUP_MS).into(),
            ],
            [
                format!(
                    "Latency at {} events/s, trigger {} ms (commit - Kafka timestamp), after the first {} s",
                    int(self.latency.achieved_rate),
                    self.latency.trigger_ms,
                    WARM_UP_MS / 1000
                ),
                format!(
                    "p50 {:.0} ms, p95 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} messages)",
                    l.p50_ms,
                    l.p95_ms,
                    l.p99_ms,
                    l.max_ms,
                    int(l.messages as f64)
                ),
                format!("p99 < {LATENCY_P99_MS:.0} ms"),
                holds(l.p99_ms < LATENCY_P99_MS).into(),
            ],
            [
                "Latency, every message (first seconds included)".into(),
                format!(
                    "p50 {:.0} ms, p95 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} messages)",
                    all.p50_ms,
                    all.p95_ms,
                    all.p99_ms,
                    all.max_ms,
                    int(all.messages as f64)
                ),
                "".into(),
                "".into(),
            ],
        ];
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
        rows.insert(
            0,
            [
                "Measurement".into(),
                "Figure".into(),
                "Target".into(),
                "Holds".into(),
            ],
        );
        for (i, r) in rows.iter().enumerate() {
            out.push_str(&format!("| {} | {} | {} | {} |\n", r[0], r[1], r[2], r[3]));
            if i == 0 {
                out.push_str("|---|---|---|---|\n");
            }
        }
        out
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
