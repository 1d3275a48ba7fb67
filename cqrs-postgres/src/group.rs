//! Group commit: concurrent appends to the event store share one transaction.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cqrs_core::envelope::{Envelope, ExpectedVersion, NewEvent};
use cqrs_core::{Error, Result};
use parking_lot::Mutex;
use sqlx::Row;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use crate::append::{committed, version_check, Columns};
use crate::store::PgEventStore;

/// Most events one transaction can hold: positions give each transaction 16 bits of ordinals.
const MAX_EVENTS: usize = 1 << 16;

/// How the event store gathers concurrent appends into shared transactions (group commit).
///
/// While the store's transactions are busy, appends that arrive queue up; the next free
/// transaction takes the queued appends (up to [`max_events`](Self::max_events) events) and
/// writes them with one statement and one commit. Each append keeps its own version check: a
/// conflict fails that append alone, the others of the group are written all the same, and
/// each caller learns only its own outcome. An append that finds a transaction free is written
/// at once, so a lone writer waits for nothing.
///
/// On by default with [`GroupCommit::default`]; see [`PgEventStore::group_commit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupCommit {
    transactions: usize,
    max_events: usize,
}

impl Default for GroupCommit {
    /// Two transactions at once (one gathers appends while the other is written), up to
    /// 4 096 events each.
    fn default() -> Self {
        GroupCommit {
            transactions: 2,
            max_events: 4_096,
        }
    }
}

impl GroupCommit {
    /// Up to `transactions` group transactions under way at once (at least one): more overlap
    /// round trips, fewer gather more appends per commit.
    pub fn new(transactions: usize) -> Self {
        GroupCommit {
            transactions: transactions.max(1),
            ..GroupCommit::default()
        }
    }

    /// At most `max` events in one transaction (1 to 65 536). A single append with more is
    /// still written, in a transaction of its own.
    #[must_use]
    pub fn max_events(mut self, max: usize) -> Self {
        self.max_events = max.clamp(1, MAX_EVENTS);
        self
    }

    /// How many group transactions may be under way at once.
    pub fn transactions(&self) -> usize {
        self.transactions
    }
}

/// An append waiting for a transaction.
struct Pending {
    aggregate_type: String,
    stream_id: String,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
    reply: oneshot::Sender<Result<Vec<Envelope>>>,
}

/// What a store's group commit has done so far (see [`PgEventStore::group_commit_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupCommitStats {
    /// Transactions that wrote two or more appends together.
    pub groups: u64,
    /// Appends that went into those transactions.
    pub grouped_appends: u64,
    /// Groups the server refused as a whole (an append written in part by a concurrent
    /// one), whose appends were then written one by one.
    pub fallbacks: u64,
}

#[derive(Default)]
struct Stats {
    groups: AtomicU64,
    grouped_appends: AtomicU64,
    fallbacks: AtomicU64,
}

/// The queue of appends and the permits of the transactions that write them.
pub(crate) struct Committer {
    queue: Mutex<VecDeque<Pending>>,
    permits: Arc<Semaphore>,
    max_events: usize,
    stats: Stats,
}

impl Committer {
    pub(crate) fn new(config: GroupCommit) -> Arc<Self> {
        Arc::new(Committer {
            queue: Mutex::new(VecDeque::new()),
            permits: Arc::new(Semaphore::new(config.transactions)),
            max_events: config.max_events,
            stats: Stats::default(),
        })
    }

    pub(crate) fn stats(&self) -> GroupCommitStats {
        GroupCommitStats {
            groups: self.stats.groups.load(Ordering::Relaxed),
            grouped_appends: self.stats.grouped_appends.load(Ordering::Relaxed),
            fallbacks: self.stats.fallbacks.load(Ordering::Relaxed),
        }
    }

    /// Queues an append and waits for the transaction that writes it. The write runs on a task
    /// of its own, so a caller that stops waiting cannot cut short the others' transaction.
    pub(crate) async fn append(
        self: &Arc<Self>,
        store: &PgEventStore,
        aggregate_type: &str,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Envelope>> {
        let (reply, answer) = oneshot::channel();
        self.queue.lock().push_back(Pending {
            aggregate_type: aggregate_type.to_owned(),
            stream_id: stream_id.to_owned(),
            expected,
            events,
            reply,
        });
        self.kick(store);
        answer.await.unwrap_or_else(|_| {
            Err(Error::Backend {
                backend: "postgres",
                message: format!(
                    "the transaction writing the append to `{stream_id}` stopped without an \
                     answer (the runtime is shutting down?): its outcome is unknown"
                ),
                source: None,
            })
        })
    }

    /// Starts a writer if appends are queued and a transaction is free. Every busy writer
    /// takes the queue again when it finishes, and one that finds it empty kicks once more
    /// after giving up its permit, so no append is left waiting.
    fn kick(self: &Arc<Self>, store: &PgEventStore) {
        if self.queue.lock().is_empty() {
            return;
        }
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            tokio::spawn(self.clone().write(store.clone(), permit));
        }
    }

