//! The shop as services: the product and comment write services, the catalog read service,
//! and the catalog's replay, one file each. Each is wired with one [`App`] builder from the
//! backends its settings name (`cqrs-config`): PostgreSQL for the event store, Kafka,
//! RabbitMQ, Redis Streams or SQS between services, MongoDB for the catalog; the embedded
//! in-memory backends wherever no address is given.

mod catalog;
mod comment;
mod product;

use std::time::Duration;

use axum::Router;
use cqrs_axum::Service;
use cqrs_config::{Backends, Connections};
use cqrs_core::TrackingProcessor;
use cqrs_core::{App, Backoff, BoxError, CatchUpProgress, ErrorPolicy};

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

/// The shop's settings: where its servers are (every address from a flag or the
/// environment, the embedded backends for the rest) and how the catalog reads.
/// No `Debug`: connection strings and the token may carry secrets.
#[derive(Clone, clap::Args)]
pub struct Settings {
    /// The servers.
    #[command(flatten)]
    pub servers: Connections,
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

/// The shop in one process: its settings and the backends they name, shared by its services.
pub struct Shop {
    settings: Settings,
    backends: Backends,
}

impl Shop {
    /// The shop on these settings. Connects to nothing yet.
    pub fn new(settings: Settings) -> Self {
        // The groups exist before their services first start, so nothing published earlier
        // misses them.
        let groups = ["catalog", "comment-service"];
        let servers = settings.servers.clone().named("shop");
        let backends = Backends::new(servers).groups(groups);
        Shop { settings, backends }
    }

    /// A service of `app` answering `routes`, with the ops API (retries behind
    /// `--ops-token`).
    fn service(&self, name: &str, app: App, routes: Router) -> Service {
        Service::new(name, app, routes).ops_token(self.settings.ops_token.clone())
    }
}

/// Retry a failing handler a few times, then dead-letter the event and go on.
fn policy() -> ErrorPolicy {
    let backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
    ErrorPolicy::retry(3, backoff).then_dead_letter()
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
    shop: &Shop,
    progress: impl FnMut(CatchUpProgress) + Send,
) -> Result<(u64, App), BoxError> {
    // No start-up check of the store: an event the catalog cannot decode is dead-lettered
    // with its reason, as the live service does, rather than stopping the replay.
    let b = &shop.backends;
    let app = App::builder()
        .with(b.store().await?)
        .with(b.views().await?)
        .build()?;
    let replay = TrackingProcessor::new(Catalog, app.views().store.clone())
        .track_stream_versions()
        .error_policy(policy());
    replay.reset().await?;
    let store = app.event_store().clone();
    Ok((replay.catch_up_with_progress(store, progress).await?, app))
}
