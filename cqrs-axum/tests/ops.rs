//! The ops API over HTTP on a running app (embedded backends): health, processors, paged dead
//! letters, and retries behind the bearer token.
#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::{scored, serve, until, Scores, FIXED};
use cqrs_axum::{DeadLetterPage, HealthAnswer, OpsApi};
use cqrs_core::memory::MemoryEventStore;
use cqrs_core::{App, Envelope, ErrorPolicy};
use cqrs_testing::raw_envelope;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_paged_and_retried_only_with_the_token() {
    let store = Arc::new(MemoryEventStore::new());
    // Six events, three of them odd: dead-lettered while the rest flows.
    let points = [2, 3, 4, 5, 6, 7];
    store.insert_raw(
        points
            .iter()
            .enumerate()
            .map(|(i, p)| scored(&format!("player-{}", i % 2), i as u64 / 2 + 1, *p))
            .collect(),
    );
    let app = App::builder()
        .with(store.clone())
        .projection(Scores, |p| {
            p.error_policy(ErrorPolicy::dead_letter())
                .idle_wait(Duration::from_millis(20))
        })
        .build()
        .expect("build");
    let token = "s3cret-token";
    let url = serve(OpsApi::new("scores", app.ops()).token(Some(token)).router()).await;
    let http = reqwest::Client::new();
    let get = |path: &str| {
        let http = http.clone();
        let url = format!("{url}{path}");
        async move {
            let answer = http.get(&url).send().await.expect("GET");
            (
                answer.status().as_u16(),
                answer.json::<Value>().await.expect("json"),
            )
        }
    };
    until("three dead letters", async || {
        get("/dead-letters").await.1["items"]
            .as_array()
            .map(Vec::len)
            == Some(3)
    })
    .await;

    // Pages of two: two pages, each letter once, oldest first, the last page without a cursor.
    let (code, first) = get("/dead-letters?limit=2").await;
    assert_eq!(code, 200);
    let first: DeadLetterPage = serde_json::from_value(first).expect("page");
    assert_eq!(first.projection, "scores");
    let next = first.next.clone().expect("a cursor after a full page");
    let (_, second) = get(&format!("/dead-letters?limit=2&cursor={next}")).await;
    let second: DeadLetterPage = serde_json::from_value(second).expect("page");
    assert_eq!(second.next, None);
    let positions: Vec<u64> = first
        .items
        .iter()
        .chain(&second.items)
        .map(|d| d.position)
        .collect();
    assert_eq!(positions, [2, 4, 6], "the odd scores, in log order");
    assert!(
        first.items[0].reason.contains("odd score 3"),
        "{:?}",
        first.items[0]
    );
    for (query, code) in [
        ("?limit=0", "bad_query"),
        ("?limit=501", "bad_query"),
        ("?cursor=nonsense", "bad_query"),
        ("?projection=nope", "unknown_projection"),
    ] {
        let (status, body) = get(&format!("/dead-letters{query}")).await;
        assert_eq!(
            (status >= 400, body["error"].as_str()),
            (true, Some(code)),
            "{query}"
        );
    }

    // Retries: no token, a wrong one, a token of another scheme: 401, nothing changes.
    FIXED.store(true, Ordering::SeqCst);
    let retry = format!("{url}/dead-letters/retry");
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Basic s3cret-token"),
        Some("Bearer s3cret-token2"),
    ] {
        let mut request = http.post(&retry);
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let answer = request.send().await.expect("POST");
        assert_eq!(answer.status().as_u16(), 401, "{auth:?}");
        let body: Value = answer.json().await.expect("json");
        assert_eq!(body["error"], "unauthorized");
    }
    assert_eq!(
        get("/dead-letters").await.1["items"]
            .as_array()
            .map(Vec::len),
        Some(3),
        "refused retries change nothing"
    );

    // With the token: one, then the rest; the views then hold every score.
    let one = first.items[0].event_id;
    let answer = http
        .post(format!("{url}/dead-letters/{one}/retry"))
        .bearer_auth(token)
        .send()
        .await
        .expect("POST");
    assert_eq!(answer.status().as_u16(), 200);
    let report: Value = answer.json().await.expect("json");
    assert_eq!(report["resolved"], json!([one]));
    let again = http
        .post(format!("{url}/dead-letters/{one}/retry"))
        .bearer_auth(token)
        .send()
        .await
        .expect("POST");
    assert_eq!(
        again.status().as_u16(),
        404,
        "resolved: nothing left to retry"
    );
    let all = http
        .post(&retry)
        .bearer_auth(token)
        .send()
        .await
        .expect("POST");
    assert_eq!(all.status().as_u16(), 200);
    let report: Value = all.json().await.expect("json");
    assert_eq!(report["resolved"].as_array().map(Vec::len), Some(2));
    assert_eq!(get("/dead-letters").await.1["items"], json!([]));
    let model = app.read_model::<Scores>().expect("model");
    assert_eq!(model.get("player-0").await.expect("get"), Some(2 + 4 + 6));
    assert_eq!(model.get("player-1").await.expect("get"), Some(3 + 5 + 7));
    println!(
        "[fault] ops API authentication: retries without a token, with a wrong token, another \
         scheme and a longer token: 4 x 401, 3 dead letters kept; with the token 1 + 2 resolved"
    );
    app.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_retries_are_disabled_not_open() {
    let app = App::builder()
        .with(Arc::new(MemoryEventStore::new()))
        .projection(Scores, |p| p)
        .build()
        .expect("build");
    let http = reqwest::Client::new();
    for configured in [None, Some("")] {
        let url = serve(OpsApi::new("scores", app.ops()).token(configured).router()).await;
        let one = uuid::Uuid::new_v4();
        for route in [
            "/dead-letters/retry".to_owned(),
            format!("/dead-letters/{one}/retry"),
        ] {
            for auth in [None, Some("Bearer "), Some("Bearer anything")] {
                let mut request = http.post(format!("{url}{route}"));
                if let Some(auth) = auth {
                    request = request.header("authorization", auth);
                }
                let answer = request.send().await.expect("POST");
                assert_eq!(
                    answer.status().as_u16(),
                    403,
                    "{configured:?} {route} {auth:?}"
                );
                let body: Value = answer.json().await.expect("json");
                assert_eq!(body["error"], "disabled");
            }
        }
        // Reading stays open.
        let listed = http
            .get(format!("{url}/dead-letters"))
            .send()
            .await
            .expect("GET");
        assert_eq!(listed.status().as_u16(), 200);
    }
    app.shutdown().await.expect("shutdown");
}

