#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]
//! Several catalog instances share the work instead of fighting over views. On a bus, in one
//! consumer group: a comment routes by its product (see `docs/adr/0011`), so one instance
//! holds every event of a catalog entry. On the store's log, in segments by product (see
//! `docs/adr/0012`). Writers post comments while two, then three, instances run; one
//! is killed mid-stream. Each test prints its figures on a `[fault]` line (see FAULTS.md).

mod common;

use std::time::{Duration, Instant};

use common::{client, comment_count, converged, get, post, post_comment, Env, Service};
use serde_json::json;

const PRODUCTS: u32 = 12;
const WRITERS: u32 = 4;

/// The sum of a catalog instance's counter `name` over its labels (0 before it first counts).
async fn counter(http: &reqwest::Client, service: &Service, name: &str) -> f64 {
    let answer = http
        .get(service.url("/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    let text = answer.text().await.expect("metrics text");
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .fold(0.0, |sum, n| sum + n)
}

/// What each instance counted: (events applied, view conflicts, commit retries).
async fn counts(http: &reqwest::Client, catalogs: &[Service]) -> Vec<(f64, f64, f64)> {
    let mut out = Vec::new();
    for c in catalogs {
        out.push((
            counter(http, c, "cqrs_processor_events_applied_total").await,
            counter(http, c, "cqrs_processor_view_conflicts_total").await,
            counter(http, c, "cqrs_processor_commit_retries_total").await,
        ));
    }
    out
}

/// `WRITERS` writers post `each` comments at once, spread over the products; returns how many
/// were accepted.
async fn write(http: &reqwest::Client, comments: &Service, round: &str, each: u32) -> u64 {
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let (http, url) = (http.clone(), comments.url("/comments"));
        let round = round.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut accepted = 0;
            for i in 0..each {
                let answer = post(
                    &http,
                    &url,
                    json!({
                        "comment_id": format!("{round}-{w}-{i}"),
                        "product_id": format!("p-{}", (w * each + i) % PRODUCTS),
                        "author": "writer",
                        "text": "scaled",
                        "rating": (i % 5 + 1) as u8,
                    }),
                )
                .await;
                assert_eq!(answer.status, 201, "{:?}", answer.body);
                accepted += 1;
            }
            accepted
        }));
    }
    let mut accepted = 0;
    for t in tasks {
        accepted += t.await.unwrap();
    }
    accepted
}

/// Posts comments until every instance has applied some: the group has settled.
async fn until_every_instance_works(
    http: &reqwest::Client,
    comments: &Service,
    catalogs: &[Service],
) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut posted = 0;
    for round in 0.. {
        posted += write(http, comments, &format!("warm{round}"), 3).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = counts(http, catalogs).await;
        if now.iter().all(|(applied, _, _)| *applied > 0.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every instance worked: {now:?}"
        );
    }
    // A rebalance settles: partitions handed over mid-batch are counted before the steady
    // state starts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    posted
}

