//! Shared by the end-to-end tests: the shop's services as separate processes on the real
//! servers, an HTTP client, and the catalog rebuilt from the event store as the reference.
#![allow(dead_code, missing_docs, clippy::expect_used, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cqrs_core::memory::MemoryViewStore;
use cqrs_core::{EventReader, ReadModel, TrackingProcessor, ViewQuery};
use cqrs_postgres::Postgres;
use serde_json::{json, Value};
use shop::catalog::{Catalog, CatalogEntry, CatalogQueries};

fn server(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_owned())
}

/// The servers' addresses (the environment first, else what `scripts/test.sh` starts), and
/// names of this test's own: schema, topic prefix, database.
#[derive(Debug, Clone)]
pub struct Env {
    pub database_url: String,
    pub kafka_brokers: String,
    pub mongodb_uri: String,
    pub name: String,
    /// RabbitMQ between the services instead of Kafka, at this URL.
    pub amqp_url: Option<String>,
    /// Redis Streams between the services instead of Kafka, at this URL.
    pub redis_url: Option<String>,
    /// SQS between the services instead of Kafka, at this endpoint.
    pub sqs_endpoint: Option<String>,
    /// The catalog reads the store's log in segments (a 2 s lease) instead of the bus.
    pub store_feed: bool,
}

impl Env {
    pub fn new(test: &str) -> Self {
        let name = format!(
            "e2e_{test}_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        Env {
            database_url: server(
                "DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/postgres",
            ),
            kafka_brokers: server("KAFKA_BROKERS", "127.0.0.1:9092"),
            mongodb_uri: server(
                "MONGODB_URI",
                "mongodb://127.0.0.1:27017/?directConnection=true",
            ),
            name,
            amqp_url: None,
            redis_url: None,
            sqs_endpoint: None,
            store_feed: false,
        }
    }

    /// The same, with the catalog on the store's log, in segments.
    pub fn on_store_feed(test: &str) -> Self {
        Env {
            store_feed: true,
            ..Env::new(test)
        }
    }

    /// The same, with RabbitMQ between the services.
    pub fn over_rabbitmq(test: &str) -> Self {
        Env {
            amqp_url: Some(server("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")),
            ..Env::new(test)
        }
    }

    /// The same, with Redis Streams between the services.
    pub fn over_redis(test: &str) -> Self {
        Env {
            redis_url: Some(server("REDIS_URL", "redis://127.0.0.1:6379")),
            ..Env::new(test)
        }
    }

    /// The same, with SQS between the services (moto where `AWS_ENDPOINT_URL` is not set).
    pub fn over_sqs(test: &str) -> Self {
        Env {
            sqs_endpoint: Some(server("AWS_ENDPOINT_URL", "http://127.0.0.1:4566")),
            ..Env::new(test)
        }
    }

