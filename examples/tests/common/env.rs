//! The servers the tests run on, the names of a test's own, its services started on them, and
//! the catalog replayed from their event store as the reference.

use std::process::Command;
use std::sync::Arc;

use cqrs_core::memory::MemoryViewStore;
use cqrs_core::{EventReader, ReadModel, TrackingProcessor, ViewQuery};
use cqrs_postgres::Postgres;
use shop::catalog::{Catalog, CatalogEntry, CatalogQueries};

use super::{shop_binary, Service, OPS_TOKEN};

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
            (Some(url), _, _) => vec![("--bus", "rabbitmq"), ("--amqp-url", url)],
            (None, Some(url), _) => vec![("--bus", "redis"), ("--redis-url", url)],
            // SQS takes its endpoint from the AWS configuration (`aws_env`).
            (None, None, Some(_)) => vec![("--bus", "sqs")],
            (None, None, None) => {
                vec![("--bus", "kafka"), ("--kafka-brokers", &self.kafka_brokers)]
            }
        };
        let prefix = format!("{}.", self.name);
        let mut args = vec![
            ("--database-url", self.database_url.as_str()),
            ("--mongodb-uri", &self.mongodb_uri),
            ("--schema", &self.name),
            ("--topic-prefix", &prefix),
            ("--mongo-database", &self.name),
            ("--ops-token", OPS_TOKEN),
        ];
        args.extend(bus);
        if self.store_feed {
            args.extend([("--catalog-feed", "store"), ("--segment-lease-ms", "2000")]);
        }
        args.into_iter()
            .flat_map(|(flag, value)| [flag.to_owned(), value.to_owned()])
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