    async fn write(self: Arc<Self>, store: PgEventStore, permit: OwnedSemaphorePermit) {
        loop {
            let group = self.take();
            if group.is_empty() {
                break;
            }
            write_group(&store, &self.stats, group).await;
        }
        drop(permit);
        self.kick(&store);
    }

    /// The queued appends, oldest first, up to the event limit (at least one). A second
    /// append to a stream already in the group waits for the next group, so appends to one
    /// stream are written in the order they came.
    fn take(&self) -> Vec<Pending> {
        let mut queue = self.queue.lock();
        let mut group: Vec<Pending> = Vec::new();
        let mut streams = HashSet::new();
        let mut events = 0;
        let mut later = VecDeque::new();
        while let Some(next) = queue.pop_front() {
            if !group.is_empty() && events + next.events.len() > self.max_events {
                later.push_back(next);
                break;
            }
            if streams.contains(next.stream_id.as_str()) {
                later.push_back(next);
                continue;
            }
            events += next.events.len();
            streams.insert(next.stream_id.clone());
            group.push(next);
        }
        // What stays keeps its order, ahead of what arrives meanwhile.
        while let Some(back) = later.pop_back() {
            queue.push_front(back);
        }
        group
    }
}

/// Answers a caller. One that stopped waiting (its future was dropped) has nobody to tell.
fn answer(pending: Pending, result: Result<Vec<Envelope>>) {
    if pending.reply.send(result).is_err() {
        tracing::debug!(stream = %pending.stream_id, "an append's caller stopped waiting");
    }
}

/// A driver error shared by every append of a failed group.
#[derive(Debug, Clone)]
struct Shared(Arc<sqlx::Error>);

