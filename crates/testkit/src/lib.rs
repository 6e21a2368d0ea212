//! Helpers for integration tests against the real broker and PostgreSQL.
//!
//! The services come from the environment (`KAFKA_BROKERS`, `DATABASE_URL`), which
//! `scripts/test.sh` sets after starting them. A test that needs a service it cannot
//! find fails with a message saying so: it never passes by skipping.

use std::future::Future;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_postgres::{Client, NoTls};

/// The broker under test.
pub fn brokers() -> String {
    std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| {
        panic!(
            "KAFKA_BROKERS is not set: run the tests with scripts/test.sh, which starts a broker"
        )
    })
}

/// The PostgreSQL server under test (any database on it).
pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| {
        panic!("DATABASE_URL is not set: run the tests with scripts/test.sh, which finds or starts PostgreSQL")
    })
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// Creates a topic with `partitions` partitions.
pub async fn create_topic(name: &str, partitions: i32) {
    create_topic_on(&brokers(), name, partitions).await;
}

/// Creates a topic on the given brokers.
pub async fn create_topic_on(brokers: &str, name: &str, partitions: i32) {
    let config = common::kafka::client_config(brokers, &Default::default(), &[]).unwrap();
    let created =
        common::kafka::ensure_topic(&config, name, partitions, 1, Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("cannot create topic {name} on {brokers}: {e}"));
    assert!(created, "topic {name} already existed");
}

/// A message to publish: key and payload, either may be null.
pub type Record = (Option<Vec<u8>>, Option<Vec<u8>>);

/// Publishes records in order to one partition each (by key, or `partition` when set),
/// waiting for every acknowledgement.
pub async fn produce(topic: &str, records: &[Record], partition: Option<i32>) {
    produce_on(&brokers(), topic, records, partition).await;
}

/// Like [`produce`], on the given brokers.
pub async fn produce_on(brokers: &str, topic: &str, records: &[Record], partition: Option<i32>) {
    produce_compressed(brokers, topic, records, partition, "none").await;
}

/// Like [`produce_on`], with the record batches compressed with `codec`
/// (librdkafka's `compression.codec`: none, gzip, snappy, lz4, zstd).
pub async fn produce_compressed(
    brokers: &str,
    topic: &str,
    records: &[Record],
    partition: Option<i32>,
    codec: &str,
) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("compression.codec", codec)
        .set("message.timeout.ms", "120000")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("message.max.bytes", "2000000")
        .create()
        .unwrap();
    let mut pending = Vec::with_capacity(records.len());
    for (key, payload) in records {
        let mut r: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic);
        if let Some(k) = key {
            r = r.key(k.as_slice());
        }
        if let Some(p) = payload {
            r = r.payload(p.as_slice());
        }
        if let Some(p) = partition {
            r = r.partition(p);
        }
        pending.push(producer.send_result(r).map_err(|(e, _)| e).unwrap());
        if pending.len() >= 10_000 {
            for d in pending.drain(..) {
                d.await.unwrap().map_err(|(e, _)| e).unwrap();
            }
        }
    }
    for d in pending {
        d.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
}

/// Reads `expected` messages of `topic` from the beginning (any partition order),
/// failing after `timeout`.
pub fn consume(topic: &str, expected: usize, timeout: Duration) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let deadline = Instant::now() + timeout;
    let mut out = Vec::with_capacity(expected);
    while out.len() < expected {
        assert!(
            Instant::now() < deadline,
            "read {} of {expected} messages from {topic} within {timeout:?}",
            out.len()
        );
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            out.push(m.unwrap().detach());
        }
    }
    // Anything beyond `expected` would be a duplicate: look briefly.
    let extra_deadline = Instant::now() + Duration::from_millis(500);
    while Instant::now() < extra_deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            out.push(m.detach());
        }
    }
    out
}

/// A fresh database on the server under test; returns its URL and a client.
pub async fn fresh_database() -> (String, Client) {
    fresh_database_on(&database_url()).await
}

/// A fresh database on the server of `base`.
pub async fn fresh_database_on(base: &str) -> (String, Client) {
    let admin = connect(base).await;
    let name = unique("it");
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap_or_else(|e| panic!("cannot create database {name}: {e}"));
    let url = with_database(base, &name);
    let client = connect(&url).await;
    (url, client)
}

/// `url` with its database replaced by `db`.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let authority_end = base[scheme_end..]
        .find('/')
        .map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{db}", &base[..authority_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// A connected client (the connection runs on the current runtime).
pub async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to PostgreSQL at {url}: {e}"));
    tokio::spawn(connection);
    client
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Polls `check` until it returns `Some`, failing with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Message payloads as UTF-8 text (lossy), for assertions.
pub fn payload_text(m: &OwnedMessage) -> String {
    String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_is_replaced_in_urls() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/postgres", "x"),
            "postgres://u:p@h:5432/x"
        );
        assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
        assert_eq!(
            with_database("postgresql://h/db?sslmode=disable", "x"),
            "postgresql://h/x?sslmode=disable"
        );
    }
}
