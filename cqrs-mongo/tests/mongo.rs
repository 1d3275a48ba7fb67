#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]
//! The MongoDB read-model store on a real server: the shop's catalog, duplicate batches with
//! and without transactions, a server killed mid-run, old and malformed documents, names.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{fresh, uri};
use cqrs_core::memory::{MemoryEventStore, MemoryViewStore};
use cqrs_core::processor::Backoff;
use cqrs_core::view::{StoredDoc, UnitOfWork};
use cqrs_core::{
    CommandGateway, Error, EventReader, EventStore, Filter, Query, ReadModel, StoreFeed,
    TrackingProcessor, ViewQuery, ViewStore,
};
use cqrs_mongo::{CommitMode, Mongo};
use cqrs_testing::CrashBeforeCheckpoint;
use mongodb::bson::doc;
use serde_json::json;
use shop::catalog::{Catalog, CatalogEntry, CatalogQueries};
use shop::comment::CommentCommand;
use shop::product::ProductCommand;

/// A shop history: three products, comments, a rename, an edit, a delete.
async fn shop_history(gateway: &CommandGateway, round: u32) {
    for p in 0..3 {
        let _ = gateway
            .send(ProductCommand::Create {
                product_id: format!("p-{p}"),
                name: format!("Product {p}"),
                price_cents: 100 * (p + 1),
            })
            .await;
    }
    for c in 0..6u32 {
        gateway
            .send(CommentCommand::Post {
                comment_id: format!("c-{round}-{c}"),
                product_id: format!("p-{}", c % 3),
                author: format!("author {c}"),
                text: format!("comment {c}"),
                rating: (c % 5 + 1) as u8,
            })
            .await
            .expect("post");
    }
    gateway
        .send(ProductCommand::Rename {
            product_id: "p-1".into(),
            name: format!("Renamed {round}"),
        })
        .await
        .expect("rename");
    gateway
        .send(CommentCommand::Edit {
            comment_id: format!("c-{round}-0"),
            text: "edited".into(),
            rating: 2,
        })
        .await
        .expect("edit");
    gateway
        .send(CommentCommand::Delete {
            comment_id: format!("c-{round}-4"),
        })
        .await
        .expect("delete");
}

async fn replay_in_memory(store: Arc<MemoryEventStore>) -> Vec<(String, CatalogEntry)> {
    let views = Arc::new(MemoryViewStore::new());
    TrackingProcessor::new(Catalog, views.clone())
        .catch_up(store)
        .await
        .expect("replay");
    ReadModel::<Catalog>::new(views)
        .find(&Query::all())
        .await
        .expect("find")
}

#[tokio::test]
async fn the_catalog_projects_into_mongodb_and_answers_its_queries() {
    let mongo = fresh().await;
    assert_eq!(
        mongo.commit_mode(),
        CommitMode::Transaction,
        "SecantusDB is a one-node replica set"
    );
    let store = Arc::new(MemoryEventStore::new());
    let gateway = CommandGateway::builder(store.clone() as Arc<dyn EventStore>).build();
    shop_history(&gateway, 0).await;
    let views = Arc::new(mongo.view_store());
    views.create_index("catalog", "name").await.expect("index");
    views
        .create_index("catalog", "name")
        .await
        .expect("indexes are idempotent");
    TrackingProcessor::new(Catalog, views.clone())
        .batch_size(4)
        .catch_up(store.clone())
        .await
        .expect("catch up");

    let queries = CatalogQueries::new(ReadModel::new(views.clone() as Arc<dyn ViewQuery>));
    let p1 = queries.entry("p-1").await.expect("entry").expect("p-1");
    assert_eq!(p1.name.as_deref(), Some("Renamed 0"));
    assert_eq!(p1.price_cents, Some(200));
    assert_eq!(p1.rating_count, 1, "c-0-4 was deleted, c-0-1 remains");
    let p0 = queries.entry("p-0").await.expect("entry").expect("p-0");
    assert_eq!(
        p0.average_rating,
        Some((2.0 + 4.0) / 2.0),
        "c-0-0 edited to 2, c-0-3 rated 4"
    );
    let page: Vec<_> = queries
        .list(0, 2)
        .await
        .expect("page")
        .into_iter()
        .filter_map(|e| e.name)
        .collect();
    assert_eq!(page, ["Product 0", "Product 2"]);
    assert_eq!(queries.list(1, 2).await.expect("page 2").len(), 1);
    assert_eq!(
        views
            .count("catalog", &Filter::Gte("rating_count".into(), json!(1)))
            .await
            .expect("count"),
        3
    );
    assert_eq!(queries.entry("nope").await.expect("missing"), None);

    let in_mongo = ReadModel::<Catalog>::new(views.clone())
        .find(&Query::all())
        .await
        .expect("find");
    assert_eq!(
        in_mongo,
        replay_in_memory(store).await,
        "MongoDB holds what a replay in memory builds"
    );
    mongo.drop_database().await.expect("drop");
}

