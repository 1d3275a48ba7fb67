#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]
//! Outages under the running shop: the Kafka broker and the MongoDB server killed and
//! restarted while commands go on. Each test starts a server of its own (from
//! `CQRS_KAFKA_SERVER` / `CQRS_MONGO_SERVER`) so that killing it disturbs nothing else, and
//! prints its figures on a `[fault]` line (see FAULTS.md).
#![cfg(target_os = "linux")]

mod common;

use std::time::{Duration, Instant};

use common::{
    catalog, client, comment_count, converged, get, health, post, post_comment, put, Env, Service,
};
use cqrs_core::Breaker;
use cqrs_testing::server::{OwnServer, Pausable};
use serde_json::json;

async fn seed(http: &reqwest::Client, products: &Service, comments: &Service, n: u32) {
    for p in 0..n {
        let created = post(
            http,
            &products.url("/products"),
            json!({"product_id": format!("p-{p}"), "name": format!("Product {p}"), "price_cents": 500 + p}),
        )
        .await;
        assert_eq!(created.status, 201, "{:?}", created.body);
    }
    for c in 0..2 * n {
        let posted = post_comment(
            http,
            comments,
            &format!("c-{c}"),
            &format!("p-{}", c % n),
            (c % 5 + 1) as u8,
        )
        .await;
        assert_eq!(posted.status, 201, "{:?}", posted.body);
    }
}

/// Polls a write service's relay breaker until `wanted` is seen; returns every state seen.
async fn watch_breaker(
    http: &reqwest::Client,
    service: &Service,
    seen: &mut Vec<Breaker>,
    wanted: Breaker,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    loop {
        let state = health(http, service).await.health.relays[0].breaker;
        if seen.last() != Some(&state) {
            seen.push(state);
        }
        if state == wanted {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the breaker of {} did not reach {wanted:?}: {seen:?}",
            service.name
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_killed_while_commands_go_on_loses_and_duplicates_nothing() {
    let broker = OwnServer::start("CQRS_KAFKA_SERVER").await;
    let port = broker.port;
    let mut env = Env::new("broker");
    env.kafka_brokers = format!("127.0.0.1:{port}");
    let http = client();
    let products = env.start("product").await;
    let comments = env.start("comment").await;
    let catalog_service = env.start("catalog").await;
    seed(&http, &products, &comments, 4).await;
    let before = comment_count(&converged(&env, &http, &catalog_service).await);

    // The broker stops answering (SIGSTOP: frozen with its data; the framework's own test kills
    // and restarts an empty one). Commands go on and succeed: they only need PostgreSQL.
    broker.pause();
    let outage = Instant::now();
    let mut during = 0;
    for c in 0..20u32 {
        let posted = post_comment(
            &http,
            &comments,
            &format!("c-outage-{c}"),
            &format!("p-{}", c % 4),
            4,
        )
        .await;
        assert_eq!(posted.status, 201, "{:?}", posted.body);
        during += 1;
    }
    let renamed = put(
        &http,
        &products.url("/products/p-0/name"),
        json!({"name": "Renamed while the broker was down"}),
    )
    .await;
    assert_eq!(renamed.status, 200, "{:?}", renamed.body);
    during += 1;
    // The relays back off: their circuits open, then half-open to try again.
    let mut transitions = vec![Breaker::Closed];
    watch_breaker(
        &http,
        &comments,
        &mut transitions,
        Breaker::Open,
        Duration::from_secs(60),
    )
    .await;
    watch_breaker(
        &http,
        &comments,
        &mut transitions,
        Breaker::HalfOpen,
        Duration::from_secs(30),
    )
    .await;
    // The catalog keeps answering from what it has.
    assert_eq!(
        comment_count(&catalog(&http, &catalog_service).await),
        before
    );

    // The broker answers again.
    broker.resume();
    let down_for = outage.elapsed();
    watch_breaker(
        &http,
        &comments,
        &mut transitions,
        Breaker::Closed,
        Duration::from_secs(60),
    )
    .await;
    let back = Instant::now();
    let after = converged(&env, &http, &catalog_service).await;
    let total = comment_count(&after);
    assert_eq!(total, before + 20);
    let p0 = after.iter().find(|e| e.product_id == "p-0").expect("p-0");
    assert_eq!(
        p0.name.as_deref(),
        Some("Renamed while the broker was down")
    );
    println!(
        "[fault] broker outage: down {:.1} s, {during} commands during it, {during} succeeded; \
         comment relay breaker {transitions:?}; catalog equal to a replay {:.1} s after the \
         broker returned; {total} comments, 0 lost, 0 duplicated",
        down_for.as_secs_f64(),
        back.elapsed().as_secs_f64()
    );
    drop((products, comments, catalog_service));
    env.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_store_killed_and_restarted_the_catalog_retries_and_converges() {
    let mut server = OwnServer::start("CQRS_MONGO_SERVER").await;
    let port = server.port;
    let mut env = Env::new("mongo");
    env.mongodb_uri = format!("mongodb://127.0.0.1:{port}/?directConnection=true");
    let http = client();
    let products = env.start("product").await;
    let comments = env.start("comment").await;
    let catalog_service = env.start("catalog").await;
    seed(&http, &products, &comments, 3).await;
    let before = comment_count(&converged(&env, &http, &catalog_service).await);
    let position_before = health(&http, &catalog_service).await.health.processors[0].position;

    // The read store dies while comments stream in.
    server.kill();
    let outage = Instant::now();
    for c in 0..30u32 {
        let posted = post_comment(
            &http,
            &comments,
            &format!("c-outage-{c}"),
            &format!("p-{}", c % 3),
            2,
        )
        .await;
        assert_eq!(posted.status, 201, "{:?}", posted.body);
    }
    // Queries say so with a typed answer; the processor does not move on.
    let down = get(&http, &catalog_service.url("/products")).await;
    assert_eq!(
        (down.status, down.code()),
        (503, "unavailable"),
        "{:?}",
        down.body
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stuck = health(&http, &catalog_service).await.health.processors[0].position;
    assert_eq!(
        stuck, position_before,
        "the processor moved past unapplied events"
    );

    // Back, with its data: the processor's retries get through and the catalog converges.
    server.restart().await;
    let down_for = outage.elapsed();
    let back = Instant::now();
    let after = converged(&env, &http, &catalog_service).await;
    let total = comment_count(&after);
    assert_eq!(total, before + 30);
    let position_after = health(&http, &catalog_service).await.health.processors[0].position;
    assert!(position_after > position_before);
    println!(
        "[fault] read store outage: down {:.1} s, 30 comments posted during it; queries 503 \
         `unavailable` meanwhile; processor position held at {position_before} while down; \
         catalog equal to a replay {:.1} s after the server returned; {total} comments, 0 lost",
        down_for.as_secs_f64(),
        back.elapsed().as_secs_f64()
    );
    drop((products, comments, catalog_service));
    env.clean_up().await;
}
