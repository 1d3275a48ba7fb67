use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::RwLock;
use serde_json::Value;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::segment::{Claim, Claimed, Segment, SegmentClaims};
use crate::view::{
    DeadLetter, DeadLetterCursor, DeadLetterStore, Filter, Order, Query, StoredDoc, UnitOfWork,
    ViewQuery, ViewStore,
};

#[derive(Default)]
struct Space {
    docs: BTreeMap<String, StoredDoc>,
    checkpoint: Option<u64>,
    dead: Vec<DeadLetter>,
    /// Segment claims by segment index, with each segment's checkpoint.
    segments: BTreeMap<u32, SegmentRow>,
    /// Live members of the projection's group, until when.
    members: HashMap<Uuid, Instant>,
}

/// A segment's claim and checkpoint.
struct SegmentRow {
    count: u32,
    token: Option<Uuid>,
    until: Instant,
    checkpoint: Option<u64>,
}

/// Views, checkpoints and dead letters in memory. A unit of work commits under one lock: the
/// views and the checkpoint change together or not at all.
#[derive(Default)]
pub struct MemoryViewStore {
    spaces: RwLock<HashMap<String, Space>>,
}

impl std::fmt::Debug for MemoryViewStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryViewStore")
            .field("projections", &self.spaces.read().len())
            .finish()
    }
}

