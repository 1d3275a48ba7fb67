#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)]
//! What the SQS tests share: the endpoint, clients, fresh buses, cleanup.

use std::time::Duration;

use aws_config::meta::region::RegionProviderChain;
use aws_config::BehaviorVersion;
use aws_sdk_sqs::config::Credentials;
use aws_sdk_sqs::Client;
use cqrs_sqs::{SqsBus, SqsConfig};

/// The SQS endpoint: `AWS_ENDPOINT_URL`, else the local server `scripts/services.sh` starts.
pub fn endpoint() -> String {
    std::env::var("AWS_ENDPOINT_URL").unwrap_or_else(|_| "http://127.0.0.1:4566".to_owned())
}

/// A client of the endpoint, on the region and credentials of the environment where it has
/// them (a local server takes any).
pub async fn client_at(endpoint: &str) -> Client {
    let region = RegionProviderChain::default_provider().or_else("us-east-1");
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(region)
        .endpoint_url(endpoint);
    if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
        loader = loader.credentials_provider(Credentials::new("test", "test", None, None, "tests"));
    }
    Client::new(&loader.load().await)
}

pub async fn client() -> Client {
    client_at(&endpoint()).await
}

/// A fresh prefix, so tests never share queues.
pub fn prefix() -> String {
    format!("t{}-", &uuid::Uuid::new_v4().simple().to_string()[..10])
}

pub fn config() -> SqsConfig {
    SqsConfig::new(prefix())
        .expect("config")
        .visibility(Duration::from_secs(2))
        .discover_every(Duration::from_millis(200))
        .long_poll(Duration::from_secs(2))
}

/// A bus on the shared server. A missing server fails the test loudly: it never passes by
/// skipping.
pub async fn bus_with(config: SqsConfig) -> SqsBus {
    let bus = SqsBus::new(client().await, config);
    if let Err(e) = bus.check().await {
        panic!(
            "the SQS endpoint {} is not reachable ({e}); set AWS_ENDPOINT_URL or run \
             ./scripts/test.sh",
            endpoint()
        );
    }
    bus
}

pub async fn bus() -> SqsBus {
    bus_with(config()).await
}

/// How many messages a queue holds, visible or not.
pub async fn messages_in(client: &Client, url: &str) -> u64 {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let got = client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(A::ApproximateNumberOfMessages)
        .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .expect("queue attributes");
    let attrs = got.attributes().expect("attributes");
    [
        A::ApproximateNumberOfMessages,
        A::ApproximateNumberOfMessagesNotVisible,
    ]
    .iter()
    .map(|a| attrs.get(a).map_or(0, |n| n.parse::<u64>().unwrap()))
    .sum()
}

pub async fn url_of(client: &Client, name: &str) -> String {
    client
        .get_queue_url()
        .queue_name(name)
        .send()
        .await
        .expect("queue url")
        .queue_url()
        .expect("url")
        .to_owned()
}
