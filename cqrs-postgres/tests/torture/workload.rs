//! The torture's workload: the flaky projection, the writers and the pausing session, and
//! the history they record for the checker.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::{Added, TallyView};
use cqrs_core::envelope::{ExpectedVersion, Metadata, NewEvent};
use cqrs_core::{BoxError, Envelope, Error, EventAppender, EventReader, Projection};
use cqrs_postgres::PgEventStore;

const HOT: u64 = 4;
const COLD: u64 = 48;

/// A tally whose handler fails on a share of its calls while `flaky` holds; `BUS` names the
/// bus-fed one apart.
pub struct FlakyTally<const BUS: bool> {
    pub rng: Arc<Mutex<fastrand::Rng>>,
    pub flaky: Arc<AtomicBool>,
    pub failures: Arc<AtomicU64>,
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

pub fn added(amount: u64) -> NewEvent {
    NewEvent {
        event_name: "pgtest.Added".into(),
        event_version: 1,
        payload: bytes::Bytes::from(format!("{{\"amount\":{amount}}}")),
        metadata: Metadata::new(),
    }
}

/// What the run did, for the checker and the report.
#[derive(Default)]
pub struct History {
    /// Event ids of every append that was acknowledged.
    pub acknowledged: Mutex<Vec<uuid::Uuid>>,
    pub appends: AtomicU64,
    pub conflicts: AtomicU64,
    pub failed: AtomicU64,
    pub pauses: AtomicU64,
    pub ended_by_server: AtomicU64,
    pub kills: AtomicU64,
    pub retries: AtomicU64,
    /// The server killed (`kill -9`) and started again.
    pub server_kills: AtomicU64,
    /// The server paused (`kill -STOP`) and resumed.
    pub server_pauses: AtomicU64,
    /// The nemesis's faults in order, with their times: printed with a violation.
    pub faults: Mutex<Vec<(Instant, String)>>,
}

impl History {
    pub fn acknowledge(&self, envelopes: &[Envelope]) {
        self.appends.fetch_add(1, Ordering::Relaxed);
        let mut ids = self.acknowledged.lock().unwrap();
        ids.extend(envelopes.iter().map(|e| e.metadata.event_id));
    }
    pub fn refused(&self, e: &Error) {
        match e {
            Error::Conflict { .. } => self.conflicts.fetch_add(1, Ordering::Relaxed),
            _ => self.failed.fetch_add(1, Ordering::Relaxed),
        };
    }

    pub fn fault(&self, what: &str) {
        self.faults
            .lock()
            .unwrap()
            .push((Instant::now(), what.to_owned()));
    }

    /// The faults, each with its time after the first.
    pub fn timeline(&self) -> String {
        let faults = self.faults.lock().unwrap();
        let Some((first, _)) = faults.first() else {
            return "none".to_owned();
        };
        faults
            .iter()
            .map(|(at, what)| format!("{:.1} s {what}", (*at - *first).as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Every fault injected, for the report.
    pub fn faults(&self) -> String {
        format!(
            "{} paused transactions ({} ended by the server); {} kills of processors, members \
             and the relay; {} server kills, {} server pauses; {} operator retries",
            self.pauses.load(Ordering::Relaxed),
            self.ended_by_server.load(Ordering::Relaxed),
            self.kills.load(Ordering::Relaxed),
            self.server_kills.load(Ordering::Relaxed),
            self.server_pauses.load(Ordering::Relaxed),
            self.retries.load(Ordering::Relaxed),
        )
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
pub async fn writer(
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
            Err(e) => {
                history.refused(&e);
                if !matches!(e, Error::Conflict { .. }) {
                    // The server is down or frozen: no busy loop meanwhile.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
}

/// A process that pauses mid-transaction: takes a transaction id with an append, sleeps (now
/// and then past its idle limit, when the server ends the session), then commits or rolls back.
pub async fn pauser(
    store: PgEventStore,
    mut rng: fastrand::Rng,
    until: Instant,
    history: Arc<History>,
) {
    while Instant::now() < until {
        let Ok(mut tx) = store.begin().await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
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
