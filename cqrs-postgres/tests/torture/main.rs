#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]
//! The torture test: seeded, randomized writers, faults and processors on the real server,
//! and a checker over the whole history. It hunts for what no single fault test thought of.
//!
//! - Writers: two processes' stores (two pools) with group commit, and transactions of their
//!   own (`PgAppendTx`), `Exact` and `Any` appends, hot and cold streams.
//! - Nemesis: a session that takes a transaction id and pauses mid-transaction (sometimes past
//!   its idle limit, when the server ends it), then commits or rolls back; processor instances
//!   killed and started again.
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

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{database_url, fresh, Added, TallyView};
use cqrs_core::envelope::{ExpectedVersion, Metadata, NewEvent};
use cqrs_core::memory::MemoryEventBus;
use cqrs_core::processor::{Backoff, ErrorPolicy};
use cqrs_core::relay::RelayHandle;
use cqrs_core::{
    BoxError, BusFeed, DeadLetterStore, Envelope, Error, EventAppender, EventBus, EventReader,
    Projection, Relay, StoreFeed, TrackingProcessor, ViewStore,
};
use cqrs_postgres::{GroupCommit, PgEventStore, PgViewStore, Postgres, SessionLimits};

const HOT: u64 = 4;
const COLD: u64 = 48;
const SEGMENTS: u32 = 4;
const LEASE: Duration = Duration::from_millis(1500);

/// A tally whose handler fails on a share of its calls while `flaky` holds; `BUS` names the
/// bus-fed one apart.
struct FlakyTally<const BUS: bool> {
    rng: Arc<Mutex<fastrand::Rng>>,
    flaky: Arc<AtomicBool>,
    failures: Arc<AtomicU64>,
}

impl<const BUS: bool> Projection for FlakyTally<BUS> {
    const NAME: &'static str = if BUS { "torture_bus" } else { "torture" };
    type Event = Added;
    type View = TallyView;
    fn view_id(&self, _: &Added, envelope: &Envelope) -> String {
        envelope.stream_id.clone()
    }
    fn apply(
        &self,
        view: &mut Option<TallyView>,
        e: &Added,
        envelope: &Envelope,
    ) -> Result<(), BoxError> {
        let view = view.get_or_insert_with(TallyView::default);
        if self.flaky.load(Ordering::SeqCst) && self.rng.lock().unwrap().u32(0..100) < 3 {
            self.failures.fetch_add(1, Ordering::Relaxed);
            // Half done when it fails: the processor must put the view back as it was.
            view.versions.push(envelope.version);
            return Err("a transient failure of the handler".into());
        }
        view.total += e.amount;
        view.versions.push(envelope.version);
        Ok(())
    }
}

fn added(amount: u64) -> NewEvent {
    NewEvent {
        event_name: "pgtest.Added".into(),
        event_version: 1,
        payload: bytes::Bytes::from(format!("{{\"amount\":{amount}}}")),
        metadata: Metadata::new(),
    }
}

/// What the run did, for the checker and the report.
#[derive(Default)]
struct History {
    /// Event ids of every append that was acknowledged.
    acknowledged: Mutex<Vec<uuid::Uuid>>,
    appends: AtomicU64,
    conflicts: AtomicU64,
    failed: AtomicU64,
    pauses: AtomicU64,
    ended_by_server: AtomicU64,
    kills: AtomicU64,
    retries: AtomicU64,
}

