//! The shop as services: the product and comment write services, the catalog read service,
//! and the catalog's replay. Each is wired from the framework's adapters only: PostgreSQL
//! (`cqrs-postgres`) for the event store, Kafka (`cqrs-kafka`) between services, MongoDB
//! (`cqrs-mongo`) for the catalog; the embedded in-memory backends wherever no address is
//! given.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use axum::Router;
use cqrs_core::memory::{MemoryCheckpointStore, MemoryEventBus, MemoryEventStore, MemoryViewStore};
use cqrs_core::processor::{EndWatch, ProcessorHandle};
use cqrs_core::relay::RelayHandle;
use cqrs_core::{
    registry, Backoff, BoxError, Breaker, BusFeed, CatchUpProgress, CheckpointStore,
    CommandGateway, DeadLetterStore, Error, ErrorPolicy, EventBus, EventReader, EventStore,
    ReadModel, Relay, RetryReport, TrackingProcessor, ViewQuery, ViewStore,
};
use cqrs_kafka::{KafkaBus, KafkaConfig};
use cqrs_mongo::Mongo;
use cqrs_postgres::Postgres;
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, OnceCell};

use crate::catalog::{Catalog, CatalogEntry, CatalogQueries};
use crate::comment::{CommentCommand, CommentError, KnownProducts, COMMENT};
use crate::http::{
    check_id, check_len, no_route, Accepted, ApiError, Health, Json, Path, ProcessorHealth, Query,
    RelayHealth, MAX_BODY,
};
use crate::product::{ProductCommand, ProductError, PRODUCT};

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
    /// Kafka brokers (`host:port,...`) between the services.
    #[arg(long, env = "KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
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
    /// Partitions of each Kafka topic the shop creates.
    #[arg(long, env = "SHOP_PARTITIONS", default_value_t = 3)]
    pub partitions: i32,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Connection strings may carry passwords: say only whether one is set.
        let set = |o: &Option<String>| if o.is_some() { "<set>" } else { "<embedded>" };
        f.debug_struct("Connections")
            .field("database_url", &set(&self.database_url))
            .field("kafka_brokers", &self.kafka_brokers)
            .field("mongodb_uri", &set(&self.mongodb_uri))
            .field("schema", &self.schema)
            .field("topic_prefix", &self.topic_prefix)
            .field("mongo_database", &self.mongo_database)
            .field("partitions", &self.partitions)
            .finish()
    }
}

/// A read-model store seen through the three traits the services use.
#[derive(Clone)]
pub struct Views {
    /// Where processors commit.
    pub store: Arc<dyn ViewStore>,
    /// What queries read.
    pub query: Arc<dyn ViewQuery>,
    /// The dead letters.
    pub dead_letters: Arc<dyn DeadLetterStore>,
}

impl Views {
    fn of<S: ViewStore + ViewQuery + DeadLetterStore + 'static>(store: Arc<S>) -> Self {
        Views {
            store: store.clone(),
            query: store.clone(),
            dead_letters: store,
        }
    }
}

/// The backends of one process, connected on first use: a service connects only to the
/// servers it needs.
pub struct Backends {
    connections: Connections,
    store: Arc<MemoryEventStore>,
    bus: Arc<MemoryEventBus>,
    checkpoints: Arc<MemoryCheckpointStore>,
    write_views: Arc<MemoryViewStore>,
    read_views: Arc<MemoryViewStore>,
    postgres: OnceCell<Postgres>,
    kafka: OnceCell<Arc<KafkaBus>>,
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

    /// The checkpoints of the relays: in PostgreSQL beside the events, or embedded.
    ///
    /// # Errors
    /// PostgreSQL cannot be reached.
    pub async fn checkpoints(&self) -> cqrs_core::Result<Arc<dyn CheckpointStore>> {
        Ok(match self.postgres().await? {
            Some(pg) => Arc::new(pg.checkpoint_store()),
            None => self.checkpoints.clone(),
        })
    }

    /// The write services' own read models (the comment service's product list).
    ///
    /// # Errors
    /// PostgreSQL cannot be reached.
    pub async fn write_views(&self) -> cqrs_core::Result<Views> {
        Ok(match self.postgres().await? {
            Some(pg) => Views::of(Arc::new(pg.view_store())),
            None => Views::of(self.write_views.clone()),
        })
    }

