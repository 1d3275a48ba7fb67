//! Run with: `cargo run --example shop` (the demo), or `cargo run --example shop -- help`.
//!
//! Without a subcommand: the whole shop in one process on the embedded in-memory backends.
//! The product and comment services send commands through the gateway, the relay publishes
//! the event store's global log to the bus, and the catalog service's tracking processor
//! builds the read model from its consumer group. Then the read model is wiped and rebuilt
//! from the store, and must come out the same.
//!
//! With a subcommand: the product, comment and catalog services over HTTP (each on its own,
//! or all three in one process), and the catalog's replay. Addresses come from flags or the
//! environment (`DATABASE_URL`, `KAFKA_BROKERS`, `MONGODB_URI`); without them, the embedded
//! backends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use cqrs_axum::Service;
use cqrs_core::memory::{MemoryEventBus, MemoryEventStore, MemoryViewStore};
use cqrs_core::{registry, App, BoxError, Projection as _, ReadModel, TrackingProcessor};
use indicatif::{ProgressBar, ProgressStyle};
use shop::catalog::{Catalog, CatalogEntry, CatalogQueries};
use shop::comment::{CommentCommand, COMMENT};
use shop::product::{ProductCommand, PRODUCT};
use shop::services::{
    catalog_service, comment_service, product_service, replay_catalog, Settings, Shop,
};

/// The shop: product and comment write services, the catalog read service.
#[derive(Parser)]
#[command(name = "shop", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// The whole shop in one process on the embedded backends, with a replay check (the
    /// default).
    Demo,
    /// The product service: create, rename, change the price of products.
    Product {
        /// The address to listen on.
        #[arg(long, env = "PRODUCT_LISTEN", default_value = "127.0.0.1:3001")]
        listen: SocketAddr,
        #[command(flatten)]
        settings: Settings,
    },
    /// The comment service: post, edit, delete rated comments on known products.
    Comment {
        /// The address to listen on.
        #[arg(long, env = "COMMENT_LISTEN", default_value = "127.0.0.1:3002")]
        listen: SocketAddr,
        #[command(flatten)]
        settings: Settings,
    },
    /// The catalog service: builds the catalog from the bus and answers queries.
    Catalog {
        /// The address to listen on.
        #[arg(long, env = "CATALOG_LISTEN", default_value = "127.0.0.1:3003")]
        listen: SocketAddr,
        #[command(flatten)]
        settings: Settings,
    },
    /// The three services in one process (on the embedded backends unless addresses are given).
    All {
        /// The product service's address.
        #[arg(long, default_value = "127.0.0.1:3001")]
        product_listen: SocketAddr,
        /// The comment service's address.
        #[arg(long, default_value = "127.0.0.1:3002")]
        comment_listen: SocketAddr,
        /// The catalog service's address.
        #[arg(long, default_value = "127.0.0.1:3003")]
        catalog_listen: SocketAddr,
        #[command(flatten)]
        settings: Settings,
    },
    /// Rebuilds the catalog from the PostgreSQL event store (stop the catalog service first).
    Replay {
        #[command(flatten)]
        settings: Settings,
    },
}

/// Serves a service on `listen` until Ctrl-C or SIGTERM, then stops it. Prints `<service>
/// listening on http://<address>` once it accepts connections.
async fn serve(service: Service, listen: SocketAddr) -> Result<(), BoxError> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!(
        "{} listening on http://{}",
        service.name(),
        listener.local_addr()?
    );
    service.serve(listener).await
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let message = e.to_string();
            eprintln!("error: {message}");
            let mut source = e.source();
            while let Some(cause) = source {
                let cause_text = cause.to_string();
                if !message.contains(&cause_text) {
                    eprintln!("  caused by: {cause_text}");
                }
                source = cause.source();
            }
            std::process::ExitCode::FAILURE
        }
    }
}

/// Variables the shop read before `cqrs-config` read its servers, refused rather than ignored:
/// a deployment that still sets one would otherwise start on other topics or another schema.
fn refuse_renamed_variables() -> Result<(), BoxError> {
    let renamed = [
        ("SHOP_BUS", "CQRS_BUS"),
        ("SHOP_SCHEMA", "CQRS_SCHEMA"),
        ("SHOP_TOPIC_PREFIX", "CQRS_TOPIC_PREFIX"),
        ("SHOP_MONGO_DATABASE", "CQRS_MONGO_DATABASE"),
        ("SHOP_PARTITIONS", "CQRS_PARTITIONS"),
    ];
    match renamed
        .iter()
        .find(|(old, _)| std::env::var_os(old).is_some())
    {
        Some((old, new)) => Err(format!("{old} is no longer read: set {new} instead").into()),
        None => Ok(()),
    }
}

