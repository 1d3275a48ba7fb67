//! An HTTP client of the services, and the catalog they should converge on.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shop::catalog::CatalogEntry;

use super::{Env, Service};

/// A status and a JSON body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Answer {
    /// The `error` code of an error answer.
    pub fn code(&self) -> &str {
        self.body["error"].as_str().unwrap_or("")
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

pub async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("the answer ({status}) is not JSON ({e}): {text:?}"));
    Answer { status, body }
}

pub async fn post(client: &reqwest::Client, url: &str, body: Value) -> Answer {
    answer(client.post(url).json(&body).send().await.expect("POST")).await
}

/// The ops token the tests start the services with.
pub const OPS_TOKEN: &str = "shop-test-ops-token";

/// A `POST` to an ops route, with `token` as its bearer token (none without).
pub async fn post_ops(client: &reqwest::Client, url: &str, token: Option<&str>) -> Answer {
    let mut request = client.post(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    answer(request.send().await.expect("POST")).await
}

pub async fn put(client: &reqwest::Client, url: &str, body: Value) -> Answer {
    answer(client.put(url).json(&body).send().await.expect("PUT")).await
}

pub async fn get(client: &reqwest::Client, url: &str) -> Answer {
    answer(client.get(url).send().await.expect("GET")).await
}

/// Posts a comment, waiting (bounded) for the comment service to learn of a product created a
/// moment ago.
pub async fn post_comment(
    client: &reqwest::Client,
    comments: &Service,
    comment_id: &str,
    product_id: &str,
    rating: u8,
) -> Answer {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = post(
            client,
            &comments.url("/comments"),
            json!({
                "comment_id": comment_id,
                "product_id": product_id,
                "author": format!("author of {comment_id}"),
                "text": format!("comment {comment_id} on {product_id}"),
                "rating": rating,
            }),
        )
        .await;
        if answer.code() != "unknown_product" || Instant::now() > deadline {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every entry of the catalog service, page by page.
pub async fn catalog(client: &reqwest::Client, catalog: &Service) -> Vec<CatalogEntry> {
    let mut all = Vec::new();
    for page in 0.. {
        let answer = get(
            client,
            &catalog.url(&format!("/products?page={page}&per_page=7")),
        )
        .await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        let items: Vec<CatalogEntry> =
            serde_json::from_value(answer.body["items"].clone()).expect("entries");
        let total = answer.body["total"].as_u64().expect("total");
        let done = items.is_empty();
        all.extend(items);
        if done || all.len() as u64 >= total {
            break;
        }
    }
    all
}

/// Waits (bounded) until the catalog service shows what a replay of the store builds; returns
/// it.
pub async fn converged(
    env: &Env,
    client: &reqwest::Client,
    service: &Service,
) -> Vec<CatalogEntry> {
    // Two minutes: a catalog killed inside a MongoDB transaction leaves its locks until the
    // server's transaction lifetime (60 s) ends; the restarted one retries until then.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let expected = env.replayed_catalog().await;
        let live = catalog(client, service).await;
        if comparable(&live) == comparable(&expected) {
            return live;
        }
        if Instant::now() > deadline {
            assert_eq!(
                comparable(&live),
                comparable(&expected),
                "the catalog did not converge within 120 s"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Entries with their average ratings rounded to 12 decimals: SecantusDB keeps a double to 16
/// significant digits (62 / 21 comes back as 2.952380952380953, not 2.9523809523809526).
fn comparable(entries: &[CatalogEntry]) -> Vec<CatalogEntry> {
    let mut out = entries.to_vec();
    for e in &mut out {
        e.average_rating = e.average_rating.map(|a| (a * 1e12).round() / 1e12);
    }
    out
}

/// A service's `GET /health`.
pub async fn health(client: &reqwest::Client, service: &Service) -> cqrs_axum::HealthAnswer {
    let answer = get(client, &service.url("/health")).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    serde_json::from_value(answer.body).expect("health")
}

/// Sums the ratings counted over the catalog and checks no comment appears twice.
pub fn comment_count(entries: &[CatalogEntry]) -> u64 {
    for entry in entries {
        let mut ids: Vec<_> = entry.comments.iter().map(|c| &c.comment_id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(
            ids.len(),
            entry.comments.len(),
            "a comment was applied twice"
        );
    }
    entries.iter().map(|e| e.rating_count).sum()
}