    /// The bus between the services: Kafka, or the embedded one.
    ///
    /// # Errors
    /// A Kafka configuration librdkafka refuses.
    pub async fn bus(&self) -> cqrs_core::Result<Arc<dyn EventBus>> {
        let Some(brokers) = &self.connections.kafka_brokers else {
            return Ok(self.bus.clone());
        };
        let bus = self
            .kafka
            .get_or_try_init(|| async {
                let config = KafkaConfig::new(brokers.as_str(), &self.connections.topic_prefix)?
                    .partitions(self.connections.partitions)
                    .session_timeout(Duration::from_secs(6))
                    // A publish to a broker that is down fails after this; the relay retries.
                    .message_timeout(Duration::from_secs(3));
                Ok::<_, Error>(Arc::new(KafkaBus::new(config)?))
            })
            .await?;
        Ok(bus.clone())
    }

    /// The catalog's read model: MongoDB, or the embedded one.
    ///
    /// # Errors
    /// MongoDB cannot be reached.
    pub async fn read_views(&self) -> cqrs_core::Result<Views> {
        let Some(uri) = &self.connections.mongodb_uri else {
            return Ok(Views::of(self.read_views.clone()));
        };
        let mongo = self
            .mongo
            .get_or_try_init(|| Mongo::connect(uri, &self.connections.mongo_database, ""))
            .await?;
        Ok(Views::of(Arc::new(mongo.view_store())))
    }

    /// A consumer group's name, unique to this shop's topics.
    pub fn group(&self, name: &str) -> String {
        format!("{}{name}", self.connections.topic_prefix)
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

/// What `GET /health` reports on: the relay and the processors of a service.
#[derive(Clone, Default)]
struct Watched {
    relay: Option<(watch::Receiver<Breaker>, watch::Receiver<u64>)>,
    processors: Vec<(String, watch::Receiver<u64>, EndWatch)>,
}

impl Watched {
    fn relay(mut self, relay: &RelayHandle) -> Self {
        self.relay = Some((relay.watch_breaker(), relay.watch_position()));
        self
    }

    fn processor(mut self, processor: &ProcessorHandle) -> Self {
        self.processors.push((
            processor.name().to_owned(),
            processor.watch_position(),
            processor.watch_ended(),
        ));
        self
    }

    /// The service's health: `ok`, or `degraded` (answered with 503) once a processor has
    /// stopped: its read model no longer follows the events.
    fn health(&self, service: &str) -> (StatusCode, Health) {
        let processors: Vec<ProcessorHealth> = self
            .processors
            .iter()
            .map(|(name, position, ended)| ProcessorHealth {
                name: name.clone(),
                position: *position.borrow(),
                stopped: ended.why(),
            })
            .collect();
        let degraded = processors.iter().any(|p| p.stopped.is_some());
        let health = Health {
            status: if degraded { "degraded" } else { "ok" }.into(),
            service: service.into(),
            relay: self.relay.as_ref().map(|(breaker, position)| RelayHealth {
                breaker: *breaker.borrow(),
                position: *position.borrow(),
            }),
            processors,
        };
        let code = if degraded {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        (code, health)
    }
}

fn with_common_layers(router: Router, service: &'static str, watched: Watched) -> Router {
    router
        .route(
            "/health",
            get(move || {
                let (code, health) = watched.health(service);
                async move { (code, Json(health)) }
            }),
        )
        .fallback(no_route)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(crate::http::refuse_large_bodies))
}

// ---------------------------------------------------------------------------------------------
// The product service.

/// `POST /products`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateProduct {
    /// The new product's id; one is generated when absent.
    #[serde(default)]
    pub product_id: Option<String>,
    /// Its name.
    pub name: String,
    /// Its price in cents.
    pub price_cents: i64,
}

/// `PUT /products/{id}/name`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenameProduct {
    /// The new name.
    pub name: String,
}

/// `PUT /products/{id}/price`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangePrice {
    /// The new price in cents.
    pub price_cents: i64,
}