#[tokio::test]
async fn a_batch_delivered_twice_changes_nothing_with_and_without_transactions() {
    for mode in [CommitMode::Transaction, CommitMode::Idempotent] {
        let mongo = fresh().await.with_commit_mode(mode);
        let store = Arc::new(MemoryEventStore::new());
        let gateway = CommandGateway::builder(store.clone() as Arc<dyn EventStore>).build();
        shop_history(&gateway, 0).await;
        let crashing = Arc::new(CrashBeforeCheckpoint::new(mongo.view_store(), 3));
        for _ in 0..3 {
            let err = TrackingProcessor::new(Catalog, crashing.clone())
                .batch_size(5)
                .catch_up(store.clone())
                .await
                .expect_err("crash");
            assert!(
                err.to_string().contains("injected crash"),
                "{mode:?}: {err}"
            );
        }
        TrackingProcessor::new(Catalog, crashing.clone())
            .batch_size(5)
            .catch_up(store.clone())
            .await
            .expect("restart");
        // And the whole log once more, as a restarted replica with a lost checkpoint would.
        let all =
            cqrs_core::processor::Batch::from_log(store.read_all(0, 1000).await.expect("read"));
        let again = TrackingProcessor::new(Catalog, Arc::new(mongo.view_store()))
            .process(&all)
            .await
            .expect("again");
        assert_eq!(again, 0, "{mode:?}: nothing applied twice");
        let views = ReadModel::<Catalog>::new(Arc::new(mongo.view_store()))
            .find(&Query::all())
            .await
            .expect("find");
        assert_eq!(views, replay_in_memory(store).await, "{mode:?}");
        mongo.drop_database().await.expect("drop");
    }
}

#[tokio::test]
async fn a_stale_view_write_is_refused_not_overwritten() {
    let mongo = fresh().await;
    let views = mongo.view_store();
    let doc = |id: &str, revision: u64, n: u64| StoredDoc {
        id: id.into(),
        view: Some(json!({ "n": n })),
        applied: [("s".to_owned(), n)].into_iter().collect(),
        position: n,
        revision,
        parked: Default::default(),
    };
    let work = |writes| UnitOfWork {
        projection: "p".into(),
        writes,
        dead_letters: vec![],
        checkpoint: Some(1),
        resolved: vec![],
        claim: None,
    };
    views
        .commit(work(vec![doc("a", 0, 1)]))
        .await
        .expect("create");
    let err = views
        .commit(work(vec![doc("a", 0, 2)]))
        .await
        .expect_err("stale create");
    assert!(matches!(err, Error::ViewConflict { .. }), "{err}");
    views
        .commit(work(vec![doc("a", 1, 3)]))
        .await
        .expect("update");
    let err = views
        .commit(work(vec![doc("a", 1, 4)]))
        .await
        .expect_err("stale update");
    assert!(matches!(err, Error::ViewConflict { .. }), "{err}");
    assert_eq!(
        views.get("p", "a").await.expect("get"),
        Some(json!({ "n": 3 }))
    );
    let loaded = views.load("p", &["a".to_owned()]).await.expect("load");
    assert_eq!((loaded[0].revision, loaded[0].position), (2, 3));
    mongo.drop_database().await.expect("drop");
}

