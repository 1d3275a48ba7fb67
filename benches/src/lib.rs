//! Workloads shared by the criterion benchmarks and the scenario harness.

use std::sync::Arc;

use cqrs_core::memory::{MemoryEventStore, MemoryViewStore};
use cqrs_core::processor::Batch;
use cqrs_core::{BoxError, CommandGateway, Envelope, EventStore, Projection, TrackingProcessor};
use cqrs_testing::envelope_of;
use serde::{Deserialize, Serialize};
use shop::events::{CommentPosted, ProductPriceChanged};
use shop::product::ProductCommand;

/// `n` serialized catalog events over `products` products: mostly price changes, one comment in
/// ten, as a store or a bus would deliver them.
pub fn catalog_envelopes(n: u64, products: u64) -> Vec<Envelope> {
    let mut versions = vec![0u64; products as usize];
    (0..n)
        .map(|i| {
            let p = i % products;
            let product_id = format!("p-{p}");
            if i % 10 == 9 {
                let comment = CommentPosted {
                    comment_id: format!("c-{i}"),
                    product_id,
                    author: "bench".into(),
                    text: "a comment of a realistic length, neither short nor long".into(),
                    rating: (i % 5) as u8 + 1,
                };
                envelope_of("comment", &format!("c-{i}"), 1, i + 1, &comment)
            } else {
                versions[p as usize] += 1;
                let event = ProductPriceChanged {
                    product_id: product_id.clone(),
                    price_cents: i as i64,
                };
                envelope_of("product", &product_id, versions[p as usize], i + 1, &event)
            }
        })
        .collect()
}

/// A light view: price and rating totals per product, no embedded lists. Its cost is the
/// framework's (decode, route, idempotency check, apply), not the view's serialization.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProductStats;

/// The view of [`ProductStats`].
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// The latest price.
    pub price_cents: i64,
    /// How many price changes.
    pub changes: u64,
    /// Sum of ratings.
    pub rating_sum: u64,
    /// Number of ratings.
    pub ratings: u64,
}

cqrs_core::event_set! {
    /// The events the stats follow.
    #[derive(Debug, Clone)]
    pub enum StatsEvent {
        Price(ProductPriceChanged),
        Comment(CommentPosted),
    }
}

impl Projection for ProductStats {
    const NAME: &'static str = "product-stats";
    type Event = StatsEvent;
    type View = Stats;

    fn view_id(&self, event: &StatsEvent, _: &Envelope) -> String {
        match event {
            StatsEvent::Price(e) => e.product_id.clone(),
            StatsEvent::Comment(e) => e.product_id.clone(),
        }
    }

    fn apply(
        &self,
        view: &mut Option<Stats>,
        event: &StatsEvent,
        _: &Envelope,
    ) -> Result<(), BoxError> {
        let stats = view.get_or_insert_with(Stats::default);
        match event {
            StatsEvent::Price(e) => {
                stats.price_cents = e.price_cents;
                stats.changes += 1;
            }
            StatsEvent::Comment(e) => {
                stats.rating_sum += u64::from(e.rating);
                stats.ratings += 1;
            }
        }
        Ok(())
    }
}

/// Feeds batches through a projection's tracking processor; returns the events applied.
///
/// # Panics
/// When the processor fails (a benchmark, not library code).
pub async fn project<P: Projection>(projection: P, batches: &[Batch]) -> usize {
    let views = Arc::new(MemoryViewStore::new());
    let processor = TrackingProcessor::new(projection, views);
    let mut applied = 0;
    for batch in batches {
        applied += processor
            .process(batch)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    applied
}

/// Splits envelopes into batches as a source would deliver them.
pub fn batches(events: Vec<Envelope>, batch_size: usize) -> Vec<Batch> {
    events
        .chunks(batch_size.max(1))
        .map(|chunk| Batch::from_log(chunk.to_vec()))
        .collect()
}

/// A gateway on a fresh in-memory store with `products` products created.
///
/// # Panics
/// When a command fails.
pub async fn gateway_with_products(products: u64) -> CommandGateway {
    let store = Arc::new(MemoryEventStore::new());
    let gateway = CommandGateway::builder(store as Arc<dyn EventStore>)
        .cache(products as usize * 2)
        .build();
    for p in 0..products {
        gateway
            .send(ProductCommand::Create {
                product_id: format!("p-{p}"),
                name: format!("product {p}"),
                price_cents: 100,
            })
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    gateway
}

/// Sends `n` price changes spread over `products` products from `tasks` concurrent tasks.
///
/// # Panics
/// When a command fails.
pub async fn send_commands(gateway: &CommandGateway, n: u64, products: u64, tasks: u64) {
    let mut handles = Vec::new();
    for t in 0..tasks {
        let gateway = gateway.clone();
        handles.push(tokio::spawn(async move {
            let mut i = t;
            while i < n {
                gateway
                    .send(ProductCommand::ChangePrice {
                        product_id: format!("p-{}", i % products),
                        price_cents: 1_000 + i as i64,
                    })
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                i += tasks;
            }
        }));
    }
    for h in handles {
        h.await.unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Drains `events` events from a bus subscription into [`ProductStats`] (in-memory views),
/// acknowledging each batch after it was applied. Returns the seconds from the first batch
/// (joining a consumer group is not throughput).
///
/// # Panics
/// On any error (a benchmark, not library code).
pub async fn consume_into_stats(
    source: &mut dyn cqrs_core::processor::EventSource,
    events: u64,
    batch_size: usize,
) -> f64 {
    let processor = TrackingProcessor::new(ProductStats, Arc::new(MemoryViewStore::new()));
    let (mut start, mut seen) = (None, 0u64);
    while seen < events {
        let batch = source
            .next_batch(batch_size)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        if batch.events.is_empty() {
            continue;
        }
        start.get_or_insert_with(std::time::Instant::now);
        seen += batch.events.len() as u64;
        processor
            .process(&batch)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        source.ack(&batch).await.unwrap_or_else(|e| panic!("{e}"));
    }
    start.map_or(0.0, |s| s.elapsed().as_secs_f64())
}