fn product_rejected(error: ProductError) -> ApiError {
    let message = error.to_string();
    match error {
        ProductError::EmptyName => ApiError::invalid("empty_name", message),
        ProductError::NegativePrice(_) => ApiError::invalid("negative_price", message),
        ProductError::AlreadyExists(_) => {
            ApiError::new(StatusCode::CONFLICT, "already_exists", message)
        }
        ProductError::NotFound(_) => ApiError::not_found(message),
    }
}

/// Sends a command and answers with what it recorded, or with its failure mapped to HTTP
/// (`rejected` maps the aggregate's own rejections).
async fn send<C>(
    gateway: &CommandGateway,
    command: C,
    rejected: fn(<C::Aggregate as cqrs_core::Aggregate>::Error) -> ApiError,
) -> Result<Json<Accepted>, ApiError>
where
    C: cqrs_core::Command,
    C::Aggregate: cqrs_core::Aggregate<Command = C>,
{
    let id = command.aggregate_id().to_owned();
    let events = gateway
        .send(command)
        .await
        .map_err(|e| ApiError::from_command(e, rejected))?;
    Ok(Json(Accepted::new(id, &events)))
}

async fn send_product(
    gateway: &CommandGateway,
    command: ProductCommand,
) -> Result<Json<Accepted>, ApiError> {
    send(gateway, command, product_rejected).await
}

async fn create_product(
    State(gateway): State<Arc<CommandGateway>>,
    Json(body): Json<CreateProduct>,
) -> Result<impl IntoResponse, ApiError> {
    let product_id = body
        .product_id
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    check_id("product_id", &product_id)?;
    check_len("name", &body.name, MAX_NAME)?;
    let command = ProductCommand::Create {
        product_id,
        name: body.name,
        price_cents: body.price_cents,
    };
    Ok((StatusCode::CREATED, send_product(&gateway, command).await?))
}

async fn rename_product(
    State(gateway): State<Arc<CommandGateway>>,
    Path(product_id): Path<String>,
    Json(body): Json<RenameProduct>,
) -> Result<Json<Accepted>, ApiError> {
    check_id("product_id", &product_id)?;
    check_len("name", &body.name, MAX_NAME)?;
    send_product(
        &gateway,
        ProductCommand::Rename {
            product_id,
            name: body.name,
        },
    )
    .await
}

async fn change_price(
    State(gateway): State<Arc<CommandGateway>>,
    Path(product_id): Path<String>,
    Json(body): Json<ChangePrice>,
) -> Result<Json<Accepted>, ApiError> {
    check_id("product_id", &product_id)?;
    send_product(
        &gateway,
        ProductCommand::ChangePrice {
            product_id,
            price_cents: body.price_cents,
        },
    )
    .await
}

fn product_routes(gateway: Arc<CommandGateway>, watched: Watched) -> Router {
    let routes = Router::new()
        .route("/products", post(create_product))
        .route("/products/{id}/name", put(rename_product))
        .route("/products/{id}/price", put(change_price))
        .with_state(gateway);
    with_common_layers(routes, "product", watched)
}

/// A running write service: its routes and its relay to the bus.
#[derive(Debug)]
pub struct WriteService {
    /// The HTTP routes.
    pub router: Router,
    /// The relay publishing the service's events.
    pub relay: RelayHandle,
    /// The service's own projections, if any.
    pub processors: Vec<ProcessorHandle>,
}

impl WriteService {
    /// Stops the relay and the processors.
    ///
    /// # Errors
    /// The error that had stopped one of them.
    pub async fn stop(self) -> Result<(), BoxError> {
        self.relay.stop().await?;
        for processor in self.processors {
            processor.stop().await?;
        }
        Ok(())
    }
}

async fn write_side(
    backends: &Backends,
    relay: &str,
    aggregate_type: &str,
) -> Result<(Arc<CommandGateway>, RelayHandle), BoxError> {
    let store = backends.event_store().await?;
    // This service must decode its own aggregate's events; the others' are not its concern.
    registry()
        .check_store_for(store.as_ref(), &[aggregate_type])
        .await?;
    let gateway = Arc::new(CommandGateway::builder(store.clone()).cache(10_000).build());
    let relay = Relay::new(
        relay,
        store as Arc<dyn EventReader>,
        backends.bus().await?,
        backends.checkpoints().await?,
    )
    .only([aggregate_type])
    .backoff(Backoff::new(
        Duration::from_millis(100),
        Duration::from_secs(2),
    ))
    .spawn();
    Ok((gateway, relay))
}

