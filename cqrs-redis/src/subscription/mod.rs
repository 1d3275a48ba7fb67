//! A consumer-group member as a tracking processor's source: it holds partitions by their
//! leases (renewed in the background while it works), reads their streams with
//! `XREADGROUP`, takes over what an earlier holder left unacknowledged (`XCLAIM`), and
//! acknowledges behind the lease's fence.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cqrs_core::processor::{Batch, EventSource};
use cqrs_core::view::DeadLetter;
use cqrs_core::Result;
use redis::aio::MultiplexedConnection;
use tokio::task::JoinHandle;

use crate::codec::{self, Raw};
use crate::lease::{leave, renew, token, Holdings};
use crate::{backend, scripts, RedisBus, ISOLATED_ATTEMPTS};

mod read;
mod take_over;

/// An entry read and not yet handed out, or handed out and not yet acknowledged.
struct Item {
    partition: u32,
    epoch: u64,
    stream: Arc<str>,
    raw: Raw,
    /// Times Redis has delivered it to a consumer of the group, this delivery included.
    deliveries: u64,
    /// Whether it is the first entry a take-over claimed on its stream: where a crash loop
    /// restarts. Only such an entry is judged a dead letter, since a take-over counts a
    /// delivery on everything pending, also what the dead holder never handed out.
    first: bool,
}

pub(crate) struct RedisSubscription {
    bus: RedisBus,
    group: String,
    types: Vec<String>,
    idle: Duration,
    /// This member's name in the group, and the first part of its lease tokens.
    member: String,
    reader: Option<MultiplexedConnection>,
    holdings: Holdings,
    next_epoch: u64,
    renewer: JoinHandle<()>,
    buffer: VecDeque<Item>,
    delivered: Vec<Item>,
    next_rebalance: Instant,
    next_trim: Instant,
}

impl RedisSubscription {
    /// Creates the group on its streams (from their first entry) and joins it.
    pub(crate) async fn open(
        bus: RedisBus,
        group: &str,
        aggregate_types: &[&str],
        idle: Duration,
    ) -> Result<Self> {
        let config = bus.config().clone();
        let types: Vec<String> = aggregate_types.iter().map(|t| (*t).to_owned()).collect();
        let streams: Vec<String> = types
            .iter()
            .flat_map(|t| (0..config.partitions).map(|p| config.stream(t, p)))
            .collect();
        let mut reader = bus.connect(idle).await?;
        RedisBus::create_group(&mut reader, group, &streams).await?;
        let member = format!("m-{}", uuid::Uuid::new_v4().simple());
        let holdings: Holdings = Arc::default();
        let renewer = tokio::spawn(renew(
            bus.clone(),
            group.to_owned(),
            member.clone(),
            holdings.clone(),
        ));
        Ok(RedisSubscription {
            bus,
            group: group.to_owned(),
            types,
            idle,
            member,
            reader: Some(reader),
            holdings,
            next_epoch: 0,
            renewer,
            buffer: VecDeque::new(),
            delivered: Vec::new(),
            next_rebalance: Instant::now(),
            next_trim: Instant::now() + config.trim_every,
        })
    }

    /// Forgets the connection and everything read on it: what was not acknowledged stays
    /// pending and is taken over again when the partitions are.
    fn reset(&mut self) {
        self.reader = None;
        self.buffer.clear();
        self.delivered.clear();
        self.holdings.lock().clear();
        self.next_rebalance = Instant::now();
    }

    async fn reader(&mut self) -> Result<MultiplexedConnection> {
        if let Some(reader) = &self.reader {
            return Ok(reader.clone());
        }
        let mut reader = self.bus.connect(self.idle).await?;
        // The group again, where the server lost it (a restart without persistence, a
        // fail-over to a replica that missed it, streams deleted).
        let config = self.bus.config();
        let streams: Vec<String> = self
            .types
            .iter()
            .flat_map(|t| (0..config.partitions).map(|p| config.stream(t, p)))
            .collect();
        RedisBus::create_group(&mut reader, &self.group, &streams).await?;
        tracing::info!(group = %self.group, "reconnected to Redis");
        self.reader = Some(reader.clone());
        Ok(reader)
    }

    fn current(&self, partition: u32, epoch: u64) -> bool {
        self.holdings.lock().get(&partition) == Some(&epoch)
    }

