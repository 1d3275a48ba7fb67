//! The shop as services: the product and comment write services, the catalog read service,
//! and the catalog's replay, one file each. Each is wired with one [`App`] builder from the
//! framework's backends: PostgreSQL (`cqrs-postgres`) for the event store, Kafka
//! (`cqrs-kafka`), RabbitMQ (`cqrs-rabbitmq`), Redis (`cqrs-redis`) or SQS (`cqrs-sqs`)
//! between services, MongoDB (`cqrs-mongo`) for the catalog; the embedded in-memory backends
//! wherever no address is given.

mod catalog;
mod comment;
mod product;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use cqrs_axum::Service;
use cqrs_core::app::AppBuilder;
use cqrs_core::memory::Embedded;
use cqrs_core::{App, TrackingProcessor};
use cqrs_core::{Backoff, BoxError, CatchUpProgress, Error, ErrorPolicy, EventReader};
use cqrs_kafka::{KafkaBus, KafkaConfig};
use cqrs_mongo::Mongo;
use cqrs_postgres::Postgres;
use cqrs_rabbitmq::{RabbitBus, RabbitConfig};
use cqrs_redis::{RedisBus, RedisConfig};
use cqrs_sqs::{SqsBus, SqsConfig};
use tokio::sync::OnceCell;

pub use self::catalog::{catalog_service, CatalogPage, Paging};
pub use self::comment::{comment_service, EditComment, PostComment};
pub use self::product::{product_service, ChangePrice, CreateProduct, RenameProduct};
use crate::catalog::Catalog;

/// The longest product name, in characters.
pub const MAX_NAME: usize = 200;
/// The longest comment, in characters.
pub const MAX_TEXT: usize = 2000;
/// The largest page of the catalog list.
pub const MAX_PER_PAGE: u64 = 100;
/// The largest page number of the catalog list.
pub const MAX_PAGE: u64 = 1_000_000;

/// Where the services find their servers. Every address comes from a flag or the environment;
/// without one, that part runs on the embedded in-memory backend (shared by the services of
/// one process).
/// No `Debug`: connection strings and the token may carry secrets.
#[derive(Clone, Default, clap::Args)]
pub struct Connections {
    /// PostgreSQL for the event store (and the comment service's product list).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Which bus runs between the services. Without it: Kafka when brokers are given, else
    /// RabbitMQ when an AMQP URL is, else Redis when a Redis URL is, else the embedded one.
    /// SQS is chosen by name only (`--bus sqs`): its endpoint, region and credentials come
    /// from the standard AWS configuration (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_PROFILE`,
    /// ...).
    #[arg(long, env = "SHOP_BUS", value_enum)]
    pub bus: Option<BusKind>,
    /// Kafka brokers (`host:port,...`) between the services.
    #[arg(long, env = "KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// RabbitMQ (`amqp://user:password@host:port/vhost`) between the services.
    #[arg(long, env = "AMQP_URL", hide_env_values = true)]
    pub amqp_url: Option<String>,
    /// Redis Streams (`redis://[user:password@]host:port`) between the services.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// MongoDB for the catalog read model.
    #[arg(long, env = "MONGODB_URI", hide_env_values = true)]
    pub mongodb_uri: Option<String>,
    /// The PostgreSQL schema of the shop's event store.
    #[arg(long, env = "SHOP_SCHEMA", default_value = "shop")]
    pub schema: String,
    /// The prefix of the shop's Kafka topics (`<prefix>product`, `<prefix>comment`) and
    /// consumer groups.
    #[arg(long, env = "SHOP_TOPIC_PREFIX", default_value = "shop.")]
    pub topic_prefix: String,
    /// The MongoDB database of the catalog.
    #[arg(long, env = "SHOP_MONGO_DATABASE", default_value = "shop")]
    pub mongo_database: String,
    /// Partitions of each Kafka topic the shop creates, or of each aggregate type on RabbitMQ.
    #[arg(long, env = "SHOP_PARTITIONS", default_value_t = 3)]
    pub partitions: i32,
    /// Where the catalog reads events: the bus between the services (a consumer group), or
    /// the event store's log (in segments, shared by every catalog instance on one MongoDB).
    #[arg(long, env = "SHOP_CATALOG_FEED", value_enum, default_value = "bus")]
    pub catalog_feed: CatalogFeed,
    /// Segments of the catalog on the store feed: the most instances that share it.
    #[arg(long, env = "SHOP_CATALOG_SEGMENTS", default_value_t = 6)]
    pub catalog_segments: u32,
    /// How long a dead catalog instance's segments wait before another takes them, in ms.
    #[arg(long, env = "SHOP_SEGMENT_LEASE_MS", default_value_t = 10_000)]
    pub segment_lease_ms: u64,
    /// The bearer token of the ops API's retries (`POST /dead-letters/...`); without one they
    /// are disabled.
    #[arg(long, env = "SHOP_OPS_TOKEN", hide_env_values = true)]
    pub ops_token: Option<String>,
}

