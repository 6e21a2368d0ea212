//! The consumers measured end to end over the producer's topic: ours (at the run's
//! batch size, then at larger ones for the memory figures), and the plain Python
//! consumer a user might write instead (`scripts/python_consumer.py`). Each reads
//! the whole topic in a group, table and output directory of its own, is checked
//! against the limit run (ids in its table, CSV rows), and is measured from the
//! outside: wall time, CPU, peak RSS, and the broker's and PostgreSQL's CPU beside it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::Run;
use crate::child;
use crate::child::Finished;
use crate::cpu::Shares;
use crate::cpu::Tracked;
use crate::report::{Consumer, Throughput};

/// The `--max-batch-bytes` of a run at `batch_records`: none, the consumer's default
/// (what the RSS target is set for), unless that many records may need more at
/// 1 KiB each (over twice the mean event), so that records close the batches of
/// the larger runs. (The byte limit also bounds librdkafka's buffer.)
fn byte_limit(batch_records: usize) -> Option<u64> {
    let needed = batch_records as u64 * 1024;
    (needed > consumer::config::DEFAULT_MAX_BATCH_BYTES).then_some(needed)
}

/// One `consumer --available-now` run at `batch_records`, writing table `table`.
pub async fn consumer(
    r: &Run<'_>,
    client: &tokio_postgres::Client,
    topic: &str,
    batch_records: usize,
    table: &str,
    limit_ids: usize,
) -> anyhow::Result<Consumer> {
    let n = r.config.events;
    let out_dir = r.work.join(format!("output_{table}"));
    let group = format!("bench_{}_{table}", r.id);
    let (out, batch) = (out_dir.display().to_string(), batch_records.to_string());
    let dead_letters = format!("{table}_dead_letters");
    let before = r.tracked.snapshot();
    let mut args = vec![
        "--topic",
        topic,
        "--group",
        &group,
        "--database-url",
        &r.db_url,
        "--table",
        table,
        "--dead-letter-table",
        &dead_letters,
        "--output-dir",
        &out,
        "--max-batch-records",
        &batch,
        "--available-now",
    ];
    let bytes = byte_limit(batch_records).map(|b| b.to_string());
    if let Some(bytes) = &bytes {
        args.extend(["--max-batch-bytes", bytes]);
    }
    let mut consumer = child::spawn(&r.bin_dir, "consumer", &r.config.brokers, &args)?;
    let assigned = consumer.wait_for("Partitions assigned.", Duration::from_secs(60))?;
    let first_commit = consumer.wait_for("Batch committed.", Duration::from_secs(60))?;
    let finished = consumer.finish(Duration::from_secs(600))?;
    let cpu = before.shares_until(&r.tracked.snapshot(), finished.cpu);
    if finished.code != 0 {
        bail!("the consumer exited with {}", finished.code);
    }
    let rows_in_table = count_rows(client, table).await?;
    let (batches, records, rows_written) = batch_figures(client, &group).await?;
    let csv_rows = csv_data_rows(&out_dir)?;
    if records != n as i64 {
        bail!("the consumer committed {records} records, not {n}");
    }
    if rows_in_table as usize != limit_ids {
        bail!("the consumer's table holds {rows_in_table} ids, the limit run wrote {limit_ids}");
    }
    if csv_rows != rows_written as u64 {
        bail!("CSV part files hold {csv_rows} rows, PostgreSQL got {rows_written}");
    }
    Ok(Consumer {
        batch_records: batch_records as u64,
        run: throughput(&finished, records as u64, rows_written as u64, cpu),
        rows_in_table: rows_in_table as u64,
        csv_rows,
        batches: batches as u64,
        startup_to_first_commit_ms: first_commit.as_secs_f64() * 1000.0,
        startup_to_assignment_ms: assigned.as_secs_f64() * 1000.0,
    })
}

/// A finished run's figures over `records` read and `rows_written`.
fn throughput(finished: &Finished, records: u64, rows_written: u64, cpu: Shares) -> Throughput {
    let seconds = finished.wall.as_secs_f64();
    Throughput {
        records,
        rows_written,
        seconds,
        records_per_s: records as f64 / seconds,
        rows_per_s: rows_written as f64 / seconds,
        cpu_seconds: finished.cpu.as_secs_f64(),
        cpu,
        peak_rss_mb: finished.peak_rss_bytes as f64 / 1e6,
    }
}

