#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]
//! A group's queue deleted under its member, on a real SQS API server.

mod common;

use std::time::{Duration, Instant};

use common::{bus_with, config};
use cqrs_core::processor::Batch;
use cqrs_core::{Envelope, EventBus};
use cqrs_testing::bus_conformance::{Ticked, TYPE};
use cqrs_testing::envelope_of;

const IDLE: Duration = Duration::from_millis(200);

fn round(v: u64) -> Vec<Envelope> {
    (0..2)
        .map(|s| envelope_of(TYPE, &format!("s-{s}"), v, v * 1_000 + s, &Ticked { n: v }))
        .collect()
}

async fn exists(bus: &cqrs_sqs::SqsBus, name: &str) -> bool {
    let got = bus.client().get_queue_url().queue_name(name).send().await;
    got.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_deleted_under_its_member_is_made_again_and_what_follows_arrives_once() {
    // No group in the configuration: only the member can make its queue again.
    let bus = bus_with(config()).await;
    let mut member = bus.subscribe("g", &[TYPE], IDLE).await.unwrap();
    bus.publish(&round(1)).await.unwrap();
    let mut first = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while first.len() < 2 {
        assert!(Instant::now() < deadline, "got {} of 2", first.len());
        first.extend(member.next_batch(100).await.unwrap().events);
    }

    let name = bus.config().queue(TYPE, "g");
    let url = bus
        .client()
        .get_queue_url()
        .queue_name(&name)
        .send()
        .await
        .unwrap();
    let url = url.queue_url().unwrap().to_owned();
    bus.client()
        .delete_queue()
        .queue_url(&url)
        .send()
        .await
        .unwrap();
    let deleted = Instant::now();
    // The messages went with the queue: acknowledging them is done, not an error.
    member.ack(&Batch::from_bus(first)).await.unwrap();
    let (mut failures, mut gone) = (0, true);
    while gone {
        // AWS refuses the name for 60 s after a delete; a local server takes it at once.
        assert!(
            deleted.elapsed() < Duration::from_secs(90),
            "never made again ({failures} failed receives)"
        );
        match member.next_batch(100).await {
            Err(e) => {
                assert!(e.is_transient(), "{e}");
                failures += 1;
            }
            Ok(batch) => assert!(batch.events.is_empty(), "{:?}", batch.events),
        }
        gone = !exists(&bus, &name).await;
    }
    let remade = deleted.elapsed();

    bus.publish(&round(2)).await.unwrap();
    let mut second = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while second.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "got {} of 2 after the remake",
            second.len()
        );
        // The member's other receivers may still report the receives they had under way.
        match member.next_batch(100).await {
            Ok(batch) => second.extend(batch.events),
            Err(e) => {
                assert!(e.is_transient(), "{e}");
                failures += 1;
            }
        }
    }
    let mut got: Vec<_> = second
        .iter()
        .map(|e| (e.stream_id.clone(), e.version))
        .collect();
    got.sort();
    assert_eq!(got, [("s-0".to_owned(), 2), ("s-1".to_owned(), 2)]);
    member.ack(&Batch::from_bus(second)).await.unwrap();
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        if let Ok(batch) = member.next_batch(100).await {
            assert!(batch.events.is_empty(), "again: {:?}", batch.events);
        }
    }
    println!(
        "[fault] SQS queue deleted under its member: {failures} failed receives (transient), \
         the queue made again {:.1} s after the delete, 2 of 2 later events received once",
        remade.as_secs_f64()
    );
    drop(member);
    bus.delete_queues().await.unwrap();
}
