//! Catch-up of 1 M events from Kafka (6 partitions a topic) into MongoDB by one, two and three
//! members of one consumer group, each on connections of its own; the view conflicts their
//! commits met are counted beside the time. The store-fed side of the same question is in
//! `segments.rs`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cqrs_benches::{catalog_envelopes, ProductStats, Stats};
use cqrs_core::view::{StoredDoc, UnitOfWork};
use cqrs_core::{
    BusFeed, Error, EventBus, Query, ReadModel, Result, TrackingProcessor, ViewQuery, ViewStore,
};
use cqrs_kafka::{KafkaBus, KafkaConfig};
use cqrs_mongo::{Mongo, MongoViewStore};

use crate::{report, wanted};

/// One member's view store: counts the view conflicts and other failed commits it met.
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
}

/// Events the views hold: each is a price change or a rating.
async fn applied(views: &ReadModel<ProductStats>) -> u64 {
    let all: Vec<(String, Stats)> = views.find(&Query::all()).await.unwrap_or_default();
    all.iter().map(|(_, s)| s.changes + s.ratings).sum()
}

pub async fn run(uri: &str, events: u64, runs: u64, products: u64) {
    let brokers = std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let scenarios: Vec<u32> = (1..=3)
        .filter(|n| wanted(&format!("kafka_to_mongo_members_{n}")))
        .collect();
    if scenarios.is_empty() {
        return;
    }
    let envelopes = catalog_envelopes(events, products);
    for run in 0..runs {
        // One log for the three runs, each read by a group of its own.
        let prefix = format!("benchm{run}{}.", std::process::id());
        let config = |prefix: &str| {
            KafkaConfig::new(&brokers, prefix)
                .unwrap_or_else(|e| panic!("{e}"))
                .partitions(6)
                .session_timeout(Duration::from_secs(6))
        };
        let publisher = KafkaBus::new(config(&prefix)).unwrap_or_else(|e| panic!("{e}"));
        for chunk in envelopes.chunks(50_000) {
            publisher
                .publish(chunk)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        for &members in &scenarios {
            let scenario = format!("kafka_to_mongo_members_{members}");
            let database = format!("bench_members_{members}");
            let first = Mongo::connect(uri, &database, "cqrs_")
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            first
                .drop_database()
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let views =
                ReadModel::<ProductStats>::new(Arc::new(first.view_store()) as Arc<dyn ViewQuery>);
            let (conflicts, failures) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
            let start = Instant::now();
            let mut handles = Vec::new();
            for _ in 0..members {
                let mongo = Mongo::connect(uri, &database, "cqrs_")
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                let bus: Arc<dyn EventBus> =
                    Arc::new(KafkaBus::new(config(&prefix)).unwrap_or_else(|e| panic!("{e}")));
                let store = Counted {
                    inner: mongo.view_store(),
                    conflicts: conflicts.clone(),
                    failures: failures.clone(),
                };
                let feed = BusFeed::new(bus, format!("g{members}"), ["product", "comment"]);
                handles.push(
                    TrackingProcessor::new(ProductStats, Arc::new(store))
                        .batch_size(10_000)
                        .spawn(Arc::new(feed)),
                );
            }
            while applied(&views).await < events {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let seconds = start.elapsed().as_secs_f64();
            for h in handles {
                h.stop().await.unwrap_or_else(|e| panic!("{e}"));
            }
            report(&scenario, events, seconds);
            eprintln!(
                "{scenario}: {} view conflicts, {} failed commits (retried)",
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
