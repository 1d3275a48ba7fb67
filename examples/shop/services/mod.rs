//! The shop as services: the product and comment write services, the catalog read service,
//! and the catalog's replay, one file each. Each is wired with one [`App`] builder from the
//! framework's backends: PostgreSQL (`cqrs-postgres`) for the event store, Kafka
//! (`cqrs-kafka`) or RabbitMQ (`cqrs-rabbitmq`) between services, MongoDB (`cqrs-mongo`) for
//! the catalog; the embedded in-memory backends wherever no address is given.

mod catalog;
mod comment;
mod product;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use cqrs_core::app::{AppBuilder, Ops, Status, Views};
use cqrs_core::memory::{MemoryCheckpointStore, MemoryEventBus, MemoryEventStore, MemoryViewStore};
use cqrs_core::{App, TrackingProcessor};
use cqrs_core::{Backoff, BoxError, CatchUpProgress, Error, ErrorPolicy, EventReader, EventStore};
use cqrs_kafka::{KafkaBus, KafkaConfig};
use cqrs_mongo::Mongo;
use cqrs_postgres::Postgres;
use cqrs_rabbitmq::{RabbitBus, RabbitConfig};
use tokio::sync::OnceCell;

pub use self::catalog::{catalog_service, CatalogPage, DeadLetterInfo, Paging};
pub use self::comment::{comment_service, EditComment, PostComment};
pub use self::product::{product_service, ChangePrice, CreateProduct, RenameProduct};
use crate::catalog::Catalog;
use crate::http::{no_route, Health, Json, ProcessorHealth, RelayHealth, MAX_BODY};

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
#[derive(Clone, Default, clap::Args)]
pub struct Connections {
    /// PostgreSQL for the event store (and the comment service's product list).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Which bus runs between the services. Without it: Kafka when brokers are given, else
    /// RabbitMQ when an AMQP URL is, else the embedded one.
    #[arg(long, env = "SHOP_BUS", value_enum)]
    pub bus: Option<BusKind>,
    /// Kafka brokers (`host:port,...`) between the services.
    #[arg(long, env = "KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// RabbitMQ (`amqp://user:password@host:port/vhost`) between the services.
    #[arg(long, env = "AMQP_URL", hide_env_values = true)]
    pub amqp_url: Option<String>,
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
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Connection strings may carry passwords: say only whether one is set.
        let set = |o: &Option<String>| if o.is_some() { "<set>" } else { "<embedded>" };
        f.debug_struct("Connections")
            .field("database_url", &set(&self.database_url))
            .field("bus", &self.bus)
            .field("kafka_brokers", &self.kafka_brokers)
            .field("amqp_url", &set(&self.amqp_url))
            .field("mongodb_uri", &set(&self.mongodb_uri))
            .field("schema", &self.schema)
            .field("topic_prefix", &self.topic_prefix)
            .field("mongo_database", &self.mongo_database)
            .field("partitions", &self.partitions)
            .finish()
    }
}

/// A bus between the services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BusKind {
    /// Kafka, at `--kafka-brokers`.
    Kafka,
    /// RabbitMQ, at `--amqp-url`.
    Rabbitmq,
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
        } else {
            BusKind::Embedded
        })
    }
}

/// The backends of one process, connected on first use: a service connects only to the
/// servers it needs, and the services of one process share the embedded ones.
pub struct Backends {
    connections: Connections,
    store: Arc<MemoryEventStore>,
    bus: Arc<MemoryEventBus>,
    checkpoints: Arc<MemoryCheckpointStore>,
    write_views: Arc<MemoryViewStore>,
    read_views: Arc<MemoryViewStore>,
    postgres: OnceCell<Postgres>,
    kafka: OnceCell<KafkaBus>,
    rabbit: OnceCell<RabbitBus>,
    mongo: OnceCell<Mongo>,
}

impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backends")
            .field("connections", &self.connections)
            .finish_non_exhaustive()
    }
}

impl Backends {
    /// Backends for these connections.
    pub fn new(connections: Connections) -> Self {
        Backends {
            connections,
            store: Arc::new(MemoryEventStore::new()),
            bus: Arc::new(MemoryEventBus::new(3)),
            checkpoints: Arc::new(MemoryCheckpointStore::new()),
            write_views: Arc::new(MemoryViewStore::new()),
            read_views: Arc::new(MemoryViewStore::new()),
            postgres: OnceCell::new(),
            kafka: OnceCell::new(),
            rabbit: OnceCell::new(),
            mongo: OnceCell::new(),
        }
    }

    /// The connections.
    pub fn connections(&self) -> &Connections {
        &self.connections
    }