/// A processor that stops (here on an event no type is registered for) turns `/health` from
/// 200 `ok` to 503 `degraded`, with the reason; `/processors` says the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_a_stopped_processor() {
    let store = Arc::new(MemoryEventStore::new());
    let app = App::builder()
        .with(store.clone())
        .projection(Scores, |p| p.idle_wait(Duration::from_millis(20)))
        .build()
        .expect("build");
    let url = serve(OpsApi::new("scores", app.ops()).router()).await;
    let health = || async {
        let answer = reqwest::get(format!("{url}/health")).await.expect("GET");
        let code = answer.status().as_u16();
        (code, answer.json::<HealthAnswer>().await.expect("health"))
    };
    let (code, report) = health().await;
    assert_eq!((code, report.service.as_str()), (200, "scores"));
    assert!(report.health.is_ok());
    assert_eq!(report.health.processors[0].stopped, None);

    store.insert_raw(vec![raw_envelope(
        "player",
        "p-1",
        1,
        1,
        "ops.NoSuchEvent",
        1,
        "{}",
    )]);
    until("degraded", async || health().await.0 == 503).await;
    let (_, report) = health().await;
    let why = report.health.processors[0]
        .stopped
        .clone()
        .unwrap_or_default();
    assert!(why.contains("ops.NoSuchEvent"), "{why}");
    let processors: Value = reqwest::get(format!("{url}/processors"))
        .await
        .expect("GET")
        .json()
        .await
        .expect("json");
    assert_eq!(processors[0]["name"], "scores");
    assert_eq!(processors[0]["feed"], "store");
    assert!(processors[0]["stopped"]
        .as_str()
        .unwrap_or("")
        .contains("NoSuchEvent"));
    assert!(
        app.shutdown().await.is_err(),
        "the processor's error comes back"
    );
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Added {
    pub n: u32,
}
cqrs_core::event!(Added, "ops.Added");

