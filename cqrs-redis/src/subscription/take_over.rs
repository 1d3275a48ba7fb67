//! A partition's take-over: what earlier holders left pending is claimed, what is pending at
//! the member itself is read again, all of it handed out in entry order before anything new.

use std::collections::BTreeMap;
use std::sync::Arc;

use cqrs_core::Result;
use redis::aio::MultiplexedConnection;
use redis::Value;

use super::{Item, RedisSubscription};
use crate::backend;
use crate::codec::{self, Raw};

/// Pending entries read per `XPENDING` during a take-over.
const PENDING_PAGE: usize = 1_000;

impl RedisSubscription {
    /// Takes over what is pending on partition `p`, in entry order, ahead of anything new:
    /// what earlier holders left is claimed (`XCLAIM`, which counts a delivery); what is
    /// pending at this member already (it reconnected, or re-took its own partition) is read
    /// again (`XRANGE`), which counts none, so a member's own reconnects never push an entry
    /// towards the delivery limit.
    pub(super) async fn take_over(
        &mut self,
        connection: &mut MultiplexedConnection,
        p: u32,
        epoch: u64,
    ) -> Result<()> {
        let bus = self.bus.clone();
        let config = bus.config();
        for t in &self.types {
            let stream: Arc<str> = config.stream(t, p).into();
            let mut start = "-".to_owned();
            let mut first = true;
            loop {
                let rows = self.pending(connection, &stream, &start).await?;
                let Some(last) = rows.last() else {
                    break;
                };
                start = format!("({}", last.0);
                let page = rows.len();
                let (own, others): (Vec<_>, Vec<_>) =
                    rows.iter().partition(|row| row.1 == self.member);
                let mut bodies: BTreeMap<String, Raw> = BTreeMap::new();
                if !others.is_empty() {
                    let mut claim = redis::cmd("XCLAIM");
                    claim
                        .arg(&*stream)
                        .arg(&self.group)
                        .arg(&self.member)
                        .arg(0);
                    for row in &others {
                        claim.arg(&row.0);
                    }
                    let reply: Value = claim
                        .query_async(connection)
                        .await
                        .map_err(|e| backend(format!("taking over `{stream}`"), e))?;
                    bodies.extend(
                        codec::into_items(reply)
                            .into_iter()
                            .filter_map(codec::entry)
                            .map(|r| (r.id.clone(), r)),
                    );
                }
                if !own.is_empty() {
                    let mut pipe = redis::pipe();
                    for row in &own {
                        pipe.cmd("XRANGE").arg(&*stream).arg(&row.0).arg(&row.0);
                    }
                    let replies: Vec<Value> = pipe.query_async(connection).await.map_err(|e| {
                        backend(format!("reading again what is pending on `{stream}`"), e)
                    })?;
                    for reply in replies {
                        bodies.extend(
                            codec::into_items(reply)
                                .into_iter()
                                .filter_map(codec::entry)
                                .map(|r| (r.id.clone(), r)),
                        );
                    }
                }
                let (mine, claimed) = (own.len(), others.len());
                for (id, _, deliveries) in rows {
                    // An entry trimmed meanwhile has no body: nothing to hand out.
                    let Some(raw) = bodies.remove(&id) else {
                        continue;
                    };
                    self.buffer.push_back(Item {
                        partition: p,
                        epoch,
                        stream: stream.clone(),
                        raw,
                        deliveries,
                        first,
                    });
                    first = false;
                }
                if mine + claimed > 0 {
                    tracing::info!(
                        group = %self.group, %stream, claimed, own = mine,
                        "took over what was pending on the partition"
                    );
                }
                if page < PENDING_PAGE {
                    break;
                }
            }
        }
        Ok(())
    }

    /// One page of a stream's pending entries for the group, from `start`: id, consumer and
    /// deliveries after this take-over (a claim adds one, reading one's own again none).
    async fn pending(
        &self,
        connection: &mut MultiplexedConnection,
        stream: &str,
        start: &str,
    ) -> Result<Vec<(String, String, u64)>> {
        let reply: Value = redis::cmd("XPENDING")
            .arg(stream)
            .arg(&self.group)
            .arg(start)
            .arg("+")
            .arg(PENDING_PAGE)
            .query_async(connection)
            .await
            .map_err(|e| backend(format!("reading the pending entries of `{stream}`"), e))?;
        Ok(codec::items(&reply)
            .iter()
            .filter_map(|row| match codec::items(row) {
                [id, consumer, _, Value::Int(n)] => {
                    let consumer = codec::text(consumer)?;
                    let n = u64::try_from(*n).ok()?;
                    let n = if consumer == self.member { n } else { n + 1 };
                    Some((codec::text(id)?, consumer, n))
                }
                _ => None,
            })
            .collect())
    }
}
