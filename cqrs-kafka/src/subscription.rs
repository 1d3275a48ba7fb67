//! A consumer-group member as a tracking processor's source.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cqrs_core::processor::{Batch, EventSource};
use cqrs_core::view::DeadLetter;
use cqrs_core::{Error, Result};
use futures::FutureExt;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::task::JoinHandle;

use crate::codec::{self, Record};
use crate::{backend, KafkaBus};

/// One member of a consumer group. Offsets are committed on [`EventSource::ack`] only, after
/// the projection's unit of work: delivery is at-least-once, and the projection's per-view
/// record of applied versions makes the effect exactly once. Records of partitions revoked by
/// a rebalance while a batch was being fetched are dropped: the partition's new owner reads
/// them from the committed offsets.
pub(crate) struct KafkaSubscription {
    bus: KafkaBus,
    consumer: Arc<StreamConsumer>,
    idle: Duration,
    /// Next offset to commit, per topic and partition delivered since the last ack.
    delivered: Vec<(String, i32, i64)>,
    /// The commit of the last ack, still under way while the next batch is applied.
    committing: Option<JoinHandle<KafkaResult<()>>>,
}

impl KafkaSubscription {
    pub(crate) fn new(
        bus: KafkaBus,
        group: &str,
        topics: &[String],
        idle: Duration,
    ) -> Result<Self> {
        let config = bus.config();
        let session = config.session_timeout.as_millis();
        let consumer: StreamConsumer = config
            .client_config()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("session.timeout.ms", session.to_string())
            .set("heartbeat.interval.ms", (session / 6).max(100).to_string())
            // Without it librdkafka pauses a full second whenever its queue fills.
            .set("fetch.queue.backoff.ms", "10")
            .create()
            .map_err(|e| Error::Config(format!("Kafka consumer: {e}")))?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&names)
            .map_err(|e| backend("subscribing", e))?;
        Ok(KafkaSubscription {
            bus,
            consumer: Arc::new(consumer),
            idle,
            delivered: Vec::new(),
            committing: None,
        })
    }

    /// Waits for the last ack's commit and reports its failure.
    async fn settle(&mut self) -> Result<()> {
        let Some(commit) = self.committing.take() else {
            return Ok(());
        };
        commit
            .await
            .map_err(|e| Error::Backend {
                backend: "kafka",
                message: "committing offsets".into(),
                source: Some(Box::new(e)),
            })?
            .map_err(|e| backend("committing offsets", e))
    }

    fn assigned(&self) -> Vec<(String, i32)> {
        self.consumer
            .assignment()
            .map(|list| {
                list.elements()
                    .iter()
                    .map(|e| (e.topic().to_owned(), e.partition()))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn dlq_topic(&self, topic: &str) -> String {
        format!("{topic}.dlq")
    }
}

#[async_trait]
impl EventSource for KafkaSubscription {
    async fn next_batch(&mut self, max: usize) -> Result<Batch> {
        let consumer = self.consumer.clone();
        // Borrowed records, decoded in place: nothing is copied but the envelope's fields.
        let first = match tokio::time::timeout(self.idle, consumer.recv()).await {
            Err(_) => return Ok(Batch::from_bus(Vec::new())),
            Ok(Err(e)) => return Err(backend("consuming", e)),
            Ok(Ok(message)) => message,
        };
        let mut messages = vec![first];
        while messages.len() < max.max(1) {
            match consumer.recv().now_or_never() {
                Some(Ok(message)) => messages.push(message),
                Some(Err(e)) => return Err(backend("consuming", e)),
                None => break,
            }
        }
        // A rebalance may have revoked partitions while we fetched: drop their records.
        let assigned = self.assigned();
        let mut events = Vec::with_capacity(messages.len());
        let mut poison = Vec::new();
        for message in &messages {
            let (topic, partition, offset) =
                (message.topic(), message.partition(), message.offset());
            if !assigned.iter().any(|(t, p)| t == topic && *p == partition) {
                continue;
            }
            match codec::decode(message) {
                Ok(envelope) => events.push(envelope),
                Err(reason) => {
                    tracing::error!(topic, partition, offset, %reason, "undecodable record dead-lettered");
                    poison.push(codec::dead_letter(message, self.dlq_topic(topic), &reason));
                }
            }
            match self
                .delivered
                .iter_mut()
                .find(|(t, p, _)| t == topic && *p == partition)
            {
                Some((_, _, next)) => *next = (*next).max(offset + 1),
                None => self
                    .delivered
                    .push((topic.to_owned(), partition, offset + 1)),
            }
        }
        drop(messages);
        if !poison.is_empty() {
            self.bus.send_all(poison).await?;
        }
        Ok(Batch::from_bus(events))
    }

    /// Commits the offsets delivered since the last ack. The commit is synchronous (it lands
    /// or fails, never queued for later) but overlaps the next batch: `ack` returns once it
    /// has started, and the next `ack` first waits for it and reports its failure. So one
    /// commit at most is under way, commits land in order, and none goes out before its
    /// batch's unit of work committed. A source dropped meanwhile keeps the consumer (and its
    /// group membership) until the commit has landed.
    async fn ack(&mut self, _batch: &Batch) -> Result<()> {
        self.settle().await?;
        if self.delivered.is_empty() {
            return Ok(());
        }
        let assigned = self.assigned();
        let mut list = TopicPartitionList::new();
        for (topic, partition, offset) in std::mem::take(&mut self.delivered) {
            if assigned.iter().any(|(t, p)| *t == topic && *p == partition) {
                list.add_partition_offset(&topic, partition, Offset::Offset(offset))
                    .map_err(|e| backend("building the offsets to commit", e))?;
            }
        }
        if list.count() == 0 {
            return Ok(());
        }
        let consumer = self.consumer.clone();
        self.committing = Some(tokio::task::spawn_blocking(move || {
            consumer.commit(&list, CommitMode::Sync)
        }));
        Ok(())
    }

    async fn dead_letter(&mut self, letters: &[DeadLetter]) -> Result<()> {
        let records = letters
            .iter()
            .map(|letter| {
                let topic = self.bus.topic(&letter.envelope.aggregate_type)?;
                let mut record = Record::of(self.dlq_topic(&topic), &letter.envelope);
                record
                    .headers
                    .push((codec::DLQ_REASON, letter.reason.as_bytes().to_vec()));
                Ok(record)
            })
            .collect::<Result<Vec<_>>>()?;
        self.bus.send_all(records).await
    }
}
