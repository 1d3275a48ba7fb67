//! A consumer-group member as a tracking processor's source.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cqrs_core::processor::{Batch, EventSource, Rejected};
use cqrs_core::view::DeadLetter;
use cqrs_core::{Envelope, Error, Result};
use futures::FutureExt;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use crate::codec;
use crate::{backend, KafkaBus};

/// One member of a consumer group. Offsets are committed on [`EventSource::ack`] only, after
/// the projection's unit of work: delivery is at-least-once, and the projection's per-view
/// record of applied versions makes the effect exactly once. Records of partitions revoked by
/// a rebalance while a batch was being fetched are dropped: the partition's new owner reads
/// them from the committed offsets.
///
/// A fetcher thread receives and decodes the next batch while the processor applies the
/// current one (on another core, where there is one). The batch is checked against the
/// assignment when it is handed over, not when it was fetched.
pub(crate) struct KafkaSubscription {
    bus: KafkaBus,
    consumer: Arc<StreamConsumer>,
    idle: Duration,
    /// Next offset to commit, per topic and partition delivered since the last ack.
    delivered: Vec<(String, i32, i64)>,
    /// Batches decoded ahead, in the order they were received.
    fetched: mpsc::Receiver<Result<Fetched>>,
    /// The batch size the processor last asked for, for the fetcher.
    batch_size: Arc<AtomicUsize>,
}

/// Records received and decoded together.
struct Fetched {
    events: Vec<Envelope>,
    /// Each event's partition: an index into `partitions`.
    from: Vec<usize>,
    /// The partitions the records came from, with the offset after the last record of each.
    partitions: Vec<(String, i32, i64)>,
    /// Undecodable records, for the projection's dead letters, with their partition.
    poison: Vec<(usize, Rejected)>,
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
            .set("group.id", format!("{}{group}", config.group_prefix))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            // The same partition numbers of every topic to one member: with co-partitioned
            // topics, every event of a routing key goes to one member.
            .set("partition.assignment.strategy", "range")
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
        let consumer = Arc::new(consumer);
        let batch_size = Arc::new(AtomicUsize::new(1_000));
        // One batch decoded ahead: enough to overlap, little held in memory.
        let (tx, fetched) = mpsc::channel(1);
        // A thread of its own: a task could be scheduled on the processor's worker thread
        // and take turns with it instead of running alongside. It ends when the
        // subscription is dropped (the channel closes).
        let (fetcher_consumer, fetcher_size) = (consumer.clone(), batch_size.clone());
        std::thread::Builder::new()
            .name("cqrs-kafka-fetch".into())
            .spawn(move || {
                futures::executor::block_on(fetch(fetcher_consumer, fetcher_size, tx));
            })
            .map_err(|e| Error::Backend {
                backend: "kafka",
                message: "starting the subscription's fetcher thread".into(),
                source: Some(Box::new(e)),
            })?;
        Ok(KafkaSubscription {
            bus,
            consumer,
            idle,
            delivered: Vec::new(),
            fetched,
            batch_size,
        })
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
}

fn dlq_topic(topic: &str) -> String {
    format!("{topic}.dlq")
}

/// The fetcher: receives up to a batch of records (what is there, after the first), decodes
/// them while still borrowed from librdkafka, and queues the batch. A consumer error is queued
/// after the records received before it, so none is lost.
async fn fetch(
    consumer: Arc<StreamConsumer>,
    batch_size: Arc<AtomicUsize>,
    tx: mpsc::Sender<Result<Fetched>>,
) {
    loop {
        let first = tokio::select! {
            _ = tx.closed() => return,
            first = consumer.recv() => first,
        };
        let mut messages = match first {
            Ok(message) => vec![message],
            Err(e) => {
                if tx.send(Err(backend("consuming", e))).await.is_err() {
                    return;
                }
                continue;
            }
        };
        let max = batch_size.load(Ordering::Relaxed).max(1);
        let mut failure = None;
        while messages.len() < max {
            match consumer.recv().now_or_never() {
                Some(Ok(message)) => messages.push(message),
                Some(Err(e)) => {
                    failure = Some(backend("consuming", e));
                    break;
                }
                None => break,
            }
        }
        let fetched = decode_all(&messages);
        drop(messages);
        if tx.send(Ok(fetched)).await.is_err() {
            return;
        }
        if let Some(e) = failure {
            if tx.send(Err(e)).await.is_err() {
                return;
            }
        }
    }
}

