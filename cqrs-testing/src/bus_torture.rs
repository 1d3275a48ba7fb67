//! The torture run every bus takes: seeded writers append to an in-memory store, a relay
//! publishes the log to the bus, and a group of two bus-fed members applies it with a handler
//! that fails now and then half way through a change (retried, then dead-lettered), while the
//! members and the relay are killed and started again at random (and the broker paused, when
//! the test started its own) and an operator retries dead letters. The checker: once the handler is fixed and the last dead letters retried, every
//! stream's view holds each of its versions exactly once (none lost, none applied twice).
//!
//! ```no_run
//! # async fn example() {
//! use std::time::Duration;
//! use cqrs_core::memory::MemoryEventBus;
//! use cqrs_testing::bus_torture::{run, Options};
//! let options = Options { seed: 7, ..Options::from_env(Duration::from_secs(5)) };
//! let report = run(MemoryEventBus::new(4), options).await;
//! println!("{report}");
//! # }
//! ```
//!
//! A bus whose groups receive only what is published once they exist declares [`GROUP`]
//! before the run. A failure names the seed; the same seed replays the same draws (not the
//! same interleaving: the machine's timing is part of it, and so are the faults a run forces
//! when the draws have left one out too long).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::bus_conformance::{SeenView, Ticked, TYPE};
use cqrs_core::bus::{BusFeed, EventBus};
use cqrs_core::envelope::{Envelope, ExpectedVersion, Metadata, NewEvent};
use cqrs_core::memory::{MemoryCheckpointStore, MemoryEventStore, MemoryViewStore};
use cqrs_core::processor::{Backoff, ErrorPolicy, ProcessorHandle, TrackingProcessor};
use cqrs_core::projection::Projection;
use cqrs_core::relay::{Relay, RelayHandle};
use cqrs_core::store::{EventAppender, EventReader};
use cqrs_core::view::{DeadLetterStore, ViewStore};
use cqrs_core::BoxError;

/// The consumer group of the run.
pub const GROUP: &str = "torture";

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Events appended and checked.
    pub events: u64,
    /// Streams checked.
    pub streams: usize,
    /// Handler failures injected.
    pub handler_failures: u64,
    /// Members killed (and started again).
    pub member_kills: u64,
    /// Relays killed (and started again).
    pub relay_kills: u64,
    /// Dead-letter retries by the operator.
    pub retries: u64,
    /// Times the broker was paused (`kill -STOP`) and resumed.
    pub broker_pauses: u64,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {}: {} events in {} streams checked; {} handler failures, {} members and {} \
             relays killed, {} broker pauses, {} operator retries; violations: 0",
            self.seed,
            self.events,
            self.streams,
            self.handler_failures,
            self.member_kills,
            self.relay_kills,
            self.broker_pauses,
            self.retries
        )
    }
}

/// Records each version per stream; fails 3 % of its calls half way through, while `flaky`.
#[derive(Clone)]
struct Flaky {
    rng: Arc<Mutex<fastrand::Rng>>,
    flaky: Arc<AtomicBool>,
    failures: Arc<AtomicU64>,
}

impl Projection for Flaky {
    const NAME: &'static str = "torture";
    type Event = Ticked;
    type View = SeenView;
    fn apply(&self, view: &mut Option<SeenView>, _: &Ticked, e: &Envelope) -> Result<(), BoxError> {
        let view = view.get_or_insert_with(SeenView::default);
        view.versions.push(e.version);
        if self.flaky.load(Ordering::SeqCst) && self.rng.lock().u32(0..100) < 3 {
            self.failures.fetch_add(1, Ordering::Relaxed);
            return Err("a transient failure, half way through".into());
        }
        Ok(())
    }
}

fn ticked(n: u64) -> NewEvent {
    NewEvent {
        event_name: "busconformance.Ticked".into(),
        event_version: 1,
        payload: bytes::Bytes::from(format!("{{\"n\":{n}}}")),
        metadata: Metadata::new(),
    }
}

/// How a run goes.
#[derive(Clone)]
pub struct Options {
    /// The seed of every choice.
    pub seed: u64,
    /// How long the writers write.
    pub writing: Duration,
    /// No member is killed until this long after the group's last change (a member killed or
    /// started): for a broker that cannot take a member leaving while the group is forming.
    pub settle: Duration,
    /// The broker, when the test started its own: paused and resumed now and then.
    pub broker: Option<Arc<dyn super::server::Pausable>>,
    /// How long the views may take to hold every version once the writes end (120 s).
    pub catch_up: Duration,
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("seed", &self.seed)
            .field("writing", &self.writing)
            .field("settle", &self.settle)
            .field("broker", &self.broker.is_some())
            .field("catch_up", &self.catch_up)
            .finish()
    }
}