async fn run(cli: Cli) -> Result<(), BoxError> {
    refuse_renamed_variables()?;
    // The metrics recorder first, so that it sees everything the services do. Should another
    // recorder be installed, each service's ops API says so in its log and on `/metrics`.
    let _recorder = cqrs_axum::prometheus();
    match cli.command.unwrap_or(Command::Demo) {
        Command::Demo => {
            init_logging("warn");
            demo().await
        }
        Command::Product { listen, settings } => {
            init_logging("info");
            serve(product_service(&Shop::new(settings)).await?, listen).await
        }
        Command::Comment { listen, settings } => {
            init_logging("info");
            serve(comment_service(&Shop::new(settings)).await?, listen).await
        }
        Command::Catalog { listen, settings } => {
            init_logging("info");
            serve(catalog_service(&Shop::new(settings)).await?, listen).await
        }
        Command::All {
            product_listen,
            comment_listen,
            catalog_listen,
            settings,
        } => {
            init_logging("info");
            let shop = Shop::new(settings);
            let product = product_service(&shop).await?;
            let comment = comment_service(&shop).await?;
            let catalog = catalog_service(&shop).await?;
            tokio::try_join!(
                serve(product, product_listen),
                serve(comment, comment_listen),
                serve(catalog, catalog_listen),
            )?;
            Ok(())
        }
        Command::Replay { settings } => {
            init_logging("warn");
            replay(settings).await
        }
    }
}

async fn replay(settings: Settings) -> Result<(), BoxError> {
    if settings.servers.database_url.is_none() {
        return Err(
            "the replay reads the PostgreSQL event store: give --database-url or \
                    DATABASE_URL (the embedded store lives only inside a running process)"
                .into(),
        );
    }
    let shop = Shop::new(settings);
    // Drawn only on a terminal; hidden when stderr is redirected.
    let bar = ProgressBar::new(1000);
    bar.set_style(
        ProgressStyle::with_template(
            "replaying the catalog [{bar:40}] {percent:>3}% {msg} ({elapsed})",
        )?
        .progress_chars("=> "),
    );
    let started = Instant::now();
    let (events, app) = replay_catalog(&shop, |p| {
        bar.set_message(format!("{} events", p.events));
        bar.set_position((p.fraction() * 1000.0) as u64);
    })
    .await?;
    bar.finish_and_clear();
    let dead = app.ops().dead_letters(Catalog::NAME).await?.len();
    let entries = CatalogQueries::new(ReadModel::<Catalog>::new(app.views().query.clone()))
        .count()
        .await?;
    println!(
        "replayed {events} events into {entries} catalog entries in {:.2} s; {dead} dead letters",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

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

async fn demo() -> Result<(), BoxError> {
    // The whole shop in one builder, on the embedded default: the event store, a relay to a
    // bus, and the catalog service's consumer group building its read model. Against real
    // servers, one line each: `.with(postgres)`, `.with(kafka_bus)`, `.with(mongo)`.
    let store = Arc::new(MemoryEventStore::new());
    let views = Arc::new(MemoryViewStore::new());
    registry().check_store(store.as_ref()).await?;
    let mut app = App::builder()
        .with(store.clone())
        .with(views.clone())
        .with(MemoryEventBus::new(3))
        .relay("shop-relay", |r| r)
        .projection(Catalog, |p| p.from_bus("catalog", [PRODUCT, COMMENT]))
        .build()?;
    let gateway = app.gateway().clone();
    let queries = CatalogQueries::new(ReadModel::<Catalog>::new(app.views().query.clone()));

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
    // Everything committed so far, published by the relay and applied by the catalog.
    app.caught_up(Duration::from_secs(10)).await?;
    let live = queries.list(0, 100).await?;
    print_catalog(
        &format!("Catalog, built from the bus ({head} events):"),
        &live,
    );

    // Wipe the read model and rebuild it from the event store, the source of truth.
    app.shutdown().await?;
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
