//! A consumer-group member as a tracking processor's source.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cqrs_core::processor::{Batch, EventSource, Rejected};
use cqrs_core::view::DeadLetter;
use cqrs_core::{Envelope, Error, Result};
use futures::FutureExt;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
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
/// assignment when it is handed over, not when it was fetched, and against the generation:
/// a batch fetched before partitions were taken away is dropped even when the same partitions
/// came back since (their records are read again from the committed offsets).
pub(crate) struct KafkaSubscription {
    bus: KafkaBus,
    consumer: Arc<Member>,
    idle: Duration,
    /// Next offset to commit, per topic and partition delivered since the last ack, with the
    /// generation it was fetched in.
    delivered: Vec<(String, i32, i64, u64)>,
    /// Batches decoded ahead, in the order they were received.
    fetched: mpsc::Receiver<Result<Fetched>>,
    /// The batch size the processor last asked for, for the fetcher.
    batch_size: Arc<AtomicUsize>,
}

/// Counts the times partitions were taken away from this member: a revoke, or a rebalance
/// error (which rdkafka answers by unassigning everything). Rebalances are served inside the
/// fetcher's `recv`, so the count read before a batch's first record holds for all of it: a
/// rebalance served while the batch is gathered ends it.
#[derive(Default)]
pub(crate) struct Generation(AtomicU64);

impl Generation {
    fn current(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

impl ClientContext for Generation {}

impl ConsumerContext for Generation {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if !matches!(rebalance, Rebalance::Assign(_)) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
}

type Member = StreamConsumer<Generation>;

/// Records received and decoded together.
struct Fetched {
    /// The member's generation when they were received.
    generation: u64,
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
        let client = config.client_config();
        // Dropping a stale batch is right when a revoke takes every partition back and the
        // assignment restarts them at the committed offsets (the classic, eager protocol). An
        // incremental one keeps partitions without a restart: a dropped batch would be a gap.
        if let Some(protocol) = client.get("group.protocol") {
            if protocol != "classic" {
                return Err(Error::Config(format!(
                    "Kafka consumer: group.protocol={protocol} is not supported; the bus needs \
                     the classic protocol, whose revokes restart partitions at their committed \
                     offsets"
                )));
            }
        }
        let mut client = client;
        let consumer: Member = client
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
            .create_with_context(Generation::default())
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
    consumer: Arc<Member>,
    batch_size: Arc<AtomicUsize>,
    tx: mpsc::Sender<Result<Fetched>>,
) {
    loop {
        let first = tokio::select! {
            _ = tx.closed() => return,
            first = consumer.recv() => first,
        };
        // Read after the first record's `recv`, which served any rebalance before it.
        let generation = consumer.context().current();
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
        let mut fetched = decode_all(&messages);
        fetched.generation = generation;
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
        generation: 0,
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
        // A rebalance may have revoked partitions since: drop their records, and every record
        // fetched before a revoke, even of a partition assigned again since (it restarts at
        // the committed offset: handing the old records over would put them before the
        // earlier ones the restart reads again, and a view would skip those as old).
        let current = self.consumer.context().current();
        let assigned = self.assigned();
        let owned: Vec<bool> = fetched
            .partitions
            .iter()
            .map(|(t, p, _)| {
                fetched.generation == current && assigned.iter().any(|(at, ap)| at == t && ap == p)
            })
            .collect();
        if fetched.generation != current {
            tracing::debug!(
                fetched = fetched.generation,
                current,
                records = fetched.events.len(),
                "a batch fetched before a rebalance dropped"
            );
        }
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
                .find(|(t, p, _, g)| t == topic && p == partition && *g == current)
            {
                Some((_, _, offset, _)) => *offset = (*offset).max(*next),
                None => self
                    .delivered
                    .push((topic.clone(), *partition, *next, current)),
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
        // Only what was delivered in the current generation, of partitions still held: an
        // offset delivered before a revoke is the new owner's (or this member's again, from
        // the committed offset) to commit.
        let current = self.consumer.context().current();
        let assigned = self.assigned();
        let delivered = std::mem::take(&mut self.delivered);
        let mut list = TopicPartitionList::new();
        for (topic, partition, offset, generation) in &delivered {
            if *generation == current && assigned.iter().any(|(t, p)| t == topic && p == partition)
            {
                list.add_partition_offset(topic, *partition, Offset::Offset(*offset))
                    .map_err(|e| backend("building the offsets to commit", e))?;
            }
        }
        if list.count() == 0 {
            return Ok(());
        }
        let consumer = self.consumer.clone();
        let committed =
            tokio::task::spawn_blocking(move || consumer.commit(&list, CommitMode::Sync))
                .await
                .map_err(|e| Error::Backend {
                    backend: "kafka",
                    message: "committing offsets".into(),
                    source: Some(Box::new(e)),
                })
                .and_then(|done| done.map_err(|e| backend("committing offsets", e)));
        if committed.is_err() {
            // Kept for the processor's retry of this ack.
            self.delivered = delivered;
        }
        committed
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
