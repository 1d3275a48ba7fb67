#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]
//! A holder killed in the middle of a transaction leaves it open on the server, holding the
//! segment's checkpoint (and the views it wrote) until the server's transaction lifetime ends
//! it. The instance that takes the segment over ends that session first, so its own unit of
//! work commits at once instead of meeting write conflicts for a minute.

mod common;

use std::time::{Duration, Instant};

use cqrs_core::segment::{Segment, SegmentClaims};
use cqrs_core::view::UnitOfWork;
use cqrs_core::ViewStore;
use mongodb::bson::doc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taking_a_dead_holders_segment_ends_its_open_transaction() {
    let mongo = common::fresh().await;
    if mongo.commit_mode() != cqrs_mongo::CommitMode::Transaction {
        panic!("this test needs a server with transactions (a replica set)");
    }
    let views = mongo.view_store();
    let segment = Segment::new(0, 1).expect("segment");
    let short = Duration::from_millis(300);
    let dead = views
        .claim("p", segment, uuid::Uuid::new_v4(), short)
        .await
        .expect("claim")
        .expect("the first holder's claim");
    // It commits once (the checkpoint document exists), then dies in its next transaction:
    // a session of the test stands in for it, recorded with its claim as its own would be.
    let mut first = UnitOfWork {
        projection: "p".into(),
        writes: Vec::new(),
        dead_letters: Vec::new(),
        checkpoint: Some(5),
        resolved: Vec::new(),
        claim: Some(dead.claim),
    };
    views.commit(first.clone()).await.expect("the first commit");
    let client = mongodb::Client::with_uri_str(common::uri())
        .await
        .expect("client");
    let db = client.database(mongo.database().name());
    let mut orphan = client.start_session().await.expect("session");
    orphan.start_transaction().await.expect("transaction");
    db.collection::<mongodb::bson::Document>("cqrs_view_checkpoints")
        .update_one(
            doc! { "_id": "p#0" },
            doc! { "$max": { "position": 7_i64 } },
        )
        .session(&mut orphan)
        .await
        .expect("the dead holder's write, never committed");
    db.collection::<mongodb::bson::Document>("cqrs_segment_claims")
        .update_one(
            doc! { "_id": "p/0" },
            doc! { "$set": { "lsid": orphan.id().clone() } },
        )
        .await
        .expect("its session recorded with its claim");
    tokio::time::sleep(short * 2).await;

    let next = views
        .claim("p", segment, uuid::Uuid::new_v4(), Duration::from_secs(5))
        .await
        .expect("claim")
        .expect("taken over after the lease");
    assert_eq!(
        next.checkpoint,
        Some(5),
        "starts at what the dead holder committed"
    );
    first.checkpoint = Some(9);
    first.claim = Some(next.claim);
    let started = Instant::now();
    views
        .commit(first)
        .await
        .expect("the next holder commits at once: the orphaned transaction is gone");
    println!(
        "[fault] MongoDB: a dead holder's open transaction ended by the next holder; its first commit took {:?}",
        started.elapsed()
    );
    let saved = db
        .collection::<mongodb::bson::Document>("cqrs_view_checkpoints")
        .find_one(doc! { "_id": "p#0" })
        .await
        .expect("read")
        .expect("the segment's checkpoint");
    assert_eq!(saved.get_i64("position").expect("position"), 9);
    assert!(
        orphan.commit_transaction().await.is_err(),
        "the orphaned transaction was aborted"
    );
    mongo.drop_database().await.expect("drop");
}
