#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]
//! A broker that dies and comes back: on a RabbitMQ node of the test's own (never the shared
//! one), killed with SIGKILL and restarted on its data directory.

mod common;

use common::Seen;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cqrs_core::memory::{MemoryCheckpointStore, MemoryEventStore, MemoryViewStore};
use cqrs_core::{
    Aggregate, Backoff, Breaker, BusFeed, Command, CommandGateway, EventReader, EventStore, Query,
    ReadModel, Relay, TrackingProcessor,
};
use cqrs_rabbitmq::{RabbitBus, RabbitConfig};
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

/// A RabbitMQ node of this test's own, on its own ports, node name and data directory.
struct Node {
    dir: PathBuf,
    port: u16,
    child: Option<std::process::Child>,
}

impl Node {
    fn new() -> Node {
        let dir =
            std::env::temp_dir().join(format!("cqrs-rabbit-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(dir.join("home")).unwrap();
        std::fs::write(dir.join("env.conf"), "").unwrap();
        std::fs::write(dir.join("enabled_plugins"), "[].").unwrap();
        let port = 15_700 + (std::process::id() % 200) as u16;
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!("listeners.tcp.default = 127.0.0.1:{port}\nloopback_users = none\n"),
        )
        .unwrap();
        Node {
            dir,
            port,
            child: None,
        }
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Starts the node and waits until it takes AMQP connections.
    async fn start(&mut self) {
        let server = std::env::var("CQRS_RABBITMQ_SERVER")
            .unwrap_or_else(|_| "/usr/lib/rabbitmq/bin/rabbitmq-server".to_owned());
        assert!(
            Path::new(&server).exists(),
            "{server} is missing: this test starts a RabbitMQ node of its own (install \
             rabbitmq-server or set CQRS_RABBITMQ_SERVER)"
        );
        let d = |p: &str| self.dir.join(p);
        let child = std::process::Command::new(&server)
            .env("HOME", d("home"))
            .env("RABBITMQ_CONF_ENV_FILE", d("env.conf"))
            .env(
                "RABBITMQ_NODENAME",
                format!("cqrstest{}@localhost", self.port),
            )
            .env("RABBITMQ_DIST_PORT", (self.port + 10_000).to_string())
            .env("RABBITMQ_MNESIA_BASE", d("mnesia"))
            .env("RABBITMQ_LOG_BASE", d("log"))
            .env("RABBITMQ_CONFIG_FILE", d("rabbitmq.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d("enabled_plugins"))
            .env("RABBITMQ_PLUGINS_EXPAND_DIR", d("plugins-expand"))
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .env("RUNNING_UNDER_SYSTEMD", "true")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the node");
        self.child = Some(child);
        let bus = RabbitBus::new(RabbitConfig::new(self.url(), "probe.").unwrap());
        let deadline = Instant::now() + Duration::from_secs(60);
        while bus.check().await.is_err() {
            assert!(
                Instant::now() < deadline,
                "the private RabbitMQ node did not start"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// SIGKILL: no goodbye to its clients, nothing flushed beyond what it had synced.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill the node");
            child.wait().expect("reap the node");
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("the node's files are kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
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
async fn the_relay_and_a_member_ride_out_a_broker_kill_and_every_event_arrives_once_in_order() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut node = Node::new();
    node.start().await;
    let config = RabbitConfig::new(node.url(), "outage.")
        .unwrap()
        .groups(["outage"])
        .unwrap()
        .rebalance_every(Duration::from_millis(300))
        .publish_timeout(Duration::from_secs(2));
    let bus = Arc::new(RabbitBus::new(config));
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
                    .expect("commands succeed, broker or not");
            }
        }
    };
    send(20).await;
    until_total(&views, 20, "the first events").await;

    // The broker dies; commands go on; the relay's circuit opens.
    node.kill();
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
    println!("breaker open {:?} after the last command", opened.elapsed());
    assert_eq!(
        store.head().await.expect("head"),
        40,
        "the events wait in the store"
    );

    // It comes back on its data: the relay closes its breaker, the member rejoins.
    let restarted = Instant::now();
    node.start().await;
    println!("node back in {:?}", restarted.elapsed());
    tokio::time::timeout(
        Duration::from_secs(60),
        breaker.wait_for(|b| *b == Breaker::Closed),
    )
    .await
    .expect("the breaker closes")
    .expect("breaker");
    let caught_up = until_total(&views, 40, "every event").await;
    println!("every event applied {caught_up:?} after the node took connections again");
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