#[tokio::test]
async fn old_documents_load_and_malformed_ones_are_typed_errors() {
    let mongo = fresh().await;
    let raw = mongo
        .database()
        .collection::<mongodb::bson::Document>("cqrs_view_catalog");
    // Written by an older version of the view: no rating fields, no bookkeeping.
    raw.insert_one(doc! { "_id": "p-old", "view": { "product_id": "p-old", "name": "Legacy" } })
        .await
        .expect("insert");
    raw.insert_one(doc! { "_id": "p-bad", "view": { "product_id": 7 }, "applied": "nope" })
        .await
        .expect("insert");
    let model = ReadModel::<Catalog>::new(Arc::new(mongo.view_store()));
    let old = model
        .get("p-old")
        .await
        .expect("old document")
        .expect("exists");
    assert_eq!((old.name.as_deref(), old.rating_count), (Some("Legacy"), 0));
    let err = model.get("p-bad").await.expect_err("malformed");
    assert!(matches!(err, Error::Malformed { .. }), "{err}");
    assert!(err.to_string().contains("p-bad"), "{err}");
    // The processor can still apply to the old document.
    let store = Arc::new(MemoryEventStore::new());
    let gateway = CommandGateway::builder(store.clone() as Arc<dyn EventStore>).build();
    gateway
        .send(CommentCommand::Post {
            comment_id: "c".into(),
            product_id: "p-old".into(),
            author: "a".into(),
            text: "t".into(),
            rating: 5,
        })
        .await
        .expect("post");
    TrackingProcessor::new(Catalog, Arc::new(mongo.view_store()))
        .catch_up(store)
        .await
        .expect("apply");
    let old = model.get("p-old").await.expect("old").expect("exists");
    assert_eq!((old.name.as_deref(), old.rating_count), (Some("Legacy"), 1));
    mongo.drop_database().await.expect("drop");
}

#[tokio::test]
async fn configured_names_are_validated_and_passwords_never_shown() {
    for bad in ["", "a.b", "a b", "a$b", "x/y", &"d".repeat(64)] {
        let err = Mongo::connect(&uri(), bad, "cqrs_").await.expect_err(bad);
        assert!(
            matches!(err, Error::Config(ref m) if m.contains("database name")),
            "{bad:?}: {err}"
        );
    }
    for bad in ["1x", "a.b", "a-b", "$x"] {
        let err = Mongo::connect(&uri(), "ok", bad).await.expect_err(bad);
        assert!(
            matches!(err, Error::Config(ref m) if m.contains("prefix")),
            "{bad:?}: {err}"
        );
    }
    let mongo = fresh().await;
    let views = mongo.view_store();
    let err = views
        .find("bad.name", &Query::all())
        .await
        .expect_err("projection");
    assert!(matches!(err, Error::Config(_)), "{err}");
    let err = views
        .find(
            "catalog",
            &Query::all().filter(Filter::Eq("$where".into(), json!(1))),
        )
        .await
        .expect_err("path");
    assert!(matches!(err, Error::Config(_)), "{err}");
    let err = Mongo::connect(
        "mongodb://user:s3cret@127.0.0.1:1/?connectTimeoutMS=bogus",
        "db",
        "p",
    )
    .await
    .expect_err("bad uri");
    assert!(!err.to_string().contains("s3cret"), "{err}");
    assert!(!format!("{mongo:?}").contains("mongodb://"));
    mongo.drop_database().await.expect("drop");
    println!(
        "[fault] MongoDB names: hostile database names, prefixes and projection names refused \
         with a typed error; a password absent from errors and Debug output"
    );
}

#[tokio::test]
async fn a_refused_login_is_a_config_error_not_retried() {
    // MONGODB_URI as a user the server does not know.
    let uri = uri();
    let (scheme, rest) = uri.split_once("://").expect("a URI");
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let separator = if rest.contains('?') { '&' } else { '?' };
    let stranger = format!("{scheme}://nobody:wr0ng@{rest}{separator}authSource=admin");
    let err = Mongo::connect(&stranger, "refused", "cqrs_")
        .await
        .expect_err("an unknown user");
    // Before, a backend error: a processor retried it for ever.
    assert!(
        matches!(err, Error::Config(ref m) if m.starts_with("MongoDB refused connecting")),
        "{err:?}"
    );
    assert!(!err.is_transient());
    assert!(!err.to_string().contains("wr0ng"), "{err}");
}

