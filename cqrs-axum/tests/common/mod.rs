//! Shared by the ops API's tests: a projection that dead-letters odd scores until its "fix" is
//! deployed, and an app's router served on a free port.
#![allow(dead_code, missing_docs, clippy::expect_used, clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cqrs_core::{BoxError, Envelope, Projection};
use cqrs_testing::envelope_of;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    pub points: u32,
}
cqrs_core::event!(Scored, "ops.Scored");

/// Until the "fix" is deployed, the handler refuses odd scores.
pub static FIXED: AtomicBool = AtomicBool::new(false);

pub struct Scores;
impl Projection for Scores {
    const NAME: &'static str = "scores";
    type Event = Scored;
    type View = u32;
    fn apply(&self, view: &mut Option<u32>, e: &Scored, _: &Envelope) -> Result<(), BoxError> {
        if e.points % 2 == 1 && !FIXED.load(Ordering::SeqCst) {
            return Err(format!("odd score {}", e.points).into());
        }
        *view.get_or_insert(0) += e.points;
        Ok(())
    }
}

/// A score as stored at `stream`/`version`.
pub fn scored(stream: &str, version: u64, points: u32) -> Envelope {
    envelope_of("player", stream, version, 0, &Scored { points })
}

/// Serves `router` on a free port; returns its base URL.
pub async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(cqrs_axum::serve_until(
        listener,
        router,
        std::future::pending(),
    ));
    url
}

/// Waits (10 s at most) until `done`.
pub async fn until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