    /// Compares what this member holds with its fair share (the partitions over the live
    /// members, rounded up): gives up what is over, takes free partitions while under. Only
    /// between batches, with nothing handed out unacknowledged.
    async fn rebalance(&mut self, connection: &mut MultiplexedConnection) -> Result<()> {
        let bus = self.bus.clone();
        let config = bus.config();
        let lease_ms = config.lease.as_millis() as u64;
        let members: u32 = scripts::ROSTER
            .key(config.roster(&self.group))
            .arg(&self.member)
            .arg(lease_ms)
            .invoke_async(connection)
            .await
            .map_err(|e| backend("counting the group's members", e))?;
        let fair = config.partitions.div_ceil(members.max(1)) as usize;
        loop {
            let last = {
                let held = self.holdings.lock();
                if held.len() <= fair {
                    break;
                }
                held.iter().next_back().map(|(p, e)| (*p, *e))
            };
            let Some((p, epoch)) = last else { break };
            self.holdings.lock().remove(&p);
            self.buffer.retain(|item| item.partition != p);
            scripts::RELEASE
                .key(config.lease_key(&self.group, p))
                .arg(token(&self.member, epoch))
                .invoke_async::<i64>(connection)
                .await
                .map_err(|e| backend("releasing a partition", e))?;
            tracing::debug!(group = %self.group, partition = p, "partition released");
        }
        let start = fastrand::u32(0..config.partitions);
        for i in 0..config.partitions {
            let p = (start + i) % config.partitions;
            if self.holdings.lock().len() >= fair {
                break;
            }
            if self.holdings.lock().contains_key(&p) {
                continue;
            }
            let epoch = self.next_epoch;
            self.next_epoch += 1;
            let taken: i64 = scripts::ACQUIRE
                .key(config.lease_key(&self.group, p))
                .arg(token(&self.member, epoch))
                .arg(format!("{}#", self.member))
                .arg(lease_ms)
                .invoke_async(connection)
                .await
                .map_err(|e| backend("taking a partition", e))?;
            if taken == 1 {
                self.holdings.lock().insert(p, epoch);
                self.take_over(connection, p, epoch).await?;
                tracing::debug!(group = %self.group, partition = p, "partition taken");
            }
        }
        Ok(())
    }

    async fn next_batch_on(&mut self, max: usize) -> Result<Batch> {
        let bus = self.bus.clone();
        let config = bus.config();
        let mut connection = self.reader().await?;
        let now = Instant::now();
        if self.delivered.is_empty() && now >= self.next_rebalance {
            self.rebalance(&mut connection).await?;
            self.next_rebalance = now + jittered(config.rebalance_every);
        }
        if self.delivered.is_empty()
            && config.retention == crate::Retention::Acknowledged
            && now >= self.next_trim
        {
            self.trim(&mut connection).await?;
            self.next_trim = now + config.trim_every;
        }
        // Entries of a holding that ended (lost or given up) are the next holder's.
        {
            let holdings = self.holdings.lock();
            self.buffer
                .retain(|item| holdings.get(&item.partition) == Some(&item.epoch));
        }
        if self.buffer.is_empty() {
            let wait = self
                .idle
                .min(
                    self.next_rebalance
                        .saturating_duration_since(Instant::now()),
                )
                .max(Duration::from_millis(1));
            self.read(&mut connection, max, wait).await?;
        }
        let limit = u64::from(config.delivery_limit);
        let last_chance = limit + u64::from(ISOLATED_ATTEMPTS);
        let mut batch = Batch::from_bus(Vec::new());
        while batch.events.len() + batch.rejected.len() < max.max(1) {
            let Some(front) = self.buffer.front() else {
                break;
            };
            let suspect = front.deliveries > limit;
            if suspect && !(batch.events.is_empty() && batch.rejected.is_empty()) {
                // Suspected of crashing its batches: it goes alone, in the next batch.
                break;
            }
            let Some(item) = self.buffer.pop_front() else {
                break;
            };
            if item.first && item.deliveries > last_chance {
                let reason = format!(
                    "delivered {} times without an acknowledgement, the last {ISOLATED_ATTEMPTS} \
                     of them alone in their batch",
                    item.deliveries
                );
                batch.rejected.push(item.raw.rejected(&item.stream, reason));
            } else {
                match item.raw.decode() {
                    Ok(envelope) => batch.events.push(envelope),
                    Err(reason) => {
                        tracing::warn!(stream = %item.stream, %reason, "an entry that is not an envelope");
                        batch.rejected.push(item.raw.rejected(&item.stream, reason));
                    }
                }
            }
            self.delivered.push(item);
            if suspect {
                break;
            }
        }
        Ok(batch)
    }