/// Where the catalog reads events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum CatalogFeed {
    /// A consumer group on the bus.
    #[default]
    Bus,
    /// The event store's log, in segments.
    Store,
}

/// A bus between the services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BusKind {
    /// Kafka, at `--kafka-brokers`.
    Kafka,
    /// RabbitMQ, at `--amqp-url`.
    Rabbitmq,
    /// Redis Streams, at `--redis-url`.
    Redis,
    /// Amazon SQS FIFO queues, where the AWS configuration says.
    Sqs,
    /// The in-memory bus (the services of one process only).
    Embedded,
}

impl Connections {
    /// The bus these connections choose.
    pub fn bus_kind(&self) -> BusKind {
        self.bus.unwrap_or(if self.kafka_brokers.is_some() {
            BusKind::Kafka
        } else if self.amqp_url.is_some() {
            BusKind::Rabbitmq
        } else if self.redis_url.is_some() {
            BusKind::Redis
        } else {
            BusKind::Embedded
        })
    }
}

/// The backends of one process: each server the connections name (connected on first use,
/// then shared by the services of the process), and the embedded backends for the parts they
/// do not name.
pub struct Backends {
    connections: Connections,
    embedded: Embedded,
    postgres: OnceCell<Option<Postgres>>,
    mongo: OnceCell<Option<Mongo>>,
    kafka: OnceCell<KafkaBus>,
    rabbit: OnceCell<RabbitBus>,
    redis: OnceCell<RedisBus>,
    sqs: OnceCell<SqsBus>,
}

impl Backends {
    /// Backends for these connections.
    pub fn new(connections: Connections) -> Self {
        Backends {
            connections,
            embedded: Embedded::default(),
            postgres: OnceCell::new(),
            mongo: OnceCell::new(),
            kafka: OnceCell::new(),
            rabbit: OnceCell::new(),
            redis: OnceCell::new(),
            sqs: OnceCell::new(),
        }
    }

    /// The connections.
    pub fn connections(&self) -> &Connections {
        &self.connections
    }

    async fn postgres(&self) -> cqrs_core::Result<Option<Postgres>> {
        let c = &self.connections;
        let connect = || async {
            let Some(url) = &c.database_url else {
                return Ok(None);
            };
            let pg = Postgres::connect(url, &c.schema).await?;
            pg.migrate().await?;
            Ok::<_, Error>(Some(pg))
        };
        Ok(self.postgres.get_or_try_init(connect).await?.clone())
    }

    async fn mongo(&self) -> cqrs_core::Result<Option<Mongo>> {
        let c = &self.connections;
        let connect = || async {
            match &c.mongodb_uri {
                Some(uri) => Ok(Some(Mongo::connect(uri, &c.mongo_database, "").await?)),
                None => Ok::<_, Error>(None),
            }
        };
        Ok(self.mongo.get_or_try_init(connect).await?.clone())
    }

    /// A write service's builder: PostgreSQL (events, checkpoints, its own views) or the
    /// embedded backends, and the bus.
    async fn write_side(&self) -> cqrs_core::Result<AppBuilder> {
        let app = App::builder().with(self.embedded.clone());
        self.with_bus(app.with(self.postgres().await?)).await
    }

    /// The catalog's builder: MongoDB or the embedded views, and the bus.
    async fn read_side(&self) -> cqrs_core::Result<AppBuilder> {
        let app = App::builder().with(self.embedded.views.clone());
        self.with_bus(app.with(self.mongo().await?)).await
    }

    /// The catalog's builder on the store feed: the event store and the catalog's views, no
    /// bus.
    async fn store_side(&self) -> cqrs_core::Result<AppBuilder> {
        let app = App::builder()
            .with(self.embedded.clone())
            .with(self.postgres().await?);
        Ok(app
            .with(self.embedded.views.clone())
            .with(self.mongo().await?))
    }

    /// The event store and the catalog's views, no bus: what the replay reads and writes.
    async fn stores(&self) -> cqrs_core::Result<App> {
        self.store_side().await?.build()
    }

