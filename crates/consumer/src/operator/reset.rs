//! `consumer reset-offsets`: sets the group's stored offsets, refused while any
//! consumer of the group runs.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::{
    AdminConsumer, admin_consumer, blocking, group_members, pg_err, stored_offsets, watermarks,
};
use crate::Error;
use crate::config::{Config, ResetArgs};
use crate::ledger::locks;
use crate::sink::postgres;

/// Where `--to` puts each partition.
fn target_offsets(
    consumer: &AdminConsumer,
    topic: &str,
    partitions: &[i32],
    to: &str,
    timeout: Duration,
) -> Result<BTreeMap<i32, i64>, Error> {
    let mut out = BTreeMap::new();
    match to {
        "earliest" | "latest" => {
            for p in partitions {
                let (low, high) = watermarks(consumer, topic, *p, timeout)?;
                out.insert(*p, if to == "earliest" { low } else { high });
            }
        }
        explicit if explicit.contains('=') => {
            for part in explicit.split(',') {
                let parsed = part.split_once('=').and_then(|(p, o)| {
                    Some((p.trim().parse::<i32>().ok()?, o.trim().parse::<i64>().ok()?))
                });
                match parsed {
                    Some((p, o)) if partitions.contains(&p) && o >= 0 => {
                        let (low, high) = watermarks(consumer, topic, p, timeout)?;
                        if o < low || o > high {
                            return Err(Error::Config(format!(
                                "--to: offset {o} is outside partition {p}'s range {low}..={high}"
                            )));
                        }
                        out.insert(p, o);
                    }
                    _ => {
                        return Err(Error::Config(format!(
                            "--to {explicit:?}: expected PARTITION=OFFSET,... with partitions of {topic} and offsets >= 0 ({part:?})"
                        )));
                    }
                }
            }
        }
        timestamp => {
            let at = chrono::DateTime::parse_from_rfc3339(timestamp).map_err(|e| {
                Error::Config(format!(
                    "--to {timestamp:?}: expected earliest, latest, an RFC 3339 timestamp or PARTITION=OFFSET,... ({e})"
                ))
            })?;
            if at.timestamp_millis() < 0 {
                return Err(Error::Config(format!(
                    "--to {timestamp:?}: Kafka timestamps start in 1970"
                )));
            }
            let mut tpl = TopicPartitionList::new();
            for p in partitions {
                tpl.add_partition_offset(topic, *p, Offset::Offset(at.timestamp_millis()))
                    .map_err(Error::kafka("offsets for times"))?;
            }
            let found = consumer
                .offsets_for_times(tpl, timeout)
                .map_err(Error::kafka("cannot look up offsets by time"))?;
            for e in found.elements() {
                if let Err(err) = e.error() {
                    return Err(Error::kafka(format!(
                        "cannot look up partition {}'s offset at {timestamp}",
                        e.partition()
                    ))(err));
                }
                let offset = match e.offset() {
                    Offset::Offset(o) => o,
                    // No message at or after the time: the partition's end.
                    _ => watermarks(consumer, topic, e.partition(), timeout)?.1,
                };
                out.insert(e.partition(), offset);
            }
        }
    }
    Ok(out)
}

/// `consumer reset-offsets`.
pub(super) async fn run(config: &Config, args: &ResetArgs) -> Result<(), Error> {
    let (mut client, display) =
        postgres::connect_existing(&config.database_url, config.connect_timeout).await?;
    let before = stored_offsets(&client, config).await?;
    let (consumer, partitions) = admin_consumer(config).await?;
    let (topic, group, to, force, timeout) = (
        config.topic.clone(),
        config.group.clone(),
        args.to.clone(),
        args.force,
        config.connect_timeout,
    );
    // Running consumers of the group hold its lock in shared mode (PostgreSQL is the
    // authority here: tansu, for one, does not describe groups); held exclusively
    // until this command ends, it also keeps consumers from starting meanwhile.
    let free: bool = client
        .query_one(
            &format!("SELECT pg_try_advisory_lock({})", locks::GROUP),
            &[&config.group],
        )
        .await
        .map_err(pg_err)?
        .get(0);
    if !free {
        return Err(Error::State(format!(
            "group {:?} has running consumers (they hold its lock in PostgreSQL): stop them first",
            config.group
        )));
    }
    let (consumer, targets) = blocking(move || {
        // The broker's view too, where it can give one (Apache Kafka does): members
        // of the group elsewhere, e.g. another tool committing offsets.
        if let Ok((n, state)) = group_members(&consumer, &group, timeout)
            && n > 0
            && !force
        {
            return Err(Error::State(format!(
                "group {group:?} has {n} active member(s) on the broker ({state}): stop them first, or --force"
            )));
        }
        let targets = target_offsets(&consumer, &topic, &partitions, &to, timeout)?;
        Ok((consumer, targets))
    })
    .await?;
    println!(
        "group {:?}, topic {:?} (PostgreSQL {display}):",
        config.group, config.topic
    );
    println!("{:>9}  {:>12}  {:>12}", "partition", "stored", "new");
    for (p, new) in &targets {
        println!(
            "{p:>9}  {:>12}  {new:>12}",
            before.get(p).map_or("-".into(), |(o, _)| o.to_string())
        );
    }
    if args.dry_run {
        println!("dry run: nothing written");
        return Ok(());
    }
    let tx = client.transaction().await.map_err(pg_err)?;
    for (p, new) in &targets {
        crate::ledger::overwrite(&tx, &config.group, &config.topic, *p, *new)
            .await
            .map_err(pg_err)?;
    }
    tx.commit().await.map_err(pg_err)?;
    // Advisory, like the pipeline's own: lag tools reading Kafka see the reset too.
    let mut tpl = TopicPartitionList::new();
    for (p, new) in &targets {
        let _ = tpl.add_partition_offset(&config.topic, *p, Offset::Offset(*new));
    }
    let _ = blocking(move || {
        consumer
            .commit(&tpl, rdkafka::consumer::CommitMode::Sync)
            .map_err(Error::kafka("advisory commit"))
    })
    .await;
    println!("reset: {} partition(s) written", targets.len());
    Ok(())
}
