//! The production bus: Kafka through rdkafka.
//!
//! Producer: idempotent (`enable.idempotence=true`, `acks=all`), keyed by user id so one
//! user's messages keep their order in one partition; `publish` returns once the
//! brokers acknowledged. Consumers: one consumer group per role, offsets stored only
//! after the handler finished (`enable.auto.offset.store=false`) and committed in the
//! background — at-least-once, in order per partition. Rebalances are logged; storing
//! an offset for a partition that was just revoked is expected and not an error.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientContext, Message, TopicPartitionList};
use tracing::{info, warn};

use herald_actors::domain::{BusMessage, Topic};
use herald_actors::ports::{Bus, BusError, Subscription};

/// How long a publish may wait in the producer queue before it fails.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a consumer that stopped heartbeating (a node killed unannounced) keeps its
/// group membership and partitions.
pub const CONSUMER_SESSION_TIMEOUT: Duration = Duration::from_secs(10);

fn unavailable(err: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(err.to_string())
}

/// Kafka connection settings.
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// `host:port[,host:port…]`.
    pub brokers: String,
    /// Partitions of topics created at start-up.
    pub partitions: i32,
    /// Replication factor of topics created at start-up.
    pub replication_factor: i32,
    /// Producer `linger.ms`: batching against latency.
    pub linger_ms: u32,
    /// Consumer `fetch.wait.max.ms`: how long the broker may hold a fetch that found
    /// too little data.
    pub fetch_wait_max_ms: u32,
    /// Prepended to every topic name and consumer group id, so several deployments
    /// (or test runs) can share one cluster without sharing rebalances.
    pub topic_prefix: String,
}

/// The Kafka bus.
pub struct KafkaBus {
    settings: KafkaSettings,
    producer: FutureProducer,
    /// Groups that start at the end of their topic the first time (auto.offset.reset).
    latest_groups: Vec<String>,
}

impl KafkaBus {
    /// The Kafka topic name of `topic`.
    fn name(&self, topic: Topic) -> String {
        format!("{}{}", self.settings.topic_prefix, topic.as_str())
    }

    /// A bus on `settings.brokers`. Groups in `latest_groups` start at the end of
    /// their topic when they have no committed offset; others at the beginning.
    ///
    /// # Errors
    /// When the producer cannot be configured.
    pub fn new(settings: KafkaSettings, latest_groups: &[&str]) -> Result<Self, BusError> {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", &settings.brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", settings.linger_ms.to_string())
            .set(
                "message.timeout.ms",
                PUBLISH_TIMEOUT.as_millis().to_string(),
            )
            .create()
            .map_err(unavailable)?;
        Ok(Self {
            settings,
            producer,
            latest_groups: latest_groups.iter().map(|g| (*g).to_owned()).collect(),
        })
    }

    /// Creates every topic of DESIGN §5 that does not exist yet.
    ///
    /// # Errors
    /// When the brokers cannot be reached or refuse for another reason.
    pub async fn create_topics(&self) -> Result<(), BusError> {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.settings.brokers)
            .create()
            .map_err(unavailable)?;
        let names: Vec<String> = Topic::ALL.iter().map(|t| self.name(*t)).collect();
        let topics: Vec<NewTopic<'_>> = names
            .iter()
            .map(|name| {
                NewTopic::new(
                    name,
                    self.settings.partitions,
                    TopicReplication::Fixed(self.settings.replication_factor),
                )
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        for result in admin
            .create_topics(&topics, &options)
            .await
            .map_err(unavailable)?
        {
            match result {
                Ok(topic) => info!(%topic, "kafka topic created"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(unavailable(format!("creating topic {topic}: {code}")))
                }
            }
        }
        Ok(())
    }

    /// Checks the brokers answer (metadata request).
    ///
    /// # Errors
    /// When they do not.
    pub async fn ping(&self) -> Result<(), BusError> {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, Duration::from_secs(3))
                .map(|_| ())
                .map_err(unavailable)
        })
        .await
        .map_err(unavailable)?
    }

    /// Publishes with headers (used for dead letters, which carry their error).
    async fn send(
        &self,
        topic: Topic,
        key: &str,
        payload: &[u8],
        headers: Option<OwnedHeaders>,
    ) -> Result<(), BusError> {
        let name = self.name(topic);
        let mut record = FutureRecord::to(&name).key(key).payload(payload);
        if let Some(headers) = headers {
            record = record.headers(headers);
        }
        self.producer
            .send(record, PUBLISH_TIMEOUT)
            .await
            .map(|_| ())
            .map_err(|(err, _)| unavailable(err))
    }
}

#[async_trait]
impl Bus for KafkaBus {
    async fn publish(&self, topic: Topic, key: &str, payload: Bytes) -> Result<(), BusError> {
        let headers = match topic {
            Topic::EmailDlq | Topic::NotificationsDlq => dead_letter_headers(&payload),
            _ => None,
        };
        self.send(topic, key, &payload, headers).await
    }

    /// Every record is handed to the producer before any acknowledgement is awaited,
    /// so the batch shares the broker round trips; the idempotent producer keeps
    /// their order per partition.
    async fn publish_batch(
        &self,
        topic: Topic,
        messages: &[(String, Bytes)],
    ) -> Result<(), BusError> {
        let sends = messages
            .iter()
            .map(|(key, payload)| self.send(topic, key, payload, None));
        futures_util::future::join_all(sends)
            .await
            .into_iter()
            .collect()
    }

