//! The operator's commands: `status`, `validate`, `replay-dead-letters` and
//! `reset-offsets`. None of them joins the consumer group, so each is safe to run
//! beside a live pipeline (`reset-offsets` refuses to run beside one).
//!
//! They print for people on stdout and return the same errors as the pipeline, so
//! a failure is one line and a non-zero exit.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::util::Timeout;
use tokio_postgres::Client;
use uuid::Uuid;

use crate::Error;
use crate::config::{Command, Config, ReplayArgs, ResetArgs};
use crate::sink::postgres::{self, PgError, Target};
use crate::sink::table_ident;

/// Header naming the replay a re-published dead letter belongs to.
pub const REPLAY_HEADER: &str = "users-pipeline-replay";
/// Header carrying the dead letter's id.
pub const DEAD_LETTER_HEADER: &str = "users-pipeline-dead-letter-id";

/// Runs one operator command.
pub async fn run(config: &Config, command: &Command) -> Result<(), Error> {
    match command {
        Command::Status => status(config).await,
        Command::Validate => validate(config).await,
        Command::ReplayDeadLetters(args) => replay(config, args).await,
        Command::ResetOffsets(args) => reset(config, args).await,
    }
}

fn kafka_err(what: &str) -> impl Fn(rdkafka::error::KafkaError) -> Error + '_ {
    move |e| Error::KafkaRuntime(format!("{what}: {e}"))
}

fn pg_err(e: tokio_postgres::Error) -> Error {
    Error::Postgres(PgError::db(&e))
}

/// A partition's low and high watermarks, asked of the broker (ListOffsets).
fn watermarks(
    consumer: &BaseConsumer,
    topic: &str,
    partition: i32,
    timeout: Duration,
) -> Result<(i64, i64), Error> {
    consumer
        .fetch_watermarks(topic, partition, timeout)
        .map_err(kafka_err("cannot read watermarks"))
}

/// A consumer that never subscribes: metadata, watermarks and group listings only.
async fn admin_consumer(config: &Config) -> Result<(BaseConsumer, Vec<i32>), Error> {
    let client = common::kafka::client_config(&config.brokers, &config.kafka_options)?;
    let partitions =
        common::kafka::check_reachable(&client, &config.topic, config.connect_timeout).await?;
    let Some(count) = partitions else {
        return Err(Error::Config(format!(
            "topic {:?} does not exist on {}",
            config.topic, config.brokers
        )));
    };
    let mut client = client;
    client
        .set("group.id", &config.group)
        .set("enable.auto.commit", "false");
    let consumer: BaseConsumer = client
        .create()
        .map_err(|e| Error::Config(format!("Kafka consumer: {e}")))?;
    Ok((consumer, (0..count as i32).collect()))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::KafkaRuntime(e.to_string()))?
}

/// Members of the group as the broker sees them, with its state.
fn group_members(
    consumer: &BaseConsumer,
    group: &str,
    timeout: Duration,
) -> Result<(usize, String), Error> {
    let list = consumer
        .fetch_group_list(Some(group), timeout)
        .map_err(kafka_err("cannot describe the consumer group"))?;
    Ok(list
        .groups()
        .iter()
        .find(|g| g.name() == group)
        .map_or((0, "Unknown".into()), |g| {
            (g.members().len(), g.state().to_string())
        }))
}

async fn stored_offsets(
    client: &Client,
    config: &Config,
) -> Result<BTreeMap<i32, (i64, String)>, Error> {
    crate::offsets::all(client, &config.group, &config.topic)
        .await
        .map_err(|e| match e.code() {
            Some(c) if *c == tokio_postgres::error::SqlState::UNDEFINED_TABLE => Error::Config(
                "no pipeline_offsets table in this database: the consumer has not run here".into(),
            ),
            _ => pg_err(e),
        })
}

/// `consumer status`.
async fn status(config: &Config) -> Result<(), Error> {
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
    for (p, (low, high)) in &watermarks {
        let (offset, updated) = match stored.get(p) {
            Some((o, u)) => (Some(*o), u.as_str()),
            None => (None, "never"),
        };
        let lag = crate::offsets::lag(offset, *low, *high);
        total += lag;
        println!(
            "{p:>9}  {:>14}  {high:>14}  {lag:>10}  {updated}",
            offset.map_or("-".to_string(), |o| o.to_string()),
        );
    }
    println!("total lag: {total}");
    Ok(())
}