impl std::fmt::Display for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Shared {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// Writes a group of appends in one transaction and answers each.
async fn write_group(store: &PgEventStore, stats: &Stats, mut group: Vec<Pending>) {
    if group.len() == 1 {
        if let Some(mut p) = group.pop() {
            let events = std::mem::take(&mut p.events);
            let result = store
                .append_alone(&p.aggregate_type, &p.stream_id, p.expected, events)
                .await;
            answer(p, result);
        }
        store.wake_readers();
        return;
    }
    // Streams in one order in every group, so two groups wait for each other's index
    // entries in the same order and never deadlock.
    group.sort_by(|a, b| a.stream_id.cmp(&b.stream_id));
    let mut results: Vec<Option<Result<Vec<Envelope>>>> = Vec::new();
    results.resize_with(group.len(), || None);
    let mut accepted = Vec::with_capacity(group.len());
    // Each append's routing key, settled before its events are encoded.
    let mut keys: Vec<Option<String>> = Vec::with_capacity(group.len());
    for (p, result) in group.iter_mut().zip(results.iter_mut()) {
        match cqrs_core::routing::settle(&p.stream_id, &mut p.events) {
            Ok(key) => keys.push(key),
            Err(e) => {
                keys.push(None);
                *result = Some(Err(e));
            }
        }
    }
    let rows = {
        let mut columns = Columns::with_capacity(group.iter().map(|p| p.events.len()).sum());
        let mut streams = Vec::with_capacity(group.len());
        let mut types = Vec::with_capacity(group.len());
        let mut expected = Vec::with_capacity(group.len());
        let mut check = Vec::with_capacity(group.len());
        let mut routing = Vec::with_capacity(group.len());
        let mut requests = Vec::with_capacity(columns.names.capacity());
        for (i, p) in group.iter().enumerate() {
            if results[i].is_some() {
                continue;
            }
            let encoded = if p.stream_id.is_empty() {
                Err(Error::Config("stream id must not be empty".into()))
            } else {
                version_check(p.expected).and_then(|vc| columns.push(&p.events).map(|()| vc))
            };
            match encoded {
                Ok((c, e)) => {
                    streams.push(p.stream_id.as_str());
                    types.push(p.aggregate_type.as_str());
                    check.push(c);
                    expected.push(e);
                    routing.push(keys[i].as_deref());
                    accepted.push(i);
                    // At most MAX_EVENTS appends: `take` never groups more events.
                    let request = accepted.len() as i32;
                    requests.extend(std::iter::repeat_n(request, p.events.len()));
                }
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        if accepted.is_empty() {
            Ok(Vec::new())
        } else {
            let query = sqlx::query(store.schema().sql(
                "SELECT out_request, out_position, out_version, out_actual, out_key
                   FROM {schema}.append_batch($1, $2, $3, $4, $5, $6, $7, $8,
                        $9::text[]::json[], $10, $11, $12, $13, $14::text[]::json[])",
            ))
            .bind(&streams)
            .bind(&types)
            .bind(&expected)
            .bind(&check)
            .bind(&routing)
            .bind(&requests);
            columns.bind(query).fetch_all(store.pool()).await
        }
    };
    if accepted.len() > 1 {
        stats.groups.fetch_add(1, Ordering::Relaxed);
        stats
            .grouped_appends
            .fetch_add(accepted.len() as u64, Ordering::Relaxed);
    }
    match rows.map(|rows| outcomes(&rows, accepted.len())) {
        Ok(Ok(outcomes)) => {
            for (&slot, outcome) in accepted.iter().zip(outcomes) {
                let p = &mut group[slot];
                results[slot] = Some(match outcome {
                    Outcome::Conflict(actual) => Err(Error::Conflict {
                        stream_id: p.stream_id.clone(),
                        expected: match p.expected {
                            ExpectedVersion::Exact(v) => v,
                            ExpectedVersion::Any => 0,
                        },
                        actual,
                    }),
                    Outcome::Written(rows, key) => committed(
                        &p.aggregate_type,
                        &p.stream_id,
                        std::mem::take(&mut p.events),
                        &rows,
                        key,
                    ),
                });
            }
        }
        Ok(Err(e)) => {
            // The statement committed, but its rows do not say which append got which
            // positions. No caller may take its append for failed.
            for &slot in &accepted {
                results[slot] = Some(Err(Error::Backend {
                    backend: "postgres",
                    message: format!(
                        "appending to `{}` in a group commit: the group was committed, but {e}",
                        group[slot].stream_id
                    ),
                    source: None,
                }));
            }
        }
        // The server refused the statement: the transaction rolled back and nothing of the
        // group was written. Append one by one, so each caller gets its own answer.
        Err(sqlx::Error::Database(e)) => {
            tracing::debug!(error = %e, "group commit refused; appending one by one");
            stats.fallbacks.fetch_add(1, Ordering::Relaxed);
            for &slot in &accepted {
                let p = &mut group[slot];
                let events = std::mem::take(&mut p.events);
                results[slot] = Some(
                    store
                        .append_alone(&p.aggregate_type, &p.stream_id, p.expected, events)
                        .await,
                );
            }
        }
        // The connection failed: the group may or may not have committed.
        Err(e) => {
            let shared = Shared(Arc::new(e));
            for &slot in &accepted {
                results[slot] = Some(Err(Error::backend(
                    "postgres",
                    format!(
                        "appending to stream `{}` in a group commit",
                        group[slot].stream_id
                    ),
                    shared.clone(),
                )));
            }
        }
    }
    for (p, result) in group.into_iter().zip(results) {
        let result = result.unwrap_or_else(|| {
            Err(Error::Backend {
                backend: "postgres",
                message: format!("the group commit gave no answer for `{}`", p.stream_id),
                source: None,
            })
        });
        answer(p, result);
    }
    store.wake_readers();
}

/// What the group statement said of one append.
enum Outcome {
    /// Written: each event's position and version, and the stream's routing key.
    Written(Vec<(i64, i64)>, Option<String>),
    /// Not written: the stream was at this version.
    Conflict(u64),
}

/// Sorts the group statement's rows into one outcome per append, in order.
fn outcomes(rows: &[sqlx::postgres::PgRow], appends: usize) -> Result<Vec<Outcome>> {
    let mut out: Vec<Outcome> = (0..appends)
        .map(|_| Outcome::Written(Vec::new(), None))
        .collect();
    for row in rows {
        let bad = |e: sqlx::Error| e.to_string();
        let read = || -> std::result::Result<_, String> {
            let request: i32 = row.try_get(0).map_err(bad)?;
            let position: Option<i64> = row.try_get(1).map_err(bad)?;
            let version: Option<i64> = row.try_get(2).map_err(bad)?;
            let actual: Option<i64> = row.try_get(3).map_err(bad)?;
            let key: Option<String> = row.try_get(4).map_err(bad)?;
            Ok((request, position, version, actual, key))
        };
        let (request, position, version, actual, key) =
            read().map_err(|reason| Error::Malformed {
                what: "a group commit's result".into(),
                reason,
            })?;
        let slot = usize::try_from(request)
            .ok()
            .and_then(|r| r.checked_sub(1))
            .and_then(|r| out.get_mut(r))
            .ok_or_else(|| Error::Malformed {
                what: "a group commit's result".into(),
                reason: format!("append {request} of {appends}"),
            })?;
        match (position, version, actual, slot) {
            (_, _, Some(actual), slot) => *slot = Outcome::Conflict(actual as u64),
            (Some(p), Some(v), None, Outcome::Written(rows, stream_key)) => {
                rows.push((p, v));
                *stream_key = key;
            }
            (_, _, None, Outcome::Conflict(_)) | (None, _, None, _) | (_, None, None, _) => {
                return Err(Error::Malformed {
                    what: "a group commit's result".into(),
                    reason: format!("append {request}: a row neither written nor refused"),
                })
            }
        }
    }
    Ok(out)
}