impl MemoryViewStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every stored document of a projection (tombstones included), in id order.
    pub fn documents(&self, projection: &str) -> Vec<StoredDoc> {
        self.spaces
            .read()
            .get(projection)
            .map(|s| s.docs.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Writes a raw document as it is (revision included), e.g. one an older version of a
    /// view wrote.
    pub fn put_document(&self, projection: &str, doc: StoredDoc) {
        self.spaces
            .write()
            .entry(projection.to_owned())
            .or_default()
            .docs
            .insert(doc.id.clone(), doc);
    }
}

#[async_trait]
impl ViewStore for MemoryViewStore {
    async fn load(&self, projection: &str, ids: &[String]) -> Result<Vec<StoredDoc>> {
        let spaces = self.spaces.read();
        let Some(space) = spaces.get(projection) else {
            return Ok(Vec::new());
        };
        Ok(ids
            .iter()
            .filter_map(|id| space.docs.get(id).cloned())
            .collect())
    }

    async fn commit(&self, work: UnitOfWork) -> Result<()> {
        let mut spaces = self.spaces.write();
        let space = spaces.entry(work.projection.clone()).or_default();
        if let Some(claim) = &work.claim {
            let held = space.segments.get(&claim.segment.index);
            if held.and_then(|row| row.token) != Some(claim.token) {
                return Err(Error::ClaimLost {
                    projection: work.projection,
                    segment: claim.segment,
                });
            }
        }
        for doc in &work.writes {
            let actual = space.docs.get(&doc.id).map_or(0, |d| d.revision);
            if actual != doc.revision {
                return Err(Error::ViewConflict {
                    projection: work.projection,
                    id: doc.id.clone(),
                    expected: doc.revision,
                    actual,
                });
            }
        }
        // A dead letter resolved meanwhile (a concurrent retry) refuses the unit of work.
        for id in &work.resolved {
            if !space
                .dead
                .iter()
                .any(|d| d.envelope.metadata.event_id == *id)
            {
                return Err(Error::ViewConflict {
                    projection: work.projection,
                    id: format!("dead letter {id}"),
                    expected: 1,
                    actual: 0,
                });
            }
        }
        for mut doc in work.writes {
            doc.revision += 1;
            space.docs.insert(doc.id.clone(), doc);
        }
        space
            .dead
            .retain(|d| !work.resolved.contains(&d.envelope.metadata.event_id));
        for mut letter in work.dead_letters {
            let id = letter.envelope.metadata.event_id;
            let before = space
                .dead
                .iter()
                .position(|d| d.envelope.metadata.event_id == id);
            if let Some(i) = before {
                // A letter written again without a view keeps the one it had.
                let old = space.dead.remove(i);
                letter.view = letter.view.or(old.view);
            }
            space.dead.push(letter);
        }
        let kept = match &work.claim {
            Some(claim) => space
                .segments
                .get_mut(&claim.segment.index)
                .map(|row| &mut row.checkpoint),
            None => Some(&mut space.checkpoint),
        };
        if let (Some(checkpoint), Some(kept)) = (work.checkpoint, kept) {
            *kept = Some(kept.map_or(checkpoint, |c| c.max(checkpoint)));
        }
        Ok(())
    }

    fn claims(&self) -> Option<&dyn SegmentClaims> {
        Some(self)
    }

    async fn checkpoint(&self, projection: &str) -> Result<Option<u64>> {
        Ok(self
            .spaces
            .read()
            .get(projection)
            .and_then(|s| s.checkpoint))
    }

    async fn reset(&self, projection: &str) -> Result<()> {
        self.spaces.write().remove(projection);
        Ok(())
    }
}

#[async_trait]
impl SegmentClaims for MemoryViewStore {
    async fn heartbeat(&self, projection: &str, owner: Uuid, lease: Duration) -> Result<u32> {
        let now = Instant::now();
        let mut spaces = self.spaces.write();
        let space = spaces.entry(projection.to_owned()).or_default();
        space.members.insert(owner, now + lease);
        space.members.retain(|_, until| *until > now);
        Ok(u32::try_from(space.members.len()).unwrap_or(u32::MAX))
    }

    async fn claim(
        &self,
        projection: &str,
        segment: Segment,
        owner: Uuid,
        lease: Duration,
    ) -> Result<Option<Claimed>> {
        let now = Instant::now();
        let mut spaces = self.spaces.write();
        let space = spaces.entry(projection.to_owned()).or_default();
        if let Some(other) = space.segments.values().find(|r| r.count != segment.count) {
            return Err(crate::segment::count_changed(
                projection,
                other.count,
                segment.count,
            ));
        }
        let row = space.segments.entry(segment.index).or_insert(SegmentRow {
            count: segment.count,
            token: None,
            until: now,
            checkpoint: None,
        });
        if row.token.is_some() && row.until > now {
            return Ok(None);
        }
        let token = Uuid::new_v4();
        row.token = Some(token);
        row.until = now + lease;
        Ok(Some(Claimed {
            claim: Claim {
                segment,
                owner,
                token,
            },
            checkpoint: row.checkpoint,
        }))
    }

    async fn renew(&self, projection: &str, claim: &Claim, lease: Duration) -> Result<bool> {
        let mut spaces = self.spaces.write();
        let row = spaces
            .get_mut(projection)
            .and_then(|space| space.segments.get_mut(&claim.segment.index))
            .filter(|row| row.token == Some(claim.token));
        Ok(match row {
            Some(row) => {
                row.until = Instant::now() + lease;
                true
            }
            None => false,
        })
    }

    async fn release(&self, projection: &str, claim: &Claim) -> Result<()> {
        let mut spaces = self.spaces.write();
        if let Some(row) = spaces
            .get_mut(projection)
            .and_then(|space| space.segments.get_mut(&claim.segment.index))
            .filter(|row| row.token == Some(claim.token))
        {
            row.token = None;
        }
        Ok(())
    }
}

/// The value at a dotted path.
fn field<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |v, key| v.get(key))
}

/// Orders JSON scalars: numbers by value, strings lexically, then by type.
fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        (Value::Null, Value::Null) => Some(Ordering::Equal),
        _ => None,
    }
}

fn rank(v: Option<&Value>) -> u8 {
    match v {
        None | Some(Value::Null) => 0,
        Some(Value::Number(_)) => 1,
        Some(Value::String(_)) => 2,
        Some(_) => 3,
    }
}

fn matches(view: &Value, filter: &Filter) -> bool {
    let test = |path: &str, wanted: &Value, ok: fn(Ordering) -> bool| {
        field(view, path)
            .and_then(|v| compare(v, wanted))
            .is_some_and(ok)
    };
    match filter {
        Filter::All => true,
        Filter::Eq(path, wanted) => field(view, path)
            .is_some_and(|v| compare(v, wanted).map_or(v == wanted, |o| o == Ordering::Equal)),
        Filter::Gt(path, wanted) => test(path, wanted, |o| o == Ordering::Greater),
        Filter::Gte(path, wanted) => test(path, wanted, |o| o != Ordering::Less),
        Filter::Lt(path, wanted) => test(path, wanted, |o| o == Ordering::Less),
        Filter::Lte(path, wanted) => test(path, wanted, |o| o != Ordering::Greater),
        Filter::And(all) => all.iter().all(|f| matches(view, f)),
    }
}

