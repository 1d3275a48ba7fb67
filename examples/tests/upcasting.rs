#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]
//! A `shop.ProductCreated` stored as v1 in PostgreSQL is read as v2 on every read path: the
//! aggregate's load (and a command on it), a projection fed from the store's log, and one fed
//! from Kafka after the relay.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::Env;
use cqrs_core::envelope::{ExpectedVersion, Metadata, NewEvent};
use cqrs_core::memory::MemoryViewStore;
use cqrs_core::{
    BusFeed, CommandGateway, EventAppender, EventReader, EventStore, ReadModel, Relay,
    TrackingProcessor, ViewQuery,
};
use cqrs_kafka::{KafkaBus, KafkaConfig};
use shop::catalog::Catalog;
use shop::product::{Product, ProductCommand, PRODUCT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v1_event_in_postgres_is_upcast_on_every_read_path() {
    let env = Env::new("upcast");
    let pg = env.postgres().await;
    pg.migrate().await.expect("migrate");
    let store: Arc<dyn EventStore> = Arc::new(pg.event_store());
    store
        .append(
            PRODUCT,
            "p-9",
            ExpectedVersion::Exact(0),
            vec![NewEvent {
                event_name: "shop.ProductCreated".into(),
                event_version: 1,
                payload: br#"{"product_id":"p-9","name":"Old kettle","price":12.5}"#
                    .to_vec()
                    .into(),
                metadata: Metadata::new(),
            }],
        )
        .await
        .expect("a v1 event");

    // 1. The aggregate's load, and a command deciding on the upcast state.
    let gateway = CommandGateway::builder(store.clone()).cache(0).build();
    let (product, version) = gateway.load::<Product>("p-9").await.expect("load");
    assert_eq!(
        (product.price_cents, version),
        (1250, 1),
        "12.5 units is 1250 cents"
    );
    gateway
        .send(ProductCommand::Rename {
            product_id: "p-9".into(),
            name: "Kettle".into(),
        })
        .await
        .expect("a command on the upcast state");

    // 2. A projection fed from the store's global log.
    let replayed = Arc::new(MemoryViewStore::new());
    TrackingProcessor::new(Catalog, replayed.clone())
        .catch_up(store.clone())
        .await
        .expect("replay");
    assert_upcast(replayed, "store feed").await;

    // 3. A projection fed from Kafka: the event's version travels with it and is upcast there.
    let config = KafkaConfig::new(env.kafka_brokers.as_str(), format!("{}.", env.name))
        .expect("config")
        .partitions(2)
        .session_timeout(Duration::from_secs(6));
    let bus = Arc::new(KafkaBus::new(config).expect("bus"));
    let relay = Relay::new(
        "relay",
        store.clone(),
        bus.clone(),
        Arc::new(pg.checkpoint_store()),
    );
    assert_eq!(relay.publish_pending().await.expect("relay"), 2);
    let views = Arc::new(MemoryViewStore::new());
    let mut handle = TrackingProcessor::new(Catalog, views.clone())
        .idle_wait(Duration::from_millis(200))
        .spawn(Arc::new(BusFeed::new(
            bus.clone(),
            format!("{}.catalog", env.name),
            [PRODUCT],
        )));
    let committed = store.read_all(0, 100).await.expect("read");
    handle
        .wait_for_events(&committed, Duration::from_secs(60))
        .await
        .expect("the bus feed applied both events");
    handle.stop().await.expect("stop");
    assert_upcast(views, "bus feed").await;
    env.clean_up().await;
}

/// The catalog entry of `p-9` shows the v1 price upcast to cents, and the rename.
async fn assert_upcast(views: Arc<MemoryViewStore>, feed: &str) {
    let entry = ReadModel::<Catalog>::new(views as Arc<dyn ViewQuery>)
        .get("p-9")
        .await
        .expect("get")
        .expect("in the catalog");
    assert_eq!(
        (entry.price_cents, entry.name.as_deref()),
        (Some(1250), Some("Kettle")),
        "{feed}"
    );
}