/// The Python consumer over the same topic, run by `python` (an interpreter with
/// confluent-kafka and psycopg2).
pub async fn python(
    r: &Run<'_>,
    client: &tokio_postgres::Client,
    python: &Path,
    topic: &str,
    limit_ids: usize,
) -> anyhow::Result<Throughput> {
    let n = r.config.events;
    let table = "python_users";
    let out_dir = r.work.join("output_python");
    let script = python_script(r)?;
    let mut command = Command::new(python);
    command
        .arg(&script)
        .args(["--brokers", &r.config.brokers, "--topic", topic])
        .args(["--group", &format!("bench_{}_python", r.id)])
        .args(["--database-url", &r.db_url, "--table", table])
        .args(["--output-dir", &out_dir.display().to_string()])
        .args(["--batch", &r.config.batch_records.to_string()])
        .args(["--expected", &n.to_string()]);
    let before = r.tracked.snapshot();
    let child = child::spawn_command(command, "python_consumer.py")?;
    let finished = child.finish(Duration::from_secs(900))?;
    let cpu = before.shares_until(&r.tracked.snapshot(), finished.cpu);
    let line = finished.summary_line("the Python consumer", "records=")?;
    let number = |name: &str| crate::field(line, name).map(|v| v as u64);
    let (Some(records), Some(rows_written)) = (number("records="), number("rows=")) else {
        bail!("cannot read the Python consumer's summary line: {line}");
    };
    let rows_in_table = count_rows(client, table).await?;
    if records != n as u64 || rows_in_table as usize != limit_ids {
        bail!(
            "the Python consumer read {records} of {n} records and its table holds \
             {rows_in_table} ids, not {limit_ids}"
        );
    }
    let csv_rows = csv_data_rows(&out_dir)?;
    if csv_rows != rows_written {
        bail!("the Python consumer's CSV files hold {csv_rows} rows, it wrote {rows_written}");
    }
    Ok(throughput(&finished, records, rows_written, cpu))
}

/// `scripts/python_consumer.py`, from `--python-consumer` or the repository.
fn python_script(r: &Run<'_>) -> anyhow::Result<PathBuf> {
    let script = r.config.python_consumer.clone().unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/python_consumer.py")
    });
    if !script.is_file() {
        bail!("no Python consumer at {}", script.display());
    }
    Ok(script)
}

/// Which processes the steps measure beside the pipeline: the broker given by
/// `--broker-pid`, and the local PostgreSQL serving `client`.
pub async fn tracked(
    client: &tokio_postgres::Client,
    broker: Option<i32>,
) -> anyhow::Result<Tracked> {
    let backend: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await?
        .get(0);
    Ok(Tracked {
        broker,
        postmaster: Tracked::postmaster_of(backend),
    })
}

async fn count_rows(client: &tokio_postgres::Client, table: &str) -> anyhow::Result<i64> {
    Ok(client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await?
        .get(0))
}

/// A group's committed batches: (count, records, rows written).
async fn batch_figures(
    client: &tokio_postgres::Client,
    group: &str,
) -> anyhow::Result<(i64, i64, i64)> {
    let r = client
        .query_one(
            "SELECT count(*), coalesce(sum(records), 0)::bigint,
                    coalesce(sum(rows_written), 0)::bigint
             FROM pipeline_batches WHERE consumer_group = $1",
            &[&group],
        )
        .await?;
    Ok((r.get(0), r.get(1), r.get(2)))
}

/// Data rows of every CSV part file under `dir`.
fn csv_data_rows(dir: &Path) -> anyhow::Result<u64> {
    let mut rows = 0u64;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "csv") {
            let mut reader = csv::Reader::from_path(&path)?;
            for record in reader.records() {
                record.with_context(|| format!("reading {}", path.display()))?;
                rows += 1;
            }
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_batch_runs_at_the_consumer_s_own_byte_limit() {
        assert_eq!(byte_limit(10_000), None, "the consumer's defaults");
        assert_eq!(byte_limit(16_384), None, "16 MiB holds 16,384 KiB records");
        assert_eq!(byte_limit(16_385), Some(16_385 * 1024));
        assert_eq!(byte_limit(40_000), Some(40_960_000));
    }
}
