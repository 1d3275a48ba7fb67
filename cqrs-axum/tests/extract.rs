//! The extractors over real HTTP: a path id checked and named, ids made when a body gives none.
#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]

mod common;

use axum::routing::get;
use cqrs_axum::{ApiError, Id};

async fn answer(http: &reqwest::Client, url: String) -> (u16, serde_json::Value) {
    let response = http.get(url).send().await.expect("GET");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_id_is_checked_and_a_bad_one_named() {
    let routes = axum::Router::new()
        .route(
            "/products/{product_id}",
            get(|Id(id): Id| async move { axum::Json(id) }),
        )
        .route(
            "/pairs/{a}/{b}",
            get(|Id(id): Id| async move { Ok::<_, ApiError>(axum::Json(id)) }),
        );
    let base = common::serve(cqrs_axum::json_service(routes, 1024)).await;
    let http = reqwest::Client::new();
    let ok = answer(&http, format!("{base}/products/p-1.a_b")).await;
    assert_eq!(ok, (200, serde_json::json!("p-1.a_b")));
    // Percent-decoded before the check: a space and a quote are refused, naming the parameter.
    for bad in [
        "p%201",
        "x'%3B%20DROP%20TABLE%20events",
        "%C3%A9",
        &"a".repeat(65),
        "%2E%2E%2E",
    ] {
        let (status, body) = answer(&http, format!("{base}/products/{bad}")).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (422, Some("invalid_id")),
            "{bad}"
        );
        let message = body["message"].as_str().expect("message");
        assert!(message.contains("product_id"), "{message}");
    }
    let (status, body) = answer(&http, format!("{base}/products/%FF")).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_path")));
    // A route with two parameters is the service's mistake: a 500 that says nothing more.
    let (status, body) = answer(&http, format!("{base}/pairs/a/b")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (500, Some("internal")),
        "{body}"
    );
}