    async fn subscribe(
        &self,
        topic: Topic,
        group: &str,
    ) -> Result<Box<dyn Subscription>, BusError> {
        let reset = if self.latest_groups.iter().any(|g| g == group) {
            "latest"
        } else {
            "earliest"
        };
        let consumer: StreamConsumer<RebalanceLogger> =
            consumer_config(&self.settings, group, reset)
                .create_with_context(RebalanceLogger {
                    group: group.to_owned(),
                })
                .map_err(unavailable)?;
        let name = self.name(topic);
        consumer.subscribe(&[&name]).map_err(unavailable)?;
        Ok(Box::new(KafkaSubscription {
            consumer: Arc::new(consumer),
            topic,
            name,
        }))
    }
}

/// A consumer's settings: manual offset storing (an offset is stored only after its
/// message was handled), a short session, and the configured fetch wait.
fn consumer_config(settings: &KafkaSettings, group: &str, reset: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.brokers)
        .set("group.id", format!("{}{group}", settings.topic_prefix))
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", reset)
        .set("fetch.wait.max.ms", settings.fetch_wait_max_ms.to_string())
        // A node that dies unannounced holds its partitions until its session times
        // out: keep that short.
        .set(
            "session.timeout.ms",
            CONSUMER_SESSION_TIMEOUT.as_millis().to_string(),
        );
    config
}

/// Dead letters carry their error in Kafka headers too, so tools can filter on it
/// without parsing the body.
fn dead_letter_headers(payload: &[u8]) -> Option<OwnedHeaders> {
    let letter: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let mut headers = OwnedHeaders::new();
    for name in ["error", "topic", "partition", "offset"] {
        if let Some(value) = letter.get(name) {
            let text = value
                .as_str()
                .map_or_else(|| value.to_string(), str::to_owned);
            headers = headers.insert(Header {
                key: &format!("herald.{name}"),
                value: Some(text.as_bytes()),
            });
        }
    }
    Some(headers)
}

/// Logs partition assignments and revocations.
struct RebalanceLogger {
    group: String,
}

impl ClientContext for RebalanceLogger {}

impl ConsumerContext for RebalanceLogger {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                info!(group = %self.group, partitions = partitions.count(), "kafka partitions assigned")
            }
            Rebalance::Revoke(partitions) => {
                info!(group = %self.group, partitions = partitions.count(), "kafka partitions revoked")
            }
            Rebalance::Error(err) => {
                warn!(group = %self.group, error = %err, "kafka rebalance failed")
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _: &TopicPartitionList) {
        if let Err(err) = result {
            if !matches!(err, KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) {
                warn!(group = %self.group, error = %err, "kafka offset commit failed");
            }
        }
    }
}

/// One group's consumer on one topic.
struct KafkaSubscription {
    consumer: Arc<StreamConsumer<RebalanceLogger>>,
    topic: Topic,
    /// The topic's Kafka name (with the prefix).
    name: String,
}

#[async_trait]
impl Subscription for KafkaSubscription {
    async fn next(&mut self) -> Result<BusMessage, BusError> {
        loop {
            let message = self.consumer.recv().await.map_err(unavailable)?;
            let Some(payload) = message.payload() else {
                // A tombstone or empty record carries nothing to handle: skip it, but
                // remember it was seen.
                let _ = self.consumer.store_offset_from_message(&message);
                continue;
            };
            return Ok(BusMessage {
                topic: self.topic,
                partition: message.partition(),
                offset: message.offset(),
                key: message
                    .key()
                    .map(|k| String::from_utf8_lossy(k).into_owned())
                    .unwrap_or_default(),
                payload: Bytes::copy_from_slice(payload),
            });
        }
    }

    async fn commit(&mut self, message: &BusMessage) -> Result<(), BusError> {
        match self
            .consumer
            .store_offset(&self.name, message.partition, message.offset)
        {
            Ok(()) => Ok(()),
            // The partition was revoked while the message was handled: the new owner
            // handles it again, which at-least-once allows.
            Err(KafkaError::StoreOffset(
                RDKafkaErrorCode::UnknownPartition | RDKafkaErrorCode::State,
            )) => {
                warn!(topic = %message.topic, partition = message.partition, "offset for a revoked partition not stored");
                Ok(())
            }
            Err(err) => Err(unavailable(err)),
        }
    }

    async fn lag(&mut self) -> Option<u64> {
        let consumer = Arc::clone(&self.consumer);
        tokio::task::spawn_blocking(move || {
            let assignment = consumer.assignment().ok()?;
            let positions = consumer.position().ok()?;
            let mut lag = 0u64;
            for element in assignment.elements() {
                let (_, high) = consumer
                    .fetch_watermarks(element.topic(), element.partition(), Duration::from_secs(1))
                    .ok()?;
                let position = positions
                    .find_partition(element.topic(), element.partition())
                    .and_then(|p| p.offset().to_raw())
                    .filter(|o| *o >= 0)
                    .unwrap_or(high);
                lag += (high - position).max(0) as u64;
            }
            Some(lag)
        })
        .await
        .ok()
        .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumers_store_offsets_by_hand_and_wait_for_fetches_as_configured() {
        let settings = KafkaSettings {
            brokers: "127.0.0.1:9092".into(),
            partitions: 1,
            replication_factor: 1,
            linger_ms: 1,
            fetch_wait_max_ms: 10,
            topic_prefix: "t1-".into(),
        };
        let config = consumer_config(&settings, "delivery", "latest");
        assert_eq!(config.get("group.id"), Some("t1-delivery"));
        assert_eq!(config.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(config.get("auto.offset.reset"), Some("latest"));
        assert_eq!(config.get("fetch.wait.max.ms"), Some("10"));
    }
}