pub struct Add {
    pub id: String,
    pub n: u32,
}
impl cqrs_core::Command for Add {
    type Aggregate = Counter;
    fn aggregate_id(&self) -> &str {
        &self.id
    }
}

#[derive(Debug, thiserror::Error)]
#[error("adding nothing")]
pub struct Nothing;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Counter {
    total: u64,
}
impl cqrs_core::Aggregate for Counter {
    const TYPE: &'static str = "ops-counter";
    type Command = Add;
    type Event = Added;
    type Error = Nothing;
    fn handle(&self, c: &Add) -> Result<Vec<Added>, Nothing> {
        if c.n == 0 {
            return Err(Nothing);
        }
        Ok(vec![Added { n: c.n }])
    }
    fn apply(&mut self, e: &Added) {
        self.total += u64::from(e.n);
    }
}

struct Totals;
impl cqrs_core::Fold for Totals {
    const NAME: &'static str = "ops-totals";
    type Event = Added;
    type View = u64;
    fn fold(&self, total: &mut u64, e: &Added, _: &Envelope) {
        *total += u64::from(e.n);
    }
}

/// The value of one sample line of a Prometheus text page.
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Commands, the relay and the processor each leave their figures on `/metrics`, under the
/// documented names and labels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_commands_relays_and_processors() {
    // Installed before the app runs, as a service does: what happens earlier is not recorded.
    cqrs_axum::prometheus().expect("recorder");
    let mut app = App::builder()
        .with(Arc::new(MemoryEventStore::new()))
        .with(cqrs_core::memory::MemoryEventBus::new(2))
        .relay("ops-relay", |r| r)
        .projection(Totals, |p| p.idle_wait(Duration::from_millis(20)))
        .build()
        .expect("build");
    for (id, n) in [("a", 1), ("a", 2), ("b", 3), ("b", 0)] {
        let _ = app.gateway().send(Add { id: id.into(), n }).await;
    }
    app.caught_up(Duration::from_secs(10))
        .await
        .expect("caught up");
    let url = serve(OpsApi::new("ops", app.ops()).router()).await;
    until("the lag back to 0 and the relay done", async || {
        let page = reqwest::get(format!("{url}/metrics")).await.expect("GET");
        let page = page.text().await.expect("text");
        sample(
            &page,
            r#"cqrs_processor_lag_seconds{projection="ops-totals"}"#,
        ) == Some(0.0)
            && sample(
                &page,
                r#"cqrs_relay_events_published_total{relay="ops-relay"}"#,
            ) == Some(3.0)
    })
    .await;
    let answer = reqwest::get(format!("{url}/metrics")).await.expect("GET");
    let kind = answer.headers()["content-type"]
        .to_str()
        .expect("type")
        .to_owned();
    assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    let page = answer.text().await.expect("text");
    let expect = [
        (
            r#"cqrs_processor_events_applied_total{projection="ops-totals"}"#,
            3.0,
        ),
        (r#"cqrs_processor_position{projection="ops-totals"}"#, 3.0),
        (r#"cqrs_processor_lag_events{projection="ops-totals"}"#, 0.0),
        (r#"cqrs_relay_breaker{relay="ops-relay"}"#, 0.0),
        (r#"cqrs_relay_position{relay="ops-relay"}"#, 3.0),
        (
            r#"cqrs_command_seconds_count{aggregate="ops-counter",outcome="committed"}"#,
            3.0,
        ),
        (
            r#"cqrs_command_seconds_count{aggregate="ops-counter",outcome="rejected"}"#,
            1.0,
        ),
    ];
    for (series, value) in expect {
        assert_eq!(sample(&page, series), Some(value), "{series} in\n{page}");
    }
    assert!(
        page.contains(
            r#"cqrs_processor_batch_seconds_bucket{projection="ops-totals",le="0.0001"}"#
        ),
        "durations are histograms:\n{page}"
    );
    let processors: Value = reqwest::get(format!("{url}/processors"))
        .await
        .expect("GET")
        .json()
        .await
        .expect("json");
    assert_eq!(processors[0]["lag_seconds"], 0.0, "{processors}\n{page}");
    app.shutdown().await.expect("shutdown");
}
