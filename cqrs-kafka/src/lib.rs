#![doc = include_str!("../README.md")]

mod codec;
mod config;
mod subscription;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cqrs_core::processor::EventSource;
use cqrs_core::{Envelope, Error, EventBus, Result};
use parking_lot::Mutex;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer, PurgeConfig};

pub use crate::config::{validate_topic_name, KafkaConfig};
use crate::subscription::KafkaSubscription;

/// A Kafka error as the framework's: a backend error, which callers retry, except an admin
/// operation (creating topics) the cluster refuses for want of an ACL, which is a
/// configuration error. A refused login is not: librdkafka retries it itself, and ACLs and
/// credentials reach the brokers a while after they are set, so a running member must not end
/// for one.
pub(crate) fn backend(what: impl Into<String>, e: rdkafka::error::KafkaError) -> Error {
    if refused(&e) {
        return Error::Config(format!("Kafka refused {}: {e}", what.into()));
    }
    Error::backend("kafka", what, e)
}

fn refused(e: &rdkafka::error::KafkaError) -> bool {
    matches!(
        e,
        rdkafka::error::KafkaError::AdminOp(
            RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
        )
    )
}

/// An event bus on Kafka: a topic per aggregate type (`<prefix><aggregate type>`), records
/// keyed by routing key so a stream (and a view) keeps its order, the envelope's fields in
/// headers, co-partitioned topics read with the `range` assignor, an
/// idempotent producer, consumer groups whose offsets are committed only after the
/// projection's unit of work, and a dead-letter topic `<topic>.dlq` per topic beside the
/// projection's own dead letters.
#[derive(Clone)]
pub struct KafkaBus {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: KafkaConfig,
    /// Replaced when librdkafka declares it unusable (an idempotent producer's fatal error,
    /// e.g. after the broker lost its state).
    producer: parking_lot::RwLock<FutureProducer>,
    admin: AdminClient<DefaultClientContext>,
    topics: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for KafkaBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBus")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl KafkaBus {
    /// A bus with this configuration. Connects lazily: a broker that is down shows up as
    /// errors of `publish` and of subscriptions, which callers retry.
    ///
    /// # Errors
    /// [`Error::Config`] for a configuration librdkafka refuses.
    pub fn new(config: KafkaConfig) -> Result<Self> {
        let producer = Self::producer(&config)?;
        let admin: AdminClient<DefaultClientContext> = config
            .client_config()
            .create()
            .map_err(|e| Error::Config(format!("Kafka admin client: {e}")))?;
        Ok(KafkaBus {
            inner: Arc::new(Inner {
                config,
                producer: parking_lot::RwLock::new(producer),
                admin,
                topics: Mutex::new(HashSet::new()),
            }),
        })
    }

    /// The producer. Its messages never expire in its queue (`message.timeout.ms=0`): an
    /// idempotent producer keeps a partition's messages in order through retries, but one
    /// that lets messages 2 and 3 of a batch expire while the broker is away delivers 4 and 5
    /// when it returns, and a consumer that applied 4 skips 2 and 3 when the batch is published
    /// again. A publish is bounded by `message_timeout` in [`send_all`](Self::send_all)
    /// instead, whose failure purges the queue: what reached the topic is then a prefix of the
    /// batch, in order, and publishing the batch again leaves no gap.
    fn producer(config: &KafkaConfig) -> Result<FutureProducer> {
        config
            .client_config()
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", "0")
            .set("linger.ms", "5")
            .create()
            .map_err(|e| Error::Config(format!("Kafka producer: {e}")))
    }

