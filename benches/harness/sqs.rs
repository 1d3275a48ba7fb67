//! Scenarios on an SQS API server (`AWS_ENDPOINT_URL`, else moto on 127.0.0.1:4566): a plain
//! receive + delete loop (as many receives in flight as the framework keeps) beside the
//! framework's subscription into a projection, in the same invocation on the same messages.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::DeleteMessageBatchRequestEntry;
use aws_sdk_sqs::Client;
use cqrs_benches::{catalog_envelopes, consume_into_stats};
use cqrs_core::EventBus;
use cqrs_sqs::{SqsBus, SqsConfig};

use crate::{report, wanted};

const TYPES: [&str; 2] = ["product", "comment"];
/// Receives in flight per queue, in both loops (the framework's default).
const RECEIVES: usize = 4;

async fn client() -> Client {
    let endpoint =
        std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| "http://127.0.0.1:4566".into());
    let region = std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into());
    let key = std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_else(|_| "test".into());
    let secret = std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_else(|_| "test".into());
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_sdk_sqs::config::Region::new(region))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            key, secret, None, None, "harness",
        ))
        .load()
        .await;
    Client::new(&config)
}

/// `RECEIVES` loops per queue, each receiving 10 and deleting them in one batch: the server's
/// and client's rate with nothing of the framework.
async fn raw_consume(bus: &SqsBus, group: &str, events: u64) -> f64 {
    let seen = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut loops = Vec::new();
    for t in TYPES {
        let url = bus
            .client()
            .get_queue_url()
            .queue_name(bus.config().queue(t, group))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .queue_url()
            .unwrap_or_default()
            .to_owned();
        for _ in 0..RECEIVES {
            let (client, url, seen) = (bus.client().clone(), url.clone(), seen.clone());
            loops.push(tokio::spawn(async move {
                while seen.load(Ordering::Relaxed) < events {
                    let got = client
                        .receive_message()
                        .queue_url(&url)
                        .max_number_of_messages(10)
                        .wait_time_seconds(1)
                        .message_attribute_names("All")
                        .send()
                        .await
                        .unwrap_or_else(|e| panic!("{e}"));
                    if got.messages().is_empty() {
                        continue;
                    }
                    let mut delete = client.delete_message_batch().queue_url(&url);
                    for (i, m) in got.messages().iter().enumerate() {
                        let entry = DeleteMessageBatchRequestEntry::builder()
                            .id(i.to_string())
                            .receipt_handle(m.receipt_handle().unwrap_or_default())
                            .build()
                            .unwrap_or_else(|e| panic!("{e}"));
                        delete = delete.entries(entry);
                    }
                    delete.send().await.unwrap_or_else(|e| panic!("{e}"));
                    seen.fetch_add(got.messages().len() as u64, Ordering::Relaxed);
                }
            }));
        }
    }
    for l in loops {
        l.await.unwrap_or_else(|e| panic!("{e}"));
    }
    start.elapsed().as_secs_f64()
}

/// The framework: a subscription of `group` feeding the processor (in-memory views).
async fn framework_consume(bus: &SqsBus, group: &str, events: u64) -> f64 {
    let mut source = bus
        .subscribe(group, &TYPES, Duration::from_millis(200))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    consume_into_stats(source.as_mut(), events, 1_000).await
}

pub async fn run(events: u64, runs: u64, products: u64) {
    let envelopes = catalog_envelopes(events, products);
    if !wanted("sqs_to_projection") {
        return;
    }
    for _ in 0..runs {
        // Both groups' queues exist before the publish, so both receive every message.
        let prefix = format!("bench{}-", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let config = SqsConfig::new(prefix)
            .and_then(|c| c.groups(["raw", "framework"]))
            .unwrap_or_else(|e| panic!("{e}"));
        let bus = SqsBus::new(client().await, config);
        for chunk in envelopes.chunks(1_000) {
            bus.publish(chunk).await.unwrap_or_else(|e| panic!("{e}"));
        }
        let raw = raw_consume(&bus, "raw", events).await;
        report("sqs_raw_consume", events, raw);
        let framework = framework_consume(&bus, "framework", events).await;
        report("sqs_to_projection", events, framework);
        println!(
            "{}",
            serde_json::json!({"ratio": "sqs_to_projection / sqs_raw_consume",
                "value": (raw / framework * 100.0).round() / 100.0})
        );
        bus.delete_queues().await.unwrap_or_else(|e| panic!("{e}"));
    }
}