    async fn postgres(&self) -> cqrs_core::Result<Option<&Postgres>> {
        let Some(url) = &self.connections.database_url else {
            return Ok(None);
        };
        let pg = self
            .postgres
            .get_or_try_init(|| async {
                let pg = Postgres::connect(url, &self.connections.schema).await?;
                pg.migrate().await?;
                Ok::<_, Error>(pg)
            })
            .await?;
        Ok(Some(pg))
    }

    /// The event store: PostgreSQL, or the embedded one.
    ///
    /// # Errors
    /// PostgreSQL cannot be reached or migrated.
    pub async fn event_store(&self) -> cqrs_core::Result<Arc<dyn EventStore>> {
        Ok(match self.postgres().await? {
            Some(pg) => Arc::new(pg.event_store()),
            None => self.store.clone(),
        })
    }

    /// A write service's parts: PostgreSQL (events, checkpoints, its own views), or the
    /// embedded ones; and the bus.
    async fn write_side(&self, app: AppBuilder) -> cqrs_core::Result<AppBuilder> {
        let app = match self.postgres().await? {
            Some(pg) => app.with(pg.clone()),
            None => app
                .with(self.store.clone())
                .with(self.checkpoints.clone())
                .with(self.write_views.clone()),
        };
        self.bus(app).await
    }

    async fn mongo(&self) -> cqrs_core::Result<Option<&Mongo>> {
        let Some(uri) = &self.connections.mongodb_uri else {
            return Ok(None);
        };
        let mongo = self
            .mongo
            .get_or_try_init(|| Mongo::connect(uri, &self.connections.mongo_database, ""))
            .await?;
        Ok(Some(mongo))
    }

    /// The catalog's read model: MongoDB, or the embedded one.
    async fn read_side(&self, app: AppBuilder) -> cqrs_core::Result<AppBuilder> {
        Ok(match self.mongo().await? {
            Some(mongo) => app.with(mongo.clone()),
            None => app.with(self.read_views.clone()),
        })
    }

    /// The catalog's read model, as its three halves.
    ///
    /// # Errors
    /// MongoDB cannot be reached.
    pub async fn read_views(&self) -> cqrs_core::Result<Views> {
        Ok(match self.mongo().await? {
            Some(mongo) => Views::of(mongo.view_store()),
            None => Views::of(self.read_views.clone()),
        })
    }

    /// The bus between the services: Kafka, RabbitMQ, or the embedded one.
    async fn bus(&self, app: AppBuilder) -> cqrs_core::Result<AppBuilder> {
        let c = &self.connections;
        let missing = |flag: &str| Error::Config(format!("the chosen bus needs {flag}"));
        match c.bus_kind() {
            BusKind::Embedded => Ok(app.with(self.bus.clone())),
            BusKind::Kafka => {
                let brokers = c
                    .kafka_brokers
                    .as_deref()
                    .ok_or_else(|| missing("--kafka-brokers"))?;
                let bus = self
                    .kafka
                    .get_or_try_init(|| async {
                        let config = KafkaConfig::new(brokers, &c.topic_prefix)?
                            .partitions(c.partitions)
                            .session_timeout(Duration::from_secs(6))
                            // A publish to a broker that is down fails after this; the relay
                            // retries.
                            .message_timeout(Duration::from_secs(3));
                        KafkaBus::new(config)
                    })
                    .await?;
                Ok(app.with(bus.clone()))
            }
            BusKind::Rabbitmq => {
                let url = c.amqp_url.as_deref().ok_or_else(|| missing("--amqp-url"))?;
                let bus = self
                    .rabbit
                    .get_or_try_init(|| async {
                        // The groups' queues exist before their services first start, so
                        // nothing published earlier misses them.
                        let config = RabbitConfig::new(url, &c.topic_prefix)?
                            .partitions(u32::try_from(c.partitions.max(1)).unwrap_or(1))
                            .groups([self.group("catalog"), self.group("comment-service")])?
                            .publish_timeout(Duration::from_secs(3));
                        Ok::<_, Error>(RabbitBus::new(config))
                    })
                    .await?;
                Ok(app.with(bus.clone()))
            }
        }
    }

    /// A consumer group's name, unique to this shop's topics.
    pub fn group(&self, name: &str) -> String {
        format!("{}{name}", self.connections.topic_prefix)
    }
}

/// A running service: its HTTP routes, and the app behind them.
#[derive(Debug)]
pub struct Service {
    /// The HTTP routes.
    pub router: Router,
    /// The relays and processors, the gateway.
    pub app: App,
}

