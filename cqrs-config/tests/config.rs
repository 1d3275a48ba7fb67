//! Choosing backends by configuration: flags, the bus a configuration implies, the typed
//! errors of a wrong one, the embedded parts shared within a process, and PostgreSQL on the real
//! server (`DATABASE_URL`).
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use bytes::Bytes;
use cqrs_config::{Backends, BusKind, Connections};
use std::time::Duration;

use cqrs_core::{App, Envelope, Error, ExpectedVersion, Fold, Metadata, NewEvent};
use serde::{Deserialize, Serialize};

fn event(n: u8) -> NewEvent {
    NewEvent {
        event_name: "config.Tested".to_owned(),
        event_version: 1,
        payload: Bytes::from(serde_json::to_vec(&Tested { n }).expect("JSON")),
        metadata: Metadata::default(),
    }
}

fn is_config(result: cqrs_core::Result<impl Sized>, mentions: &str) {
    match result {
        Err(Error::Config(message)) => assert!(
            message.contains(mentions),
            "{message:?} should mention {mentions:?}"
        ),
        Err(other) => panic!("expected a configuration error, got {other:?}"),
        Ok(_) => panic!("expected a configuration error mentioning {mentions:?}"),
    }
}

#[test]
fn an_address_implies_its_bus_and_a_named_bus_wins() {
    let with = |f: fn(&mut Connections)| {
        let mut c = Connections::default();
        f(&mut c);
        c.bus_kind()
    };
    assert_eq!(with(|_| {}), BusKind::Embedded);
    assert_eq!(
        with(|c| c.redis_url = Some("redis://h".into())),
        BusKind::Redis
    );
    assert_eq!(
        with(|c| c.amqp_url = Some("amqp://h".into())),
        BusKind::Rabbitmq
    );
    let both = |c: &mut Connections| {
        c.amqp_url = Some("amqp://h".into());
        c.kafka_brokers = Some("h:9092".into());
    };
    assert_eq!(with(both), BusKind::Kafka);
    let named = |c: &mut Connections| {
        c.kafka_brokers = Some("h:9092".into());
        c.bus = Some(BusKind::Embedded);
    };
    assert_eq!(with(named), BusKind::Embedded);
}

#[test]
fn flags_are_read_and_bad_values_are_refused() {
    let c = Connections::from_args(["--bus", "sqs", "--partitions", "7", "--schema", "s1"])
        .expect("flags");
    assert_eq!((c.bus_kind(), c.partitions), (BusKind::Sqs, 7));
    assert_eq!(c.schema(), "s1");
    is_config(
        Connections::from_args(["--partitions", "0"]),
        "--partitions",
    );
    is_config(
        Connections::from_args(["--bus", "carrier-pigeon"]),
        "carrier-pigeon",
    );
    is_config(
        Connections::from_args(["--bus-lease-ms", "0"]),
        "--bus-lease-ms",
    );
    is_config(Connections::from_args(["--no-such-flag"]), "--no-such-flag");
}

#[tokio::test]
async fn a_chosen_bus_without_its_address_is_a_configuration_error() {
    for (bus, variable) in [
        (BusKind::Kafka, "KAFKA_BROKERS"),
        (BusKind::Rabbitmq, "AMQP_URL"),
        (BusKind::Redis, "REDIS_URL"),
    ] {
        let connections = Connections {
            bus: Some(bus),
            kafka_brokers: None,
            amqp_url: None,
            redis_url: None,
            ..Connections::default()
        };
        is_config(Backends::new(connections).bus().await, variable);
    }
}

