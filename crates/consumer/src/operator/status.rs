//! `consumer status`: per partition, the stored offset, the high watermark and the
//! lag, and the group's members as the broker sees them.

use std::collections::BTreeMap;

use super::{admin_consumer, blocking, group_members, stored_offsets, watermarks};
use crate::Error;
use crate::config::Config;
use crate::partitions::{InLog, locate};
use crate::sink::postgres;

/// `consumer status`.
pub(super) async fn run(config: &Config) -> Result<(), Error> {
    let (client, display) =
        postgres::connect_existing(&config.database_url, config.connect_timeout).await?;
    let stored = stored_offsets(&client, config).await?;
    let (consumer, partitions) = admin_consumer(config).await?;
    let (topic, group, timeout) = (
        config.topic.clone(),
        config.group.clone(),
        config.connect_timeout,
    );
    let (members, watermarks) = blocking(move || {
        let members = group_members(&consumer, &group, timeout).ok();
        let mut marks = BTreeMap::new();
        for p in partitions {
            let w = watermarks(&consumer, &topic, p, timeout)?;
            marks.insert(p, w);
        }
        Ok((members, marks))
    })
    .await?;
    println!(
        "group {:?}, topic {:?}; Kafka {}, PostgreSQL {display}",
        config.group, config.topic, config.brokers
    );
    match members {
        Some((n, state)) => println!("group members: {n} ({state})"),
        None => println!("group members: unknown (the broker did not describe the group)"),
    }
    println!(
        "{:>9}  {:>14}  {:>14}  {:>10}  updated",
        "partition", "stored_offset", "high_watermark", "lag"
    );
    let mut total = 0i64;
    let mut faults = Vec::new();
    for (p, (low, high)) in &watermarks {
        let (offset, updated) = match stored.get(p) {
            Some((o, u)) => (Some(*o), u.as_str()),
            None => (None, "never"),
        };
        // A stored offset outside the log is a fault, never a lag of 0.
        let lag = match offset.map(|o| locate(o, *low, *high)) {
            Some(InLog::PastEnd { by }) => {
                faults.push(format!(
                    "partition {p}: stored offset past the log end by {by}"
                ));
                format!("PAST END +{by}")
            }
            Some(InLog::BeforeStart { lost }) => {
                faults.push(format!(
                    "partition {p}: {lost} records deleted before they were read"
                ));
                format!("LOST {lost}")
            }
            _ => {
                let lag = crate::ledger::lag(offset, *low, *high);
                total += lag;
                lag.to_string()
            }
        };
        println!(
            "{p:>9}  {:>14}  {high:>14}  {lag:>10}  {updated}",
            offset.map_or("-".to_string(), |o| o.to_string()),
        );
    }
    println!("total lag: {total}");
    if faults.is_empty() {
        Ok(())
    } else {
        Err(Error::State(format!(
            "stored offsets outside the log: {} (see `consumer --help` for --offsets-past-end, \
             and `consumer reset-offsets`)",
            faults.join("; ")
        )))
    }
}
