//! Kafka client set-up shared by both binaries and the tests.
//!
//! librdkafka retries unreachable brokers forever by design; a user who mistyped
//! `--brokers` deserves an answer within seconds instead, so every program checks
//! reachability with a bounded metadata request before doing anything else.

use std::time::Duration;

use std::sync::Mutex;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{ClientConfig, ClientContext};

use crate::Error;
use crate::security::Security;

/// Parses a `KEY=VALUE` librdkafka option given with `-X`.
pub fn parse_option(s: &str) -> Result<(String, String), Error> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(Error::BadOption(s.to_string())),
    }
}

/// A client configuration for `brokers` with the security settings, then the
/// user's `-X` options applied last, so they can override anything the program sets.
pub fn client_config(
    brokers: &str,
    security: &Security,
    options: &[String],
) -> Result<ClientConfig, Error> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    security.apply(&mut config)?;
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
    let consumer: BaseConsumer<Probe> = config
        .clone()
        .set(
            "socket.connection.setup.timeout.ms",
            timeout.as_millis().to_string(),
        )
        .create_with_context(Probe::default())
        .map_err(|e| Error::Config(e.to_string()))?;
    // Asking for all topics avoids an auto-creation side effect on brokers that do it.
    let metadata = consumer.fetch_metadata(None, timeout).map_err(|e| {
        // A failed handshake or login only shows in the error callback (the request
        // itself just fails or times out), and callbacks run only when the client is
        // polled: serve them, then say what the client saw.
        for _ in 0..5 {
            let _ = consumer.poll(Duration::from_millis(20));
        }
        match consumer.context().last_error() {
            Some(seen) => unreachable(format!("{e}; the client reported: {seen}")),
            None => unreachable(e.to_string()),
        }
    })?;
    if metadata.brokers().is_empty() {
        return Err(unreachable("the cluster reported no brokers".into()));
    }
    Ok(metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map(|t| t.partitions().len()))
}

/// A client context that keeps what librdkafka reported, so a probe that fails can
/// say why (an authentication or TLS failure, not just a timeout).
#[derive(Default)]
struct Probe {
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    /// The first error that says more than "all brokers are down".
    specific: Option<String>,
    last: Option<String>,
}

impl Probe {
    fn last_error(&self) -> Option<String> {
        let seen = self.seen.lock().ok()?;
        seen.specific.clone().or_else(|| seen.last.clone())
    }
}

impl ClientContext for Probe {
    fn error(&self, error: KafkaError, reason: &str) {
        let line = describe_client_error(&error, reason);
        if let Ok(mut seen) = self.seen.lock() {
            if seen.specific.is_none()
                && error.rdkafka_error_code() != Some(RDKafkaErrorCode::AllBrokersDown)
            {
                seen.specific = Some(line.clone());
            }
            seen.last = Some(line);
        }
    }
}

impl ConsumerContext for Probe {}

/// A client error as one line: the error and librdkafka's detail, without
/// repeating it.
pub fn describe_client_error(error: &KafkaError, reason: &str) -> String {
    let text = error.to_string();
    if reason.is_empty() || text.contains(reason) {
        text
    } else {
        format!("{text}: {reason}")
    }
}

/// Whether a client error will heal by waiting. Unhealable: an unsupported or
/// corrupt compression, a record batch that cannot be parsed, a refused
/// authorization or login, a certificate that does not verify, a fatal client
/// state. Everything else (a broker down, a leader moving, a timeout) is retried by
/// librdkafka and heals when the cluster does.
pub fn permanent(code: RDKafkaErrorCode, reason: &str) -> bool {
    use RDKafkaErrorCode as C;
    match code {
        C::NotImplemented
        | C::BadCompression
        | C::UnsupportedCompressionType
        | C::BadMessage
        | C::TopicAuthorizationFailed
        | C::GroupAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::SaslAuthenticationFailed
        | C::Authentication
        | C::UnsupportedVersion
        | C::InvalidGroupId
        | C::Fatal => true,
        // Handshakes also fail on a reset connection; a certificate that does not
        // verify, a TLS alert from the broker (a client certificate refused, expired
        // or missing) and no common protocol version fail the same way every time.
        C::SSL => {
            let r = reason.to_ascii_lowercase();
            [
                "certificate verify failed",
                "wrong version number",
                "alert",
                "no protocols available",
                "certificate required",
            ]
            .iter()
            .any(|s| r.contains(s))
        }
        _ => false,
    }
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
    fn only_errors_that_cannot_heal_are_permanent() {
        use RDKafkaErrorCode as C;
        for code in [
            C::NotImplemented,
            C::BadCompression,
            C::TopicAuthorizationFailed,
            C::GroupAuthorizationFailed,
            C::Authentication,
            C::SaslAuthenticationFailed,
        ] {
            assert!(permanent(code, ""), "{code:?}");
        }
        for code in [
            C::AllBrokersDown,
            C::BrokerTransportFailure,
            C::OperationTimedOut,
            C::NotLeaderForPartition,
            C::UnknownTopicOrPartition,
        ] {
            assert!(!permanent(code, ""), "{code:?}");
        }
        assert!(permanent(
            C::SSL,
            "SSL handshake failed: ssl/statem/statem_clnt.c:1889: error:0A000086:SSL routines::certificate verify failed"
        ));
        assert!(permanent(
            C::SSL,
            "SSL handshake failed: error:0A000412:SSL routines::sslv3 alert bad certificate"
        ));
        assert!(!permanent(C::SSL, "SSL handshake failed: Disconnected"));
    }

    #[test]
    fn user_options_come_last() {
        let c = client_config(
            "b:1",
            &Security::default(),
            &["bootstrap.servers=c:2".into()],
        )
        .unwrap();
        assert_eq!(c.get("bootstrap.servers"), Some("c:2"));
    }
}