    /// After a failed publish: forget which topics exist (a broker may have come back
    /// without them), and start a new producer. An idempotent producer whose broker lost its
    /// state can stall without reporting a fatal error; the old one's queue is purged first,
    /// so it sends nothing late (the failed batch is published again, whole and in order).
    fn recover(&self) {
        self.inner.topics.lock().clear();
        match Self::producer(&self.inner.config) {
            Ok(fresh) => {
                let old = std::mem::replace(&mut *self.inner.producer.write(), fresh);
                if let Some((code, reason)) = old.client().fatal_error() {
                    tracing::warn!(?code, %reason, "Kafka producer had failed fatally");
                }
                old.purge(PurgeConfig::default().queue().inflight());
            }
            Err(e) => tracing::error!(error = %e, "replacing the Kafka producer failed"),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &KafkaConfig {
        &self.inner.config
    }

    /// An envelope as a record on `topic`, its headers as the configuration says.
    pub(crate) fn record(&self, topic: String, e: &Envelope) -> codec::Record {
        codec::Record::of(topic, e, self.inner.config.named_headers)
    }

    /// The topic of an aggregate type.
    ///
    /// # Errors
    /// [`Error::Config`] when the name is not a valid topic name.
    pub fn topic(&self, aggregate_type: &str) -> Result<String> {
        let topic = format!("{}{aggregate_type}", self.inner.config.topic_prefix);
        validate_topic_name(&topic)?;
        Ok(topic)
    }

    /// Creates topics that do not exist yet (idempotent).
    ///
    /// # Errors
    /// A backend error.
    pub async fn ensure_topics(&self, topics: &[String]) -> Result<()> {
        let missing: Vec<&String> = {
            let known = self.inner.topics.lock();
            topics.iter().filter(|t| !known.contains(*t)).collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        let config = &self.inner.config;
        let new: Vec<NewTopic<'_>> = missing
            .iter()
            .map(|t| {
                NewTopic::new(
                    t,
                    config.partitions,
                    TopicReplication::Fixed(config.replication),
                )
            })
            .collect();
        // A broker that is down must fail this as fast as a publish, not after a minute.
        let timeout = config.message_timeout;
        let options = AdminOptions::new()
            .operation_timeout(Some(timeout))
            .request_timeout(Some(timeout));
        let created = tokio::time::timeout(
            timeout + Duration::from_secs(1),
            self.inner.admin.create_topics(new.iter(), &options),
        )
        .await
        .map_err(|_| Error::Backend {
            backend: "kafka",
            message: format!("creating topics: no answer within {timeout:?}"),
            source: None,
        })?;
        let results = created.map_err(|e| backend("creating topics", e))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(Error::Backend {
                        backend: "kafka",
                        message: format!("creating topic `{topic}`: {code}"),
                        source: None,
                    })
                }
            }
        }
        self.inner
            .topics
            .lock()
            .extend(missing.into_iter().cloned());
        Ok(())
    }

    /// Publishes already-encoded records and waits until the broker has them all.
    pub(crate) async fn send_all(&self, records: Vec<codec::Record>) -> Result<()> {
        let mut topics: Vec<String> = records.iter().map(|r| r.topic.clone()).collect();
        topics.sort();
        topics.dedup();
        if let Err(e) = self.ensure_topics(&topics).await {
            self.recover();
            return Err(e);
        }
        let timeout = self.inner.config.message_timeout;
        let producer = self.inner.producer.read().clone();
        let sends = records.iter().map(|r| {
            let record = FutureRecord::to(&r.topic)
                .key(r.key.as_slice())
                .payload(r.payload.as_ref())
                .headers(r.headers());
            producer.send(record, timeout)
        });
        let outcomes = match tokio::time::timeout(timeout, futures::future::join_all(sends)).await {
            Ok(outcomes) => outcomes,
            Err(_) => {
                // Purged with the old producer: nothing of the batch is sent after this.
                self.recover();
                return Err(Error::Backend {
                    backend: "kafka",
                    message: format!(
                        "publishing {} records: not all delivered within {timeout:?}",
                        records.len()
                    ),
                    source: None,
                });
            }
        };
        let mut failure = None;
        for outcome in outcomes {
            if let Err((e, message)) = outcome {
                use rdkafka::Message as _;
                failure.get_or_insert_with(|| {
                    backend(format!("publishing to `{}`", message.topic()), e)
                });
            }
        }
        match failure {
            Some(e) => {
                self.recover();
                Err(e)
            }
            None => Ok(()),
        }
    }
}