/// One scale-out test at a time: each runs a handful of services, and two of them at once
/// on two cores starve each other's groups.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn instances_share_the_catalog(env: &Env, instances: usize) -> String {
    let _alone = ONE_AT_A_TIME.lock().await;
    let http = client();
    let products = env.start("product").await;
    let comments = env.start("comment").await;
    let mut catalogs = Vec::new();
    for _ in 0..instances {
        catalogs.push(env.start("catalog").await);
    }
    for p in 0..PRODUCTS {
        let created = post(
            &http,
            &products.url("/products"),
            json!({"product_id": format!("p-{p}"), "name": format!("Product {p}"), "price_cents": 100 + p}),
        )
        .await;
        assert_eq!(created.status, 201, "{:?}", created.body);
    }
    // The comment service learns the products from the bus: a first comment on each waits
    // until it knows them all, before the writers start.
    for p in 0..PRODUCTS {
        let first = post_comment(
            &http,
            &comments,
            &format!("first-{p}"),
            &format!("p-{p}"),
            5,
        )
        .await;
        assert_eq!(first.status, 201, "{:?}", first.body);
    }
    let mut posted =
        u64::from(PRODUCTS) + until_every_instance_works(&http, &comments, &catalogs).await;

    // Steady state: every instance moves, no view conflict, no commit retried.
    let before = counts(&http, &catalogs).await;
    posted += write(&http, &comments, "steady", 60).await;
    let live = converged(env, &http, &catalogs[0]).await;
    let after = counts(&http, &catalogs).await;
    let steady: Vec<(f64, f64, f64)> = after
        .iter()
        .zip(&before)
        .map(|(a, b)| (a.0 - b.0, a.1 - b.1, a.2 - b.2))
        .collect();
    assert_eq!(
        comment_count(&live),
        posted,
        "every comment once in the catalog"
    );
    for (i, (applied, conflicts, retries)) in steady.iter().enumerate() {
        assert!(*applied > 0.0, "instance {i} applied nothing: {steady:?}");
        assert_eq!(
            *conflicts, 0.0,
            "instance {i}: no view conflict in steady state: {steady:?}"
        );
        // On the store feed the instances' transactions meet in MongoDB's collections, and
        // SecantusDB refuses some with a WriteConflict although they write different
        // documents: those are retried and counted, not asserted away.
        if !env.store_feed {
            assert_eq!(
                *retries, 0.0,
                "instance {i}: no commit retried in steady state: {steady:?}"
            );
        }
    }

    // One instance killed mid-stream: its partitions move to the others.
    let writers = {
        let http = http.clone();
        tokio::spawn(async move {
            let posted = write(&http, &comments, "kill", 40).await;
            (posted, comments)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed_at = Instant::now();
    catalogs.pop().expect("an instance").kill();
    let (after_kill, _comments) = writers.await.unwrap();
    posted += after_kill;
    let live = converged(env, &http, &catalogs[0]).await;
    let took = killed_at.elapsed();
    assert_eq!(comment_count(&live), posted, "0 lost, 0 applied twice");
    let survivors = counts(&http, &catalogs).await;
    let entry = get(&http, &catalogs[0].url("/products/p-0")).await;
    assert_eq!(entry.status, 200);
    drop(products);
    format!(
        "{instances} catalog instances, {WRITERS} writers: in steady state applied {:?} events \
         per instance with {:?} view conflicts and {:?} commit retries; one SIGKILLed mid-stream, \
         the catalog equal to a replay {:.1} s later ({posted} comments, 0 lost, 0 duplicated; \
         survivors' totals {:?})",
        steady.iter().map(|s| s.0).collect::<Vec<_>>(),
        steady.iter().map(|s| s.1).collect::<Vec<_>>(),
        steady.iter().map(|s| s.2).collect::<Vec<_>>(),
        took.as_secs_f64(),
        survivors
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_catalog_instances_share_the_partitions_on_kafka() {
    let env = Env::new("scale2");
    let figures = instances_share_the_catalog(&env, 2).await;
    println!("[fault] Kafka: {figures}");
    env.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_catalog_instances_share_the_partitions_on_kafka() {
    let env = Env::new("scale3k");
    let figures = instances_share_the_catalog(&env, 3).await;
    println!("[fault] Kafka: {figures}");
    env.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_catalog_instances_share_the_partitions_on_rabbitmq() {
    let env = Env::over_rabbitmq("scale3");
    let figures = instances_share_the_catalog(&env, 3).await;
    println!("[fault] RabbitMQ: {figures}");
    env.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_catalog_instances_share_the_segments_of_the_store_feed() {
    let env = Env::on_store_feed("segments2");
    let figures = instances_share_the_catalog(&env, 2).await;
    println!("[fault] store feed, 6 segments: {figures}");
    env.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_catalog_instances_share_the_segments_of_the_store_feed() {
    let env = Env::on_store_feed("segments3");
    let figures = instances_share_the_catalog(&env, 3).await;
    println!("[fault] store feed, 6 segments: {figures}");
    env.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_catalog_instances_share_the_partitions_on_redis() {
    let env = Env::over_redis("scale2r");
    let figures = instances_share_the_catalog(&env, 2).await;
    println!("[fault] Redis Streams: {figures}");
    env.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_catalog_instances_share_the_message_groups_on_sqs() {
    let env = Env::over_sqs("scale2s");
    let figures = instances_share_the_catalog(&env, 2).await;
    println!("[fault] SQS: {figures}");
    env.clean_up().await;
}