    /// Trims the held streams to what every group still needs.
    async fn trim(&mut self, connection: &mut MultiplexedConnection) -> Result<()> {
        let bus = self.bus.clone();
        let config = bus.config();
        let held: Vec<u32> = self.holdings.lock().keys().copied().collect();
        for p in held {
            for t in &self.types {
                let removed = crate::trim_stream(connection, &config.stream(t, p)).await?;
                if removed > 0 {
                    tracing::debug!(group = %self.group, partition = p, removed, "stream trimmed");
                }
            }
        }
        Ok(())
    }

    async fn ack_on(&mut self) -> Result<()> {
        let delivered = std::mem::take(&mut self.delivered);
        if delivered.is_empty() {
            return Ok(());
        }
        let mut connection = self.reader().await?;
        let bus = self.bus.clone();
        let config = bus.config();
        let mut by_stream: BTreeMap<(u32, u64, Arc<str>), Vec<String>> = BTreeMap::new();
        for item in delivered {
            by_stream
                .entry((item.partition, item.epoch, item.stream))
                .or_default()
                .push(item.raw.id);
        }
        for ((p, epoch, stream), ids) in by_stream {
            if !self.current(p, epoch) {
                tracing::warn!(group = %self.group, partition = p, "not acknowledged: the partition's lease moved; the next holder takes the entries over");
                continue;
            }
            for chunk in ids.chunks(1_000) {
                let acked: i64 = scripts::ACK
                    .key(config.lease_key(&self.group, p))
                    .key(&*stream)
                    .arg(token(&self.member, epoch))
                    .arg(&self.group)
                    .arg(chunk)
                    .invoke_async(&mut connection)
                    .await
                    .map_err(|e| backend("acknowledging", e))?;
                if acked < 0 {
                    tracing::warn!(group = %self.group, partition = p, "not acknowledged: the partition's lease moved (fenced off); the next holder takes the entries over");
                    let mut held = self.holdings.lock();
                    if held.get(&p) == Some(&epoch) {
                        held.remove(&p);
                    }
                    break;
                }
            }
        }
        Ok(())
    }
}

fn jittered(every: Duration) -> Duration {
    every.mul_f64(0.8 + fastrand::f64() * 0.4)
}

#[async_trait]
impl EventSource for RedisSubscription {
    async fn next_batch(&mut self, max: usize) -> Result<Batch> {
        let outcome = self.next_batch_on(max).await;
        if outcome.is_err() {
            self.reset();
        }
        outcome
    }

    /// Acknowledges everything handed out since the last ack, per stream, each behind its
    /// partition's fence. Entries of a holding that ended are left to the next holder (the
    /// projection skips what it applied).
    async fn ack(&mut self, _batch: &Batch) -> Result<()> {
        let outcome = self.ack_on().await;
        if outcome.is_err() {
            self.reset();
        }
        outcome
    }

    /// Appends dead letters to the group's dead-letter stream, with their reasons.
    async fn dead_letter(&mut self, letters: &[DeadLetter]) -> Result<()> {
        let stream = self.bus.config().dead_letters(&self.group);
        let entries: Vec<_> = letters
            .iter()
            .map(|letter| {
                (
                    stream.clone(),
                    codec::fields(
                        &letter.envelope,
                        &[(
                            cqrs_core::wire::DLQ_REASON,
                            letter.reason.as_bytes().to_vec(),
                        )],
                    ),
                )
            })
            .collect();
        self.bus.append(&entries).await
    }
}

impl Drop for RedisSubscription {
    /// Leaves the group: the leases are given up and the roster entry removed (in the
    /// background), so the others take the partitions at their next rebalance; what was not
    /// acknowledged stays pending for them.
    fn drop(&mut self) {
        self.renewer.abort();
        let held: Vec<(u32, u64)> = self.holdings.lock().iter().map(|(p, e)| (*p, *e)).collect();
        let (bus, group, member) = (self.bus.clone(), self.group.clone(), self.member.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = leave(&bus, &group, &member, &held).await {
                    tracing::debug!(error = %e, "leaving a group (the leases expire instead)");
                }
            });
        }
    }
}
