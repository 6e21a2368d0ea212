//! The consumer's own stages, timed apart on synthetic events (issue 14): decode
//! into Arrow, the transform, the COPY encoding, the CSV part file. No broker and
//! no PostgreSQL: what each stage costs per record on this machine, so that a change
//! to one of them is measured before and after.
//!
//!     cargo run --release -p consumer --example stages -- [records] [batch] [sql-file]
//!
//! Prints one line per stage: microseconds per record (the mean over the batches).
//! The part file's rows are also written in memory twice, by `sink::csv_rows` and by
//! arrow-csv with the same formats: the hand-written writer is kept only while it
//! beats the library.

use std::time::{Duration, Instant};

use consumer::dead_letter::Provenance;
use consumer::decode::{BatchBuilder, Origin};
use consumer::sink::csv::CsvSink;
use consumer::sink::postgres::Guard;
use consumer::sink::{copy, csv_rows, csv_time};
use consumer::transform::{DEFAULT_SQL, Transform};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let records: usize = args.get(1).map_or(Ok(200_000), |a| a.parse())?;
    let batch: usize = args.get(2).map_or(Ok(10_000), |a| a.parse())?;
    let sql = match args.get(3) {
        Some(file) => std::fs::read_to_string(file)?,
        None => DEFAULT_SQL.to_string(),
    };
    let events: Vec<(Option<Vec<u8>>, Vec<u8>)> = events::Generator::new(42)
        .take(records)
        .map(|e| (e.key().map(<[u8]>::to_vec), e.to_json()))
        .collect();
    let transform = Transform::new(&sql).await?;
    let columns = consumer::sink::columns(&transform.output_schema())?;
    let ranked = Guard::Kafka.columns(&columns);
    let dir = tempfile_dir()?;
    let csv = CsvSink::open(&dir, uuid::Uuid::new_v4())?;
    let mut spent = [Duration::ZERO; 6];
    for (n, chunk) in events.chunks(batch).enumerate() {
        let t = Instant::now();
        let mut builder = BatchBuilder::new();
        for (i, (key, payload)) in chunk.iter().enumerate() {
            let offset = (n * batch + i) as i64;
            let origin = Origin {
                topic: "users_created",
                partition: (offset % 3) as i32,
                offset,
                timestamp: Some(1_700_000_000_000 + offset),
                key: key.as_deref(),
                rank: None,
            };
            builder.push(&origin, Some(payload));
        }
        let (input, _) = builder.finish();
        spent[0] += t.elapsed();
        let t = Instant::now();
        let provenance = Provenance::new(input.clone(), &["id".to_string()]);
        let rows = transform.run(input).await?;
        spent[1] += t.elapsed();
        let t = Instant::now();
        copy::encode(&provenance.ranked(&rows)?, &ranked)?;
        spent[2] += t.elapsed();
        let t = Instant::now();
        let id = uuid::Uuid::now_v7();
        if let Some(staged) = csv.stage(id, &rows)? {
            csv.discard(staged);
        }
        spent[3] += t.elapsed();
        let t = Instant::now();
        let ours = csv_rows::write_rows(Vec::new(), &rows)?;
        spent[4] += t.elapsed();
        let t = Instant::now();
        let theirs = arrow_csv_rows(&rows)?;
        spent[5] += t.elapsed();
        if ours != theirs {
            return Err("csv_rows and arrow-csv wrote different bytes".into());
        }
    }
    let stages = [
        "decode",
        "transform",
        "encode (COPY)",
        "CSV part file",
        "CSV rows, ours",
        "CSV, arrow-csv",
    ];
    for (stage, d) in stages.iter().zip(spent) {
        println!(
            "{stage:>14}: {:6.3} µs per record",
            d.as_secs_f64() * 1e6 / records as f64
        );
    }
    // The part file's rows are counted once, as the pipeline writes them.
    let total: Duration = spent[..4].iter().sum();
    println!(
        "{:>14}: {:6.3} µs per record ({records} records, {batch}-record batches)",
        "all",
        total.as_secs_f64() * 1e6 / records as f64
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The part file's rows as arrow-csv writes them with the part files' formats.
fn arrow_csv_rows(
    rows: &[datafusion::arrow::record_batch::RecordBatch],
) -> Result<Vec<u8>, datafusion::arrow::error::ArrowError> {
    let mut writer = arrow_csv::WriterBuilder::new()
        .with_header(true)
        .with_timestamp_tz_format(csv_time::TZ_FORMAT.to_string())
        .with_timestamp_format(csv_time::NAIVE_FORMAT.to_string())
        .build(Vec::new());
    for b in rows {
        writer.write(b)?;
    }
    Ok(writer.into_inner())
}

fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("stages-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
