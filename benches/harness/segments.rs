//! Catch-up of the PostgreSQL log (`bench_log`, left by `--pg`) into MongoDB by one, two and
//! three instances of a projection in 6 segments, each instance on a connection of its own;
//! the view conflicts their commits met are counted beside the time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cqrs_benches::ProductStats;
use cqrs_core::segment::{Claim, Claimed, Segment, SegmentClaims};
use cqrs_core::view::{StoredDoc, UnitOfWork};
use cqrs_core::{Error, EventReader, Result, StoreFeed, TrackingProcessor, ViewStore};
use cqrs_mongo::{Mongo, MongoViewStore};
use uuid::Uuid;

use crate::{report, wanted};

const SEGMENTS: u32 = 6;

/// One instance's view store: counts the view conflicts and commit retries it met.
struct Counted {
    inner: MongoViewStore,
    conflicts: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
}

#[async_trait]
impl ViewStore for Counted {
    async fn load(&self, projection: &str, ids: &[String]) -> Result<Vec<StoredDoc>> {
        self.inner.load(projection, ids).await
    }
    async fn commit(&self, work: UnitOfWork) -> Result<()> {
        let outcome = self.inner.commit(work).await;
        match &outcome {
            Err(Error::ViewConflict { .. }) => self.conflicts.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.failures.fetch_add(1, Ordering::Relaxed),
            Ok(()) => 0,
        };
        outcome
    }
    async fn checkpoint(&self, projection: &str) -> Result<Option<u64>> {
        self.inner.checkpoint(projection).await
    }
    async fn reset(&self, projection: &str) -> Result<()> {
        self.inner.reset(projection).await
    }
    fn atomicity(&self) -> cqrs_core::view::Atomicity {
        self.inner.atomicity()
    }
    fn claims(&self) -> Option<&dyn SegmentClaims> {
        Some(self)
    }
}

#[async_trait]
impl SegmentClaims for Counted {
    async fn heartbeat(&self, projection: &str, owner: Uuid, lease: Duration) -> Result<u32> {
        self.inner.heartbeat(projection, owner, lease).await
    }
    async fn claim(
        &self,
        projection: &str,
        segment: Segment,
        owner: Uuid,
        lease: Duration,
    ) -> Result<Option<Claimed>> {
        self.inner.claim(projection, segment, owner, lease).await
    }
    async fn renew(&self, projection: &str, claim: &Claim, lease: Duration) -> Result<bool> {
        self.inner.renew(projection, claim, lease).await
    }
    async fn release(&self, projection: &str, claim: &Claim) -> Result<()> {
        self.inner.release(projection, claim).await
    }
}

pub async fn run(uri: &str, runs: u64) {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let Ok(pg) = cqrs_postgres::Postgres::connect(&url, "bench_log").await else {
        eprintln!("pg_to_mongo_segments: no PostgreSQL log (run with --pg)");
        return;
    };
    let store = Arc::new(pg.event_store());
    let head = store.head().await.unwrap_or(0);
    let events = store
        .read_all(0, usize::MAX)
        .await
        .map_or(0, |e| e.len() as u64);
    if head == 0 {
        eprintln!("pg_to_mongo_segments: the PostgreSQL log is empty (run with --pg)");
        return;
    }
    for instances in [1u32, 2, 3] {
        let scenario = format!("pg_to_mongo_segments_{instances}");
        if !wanted(&scenario) {
            continue;
        }
        for run in 0..runs {
            let database = format!("bench_seg_{run}");
            let first = Mongo::connect(uri, &database, "cqrs_")
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            first
                .drop_database()
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let (conflicts, failures) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
            let start = Instant::now();
            let mut handles = Vec::new();
            for _ in 0..instances {
                // A client of its own, as another process would have.
                let mongo = Mongo::connect(uri, &database, "cqrs_")
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                let views = Counted {
                    inner: mongo.view_store(),
                    conflicts: conflicts.clone(),
                    failures: failures.clone(),
                };
                handles.push(
                    TrackingProcessor::new(ProductStats, Arc::new(views))
                        .batch_size(10_000)
                        .segments(SEGMENTS, Duration::from_secs(3))
                        .spawn(Arc::new(StoreFeed::new(store.clone()))),
                );
            }
            loop {
                let held: usize = handles.iter().map(|h| h.held_segments().len()).sum();
                if held == SEGMENTS as usize && handles.iter().all(|h| h.position() >= head) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let seconds = start.elapsed().as_secs_f64();
            let shares: Vec<usize> = handles.iter().map(|h| h.held_segments().len()).collect();
            for h in handles {
                h.stop().await.unwrap_or_else(|e| panic!("{e}"));
            }
            report(&scenario, events, seconds);
            eprintln!(
                "{scenario}: segments held {shares:?}, {} view conflicts, {} failed commits (retried)",
                conflicts.load(Ordering::Relaxed),
                failures.load(Ordering::Relaxed)
            );
            first
                .drop_database()
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }
}
