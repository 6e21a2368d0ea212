//! `consumer replay-dead-letters`: re-publishes dead letters (after their payloads
//! were fixed in the table) and marks them replayed, exactly once.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::Message;
use rdkafka::consumer::Consumer;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::util::Timeout;
use tokio_postgres::Client;
use uuid::Uuid;

use super::{AdminConsumer, Quiet, blocking, pg_err};
use crate::Error;
use crate::config::{Config, ReplayArgs};
use crate::dead_letter;
use crate::ledger::{locks, replays};
use crate::sink::postgres;
use crate::sink::table_ident;

/// Header naming the replay a re-published dead letter belongs to.
pub const REPLAY_HEADER: &str = "users-pipeline-replay";
/// Header carrying the dead letter's id.
pub const DEAD_LETTER_HEADER: &str = "users-pipeline-dead-letter-id";

/// Delivery timeout of the replay producer: after its last heartbeat a replayer
/// can have messages in flight for at most this long (plus the heartbeat period).
const REPLAY_DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a replayer proves it is alive while publishing.
const REPLAY_HEARTBEAT: Duration = Duration::from_secs(1);
/// A pending replay whose heartbeat is older than this is settled.
const REPLAY_SETTLE_AFTER_S: f64 = 45.0;

/// A dead letter selected for replay.
struct Selected {
    id: i64,
    /// The original record's partition and offset (kept by the replay so the
    /// replayed record keeps its rank against newer ones of its key).
    origin: Option<(i32, i64)>,
    key: Option<Vec<u8>>,
    payload: Option<Vec<u8>>,
    reason: String,
}

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
pub(super) async fn run(config: &Config, args: &ReplayArgs) -> Result<(), Error> {
    let topic = args
        .to_topic
        .clone()
        .unwrap_or_else(|| config.topic.clone());
    let (mut client, table) = lock_table(config).await?;
    let kafka =
        common::kafka::client_config(&config.brokers, &config.security, &config.kafka_options)?;
    crate::source::require_topic(&kafka, config, &topic, "").await?;
    let timeout = config.connect_timeout.max(Duration::from_secs(10));
    settle_pending(&mut client, &table, &kafka, timeout).await?;
    let selected = select(&client, &table, args).await?;
    if selected.is_empty() {
        println!("no dead letters to replay");
        return Ok(());
    }
    if args.dry_run {
        for d in &selected {
            println!("would replay {}: {}", d.id, d.reason);
        }
        println!(
            "dry run: {} dead letter(s) would go to {topic:?}",
            selected.len()
        );
        return Ok(());
    }
    let replay_id = publish(&client, &table, &kafka, &topic, &selected, timeout).await?;
    let ids: Vec<i64> = selected.iter().map(|d| d.id).collect();
    finish(&mut client, &table, replay_id, &ids).await?;
    println!(
        "replayed {} dead letter(s) to {topic:?} (replay {replay_id})",
        ids.len()
    );
    Ok(())
}

/// Connects, creates the replay log if missing, resolves the dead-letter table's
/// one name (however it is spelled: `dead_letters`, `public.dead_letters`) and
/// takes its replay lock for the session.
async fn lock_table(config: &Config) -> Result<(Client, String), Error> {
    let spelled = table_ident(&config.dead_letter_table).map_err(Error::Config)?;
    let (client, _) =
        postgres::connect_existing(&config.database_url, config.connect_timeout).await?;
    client.batch_execute(replays::DDL).await.map_err(pg_err)?;
    let table: String = client
        .query_one("SELECT to_regclass($1)::text", &[&spelled])
        .await
        .map_err(pg_err)?
        .get::<_, Option<String>>(0)
        .ok_or_else(|| Error::State(format!("no dead-letter table {spelled}")))?;
    let locked: bool = client
        .query_one(
            &format!("SELECT pg_try_advisory_lock({})", locks::REPLAY),
            &[&table],
        )
        .await
        .map_err(pg_err)?
        .get(0);
    if !locked {
        return Err(Error::State(format!(
            "another replay of {table} is running"
        )));
    }
    Ok((client, table))
}