    /// The bus between the services, as the tests name it.
    pub fn bus_name(&self) -> &'static str {
        match (&self.amqp_url, &self.redis_url, &self.sqs_endpoint) {
            (Some(_), _, _) => "RabbitMQ",
            (None, Some(_), _) => "Redis",
            (None, None, Some(_)) => "SQS",
            (None, None, None) => "Kafka",
        }
    }

    /// The AWS configuration of a service on SQS: the endpoint, and the environment's region
    /// and credentials, else test ones (a local server takes any).
    fn aws_env(&self) -> Vec<(&'static str, String)> {
        let Some(endpoint) = &self.sqs_endpoint else {
            return Vec::new();
        };
        vec![
            ("AWS_ENDPOINT_URL", endpoint.clone()),
            ("AWS_REGION", server("AWS_REGION", "us-east-1")),
            ("AWS_ACCESS_KEY_ID", server("AWS_ACCESS_KEY_ID", "test")),
            (
                "AWS_SECRET_ACCESS_KEY",
                server("AWS_SECRET_ACCESS_KEY", "test"),
            ),
        ]
    }

    fn connection_args(&self) -> Vec<String> {
        let bus = match (&self.amqp_url, &self.redis_url, &self.sqs_endpoint) {
            (Some(url), _, _) => [
                ("--bus", "rabbitmq".to_owned()),
                ("--amqp-url", url.clone()),
            ],
            (None, Some(url), _) => [("--bus", "redis".to_owned()), ("--redis-url", url.clone())],
            (None, None, Some(_)) => [
                ("--bus", "sqs".to_owned()),
                ("--partitions", "3".to_owned()),
            ],
            (None, None, None) => [
                ("--bus", "kafka".to_owned()),
                ("--kafka-brokers", self.kafka_brokers.clone()),
            ],
        };
        [
            ("--database-url", &self.database_url),
            (bus[0].0, &bus[0].1),
            (bus[1].0, &bus[1].1),
            ("--mongodb-uri", &self.mongodb_uri),
            ("--schema", &self.name),
            ("--topic-prefix", &format!("{}.", self.name)),
            ("--mongo-database", &self.name),
            ("--ops-token", &OPS_TOKEN.to_owned()),
        ]
        .into_iter()
        .flat_map(|(flag, value)| [flag.to_owned(), value.clone()])
        .chain(
            self.store_feed
                .then(|| {
                    ["--catalog-feed", "store", "--segment-lease-ms", "2000"].map(String::from)
                })
                .into_iter()
                .flatten(),
        )
        .collect()
    }

    /// The event store, as the framework reads it. A missing server fails the test.
    pub async fn postgres(&self) -> Postgres {
        match Postgres::connect(&self.database_url, &self.name).await {
            Ok(pg) => pg,
            Err(e) => panic!(
                "PostgreSQL is not reachable ({e}). Set DATABASE_URL or run ./scripts/test.sh, \
                 which starts one."
            ),
        }
    }

    /// How many events the store holds.
    pub async fn stored_events(&self) -> usize {
        let pg = self.postgres().await;
        pg.migrate().await.expect("migrate");
        pg.event_store()
            .read_all(0, 1_000_000)
            .await
            .expect("read")
            .len()
    }

    /// The catalog as a from-scratch replay of the event store builds it.
    pub async fn replayed_catalog(&self) -> Vec<CatalogEntry> {
        let store = Arc::new(self.postgres().await.event_store());
        let views = Arc::new(MemoryViewStore::new());
        TrackingProcessor::new(Catalog, views.clone())
            .catch_up(store)
            .await
            .expect("replay");
        CatalogQueries::new(ReadModel::new(views as Arc<dyn ViewQuery>))
            .list(0, 100_000)
            .await
            .expect("list")
    }

    /// Drops what the test created in PostgreSQL, MongoDB, RabbitMQ, Redis and SQS.
    pub async fn clean_up(&self) {
        if self.sqs_endpoint.is_some() {
            let config = cqrs_sqs::SqsConfig::new(format!("{}.", self.name)).expect("config");
            let mut aws = aws_config::defaults(aws_config::BehaviorVersion::latest());
            for (name, value) in self.aws_env() {
                aws = match name {
                    "AWS_ENDPOINT_URL" => aws.endpoint_url(value),
                    "AWS_REGION" => aws.region(aws_sdk_sqs::config::Region::new(value)),
                    _ => aws,
                };
            }
            let (key, secret) = (
                server("AWS_ACCESS_KEY_ID", "test"),
                server("AWS_SECRET_ACCESS_KEY", "test"),
            );
            let aws = aws.credentials_provider(aws_sdk_sqs::config::Credentials::new(
                key, secret, None, None, "tests",
            ));
            let bus = cqrs_sqs::SqsBus::new(aws_sdk_sqs::Client::new(&aws.load().await), config);
            let _ = bus.delete_queues().await;
        }
        if let Some(url) = &self.redis_url {
            let prefix = format!("{}.", self.name);
            let config = cqrs_redis::RedisConfig::new(url, &prefix).expect("config");
            let bus = cqrs_redis::RedisBus::new(config.partitions(3)).expect("bus");
            for group in ["catalog", "comment-service"] {
                let group = format!("{prefix}{group}");
                let _ = bus.delete_group(&group, &["product", "comment"]).await;
            }
            let _ = bus.delete_streams(&["product", "comment"]).await;
        }
        if let Some(url) = &self.amqp_url {
            let prefix = format!("{}.", self.name);
            let config = cqrs_rabbitmq::RabbitConfig::new(url, &prefix).expect("config");
            let bus = cqrs_rabbitmq::RabbitBus::new(config);
            for group in ["catalog", "comment-service"] {
                let group = format!("{prefix}{group}");
                let _ = bus.delete_group(&group, &["product", "comment"]).await;
            }
        }
        let _ = self.postgres().await.drop_schema().await;
        if let Ok(mongo) = cqrs_mongo::Mongo::connect(&self.mongodb_uri, &self.name, "").await {
            let _ = mongo.drop_database().await;
        }
    }

    /// Starts one of the shop's services and waits until it answers.
    pub async fn start(&self, service: &str) -> Service {
        let mut command = Command::new(shop_binary());
        command
            .arg(service)
            .args(["--listen", "127.0.0.1:0"])
            .args(self.connection_args())
            .envs(self.aws_env())
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_owned()),
            );
        Service::spawn(service, command).await
    }

    /// Runs the replay command to its end; returns its stdout.
    pub fn replay(&self) -> String {
        let output = Command::new(shop_binary())
            .arg("replay")
            .args(self.connection_args())
            .envs(self.aws_env())
            .output()
            .expect("run the replay");
        assert!(
            output.status.success(),
            "the replay failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

/// The shop example's binary, which `cargo test` builds with the tests.
pub fn shop_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target directory");
    let binary = dir
        .join("examples")
        .join(format!("shop{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.exists(),
        "{} is missing: run the tests with `cargo test -p shop` (which builds the example) or \
         `cargo build --example shop` first",
        binary.display()
    );
    binary
}

/// A service running as a child process; killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct Service {
    pub name: String,
    pub url: String,
    child: Child,
}

impl Service {
    async fn spawn(name: &str, mut command: Command) -> Service {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the service");
        let stdout = child.stdout.take().expect("stdout");
        // The service prints `<name> listening on http://<address>` once it accepts
        // connections.
        let line = tokio::task::spawn_blocking(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            reader.read_line(&mut line).map(|_| line)
        });
        let line = tokio::time::timeout(Duration::from_secs(60), line)
            .await
            .unwrap_or_else(|_| panic!("{name} did not start within 60 s"))
            .expect("join")
            .expect("read stdout");
        let url = line
            .trim()
            .rsplit(' ')
            .next()
            .filter(|u| u.starts_with("http://"))
            .unwrap_or_else(|| panic!("{name} did not start: {line:?}"))
            .to_owned();
        Service {
            name: name.to_owned(),
            url,
            child,
        }
    }

    /// `kill -9`: no shutdown, no flush, whatever it was doing.
    pub fn kill(mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("wait");
    }

    /// SIGTERM, then wait for a graceful exit.
    pub fn stop(mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        let exit = self.child.wait().expect("wait");
        assert!(exit.success(), "{} exited with {exit}", self.name);
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A status and a JSON body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Answer {
    /// The `error` code of an error answer.
    pub fn code(&self) -> &str {
        self.body["error"].as_str().unwrap_or("")
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

pub async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("the answer ({status}) is not JSON ({e}): {text:?}"));
    Answer { status, body }
}

pub async fn post(client: &reqwest::Client, url: &str, body: Value) -> Answer {
    answer(client.post(url).json(&body).send().await.expect("POST")).await
}

/// The ops token the tests start the services with.
pub const OPS_TOKEN: &str = "shop-test-ops-token";

/// A `POST` to an ops route, with `token` as its bearer token (none without).
pub async fn post_ops(client: &reqwest::Client, url: &str, token: Option<&str>) -> Answer {
    let mut request = client.post(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    answer(request.send().await.expect("POST")).await
}

pub async fn put(client: &reqwest::Client, url: &str, body: Value) -> Answer {
    answer(client.put(url).json(&body).send().await.expect("PUT")).await
}

pub async fn get(client: &reqwest::Client, url: &str) -> Answer {
    answer(client.get(url).send().await.expect("GET")).await
}

/// Posts a comment, waiting (bounded) for the comment service to learn of a product created a
/// moment ago.
pub async fn post_comment(
    client: &reqwest::Client,
    comments: &Service,
    comment_id: &str,
    product_id: &str,
    rating: u8,
) -> Answer {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = post(
            client,
            &comments.url("/comments"),
            json!({
                "comment_id": comment_id,
                "product_id": product_id,
                "author": format!("author of {comment_id}"),
                "text": format!("comment {comment_id} on {product_id}"),
                "rating": rating,
            }),
        )
        .await;
        if answer.code() != "unknown_product" || Instant::now() > deadline {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every entry of the catalog service, page by page.
pub async fn catalog(client: &reqwest::Client, catalog: &Service) -> Vec<CatalogEntry> {
    let mut all = Vec::new();
    for page in 0.. {
        let answer = get(
            client,
            &catalog.url(&format!("/products?page={page}&per_page=7")),
        )
        .await;
        assert_eq!(answer.status, 200, "{:?}", answer.body);
        let items: Vec<CatalogEntry> =
            serde_json::from_value(answer.body["items"].clone()).expect("entries");
        let total = answer.body["total"].as_u64().expect("total");
        let done = items.is_empty();
        all.extend(items);
        if done || all.len() as u64 >= total {
            break;
        }
    }
    all
}

/// Waits (bounded) until the catalog service shows what a replay of the store builds; returns
/// it.
pub async fn converged(
    env: &Env,
    client: &reqwest::Client,
    service: &Service,
) -> Vec<CatalogEntry> {
    // Two minutes: a catalog killed inside a MongoDB transaction leaves its locks until the
    // server's transaction lifetime (60 s) ends; the restarted one retries until then.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let expected = env.replayed_catalog().await;
        let live = catalog(client, service).await;
        if comparable(&live) == comparable(&expected) {
            return live;
        }
        if Instant::now() > deadline {
            assert_eq!(
                comparable(&live),
                comparable(&expected),
                "the catalog did not converge within 120 s"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Entries with their average ratings rounded to 12 decimals: SecantusDB keeps a double to 16
/// significant digits (62 / 21 comes back as 2.952380952380953, not 2.9523809523809526).
fn comparable(entries: &[CatalogEntry]) -> Vec<CatalogEntry> {
    let mut out = entries.to_vec();
    for e in &mut out {
        e.average_rating = e.average_rating.map(|a| (a * 1e12).round() / 1e12);
    }
    out
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A server of the test's own, to kill and restart: the command in `var` (`CQRS_KAFKA_SERVER`
/// or `CQRS_MONGO_SERVER`, which `scripts/test.sh` sets) with `{port}` and `{dir}` filled in.
#[derive(Debug)]
pub struct OwnServer {
    child: Child,
    pub port: u16,
}

impl OwnServer {
    pub async fn start(var: &str, port: u16, dir: &std::path::Path) -> OwnServer {
        let template = std::env::var(var).unwrap_or_else(|_| {
            panic!(
                "{var} is not set: this test starts and kills a server of its own \
                 (run ./scripts/test.sh, which sets it)"
            )
        });
        let command = template
            .replace("{port}", &port.to_string())
            .replace("{dir}", &dir.display().to_string());
        let mut parts = command.split_whitespace();
        let program = parts.next().expect("a command");
        let child = Command::new(program)
            .args(parts)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the server");
        let deadline = Instant::now() + Duration::from_secs(60);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "{var} did not open port {port}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        OwnServer { child, port }
    }

    /// `kill -STOP`: the server stops answering, keeping its state.
    pub fn pause(&self) {
        signal(&self.child, "-STOP");
    }

    /// `kill -CONT`: it answers again.
    pub fn resume(&self) {
        signal(&self.child, "-CONT");
    }

    /// `kill -9`.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {signal} failed");
}

/// A service's `GET /health`.
pub async fn health(client: &reqwest::Client, service: &Service) -> cqrs_axum::HealthAnswer {
    let answer = get(client, &service.url("/health")).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    serde_json::from_value(answer.body).expect("health")
}

/// Sums the ratings counted over the catalog and checks no comment appears twice.
pub fn comment_count(entries: &[CatalogEntry]) -> u64 {
    for entry in entries {
        let mut ids: Vec<_> = entry.comments.iter().map(|c| &c.comment_id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(
            ids.len(),
            entry.comments.len(),
            "a comment was applied twice"
        );
    }
    entries.iter().map(|e| e.rating_count).sum()
}