/// Decodes received records; undecodable ones become dead letters.
fn decode_all<M: Message>(messages: &[M]) -> Fetched {
    let mut fetched = Fetched {
        events: Vec::with_capacity(messages.len()),
        from: Vec::with_capacity(messages.len()),
        partitions: Vec::new(),
        poison: Vec::new(),
    };
    for message in messages {
        let (topic, partition, offset) = (message.topic(), message.partition(), message.offset());
        let index = match fetched
            .partitions
            .iter()
            .position(|(t, p, _)| t == topic && *p == partition)
        {
            Some(i) => i,
            None => {
                fetched.partitions.push((topic.to_owned(), partition, 0));
                fetched.partitions.len() - 1
            }
        };
        let next = &mut fetched.partitions[index].2;
        *next = (*next).max(offset + 1);
        match codec::decode(message) {
            Ok(envelope) => {
                fetched.events.push(envelope);
                fetched.from.push(index);
            }
            Err(reason) => {
                tracing::warn!(topic, partition, offset, %reason, "a record that is not an envelope");
                fetched
                    .poison
                    .push((index, codec::rejected(message, reason)));
            }
        }
    }
    fetched
}

#[async_trait]
impl EventSource for KafkaSubscription {
    async fn next_batch(&mut self, max: usize) -> Result<Batch> {
        self.batch_size.store(max.max(1), Ordering::Relaxed);
        let fetched = match tokio::time::timeout(self.idle, self.fetched.recv()).await {
            Err(_) => return Ok(Batch::from_bus(Vec::new())),
            Ok(None) => {
                return Err(Error::Backend {
                    backend: "kafka",
                    message: "the subscription's fetcher stopped".into(),
                    source: None,
                })
            }
            Ok(Some(fetched)) => fetched?,
        };
        // A rebalance may have revoked partitions since: drop their records.
        let assigned = self.assigned();
        let owned: Vec<bool> = fetched
            .partitions
            .iter()
            .map(|(t, p, _)| assigned.iter().any(|(at, ap)| at == t && ap == p))
            .collect();
        let rejected: Vec<Rejected> = fetched
            .poison
            .into_iter()
            .filter(|(i, _)| owned[*i])
            .map(|(_, rejected)| rejected)
            .collect();
        for (i, (topic, partition, next)) in fetched.partitions.iter().enumerate() {
            if !owned[i] {
                continue;
            }
            match self
                .delivered
                .iter_mut()
                .find(|(t, p, _)| t == topic && p == partition)
            {
                Some((_, _, offset)) => *offset = (*offset).max(*next),
                None => self.delivered.push((topic.clone(), *partition, *next)),
            }
        }
        let events = fetched
            .events
            .into_iter()
            .zip(fetched.from)
            .filter(|(_, i)| owned[*i])
            .map(|(event, _)| event)
            .collect();
        let mut batch = Batch::from_bus(events);
        batch.rejected = rejected;
        Ok(batch)
    }

    /// Commits the offsets delivered since the last ack, synchronously: the commit has
    /// landed (or failed) when this returns, never queued for later.
    async fn ack(&mut self, _batch: &Batch) -> Result<()> {
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
        tokio::task::spawn_blocking(move || consumer.commit(&list, CommitMode::Sync))
            .await
            .map_err(|e| Error::Backend {
                backend: "kafka",
                message: "committing offsets".into(),
                source: Some(Box::new(e)),
            })?
            .map_err(|e| backend("committing offsets", e))
    }

    async fn dead_letter(&mut self, letters: &[DeadLetter]) -> Result<()> {
        let records = letters
            .iter()
            .map(|letter| {
                // A record that was not an envelope names the topic it came from.
                let source = letter
                    .envelope
                    .metadata
                    .user
                    .get(cqrs_core::wire::DLQ_SOURCE)
                    .and_then(|s| s.rsplitn(3, '/').nth(2));
                let topic = match source {
                    Some(topic) => topic.to_owned(),
                    None => self.bus.topic(&letter.envelope.aggregate_type)?,
                };
                let mut record = self.bus.record(dlq_topic(&topic), &letter.envelope);
                record.headers.push((
                    cqrs_core::wire::DLQ_REASON,
                    letter.reason.as_bytes().to_vec(),
                ));
                Ok(record)
            })
            .collect::<Result<Vec<_>>>()?;
        self.bus.send_all(records).await
    }
}
