//! The Kafka side of the producer: an idempotent, compressed, non-blocking producer
//! whose every delivery report is counted.
//!
//! Sends are handed to librdkafka without awaiting each one (its background thread
//! batches them); the delivery callback keeps the books. Only the final flush waits.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use events::UserEvent;
use rdkafka::ClientConfig;
use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use tracing::{error, info};

use crate::{Config, Error};

/// Delivery failures logged one by one before the log goes quiet.
const LOGGED_FAILURES: u64 = 10;

/// Counts delivery reports as librdkafka's thread hands them back (and, when a
/// metrics recorder is installed, in Prometheus too).
pub struct Deliveries {
    delivered: AtomicU64,
    failed: AtomicU64,
    delivered_total: metrics::Counter,
    failed_total: metrics::Counter,
}

impl Default for Deliveries {
    fn default() -> Self {
        Self {
            delivered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            delivered_total: metrics::counter!(crate::DELIVERED),
            failed_total: metrics::counter!(crate::FAILED),
        }
    }
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
                self.delivered_total.increment(1);
            }
            Err((e, _)) => {
                self.failed_total.increment(1);
                let n = self.failed.fetch_add(1, Ordering::Relaxed) + 1;
                if n <= LOGGED_FAILURES {
                    error!(message = "Delivery failed.", error = %e, failures = n);
                }
            }
        }
    }
}

/// The configured producer.
pub struct Publisher {
    producer: ThreadedProducer<Deliveries>,
    topic: String,
}

impl Publisher {
    pub fn new(base: &ClientConfig, config: &Config) -> Result<Self, Error> {
        let mut client = ClientConfig::new();
        // Program settings first, then the user's -X options (kept in `base`) on top.
        client
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", config.compression.name())
            .set("linger.ms", "5")
            .set("batch.size", "1000000")
            .set("queue.buffering.max.messages", "500000")
            .set(
                "message.timeout.ms",
                config.delivery_timeout.as_millis().to_string(),
            );
        for (k, v) in base.config_map().iter() {
            client.set(*k, *v);
        }
        let producer = client.create_with_context(Deliveries::default())?;
        Ok(Self {
            producer,
            topic: config.topic.clone(),
        })
    }

    /// Hands one event to librdkafka, waiting only while its queue is full.
    pub async fn send(&self, event: &UserEvent) -> Result<(), Error> {
        let payload = event.to_json();
        let mut record = BaseRecord::to(&self.topic).payload(&payload);
        if let Some(key) = event.key() {
            record = record.key(key);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err((e, _)) => return Err(Error::Producer(e)),
            }
        }
    }

    pub fn delivered(&self) -> u64 {
        self.producer.context().delivered.load(Ordering::Relaxed)
    }

    pub fn failed(&self) -> u64 {
        self.producer.context().failed.load(Ordering::Relaxed)
    }

    /// Waits up to `timeout` for every message in flight to be acknowledged.
    pub async fn flush(&self, timeout: Duration) {
        let producer = self.producer.clone();
        let flushed = tokio::task::spawn_blocking(move || producer.flush(timeout)).await;
        if let Ok(Err(e)) = flushed {
            error!(message = "Flush did not complete.", error = %e, in_flight = self.producer.in_flight_count());
        }
    }

    /// Flushes and reports. Messages still in flight after the flush timeout count
    /// as failed: nobody knows whether they arrived.
    pub async fn finish(
        self,
        sent: u64,
        bad_input: u64,
        started: std::time::Instant,
        timeout: Duration,
    ) -> Summary {
        self.flush(timeout).await;
        // The rate counts until the last acknowledgement, not the last hand-over.
        let elapsed = started.elapsed();
        let unknown = self.producer.in_flight_count().max(0) as u64;
        let summary = Summary {
            sent,
            delivered: self.delivered(),
            failed: self.failed() + unknown,
            bad_input,
            elapsed,
        };
        info!(
            message = "Producer finished.",
            sent = summary.sent,
            delivered = summary.delivered,
            failed = summary.failed,
            bad_input = summary.bad_input
        );
        summary
    }
}

/// What a run did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Events handed to Kafka.
    pub sent: u64,
    /// Events the brokers acknowledged.
    pub delivered: u64,
    /// Events that failed or whose fate is unknown.
    pub failed: u64,
    /// Input lines that were not events (file source).
    pub bad_input: u64,
    pub elapsed: Duration,
}

impl Summary {
    /// True when every event handed over was acknowledged and no input was bad.
    pub fn ok(&self) -> bool {
        self.failed == 0 && self.bad_input == 0 && self.delivered == self.sent
    }

    pub fn events_per_second(&self) -> f64 {
        self.delivered as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sent={} delivered={} failed={} bad_input={} elapsed={:.2}s rate={:.0} events/s",
            self.sent,
            self.delivered,
            self.failed,
            self.bad_input,
            self.elapsed.as_secs_f64(),
            self.events_per_second()
        )
    }
}
