//! The console page in a real headless browser (Chromium through its WebDriver): it shows a
//! dead letter the test created, a retry with a wrong token is refused and keeps it, the retry
//! with the token resolves it and the page shows it gone. Asserts on the DOM.
//!
//! Needs Chromium and its driver: `CQRS_CHROMEDRIVER` and `CQRS_CHROMIUM` (default
//! `/usr/bin/chromedriver`, `/usr/bin/chromium`); `./scripts/test.sh` installs both.
#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::{scored, serve, Scores, FIXED};
use cqrs_axum::OpsApi;
use cqrs_core::memory::MemoryEventStore;
use cqrs_core::{App, ErrorPolicy};
use fantoccini::{Client, ClientBuilder, Locator};

fn program(var: &str, default: &str) -> String {
    let path = std::env::var(var).unwrap_or_else(|_| default.to_owned());
    assert!(
        std::path::Path::new(&path).exists(),
        "{path} is missing: this test drives a real Chromium through its WebDriver. Install \
         Debian's `chromium` and `chromium-driver` (./scripts/test.sh does) or set {var}"
    );
    path
}

/// A chromedriver of the test's own, killed when dropped.
struct Driver {
    _child: tokio::process::Child,
    url: String,
}

async fn driver() -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = tokio::process::Command::new(program("CQRS_CHROMEDRIVER", "/usr/bin/chromedriver"))
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start chromedriver");
    let url = format!("http://127.0.0.1:{port}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while reqwest::get(format!("{url}/status")).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "chromedriver did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Driver { _child: child, url }
}

async fn browser(driver: &Driver) -> Client {
    let profile = std::env::temp_dir().join(format!("cqrs-console-{}", uuid::Uuid::new_v4()));
    let options = serde_json::json!({
        "binary": program("CQRS_CHROMIUM", "/usr/bin/chromium"),
        // As root Chromium needs --no-sandbox.
        "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 format!("--user-data-dir={}", profile.display())],
    });
    let mut caps = serde_json::Map::new();
    caps.insert("goog:chromeOptions".into(), options);
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a browser session")
}

/// Waits until `css` matches (or, with `gone`, no longer matches) an element.
async fn until_present(page: &Client, css: &str, gone: bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let found = !page
            .find_all(Locator::Css(css))
            .await
            .expect("find")
            .is_empty();
        if found != gone {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{css} {}: {}",
            if gone { "still shown" } else { "never shown" },
            page.source().await.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn text(page: &Client, css: &str) -> String {
    page.find(Locator::Css(css))
        .await
        .expect(css)
        .text()
        .await
        .expect("text")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_a_dead_letter_and_retries_it_with_the_token() {
    let store = Arc::new(MemoryEventStore::new());
    let scored = [(2, "p-1"), (3, "p-2"), (4, "p-1")]
        .iter()
        .enumerate()
        .map(|(i, (points, stream))| scored(stream, i as u64 + 1, *points))
        .collect();
    store.insert_raw(scored);
    let app = App::builder()
        .with(store)
        .projection(Scores, |p| {
            p.error_policy(ErrorPolicy::dead_letter())
                .idle_wait(Duration::from_millis(20))
        })
        .build()
        .expect("build");
    let router = OpsApi::new("scores", app.ops())
        .token(Some("console-token"))
        .router();
    let url = serve(router).await;
    let ops = app.ops();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let letter = loop {
        if let Some(letter) = ops.dead_letters("scores").await.expect("list").pop() {
            break letter;
        }
        assert!(tokio::time::Instant::now() < deadline, "no dead letter");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let row = format!(
        "#dead-letters tr[data-event-id=\"{}\"]",
        letter.envelope.metadata.event_id
    );

    let driver = driver().await;
    let page = browser(&driver).await;
    page.goto(&format!("{url}/console")).await.expect("open");
    until_present(&page, &row, false).await;
    assert!(text(&page, &row).await.contains("odd score 3"));
    assert_eq!(text(&page, "#service").await, "scores");
    assert_eq!(text(&page, "#status").await, "ok");
    until_present(&page, "#processors tr[data-name=\"scores\"]", false).await;
    assert!(text(&page, "#processors tr[data-name=\"scores\"]")
        .await
        .contains("running"));

    // A wrong token: refused, said so, and the dead letter stays.
    let field = page.find(Locator::Css("#token")).await.expect("token");
    field.send_keys("not-the-token").await.expect("type");
    let button = format!("{row} button.retry");
    page.find(Locator::Css(&button))
        .await
        .expect("button")
        .click()
        .await
        .expect("click");
    until_present(&page, "#message.error", false).await;
    assert!(
        text(&page, "#message").await.contains("Bearer"),
        "the 401's message"
    );
    // Past the page's next refresh (every 2 s), the dead letter is still listed.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    until_present(&page, &row, false).await;
    assert_eq!(
        app.ops().dead_letters("scores").await.expect("list").len(),
        1
    );

    // The fix is deployed; the right token resolves it and the page shows it gone.
    FIXED.store(true, Ordering::SeqCst);
    field.clear().await.expect("clear");
    field.send_keys("console-token").await.expect("type");
    page.find(Locator::Css(&button))
        .await
        .expect("button")
        .click()
        .await
        .expect("click");
    until_present(&page, &row, true).await;
    assert!(text(&page, "#message").await.contains("1 resolved"));
    assert!(app
        .ops()
        .dead_letters("scores")
        .await
        .expect("list")
        .is_empty());
    let model = app.read_model::<Scores>().expect("model");
    assert_eq!(model.get("p-2").await.expect("get"), Some(3));
    println!(
        "[fault] console in Chromium: a wrong token's retry refused (401, dead letter kept); \
         the token's retry resolved it and the page dropped the row"
    );
    page.close().await.expect("close");
    app.shutdown().await.expect("shutdown");
}
