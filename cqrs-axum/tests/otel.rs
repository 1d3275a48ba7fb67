//! Feature `otel`: a command's spans reach an OTLP/HTTP collector (a stand-in served by the
//! test) with the command's correlation id.
#![cfg(feature = "otel")]
#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]

use std::sync::Arc;

use axum::routing::post;
use cqrs_core::gateway::CommandMetadata;
use cqrs_core::memory::MemoryEventStore;
use cqrs_core::App;
use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use tracing_subscriber::layer::SubscriberExt as _;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Opened {
    pub owner: String,
}
cqrs_core::event!(Opened, "otel.Opened");

pub struct Open {
    pub id: String,
}
impl cqrs_core::Command for Open {
    type Aggregate = Account;
    fn aggregate_id(&self) -> &str {
        &self.id
    }
}

#[derive(Debug, thiserror::Error)]
#[error("never")]
pub struct Never;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Account;
impl cqrs_core::Aggregate for Account {
    const TYPE: &'static str = "otel-account";
    type Command = Open;
    type Event = Opened;
    type Error = Never;
    fn handle(&self, c: &Open) -> Result<Vec<Opened>, Never> {
        Ok(vec![Opened {
            owner: c.id.clone(),
        }])
    }
    fn apply(&mut self, _: &Opened) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_spans_reach_the_collector_with_their_correlation_id() {
    // The collector: keeps every OTLP request body.
    let received: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let bodies = received.clone();
    let collector = axum::Router::new().route(
        "/v1/traces",
        post(move |body: axum::body::Bytes| {
            let bodies = bodies.clone();
            async move {
                bodies.lock().expect("lock").push(body.to_vec());
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let endpoint = format!(
        "http://{}/v1/traces",
        listener.local_addr().expect("address")
    );
    tokio::spawn(cqrs_axum::serve_until(
        listener,
        collector,
        std::future::pending(),
    ));

    let otel = cqrs_axum::otel::Otel::new("otel-test", &endpoint).expect("exporter");
    let subscriber = tracing_subscriber::registry().with(otel.layer());
    let correlation = uuid::Uuid::new_v4();
    {
        let _traced = tracing::subscriber::set_default(subscriber);
        let app = App::builder()
            .with(Arc::new(MemoryEventStore::new()))
            .build()
            .expect("build");
        let metadata = CommandMetadata {
            correlation_id: Some(correlation),
            ..CommandMetadata::default()
        };
        app.gateway()
            .send_with(Open { id: "a-1".into() }, metadata)
            .await
            .expect("send");
        app.shutdown().await.expect("shutdown");
    }
    let flushing = otel.clone();
    tokio::task::spawn_blocking(move || flushing.flush())
        .await
        .expect("join")
        .expect("flush");

    let bodies = received.lock().expect("lock").clone();
    let all: Vec<u8> = bodies.concat();
    let has = |needle: &str| all.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(!bodies.is_empty(), "the collector received nothing");
    assert!(has("command"), "the command span");
    assert!(has("append"), "the append span inside it");
    assert!(
        has(&correlation.to_string()),
        "the correlation id as an attribute"
    );
    assert!(has("otel-test"), "the service name");
    tokio::task::spawn_blocking(move || otel.shutdown())
        .await
        .expect("join")
        .expect("shutdown");
}
