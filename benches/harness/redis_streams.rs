//! Scenarios on a real Redis server (`REDIS_URL`): a plain `XREADGROUP` + `XACK` loop beside
//! the framework's subscription into a projection, in the same invocation on the same entries.

use std::time::{Duration, Instant};

use cqrs_benches::{catalog_envelopes, consume_into_stats};
use cqrs_core::EventBus;
use cqrs_redis::{RedisBus, RedisConfig};

use crate::{report, wanted};

const TYPES: [&str; 2] = ["product", "comment"];
const PARTITIONS: u32 = 4;

fn url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn bus(groups: &[&str]) -> RedisBus {
    let prefix = format!("bench{:x}.", uuid::Uuid::new_v4().simple());
    let config = RedisConfig::new(url(), prefix)
        .and_then(|c| c.partitions(PARTITIONS).groups(groups.iter().copied()))
        .unwrap_or_else(|e| panic!("{e}"));
    RedisBus::new(config).unwrap_or_else(|e| panic!("{e}"))
}

/// One plain connection reading every stream of `group` with `XREADGROUP COUNT 1000`, and one
/// `XACK` per stream per read: the server's and client's rate with nothing of the framework.
async fn raw_consume(bus: &RedisBus, group: &str, events: u64) -> f64 {
    let mut connection = redis::Client::open(url())
        .unwrap_or_else(|e| panic!("{e}"))
        .get_multiplexed_async_connection_with_config(
            &redis::AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(5))),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let streams: Vec<String> = TYPES
        .iter()
        .flat_map(|t| (0..PARTITIONS).map(move |p| bus.config().stream(t, p)))
        .collect();
    let start = Instant::now();
    let mut seen = 0u64;
    while seen < events {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(group)
            .arg("raw-reader")
            .arg("COUNT")
            .arg(1_000);
        cmd.arg("BLOCK").arg(200).arg("STREAMS").arg(&streams);
        for _ in &streams {
            cmd.arg(">");
        }
        let reply: redis::Value = cmd
            .query_async(&mut connection)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let redis::Value::Array(keys) = reply else {
            continue;
        };
        let mut pipe = redis::pipe();
        for key in keys {
            let redis::Value::Array(parts) = key else {
                continue;
            };
            let [redis::Value::BulkString(name), redis::Value::Array(entries)] = &parts[..] else {
                continue;
            };
            let ids: Vec<&[u8]> = entries
                .iter()
                .filter_map(|e| match e {
                    redis::Value::Array(e) => match e.first() {
                        Some(redis::Value::BulkString(id)) => Some(id.as_slice()),
                        _ => None,
                    },
                    _ => None,
                })
                .collect();
            seen += ids.len() as u64;
            pipe.cmd("XACK")
                .arg(name.as_slice())
                .arg(group)
                .arg(ids)
                .ignore();
        }
        pipe.query_async::<()>(&mut connection)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    start.elapsed().as_secs_f64()
}

/// The framework: a subscription of `group` feeding the processor (in-memory views).
async fn framework_consume(bus: &RedisBus, group: &str, events: u64) -> f64 {
    let mut source = bus
        .subscribe(group, &TYPES, Duration::from_millis(200))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    consume_into_stats(source.as_mut(), events, 1_000).await
}

pub async fn run(events: u64, runs: u64, products: u64) {
    let envelopes = catalog_envelopes(events, products);
    if !wanted("redis_to_projection") {
        return;
    }
    for _ in 0..runs {
        // Both groups exist on every stream before the publish, so both read every entry.
        let bus = bus(&["raw", "framework"]);
        for chunk in envelopes.chunks(5_000) {
            bus.publish(chunk).await.unwrap_or_else(|e| panic!("{e}"));
        }
        let raw = raw_consume(&bus, "raw", events).await;
        report("redis_raw_consume", events, raw);
        let framework = framework_consume(&bus, "framework", events).await;
        report("redis_to_projection", events, framework);
        println!(
            "{}",
            serde_json::json!({"ratio": "redis_to_projection / redis_raw_consume",
                "value": (raw / framework * 100.0).round() / 100.0})
        );
        bus.delete_streams(&TYPES)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        for group in ["raw", "framework"] {
            bus.delete_group(group, &TYPES)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
    }
}