/// A MongoDB-API server of the test's own, on disk, so it can be killed and restarted with
/// its data. `CQRS_MONGO_SERVER` is a command with `{port}` and `{dir}` placeholders; the test
/// script sets it to SecantusDB.
struct OwnServer {
    child: tokio::process::Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl OwnServer {
    async fn start(port: u16, dir: &std::path::Path) -> OwnServer {
        let template = std::env::var("CQRS_MONGO_SERVER").unwrap_or_else(|_| {
            panic!(
                "CQRS_MONGO_SERVER is not set: this test starts and kills a server of its own \
                 (run ./scripts/test.sh, which points it at SecantusDB)"
            )
        });
        let command = template
            .replace("{port}", &port.to_string())
            .replace("{dir}", &dir.display().to_string());
        let mut parts = command.split_whitespace();
        let program = parts.next().expect("a command");
        let child = tokio::process::Command::new(program)
            .args(parts)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start the server");
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "the server did not open port {port}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        OwnServer {
            child,
            port,
            dir: dir.to_owned(),
        }
    }

    async fn kill(mut self) -> (u16, std::path::PathBuf) {
        self.child.kill().await.expect("kill");
        (self.port, self.dir)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_killed_mid_run_the_processor_retries_and_converges() {
    let dir =
        std::env::temp_dir().join(format!("cqrs-mongo-kill-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    let port = 27100 + (std::process::id() % 500) as u16;
    let server = OwnServer::start(port, &dir).await;
    let uri =
        format!("mongodb://127.0.0.1:{port}/?directConnection=true&serverSelectionTimeoutMS=1000");
    let mongo = Mongo::connect(&uri, "killtest", "cqrs_")
        .await
        .expect("connect");

    let store = Arc::new(MemoryEventStore::new());
    let gateway = CommandGateway::builder(store.clone() as Arc<dyn EventStore>).build();
    shop_history(&gateway, 0).await;
    let views = Arc::new(mongo.view_store());
    // No view cache: every batch loads its views from the server, down or not.
    let mut handle = TrackingProcessor::new(Catalog, views.clone())
        .view_cache(0)
        .batch_size(3)
        .backend_backoff(Backoff::new(
            Duration::from_millis(50),
            Duration::from_millis(500),
        ))
        .spawn(Arc::new(StoreFeed::new(store.clone())));
    handle
        .wait_for(store.head().await.expect("head"), Duration::from_secs(20))
        .await
        .expect("first history");

    // Kill the server; keep writing; the processor keeps failing and retrying meanwhile.
    let (port, dir) = server.kill().await;
    for round in 1..4 {
        shop_history(&gateway, round).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !handle.is_finished(),
        "the processor retries; it does not give up"
    );
    let head = store.head().await.expect("head");
    let held_at = handle.position();
    assert!(
        held_at < head,
        "the checkpoint did not move past unapplied events"
    );
    let restarted = Instant::now();

    // Restart it on the same data: the processor resumes and converges.
    let server = OwnServer::start(port, &dir).await;
    if let Err(e) = handle.wait_for(head, Duration::from_secs(60)).await {
        panic!(
            "did not converge after the restart ({e}); the processor ended with {:?}",
            handle.stop().await
        );
    }
    handle.stop().await.expect("stop");
    let in_mongo = ReadModel::<Catalog>::new(views.clone())
        .find(&Query::all())
        .await
        .expect("find");
    assert_eq!(in_mongo, replay_in_memory(store).await);
    assert_eq!(
        views.checkpoint("catalog").await.expect("checkpoint"),
        Some(head)
    );
    println!(
        "[fault] MongoDB killed mid-run (store feed): checkpoint held at {held_at} < head {head} \
         while down; converged {:.1} s after the restart; read model equal to a replay",
        restarted.elapsed().as_secs_f64()
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_mongo_view_store_passes_the_view_conformance_suite() {
    for mode in [CommitMode::Transaction, CommitMode::Idempotent] {
        let databases = std::sync::Mutex::new(Vec::new());
        cqrs_testing::view_conformance::run(|| async {
            let mongo = fresh().await;
            // Transactions where the server offers them; the idempotent mode everywhere.
            let mongo = if mode == CommitMode::Idempotent {
                mongo.with_commit_mode(mode)
            } else {
                mongo
            };
            let store = mongo.view_store();
            databases.lock().unwrap().push(mongo);
            store
        })
        .await;
        let databases = std::mem::take(&mut *databases.lock().unwrap());
        for mongo in databases {
            mongo.drop_database().await.expect("drop");
        }
    }
}
