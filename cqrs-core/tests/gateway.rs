#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]
//! The command gateway under concurrency, middleware, snapshots and metadata.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use common::{add, Counter, CounterError};
use cqrs_core::envelope::{Envelope, ExpectedVersion, NewEvent};
use cqrs_core::gateway::{CommandContext, Outcome};
use cqrs_core::memory::{MemoryEventStore, MemorySnapshotStore};
use cqrs_core::registry::StoredType;
use cqrs_core::{
    CommandError, CommandGateway, CommandMetadata, EventAppender, EventReader, EventStore,
    Middleware, Result, SnapshotStore,
};

/// A store that yields to other tasks inside every read and append, so that concurrent
/// commands really interleave between load and append.
struct Interleaving(MemoryEventStore);

#[async_trait]
impl EventReader for Interleaving {
    async fn read_stream(&self, stream_id: &str, after: u64) -> Result<Vec<Envelope>> {
        tokio::task::yield_now().await;
        self.0.read_stream(stream_id, after).await
    }
    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<Envelope>> {
        self.0.read_all(after, limit).await
    }
    async fn head(&self) -> Result<u64> {
        self.0.head().await
    }
    async fn wait_for_events(&self, after: u64, timeout: Duration) -> Result<()> {
        self.0.wait_for_events(after, timeout).await
    }
    async fn stored_types(&self) -> Result<Vec<StoredType>> {
        self.0.stored_types().await
    }
}