/// Starts the product service: the gateway on the event store, the relay of product events.
///
/// # Errors
/// A backend cannot be reached, or the store holds events this build does not know.
pub async fn product_service(backends: &Backends) -> Result<WriteService, BoxError> {
    let (gateway, relay) = write_side(backends, "product-relay", PRODUCT).await?;
    Ok(WriteService {
        router: product_routes(gateway, Watched::default().relay(&relay)),
        relay,
        processors: Vec::new(),
    })
}

// ---------------------------------------------------------------------------------------------
// The comment service.

/// `POST /comments`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostComment {
    /// The new comment's id; one is generated when absent.
    #[serde(default)]
    pub comment_id: Option<String>,
    /// The product it is about.
    pub product_id: String,
    /// Who writes it.
    pub author: String,
    /// The text.
    pub text: String,
    /// From 1 to 5.
    pub rating: i64,
}

/// `PUT /comments/{id}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EditComment {
    /// The new text.
    pub text: String,
    /// The new rating, from 1 to 5.
    pub rating: i64,
}

fn check_rating(rating: i64) -> Result<u8, ApiError> {
    match u8::try_from(rating) {
        Ok(r @ 1..=5) => Ok(r),
        _ => Err(ApiError::invalid(
            "rating_out_of_range",
            format!("a rating must be from 1 to 5 (got {rating})"),
        )),
    }
}

fn comment_rejected(error: CommentError) -> ApiError {
    let message = error.to_string();
    match error {
        CommentError::RatingOutOfRange(_) => ApiError::invalid("rating_out_of_range", message),
        CommentError::EmptyText => ApiError::invalid("empty_text", message),
        CommentError::EmptyAuthor => ApiError::invalid("empty_author", message),
        CommentError::NoProduct => ApiError::invalid("no_product", message),
        CommentError::AlreadyExists(_) => {
            ApiError::new(StatusCode::CONFLICT, "already_exists", message)
        }
        CommentError::NotFound(_) => ApiError::not_found(message),
        CommentError::Deleted(_) => ApiError::new(StatusCode::GONE, "deleted", message),
    }
}

#[derive(Clone)]
struct CommentState {
    gateway: Arc<CommandGateway>,
    products: ReadModel<KnownProducts>,
}

async fn send_comment(
    gateway: &CommandGateway,
    command: CommentCommand,
) -> Result<Json<Accepted>, ApiError> {
    send(gateway, command, comment_rejected).await
}

async fn post_comment(
    State(state): State<CommentState>,
    Json(body): Json<PostComment>,
) -> Result<impl IntoResponse, ApiError> {
    let comment_id = body
        .comment_id
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    check_id("comment_id", &comment_id)?;
    check_id("product_id", &body.product_id)?;
    check_len("author", &body.author, MAX_NAME)?;
    check_len("text", &body.text, MAX_TEXT)?;
    let rating = check_rating(body.rating)?;
    // The service's own projection of product events answers, not the product service.
    let known = state
        .products
        .get(&body.product_id)
        .await
        .map_err(|e| ApiError::from_framework(&e))?;
    if known.is_none() {
        return Err(ApiError::invalid(
            "unknown_product",
            format!(
                "product `{}` is not known to the comment service (a product created a moment \
                 ago may take a little while to arrive)",
                body.product_id
            ),
        ));
    }
    let command = CommentCommand::Post {
        comment_id,
        product_id: body.product_id,
        author: body.author,
        text: body.text,
        rating,
    };
    Ok((
        StatusCode::CREATED,
        send_comment(&state.gateway, command).await?,
    ))
}

async fn edit_comment(
    State(state): State<CommentState>,
    Path(comment_id): Path<String>,
    Json(body): Json<EditComment>,
) -> Result<Json<Accepted>, ApiError> {
    check_id("comment_id", &comment_id)?;
    check_len("text", &body.text, MAX_TEXT)?;
    let rating = check_rating(body.rating)?;
    send_comment(
        &state.gateway,
        CommentCommand::Edit {
            comment_id,
            text: body.text,
            rating,
        },
    )
    .await
}

