#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]
//! A server that dies and comes back: on a redis-server of the test's own (never the shared
//! one), with an append-only file synced on every write, killed with SIGKILL and restarted on
//! its files.

mod common;

use common::Seen;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cqrs_core::memory::{MemoryCheckpointStore, MemoryEventStore, MemoryViewStore};
use cqrs_core::{
    Aggregate, Backoff, Breaker, BusFeed, Command, CommandGateway, EventBus, EventReader,
    EventStore, Query, ReadModel, Relay, TrackingProcessor,
};
use cqrs_redis::{RedisBus, RedisConfig};
use cqrs_testing::bus_conformance::Ticked;

pub struct Tick(pub String, pub u64);
impl Command for Tick {
    type Aggregate = Clock;
    fn aggregate_id(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct Clock;

impl Aggregate for Clock {
    const TYPE: &'static str = "clock";
    type Command = Tick;
    type Event = Ticked;
    type Error = std::convert::Infallible;
    fn handle(&self, c: &Tick) -> Result<Vec<Ticked>, Self::Error> {
        Ok(vec![Ticked { n: c.1 }])
    }
    fn apply(&mut self, _: &Ticked) {}
}

/// A redis-server of this test's own, on its own port and directory.
struct Server {
    dir: PathBuf,
    port: u16,
    child: Option<std::process::Child>,
}

impl Server {
    fn new() -> Server {
        let dir =
            std::env::temp_dir().join(format!("cqrs-redis-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        Server {
            dir,
            port: 16_400 + (std::process::id() % 500) as u16,
            child: None,
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn start(&mut self) {
        let server =
            std::env::var("CQRS_REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned());
        let child = std::process::Command::new(&server)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "{server} did not start ({e}): this test starts a Redis server of its own \
                     (install redis-server or set CQRS_REDIS_SERVER)"
                )
            });
        self.child = Some(child);
        let bus = RedisBus::new(RedisConfig::new(self.url(), "probe.").unwrap()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while bus.check().await.is_err() {
            assert!(
                Instant::now() < deadline,
                "the private Redis server did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill the server");
            child.wait().expect("reap the server");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn total(store: &Arc<MemoryViewStore>) -> usize {
    ReadModel::<Seen>::new(store.clone())
        .find(&Query::all())
        .await
        .expect("find")
        .iter()
        .map(|(_, v)| v.versions.len())
        .sum()
}

async fn until_total(store: &Arc<MemoryViewStore>, want: usize, what: &str) -> Duration {
    let started = Instant::now();
    while total(store).await < want {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_and_a_member_ride_out_a_server_kill_and_every_event_arrives_once_in_order() {
    let mut server = Server::new();
    server.start().await;
    let config = RedisConfig::new(server.url(), "outage.")
        .unwrap()
        .groups(["outage", "held"])
        .unwrap()
        .partitions(4)
        .lease(Duration::from_secs(2))
        .rebalance_every(Duration::from_millis(300))
        .timeout(Duration::from_secs(2));
    let bus = Arc::new(RedisBus::new(config).unwrap());
    let store = Arc::new(MemoryEventStore::new());
    let gateway = CommandGateway::builder(store.clone() as Arc<dyn EventStore>).build();
    let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
    let relay = Relay::new(
        "relay",
        store.clone(),
        bus.clone(),
        Arc::new(MemoryCheckpointStore::new()),
    )
    .backoff(backoff)
    .spawn();
    let views = Arc::new(MemoryViewStore::new());
    let processor = TrackingProcessor::new(Seen, views.clone())
        .idle_wait(Duration::from_millis(200))
        .backend_backoff(backoff)
        .spawn(Arc::new(BusFeed::new(bus.clone(), "outage", ["clock"])));
    let mut n = 0;
    let mut send = |count: usize| {
        let commands: Vec<Tick> = (0..count)
            .map(|i| {
                n += 1;
                Tick(format!("c-{}", i % 4), n)
            })
            .collect();
        let gateway = gateway.clone();
        async move {
            for c in commands {
                gateway
                    .send(c)
                    .await
                    .expect("commands succeed, server or not");
            }
        }
    };
    send(20).await;
    until_total(&views, 20, "the first events").await;
    // A second group's member holds what it read, unacknowledged, through the outage.
    let mut holder = bus
        .subscribe("held", &["clock"], Duration::from_millis(200))
        .await
        .unwrap();
    let mut held = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while held < 20 {
        assert!(Instant::now() < deadline, "the holder read {held} of 20");
        held += holder.next_batch(100).await.unwrap().events.len();
    }

    // The server dies; commands go on; the relay's circuit opens.
    server.kill();
    let mut breaker = relay.watch_breaker();
    send(20).await;
    let opened = Instant::now();
    tokio::time::timeout(
        Duration::from_secs(60),
        breaker.wait_for(|b| *b == Breaker::Open),
    )
    .await
    .expect("the breaker opens")
    .expect("breaker");
    println!(
        "[fault] Redis: breaker open {:?} after the last command",
        opened.elapsed()
    );
    assert_eq!(
        store.head().await.expect("head"),
        40,
        "the events wait in the store"
    );

    // It comes back on its files: the relay closes its breaker, the member takes its
    // partitions again.
    let restarted = Instant::now();
    server.start().await;
    tokio::time::timeout(
        Duration::from_secs(60),
        breaker.wait_for(|b| *b == Breaker::Closed),
    )
    .await
    .expect("the breaker closes")
    .expect("breaker");
    let caught_up = until_total(&views, 40, "every event").await;
    println!(
        "[fault] Redis: server back in {:?}; every event applied {caught_up:?} after it took \
         connections again",
        restarted.elapsed()
    );
    // The holder reconnects and re-reads its own pending entries: the same 20, each still
    // counted as delivered once (a member's own reconnect is no redelivery).
    let mut again = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while again < 20 {
        assert!(
            Instant::now() < deadline,
            "the holder read again {again} of 20"
        );
        if let Ok(batch) = holder.next_batch(100).await {
            again += batch.events.iter().filter(|e| e.version <= 5).count();
        }
    }
    let mut raw = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut counts = Vec::new();
    for p in 0..4 {
        let reply: redis::Value = redis::cmd("XPENDING")
            .arg(bus.config().stream("clock", p))
            .arg("held")
            .arg("-")
            .arg("+")
            .arg(100)
            .query_async(&mut raw)
            .await
            .unwrap();
        let redis::Value::Array(rows) = reply else {
            panic!("{reply:?}")
        };
        for row in rows {
            if let redis::Value::Array(fields) = row {
                if let Some(redis::Value::Int(n)) = fields.get(3) {
                    counts.push(*n);
                }
            }
        }
    }
    assert!(counts.len() >= 20, "{counts:?}");
    assert!(
        counts.iter().all(|n| *n == 1),
        "reconnecting counted deliveries: {counts:?}"
    );
    println!(
        "[fault] Redis: a member holding 20 unacknowledged entries reconnected after the \
         restart and handed them out again; their delivery counts stayed at 1"
    );
    drop(holder);
    processor.stop().await.expect("stop");
    relay.stop().await.expect("relay");
    for (id, view) in ReadModel::<Seen>::new(views.clone())
        .find(&Query::all())
        .await
        .unwrap()
    {
        assert_eq!(
            view.versions,
            (1..=10).collect::<Vec<_>>(),
            "{id}: once each, in order"
        );
    }
}
