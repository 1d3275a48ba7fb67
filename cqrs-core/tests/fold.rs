#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]
//! The short form of a projection: views from `Default`, changes that cannot fail.

use std::sync::Arc;

use cqrs_core::memory::{MemoryEventStore, MemoryViewStore};
use cqrs_core::{Envelope, EventStore, Fold, ReadModel, TrackingProcessor};
use cqrs_testing::ProjectionFixture;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deposited {
    pub cents: u64,
}
cqrs_core::event!(Deposited, "foldtest.Deposited");

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Balance {
    pub cents: u64,
    pub deposits: u32,
}

pub struct Balances;
impl Fold for Balances {
    const NAME: &'static str = "balances";
    type Event = Deposited;
    type View = Balance;
    fn fold(&self, balance: &mut Balance, e: &Deposited, _: &Envelope) {
        balance.cents += e.cents;
        balance.deposits += 1;
    }
}

/// Keyed by something other than the stream: one view for every account.
pub struct Total;
impl Fold for Total {
    const NAME: &'static str = "total";
    type Event = Deposited;
    type View = u64;
    fn view_id(&self, _: &Deposited, _: &Envelope) -> String {
        "all".into()
    }
    fn fold(&self, total: &mut u64, e: &Deposited, _: &Envelope) {
        *total += e.cents;
    }
}

#[test]
fn a_fold_starts_each_view_at_its_default() {
    ProjectionFixture::new(Balances)
        .given("account", "a-1", Deposited { cents: 5 })
        .given("account", "a-1", Deposited { cents: 7 })
        .given("account", "a-2", Deposited { cents: 1 })
        .then_view(
            "a-1",
            Some(Balance {
                cents: 12,
                deposits: 2,
            }),
        )
        .then_view(
            "a-2",
            Some(Balance {
                cents: 1,
                deposits: 1,
            }),
        )
        .then_view("a-3", None);
    ProjectionFixture::new(Total)
        .given("account", "a-1", Deposited { cents: 5 })
        .given("account", "a-2", Deposited { cents: 7 })
        .then_view("all", Some(12));
}

#[tokio::test]
async fn a_fold_runs_in_a_processor_like_any_projection() {
    let store = Arc::new(MemoryEventStore::new());
    let events: Vec<Envelope> = (1..=3)
        .map(|v| cqrs_testing::envelope_of("account", "a-1", v, v, &Deposited { cents: v }))
        .collect();
    store.insert_raw(events);
    let views = Arc::new(MemoryViewStore::new());
    TrackingProcessor::new(Balances, views.clone())
        .catch_up(store.clone() as Arc<dyn EventStore>)
        .await
        .expect("catch up");
    let balance = ReadModel::<Balances>::new(views)
        .get("a-1")
        .await
        .expect("get");
    assert_eq!(
        balance,
        Some(Balance {
            cents: 6,
            deposits: 3
        })
    );
}