/// Settles what interrupted runs left pending. Their sessions are gone (they held
/// the lock we hold now); once a heartbeat is older than the delivery timeout, none
/// of that run's messages can still be in flight, so the topic tells what it
/// published.
async fn settle_pending(
    client: &mut Client,
    table: &str,
    kafka: &rdkafka::ClientConfig,
    timeout: Duration,
) -> Result<(), Error> {
    for pending in replays::pending(client, table).await.map_err(pg_err)? {
        let (id, silent_s) = (pending.id, pending.silent_s);
        if silent_s < REPLAY_SETTLE_AFTER_S {
            return Err(Error::State(format!(
                "replay {id} was interrupted {silent_s:.0} s ago and its messages may still be in \
                 flight: run again in {:.0} s",
                REPLAY_SETTLE_AFTER_S - silent_s
            )));
        }
        let (base, topic, started_ms) = (kafka.clone(), pending.topic.clone(), pending.started_ms);
        let found = blocking(move || published_by(&base, &topic, id, started_ms, timeout)).await?;
        let published: Vec<i64> = pending
            .ids
            .iter()
            .copied()
            .filter(|i| found.contains(i))
            .collect();
        finish(client, table, id, &published).await?;
        println!(
            "settled interrupted replay {id}: {} of its {} dead letter(s) had been published and are marked replayed",
            published.len(),
            pending.ids.len()
        );
    }
    Ok(())
}