impl History {
    fn acknowledge(&self, envelopes: &[Envelope]) {
        self.appends.fetch_add(1, Ordering::Relaxed);
        let mut ids = self.acknowledged.lock().unwrap();
        ids.extend(envelopes.iter().map(|e| e.metadata.event_id));
    }
    fn refused(&self, e: &Error) {
        match e {
            Error::Conflict { .. } => self.conflicts.fetch_add(1, Ordering::Relaxed),
            _ => self.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

fn stream(rng: &mut fastrand::Rng) -> String {
    if rng.u32(0..10) < 6 {
        format!("hot-{}", rng.u64(0..HOT))
    } else {
        format!("cold-{}", rng.u64(0..COLD))
    }
}

/// One writer: appends until `until`, by a path the seed picks each time.
async fn writer(
    stores: Arc<Vec<PgEventStore>>,
    mut rng: fastrand::Rng,
    until: Instant,
    history: Arc<History>,
) {
    while Instant::now() < until {
        let store = &stores[rng.usize(0..stores.len())];
        let target = stream(&mut rng);
        let events: Vec<NewEvent> = (0..rng.u64(1..=3))
            .map(|_| added(rng.u64(1..100)))
            .collect();
        let outcome = match rng.u32(0..10) {
            // A transaction of the caller's own, with one or two appends.
            0..=1 => {
                let second = stream(&mut rng);
                async {
                    let mut tx = store.begin().await?;
                    let mut written = tx
                        .append("counter", &target, ExpectedVersion::Any, events)
                        .await?;
                    if second != target {
                        written.extend(
                            tx.append(
                                "counter",
                                &second,
                                ExpectedVersion::Any,
                                vec![added(rng.u64(1..100))],
                            )
                            .await?,
                        );
                    }
                    tx.commit().await?;
                    Ok::<_, Error>(written)
                }
                .await
            }
            // An append that expects the version it read.
            2..=4 => {
                let version = store
                    .read_stream(&target, 0)
                    .await
                    .map(|s| s.last().map_or(0, |e| e.version));
                match version {
                    Ok(v) => {
                        store
                            .append("counter", &target, ExpectedVersion::Exact(v), events)
                            .await
                    }
                    Err(e) => Err(e),
                }
            }
            // No version expected, through the group commit.
            _ => {
                store
                    .append("counter", &target, ExpectedVersion::Any, events)
                    .await
            }
        };
        match outcome {
            Ok(written) => history.acknowledge(&written),
            Err(e) => history.refused(&e),
        }
    }
}

/// A process that pauses mid-transaction: takes a transaction id with an append, sleeps (now
/// and then past its idle limit, when the server ends the session), then commits or rolls back.
async fn pauser(
    store: PgEventStore,
    mut rng: fastrand::Rng,
    until: Instant,
    history: Arc<History>,
) {
    while Instant::now() < until {
        let Ok(mut tx) = store.begin().await else {
            continue;
        };
        let target = stream(&mut rng);
        let Ok(written) = tx
            .append("counter", &target, ExpectedVersion::Any, vec![added(1)])
            .await
        else {
            let _ = tx.rollback().await;
            continue;
        };
        history.pauses.fetch_add(1, Ordering::Relaxed);
        let pause = if rng.u32(0..8) == 0 {
            1300
        } else {
            rng.u64(0..400)
        };
        tokio::time::sleep(Duration::from_millis(pause)).await;
        if rng.bool() {
            match tx.commit().await {
                Ok(()) => history.acknowledge(&written),
                Err(_) => {
                    history.ended_by_server.fetch_add(1, Ordering::Relaxed);
                }
            }
        } else {
            let _ = tx.rollback().await;
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(0..100))).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torture() {
    let seed: u64 = std::env::var("CQRS_TORTURE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let secs: u64 = std::env::var("CQRS_TORTURE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    println!("[torture] seed {seed} ({secs} s of writes); replay with CQRS_TORTURE_SEED={seed}");
    let mut rng = fastrand::Rng::with_seed(seed);
    let pg = fresh().await;
    let limits = SessionLimits::default().idle_in_transaction(Duration::from_secs(1));
    let mut stores = Vec::new();
    for _ in 0..2 {
        let process = Postgres::connect_with_limits(&database_url(), pg.schema(), limits)
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
        match rng.u32(0..6) {
            0 => {
                // Kill one instance without a word, and start another.
                let i = rng.usize(0..instances.len());
                instances.remove(i).abort();
                history.kills.fetch_add(1, Ordering::Relaxed);
                instances.push(start(rng.usize(1..64)));
            }
            1 => {
                // The same for a member of the bus's group: its unacknowledged batch goes to
                // the other member or to the new one.
                let i = rng.usize(0..members.len());
                members.remove(i).abort();
                history.kills.fetch_add(1, Ordering::Relaxed);
                members.push(member(rng.usize(1..64)));
            }
            2 => {
                // The relay killed between a publish and its checkpoint: it publishes again.
                std::mem::replace(&mut relaying, relay()).abort();
                history.kills.fetch_add(1, Ordering::Relaxed);
            }
            // A backend error leaves the dead letters as they were: tried again later.
            3 if operator.retry_dead_letters(&views).await.is_ok()
                && bus_operator.retry_dead_letters(&views).await.is_ok() =>
            {
                history.retries.fetch_add(1, Ordering::Relaxed);
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
        assert_eq!(
            e.version,
            *last + 1,
            "seed {seed}: stream {} read version {} after {}",
            e.stream_id,
            e.version,
            last
        );
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
        missing, 0,
        "seed {seed}: acknowledged appends missing from the log"
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
                    "seed {seed}: {name} view {} applied a version twice: {:?}",
                    doc.id, view.versions
                );
                let (last, total) = versions[&doc.id];
                if seen != (1..=last).collect::<Vec<_>>() || view.total != total {
                    done = false;
                }
            }
        }
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: the views never equalled the log"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for handle in instances.into_iter().chain(members) {
        handle.stop().await.expect("a clean stop");
    }
    relaying.stop().await.expect("the relay's clean stop");
    println!(
        "[torture] seed {seed}: {} events in {} streams checked; {} appends acknowledged, {} conflicts, {} failed; {} paused transactions ({} ended by the server); {} handler failures; {} kills of processors, members and the relay; {} operator retries; violations: 0",
        log.len(),
        versions.len(),
        history.appends.load(Ordering::Relaxed),
        history.conflicts.load(Ordering::Relaxed),
        history.failed.load(Ordering::Relaxed),
        history.pauses.load(Ordering::Relaxed),
        history.ended_by_server.load(Ordering::Relaxed),
        failures.load(Ordering::Relaxed),
        history.kills.load(Ordering::Relaxed),
        history.retries.load(Ordering::Relaxed),
    );
}
