//! One member of a consumer group on one connection: it is counted by consuming the group's
//! roster queue, owns partitions by holding their exclusive lock queues, and consumes the
//! partition queues of what it owns. Everything it holds ends with its connection: when a
//! member dies, the broker deletes its locks, drops it from the roster and requeues what it
//! had not acknowledged, and the others take its partitions at their next rebalance.

use std::collections::BTreeMap;
use std::sync::Arc;

use cqrs_core::Result;
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, Consumer};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::{backend, connect, topology, RabbitConfig};

/// What a consumer of a partition queue hands the subscription.
pub(crate) struct Incoming {
    /// The connection it came over (see [`Member::generation`]).
    pub(crate) generation: u64,
    pub(crate) partition: u32,
    /// Which holding of the partition it came from: one released since is stale.
    pub(crate) epoch: u64,
    pub(crate) kind: Kind,
}

pub(crate) enum Kind {
    Delivery {
        channel: Channel,
        queue: Arc<str>,
        delivery: Box<Delivery>,
    },
    /// The consumer failed (the connection or channel is gone).
    Failed(lapin::Error),
    /// The consumer ended (cancelled by this member or by the broker).
    Ended,
}

struct Owned {
    epoch: u64,
    channels: Vec<Channel>,
    forwarders: Vec<JoinHandle<()>>,
}

pub(crate) struct Member {
    config: RabbitConfig,
    group: String,
    types: Vec<String>,
    /// Counts this member's connections: messages of an older one are stale.
    pub(crate) generation: u64,
    connection: Connection,
    control: Channel,
    _roster: Consumer,
    owned: BTreeMap<u32, Owned>,
    next_epoch: u64,
    tx: mpsc::UnboundedSender<Incoming>,
    /// Probing for free partitions backs off while every probe is refused, until the
    /// number of members changes.
    probes: Probes,
}

struct Probes {
    members: u32,
    refused_rounds: u32,
    next: std::time::Instant,
}

/// The longest wait between probes of a member under its share while every partition is held.
const MAX_PROBE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

fn locked(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(amqp)
        if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::RESOURCELOCKED)))
}

impl Member {
    /// Connects, declares the group's queues and its dead-letter queue, and joins the roster.
    /// It owns no partition until [`rebalance`](Self::rebalance).
    pub(crate) async fn join(
        config: &RabbitConfig,
        group: &str,
        types: &[String],
        generation: u64,
        tx: mpsc::UnboundedSender<Incoming>,
    ) -> Result<Member> {
        let connection = connect(config, &format!("cqrs-rabbitmq member of {group}")).await?;
        let control = connection
            .create_channel()
            .await
            .map_err(|e| backend("opening a channel", e))?;
        for t in types {
            topology::group(&control, config, group, t).await?;
        }
        let roster = config.roster(group);
        control
            .queue_declare(
                roster.as_str().into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| backend(format!("declaring queue `{roster}`"), e))?;
        let consumer = control
            .basic_consume(
                roster.as_str().into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| backend(format!("joining the roster `{roster}`"), e))?;
        Ok(Member {
            config: config.clone(),
            group: group.to_owned(),
            types: types.to_vec(),
            generation,
            connection,
            control,
            _roster: consumer,
            owned: BTreeMap::new(),
            next_epoch: 0,
            tx,
            probes: Probes {
                members: 0,
                refused_rounds: 0,
                next: std::time::Instant::now(),
            },
        })
    }

    /// Whether a message of this partition and holding is still to be handled.
    pub(crate) fn is_current(&self, partition: u32, epoch: u64) -> bool {
        self.owned.get(&partition).is_some_and(|o| o.epoch == epoch)
    }

    /// Compares what this member holds with its fair share (the partitions over the live
    /// members, rounded up): it releases what is over, or tries to take free partitions
    /// while under. Called between batches only, never with a delivery unacknowledged, so a
    /// partition changes hands with nothing of it in flight.
    pub(crate) async fn rebalance(&mut self) -> Result<()> {
        let roster = self.config.roster(&self.group);
        let members = self
            .control
            .queue_declare(
                roster.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| backend(format!("counting the members of `{}`", self.group), e))?
            .consumer_count()
            .max(1);
        let partitions = self.config.partitions;
        let fair = partitions.div_ceil(members) as usize;
        while self.owned.len() > fair {
            let Some(&last) = self.owned.keys().next_back() else {
                break;
            };
            self.release(last).await?;
        }
        let now = std::time::Instant::now();
        if members != self.probes.members {
            // A member came or went: partitions may be free now.
            self.probes = Probes {
                members,
                refused_rounds: 0,
                next: now,
            };
        }
        if self.owned.len() < fair && now >= self.probes.next {
            let start = fastrand::u32(0..partitions);
            let mut taken = false;
            for i in 0..partitions {
                let p = (start + i) % partitions;
                if self.owned.len() >= fair {
                    break;
                }
                if !self.owned.contains_key(&p) {
                    taken |= self.acquire(p).await?;
                }
            }
            if taken {
                self.probes.refused_rounds = 0;
            } else {
                // Each refused probe costs the broker a channel: while every partition is
                // held (more members than partitions, say), probe less and less often.
                self.probes.refused_rounds = self.probes.refused_rounds.saturating_add(1);
                let wait = self
                    .config
                    .rebalance_every
                    .saturating_mul(1 << (self.probes.refused_rounds - 1).min(6))
                    .min(MAX_PROBE_WAIT);
                self.probes.next = now + wait;
            }
        }
        Ok(())
    }