#[async_trait]
impl EventBus for KafkaBus {
    async fn publish(&self, events: &[Envelope]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let records = events
            .iter()
            .map(|e| Ok(self.record(self.topic(&e.aggregate_type)?, e)))
            .collect::<Result<Vec<_>>>()?;
        self.send_all(records).await
    }

    async fn subscribe(
        &self,
        group: &str,
        aggregate_types: &[&str],
        idle: Duration,
    ) -> Result<Box<dyn EventSource>> {
        if group.is_empty() || aggregate_types.is_empty() {
            return Err(Error::Config(
                "a subscription needs a group name and at least one aggregate type".into(),
            ));
        }
        let topics = aggregate_types
            .iter()
            .map(|t| self.topic(t))
            .collect::<Result<Vec<_>>>()?;
        self.ensure_topics(&topics).await?;
        self.check_co_partitioned(&topics).await?;
        Ok(Box::new(KafkaSubscription::new(
            self.clone(),
            group,
            &topics,
            idle,
        )?))
    }
}

impl KafkaBus {
    /// Checks that the topics of one subscription are co-partitioned: the same number of
    /// partitions, so that the range assignment gives a member the same partition numbers of
    /// each, and with them every event of a routing key, whichever topic carries it.
    async fn check_co_partitioned(&self, topics: &[String]) -> Result<()> {
        if topics.len() < 2 {
            return Ok(());
        }
        let bus = self.clone();
        let names = topics.to_vec();
        let counts = tokio::task::spawn_blocking(move || {
            let timeout = bus.inner.config.message_timeout;
            names
                .iter()
                .map(|topic| {
                    let metadata = bus
                        .inner
                        .admin
                        .inner()
                        .fetch_metadata(Some(topic), timeout)
                        .map_err(|e| backend("reading topic metadata", e))?;
                    let count = metadata
                        .topics()
                        .iter()
                        .find(|t| t.name() == topic)
                        .map_or(0, |t| t.partitions().len());
                    Ok((topic.clone(), count))
                })
                .collect::<Result<Vec<_>>>()
        })
        .await
        .map_err(|e| Error::Backend {
            backend: "kafka",
            message: format!("reading topic metadata: {e}"),
            source: None,
        })??;
        // A count of 0: the broker does not know the topic yet (it is created on first
        // publish). It is left out of this check, which runs once per subscription; a member
        // that subscribes after the topic exists checks it.
        let mut known = counts.iter().filter(|(_, n)| *n > 0);
        if let Some((first, n)) = known.next() {
            if let Some((other, m)) = known.find(|(_, m)| m != n) {
                return Err(Error::Config(format!(
                    "topics `{first}` ({n} partitions) and `{other}` ({m}) are not \
                     co-partitioned: one consumer group reads them, so they need the same \
                     number of partitions to keep each routing key with one member"
                )));
            }
        }
        Ok(())
    }
}

/// `.with(bus)` on [`cqrs_core::App::builder`]: the bus between services.
impl cqrs_core::app::Backend for KafkaBus {
    fn install(self, wiring: &mut cqrs_core::app::Wiring) {
        wiring.event_bus(self);
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};

    #[test]
    fn topics_refused_for_want_of_an_acl_are_a_config_error_the_rest_transient() {
        for code in [
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::ClusterAuthorizationFailed,
        ] {
            let mapped = super::backend("creating topics", KafkaError::AdminOp(code));
            assert!(
                matches!(mapped, cqrs_core::Error::Config(ref m) if m.starts_with("Kafka refused creating topics")),
                "{mapped:?}"
            );
            assert!(!mapped.is_transient());
        }
        // At runtime librdkafka retries these itself; a member or a relay rides them out.
        for e in [
            KafkaError::Global(RDKafkaErrorCode::Authentication),
            KafkaError::MessageConsumption(RDKafkaErrorCode::GroupAuthorizationFailed),
            KafkaError::MessageProduction(RDKafkaErrorCode::TopicAuthorizationFailed),
            KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut),
            KafkaError::ConsumerCommit(RDKafkaErrorCode::NotCoordinator),
        ] {
            let mapped = super::backend("publishing", e);
            assert!(mapped.is_transient(), "{mapped:?}");
        }
    }
}