/// `consumer validate`.
async fn validate(config: &Config) -> Result<(), Error> {
    let crate::pipeline::Checked {
        table,
        dead_letter_table,
        key,
        columns,
        ..
    } = crate::pipeline::check(config).await?;
    println!(
        "ok: transform SQL plans; output columns: {}",
        columns
            .iter()
            .map(|c| format!("{} {}", c.name, c.pg.sql()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let dir = &config.output_dir;
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
                println!("would run: CREATE TABLE {table} ... (the whole schema)");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
    println!("ok: PostgreSQL {display} reachable");
    let target = Target {
        table: table.clone(),
        key,
        columns,
        dead_letter_table: dead_letter_table.clone(),
        group: config.group.clone(),
        topic: config.topic.clone(),
    };
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
            dead_letter_table.as_str(),
            postgres::dead_letter_ddl(&dead_letter_table)
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
    plan.extend(postgres::plan_table(&client, &target).await?);
    if plan.is_empty() {
        println!("ok: table {table} matches the transform's output; nothing to change");
    } else {
        println!("the consumer would run:");
        for ddl in plan {
            println!("  {ddl};");
        }
    }
    println!("valid");
    Ok(())
}

/// Where `--to` puts each partition.
fn target_offsets(
    consumer: &BaseConsumer,
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
                    .map_err(kafka_err("offsets for times"))?;
            }
            let found = consumer
                .offsets_for_times(tpl, timeout)
                .map_err(kafka_err("cannot look up offsets by time"))?;
            for e in found.elements() {
                if let Err(err) = e.error() {
                    return Err(Error::KafkaRuntime(format!(
                        "cannot look up partition {}'s offset at {timestamp}: {err}",
                        e.partition()
                    )));
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
async fn reset(config: &Config, args: &ResetArgs) -> Result<(), Error> {
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
            &format!("SELECT pg_try_advisory_lock({})", postgres::GROUP_LOCK_KEY),
            &[&config.group],
        )
        .await
        .map_err(pg_err)?
        .get(0);
    if !free {
        return Err(Error::Config(format!(
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
            return Err(Error::Config(format!(
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
        crate::offsets::overwrite(&tx, &config.group, &config.topic, *p, *new)
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
            .map_err(kafka_err("advisory commit"))
    })
    .await;
    println!("reset: {} partition(s) written", targets.len());
    Ok(())
}

const REPLAYS_DDL: &str = r#"
CREATE TABLE IF NOT EXISTS pipeline_replays (
    replay_id         uuid        PRIMARY KEY,
    dead_letter_table text        NOT NULL,
    topic             text        NOT NULL,
    ids               bigint[]    NOT NULL,
    started_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- The replayer's own clock (ms), which also stamps the messages it publishes.
    started_ms        bigint      NOT NULL,
    heartbeat_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    completed_at      timestamptz
);
"#;

/// Delivery timeout of the replay producer: after its last heartbeat a replayer
/// can have messages in flight for at most this long (plus the heartbeat period).
const REPLAY_DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a replayer proves it is alive while publishing.
const REPLAY_HEARTBEAT: Duration = Duration::from_secs(1);
/// A pending replay whose heartbeat is older than this is settled.
const REPLAY_SETTLE_AFTER_S: f64 = 45.0;

/// `consumer replay-dead-letters`.
///
/// Exactly once, across a crash at any point, without Kafka transactions (tansu
/// does not support EndTxn): the replay is first recorded as pending in PostgreSQL
/// with the ids it covers; each message is published (idempotent producer, acks=all)
/// with headers naming the replay and the dead letter; once every delivery is
/// acknowledged, the dead letters are marked replayed and the replay completed in
/// one PostgreSQL transaction. A pending replay found at start (its process died,
/// which the session lock proves) is settled from the topic itself: the dead letters
/// whose ids appear under its header are marked replayed, the others stay unreplayed
/// and are selected again.
async fn replay(config: &Config, args: &ReplayArgs) -> Result<(), Error> {
    let spelled = table_ident(&config.dead_letter_table).map_err(Error::Config)?;
    let topic = args
        .to_topic
        .clone()
        .unwrap_or_else(|| config.topic.clone());
    let (mut client, _) =
        postgres::connect_existing(&config.database_url, config.connect_timeout).await?;
    client.batch_execute(REPLAYS_DDL).await.map_err(pg_err)?;
    // One name per table however it is spelled (`dead_letters`, `public.dead_letters`).
    let table: String = client
        .query_one("SELECT to_regclass($1)::text", &[&spelled])
        .await
        .map_err(pg_err)?
        .get::<_, Option<String>>(0)
        .ok_or_else(|| Error::Config(format!("no dead-letter table {spelled}")))?;
    let lock: bool = client
        .query_one(
            "SELECT pg_try_advisory_lock(hashtext('replay:' || to_regclass($1)::oid::text)::bigint)",
            &[&table],
        )
        .await
        .map_err(pg_err)?
        .get(0);
    if !lock {
        return Err(Error::Config(format!(
            "another replay of {table} is running"
        )));
    }
    let kafka = common::kafka::client_config(&config.brokers, &config.kafka_options)?;
    if common::kafka::check_reachable(&kafka, &topic, config.connect_timeout)
        .await?
        .is_none()
    {
        return Err(Error::Config(format!("topic {topic:?} does not exist")));
    }
    let mut producer_config = kafka.clone();
    producer_config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set(
            "message.timeout.ms",
            REPLAY_DELIVERY_TIMEOUT.as_millis().to_string(),
        );
    let producer: FutureProducer = producer_config
        .create()
        .map_err(kafka_err("replay producer"))?;
    let timeout = config.connect_timeout.max(Duration::from_secs(10));

    // Settle what an interrupted run left pending. Its session is gone (it held the
    // lock taken above); once its heartbeat is older than its delivery timeout, none
    // of its messages can still be in flight, so the topic tells what it published.
    let pending = client
        .query(
            "SELECT replay_id, topic, ids, started_ms,
                    extract(epoch FROM clock_timestamp() - heartbeat_at)::float8
             FROM pipeline_replays WHERE dead_letter_table = $1 AND completed_at IS NULL",
            &[&table],
        )
        .await
        .map_err(pg_err)?;
    for row in pending {
        let (id, replay_topic, ids, started_ms, silent_s): (Uuid, String, Vec<i64>, i64, f64) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        if silent_s < REPLAY_SETTLE_AFTER_S {
            return Err(Error::Config(format!(
                "replay {id} was interrupted {silent_s:.0} s ago and its messages may still be in \
                 flight: run again in {:.0} s",
                REPLAY_SETTLE_AFTER_S - silent_s
            )));
        }
        let base = kafka.clone();
        let found =
            blocking(move || published_by(&base, &replay_topic, id, started_ms, timeout)).await?;
        let published: Vec<i64> = ids.iter().copied().filter(|i| found.contains(i)).collect();
        finish_replay(&mut client, &table, id, &published).await?;
        println!(
            "settled interrupted replay {id}: {} of its {} dead letter(s) had been published and are marked replayed",
            published.len(),
            ids.len()
        );
    }

    let rows = client
        .query(
            &format!(
                r#"SELECT id, "key", payload, reason FROM {table}
                   WHERE replayed_at IS NULL
                     AND ($1::bigint IS NULL OR id >= $1)
                     AND ($2::bigint IS NULL OR id <= $2)
                     AND ($3::text IS NULL OR reason ILIKE '%' || $3 || '%')
                   ORDER BY id"#
            ),
            &[&args.from_id, &args.to_id, &args.reason],
        )
        .await
        .map_err(pg_err)?;
    if rows.is_empty() {
        println!("no dead letters to replay");
        return Ok(());
    }
    let ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    if args.dry_run {
        for r in &rows {
            println!(
                "would replay {}: {}",
                r.get::<_, i64>(0),
                r.get::<_, String>(3)
            );
        }
        println!(
            "dry run: {} dead letter(s) would go to {topic:?}",
            ids.len()
        );
        return Ok(());
    }
    let replay_id = Uuid::now_v7();
    let started_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    client
        .execute(
            "INSERT INTO pipeline_replays (replay_id, dead_letter_table, topic, ids, started_ms)
             VALUES ($1, $2, $3, $4, $5)",
            &[&replay_id, &table, &topic, &ids, &started_ms],
        )
        .await
        .map_err(pg_err)?;
    let mut beat = std::time::Instant::now();
    let replay = replay_id.to_string();
    let mut failed = None;
    for r in &rows {
        // Publish only while our session (and so our lock) provably lives: a
        // settling run waits for our heartbeat to be old enough.
        if client.is_closed() || beat.elapsed() >= REPLAY_HEARTBEAT {
            client
                .execute(
                    "UPDATE pipeline_replays SET heartbeat_at = clock_timestamp() WHERE replay_id = $1",
                    &[&replay_id],
                )
                .await
                .map_err(|e| {
                    Error::Config(format!(
                        "replay {replay_id} interrupted: lost PostgreSQL ({}); run again to settle it",
                        postgres::reason(&e)
                    ))
                })?;
            beat = std::time::Instant::now();
        }
        let (id, key, payload): (i64, Option<Vec<u8>>, Option<Vec<u8>>) =
            (r.get(0), r.get(1), r.get(2));
        let id_text = id.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: REPLAY_HEADER,
                value: Some(replay.as_bytes()),
            })
            .insert(Header {
                key: DEAD_LETTER_HEADER,
                value: Some(id_text.as_bytes()),
            });
        let mut record = FutureRecord::<Vec<u8>, Vec<u8>>::to(&topic).headers(headers);
        if let Some(k) = &key {
            record = record.key(k);
        }
        if let Some(p) = &payload {
            record = record.payload(p);
        }
        if let Err((e, _)) = producer.send(record, Timeout::After(timeout)).await {
            failed.get_or_insert(e);
        }
    }
    if let Some(e) = failed {
        // Some may have been written: leave the replay pending, the next run settles
        // it message by message from the topic itself.
        return Err(Error::KafkaRuntime(format!(
            "replay {replay_id} interrupted ({e}); run the command again to settle it"
        )));
    }
    finish_replay(&mut client, &table, replay_id, &ids).await?;
    println!(
        "replayed {} dead letter(s) to {topic:?} (replay {replay_id})",
        ids.len()
    );
    Ok(())
}

async fn finish_replay(
    client: &mut Client,
    table: &str,
    replay_id: Uuid,
    ids: &[i64],
) -> Result<(), Error> {
    let tx = client.transaction().await.map_err(pg_err)?;
    tx.execute(
        &format!("UPDATE {table} SET replayed_at = now() WHERE id = ANY($1)"),
        &[&ids],
    )
    .await
    .map_err(pg_err)?;
    tx.execute(
        "UPDATE pipeline_replays SET completed_at = now() WHERE replay_id = $1",
        &[&replay_id],
    )
    .await
    .map_err(pg_err)?;
    tx.commit().await.map_err(pg_err)
}

/// The dead-letter ids that messages of `topic` carry under the replay's header.
/// Reads from a minute before the replay started (or the beginning) to the end.
fn published_by(
    base: &rdkafka::ClientConfig,
    topic: &str,
    replay: Uuid,
    started_ms: i64,
    timeout: Duration,
) -> Result<std::collections::HashSet<i64>, Error> {
    let mut config = base.clone();
    config
        .set(
            "group.id",
            format!("users-pipeline-replay-check-{}", Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed");
    let consumer: BaseConsumer = config.create().map_err(kafka_err("replay check"))?;
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(kafka_err("metadata"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        // Reading nothing would say "nothing was published": refuse instead.
        return Err(Error::KafkaRuntime(format!(
            "cannot read topic {topic:?} to settle replay {replay}"
        )));
    }
    let mut by_time = TopicPartitionList::new();
    for p in &partitions {
        let _ = by_time.add_partition_offset(topic, *p, Offset::Offset(started_ms - 60_000));
    }
    let mut start = TopicPartitionList::new();
    let found = consumer.offsets_for_times(by_time, timeout).ok();
    let mut ended: HashMap<i32, bool> = HashMap::new();
    for p in &partitions {
        let entry = found.as_ref().and_then(|f| f.find_partition(topic, *p));
        let offset = match entry {
            Some(e) if e.error().is_ok() => match e.offset() {
                Offset::Offset(o) => Offset::Offset(o),
                // Nothing at or after that time: nothing of the replay there.
                Offset::End => continue,
                _ => Offset::Beginning,
            },
            // The broker cannot look up by time: read the whole partition.
            _ => Offset::Beginning,
        };
        let _ = start.add_partition_offset(topic, *p, offset);
        ended.insert(*p, false);
    }
    if ended.is_empty() {
        return Ok(Default::default());
    }
    consumer.assign(&start).map_err(kafka_err("assign"))?;
    let replay = replay.to_string();
    let mut ids = std::collections::HashSet::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    while ended.values().any(|e| !e) {
        if std::time::Instant::now() > deadline {
            return Err(Error::KafkaRuntime(format!(
                "could not read {topic} to its end within 300 s to settle replay {replay}"
            )));
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let Some(headers) = m.headers() else { continue };
                let ours = headers
                    .iter()
                    .any(|h| h.key == REPLAY_HEADER && h.value == Some(replay.as_bytes()));
                if !ours {
                    continue;
                }
                let id = headers
                    .iter()
                    .find(|h| h.key == DEAD_LETTER_HEADER)
                    .and_then(|h| std::str::from_utf8(h.value?).ok()?.parse().ok());
                if let Some(id) = id {
                    ids.insert(id);
                }
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                ended.insert(p, true);
            }
            Some(Err(e)) => return Err(Error::KafkaRuntime(format!("replay check: {e}"))),
            None => {}
        }
    }
    Ok(ids)
}