    /// Takes partition `p` if no other member holds it: declares its lock queue exclusively
    /// (the broker refuses while another connection holds it), then consumes its queues.
    async fn acquire(&mut self, p: u32) -> Result<bool> {
        let lock = self.config.lock(&self.group, p);
        let probe = self.channel().await?;
        let options = QueueDeclareOptions {
            exclusive: true,
            ..QueueDeclareOptions::default()
        };
        match probe
            .queue_declare(lock.as_str().into(), options, FieldTable::default())
            .await
        {
            Ok(_) => {}
            // The broker closed the probe channel with the refusal.
            Err(e) if locked(&e) => return Ok(false),
            Err(e) => return Err(backend(format!("taking the lock `{lock}`"), e)),
        }
        if let Err(e) = probe.close(200, "lock taken".into()).await {
            tracing::debug!(error = %e, "closing a lock probe channel");
        }
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        let mut owned = Owned {
            epoch,
            channels: Vec::new(),
            forwarders: Vec::new(),
        };
        for t in &self.types {
            let queue = self.config.queue(&self.group, t, p);
            let channel = self.channel().await?;
            channel
                .basic_qos(self.config.prefetch, BasicQosOptions::default())
                .await
                .map_err(|e| backend("setting the prefetch", e))?;
            let consumer = channel
                .basic_consume(
                    queue.as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| backend(format!("consuming `{queue}`"), e))?;
            let forwarder = tokio::spawn(forward(
                consumer,
                channel.clone(),
                queue.into(),
                (self.generation, p, epoch),
                self.tx.clone(),
            ));
            owned.channels.push(channel);
            owned.forwarders.push(forwarder);
        }
        tracing::debug!(group = %self.group, partition = p, "partition taken");
        self.owned.insert(p, owned);
        Ok(true)
    }

    /// Gives partition `p` up: closing its channels requeues whatever the broker had sent
    /// ahead (in order), then its lock is deleted for the next member to take.
    async fn release(&mut self, p: u32) -> Result<()> {
        let Some(owned) = self.owned.remove(&p) else {
            return Ok(());
        };
        for forwarder in &owned.forwarders {
            forwarder.abort();
        }
        for channel in owned.channels {
            channel
                .close(200, "partition released".into())
                .await
                .map_err(|e| backend("closing a partition's channel", e))?;
        }
        let lock = self.config.lock(&self.group, p);
        self.control
            .queue_delete(lock.as_str().into(), QueueDeleteOptions::default())
            .await
            .map_err(|e| backend(format!("releasing the lock `{lock}`"), e))?;
        tracing::debug!(group = %self.group, partition = p, "partition released");
        Ok(())
    }

    async fn channel(&self) -> Result<Channel> {
        self.connection
            .create_channel()
            .await
            .map_err(|e| backend("opening a channel", e))
    }

    /// Leaves the group: the connection closes (in the background), and with it the broker
    /// releases the locks and requeues what was not acknowledged.
    pub(crate) fn leave(self) {
        for owned in self.owned.values() {
            for forwarder in &owned.forwarders {
                forwarder.abort();
            }
        }
        let connection = self.connection;
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = connection.close(200, "member left".into()).await {
                    tracing::debug!(error = %e, "closing a member's connection");
                }
            });
        }
    }
}

/// Hands a consumer's deliveries to the subscription, in the order they arrive.
async fn forward(
    mut consumer: Consumer,
    channel: Channel,
    queue: Arc<str>,
    (generation, partition, epoch): (u64, u32, u64),
    tx: mpsc::UnboundedSender<Incoming>,
) {
    let send = |kind| {
        tx.send(Incoming {
            generation,
            partition,
            epoch,
            kind,
        })
        .is_ok()
    };
    while let Some(next) = consumer.next().await {
        let kind = match next {
            Ok(delivery) => Kind::Delivery {
                channel: channel.clone(),
                queue: queue.clone(),
                delivery: Box::new(delivery),
            },
            Err(e) => {
                send(Kind::Failed(e));
                return;
            }
        };
        if !send(kind) {
            return;
        }
    }
    send(Kind::Ended);
}
