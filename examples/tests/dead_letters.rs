#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]
//! Poison events through the shop's services as processes on the real servers: dead-lettered
//! with their reason and position while the rest flows; listed page by page and retried
//! through the ops API, only with its token.

mod common;

use common::{client, get, post, post_comment, post_ops, Env, OPS_TOKEN};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_events_are_dead_lettered_with_reason_and_position_while_the_rest_flows() {
    use cqrs_core::{EventAppender, ExpectedVersion, Metadata, NewEvent};

    let env = Env::new("poison");
    let http = client();
    let products = env.start("product").await;
    let comments = env.start("comment").await;
    let catalog_service = env.start("catalog").await;
    let created = post(
        &http,
        &products.url("/products"),
        json!({"product_id": "p-1", "name": "Grinder", "price_cents": 8000}),
    )
    .await;
    assert_eq!(created.status, 201);
    assert_eq!(
        post_comment(&http, &comments, "c-1", "p-1", 4).await.status,
        201
    );

    // Two poison events reach the comment topic: an undecodable payload and an unknown name
    // (as if written by a newer or broken producer).
    let store = env.postgres().await.event_store();
    let poison = |name: &str, payload: &'static [u8]| NewEvent {
        event_name: name.to_owned(),
        event_version: 1,
        payload: payload.into(),
        metadata: Metadata::new(),
    };
    let bad_payload = store
        .append(
            "comment",
            "c-bad",
            ExpectedVersion::NEW,
            vec![poison(
                "shop.CommentPosted",
                br#"{"product_id": "p-1", "rating": "five"}"#,
            )],
        )
        .await
        .expect("append");
    let unknown = store
        .append(
            "comment",
            "c-new",
            ExpectedVersion::NEW,
            vec![poison("shop.CommentPinned", br#"{"product_id": "p-1"}"#)],
        )
        .await
        .expect("append");
    assert_eq!(
        post_comment(&http, &comments, "c-2", "p-1", 2).await.status,
        201
    );

    // The rest flows: both good comments arrive.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let dead = loop {
        let entry = get(&http, &catalog_service.url("/products/p-1")).await;
        let dead = get(&http, &catalog_service.url("/dead-letters")).await;
        let letters = dead.body["items"].as_array().cloned().unwrap_or_default();
        if entry.body["rating_count"] == 2 && letters.len() == 2 {
            assert_eq!(entry.body["average_rating"], 3.0);
            break letters;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no convergence: {:?} {:?}",
            entry.body,
            dead.body
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let find = |stream: &str| {
        dead.iter()
            .find(|d| d["stream_id"] == stream)
            .cloned()
            .unwrap_or_else(|| panic!("no dead letter for {stream}: {dead:?}"))
    };
    let letter = find("c-bad");
    assert_eq!(letter["position"], bad_payload[0].position);
    assert_eq!(letter["event_name"], "shop.CommentPosted");
    assert!(
        letter["reason"].as_str().unwrap().contains("invalid type"),
        "{letter}"
    );
    let letter = find("c-new");
    assert_eq!(letter["position"], unknown[0].position);
    assert!(
        letter["reason"].as_str().unwrap().contains("unknown"),
        "{letter}"
    );

    // One page at a time: the first page's cursor leads to the second, the last has none.
    let first = get(&http, &catalog_service.url("/dead-letters?limit=1")).await;
    let next = first.body["next"]
        .as_str()
        .expect("a next cursor")
        .to_owned();
    let second = get(
        &http,
        &catalog_service.url(&format!("/dead-letters?limit=1&cursor={next}")),
    )
    .await;
    let paged: Vec<Value> = [&first, &second]
        .iter()
        .flat_map(|p| p.body["items"].as_array().cloned().unwrap_or_default())
        .collect();
    assert_eq!(paged, dead, "two pages of one give the list");
    assert_eq!(second.body.get("next"), None, "the last page has no cursor");

    // A retry without the token, or with a wrong one, is refused and changes nothing.
    let retry_url = catalog_service.url("/dead-letters/retry");
    let without = post_ops(&http, &retry_url, None).await;
    assert_eq!((without.status, without.code()), (401, "unauthorized"));
    let wrong = post_ops(&http, &retry_url, Some("not-the-token")).await;
    assert_eq!((wrong.status, wrong.code()), (401, "unauthorized"));
    // Retrying without a fix: both fail again and stay, with their reasons.
    let retried = post_ops(&http, &retry_url, Some(OPS_TOKEN)).await;
    assert_eq!(retried.status, 200, "{:?}", retried.body);
    assert_eq!(retried.body["resolved"], json!([]));
    assert_eq!(retried.body["failed"].as_array().map(Vec::len), Some(2));
    let one = post_ops(
        &http,
        &catalog_service.url(&format!("/dead-letters/{}/retry", uuid::Uuid::new_v4())),
        Some(OPS_TOKEN),
    )
    .await;
    assert_eq!((one.status, one.code()), (404, "not_found"));
    let still = get(&http, &catalog_service.url("/dead-letters")).await;
    assert_eq!(still.body["items"].as_array().map(Vec::len), Some(2));
    println!(
        "[fault] poison events (an undecodable payload, an unknown name) through the services: \
         2 dead-lettered with reason and position, the 2 good comments applied; a retry \
         without a fix keeps both"
    );

    drop((products, comments, catalog_service));
    env.clean_up().await;
}