async fn delete_comment(
    State(state): State<CommentState>,
    Path(comment_id): Path<String>,
) -> Result<Json<Accepted>, ApiError> {
    check_id("comment_id", &comment_id)?;
    send_comment(&state.gateway, CommentCommand::Delete { comment_id }).await
}

/// Starts the comment service: the gateway, the relay of comment events, and its own
/// projection of product events from the bus (which products exist).
///
/// # Errors
/// A backend cannot be reached, or the store holds events this build does not know.
pub async fn comment_service(backends: &Backends) -> Result<WriteService, BoxError> {
    let (gateway, relay) = write_side(backends, "comment-relay", COMMENT).await?;
    let views = backends.write_views().await?;
    let feed = BusFeed::new(
        backends.bus().await?,
        backends.group("comment-service"),
        [PRODUCT],
    );
    let products = TrackingProcessor::new(KnownProducts, views.store.clone())
        .error_policy(policy())
        .spawn(Arc::new(feed));
    let state = CommentState {
        gateway,
        products: ReadModel::new(views.query),
    };
    let routes = Router::new()
        .route("/comments", post(post_comment))
        .route("/comments/{id}", put(edit_comment).delete(delete_comment))
        .with_state(state);
    let watched = Watched::default().relay(&relay).processor(&products);
    Ok(WriteService {
        router: with_common_layers(routes, "comment", watched),
        relay,
        processors: vec![products],
    })
}

// ---------------------------------------------------------------------------------------------
// The catalog service.

/// `GET /products`'s query.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Paging {
    /// The page, from 0.
    #[serde(default)]
    pub page: u64,
    /// Entries per page (1 to 100, default 20).
    #[serde(default = "default_per_page")]
    pub per_page: u64,
}

fn default_per_page() -> u64 {
    20
}

/// `GET /products`'s answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogPage {
    /// The page, from 0.
    pub page: u64,
    /// Entries per page.
    pub per_page: u64,
    /// Products in the whole catalog.
    pub total: u64,
    /// This page's entries, by name then id.
    pub items: Vec<CatalogEntry>,
}

/// A dead letter as `GET /dead-letters` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterInfo {
    /// The event's id.
    pub event_id: uuid::Uuid,
    /// The event's name.
    pub event_name: String,
    /// Its stream.
    pub stream_id: String,
    /// Its version in the stream.
    pub version: u64,
    /// Its global position.
    pub position: u64,
    /// Why it could not be applied.
    pub reason: String,
}

#[derive(Clone)]
struct CatalogState {
    queries: CatalogQueries,
    dead_letters: Arc<dyn DeadLetterStore>,
    /// Applies dead letters again (beside the running processor; view revisions keep the two
    /// from overwriting each other).
    retrier: Arc<TrackingProcessor<Catalog>>,
}

async fn list_products(
    State(state): State<CatalogState>,
    Query(paging): Query<Paging>,
) -> Result<Json<CatalogPage>, ApiError> {
    if paging.page > MAX_PAGE {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_query",
            format!("`page` must be at most {MAX_PAGE}"),
        ));
    }
    if !(1..=MAX_PER_PAGE).contains(&paging.per_page) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_query",
            format!("`per_page` must be from 1 to {MAX_PER_PAGE}"),
        ));
    }
    let unavailable = |e: Error| ApiError::from_framework(&e);
    let total = state.queries.count().await.map_err(unavailable)?;
    let items = state
        .queries
        .list(paging.page, paging.per_page)
        .await
        .map_err(unavailable)?;
    Ok(Json(CatalogPage {
        page: paging.page,
        per_page: paging.per_page,
        total,
        items,
    }))
}

async fn get_product(
    State(state): State<CatalogState>,
    Path(product_id): Path<String>,
) -> Result<Json<CatalogEntry>, ApiError> {
    check_id("product_id", &product_id)?;
    match state.queries.entry(&product_id).await {
        Ok(Some(entry)) => Ok(Json(entry)),
        Ok(None) => Err(ApiError::not_found(format!(
            "product `{product_id}` is not in the catalog"
        ))),
        Err(e) => Err(ApiError::from_framework(&e)),
    }
}