/// The dead letters not yet replayed that the flags select, in id order.
async fn select(client: &Client, table: &str, args: &ReplayArgs) -> Result<Vec<Selected>, Error> {
    let rows = client
        .query(
            &format!(
                r#"SELECT id, "key", payload, reason, "partition", "offset" FROM {table}
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
    Ok(rows
        .iter()
        .map(|r| Selected {
            id: r.get(0),
            key: r.get(1),
            payload: r.get(2),
            reason: r.get(3),
            origin: r.get::<_, Option<i32>>(4).zip(r.get::<_, Option<i64>>(5)),
        })
        .collect())
}

/// Records the replay as pending, then publishes every selected dead letter and
/// waits for each acknowledgement, proving the session alive as it goes. Returns
/// the replay's id once everything is acknowledged.
async fn publish(
    client: &Client,
    table: &str,
    kafka: &rdkafka::ClientConfig,
    topic: &str,
    selected: &[Selected],
    timeout: Duration,
) -> Result<Uuid, Error> {
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
        .map_err(Error::kafka("replay producer"))?;
    let replay_id = Uuid::now_v7();
    let started_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let ids: Vec<i64> = selected.iter().map(|d| d.id).collect();
    replays::start(client, replay_id, table, topic, &ids, started_ms)
        .await
        .map_err(pg_err)?;
    let mut beat = Instant::now();
    let replay = replay_id.to_string();
    let mut failed = None;
    for d in selected {
        // Publish only while our session (and so our lock) provably lives: a
        // settling run waits for our heartbeat to be old enough.
        if client.is_closed() || beat.elapsed() >= REPLAY_HEARTBEAT {
            replays::heartbeat(client, replay_id).await.map_err(|e| {
                Error::Interrupted(format!(
                    "replay {replay_id} interrupted: lost PostgreSQL ({}); run again to settle it",
                    postgres::reason(&e)
                ))
            })?;
            beat = Instant::now();
        }
        let headers = replay_headers(&replay, d);
        let mut record = FutureRecord::<Vec<u8>, Vec<u8>>::to(topic).headers(headers);
        if let Some(k) = &d.key {
            record = record.key(k);
        }
        if let Some(p) = &d.payload {
            record = record.payload(p);
        }
        if let Err((e, _)) = producer.send(record, Timeout::After(timeout)).await {
            failed.get_or_insert(e);
        }
    }
    match failed {
        // Some may have been written: leave the replay pending, the next run settles
        // it message by message from the topic itself.
        Some(e) => Err(Error::Interrupted(format!(
            "replay {replay_id} interrupted ({e}); run the command again to settle it"
        ))),
        None => Ok(replay_id),
    }
}

/// The headers of a replayed dead letter: the replay, the dead letter, and the
/// original record's position (so it keeps its rank against newer records).
fn replay_headers(replay: &str, d: &Selected) -> OwnedHeaders {
    let id_text = d.id.to_string();
    let mut headers = OwnedHeaders::new()
        .insert(Header {
            key: REPLAY_HEADER,
            value: Some(replay.as_bytes()),
        })
        .insert(Header {
            key: DEAD_LETTER_HEADER,
            value: Some(id_text.as_bytes()),
        });
    if let Some((partition, offset)) = d.origin {
        let (partition, offset) = (partition.to_string(), offset.to_string());
        headers = headers
            .insert(Header {
                key: dead_letter::ORIGIN_PARTITION_HEADER,
                value: Some(partition.as_bytes()),
            })
            .insert(Header {
                key: dead_letter::ORIGIN_OFFSET_HEADER,
                value: Some(offset.as_bytes()),
            });
    }
    headers
}

/// Marks the published dead letters replayed and the replay completed, in one
/// transaction.
async fn finish(
    client: &mut Client,
    table: &str,
    replay_id: Uuid,
    published: &[i64],
) -> Result<(), Error> {
    let tx = client.transaction().await.map_err(pg_err)?;
    replays::finish(&tx, table, replay_id, published)
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
) -> Result<HashSet<i64>, Error> {
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
    let consumer: AdminConsumer = config
        .create_with_context(Quiet)
        .map_err(Error::kafka("replay check"))?;
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(Error::kafka("metadata"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        // Reading nothing would say "nothing was published": refuse instead.
        return Err(Error::State(format!(
            "cannot read topic {topic:?} to settle replay {replay}"
        )));
    }
    let (start, mut ended) = start_positions(&consumer, topic, &partitions, started_ms, timeout);
    if ended.is_empty() {
        return Ok(Default::default());
    }
    consumer.assign(&start).map_err(Error::kafka("assign"))?;
    let replay = replay.to_string();
    let mut ids = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while ended.values().any(|e| !e) {
        if Instant::now() > deadline {
            return Err(Error::Interrupted(format!(
                "could not read {topic} to its end within 300 s to settle replay {replay}"
            )));
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                if let Some(id) = m.headers().and_then(|h| replayed_id(h, &replay)) {
                    ids.insert(id);
                }
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                ended.insert(p, true);
            }
            Some(Err(e)) => return Err(Error::kafka("replay check")(e)),
            None => {}
        }
    }
    Ok(ids)
}

/// Where to read each partition from to find a replay's messages: the first offset
/// a minute before it started (the whole partition where the broker cannot look up
/// by time); partitions with nothing after that time are left out. Returns the
/// positions and, per partition read, whether its end was reached (not yet).
fn start_positions(
    consumer: &AdminConsumer,
    topic: &str,
    partitions: &[i32],
    started_ms: i64,
    timeout: Duration,
) -> (TopicPartitionList, HashMap<i32, bool>) {
    let mut by_time = TopicPartitionList::new();
    for p in partitions {
        let _ = by_time.add_partition_offset(topic, *p, Offset::Offset(started_ms - 60_000));
    }
    let mut start = TopicPartitionList::new();
    let found = consumer.offsets_for_times(by_time, timeout).ok();
    let mut ended: HashMap<i32, bool> = HashMap::new();
    for p in partitions {
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
    (start, ended)
}

/// The dead-letter id a message carries, if it was published by `replay`.
fn replayed_id(headers: &rdkafka::message::BorrowedHeaders, replay: &str) -> Option<i64> {
    if dead_letter::header(headers, REPLAY_HEADER) != Some(replay.as_bytes()) {
        return None;
    }
    dead_letter::parse_header(dead_letter::header(headers, DEAD_LETTER_HEADER))
}