fn check_paths(filter: &Filter) -> Result<()> {
    let ok = |p: &str| {
        if p.is_empty() || p.split('.').any(str::is_empty) {
            Err(Error::Config(format!("invalid field path `{p}`")))
        } else {
            Ok(())
        }
    };
    match filter {
        Filter::All => Ok(()),
        Filter::Eq(p, _)
        | Filter::Gt(p, _)
        | Filter::Gte(p, _)
        | Filter::Lt(p, _)
        | Filter::Lte(p, _) => ok(p),
        Filter::And(all) => all.iter().try_for_each(check_paths),
    }
}

#[async_trait]
impl ViewQuery for MemoryViewStore {
    async fn get(&self, projection: &str, id: &str) -> Result<Option<Value>> {
        Ok(self
            .spaces
            .read()
            .get(projection)
            .and_then(|s| s.docs.get(id))
            .and_then(|d| d.view.clone()))
    }

    async fn find(&self, projection: &str, query: &Query) -> Result<Vec<(String, Value)>> {
        check_paths(&query.filter)?;
        let spaces = self.spaces.read();
        let Some(space) = spaces.get(projection) else {
            return Ok(Vec::new());
        };
        let mut found: Vec<(&String, &Value)> = space
            .docs
            .values()
            .filter_map(|d| d.view.as_ref().map(|v| (&d.id, v)))
            .filter(|(_, v)| matches(v, &query.filter))
            .collect();
        if !query.sort.is_empty() {
            found.sort_by(|(ida, a), (idb, b)| {
                for (path, order) in &query.sort {
                    let (x, y) = (field(a, path), field(b, path));
                    let o = match (x, y) {
                        (Some(x), Some(y)) => {
                            compare(x, y).unwrap_or_else(|| rank(Some(x)).cmp(&rank(Some(y))))
                        }
                        _ => rank(x).cmp(&rank(y)),
                    };
                    let o = if *order == Order::Desc {
                        o.reverse()
                    } else {
                        o
                    };
                    if o != Ordering::Equal {
                        return o;
                    }
                }
                ida.cmp(idb)
            });
        }
        let skip = usize::try_from(query.skip).unwrap_or(usize::MAX);
        let limit = query
            .limit
            .map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
        Ok(found
            .into_iter()
            .skip(skip)
            .take(limit)
            .map(|(id, v)| (id.clone(), v.clone()))
            .collect())
    }

    async fn count(&self, projection: &str, filter: &Filter) -> Result<u64> {
        check_paths(filter)?;
        let spaces = self.spaces.read();
        Ok(spaces.get(projection).map_or(0, |s| {
            s.docs
                .values()
                .filter(|d| d.view.as_ref().is_some_and(|v| matches(v, filter)))
                .count() as u64
        }))
    }
}

#[async_trait]
impl DeadLetterStore for MemoryViewStore {
    async fn dead_letters_page(
        &self,
        projection: &str,
        after: Option<DeadLetterCursor>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>> {
        let spaces = self.spaces.read();
        let Some(space) = spaces.get(projection) else {
            return Ok(Vec::new());
        };
        let mut page: Vec<DeadLetter> = space
            .dead
            .iter()
            .filter(|d| after.is_none_or(|a| d.cursor() > a))
            .cloned()
            .collect();
        page.sort_by_key(DeadLetter::cursor);
        page.truncate(limit);
        Ok(page)
    }

    async fn remove_dead_letter(&self, projection: &str, event_id: Uuid) -> Result<bool> {
        let mut spaces = self.spaces.write();
        let Some(space) = spaces.get_mut(projection) else {
            return Ok(false);
        };
        let before = space.dead.len();
        space
            .dead
            .retain(|d| d.envelope.metadata.event_id != event_id);
        Ok(space.dead.len() != before)
    }
}