async fn list_dead_letters(
    State(state): State<CatalogState>,
) -> Result<Json<Vec<DeadLetterInfo>>, ApiError> {
    let letters = state
        .dead_letters
        .dead_letters(<Catalog as cqrs_core::Projection>::NAME)
        .await
        .map_err(|e| ApiError::from_framework(&e))?;
    Ok(Json(
        letters
            .into_iter()
            .map(|d| DeadLetterInfo {
                event_id: d.envelope.metadata.event_id,
                event_name: d.envelope.event_name,
                stream_id: d.envelope.stream_id,
                version: d.envelope.version,
                position: d.envelope.position,
                reason: d.reason,
            })
            .collect(),
    ))
}

async fn retry_dead_letters(
    State(state): State<CatalogState>,
) -> Result<Json<RetryReport>, ApiError> {
    state
        .retrier
        .retry_dead_letters(state.dead_letters.as_ref())
        .await
        .map(Json)
        .map_err(|e| ApiError::from_framework(&e))
}

async fn retry_dead_letter(
    State(state): State<CatalogState>,
    Path(event_id): Path<uuid::Uuid>,
) -> Result<Json<RetryReport>, ApiError> {
    let report = state
        .retrier
        .retry_dead_letter(state.dead_letters.as_ref(), event_id)
        .await
        .map_err(|e| ApiError::from_framework(&e))?;
    if report.resolved.is_empty() && report.failed.is_empty() {
        return Err(ApiError::not_found(format!(
            "no dead letter for event `{event_id}`"
        )));
    }
    Ok(Json(report))
}

/// A running catalog service.
#[derive(Debug)]
pub struct CatalogService {
    /// The HTTP routes.
    pub router: Router,
    /// The processor feeding the catalog from the bus.
    pub processor: ProcessorHandle,
}

/// Starts the catalog service: a consumer group on the bus feeding the catalog projection
/// into the read model, and the queries over it.
///
/// # Errors
/// A backend cannot be reached.
pub async fn catalog_service(backends: &Backends) -> Result<CatalogService, BoxError> {
    let views = backends.read_views().await?;
    let feed = BusFeed::new(
        backends.bus().await?,
        backends.group("catalog"),
        [PRODUCT, COMMENT],
    );
    let processor = TrackingProcessor::new(Catalog, views.store.clone())
        .error_policy(policy())
        .spawn(Arc::new(feed));
    let state = CatalogState {
        queries: CatalogQueries::new(ReadModel::new(views.query)),
        dead_letters: views.dead_letters,
        retrier: Arc::new(TrackingProcessor::new(Catalog, views.store.clone()).view_cache(0)),
    };
    let routes = Router::new()
        .route("/products", get(list_products))
        .route("/products/{id}", get(get_product))
        .route("/dead-letters", get(list_dead_letters))
        .route("/dead-letters/retry", post(retry_dead_letters))
        .route("/dead-letters/{event_id}/retry", post(retry_dead_letter))
        .with_state(state);
    let watched = Watched::default().processor(&processor);
    Ok(CatalogService {
        router: with_common_layers(routes, "catalog", watched),
        processor,
    })
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
    use cqrs_core::StoreFeed;

    /// A processor that stops (here on an event no type is registered for) turns the
    /// service's health from `ok` to `degraded`, answered with 503 and the reason.
    #[tokio::test]
    async fn health_reports_a_stopped_processor() {
        let store = Arc::new(MemoryEventStore::new());
        let processor = TrackingProcessor::new(Catalog, Arc::new(MemoryViewStore::new()))
            .idle_wait(Duration::from_millis(20));
        let handle = processor.spawn(Arc::new(StoreFeed::new(store.clone())));
        let watched = Watched::default().processor(&handle);
        let (code, health) = watched.health("catalog");
        assert_eq!((code, health.status.as_str()), (StatusCode::OK, "ok"));
        assert_eq!(health.processors[0].stopped, None);

        store.insert_raw(vec![raw_envelope(
            PRODUCT,
            "p-1",
            1,
            1,
            "shop.NoSuchEvent",
            1,
            "{}",
        )]);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !handle.is_finished() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the processor kept running"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (code, health) = watched.health("catalog");
        assert_eq!(
            (code, health.status.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "degraded")
        );
        let why = health.processors[0].stopped.clone().unwrap_or_default();
        assert!(why.contains("shop.NoSuchEvent"), "{why}");
    }
}
