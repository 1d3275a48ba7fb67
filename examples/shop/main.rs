//! Run with: `cargo run --example shop`
//!
//! The whole shop in one process on the embedded in-memory backends: the product and comment
//! services send commands through the gateway, the relay publishes the event store's global log
//! to the bus, and the catalog service's tracking processor builds the read model from its
//! consumer group. Then the read model is wiped and rebuilt from the store, and must come out
//! the same.

use std::error::Error;
use std::sync::Arc;
use std::time::Duration;

use cqrs_core::memory::{MemoryCheckpointStore, MemoryEventBus, MemoryEventStore, MemoryViewStore};
use cqrs_core::{
    registry, BusFeed, CommandGateway, EventStore, ReadModel, Relay, TrackingProcessor, ViewQuery,
};
use shop::catalog::{Catalog, CatalogEntry, CatalogQueries};
use shop::comment::{CommentCommand, COMMENT};
use shop::product::{ProductCommand, PRODUCT};

fn print_catalog(title: &str, entries: &[CatalogEntry]) {
    println!("\n{title}");
    println!(
        "{:<10} {:<22} {:>9} {:>7} {:>8}",
        "product", "name", "price", "rating", "comments"
    );
    for e in entries {
        let price = e
            .price_cents
            .map_or("-".to_owned(), |c| format!("{}.{:02}", c / 100, c % 100));
        let rating = e
            .average_rating
            .map_or("-".to_owned(), |r| format!("{r:.2}"));
        let name = e.name.as_deref().unwrap_or("?");
        println!(
            "{:<10} {:<22} {:>9} {:>7} {:>8}",
            e.product_id,
            name,
            price,
            rating,
            e.comments.len()
        );
        for c in &e.comments {
            println!("{:>12} {} ({}/5): {}", "-", c.author, c.rating, c.text);
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    // Write side: one event store, one gateway.
    let store = Arc::new(MemoryEventStore::new());
    registry().check_store(store.as_ref()).await?;
    let gateway = CommandGateway::builder(store.clone() as Arc<dyn EventStore>).build();

    // Between services: the relay publishes the store's global log to the bus.
    let bus = Arc::new(MemoryEventBus::new(3));
    let relay = Relay::new(
        "shop-relay",
        store.clone(),
        bus.clone(),
        Arc::new(MemoryCheckpointStore::new()),
    )
    .spawn();

    // Read side: the catalog service consumes the bus into its read model.
    let views = Arc::new(MemoryViewStore::new());
    let feed = Arc::new(BusFeed::new(bus.clone(), "catalog", [PRODUCT, COMMENT]));
    let mut catalog = TrackingProcessor::new(Catalog, views.clone()).spawn(feed);
    let queries = CatalogQueries::new(ReadModel::new(views.clone() as Arc<dyn ViewQuery>));

    // The scenario.
    let products = [
        ("p-1", "Espresso machine", 24_900),
        ("p-2", "Burr grinder", 12_900),
        ("p-3", "Milk jug", 1_500),
    ];
    for (id, name, price) in products {
        gateway
            .send(ProductCommand::Create {
                product_id: id.into(),
                name: name.into(),
                price_cents: price,
            })
            .await?;
    }
    let comments = [
        ("c-1", "p-1", "ana", "Great crema.", 5),
        ("c-2", "p-1", "ben", "Loud, but fine.", 3),
        ("c-3", "p-2", "cleo", "Consistent grind.", 4),
        ("c-4", "p-2", "dan", "Burrs wore out.", 2),
        ("c-5", "p-3", "eve", "It holds milk.", 4),
    ];
    for (comment_id, product_id, author, text, rating) in comments {
        gateway
            .send(CommentCommand::Post {
                comment_id: comment_id.into(),
                product_id: product_id.into(),
                author: author.into(),
                text: text.into(),
                rating,
            })
            .await?;
    }
    gateway
        .send(ProductCommand::Rename {
            product_id: "p-1".into(),
            name: "Espresso machine Pro".into(),
        })
        .await?;
    gateway
        .send(ProductCommand::ChangePrice {
            product_id: "p-3".into(),
            price_cents: 1_290,
        })
        .await?;
    gateway
        .send(CommentCommand::Edit {
            comment_id: "c-2".into(),
            text: "Loud, but the coffee is worth it.".into(),
            rating: 4,
        })
        .await?;
    gateway
        .send(CommentCommand::Delete {
            comment_id: "c-4".into(),
        })
        .await?;
    // Rejections are typed domain errors; nothing is stored.
    let bad = gateway
        .send(CommentCommand::Post {
            comment_id: "c-6".into(),
            product_id: "p-1".into(),
            author: "fay".into(),
            text: "Eleven out of ten!".into(),
            rating: 11,
        })
        .await;
    if let Err(e) = bad {
        println!("refused as expected: {e}");
    }

    let head = store.len() as u64;
    catalog.wait_for(head, Duration::from_secs(10)).await?;
    let live = queries.list(0, 100).await?;
    print_catalog(
        &format!("Catalog, built from the bus ({head} events):"),
        &live,
    );

    // Wipe the read model and rebuild it from the event store, the source of truth.
    catalog.stop().await?;
    relay.stop().await?;
    let replay = TrackingProcessor::new(Catalog, views.clone());
    replay.reset().await?;
    assert!(
        queries.list(0, 100).await?.is_empty(),
        "the read model was wiped"
    );
    let replayed = replay.catch_up(store.clone()).await?;
    let rebuilt = queries.list(0, 100).await?;
    print_catalog(
        &format!("Catalog, rebuilt from the event store ({replayed} events replayed):"),
        &rebuilt,
    );
    if rebuilt != live {
        return Err("the replayed catalog differs from the live one".into());
    }
    println!("\nThe replay rebuilt the same catalog.");
    Ok(())
}
