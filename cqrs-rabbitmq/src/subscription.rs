//! A consumer-group member as a tracking processor's source.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use cqrs_core::processor::{Batch, EventSource};
use cqrs_core::view::DeadLetter;
use cqrs_core::{Error, Result};
use lapin::options::BasicAckOptions;
use lapin::Channel;
use tokio::sync::mpsc;

use crate::member::{Incoming, Kind, Member};
use crate::{backend, codec, Outgoing, RabbitBus};

/// One member of a consumer group. Messages are acknowledged on [`EventSource::ack`] only,
/// after the projection's unit of work: delivery is at-least-once, and the projection's
/// per-view record of applied versions makes the effect exactly once. After a lost
/// connection it joins again on the next call; what it had not acknowledged is redelivered.
pub(crate) struct RabbitSubscription {
    bus: RabbitBus,
    group: String,
    types: Vec<String>,
    idle: Duration,
    member: Option<Member>,
    generation: u64,
    tx: mpsc::UnboundedSender<Incoming>,
    rx: mpsc::UnboundedReceiver<Incoming>,
    next_rebalance: Instant,
    /// Per channel, the highest delivery tag handed out since the last ack.
    delivered: Vec<(u64, Channel, u64)>,
    /// Deliveries received but left for the next batch, in order (behind one handed alone).
    held: std::collections::VecDeque<Incoming>,
}

impl RabbitSubscription {
    /// Joins at once, so the group's queues exist when this returns.
    pub(crate) async fn open(
        bus: RabbitBus,
        group: &str,
        aggregate_types: &[&str],
        idle: Duration,
    ) -> Result<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let types: Vec<String> = aggregate_types.iter().map(|t| (*t).to_owned()).collect();
        let member = Member::join(bus.config(), group, &types, 0, tx.clone()).await?;
        Ok(RabbitSubscription {
            bus,
            group: group.to_owned(),
            types,
            idle,
            member: Some(member),
            generation: 0,
            tx,
            rx,
            next_rebalance: Instant::now(),
            delivered: Vec::new(),
            held: std::collections::VecDeque::new(),
        })
    }

    /// Drops the connection; the next call joins again.
    fn reset(&mut self) {
        if let Some(member) = self.member.take() {
            member.leave();
        }
        self.delivered.clear();
        self.held.clear();
    }

    fn note(&mut self, generation: u64, channel: &Channel, tag: u64) {
        match self
            .delivered
            .iter_mut()
            .find(|(g, c, _)| *g == generation && c.id() == channel.id())
        {
            Some((_, _, max)) => *max = (*max).max(tag),
            None => self.delivered.push((generation, channel.clone(), tag)),
        }
    }

    async fn member(&mut self) -> Result<&mut Member> {
        if self.member.is_none() {
            self.generation += 1;
            let config = self.bus.config();
            let member = Member::join(
                config,
                &self.group,
                &self.types,
                self.generation,
                self.tx.clone(),
            )
            .await?;
            tracing::info!(group = %self.group, "rejoined the consumer group");
            self.member = Some(member);
            self.next_rebalance = Instant::now();
        }
        self.member.as_mut().ok_or_else(|| Error::Backend {
            backend: "rabbitmq",
            message: "not connected".into(),
            source: None,
        })
    }

    fn jittered(every: Duration) -> Duration {
        every.mul_f64(0.8 + fastrand::f64() * 0.4)
    }
}

