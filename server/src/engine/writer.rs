//! Writing a validated set of operations to the KV store: transactions cut to the backend's
//! limits, several in flight at once, each one compare-and-swap on what the plan read.

use futures::StreamExt;
use std::sync::Arc;
use sync_core::{Key, KvBackend, Revision, TxnOutcome, WriteLimits, WriteOp};

/// Transactions in flight at once (raw etcd measured best around 8 concurrent writers).
pub const CONCURRENCY: usize = 8;

/// What a write pass did.
#[derive(Debug, Default)]
pub struct Written {
    pub ops: usize,
    pub txns: usize,
    pub last_revision: Option<Revision>,
    /// Keys of transactions whose preconditions failed: changed by someone else meanwhile.
    pub raced: Vec<Key>,
}

/// Cut `ops` into transactions within `limits`, in order.
pub fn chunk(ops: Vec<WriteOp>, limits: WriteLimits) -> Vec<Vec<WriteOp>> {
    let mut out = Vec::new();
    let mut cur: Vec<WriteOp> = Vec::new();
    let mut bytes = 0;
    for op in ops {
        let len = op.payload_len() + 64;
        if !cur.is_empty() && (cur.len() >= limits.max_ops || bytes + len > limits.max_bytes) {
            out.push(std::mem::take(&mut cur));
            bytes = 0;
        }
        bytes += len;
        cur.push(op);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Write every op; a backend error stops the pass (what was written stays written, and
/// each transaction is atomic, so the store is never left with half a transaction).
pub async fn write_all(backend: Arc<dyn KvBackend>, ops: Vec<WriteOp>) -> anyhow::Result<Written> {
    let limits = backend.write_limits();
    let chunks = chunk(ops, limits);
    let mut written = Written::default();
    let mut results = futures::stream::iter(chunks.into_iter().map(|c| {
        let backend = backend.clone();
        async move {
            let r = backend.write(&c).await;
            (c, r)
        }
    }))
    .buffer_unordered(CONCURRENCY);
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
}
