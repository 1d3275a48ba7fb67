#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]
//! End to end over HTTP: the product, comment and catalog services as separate processes on
//! real PostgreSQL, Kafka-API (or RabbitMQ) and MongoDB-API servers.

mod common;

use std::sync::Arc;

use common::{catalog, client, converged, get, post, post_comment, post_ops, put, Env, OPS_TOKEN};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_services_converge_survive_a_killed_catalog_and_replay_the_same() {
    flow(Env::new("flow")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_over_rabbitmq() {
    flow(Env::over_rabbitmq("rabbit")).await;
}

async fn metrics_page(http: &reqwest::Client, service: &common::Service) -> String {
    let answer = http.get(service.url("/metrics")).send().await.expect("GET");
    assert_eq!(answer.status(), 200);
    answer.text().await.expect("text")
}

async fn flow(env: Env) {
    let http = client();
    let products = env.start("product").await;
    let comments = env.start("comment").await;
    let mut catalog_service = env.start("catalog").await;

    // Products, then comments on them.
    for p in 0..8 {
        let created = post(
            &http,
            &products.url("/products"),
            json!({"product_id": format!("p-{p}"), "name": format!("Product {p}"), "price_cents": 1000 + p}),
        )
        .await;
        assert_eq!(created.status, 201, "{:?}", created.body);
        assert_eq!(created.body["events"], json!(["shop.ProductCreated"]));
    }
    for c in 0..24u8 {
        let posted = post_comment(
            &http,
            &comments,
            &format!("c-{c}"),
            &format!("p-{}", c % 8),
            c % 5 + 1,
        )
        .await;
        assert_eq!(posted.status, 201, "{:?}", posted.body);
    }
    let first = converged(&env, &http, &catalog_service).await;
    assert_eq!(first.len(), 8);
    // Each service's figures on /metrics: 8 products created through the gateway and 8
    // events relayed, 8 + 24 applied to the catalog.
    let metric = |page: &str, series: &str| {
        page.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
    };
    let page = metrics_page(&http, &products).await;
    let created = r#"cqrs_command_seconds_count{aggregate="product",outcome="committed"}"#;
    assert_eq!(metric(&page, created), Some(8.0), "{page}");
    let relayed = r#"cqrs_relay_events_published_total{relay="product-relay"}"#;
    assert_eq!(metric(&page, relayed), Some(8.0), "{page}");
    let page = metrics_page(&http, &catalog_service).await;
    let applied = r#"cqrs_processor_events_applied_total{projection="catalog"}"#;
    assert_eq!(metric(&page, applied), Some(32.0), "{page}");
    let p3 = first.iter().find(|e| e.product_id == "p-3").expect("p-3");
    assert_eq!(p3.name.as_deref(), Some("Product 3"));
    assert_eq!(p3.rating_count, 3);

    // A rename and a price change: the catalog follows.
    let renamed = put(
        &http,
        &products.url("/products/p-3/name"),
        json!({"name": "Renamed 3"}),
    )
    .await;
    assert_eq!(renamed.status, 200, "{:?}", renamed.body);
    let repriced = put(
        &http,
        &products.url("/products/p-3/price"),
        json!({"price_cents": 999}),
    )
    .await;
    assert_eq!(repriced.status, 200, "{:?}", repriced.body);
    let second = converged(&env, &http, &catalog_service).await;
    let p3 = second.iter().find(|e| e.product_id == "p-3").expect("p-3");
    assert_eq!(
        (p3.name.as_deref(), p3.price_cents),
        (Some("Renamed 3"), Some(999))
    );
    let one = get(&http, &catalog_service.url("/products/p-3")).await;
    assert_eq!(one.status, 200);
    assert_eq!(one.body["name"], "Renamed 3");

    // kill -9 of the catalog while comments stream in; a restart converges to the same
    // catalog as a replay of the store.
    let writer = {
        let (http, url) = (http.clone(), comments.url("/comments"));
        tokio::spawn(async move {
            for c in 100..400u32 {
                let answer = post(
                    &http,
                    &url,
                    json!({
                        "comment_id": format!("c-{c}"),
                        "product_id": format!("p-{}", c % 8),
                        "author": "stream",
                        "text": format!("streamed {c}"),
                        "rating": c % 5 + 1,
                    }),
                )
                .await;
                assert_eq!(answer.status, 201, "{:?}", answer.body);
            }
        })
    };
    // Wait until the catalog is part of the way through the stream, then kill it.
    let kill_deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let seen_before_kill = loop {
        assert!(
            std::time::Instant::now() < kill_deadline,
            "the catalog did not follow the stream"
        );
        let seen: u64 = catalog(&http, &catalog_service)
            .await
            .iter()
            .map(|e| e.rating_count)
            .sum();
        if seen >= 24 + 60 {
            break seen;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    catalog_service.kill();
    writer.await.expect("writer");
    assert!(
        seen_before_kill < 324,
        "the catalog was killed after the stream had ended"
    );
    catalog_service = env.start("catalog").await;
    let restarted = std::time::Instant::now();
    let after_kill = converged(&env, &http, &catalog_service).await;
    println!(
        "[fault] catalog service over {} killed (SIGKILL) mid-stream: {seen_before_kill} of 324 comments \
         applied at the kill; after the restart equal to a from-scratch replay in {:.1} s, \
         324 comments, 0 lost, 0 duplicated",
        if env.amqp_url.is_some() { "RabbitMQ" } else { "Kafka" },
        restarted.elapsed().as_secs_f64()
    );
    // Every comment once. The catalog applies a comment by its id (a second application
    // would replace it, not add it), so that events are applied exactly once is asserted where
    // it can be seen: the framework's kill tests (`cqrs-postgres/tests/views.rs`,
    // `cqrs-kafka/tests/kafka.rs`), on views that list the versions they applied.
    assert_eq!(after_kill.iter().map(|e| e.rating_count).sum::<u64>(), 324);

    // The catalog answers while the product service is down; comments go on, since the
    // comment service knows the products from its own projection.
    products.kill();
    let while_down = catalog(&http, &catalog_service).await;
    assert_eq!(while_down, after_kill);
    assert_eq!(
        get(&http, &catalog_service.url("/products/p-1"))
            .await
            .status,
        200
    );
    let posted = post_comment(&http, &comments, "c-while-down", "p-1", 4).await;
    assert_eq!(posted.status, 201, "{:?}", posted.body);
    let with_down = converged(&env, &http, &catalog_service).await;
    assert_eq!(with_down.iter().map(|e| e.rating_count).sum::<u64>(), 325);

    // Replay: stop the catalog, rebuild it from the store with the replay command, start it
    // again: the same catalog, and its consumer group takes over without applying anything
    // twice.
    catalog_service.stop();
    let out = env.replay();
    assert!(out.contains("replayed"), "{out}");
    assert!(out.contains("into 8 catalog entries"), "{out}");
    let catalog_service = env.start("catalog").await;
    assert_eq!(catalog(&http, &catalog_service).await, with_down);
    let posted = post_comment(&http, &comments, "c-after-replay", "p-2", 2).await;
    assert_eq!(posted.status, 201, "{:?}", posted.body);
    let last = converged(&env, &http, &catalog_service).await;
    assert_eq!(last.iter().map(|e| e.rating_count).sum::<u64>(), 326);
    let dead = get(&http, &catalog_service.url("/dead-letters")).await;
    assert_eq!(dead.body["items"], json!([]));
    assert_eq!(dead.body["projection"], "catalog");

    drop((comments, catalog_service));
    env.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_a_4xx_with_a_json_error_and_store_nothing() {
    let env = Env::new("errors");
    let http = client();
    let products = env.start("product").await;
    let comments = env.start("comment").await;
    let created = post(
        &http,
        &products.url("/products"),
        json!({"product_id": "p-1", "name": "Kettle", "price_cents": 3900}),
    )
    .await;
    assert_eq!(created.status, 201);
    assert_eq!(
        post_comment(&http, &comments, "c-1", "p-1", 5).await.status,
        201
    );
    let stored = env.stored_events().await;
    assert_eq!(stored, 2);

    let raw = |url: String, body: Vec<u8>, content_type: &'static str| {
        let http = http.clone();
        async move {
            common::answer(
                http.post(url)
                    .header("content-type", content_type)
                    .body(body)
                    .send()
                    .await
                    .expect("POST"),
            )
            .await
        }
    };
    let comment = |patch: serde_json::Value| {
        let mut body = json!({"product_id": "p-1", "author": "ana", "text": "fine", "rating": 4});
        for (k, v) in patch.as_object().expect("object") {
            if v.is_null() {
                body.as_object_mut().expect("object").remove(k);
            } else {
                body[k] = v.clone();
            }
        }
        body
    };
    let json_type = "application/json";
    let cases = vec![
        (
            "malformed JSON",
            raw(
                comments.url("/comments"),
                b"{\"product_id\": \"p-1\",".to_vec(),
                json_type,
            )
            .await,
            400,
            "malformed_json",
        ),
        (
            "invalid UTF-8",
            raw(
                comments.url("/comments"),
                b"{\"product_id\": \"p-\xff\xfe\"}".to_vec(),
                json_type,
            )
            .await,
            400,
            "malformed_json",
        ),
        (
            // A typed body stops at the first value of the wrong type: the depth is never walked.
            "deep nesting",
            raw(
                comments.url("/comments"),
                format!("{}{}", "[".repeat(5_000), "]".repeat(5_000)).into_bytes(),
                json_type,
            )
            .await,
            422,
            "invalid_body",
        ),
        (
            "not JSON at all",
            raw(
                products.url("/products"),
                b"name=Kettle".to_vec(),
                "application/x-www-form-urlencoded",
            )
            .await,
            415,
            "unsupported_media_type",
        ),
        (
            "missing field",
            post(
                &http,
                &comments.url("/comments"),
                comment(json!({"rating": null})),
            )
            .await,
            422,
            "invalid_body",
        ),
        (
            "missing name",
            post(
                &http,
                &products.url("/products"),
                json!({"product_id": "p-2", "price_cents": 1}),
            )
            .await,
            422,
            "invalid_body",
        ),
        (
            "unknown field",
            post(
                &http,
                &products.url("/products"),
                json!({"product_id": "p-2", "name": "x", "price_cents": 1, "admin": true}),
            )
            .await,
            422,
            "invalid_body",
        ),
        (
            "wrong type",
            post(
                &http,
                &products.url("/products"),
                json!({"product_id": "p-2", "name": "x", "price_cents": "cheap"}),
            )
            .await,
            422,
            "invalid_body",
        ),
        (
            "rating 6",
            post(
                &http,
                &comments.url("/comments"),
                comment(json!({"rating": 6})),
            )
            .await,
            422,
            "rating_out_of_range",
        ),
        (
            "rating 0",
            post(
                &http,
                &comments.url("/comments"),
                comment(json!({"rating": 0})),
            )
            .await,
            422,
            "rating_out_of_range",
        ),
        (
            "rating -1",
            post(
                &http,
                &comments.url("/comments"),
                comment(json!({"rating": -1})),
            )
            .await,
            422,
            "rating_out_of_range",
        ),
        (
            "rating 256",
            post(
                &http,
                &comments.url("/comments"),
                comment(json!({"rating": 256})),
            )
            .await,
            422,
            "rating_out_of_range",
        ),
        (
            "edit to rating 9",
            put(
                &http,
                &comments.url("/comments/c-1"),
                json!({"text": "x", "rating": 9}),
            )
            .await,
            422,
            "rating_out_of_range",
        ),
        (
            "unknown product",
            post(
                &http,
                &comments.url("/comments"),
                comment(json!({"product_id": "p-404"})),
            )
            .await,
            422,
            "unknown_product",
        ),
        (
            "oversized body",
            post(
                &http,
                &comments.url("/comments"),
                comment(json!({"text": "x".repeat(64 * 1024)})),
            )
            .await,
            413,
            "body_too_large",
        ),
        (
            "text too long",
            post(
                &http,
                &comments.url("/comments"),
                comment(json!({"text": "é".repeat(2001)})),
            )
            .await,
            422,
            "too_long",
        ),
        (
            "NUL in a text",
            post(
                &http,
                &comments.url("/comments"),
                comment(json!({"text": "nul \u{0} here"})),
            )
            .await,
            422,
            "invalid_text",
        ),
        (
            "SQL-looking id",
            post(
                &http,
                &products.url("/products"),
                json!({"product_id": "p'; DROP TABLE events; --", "name": "x", "price_cents": 1}),
            )
            .await,
            422,
            "invalid_id",
        ),
        (
            "empty name",
            post(
                &http,
                &products.url("/products"),
                json!({"product_id": "p-3", "name": "   ", "price_cents": 1}),
            )
            .await,
            422,
            "empty_name",
        ),
        (
            "negative price",
            post(
                &http,
                &products.url("/products"),
                json!({"product_id": "p-3", "name": "x", "price_cents": -5}),
            )
            .await,
            422,
            "negative_price",
        ),
        (
            "duplicate product",
            post(
                &http,
                &products.url("/products"),
                json!({"product_id": "p-1", "name": "again", "price_cents": 1}),
            )
            .await,
            409,
            "already_exists",
        ),
        (
            "rename an unknown product",
            put(
                &http,
                &products.url("/products/p-404/name"),
                json!({"name": "x"}),
            )
            .await,
            404,
            "not_found",
        ),
        (
            "edit an unknown comment",
            put(
                &http,
                &comments.url("/comments/c-404"),
                json!({"text": "x", "rating": 3}),
            )
            .await,
            404,
            "not_found",
        ),
        (
            "no such route",
            post(&http, &products.url("/nowhere"), json!({})).await,
            404,
            "not_found",
        ),
        (
            // Streams are keyed by id alone: a comment cannot take a product's id.
            "a comment with a product's id",
            post(
                &http,
                &comments.url("/comments"),
                comment(json!({"comment_id": "p-1"})),
            )
            .await,
            409,
            "id_taken",
        ),
    ];
    let hostile = cases.len();
    // An oversized body is read to its end before the 413, so the client always gets the
    // answer instead of a connection closed while it was still sending.
    // 512 KiB: more than the sockets buffer, so the client is still sending when the service
    // has its answer (a 64 KiB body, buffered whole, hid the race on a quiet machine).
    let oversized = comment(json!({"text": "x".repeat(512 * 1024)}));
    for attempt in 0..50 {
        let answer = post(&http, &comments.url("/comments"), oversized.clone()).await;
        assert_eq!(
            (answer.status, answer.code()),
            (413, "body_too_large"),
            "oversized body, try {attempt}"
        );
    }
    for (case, answer, status, code) in cases {
        assert_eq!(
            (answer.status, answer.code()),
            (status, code),
            "{case}: {:?}",
            answer.body
        );
        assert!(
            answer.body["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{case}: no message in {:?}",
            answer.body
        );
    }
    // A SQL-looking text is just text: stored verbatim, harmless.
    let text = "Robert'); DROP TABLE events;--";
    let sql = post(
        &http,
        &comments.url("/comments"),
        comment(json!({"comment_id": "c-sql", "text": text})),
    )
    .await;
    assert_eq!(sql.status, 201, "{:?}", sql.body);
    assert_eq!(
        env.stored_events().await,
        stored + 1,
        "a refused request stored something"
    );
    let store = Arc::new(env.postgres().await.event_store());
    let last = cqrs_core::EventReader::read_all(store.as_ref(), 0, 100)
        .await
        .expect("read");
    let payload: serde_json::Value = serde_json::from_slice(&last[2].payload).expect("json");
    assert_eq!(payload["text"], text);
    println!(
        "[fault] hostile HTTP input: {hostile} bad requests, each a 4xx with a JSON error, and \
         50 more 512 KiB bodies each answered 413; 0 events stored by them; no panic (the \
         services kept answering)"
    );

    drop((products, comments));
    env.clean_up().await;
}

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

#[test]
fn a_service_that_cannot_connect_says_why_and_never_shows_the_password() {
    for (service, flag, url) in [
        (
            "product",
            "--database-url",
            "postgres://shop:s3cret@127.0.0.1:1/shop",
        ),
        (
            "product",
            "--database-url",
            "postgres://shop:s3cret@127.0.0.1:1/shop?sslmode=bogus",
        ),
        (
            "catalog",
            "--mongodb-uri",
            "mongodb://shop:s3cret@127.0.0.1:1/?serverSelectionTimeoutMS=500",
        ),
    ] {
        let output = std::process::Command::new(common::shop_binary())
            .args([service, "--listen", "127.0.0.1:0", flag, url])
            .env("RUST_LOG", "debug")
            .output()
            .expect("run");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "{service} started without its server"
        );
        assert!(stderr.contains("error: "), "{stderr}");
        assert!(
            !stderr.contains("s3cret") && !stdout.contains("s3cret"),
            "the password leaked: {stderr}"
        );
    }
    println!(
        "[fault] connection strings with passwords: 3 failing connections logged at debug \
         level, the password in none of the output"
    );
}
