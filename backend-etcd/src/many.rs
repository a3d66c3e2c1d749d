//! `get_many`: named keys read in read-only transactions of gets, a few in flight, so a
//! plan that needs a few thousand keys of a large prefix does not read the prefix.

use crate::backend::Conn;
use crate::errors::{is_too_large_to_decode, rev};
use etcd_client::{Txn, TxnOp, TxnOpResponse};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use sync_core::{BackendError, Key, KvEntry};

/// Transactions in flight at once: enough to hide the round trips, few enough to leave
/// etcd to its writers.
const GETS_IN_FLIGHT: usize = 8;

pub(crate) async fn get_many(
    conn: &Conn,
    keys: &[Key],
    max_ops: usize,
) -> Result<Vec<KvEntry>, BackendError> {
    let batches: Vec<Vec<Key>> = keys.chunks(max_ops.max(1)).map(<[Key]>::to_vec).collect();
    let batches = batches
        .into_iter()
        .map(|batch| get_batch(conn.clone(), batch));
    let read: Vec<Vec<KvEntry>> = futures::stream::iter(batches)
        .buffered(GETS_IN_FLIGHT)
        .try_collect()
        .await?;
    Ok(read.into_iter().flatten().collect())
}

/// One transaction of gets; an answer over the client's decode limit (large values) is
/// read again in halves.
fn get_batch(conn: Conn, keys: Vec<Key>) -> BoxFuture<'static, Result<Vec<KvEntry>, BackendError>> {
    async move {
        let gets: Vec<TxnOp> = keys.iter().map(|k| TxnOp::get(k.0.clone(), None)).collect();
        let mut kv = conn.kv.clone();
        let answer =
            tokio::time::timeout(conn.ctx.request_timeout, kv.txn(Txn::new().and_then(gets)));
        let resp = match answer.await {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) if is_too_large_to_decode(&e) && keys.len() > 1 => {
                let mut first = keys;
                let second = first.split_off(first.len() / 2);
                let mut out = get_batch(conn.clone(), first).await?;
                out.extend(get_batch(conn, second).await?);
                return Ok(out);
            }
            Ok(Err(e)) => return Err(conn.ctx.map("txn of gets", e)),
            Err(_) => {
                return Err(conn.ctx.unavailable(format!(
                    "txn of gets: no answer within {:?}",
                    conn.ctx.request_timeout
                )))
            }
        };
        let mut out = Vec::with_capacity(keys.len());
        for op in resp.op_responses() {
            let TxnOpResponse::Get(got) = op else {
                continue;
            };
            for kv in got.kvs() {
                out.push(KvEntry {
                    key: Key(kv.key().to_vec()),
                    value: kv.value().to_vec(),
                    mod_revision: rev(kv.mod_revision()),
                });
            }
        }
        Ok(out)
    }
    .boxed()
}
