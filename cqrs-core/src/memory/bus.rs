use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::bus::EventBus;
use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::processor::{Batch, EventSource};

type Part = (String, usize);

#[derive(Default)]
struct Group {
    committed: BTreeMap<Part, usize>,
    /// Members in join order; partitions are dealt out round-robin.
    members: Vec<u64>,
    generation: u64,
}

#[derive(Default)]
struct State {
    /// Topic (aggregate type) to its partitions.
    topics: HashMap<String, Vec<Vec<Envelope>>>,
    groups: HashMap<String, Group>,
    next_member: u64,
}

struct Shared {
    state: Mutex<State>,
    partitions: usize,
    changed: watch::Sender<u64>,
}

/// An event bus in memory, shaped like Kafka: a topic per aggregate type, partitions keyed by
/// routing key (so one stream, and one view, keeps its order), consumer groups whose members
/// share the partitions (the same partition numbers of every topic), and offsets committed on
/// acknowledgement.
#[derive(Clone)]
pub struct MemoryEventBus {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for MemoryEventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryEventBus")
            .field("partitions", &self.shared.partitions)
            .finish_non_exhaustive()
    }
}

impl Default for MemoryEventBus {
    fn default() -> Self {
        Self::new(4)
    }
}

impl MemoryEventBus {
    /// A bus whose topics have `partitions` partitions (at least 1).
    pub fn new(partitions: usize) -> Self {
        MemoryEventBus {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                partitions: partitions.max(1),
                changed: watch::Sender::new(0),
            }),
        }
    }

    /// How many events a topic holds.
    pub fn topic_len(&self, topic: &str) -> usize {
        self.shared
            .state
            .lock()
            .topics
            .get(topic)
            .map_or(0, |parts| parts.iter().map(Vec::len).sum())
    }
}

fn partition_of(routing_key: &str, partitions: usize) -> usize {
    crate::wire::partition_of(routing_key, u32::try_from(partitions).unwrap_or(u32::MAX)) as usize
}

impl Shared {
    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }
}

#[async_trait]
impl EventBus for MemoryEventBus {
    async fn publish(&self, events: &[Envelope]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        {
            let mut state = self.shared.state.lock();
            for event in events {
                let parts = state
                    .topics
                    .entry(event.aggregate_type.clone())
                    .or_insert_with(|| vec![Vec::new(); self.shared.partitions]);
                parts[partition_of(event.routing_key(), self.shared.partitions)]
                    .push(event.clone());
            }
        }
        self.shared.bump();
        Ok(())
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
        let member = {
            let mut state = self.shared.state.lock();
            let member = state.next_member;
            state.next_member += 1;
            let g = state.groups.entry(group.to_owned()).or_default();
            g.members.push(member);
            g.generation += 1;
            member
        };
        self.shared.bump();
        let mut topics: Vec<String> = aggregate_types.iter().map(|t| (*t).to_owned()).collect();
        topics.sort();
        topics.dedup();
        Ok(Box::new(MemorySubscription {
            shared: self.shared.clone(),
            group: group.to_owned(),
            member,
            topics,
            generation: 0,
            fetched: BTreeMap::new(),
            delivered: BTreeMap::new(),
            idle,
            changed: self.shared.changed.subscribe(),
        }))
    }
}

struct MemorySubscription {
    shared: Arc<Shared>,
    group: String,
    member: u64,
    topics: Vec<String>,
    generation: u64,
    /// Next offset to fetch per assigned partition.
    fetched: BTreeMap<Part, usize>,
    /// Offsets to commit on the next ack.
    delivered: BTreeMap<Part, usize>,
    idle: Duration,
    changed: watch::Receiver<u64>,
}

impl MemorySubscription {
    fn poll(&mut self, max: usize) -> Vec<Envelope> {
        let mut state = self.shared.state.lock();
        let state = &mut *state;
        let Some(group) = state.groups.get(&self.group) else {
            return Vec::new();
        };
        if group.generation != self.generation {
            // Rebalance: take our share of the partitions, from the committed offsets.
            self.generation = group.generation;
            let index = group
                .members
                .iter()
                .position(|m| *m == self.member)
                .unwrap_or(0);
            let count = group.members.len().max(1);
            self.fetched.clear();
            self.delivered.clear();
            // By partition number, the same in every topic: one member holds every event of
            // a routing key, whichever topic carries it (the topics are co-partitioned).
            let mine = (0..self.shared.partitions).filter(|p| p % count == index);
            for p in mine {
                for topic in &self.topics {
                    let part = (topic.clone(), p);
                    let offset = group.committed.get(&part).copied().unwrap_or(0);
                    self.fetched.insert(part, offset);
                }
            }
        }
        let mut out = Vec::new();
        for (part, next) in self.fetched.iter_mut() {
            let Some(log) = state
                .topics
                .get(&part.0)
                .and_then(|parts| parts.get(part.1))
            else {
                continue;
            };
            let take = (log.len().saturating_sub(*next)).min(max - out.len());
            if take == 0 {
                continue;
            }
            out.extend_from_slice(&log[*next..*next + take]);
            *next += take;
            self.delivered.insert(part.clone(), *next);
            if out.len() >= max {
                break;
            }
        }
        out
    }
}

#[async_trait]
impl EventSource for MemorySubscription {
    async fn next_batch(&mut self, max: usize) -> Result<Batch> {
        self.changed.mark_unchanged();
        let mut events = self.poll(max.max(1));
        if events.is_empty() {
            let _ = tokio::time::timeout(self.idle, self.changed.changed()).await;
            events = self.poll(max.max(1));
        }
        Ok(Batch::from_bus(events))
    }

    async fn ack(&mut self, _batch: &Batch) -> Result<()> {
        let mut state = self.shared.state.lock();
        if let Some(group) = state.groups.get_mut(&self.group) {
            for (part, offset) in std::mem::take(&mut self.delivered) {
                let committed = group.committed.entry(part).or_insert(0);
                *committed = (*committed).max(offset);
            }
        }
        Ok(())
    }
}

impl Drop for MemorySubscription {
    fn drop(&mut self) {
        let mut state = self.shared.state.lock();
        if let Some(group) = state.groups.get_mut(&self.group) {
            group.members.retain(|m| *m != self.member);
            group.generation += 1;
        }
        drop(state);
        self.shared.bump();
    }
}