#[async_trait]
impl EventAppender for Interleaving {
    async fn append(
        &self,
        aggregate_type: &str,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Envelope>> {
        tokio::task::yield_now().await;
        self.0
            .append(aggregate_type, stream_id, expected, events)
            .await
    }
}

async fn hammer(retries: u32) -> (usize, usize, Counter, u64) {
    let store = Arc::new(Interleaving(MemoryEventStore::new()));
    let gateway = CommandGateway::builder(store.clone() as Arc<dyn EventStore>)
        .max_retries(retries)
        .build();
    let mut tasks = Vec::new();
    for i in 0..32u64 {
        let gateway = gateway.clone();
        tasks.push(tokio::spawn(async move {
            (i + 1, gateway.send(add("hot", i + 1)).await)
        }));
    }
    let (mut committed, mut conflicts, mut committed_sum) = (0, 0, 0);
    for task in tasks {
        let (amount, outcome) = task.await.expect("task");
        match outcome {
            Ok(envelopes) => {
                assert_eq!(envelopes.len(), 1);
                committed += 1;
                committed_sum += amount;
            }
            Err(CommandError::Conflict { attempts, source }) => {
                assert_eq!(
                    attempts,
                    retries + 1,
                    "a conflict is returned only after every retry"
                );
                assert!(
                    matches!(source, cqrs_core::Error::Conflict { .. }),
                    "typed conflict: {source}"
                );
                conflicts += 1;
            }
            Err(other) => panic!("unexpected outcome: {other}"),
        }
    }
    let (state, version) = gateway.load::<Counter>("hot").await.expect("load");
    let stored = store.0.read_stream("hot", 0).await.expect("read").len() as u64;
    assert_eq!(version, stored);
    assert_eq!(
        state.total, committed_sum,
        "no lost update: the state is the sum of what committed"
    );
    (committed, conflicts, state, version)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_writers_on_one_aggregate_lose_no_update() {
    // Enough retries: every command commits.
    let (committed, conflicts, state, version) = hammer(64).await;
    assert_eq!((committed, conflicts), (32, 0));
    assert_eq!(version, 32);
    assert_eq!(state.total, (1..=32).sum::<u64>());

    // No retries: conflicts surface as typed errors, and what committed is exactly the state.
    let (committed, conflicts, _, version) = hammer(0).await;
    assert_eq!(
        committed + conflicts,
        32,
        "every command committed or returned a conflict"
    );
    assert!(
        conflicts > 0,
        "interleaved writers without retries must conflict"
    );
    assert_eq!(version as usize, committed);
}

#[tokio::test]
async fn rejection_is_typed_and_stores_nothing() {
    let store = Arc::new(MemoryEventStore::new());
    let gateway = CommandGateway::builder(store.clone()).build();
    let err = gateway
        .send(add("c", 0))
        .await
        .expect_err("zero is refused");
    assert_eq!(err.rejection(), Some(&CounterError::Zero));
    assert!(store.is_empty());
}

#[tokio::test]
async fn metadata_flows_from_command_to_events() {
    let store = Arc::new(MemoryEventStore::new());
    let gateway = CommandGateway::builder(store.clone()).build();
    let first = gateway
        .send_with(add("m", 1), CommandMetadata::default().with("user", "ana"))
        .await
        .expect("send");
    let meta = &first[0].metadata;
    assert_eq!(meta.user["user"], "ana");
    let command = meta.command_id.expect("events record their command's id");
    assert_eq!(
        meta.causation_id,
        Some(command),
        "a command sent from outside is its events' cause"
    );
    assert_eq!(meta.correlation_id, command, "the command starts the flow");
    // A command reacting to an event: the event is the cause, the command is recorded.
    let caused = gateway
        .send_with(add("m2", 2), CommandMetadata::caused_by(&first[0]))
        .await
        .expect("send");
    let next = &caused[0].metadata;
    assert_eq!(
        next.correlation_id, meta.correlation_id,
        "one flow, one correlation id"
    );
    assert_eq!(
        next.causation_id,
        Some(meta.event_id),
        "an event caused by an event names that event as its cause"
    );
    let second_command = next.command_id.expect("the command's id is recorded");
    assert_ne!(second_command, command);
    assert_ne!(next.event_id, meta.event_id);
    // ... and the store keeps both ids, so the chain can be followed from what is stored.
    let stored = store.read_stream("m2", 0).await.expect("read");
    assert_eq!(stored[0].metadata.causation_id, Some(meta.event_id));
    assert_eq!(stored[0].metadata.command_id, Some(second_command));
}

#[derive(Default)]
struct Audit {
    before: AtomicUsize,
    committed: AtomicUsize,
    refused: AtomicUsize,
}

#[async_trait]
impl Middleware for Audit {
    async fn before(&self, ctx: &mut CommandContext<'_>) -> std::result::Result<(), String> {
        self.before.fetch_add(1, Ordering::SeqCst);
        if ctx.aggregate_id == "forbidden" {
            return Err("no writes to `forbidden`".into());
        }
        // Validation needs the command itself, typed.
        if let Some(common::CounterCommand::Add { amount, .. }) =
            ctx.command::<common::CounterCommand>()
        {
            if *amount > 1_000 {
                return Err(format!("{amount} is more than one command may add"));
            }
        }
        ctx.metadata.user.insert("audited".into(), "yes".into());
        Ok(())
    }
    async fn after(&self, _: &CommandContext<'_>, outcome: &Outcome<'_>) {
        match outcome {
            Outcome::Committed(_) => self.committed.fetch_add(1, Ordering::SeqCst),
            _ => self.refused.fetch_add(1, Ordering::SeqCst),
        };
    }
}

#[tokio::test]
async fn middleware_sees_refuses_and_enriches_commands() {
    let audit = Arc::new(Audit::default());
    let store = Arc::new(MemoryEventStore::new());
    let gateway = CommandGateway::builder(store.clone())
        .middleware(audit.clone())
        .build();
    let ok = gateway.send(add("a", 1)).await.expect("send");
    assert_eq!(ok[0].metadata.user["audited"], "yes");
    let refused = gateway
        .send(add("forbidden", 1))
        .await
        .expect_err("refused");
    assert!(matches!(refused, CommandError::Refused(ref m) if m.contains("forbidden")));
    let invalid = gateway.send(add("a", 5_000)).await.expect_err("invalid");
    assert!(
        matches!(invalid, CommandError::Refused(ref m) if m.contains("5000")),
        "{invalid}"
    );
    let _ = gateway.send(add("a", 0)).await.expect_err("rejected");
    assert_eq!(audit.before.load(Ordering::SeqCst), 4);
    assert_eq!(audit.committed.load(Ordering::SeqCst), 1);
    assert_eq!(audit.refused.load(Ordering::SeqCst), 3);
    assert_eq!(
        store.len(),
        1,
        "refused, invalid and rejected commands store nothing"
    );
}

#[tokio::test]
async fn snapshots_every_n_events_and_loads_from_them() {
    let store = Arc::new(MemoryEventStore::new());
    let snapshots = Arc::new(MemorySnapshotStore::new());
    let gateway = CommandGateway::builder(store.clone())
        .snapshots(snapshots.clone(), 5)
        .cache(0)
        .build();
    for i in 1..=12 {
        gateway.send(add("s", i)).await.expect("send");
    }
    let snapshot = snapshots
        .load("counter", "s")
        .await
        .expect("load")
        .expect("a snapshot exists");
    assert_eq!(
        snapshot.version, 10,
        "a snapshot each 5 events: the latest at 10"
    );
    let state: Counter = serde_json::from_slice(&snapshot.state).expect("snapshot decodes");
    assert_eq!(state.total, (1..=10).sum::<u64>());

    let (loaded, version) = gateway.load::<Counter>("s").await.expect("load");
    assert_eq!((loaded.total, version), ((1..=12).sum::<u64>(), 12));
    let fresh = CommandGateway::builder(store.clone()).cache(0).build();
    let (replayed, _) = fresh.load::<Counter>("s").await.expect("full replay");
    assert_eq!(replayed, loaded, "snapshot + tail equals a full replay");

    // Loading starts from the snapshot, not from the first event: a marked snapshot shows through.
    let marked = Counter {
        total: 1_000,
        events: 10,
    };
    snapshots
        .save(cqrs_core::store::Snapshot {
            aggregate_type: "counter".into(),
            stream_id: "s".into(),
            version: 11,
            state: serde_json::to_vec(&marked).expect("json").into(),
        })
        .await
        .expect("save");
    let (from_snapshot, version) = gateway.load::<Counter>("s").await.expect("load");
    assert_eq!(
        (from_snapshot.total, version),
        (1_000 + 12, 12),
        "only events after the snapshot are replayed"
    );

    // An unreadable snapshot is ignored (a full replay), never a failed command.
    snapshots
        .save(cqrs_core::store::Snapshot {
            aggregate_type: "counter".into(),
            stream_id: "s".into(),
            version: 12,
            state: bytes_of("{not json"),
        })
        .await
        .expect("save");
    let (recovered, _) = gateway
        .load::<Counter>("s")
        .await
        .expect("load despite a bad snapshot");
    assert_eq!(recovered, replayed);
}

fn bytes_of(s: &str) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(s.as_bytes())
}

#[tokio::test]
async fn a_stale_cache_is_caught_by_the_expected_version() {
    let store = Arc::new(MemoryEventStore::new());
    let a = CommandGateway::builder(store.clone()).build();
    let b = CommandGateway::builder(store.clone()).build();
    a.send(add("shared", 1)).await.expect("a");
    b.send(add("shared", 2)).await.expect("b");
    // `a` has version 1 cached; the store is at 2. The append conflicts, `a` reloads and retries.
    a.send(add("shared", 3)).await.expect("a again");
    let (state, version) = a.load::<Counter>("shared").await.expect("load");
    assert_eq!((state.total, version), (6, 3));
}
