#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]
//! Records in both header forms on one topic, on a real broker: a publisher on the named
//! headers (a release before the one header, or a bus configured so) beside one on the
//! `cqrs.envelope` header, read by one member.

mod common;

use std::time::{Duration, Instant};

use common::{brokers, config, events};
use cqrs_core::{Envelope, EventBus};
use cqrs_kafka::KafkaBus;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_reads_records_of_both_header_forms_whole() {
    let config = config(&brokers());
    let named = KafkaBus::new(config.clone().named_headers(true)).expect("bus");
    let compact = KafkaBus::new(config).expect("bus");
    let mut sent = events(4, 6);
    // Routed by another key on some streams: their stream id travels in the headers.
    for e in sent.iter_mut().filter(|e| e.stream_id.ends_with('1')) {
        e.metadata.routing_key = Some("route-a".into());
        e.metadata.causation_id = Some(uuid::Uuid::new_v4());
        e.metadata.user.insert("tenant".into(), "acme".into());
    }
    let (first, second) = sent.split_at(sent.len() / 2);
    named.publish(first).await.expect("publish named");
    compact.publish(second).await.expect("publish compact");
    let mut member = compact
        .subscribe("g", &["clock"], Duration::from_millis(500))
        .await
        .expect("subscribe");
    let mut received: Vec<Envelope> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while received.len() < sent.len() {
        assert!(
            Instant::now() < deadline,
            "received {} of {}",
            received.len(),
            sent.len()
        );
        let batch = member.next_batch(100).await.expect("batch");
        assert!(batch.rejected.is_empty(), "{:?}", batch.rejected);
        member.ack(&batch).await.expect("ack");
        received.extend(batch.events);
    }
    let key = |e: &Envelope| (e.stream_id.clone(), e.version);
    received.sort_by_key(key);
    sent.sort_by_key(key);
    assert_eq!(received, sent, "every field of both forms survives");
}