    /// The bus between the services: Kafka, RabbitMQ, Redis, SQS, or the embedded one.
    async fn with_bus(&self, app: AppBuilder) -> cqrs_core::Result<AppBuilder> {
        let c = &self.connections;
        let missing = |flag: &str| Error::Config(format!("the chosen bus needs {flag}"));
        Ok(match c.bus_kind() {
            BusKind::Embedded => app.with(self.embedded.bus.clone()),
            BusKind::Kafka => {
                let brokers = c.kafka_brokers.as_deref();
                let config = KafkaConfig::new(
                    brokers.ok_or_else(|| missing("--kafka-brokers"))?,
                    &c.topic_prefix,
                )?
                .partitions(c.partitions)
                .session_timeout(Duration::from_secs(6))
                // A publish to a broker that is down fails after this; the relay retries.
                .message_timeout(Duration::from_secs(3));
                app.with(
                    self.kafka
                        .get_or_try_init(|| async { KafkaBus::new(config) })
                        .await?
                        .clone(),
                )
            }
            BusKind::Rabbitmq => {
                let url = c.amqp_url.as_deref().ok_or_else(|| missing("--amqp-url"))?;
                // The groups' queues exist before their services first start, so nothing
                // published earlier misses them.
                let config = RabbitConfig::new(url, &c.topic_prefix)?
                    .partitions(u32::try_from(c.partitions.max(1)).unwrap_or(1))
                    .groups([self.group("catalog"), self.group("comment-service")])?
                    .publish_timeout(Duration::from_secs(3));
                app.with(
                    self.rabbit
                        .get_or_init(|| async { RabbitBus::new(config) })
                        .await
                        .clone(),
                )
            }
            BusKind::Redis => {
                let url = c
                    .redis_url
                    .as_deref()
                    .ok_or_else(|| missing("--redis-url"))?;
                // The groups exist on every stream before their services first start, so
                // trimming keeps what they have not read.
                let config = RedisConfig::new(url, &c.topic_prefix)?
                    .partitions(u32::try_from(c.partitions.max(1)).unwrap_or(1))
                    .groups([self.group("catalog"), self.group("comment-service")])?
                    // A killed instance's partitions move after this, like Kafka's session.
                    .lease(Duration::from_secs(6))
                    .timeout(Duration::from_secs(3));
                app.with(
                    self.redis
                        .get_or_try_init(|| async { RedisBus::new(config) })
                        .await?
                        .clone(),
                )
            }
            BusKind::Sqs => {
                // The groups' queues exist before their services first start.
                let config = SqsConfig::new(&c.topic_prefix)?
                    .groups([self.group("catalog"), self.group("comment-service")])?
                    // A killed instance's messages come back after this.
                    .visibility(Duration::from_secs(6));
                app.with(
                    self.sqs
                        .get_or_init(|| SqsBus::from_env(config))
                        .await
                        .clone(),
                )
            }
        })
    }

    /// A consumer group's name, unique to this shop's topics.
    pub fn group(&self, name: &str) -> String {
        format!("{}{name}", self.connections.topic_prefix)
    }

    /// A service of `app` answering `routes`, with the ops API (retries behind
    /// `--ops-token`).
    fn service(&self, name: &str, app: App, routes: Router) -> Service {
        Service::new(name, app, routes).ops_token(self.connections.ops_token.clone())
    }
}

/// Retry a failing handler a few times, then dead-letter the event and go on.
fn policy() -> ErrorPolicy {
    let backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
    ErrorPolicy::retry(3, backoff).then_dead_letter()
}

/// A new id, for a resource created without one.
fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// The relays' backoff while the bus is down.
fn relay_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(100), Duration::from_secs(2))
}

/// Rebuilds the catalog from the event store: wipes it, then replays every committed event,
/// calling `progress` after each batch. Returns the number of events replayed and the app whose
/// views hold the catalog. The views record each stream's version, so the catalog service's
/// consumer group takes over where the replay ended without applying anything twice. Stop the
/// catalog service while it runs.
///
/// # Errors
/// A backend error.
pub async fn replay_catalog(
    backends: &Backends,
    progress: impl FnMut(CatchUpProgress) + Send,
) -> Result<(u64, App), BoxError> {
    // No start-up check of the store: an event the catalog cannot decode is dead-lettered
    // with its reason, as the live service does, rather than stopping the replay.
    let app = backends.stores().await?;
    let replay = TrackingProcessor::new(Catalog, app.views().store.clone())
        .track_stream_versions()
        .error_policy(policy());
    replay.reset().await?;
    let store: Arc<dyn EventReader> = app.event_store().clone();
    Ok((replay.catch_up_with_progress(store, progress).await?, app))
}