#[async_trait]
impl EventSource for RabbitSubscription {
    async fn next_batch(&mut self, max: usize) -> Result<Batch> {
        let rebalance_every = self.bus.config().rebalance_every;
        let due = self.delivered.is_empty() && Instant::now() >= self.next_rebalance;
        let member = self.member().await?;
        if due {
            if let Err(e) = member.rebalance().await {
                self.reset();
                return Err(e);
            }
            self.next_rebalance = Instant::now() + Self::jittered(rebalance_every);
        }
        let wait = self
            .idle
            .min(
                self.next_rebalance
                    .saturating_duration_since(Instant::now()),
            )
            .max(Duration::from_millis(1));
        let first = match self.held.pop_front() {
            Some(held) => held,
            None => match tokio::time::timeout(wait, self.rx.recv()).await {
                Err(_) | Ok(None) => return Ok(Batch::from_bus(Vec::new())),
                Ok(Some(first)) => first,
            },
        };
        let mut items = std::collections::VecDeque::from([first]);
        while items.len() < max.max(1) {
            match self
                .held
                .pop_front()
                .map(Ok)
                .unwrap_or_else(|| self.rx.try_recv())
            {
                Ok(item) => items.push_back(item),
                Err(_) => break,
            }
        }
        let limit = u64::from(self.bus.config().delivery_limit);
        let last_chance = limit + u64::from(crate::ISOLATED_ATTEMPTS);
        let mut batch = Batch::from_bus(Vec::with_capacity(items.len()));
        while let Some(item) = items.pop_front() {
            let before = match &item.kind {
                Kind::Delivery { delivery, .. } => codec::redeliveries(delivery),
                _ => 0,
            };
            if before >= limit && !self.delivered.is_empty() {
                // Suspected of crashing its batches: it goes alone, in the next batch,
                // and what came after it waits in order behind it.
                items.push_front(item);
                while let Some(rest) = items.pop_back() {
                    self.held.push_front(rest);
                }
                break;
            }
            let Some(member) = &self.member else { break };
            if item.generation != member.generation {
                continue;
            }
            let current = member.is_current(item.partition, item.epoch);
            let delivery = match item.kind {
                Kind::Delivery {
                    channel,
                    queue,
                    delivery,
                } if current => {
                    self.note(item.generation, &channel, delivery.delivery_tag);
                    (queue, delivery)
                }
                Kind::Failed(e) if current => {
                    self.reset();
                    return Err(backend("consuming", e));
                }
                Kind::Ended if current => {
                    self.reset();
                    return Err(Error::Backend {
                        backend: "rabbitmq",
                        message: format!(
                            "the broker cancelled the consumer of partition {}",
                            item.partition
                        ),
                        source: None,
                    });
                }
                _ => continue,
            };
            let (queue, delivery) = delivery;
            // Only the first message a channel delivers (tags start at 1 on each channel, and
            // every holding of a partition opens its own) is judged: a crash loop restarts at
            // it, while the broker's count also rises on everything returned beside it.
            if before >= last_chance && delivery.delivery_tag == 1 {
                let reason = format!(
                    "delivered {} times without an acknowledgement, the last {} of them alone in \
                     their batch",
                    before + 1,
                    crate::ISOLATED_ATTEMPTS
                );
                batch
                    .rejected
                    .push(codec::rejected(&delivery, &queue, reason));
                continue;
            }
            match codec::decode(&delivery) {
                Ok(envelope) => batch.events.push(envelope),
                Err(reason) => {
                    tracing::warn!(%queue, %reason, "a message that is not an envelope");
                    batch
                        .rejected
                        .push(codec::rejected(&delivery, &queue, reason));
                }
            }
            if before >= limit {
                // Alone: what follows waits for the next batch.
                while let Some(rest) = items.pop_back() {
                    self.held.push_front(rest);
                }
                break;
            }
        }
        Ok(batch)
    }

    /// Acknowledges everything delivered since the last ack, one `multiple` ack per channel.
    /// Deliveries of a connection that has gone since are not acknowledged: the broker
    /// redelivers them, and the projection skips what it applied.
    async fn ack(&mut self, _batch: &Batch) -> Result<()> {
        let delivered = std::mem::take(&mut self.delivered);
        let Some(generation) = self.member.as_ref().map(|m| m.generation) else {
            return Ok(());
        };
        for (g, channel, tag) in delivered {
            if g != generation {
                continue;
            }
            if let Err(e) = channel
                .basic_ack(tag, BasicAckOptions { multiple: true })
                .await
            {
                self.reset();
                return Err(backend("acknowledging", e));
            }
        }
        Ok(())
    }

    /// Publishes dead letters to the group's dead-letter queue, with their reasons.
    async fn dead_letter(&mut self, letters: &[DeadLetter]) -> Result<()> {
        let queue = self.bus.config().dead_letters(&self.group);
        let messages = letters
            .iter()
            .map(|letter| Outgoing {
                exchange: String::new(),
                routing_key: queue.clone(),
                body: letter.envelope.payload.to_vec(),
                properties: codec::properties(
                    &letter.envelope,
                    &[(
                        cqrs_core::wire::DLQ_REASON,
                        letter.reason.as_bytes().to_vec(),
                    )],
                ),
                aggregate_type: None,
            })
            .collect();
        self.bus.send_all(messages).await
    }
}

impl Drop for RabbitSubscription {
    fn drop(&mut self) {
        if let Some(member) = self.member.take() {
            member.leave();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebalances_are_spread_around_their_period() {
        for _ in 0..100 {
            let d = RabbitSubscription::jittered(Duration::from_secs(1));
            assert!(d >= Duration::from_millis(800) && d <= Duration::from_millis(1200));
        }
    }
}
