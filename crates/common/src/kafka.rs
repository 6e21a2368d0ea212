//! Kafka client set-up shared by both binaries and the tests.
//!
//! librdkafka retries unreachable brokers forever by design; a user who mistyped
//! `--brokers` deserves an answer within seconds instead, so every program checks
//! reachability with a bounded metadata request before doing anything else.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;

use crate::Error;

/// Parses a `KEY=VALUE` librdkafka option given with `-X`.
pub fn parse_option(s: &str) -> Result<(String, String), Error> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(Error::BadOption(s.to_string())),
    }
}

/// A client configuration for `brokers` with the user's `-X` options applied last,
/// so they can override anything the program sets.
pub fn client_config(brokers: &str, options: &[String]) -> Result<ClientConfig, Error> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    for option in options {
        let (k, v) = parse_option(option)?;
        config.set(k, v);
    }
    Ok(config)
}

/// Fails with [`Error::Unreachable`] unless the cluster answers a metadata request
/// within `timeout`. Returns the number of partitions of `topic`, if it exists.
pub async fn check_reachable(
    config: &ClientConfig,
    topic: &str,
    timeout: Duration,
) -> Result<Option<usize>, Error> {
    let (config, topic) = (config.clone(), topic.to_string());
    // The metadata request blocks: keep it off the async workers.
    tokio::task::spawn_blocking(move || check_reachable_blocking(&config, &topic, timeout))
        .await
        .map_err(|e| Error::Config(e.to_string()))?
}

fn check_reachable_blocking(
    config: &ClientConfig,
    topic: &str,
    timeout: Duration,
) -> Result<Option<usize>, Error> {
    let brokers = config
        .get("bootstrap.servers")
        .unwrap_or_default()
        .to_string();
    let unreachable = |reason: String| Error::Unreachable {
        brokers: brokers.clone(),
        timeout,
        reason,
    };
    let consumer: BaseConsumer = config
        .clone()
        .set(
            "socket.connection.setup.timeout.ms",
            timeout.as_millis().to_string(),
        )
        .create()
        .map_err(|e| Error::Config(e.to_string()))?;
    // Asking for all topics avoids an auto-creation side effect on brokers that do it.
    let metadata = consumer
        .fetch_metadata(None, timeout)
        .map_err(|e| unreachable(e.to_string()))?;
    if metadata.brokers().is_empty() {
        return Err(unreachable("the cluster reported no brokers".into()));
    }
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len()))
}

/// Creates `topic` unless it exists. Some brokers (tansu among them) never
/// auto-create topics, and a producer that silently waits for one helps nobody.
pub async fn ensure_topic(
    config: &ClientConfig,
    topic: &str,
    partitions: i32,
    replication: i32,
    timeout: Duration,
) -> Result<bool, Error> {
    let fail = |reason: String| Error::CreateTopic {
        topic: topic.to_string(),
        reason,
    };
    let admin: AdminClient<DefaultClientContext> =
        config.create().map_err(|e| Error::Config(e.to_string()))?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication));
    let options = AdminOptions::new().operation_timeout(Some(timeout));
    let results = admin
        .create_topics([&new], &options)
        .await
        .map_err(|e| fail(e.to_string()))?;
    match results.into_iter().next() {
        Some(Ok(_)) => Ok(true),
        Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => Ok(false),
        Some(Err((_, code))) => Err(fail(code.to_string())),
        None => Err(fail("the broker returned no result".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_or_say_why() {
        assert_eq!(
            parse_option("security.protocol=SASL_SSL").unwrap(),
            ("security.protocol".into(), "SASL_SSL".into())
        );
        assert_eq!(parse_option("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert!(matches!(parse_option("novalue"), Err(Error::BadOption(_))));
        assert!(matches!(parse_option("=x"), Err(Error::BadOption(_))));
    }

    #[test]
    fn user_options_come_last() {
        let c = client_config("b:1", &["bootstrap.servers=c:2".into()]).unwrap();
        assert_eq!(c.get("bootstrap.servers"), Some("c:2"));
    }
}
