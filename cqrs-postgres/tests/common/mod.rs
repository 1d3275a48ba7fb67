//! Shared by the PostgreSQL tests: a fresh schema on the real server, and a small domain.
#![allow(dead_code, missing_docs, clippy::expect_used, clippy::unwrap_used)]

use cqrs_core::{Aggregate, BoxError, Command, Envelope, EventAppender, Projection};
use cqrs_postgres::Postgres;
use serde::{Deserialize, Serialize};

#[cfg(target_os = "linux")]
pub mod server;

/// The server's address: `DATABASE_URL`, else the local default the test script starts.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A migrated schema of its own for one test. A missing server fails the test, loudly: tests
/// never pass by skipping.
pub async fn fresh() -> Postgres {
    fresh_at(&database_url()).await
}

/// [`fresh`] on the server at `url`.
pub async fn fresh_at(url: &str) -> Postgres {
    let schema = format!("t_{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
    let pg = match Postgres::connect(url, &schema).await {
        Ok(pg) => pg,
        Err(e) => panic!(
            "PostgreSQL is not reachable ({e}). Set DATABASE_URL or run ./scripts/test.sh, \
             which starts one."
        ),
    };
    pg.migrate().await.expect("migrate");
    pg
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Added {
    pub amount: u64,
}
cqrs_core::event!(Added, "pgtest.Added");

#[derive(Debug, Clone)]
pub struct Add {
    pub id: String,
    pub amount: u64,
}

impl Command for Add {
    type Aggregate = Counter;
    fn aggregate_id(&self) -> &str {
        &self.id
    }
}

pub fn add(id: &str, amount: u64) -> Add {
    Add {
        id: id.to_owned(),
        amount,
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("amount must be positive")]
pub struct Zero;

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Counter {
    pub total: u64,
}

impl Aggregate for Counter {
    const TYPE: &'static str = "counter";
    type Command = Add;
    type Event = Added;
    type Error = Zero;
    fn handle(&self, c: &Add) -> Result<Vec<Added>, Zero> {
        if c.amount == 0 {
            return Err(Zero);
        }
        Ok(vec![Added { amount: c.amount }])
    }
    fn apply(&mut self, e: &Added) {
        self.total += e.amount;
    }
}

/// One view per stream recording every version applied.
#[derive(Debug, Default)]
pub struct Tally;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TallyView {
    pub total: u64,
    pub versions: Vec<u64>,
}

impl Projection for Tally {
    const NAME: &'static str = "tally";
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
        view.total += e.amount;
        view.versions.push(envelope.version);
        Ok(())
    }
}

/// A raw event of writer `writer`, its `n`th.
pub fn event(writer: u64, n: u64) -> cqrs_core::envelope::NewEvent {
    let mut metadata = cqrs_core::envelope::Metadata::new();
    metadata.user.insert("writer".into(), writer.to_string());
    cqrs_core::envelope::NewEvent {
        event_name: "pgtest.Gap".into(),
        event_version: 1,
        payload: bytes::Bytes::from(format!("{{\"writer\":{writer},\"n\":{n}}}")),
        metadata,
    }
}

/// Waits until `n` appends are queued behind the busy transaction: the stats cannot show the
/// queue, so this waits for the other tasks to have run up to their append.
pub async fn let_them_queue() {
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
}

/// Holds the store's only group transaction: an append to `stream`, which another
/// transaction has written and not committed, waits on the (stream, version) index until that
/// transaction ends. Returns the holding transaction and the blocked append.
pub async fn block_the_writer(
    store: &cqrs_postgres::PgEventStore,
    stream: &str,
) -> (
    cqrs_postgres::PgAppendTx,
    tokio::task::JoinHandle<cqrs_core::Result<Vec<cqrs_core::Envelope>>>,
) {
    let mut holder = store.begin().await.unwrap();
    holder
        .append(
            "grouped",
            stream,
            cqrs_core::ExpectedVersion::NEW,
            vec![event(0, 0)],
        )
        .await
        .unwrap();
    let blocked = {
        let store = store.clone();
        let stream = stream.to_owned();
        tokio::spawn(async move {
            store
                .append(
                    "grouped",
                    &stream,
                    cqrs_core::ExpectedVersion::NEW,
                    vec![event(0, 0)],
                )
                .await
        })
    };
    let_them_queue().await;
    (holder, blocked)
}
