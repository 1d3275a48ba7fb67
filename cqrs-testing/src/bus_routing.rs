//! The bus conformance check of routing keys: every event of one key, in every topic, reaches
//! one member of a group, in order (see [`cqrs_core::routing`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::envelope_of;
use cqrs_core::bus::{BusFeed, EventBus};
use cqrs_core::envelope::Envelope;
use cqrs_core::memory::MemoryViewStore;
use cqrs_core::processor::{ErrorPolicy, Feed, TrackingProcessor};
use cqrs_core::projection::Projection;
use cqrs_core::BoxError;

use super::bus_conformance::{publish, Ticked, IDLE, PATIENCE, TYPE, TYPE_2};

/// Routing keys published.
const KEYS: u64 = 16;
/// Streams per key in each of the two topics.
const STREAMS: u64 = 2;
/// Versions per stream.
const VERSIONS: u64 = 5;

/// What one member applied: (member, aggregate type, stream, version, position, key).
type Log = Arc<Mutex<Vec<(usize, String, String, u64, u64, String)>>>;

/// One view per routing key, as a read model that spans aggregates keys its views; it logs
/// which member applied each event.
#[derive(Clone)]
struct Routed {
    member: usize,
    log: Log,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct KeyView {
    events: u64,
}

impl Projection for Routed {
    const NAME: &'static str = "routed";
    type Event = Ticked;
    type View = KeyView;
    fn view_id(&self, _: &Ticked, envelope: &Envelope) -> String {
        envelope.routing_key().to_owned()
    }
    fn apply(&self, view: &mut Option<KeyView>, _: &Ticked, e: &Envelope) -> Result<(), BoxError> {
        self.log.lock().push((
            self.member,
            e.aggregate_type.clone(),
            e.stream_id.clone(),
            e.version,
            e.position,
            e.routing_key().to_owned(),
        ));
        view.get_or_insert_with(KeyView::default).events += 1;
        Ok(())
    }
}

/// Version `v` of every routed stream: `a-{k}-{j}` in [`TYPE`] and `b-{k}-{j}` in
/// [`TYPE_2`], all routed by `k-{k}`.
fn routed_round(v: u64) -> Vec<Envelope> {
    let mut out = Vec::new();
    for k in 0..KEYS {
        for j in 0..STREAMS {
            for (n, (ty, prefix)) in [(TYPE, "a"), (TYPE_2, "b")].into_iter().enumerate() {
                let stream = format!("{prefix}-{k}-{j}");
                let position = v * 10_000 + (k * STREAMS + j) * 2 + n as u64;
                let mut e = envelope_of(ty, &stream, v, position, &Ticked { n: v });
                e.metadata.routing_key = Some(format!("k-{k}"));
                out.push(e);
            }
        }
    }
    out
}

/// Two members of one group on two topics. Once both work (warmed up on streams routed by
/// their ids), events of 16 routing keys, each key with streams in both topics, are published:
/// every event of a key is applied by one member, whichever topic carries it, in publish
/// order per topic, each once; and both members get keys. Returns the figures.
pub async fn one_routing_key_reaches_one_member_in_order(bus: Arc<dyn EventBus>) -> String {
    routing(bus, true).await
}

/// As [`one_routing_key_reaches_one_member_in_order`], for a bus that hands a routing key to
/// one member at a time but not always to the same one (SQS FIFO message groups): a key may
/// move between members, so a member may fold a batch again on a view another member changed
/// meanwhile (the view's revision catches it). What it asserts instead of each key staying
/// with one member: every key's view holds each event once, every event of a key in a topic
/// was first applied in publish order, and both members applied keys. Returns the figures.
pub async fn one_routing_key_is_applied_once_in_order(bus: Arc<dyn EventBus>) -> String {
    routing(bus, false).await
}

async fn routing(bus: Arc<dyn EventBus>, pinned: bool) -> String {
    let store = Arc::new(MemoryViewStore::new());
    let log: Log = Arc::default();
    let members: Vec<_> = (0..2)
        .map(|member| {
            let feed: Arc<dyn Feed> = Arc::new(BusFeed::new(bus.clone(), "routed", [TYPE, TYPE_2]));
            let routed = Routed {
                member,
                log: log.clone(),
            };
            TrackingProcessor::new(routed, store.clone())
                .batch_size(10)
                .error_policy(ErrorPolicy::dead_letter())
                .idle_wait(IDLE)
                .spawn(feed)
        })
        .collect();
    // Warm up on streams routed by their ids, until both members work and the group has
    // settled: then no partition moves while the routed events flow.
    let deadline = Instant::now() + PATIENCE;
    let mut v = 0;
    loop {
        let working: BTreeSet<usize> = log.lock().iter().map(|e| e.0).collect();
        if working.len() == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "both members of the group never worked"
        );
        v += 1;
        let warm: Vec<Envelope> = (0..8)
            .map(|s| envelope_of(TYPE, &format!("w-{s}"), v, v * 100 + s, &Ticked { n: v }))
            .collect();
        publish(bus.as_ref(), &warm).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let warmed = log.lock().len();
    for version in 1..=VERSIONS {
        publish(bus.as_ref(), &routed_round(version)).await;
    }
    let total = (KEYS * STREAMS * 2 * VERSIONS) as usize;
    let routed = || {
        log.lock()
            .iter()
            .filter(|e| e.5.starts_with("k-"))
            .cloned()
            .collect::<Vec<_>>()
    };
    loop {
        let log = routed();
        let seen = if pinned {
            log.len()
        } else {
            // Batches folded again log their events twice; the views show what committed.
            let distinct: BTreeSet<_> = log.iter().map(|e| (&e.1, &e.2, e.3)).collect();
            let views = cqrs_core::ReadModel::<Routed>::new(store.clone())
                .find(&cqrs_core::view::Query::all())
                .await
                .expect("reading the views");
            let committed: u64 = views
                .iter()
                .filter(|(id, _)| id.starts_with("k-"))
                .map(|(_, v)| v.events)
                .sum();
            distinct.len().min(committed as usize)
        };
        if seen >= total {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{seen} of {total} routed events were applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for member in members {
        member.stop().await.expect("a member stops cleanly");
    }
    let mut applied = routed();
    let folded = applied.len();
    if !pinned {
        // A batch folded again (on a view another member changed) is logged twice: keep each
        // event's first application, by the member that first applied it.
        let mut first = BTreeSet::new();
        applied.retain(|(_, ty, stream, version, _, _)| {
            first.insert((ty.clone(), stream.clone(), *version))
        });
        let views: Vec<(String, KeyView)> = cqrs_core::ReadModel::<Routed>::new(store.clone())
            .find(&cqrs_core::view::Query::all())
            .await
            .expect("reading the views");
        let routed_views: Vec<_> = views
            .iter()
            .filter(|(id, _)| id.starts_with("k-"))
            .collect();
        assert_eq!(
            routed_views.len() as u64,
            KEYS,
            "one view per key: {views:?}"
        );
        for (id, view) in routed_views {
            assert_eq!(
                view.events,
                STREAMS * 2 * VERSIONS,
                "{id}: each event of the key in the view once"
            );
        }
    }
    assert_eq!(
        applied.len(),
        total,
        "each routed event applied once (an event applied again was refolded: two members \
         wrote one key's view at once)"
    );
    let mut by_key: BTreeMap<&str, BTreeSet<usize>> = BTreeMap::new();
    let mut order: BTreeMap<(&str, &str), Vec<u64>> = BTreeMap::new();
    let mut streams: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (member, ty, stream, version, position, key) in &applied {
        by_key.entry(key).or_default().insert(*member);
        order.entry((key, ty)).or_default().push(*position);
        streams.entry(stream).or_default().push(*version);
    }
    if pinned {
        for (key, holders) in &by_key {
            assert_eq!(
                holders.len(),
                1,
                "every event of routing key {key}, in both topics, reaches one member"
            );
        }
    }
    for ((key, ty), positions) in &order {
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "{key} in {ty}: applied in publish order: {positions:?}"
        );
    }
    for (stream, versions) in &streams {
        assert_eq!(
            *versions,
            (1..=VERSIONS).collect::<Vec<_>>(),
            "{stream}: each version once, in order"
        );
    }
    let first: usize = by_key.values().filter(|m| m.contains(&0)).count();
    let second: usize = by_key.values().filter(|m| m.contains(&1)).count();
    assert!(
        first > 0 && second > 0 && (!pinned || first < by_key.len()),
        "both members hold keys: the first holds {first} and the second {second} of {}",
        by_key.len()
    );
    if pinned {
        format!(
            "after {warmed} warm-up events, {total} events of {KEYS} routing keys over two \
             topics: every key at one member ({first} and {} keys), in publish order per \
             topic, each event once",
            by_key.len() - first
        )
    } else {
        let moved = by_key.values().filter(|m| m.len() > 1).count();
        format!(
            "after {warmed} warm-up events, {total} events of {KEYS} routing keys over two \
             topics: {moved} keys moved between the members (the first applied {first} keys, \
             the second {second}); {} applications folded again on a view the other member \
             changed; every key's view holds each event once; first applied in publish order \
             per topic",
            folded - total
        )
    }
}
