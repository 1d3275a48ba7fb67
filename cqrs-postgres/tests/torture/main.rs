#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]
//! The torture test: seeded, randomized writers, faults and processors on the real server,
//! and a checker over the whole history. It hunts for what no single fault test thought of.
//!
//! - Writers: two processes' stores (two pools) with group commit, and transactions of their
//!   own (`PgAppendTx`), `Exact` and `Any` appends, hot and cold streams.
//! - Nemesis: a session that takes a transaction id and pauses mid-transaction (sometimes past
//!   its idle limit, when the server ends it), then commits or rolls back; processor instances
//!   killed and started again. On a server of the test's own (`CQRS_POSTGRES_SERVER`), the
//!   server too: killed (`kill -9` of every process) and started again, paused (`kill -STOP`)
//!   and resumed.
//! - Readers: a projection run in segments by two instances, and the same projection fed from a
//!   bus (the in-memory one) that a relay fills from the log, by two members of a group; both
//!   with a handler that fails now and then (retried, then dead-lettered), and an operator
//!   retrying dead letters. Instances, members and the relay are killed and started again.
//! - Checker: per stream, log order is version order; every append that was acknowledged is in
//!   the log once; every view holds each version of its stream exactly once (none lost, none
//!   applied twice) once the dead letters are retried with a fixed handler.
//!
//! `CQRS_TORTURE_SEED` replays a seed; `CQRS_TORTURE_SECS` sets how long the writers run (the
//! default is the short run CI makes).

#![cfg(target_os = "linux")]

#[path = "../common/mod.rs"]
mod common;
mod workload;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::server::OwnPostgres;
use common::{database_url, fresh_at, Added, TallyView};
use cqrs_core::memory::MemoryEventBus;
use cqrs_core::processor::{Backoff, ErrorPolicy};
use cqrs_core::relay::RelayHandle;
use cqrs_core::{
    BusFeed, DeadLetterStore, EventBus, EventReader, Relay, StoreFeed, TrackingProcessor, ViewStore,
};
use cqrs_postgres::{GroupCommit, PgViewStore, Postgres, SessionLimits};
use workload::{pauser, writer, FlakyTally, History};

const SEGMENTS: u32 = 4;
const LEASE: Duration = Duration::from_millis(1500);

/// On the shared server: every fault but the server's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torture() {
    run(&database_url(), None, 20).await;
}

/// On a server of the test's own, killed and paused as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torture_with_server_faults() {
    let mut server = OwnPostgres::start().await;
    let url = server.url();
    run(&url, Some(&mut server), 15).await;
}