#[tokio::test]
async fn the_apps_of_one_process_share_the_embedded_store() {
    let backends = Backends::new(Connections::default());
    let writer = backends.app().await.expect("app").build().expect("build");
    let reader = backends.app().await.expect("app").build().expect("build");
    let stream = ExpectedVersion::NEW;
    let appended = writer
        .event_store()
        .append("config", "c-1", stream, vec![event(1)]);
    appended.await.expect("append");
    let read = reader.event_store().read_all(0, 10).await.expect("read");
    assert_eq!(read.len(), 1, "the second app sees the first one's event");
    assert!(backends.store().await.expect("store").is_embedded());
    // A second set of backends is a second embedded world.
    let other = Backends::new(Connections::default())
        .app()
        .await
        .expect("app");
    let other = other.build().expect("build");
    assert!(other
        .event_store()
        .read_all(0, 10)
        .await
        .expect("read")
        .is_empty());
    for app in [writer, reader, other] {
        app.shutdown().await.expect("shutdown");
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Tested {
    n: u8,
}
cqrs_core::event!(Tested, "config.Tested");

struct Counted;
impl Fold for Counted {
    const NAME: &'static str = "counted";
    type Event = Tested;
    type View = u64;
    fn fold(&self, count: &mut u64, _: &Tested, _: &Envelope) {
        *count += 1;
    }
}

#[tokio::test]
async fn a_relay_and_a_bus_fed_projection_of_one_process_meet_on_the_embedded_bus() {
    let backends = Backends::new(Connections::default());
    let bus = backends.bus().await.expect("bus");
    assert_eq!(bus.kind(), BusKind::Embedded);
    let writer = App::builder().with(backends.store().await.expect("store"));
    let writer = writer.with(bus).relay("relay", |r| r.only(["config"]));
    let writer = writer.build().expect("build");
    let reader = App::builder().with(backends.views().await.expect("views"));
    let group = backends.group("counter");
    let bus = backends.bus().await.expect("bus"); // the same one: one bus per process
    let reader = reader
        .with(bus)
        .projection(Counted, |p| p.from_bus(group, ["config"]));
    let mut reader = reader.build().expect("build");
    let events = (1..=3).map(event).collect();
    let appended = writer
        .event_store()
        .append("config", "c-1", ExpectedVersion::NEW, events);
    let appended = appended.await.expect("append");
    reader
        .wait_for(&appended, Duration::from_secs(10))
        .await
        .expect("applied");
    let count = reader
        .read_model::<Counted>()
        .expect("model")
        .get("c-1")
        .await;
    assert_eq!(count.expect("read"), Some(3));
    for app in [writer, reader] {
        app.shutdown().await.expect("shutdown");
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;

    fn database_url() -> String {
        std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
    }

    fn on_postgres(schema: &str) -> Connections {
        Connections {
            database_url: Some(database_url()),
            schema: Some(schema.to_owned()),
            ..Connections::default()
        }
    }

    #[tokio::test]
    async fn a_database_url_gives_the_postgres_store_migrated_and_lasting() {
        let schema = format!("cfg_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let first = Backends::new(on_postgres(&schema));
        let store = first.store().await.unwrap_or_else(|e| {
            panic!("PostgreSQL is not reachable ({e}). Set DATABASE_URL or run ./scripts/test.sh")
        });
        assert!(!store.is_embedded());
        let app = App::builder().with(store).build().expect("build");
        let stream = ExpectedVersion::NEW;
        let appended = app
            .event_store()
            .append("config", "c-1", stream, vec![event(2)]);
        appended.await.expect("append");
        app.shutdown().await.expect("shutdown");
        // Another process on the same configuration reads what the first one wrote.
        let second = Backends::new(on_postgres(&schema))
            .app()
            .await
            .expect("app");
        let second = second.build().expect("build");
        let read = second.event_store().read_all(0, 10).await.expect("read");
        assert_eq!(read.len(), 1);
        second.shutdown().await.expect("shutdown");
        let pg = cqrs_postgres::Postgres::connect(&database_url(), &schema).await;
        pg.expect("connect").drop_schema().await.expect("drop");
    }

    #[tokio::test]
    async fn a_bad_schema_name_is_a_configuration_error() {
        is_config(
            Backends::new(on_postgres("x\"; drop table")).store().await,
            "schema",
        );
    }
}

#[cfg(not(any(
    feature = "postgres",
    feature = "mongo",
    feature = "kafka",
    feature = "rabbitmq",
    feature = "redis",
    feature = "sqs"
)))]
#[tokio::test]
async fn a_server_this_build_lacks_is_refused_naming_the_feature() {
    let connections = Connections {
        database_url: Some("postgres://127.0.0.1/x".to_owned()),
        mongodb_uri: Some("mongodb://127.0.0.1".to_owned()),
        ..Connections::default()
    };
    let backends = Backends::new(connections);
    is_config(backends.store().await, "`postgres` feature");
    is_config(backends.views().await, "`mongo` feature");
    for (bus, feature) in [
        (BusKind::Kafka, "`kafka` feature"),
        (BusKind::Rabbitmq, "`rabbitmq` feature"),
        (BusKind::Redis, "`redis` feature"),
        (BusKind::Sqs, "`sqs` feature"),
    ] {
        let connections = Connections {
            bus: Some(bus),
            kafka_brokers: Some("127.0.0.1:9092".to_owned()),
            amqp_url: Some("amqp://127.0.0.1".to_owned()),
            redis_url: Some("redis://127.0.0.1".to_owned()),
            ..Connections::default()
        };
        is_config(Backends::new(connections).bus().await, feature);
    }
}
