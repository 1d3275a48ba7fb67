//! The views a processor keeps in memory between batches, so that a view that every batch
//! touches is loaded once. A cached view carries the revision it was committed at; when
//! another writer changed the stored view meanwhile, the commit fails with a view conflict
//! and the batch is folded again from the store. On a feed whose keys move between members
//! that would happen on every batch, so the cache is turned off there.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use super::fold::Cached;

/// A bounded map of view id to the view as last committed.
pub(super) struct ViewCache<V> {
    views: Mutex<HashMap<String, Cached<V>>>,
    capacity: usize,
    /// Set once the processor runs on a feed whose keys move: nothing is kept then.
    off: AtomicBool,
}

impl<V> ViewCache<V> {
    pub(super) fn new(capacity: usize) -> Self {
        ViewCache {
            views: Mutex::new(HashMap::new()),
            capacity,
            off: AtomicBool::new(false),
        }
    }

    /// The most views it keeps (0 keeps none).
    pub(super) fn capacity(&self) -> usize {
        self.capacity
    }

    /// Keeps none from now on, and forgets what it has.
    pub(super) fn turn_off(&self) {
        self.off.store(true, Ordering::Relaxed);
        self.clear();
    }

    /// Forgets every view (the store's views were deleted).
    pub(super) fn clear(&self) {
        self.views.lock().clear();
    }

    /// Takes the views of `ids` out, as far as it has them.
    pub(super) fn take<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a String>,
    ) -> HashMap<String, Cached<V>> {
        let mut views = self.views.lock();
        ids.into_iter()
            .filter_map(|id| views.remove(id).map(|view| (id.clone(), view)))
            .collect()
    }

    /// Forgets one view (a retried dead letter changed it outside a batch).
    pub(super) fn forget(&self, id: &str) {
        self.views.lock().remove(id);
    }

    /// Keeps the views a batch committed, evicting others beyond the capacity.
    pub(super) fn keep(&self, committed: Vec<(String, Cached<V>)>) {
        if self.capacity == 0 || self.off.load(Ordering::Relaxed) {
            return;
        }
        let mut views = self.views.lock();
        for (id, view) in committed {
            while views.len() >= self.capacity {
                let Some(victim) = views.keys().next().cloned() else {
                    break;
                };
                views.remove(&victim);
            }
            views.insert(id, view);
        }
    }
}