impl Service {
    /// Stops the service's relays and processors, after the work under way.
    ///
    /// # Errors
    /// The error that had stopped one of them.
    pub async fn stop(self) -> Result<(), BoxError> {
        Ok(self.app.shutdown().await?)
    }
}

/// Retry a failing handler a few times, then dead-letter the event and go on.
fn policy() -> ErrorPolicy {
    ErrorPolicy::retry(
        3,
        Backoff::new(Duration::from_millis(50), Duration::from_secs(1)),
    )
    .then_dead_letter()
}

/// The relays' backoff while the bus is down.
fn relay_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(100), Duration::from_secs(2))
}

/// The service's health, as `GET /health` answers it: `ok`, or `degraded` (with 503) once a
/// relay or processor has stopped. It answers during an outage too (the lags unknown).
async fn health(service: &'static str, ops: &Ops) -> (StatusCode, Json<Health>) {
    let report = ops.health().await;
    let degraded = report.status == Status::Degraded;
    let health = Health {
        status: if degraded { "degraded" } else { "ok" }.into(),
        service: service.into(),
        relay: report.relays.first().map(|r| RelayHealth {
            breaker: r.breaker,
            position: r.position,
        }),
        processors: report
            .processors
            .into_iter()
            .map(|p| ProcessorHealth {
                name: p.name,
                position: p.position,
                stopped: p.stopped,
            })
            .collect(),
    };
    let code = if degraded {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (code, Json(health))
}

/// The routes every service has: `/health`, JSON 404s, the body limit.
fn with_common_layers(router: Router, service: &'static str, ops: Ops) -> Router {
    router
        .route(
            "/health",
            get(move || {
                let ops = ops.clone();
                async move { health(service, &ops).await }
            }),
        )
        .fallback(no_route)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(crate::http::refuse_large_bodies))
}

/// Serves `router` on `listen` until Ctrl-C or SIGTERM. Prints `<service> listening on
/// http://<address>` on stdout once it accepts connections.
///
/// # Errors
/// The address cannot be bound.
pub async fn serve(service: &str, router: Router, listen: SocketAddr) -> Result<(), BoxError> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let address = listener.local_addr()?;
    println!("{service} listening on http://{address}");
    tracing::info!(service, %address, "listening");
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    tracing::info!(service, "stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

/// Rebuilds the catalog from the event store: wipes it, then replays every committed event,
/// calling `progress` after each batch. Returns the number of events replayed. The views
/// record each stream's version, so the catalog service's consumer group takes over where the
/// replay ended without applying anything twice. Stop the catalog service while it runs.
///
/// # Errors
/// A backend error.
pub async fn replay_catalog(
    backends: &Backends,
    progress: impl FnMut(CatchUpProgress) + Send,
) -> Result<u64, BoxError> {
    // No start-up check of the store: an event the catalog cannot decode is dead-lettered
    // with its reason, as the live service does, rather than stopping the replay.
    let store = backends.event_store().await?;
    let views = backends.read_views().await?;
    let replay = TrackingProcessor::new(Catalog, views.store)
        .track_stream_versions()
        .error_policy(policy());
    replay.reset().await?;
    Ok(replay
        .catch_up_with_progress(store as Arc<dyn EventReader>, progress)
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_core::testing::raw_envelope;

    /// A processor that stops (here on an event no type is registered for) turns the
    /// service's health from `ok` to `degraded`, answered with 503 and the reason.
    #[tokio::test]
    async fn health_reports_a_stopped_processor() {
        let store = Arc::new(MemoryEventStore::new());
        let app = App::builder()
            .with(store.clone())
            .projection(Catalog, |p| p.idle_wait(Duration::from_millis(20)))
            .build()
            .expect("build");
        let (code, Json(report)) = health("catalog", &app.ops()).await;
        assert_eq!((code, report.status.as_str()), (StatusCode::OK, "ok"));
        assert_eq!(report.processors[0].stopped, None);

        store.insert_raw(vec![raw_envelope(
            crate::product::PRODUCT,
            "p-1",
            1,
            1,
            "shop.NoSuchEvent",
            1,
            "{}",
        )]);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let report = loop {
            let (code, Json(report)) = health("catalog", &app.ops()).await;
            if code == StatusCode::SERVICE_UNAVAILABLE {
                break report;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the processor kept running"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert_eq!(report.status, "degraded");
        let why = report.processors[0].stopped.clone().unwrap_or_default();
        assert!(why.contains("shop.NoSuchEvent"), "{why}");
        assert!(
            app.shutdown().await.is_err(),
            "the processor's error comes back"
        );
    }
}
