//! A member's hold on its partitions: the token of a holding, the background renewal of the
//! roster entry and leases, and leaving the group.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cqrs_core::Result;
use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;

use crate::{backend, scripts, RedisBus};

/// The partitions a member holds: partition to the epoch of its holding (the token is
/// `<member>#<epoch>`). Shared with the task that renews the leases, which drops a holding
/// whose lease was lost.
pub(crate) type Holdings = Arc<Mutex<BTreeMap<u32, u64>>>;

/// The token of a member's holding.
pub(crate) fn token(member: &str, epoch: u64) -> String {
    format!("{member}#{epoch}")
}

/// Gives the leases up and leaves the roster.
pub(crate) async fn leave(
    bus: &RedisBus,
    group: &str,
    member: &str,
    held: &[(u32, u64)],
) -> Result<()> {
    let config = bus.config();
    let mut connection = bus.connect(Duration::ZERO).await?;
    for (p, epoch) in held {
        scripts::RELEASE
            .key(config.lease_key(group, *p))
            .arg(token(member, *epoch))
            .invoke_async::<i64>(&mut connection)
            .await
            .map_err(|e| backend("releasing a partition", e))?;
    }
    redis::cmd("ZREM")
        .arg(config.roster(group))
        .arg(member)
        .query_async::<i64>(&mut connection)
        .await
        .map_err(|e| backend("leaving the roster", e))?;
    Ok(())
}

/// Renews the member's roster entry and leases every third of the lease, while it lives; a
/// lease found lost ends its holding, so nothing more of that partition is handed out.
pub(crate) async fn renew(bus: RedisBus, group: String, member: String, holdings: Holdings) {
    let config = bus.config().clone();
    let lease_ms = config.lease.as_millis() as u64;
    let mut connection: Option<MultiplexedConnection> = None;
    loop {
        tokio::time::sleep(config.lease / 3).await;
        if connection.is_none() {
            match bus.connect(Duration::ZERO).await {
                Ok(c) => connection = Some(c),
                Err(e) => {
                    tracing::warn!(%group, error = %e, "cannot renew the leases");
                    continue;
                }
            }
        }
        let Some(c) = connection.as_mut() else {
            continue;
        };
        let held: Vec<(u32, u64)> = holdings.lock().iter().map(|(p, e)| (*p, *e)).collect();
        let outcome = renew_once(c, &config, &group, &member, lease_ms, &held).await;
        match outcome {
            Ok(kept) => {
                let mut current = holdings.lock();
                for ((p, epoch), kept) in held.iter().zip(kept) {
                    if !kept && current.get(p) == Some(epoch) {
                        tracing::warn!(%group, partition = p, "the lease of a partition was lost");
                        current.remove(p);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(%group, error = %e, "renewing the leases failed");
                connection = None;
            }
        }
    }
}

async fn renew_once(
    connection: &mut MultiplexedConnection,
    config: &crate::RedisConfig,
    group: &str,
    member: &str,
    lease_ms: u64,
    held: &[(u32, u64)],
) -> Result<Vec<bool>> {
    scripts::ROSTER
        .key(config.roster(group))
        .arg(member)
        .arg(lease_ms)
        .invoke_async::<i64>(connection)
        .await
        .map_err(|e| backend("renewing the roster", e))?;
    if held.is_empty() {
        return Ok(Vec::new());
    }
    let mut invocation = scripts::RENEW.prepare_invoke();
    invocation.arg(lease_ms);
    for (p, epoch) in held {
        invocation
            .key(config.lease_key(group, *p))
            .arg(token(member, *epoch));
    }
    let kept: Vec<i64> = invocation
        .invoke_async(connection)
        .await
        .map_err(|e| backend("renewing the leases", e))?;
    Ok(kept.into_iter().map(|k| k == 1).collect())
}
