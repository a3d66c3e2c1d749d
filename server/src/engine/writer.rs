//! Writing a validated set of operations to the KV store: transactions cut to the backend's
//! limits, several in flight at once, each one compare-and-swap on what the plan read.

use futures::StreamExt;
use std::sync::Arc;
use sync_core::{BackendError, Key, KvBackend, Revision, TxnOutcome, WriteLimits, WriteOp};
use tokio::sync::mpsc;

/// Transactions in flight at once: more than raw etcd needs (8), since every op of ours also
/// carries a compare; etcd batches concurrent transactions into fewer fsyncs.
pub const CONCURRENCY: usize = 32;

/// What a write pass did.
#[derive(Debug, Default)]
pub struct Written {
    pub ops: usize,
    pub txns: usize,
    pub last_revision: Option<Revision>,
    /// Keys of transactions whose preconditions failed: changed by someone else meanwhile.
    pub raced: Vec<Key>,
}

/// Transactions queued ahead of the writers: enough to keep them busy, bounded for memory.
const QUEUE: usize = 4 * CONCURRENCY;

/// Per-op framing allowance on top of key and value bytes.
const OP_OVERHEAD: usize = 64;

/// Cuts a sequence of ops into transactions within the backend's limits, in order.
pub struct Chunker {
    limits: WriteLimits,
    cur: Vec<WriteOp>,
    bytes: usize,
}

impl Chunker {
    pub fn new(limits: WriteLimits) -> Chunker {
        Chunker {
            limits,
            cur: Vec::new(),
            bytes: 0,
        }
    }

    /// Add an op; returns the transactions that are complete: the current one when `op`
    /// does not fit in it, and `op` alone when it is bigger than the batch budget (the
    /// backend takes it in a transaction of its own, up to its single-op limit).
    pub fn push(&mut self, op: WriteOp) -> Vec<Vec<WriteOp>> {
        let len = op.payload_len() + OP_OVERHEAD;
        let mut out = Vec::new();
        let full = !self.cur.is_empty()
            && (self.cur.len() >= self.limits.max_ops
                || self.bytes + len > self.limits.max_bytes
                || len > self.limits.max_bytes);
        if full {
            self.bytes = 0;
            out.push(std::mem::take(&mut self.cur));
        }
        if len > self.limits.max_bytes {
            out.push(vec![op]);
        } else {
            self.bytes += len;
            self.cur.push(op);
        }
        out
    }

    /// The last, partly filled transaction.
    pub fn finish(self) -> Option<Vec<WriteOp>> {
        (!self.cur.is_empty()).then_some(self.cur)
    }
}

/// Cut `ops` into transactions within `limits`, in order.
#[cfg(test)]
pub fn chunk(ops: Vec<WriteOp>, limits: WriteLimits) -> Vec<Vec<WriteOp>> {
    let mut chunker = Chunker::new(limits);
    let mut out: Vec<Vec<WriteOp>> = ops.into_iter().flat_map(|op| chunker.push(op)).collect();
    out.extend(chunker.finish());
    out
}

/// A producer of transactions (run on a blocking thread, e.g. reading values from Git)
/// feeding the writers through a bounded queue, so reading overlaps writing. A producer
/// that fails drops its sender and reports its own error.
pub fn channel() -> (mpsc::Sender<Vec<WriteOp>>, mpsc::Receiver<Vec<WriteOp>>) {
    mpsc::channel(QUEUE)
}

/// Write the transactions of `rx` as they come, `CONCURRENCY` in flight.
pub async fn write_queue(
    backend: Arc<dyn KvBackend>,
    rx: mpsc::Receiver<Vec<WriteOp>>,
) -> Result<Written, BackendError> {
    let stream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    write_stream(backend, stream).await
}

/// Write every transaction; a backend error stops the pass (what was written stays
/// written, and each transaction is atomic, so the store never holds half of one).
async fn write_stream(
    backend: Arc<dyn KvBackend>,
    chunks: impl futures::Stream<Item = Vec<WriteOp>>,
) -> Result<Written, BackendError> {
    let mut written = Written::default();
    let results = chunks
        .map(|c| {
            let backend = backend.clone();
            async move {
                let r = backend.write(&c).await;
                (c, r)
            }
        })
        .buffer_unordered(CONCURRENCY);
    let mut results = std::pin::pin!(results);
    while let Some((chunk, result)) = results.next().await {
        match result? {
            TxnOutcome::Committed { revision } => {
                written.ops += chunk.len();
                written.txns += 1;
                written.last_revision = written.last_revision.max(Some(revision));
            }
            TxnOutcome::PreconditionFailed => {
                written
                    .raced
                    .extend(chunk.iter().map(|op| op.key().clone()));
            }
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_respect_ops_and_bytes() {
        let limits = WriteLimits {
            max_ops: 128,
            max_bytes: 10_000,
            max_value_bytes: 5_000,
        };
        let ops: Vec<WriteOp> = (0..300)
            .map(|i| WriteOp::Put {
                key: Key(format!("k{i}").into_bytes()),
                value: vec![0; if i == 5 { 4_000 } else { 10 }],
                expect: sync_core::Precondition::Any,
            })
            .collect();
        let chunks = chunk(ops, limits);
        assert!(chunks.iter().all(|c| c.len() <= 128));
        assert!(chunks
            .iter()
            .all(|c| c.iter().map(|o| o.payload_len() + 64).sum::<usize>() <= 10_000));
        assert_eq!(chunks.iter().map(|c| c.len()).sum::<usize>(), 300);
    }

    #[test]
    fn an_op_over_the_batch_budget_goes_alone_in_order() {
        let limits = WriteLimits {
            max_ops: 128,
            max_bytes: 10_000,
            max_value_bytes: 50_000,
        };
        let sizes = [10, 10, 20_000, 10, 30_000, 40_000, 10];
        let ops: Vec<WriteOp> = sizes
            .iter()
            .enumerate()
            .map(|(i, len)| WriteOp::Put {
                key: Key(format!("k{i}").into_bytes()),
                value: vec![0; *len],
                expect: sync_core::Precondition::Any,
            })
            .collect();
        let chunks = chunk(ops, limits);
        let keys: Vec<Vec<String>> = chunks
            .iter()
            .map(|c| c.iter().map(|o| o.key().to_string()).collect())
            .collect();
        assert_eq!(
            keys,
            [
                vec!["k0", "k1"],
                vec!["k2"],
                vec!["k3"],
                vec!["k4"],
                vec!["k5"],
                vec!["k6"]
            ]
        );
        for c in &chunks {
            limits
                .check("test", c)
                .expect("every transaction within the limits");
        }
    }
}
