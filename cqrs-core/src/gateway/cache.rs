//! The gateway's cache of aggregate states between commands.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::hash::BuildHasher;

use foldhash::fast::RandomState;
use parking_lot::Mutex;

use crate::aggregate::Aggregate;

type CacheEntry = (u64, Box<dyn Any + Send + Sync>);

/// One shard of the state cache: states by aggregate type, then by stream id, so a lookup by
/// `&str` allocates nothing.
#[derive(Default)]
struct Shard {
    by_type: HashMap<TypeId, HashMap<String, CacheEntry, RandomState>, RandomState>,
    len: usize,
}

/// A shard's lock on cache lines of its own, so threads working on different shards do not
/// contend for one line.
#[repr(align(128))]
struct Padded(Mutex<Shard>);

/// A bounded, sharded cache of aggregate states by stream. A stale entry is harmless: the
/// append's expected version catches it and the gateway reloads.
pub(super) struct StateCache {
    shards: Vec<Padded>,
    per_shard: usize,
    hasher: RandomState,
}

impl StateCache {
    pub(super) fn new(capacity: usize) -> Self {
        let shards = 16;
        StateCache {
            shards: (0..shards)
                .map(|_| Padded(Mutex::new(Shard::default())))
                .collect(),
            per_shard: capacity.div_ceil(shards).max(1),
            hasher: Default::default(),
        }
    }

    fn shard<A: Aggregate>(&self, id: &str) -> &Mutex<Shard> {
        let hash = self.hasher.hash_one((TypeId::of::<A>(), id));
        &self.shards[(hash as usize) % self.shards.len()].0
    }

    pub(super) fn get<A: Aggregate>(&self, id: &str) -> Option<(A, u64)> {
        let shard = self.shard::<A>(id).lock();
        let (version, state) = shard.by_type.get(&TypeId::of::<A>())?.get(id)?;
        state.downcast_ref::<A>().map(|a| (a.clone(), *version))
    }

    pub(super) fn put<A: Aggregate>(&self, id: &str, state: A, version: u64) {
        let mut shard = self.shard::<A>(id).lock();
        let Shard { by_type, len } = &mut *shard;
        let type_id = TypeId::of::<A>();
        if let Some(entry) = by_type.get_mut(&type_id).and_then(|s| s.get_mut(id)) {
            entry.0 = version;
            match entry.1.downcast_mut::<A>() {
                Some(slot) => *slot = state,
                None => entry.1 = Box::new(state),
            }
            return;
        }
        if *len >= self.per_shard {
            // Evict an arbitrary entry: the cache only saves reads, never decides.
            if let Some(states) = by_type.values_mut().find(|s| !s.is_empty()) {
                if let Some(victim) = states.keys().next().cloned() {
                    states.remove(&victim);
                    *len -= 1;
                }
            }
        }
        by_type
            .entry(type_id)
            .or_default()
            .insert(id.to_owned(), (version, Box::new(state)));
        *len += 1;
    }

    pub(super) fn evict<A: Aggregate>(&self, id: &str) {
        let mut shard = self.shard::<A>(id).lock();
        let Shard { by_type, len } = &mut *shard;
        if let Some(states) = by_type.get_mut(&TypeId::of::<A>()) {
            if states.remove(id).is_some() {
                *len -= 1;
            }
        }
    }
}
