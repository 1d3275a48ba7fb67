//! The environment as the configuration: this binary's one test owns the process's
//! environment (no other test runs beside it to read it meanwhile).
#![allow(clippy::expect_used, clippy::unwrap_used, missing_docs)]

use cqrs_config::{BusKind, Connections};
use cqrs_core::Error;

const VARIABLES: [&str; 12] = [
    "DATABASE_URL",
    "KAFKA_BROKERS",
    "AMQP_URL",
    "REDIS_URL",
    "MONGODB_URI",
    "CQRS_BUS",
    "CQRS_SCHEMA",
    "CQRS_TOPIC_PREFIX",
    "CQRS_MONGO_DATABASE",
    "CQRS_PARTITIONS",
    "CQRS_BUS_LEASE_MS",
    "CQRS_PUBLISH_TIMEOUT_MS",
];

#[test]
fn the_environment_configures_and_a_flag_beats_it() {
    for variable in VARIABLES {
        std::env::remove_var(variable);
    }
    let none = Connections::from_env().expect("defaults");
    assert_eq!(none.bus_kind(), BusKind::Embedded);
    assert_eq!((none.schema(), none.partitions), ("cqrs", 3));
    let shop = none.clone().named("shop");
    assert_eq!(
        (shop.schema(), shop.topic_prefix(), shop.mongo_database()),
        ("shop", "shop.", "shop")
    );
    assert!(none.database_url.is_none() && none.mongodb_uri.is_none());

    std::env::set_var("REDIS_URL", "redis://cache:6379");
    std::env::set_var("DATABASE_URL", "postgres://db/app");
    std::env::set_var("CQRS_PARTITIONS", "5");
    std::env::set_var("CQRS_TOPIC_PREFIX", "billing.");
    let c = Connections::from_env().expect("environment");
    assert_eq!(c.bus_kind(), BusKind::Redis);
    assert_eq!(c.redis_url.as_deref(), Some("redis://cache:6379"));
    assert_eq!(c.database_url.as_deref(), Some("postgres://db/app"));
    assert_eq!((c.partitions, c.topic_prefix()), (5, "billing."));
    // A name fills only what the deployment did not give.
    let named = c.clone().named("shop");
    assert_eq!((named.topic_prefix(), named.schema()), ("billing.", "shop"));

    let flags = Connections::from_args(["--partitions", "7", "--bus", "embedded"]);
    let flags = flags.expect("flags");
    assert_eq!((flags.partitions, flags.bus_kind()), (7, BusKind::Embedded));

    std::env::set_var("CQRS_PARTITIONS", "0");
    match Connections::from_env() {
        Err(Error::Config(message)) => {
            assert!(
                message.contains("--partitions") && !message.contains("Usage"),
                "{message}"
            )
        }
        other => panic!("a partition count of 0 was taken: {:?}", other.err()),
    }
    std::env::set_var("CQRS_PARTITIONS", "3");
    std::env::set_var("CQRS_BUS", "carrier-pigeon");
    assert!(matches!(Connections::from_env(), Err(Error::Config(_))));
}