async fn run(url: &str, mut server: Option<&mut OwnPostgres>, default_secs: u64) {
    let seed: u64 = std::env::var("CQRS_TORTURE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let secs: u64 = std::env::var("CQRS_TORTURE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_secs);
    println!("[torture] seed {seed} ({secs} s of writes); replay with CQRS_TORTURE_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let pg = fresh_at(url).await;
    let limits = SessionLimits::default().idle_in_transaction(Duration::from_secs(1));
    let mut stores = Vec::new();
    for _ in 0..2 {
        let process = Postgres::connect_with_limits(url, pg.schema(), limits)
            .await
            .expect("connect");
        stores.push(process.event_store().group_commit(GroupCommit::new(2)));
    }
    let stores = Arc::new(stores);
    let views: PgViewStore = pg.view_store();
    let history = Arc::new(History::default());
    let flaky = Arc::new(AtomicBool::new(true));
    let failures = Arc::new(AtomicU64::new(0));
    let handler_rng = Arc::new(Mutex::new(fastrand::Rng::with_seed(rng.u64(..))));
    let projection = || FlakyTally::<false> {
        rng: handler_rng.clone(),
        flaky: flaky.clone(),
        failures: failures.clone(),
    };
    let on_bus = || FlakyTally::<true> {
        rng: handler_rng.clone(),
        flaky: flaky.clone(),
        failures: failures.clone(),
    };
    let policy = ErrorPolicy::retry(
        1,
        Backoff::new(Duration::from_millis(1), Duration::from_millis(5)),
    )
    .then_dead_letter();
    let feed = Arc::new(StoreFeed::new(Arc::new(pg.event_store())));
    let start = |batch: usize| {
        TrackingProcessor::new(projection(), Arc::new(views.clone()))
            .error_policy(policy)
            .batch_size(batch)
            .idle_wait(Duration::from_millis(50))
            .segments(SEGMENTS, LEASE)
            .spawn(feed.clone())
    };
    // The relay fills the bus from the log; a group of two members applies it.
    let bus: Arc<dyn EventBus> = Arc::new(MemoryEventBus::new(4));
    let relay = || -> RelayHandle {
        Relay::new(
            "torture_relay",
            Arc::new(pg.event_store()),
            bus.clone(),
            Arc::new(pg.checkpoint_store()),
        )
        .batch_size(64)
        .spawn()
    };
    let member = |batch: usize| {
        TrackingProcessor::new(on_bus(), Arc::new(views.clone()))
            .error_policy(policy)
            .batch_size(batch)
            .idle_wait(Duration::from_millis(50))
            .spawn(Arc::new(BusFeed::new(bus.clone(), "catalog", ["counter"])))
    };

    let until = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..6 {
        tasks.push(tokio::spawn(writer(
            stores.clone(),
            fastrand::Rng::with_seed(rng.u64(..)),
            until,
            history.clone(),
        )));
    }
    tasks.push(tokio::spawn(pauser(
        stores[1].clone(),
        fastrand::Rng::with_seed(rng.u64(..)),
        until,
        history.clone(),
    )));
    let mut instances = vec![start(rng.usize(1..64)), start(rng.usize(1..64))];
    let mut members = vec![member(rng.usize(1..64)), member(rng.usize(1..64))];
    let mut relaying = relay();
    let operator = TrackingProcessor::new(projection(), Arc::new(views.clone()));
    let bus_operator = TrackingProcessor::new(on_bus(), Arc::new(views.clone()));
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(rng.u64(300..1500))).await;
        let choice = rng.u32(0..if server.is_some() { 8 } else { 6 });
        match choice {
            0 => {
                // Kill one instance without a word, and start another.
                let i = rng.usize(0..instances.len());
                instances.remove(i).abort();
                history.kills.fetch_add(1, Ordering::Relaxed);
                history.fault("an instance killed");
                instances.push(start(rng.usize(1..64)));
            }
            1 => {
                // The same for a member of the bus's group: its unacknowledged batch goes to
                // the other member or to the new one.
                let i = rng.usize(0..members.len());
                members.remove(i).abort();
                history.kills.fetch_add(1, Ordering::Relaxed);
                history.fault("a member killed");
                members.push(member(rng.usize(1..64)));
            }
            2 => {
                // The relay killed between a publish and its checkpoint: it publishes again.
                std::mem::replace(&mut relaying, relay()).abort();
                history.kills.fetch_add(1, Ordering::Relaxed);
                history.fault("the relay killed");
            }
            // A backend error leaves the dead letters as they were: tried again later.
            3 if operator.retry_dead_letters(&views).await.is_ok()
                && bus_operator.retry_dead_letters(&views).await.is_ok() =>
            {
                history.retries.fetch_add(1, Ordering::Relaxed);
                history.fault("dead letters retried");
            }
            6 | 7 => {
                if let Some(server) = server.as_deref_mut() {
                    server_fault(server, choice == 6, &mut rng, &history).await;
                }
            }
            _ => {}
        }
        for handle in instances.iter().chain(&members) {
            assert!(
                !handle.is_finished(),
                "seed {seed}: a processor ended: {:?}",
                handle.watch_ended().why()
            );
        }
    }
    // At least one kill and one pause of the server, whatever the draws: while the processors
    // still work through the last writes.
    if let Some(server) = server {
        if history.server_kills.load(Ordering::Relaxed) == 0 {
            server_fault(server, true, &mut rng, &history).await;
        }
        if history.server_pauses.load(Ordering::Relaxed) == 0 {
            server_fault(server, false, &mut rng, &history).await;
        }
    }
    for task in tasks {
        task.await.expect("a writer");
    }

    // The checker. The log: each stream's versions in order, every acknowledged append once.
    let reader = pg.event_store();
    let head = reader.head().await.expect("head");
    let mut log = Vec::new();
    let mut after = 0;
    while after < head {
        let page = reader.read_all(after, 5000).await.expect("read");
        let Some(last) = page.last() else {
            reader
                .wait_for_events(after, Duration::from_millis(100))
                .await
                .expect("wait");
            continue;
        };
        after = last.position;
        log.extend(page);
    }
    let mut versions: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for e in &log {
        let (last, total) = versions.entry(e.stream_id.clone()).or_default();
        if e.version != *last + 1 {
            // The smallest history: that stream's events as the log has them.
            let stream: Vec<(u64, u64)> = log
                .iter()
                .filter(|x| x.stream_id == e.stream_id)
                .map(|x| (x.version, x.position))
                .collect();
            panic!(
                "seed {seed}: stream {} read version {} after {last}; its (version, position) \
                 in log order: {stream:?}; faults: {}",
                e.stream_id,
                e.version,
                history.timeline()
            );
        }
        *last = e.version;
        *total += serde_json::from_slice::<Added>(&e.payload)
            .expect("payload")
            .amount;
    }
    let logged: HashSet<uuid::Uuid> = log.iter().map(|e| e.metadata.event_id).collect();
    assert_eq!(
        logged.len(),
        log.len(),
        "seed {seed}: an event twice in the log"
    );
    let acknowledged = history.acknowledged.lock().unwrap().clone();
    let missing = acknowledged
        .iter()
        .filter(|id| !logged.contains(id))
        .count();
    assert_eq!(
        missing,
        0,
        "seed {seed}: acknowledged appends missing from the log; faults: {}",
        history.timeline()
    );

    // The views, once the handler is fixed and the dead letters retried: each version once.
    flaky.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(60);
    let ids: Vec<String> = versions.keys().cloned().collect();
    loop {
        operator
            .retry_dead_letters(&views)
            .await
            .expect("the last retry");
        bus_operator
            .retry_dead_letters(&views)
            .await
            .expect("the last retry on the bus");
        let mut done = true;
        let mut short = Vec::new();
        for name in ["torture", "torture_bus"] {
            let docs = views.load(name, &ids).await.expect("load");
            done &=
                docs.len() == ids.len() && views.dead_letters(name).await.expect("dead").is_empty();
            for doc in &docs {
                let view: TallyView =
                    serde_json::from_value(doc.view.clone().expect("a view")).expect("view");
                let mut seen = view.versions.clone();
                seen.sort_unstable();
                let unique = seen.windows(2).all(|w| w[0] != w[1]);
                assert!(
                    unique,
                    "seed {seed}: {name} view {} applied a version twice: {:?}; faults: {}",
                    doc.id,
                    view.versions,
                    history.timeline()
                );
                let (last, total) = versions[&doc.id];
                if seen != (1..=last).collect::<Vec<_>>() || view.total != total {
                    done = false;
                    let missing: Vec<u64> = (1..=last)
                        .filter(|v| seen.binary_search(v).is_err())
                        .collect();
                    short.push(format!(
                        "{name} {} misses {missing:?} of 1..={last}",
                        doc.id
                    ));
                }
            }
        }
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: the views never equalled the log: {short:?}; faults: {}",
            history.timeline()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for handle in instances.into_iter().chain(members) {
        handle.stop().await.expect("a clean stop");
    }
    relaying.stop().await.expect("the relay's clean stop");
    println!(
        "[torture] seed {seed}: {} events in {} streams checked; {} appends acknowledged, \
         {} conflicts, {} failed; {} handler failures; {}; violations: 0",
        log.len(),
        versions.len(),
        history.appends.load(Ordering::Relaxed),
        history.conflicts.load(Ordering::Relaxed),
        history.failed.load(Ordering::Relaxed),
        failures.load(Ordering::Relaxed),
        history.faults(),
    );
}

/// The server killed (every session, transaction and lock gone at once; crash recovery on the
/// restart) or frozen (sessions hang mid-statement, leases run out meanwhile).
async fn server_fault(
    server: &mut OwnPostgres,
    kill: bool,
    rng: &mut fastrand::Rng,
    history: &History,
) {
    if kill {
        server.kill();
        let down = rng.u64(0..1500);
        history.fault(&format!("the server killed, down {down} ms"));
        tokio::time::sleep(Duration::from_millis(down)).await;
        server.restart().await;
        history.server_kills.fetch_add(1, Ordering::Relaxed);
    } else {
        server.pause().await;
        let pause = rng.u64(200..3000);
        history.fault(&format!("the server paused for {pause} ms"));
        tokio::time::sleep(Duration::from_millis(pause)).await;
        server.resume();
        history.server_pauses.fetch_add(1, Ordering::Relaxed);
    }
}