impl Options {
    /// [`seed`] and [`writing`] from the environment, no settling.
    pub fn from_env(writing_default: Duration) -> Self {
        Options {
            seed: seed(),
            writing: writing(writing_default),
            settle: Duration::ZERO,
            broker: None,
            catch_up: Duration::from_secs(120),
        }
    }
}

/// The faults of a run, each with the time since the start.
#[derive(Default)]
struct Timeline(Vec<String>);

impl Timeline {
    fn add(&mut self, started: Instant, what: &str) {
        self.0
            .push(format!("{:.1} s {what}", started.elapsed().as_secs_f64()));
    }
}

impl fmt::Display for Timeline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(", "))
    }
}

/// The seed of a run: `CQRS_TORTURE_SEED` (to replay one), else a new one.
pub fn seed() -> u64 {
    std::env::var("CQRS_TORTURE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..))
}

/// How long a run writes: `CQRS_TORTURE_SECS`, else `default`.
pub fn writing(default: Duration) -> Duration {
    std::env::var("CQRS_TORTURE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(default, Duration::from_secs)
}

/// Runs the torture on `bus` for `options.writing` (then until the views are checked,
/// `options.catch_up` at most).
///
/// # Panics
/// On a violation (naming the seed and the view), or when the views never catch up.
pub async fn run(bus: impl EventBus + 'static, options: Options) -> Report {
    let Options {
        seed,
        writing,
        settle,
        broker,
        catch_up,
    } = options;
    let bus: Arc<dyn EventBus> = Arc::new(bus);
    let mut rng = fastrand::Rng::with_seed(seed);
    let store = Arc::new(MemoryEventStore::new());
    let views = Arc::new(MemoryViewStore::new());
    let flaky = Flaky {
        rng: Arc::new(Mutex::new(fastrand::Rng::with_seed(rng.u64(..)))),
        flaky: Arc::new(AtomicBool::new(true)),
        failures: Arc::new(AtomicU64::new(0)),
    };
    let checkpoints = Arc::new(MemoryCheckpointStore::new());
    let relay = || -> RelayHandle {
        Relay::new("torture", store.clone(), bus.clone(), checkpoints.clone())
            .batch_size(32)
            .backoff(Backoff::new(
                Duration::from_millis(20),
                Duration::from_millis(500),
            ))
            .spawn()
    };
    let policy = ErrorPolicy::retry(
        1,
        Backoff::new(Duration::from_millis(1), Duration::from_millis(5)),
    )
    .then_dead_letter();
    let member = |batch: usize| -> ProcessorHandle {
        TrackingProcessor::new(flaky.clone(), views.clone())
            .error_policy(policy)
            .batch_size(batch)
            .idle_wait(Duration::from_millis(100))
            .backend_backoff(Backoff::new(
                Duration::from_millis(20),
                Duration::from_millis(500),
            ))
            .spawn(Arc::new(BusFeed::new(bus.clone(), GROUP, [TYPE])))
    };
    let until = Instant::now() + writing;
    let mut writers = Vec::new();
    for _ in 0..2 {
        let (store, mut rng) = (store.clone(), fastrand::Rng::with_seed(rng.u64(..)));
        writers.push(tokio::spawn(async move {
            let mut appended = 0u64;
            while Instant::now() < until {
                let stream = if rng.bool() {
                    format!("hot-{}", rng.u32(0..3))
                } else {
                    format!("cold-{}", rng.u32(0..24))
                };
                let events = (0..rng.u64(1..=3)).map(ticked).collect();
                let written = store
                    .append(TYPE, &stream, ExpectedVersion::Any, events)
                    .await
                    .expect("an in-memory append");
                appended += written.len() as u64;
                tokio::time::sleep(Duration::from_millis(rng.u64(0..15))).await;
            }
            appended
        }));
    }
    let (mut relaying, mut members) = (
        relay(),
        vec![member(rng.usize(1..32)), member(rng.usize(1..32))],
    );
    let operator = TrackingProcessor::new(flaky.clone(), views.clone());
    let mut report = Report {
        seed,
        ..Report::default()
    };
    // The group's last change (a member killed or started, the broker paused), the last
    // member killed, the broker's last pause.
    let (mut changed, mut killed, mut paused) = (Instant::now(), Instant::now(), Instant::now());
    // The faults in order, with their times: printed with a violation.
    let started = Instant::now();
    let mut faults = Timeline::default();
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(rng.u64(300..1200))).await;
        // Where kills wait for the group to settle, one is due at the latest twice that after
        // the last: nothing else happens until the group has settled and it is done. A
        // broker's pause is due after 5 s without one.
        let kill_due = !settle.is_zero() && killed.elapsed() >= settle * 2;
        let choice = if kill_due {
            if changed.elapsed() >= settle {
                0
            } else {
                u32::MAX
            }
        } else if broker.is_some() && paused.elapsed() >= Duration::from_secs(5) {
            3
        } else {
            rng.u32(0..5)
        };
        match choice {
            0 if changed.elapsed() >= settle => {
                let i = rng.usize(0..members.len());
                members.remove(i).abort();
                members.push(member(rng.usize(1..32)));
                (changed, killed) = (Instant::now(), Instant::now());
                report.member_kills += 1;
                faults.add(started, "a member killed");
            }
            1 => {
                std::mem::replace(&mut relaying, relay()).abort();
                report.relay_kills += 1;
                faults.add(started, "the relay killed");
            }
            2 if operator.retry_dead_letters(views.as_ref()).await.is_ok() => {
                report.retries += 1;
                faults.add(started, "dead letters retried");
            }
            3 => {
                if let Some(broker) = &broker {
                    // Publishes and fetches hang, then time out or go on.
                    broker.pause();
                    let pause = rng.u64(200..3000);
                    faults.add(started, &format!("the broker paused for {pause} ms"));
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                    broker.resume();
                    paused = Instant::now();
                    // A pause may set off a rebalance: kills wait for the group to settle.
                    changed = Instant::now();
                    report.broker_pauses += 1;
                }
            }
            _ => {}
        }
        for m in &members {
            assert!(
                !m.is_finished(),
                "seed {seed}: a member ended: {:?}; faults: {faults}",
                m.watch_ended().why()
            );
        }
    }
    for writer in writers {
        report.events += writer.await.expect("a writer");
    }

    // The checker: each stream's versions once, with the handler fixed and the letters retried.
    flaky.flaky.store(false, Ordering::SeqCst);
    let log = store.read_all(0, 1 << 24).await.expect("the log");
    let mut last: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    for e in &log {
        last.insert(e.stream_id.clone(), e.version);
    }
    report.streams = last.len();
    let ids: Vec<String> = last.keys().cloned().collect();
    let deadline = Instant::now() + catch_up;
    loop {
        let _ = operator.retry_dead_letters(views.as_ref()).await;
        let docs = views.load("torture", &ids).await.expect("load");
        let letters = views.dead_letters("torture").await.expect("dead letters");
        let mut done = docs.len() == ids.len() && letters.is_empty();
        let mut short = Vec::new();
        for doc in &docs {
            let view: SeenView =
                serde_json::from_value(doc.view.clone().expect("a view")).expect("a view");
            let mut seen = view.versions.clone();
            seen.sort_unstable();
            assert!(
                seen.windows(2).all(|w| w[0] != w[1]),
                "seed {seed}: view {} applied a version twice: {:?}; faults: {faults}",
                doc.id,
                view.versions
            );
            if seen != (1..=last[&doc.id]).collect::<Vec<_>>() {
                done = false;
                // The smallest account: the versions missing, not the whole view.
                let missing: Vec<u64> = (1..=last[&doc.id])
                    .filter(|v| seen.binary_search(v).is_err())
                    .collect();
                short.push(format!(
                    "{} misses {missing:?} of 1..={}",
                    doc.id, last[&doc.id]
                ));
            }
        }
        if done {
            break;
        }
        let dead: Vec<_> = letters
            .iter()
            .map(|d| (&d.envelope.stream_id, d.envelope.version, &d.reason))
            .collect();
        assert!(
            Instant::now() < deadline,
            "seed {seed}: the views never held every version once: {} of {} views, dead \
             letters {dead:?}; short: {short:?}; faults: {faults}",
            docs.len(),
            ids.len(),
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    report.handler_failures = flaky.failures.load(Ordering::Relaxed);
    relaying.abort();
    for m in members {
        m.abort();
    }
    report
}
