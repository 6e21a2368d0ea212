//! `consumer validate`: the configuration, both services and the transform SQL
//! checked, and the table changes the consumer would make printed. Changes nothing.

use super::{admin_consumer, pg_err};
use crate::Error;
use crate::config::Config;
use crate::sink::postgres::{self, PgError, Target};

/// `consumer validate`.
pub(super) async fn run(config: &Config) -> Result<(), Error> {
    let checked = config.check().await?;
    for output in &checked.outputs {
        println!(
            "ok: output {:?} plans ({} into {}{}); columns: {}",
            output.name,
            output.table.mode.as_str(),
            output.table.name,
            describe_key(&output.table.key),
            output
                .columns
                .iter()
                .map(|c| format!("{} {}", c.name, c.pg.sql()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!("  table: {};", output.table.create_sql());
        println!("  write: {};", one_line(&output.table.write_sql()));
        if let Some(dir) = &output.part_files {
            check_output_dir(dir)?;
        }
    }
    let (_consumer, partitions) = admin_consumer(config).await?;
    println!(
        "ok: Kafka {} reachable; topic {:?} has {} partitions",
        config.brokers,
        config.topic,
        partitions.len()
    );
    let (client, display) =
        match postgres::connect_existing(&config.database_url, config.connect_timeout).await {
            Ok(c) => c,
            Err(PgError::NoDatabase(_)) => {
                println!("note: the database does not exist yet; the consumer would create it");
                println!("would run: the CREATE TABLEs above, and the pipeline's own tables");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
    println!("ok: PostgreSQL {display} reachable");
    let target = checked.target(config);
    let plan = plan(&client, &target).await?;
    if plan.is_empty() {
        println!("ok: every table matches its output; nothing to change");
    } else {
        println!("the consumer would run:");
        for ddl in plan {
            println!("  {ddl};");
        }
    }
    println!("valid");
    Ok(())
}

fn describe_key(key: &[String]) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!(" by {}", key.join(", "))
    }
}

/// A statement on one line, for printing.
fn one_line(sql: &str) -> String {
    sql.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn check_output_dir(dir: &std::path::Path) -> Result<(), Error> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() && !m.permissions().readonly() => {
            println!("ok: output dir {} exists", dir.display());
        }
        Ok(_) => {
            return Err(Error::Config(format!(
                "output dir {} is not a writable directory",
                dir.display()
            )));
        }
        Err(_) => println!("note: output dir {} would be created", dir.display()),
    }
    Ok(())
}

/// The DDL the consumer would run at start-up: the tables missing, then the
/// output table's changes (the same `plan_table` the consumer executes).
async fn plan(client: &tokio_postgres::Client, target: &Target) -> Result<Vec<String>, Error> {
    let dead_letter_table = &target.dead_letter_table;
    let mut plan = Vec::new();
    for (name, ddl) in [
        (
            "pipeline_offsets",
            "CREATE TABLE pipeline_offsets ... (offset store)".to_string(),
        ),
        (
            "pipeline_batches",
            "CREATE TABLE pipeline_batches ... (batch log)".to_string(),
        ),
        (
            "pipeline_gaps",
            "CREATE TABLE pipeline_gaps ... (positions found outside the log)".to_string(),
        ),
        (
            dead_letter_table.as_str(),
            crate::dead_letter::ddl(dead_letter_table)
                .replace("IF NOT EXISTS ", "")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        ),
    ] {
        let exists: bool = client
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
            .await
            .map_err(pg_err)?
            .get(0);
        if !exists {
            plan.push(ddl);
        }
    }
    for table in &target.tables {
        plan.extend(table.plan(client).await?);
    }
    Ok(plan)
}
