//! The benchmark itself runs end to end on a small load and writes complete,
//! self-consistent figures (no timing is asserted: the figures are for people).

use std::path::PathBuf;
use std::process::Command;

#[test]
fn a_small_benchmark_run_writes_consistent_figures() {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_bench"));
    let bin_dir = bench.parent().expect("target dir").to_path_buf();
    for bin in ["producer", "consumer"] {
        assert!(
            bin_dir.join(bin).is_file(),
            "{bin} not built in {}: run `cargo build --workspace --bins` first (scripts/test.sh does)",
            bin_dir.display()
        );
    }
    let out_dir = tempfile::tempdir().unwrap();
    let json = out_dir.path().join("bench.json");
    let output = Command::new(&bench)
        .args(["--brokers", &testkit::brokers()])
        .args(["--database-url", &testkit::database_url()])
        .args([
            "--events",
            "3000",
            "--batch-records",
            "500",
            "--partitions",
            "2",
        ])
        .args(["--latency-rate", "400", "--latency-duration", "3s"])
        .args(["--bin-dir", bin_dir.to_str().unwrap()])
        .args(["--json", json.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(table.contains("| Consumer end to end"), "{table}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(r["events"], 3000);
    assert_eq!(r["raw_consume"]["count"], 3000);
    assert_eq!(r["raw_produce"]["count"], 3000);
    assert_eq!(r["consumer"]["records"], 3000);
    // The same events went through the limit run and the pipeline: same rows.
    assert!(r["consumer"]["rows_written"].as_u64().unwrap() > 2000);
    assert_eq!(r["consumer"]["csv_rows"], r["consumer"]["rows_written"]);
    let all = &r["latency"]["percentiles"]["all"];
    let messages = all["messages"].as_u64().unwrap();
    assert!(messages >= 1000, "latency over {messages} messages");
    let (p50, p99) = (
        all["p50_ms"].as_f64().unwrap(),
        all["p99_ms"].as_f64().unwrap(),
    );
    assert!(p50 > 0.0 && p50 <= p99, "p50 {p50} p99 {p99}");
    for rate in ["raw_consume", "pg_write", "raw_produce"] {
        assert!(r[rate]["seconds"].as_f64().unwrap() > 0.0, "{rate}");
    }
    // The raw consume's own CPU, the floor under the consumer's, is measured.
    let floor = r["raw_consume"]["cpu_seconds"].as_f64().unwrap();
    assert!(floor > 0.0, "raw consume CPU {floor}");
    assert!(table.contains("librdkafka alone"), "{table}");
    assert!(r["consumer"]["peak_rss_mb"].as_f64().unwrap() > 1.0);
    // The run's own batch size, then the two larger ones, each over every record.
    let by_batch = r["by_batch"].as_array().unwrap();
    let sizes: Vec<u64> = by_batch
        .iter()
        .map(|c| c["batch_records"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, [500, 20_000, 40_000]);
    assert!(by_batch.iter().all(|c| c["records"] == 3000));
    assert!(table.contains("MB per 10,000-record batch"), "{table}");
    // PostgreSQL runs on this machine: its CPU beside the consumer's is measured.
    let cpu = &r["consumer"]["cpu"];
    assert!(cpu["pipeline_s"].as_f64().unwrap() > 0.0, "{cpu}");
    assert!(cpu["postgres_s"].as_f64().unwrap() > 0.0, "{cpu}");
    assert!(r["python"].is_null(), "no --python given");
}
