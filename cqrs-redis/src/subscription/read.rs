//! A member's read of its partitions' new entries, fenced by their leases: a watched
//! transaction per read, and a blocking wait for entries when there are none.

use std::sync::Arc;
use std::time::Duration;

use cqrs_core::Result;
use redis::aio::MultiplexedConnection;
use redis::Value;

use super::{Item, RedisSubscription};
use crate::backend;
use crate::codec;
use crate::lease::token;

/// Watched reads tried before a read gives up for the round: each is dropped only when a
/// lease changed between the watch and the transaction.
const READ_ATTEMPTS: usize = 3;

impl RedisSubscription {
    /// Reads new entries of the held streams behind their leases; when
    /// there are none, waits up to `wait` for an entry to arrive (a plain blocking `XREAD`,
    /// which reads nothing for the group) and tries once more.
    pub(super) async fn read(
        &mut self,
        connection: &mut MultiplexedConnection,
        max: usize,
        wait: Duration,
    ) -> Result<()> {
        let held: Vec<(u32, u64)> = self.holdings.lock().iter().map(|(p, e)| (*p, *e)).collect();
        if held.is_empty() {
            tokio::time::sleep(wait).await;
            return Ok(());
        }
        if self.read_fenced(connection, max, &held).await? {
            return Ok(());
        }
        let bus = self.bus.clone();
        let config = bus.config();
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(wait.as_millis().max(1) as u64)
            .arg("STREAMS");
        for (p, _) in &held {
            for t in &self.types {
                cmd.arg(config.stream(t, *p));
            }
        }
        for _ in 0..held.len() * self.types.len() {
            cmd.arg("$");
        }
        let _: Value = cmd
            .query_async(connection)
            .await
            .map_err(|e| backend("waiting for new entries", e))?;
        self.read_fenced(connection, max, &held).await.map(|_| ())
    }

    /// One fenced read; whether it gave entries. The leases are watched and checked to hold
    /// this member's tokens, then the streams are read in a transaction, which the server
    /// drops if a lease changed in between (`WATCH`/`MULTI`/`XREADGROUP`/`EXEC`): what a
    /// member reads, it read while it held the partition. A lease found to be another's ends
    /// its holding. The reader connection is this member's alone, so nothing else runs
    /// between the watch and the transaction on it.
    async fn read_fenced(
        &mut self,
        connection: &mut MultiplexedConnection,
        max: usize,
        held: &[(u32, u64)],
    ) -> Result<bool> {
        for _ in 0..READ_ATTEMPTS {
            // A holding an earlier attempt found lost is neither read nor watched again (its
            // new holder's renewals would drop every read).
            let current: Vec<(u32, u64)> = {
                let holdings = self.holdings.lock();
                held.iter()
                    .filter(|(p, e)| holdings.get(p) == Some(e))
                    .copied()
                    .collect()
            };
            if current.is_empty() {
                return Ok(false);
            }
            if let Some(got) = self.try_read_fenced(connection, max, &current).await? {
                return Ok(got);
            }
        }
        // Each attempt met a lease changing under it (its own renewal, most likely).
        Ok(false)
    }

    /// One watched read: `None` when the transaction was dropped.
    async fn try_read_fenced(
        &mut self,
        connection: &mut MultiplexedConnection,
        max: usize,
        held: &[(u32, u64)],
    ) -> Result<Option<bool>> {
        let bus = self.bus.clone();
        let config = bus.config();
        let leases: Vec<String> = held
            .iter()
            .map(|(p, _)| config.lease_key(&self.group, *p))
            .collect();
        let (tokens,): (Vec<Option<String>>,) = redis::pipe()
            .cmd("WATCH")
            .arg(&leases)
            .ignore()
            .cmd("MGET")
            .arg(&leases)
            .query_async(connection)
            .await
            .map_err(|e| backend("watching the partitions' leases", e))?;
        let mut streams: Vec<(String, u32, u64)> = Vec::new();
        for ((p, epoch), found) in held.iter().zip(tokens) {
            if found.as_deref() != Some(token(&self.member, *epoch).as_str()) {
                tracing::warn!(group = %self.group, partition = p, "the lease of a partition was lost");
                let mut current = self.holdings.lock();
                if current.get(p) == Some(epoch) {
                    current.remove(p);
                }
                continue;
            }
            for t in &self.types {
                streams.push((config.stream(t, *p), *p, *epoch));
            }
        }
        if streams.is_empty() {
            redis::cmd("UNWATCH")
                .query_async::<()>(connection)
                .await
                .map_err(|e| backend("unwatching the partitions' leases", e))?;
            return Ok(Some(false));
        }
        let mut read = redis::cmd("XREADGROUP");
        read.arg("GROUP")
            .arg(&self.group)
            .arg(&self.member)
            .arg("COUNT")
            .arg(max.max(1))
            .arg("STREAMS");
        for (stream, _, _) in &streams {
            read.arg(stream);
        }
        for _ in &streams {
            read.arg(">");
        }
        let reply: Option<(Value,)> = redis::pipe()
            .atomic()
            .add_command(read)
            .query_async(connection)
            .await
            .map_err(|e| backend("reading the group's streams", e))?;
        let Some((reply,)) = reply else {
            tracing::debug!(group = %self.group, "a read was dropped: a lease was written meanwhile");
            return Ok(None);
        };
        let mut got = false;
        for (name, entries) in codec::streams(reply) {
            let Some((stream, p, epoch)) = streams.iter().find(|(s, _, _)| s.as_bytes() == name)
            else {
                continue;
            };
            let stream: Arc<str> = stream.as_str().into();
            for raw in codec::into_items(entries)
                .into_iter()
                .filter_map(codec::entry)
            {
                got = true;
                self.buffer.push_back(Item {
                    partition: *p,
                    epoch: *epoch,
                    stream: stream.clone(),
                    raw,
                    deliveries: 1,
                    first: false,
                });
            }
        }
        Ok(Some(got))
    }
}
