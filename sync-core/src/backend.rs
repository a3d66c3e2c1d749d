//! The `KvBackend` trait: the one seam between kvgit and a KV store (etcd, Consul).
//! Used as `Arc<dyn KvBackend>`; every backend passes the same conformance suite.

use crate::ownership::{Claim, Epoch, Lease, LeaseId, Renewal};
use crate::types::*;
use async_trait::async_trait;
use futures::stream::BoxStream;
use std::time::Duration;

/// Changes under a prefix, from a revision on. Ends after `ResyncNeeded` or an error.
pub type WatchStream = BoxStream<'static, Result<WatchEvent, BackendError>>;

/// A snapshot in pages: each item a [`Snapshot`] at the same revision, sorted, every key
/// after the previous page's last. Never empty: an empty prefix is one empty page.
pub type SnapshotPages = BoxStream<'static, Result<Snapshot, BackendError>>;

/// Errors of a backend call. An error is never "no keys": callers stop, they do not delete.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{backend} at {endpoint} is unavailable: {detail}")]
    Unavailable {
        backend: &'static str,
        endpoint: String,
        detail: String,
    },
    #[error("{backend} refused access (permission denied): {detail}")]
    PermissionDenied {
        backend: &'static str,
        detail: String,
    },
    #[error("{backend}: revision {requested} is compacted (oldest kept: {compact_revision})")]
    Compacted {
        backend: &'static str,
        requested: Revision,
        compact_revision: Revision,
    },
    #[error("{backend} refused the request: {detail}")]
    Refused {
        backend: &'static str,
        detail: String,
    },
    #[error("{backend} write of {ops} ops / {bytes} bytes is over the limit of {max_ops} ops / {max_bytes} bytes")]
    TooLarge {
        backend: &'static str,
        ops: usize,
        bytes: usize,
        max_ops: usize,
        max_bytes: usize,
    },
    #[error("{backend}: {detail}")]
    Other {
        backend: &'static str,
        detail: String,
    },
}

impl BackendError {
    /// Worth retrying with backoff (no leader, timeout, connection refused).
    pub fn is_retryable(&self) -> bool {
        matches!(self, BackendError::Unavailable { .. })
    }
}

impl WriteLimits {
    /// The largest value `key` can have and still be written (alone).
    pub fn max_value_len(&self, key: &Key) -> usize {
        self.max_value_bytes.saturating_sub(key.0.len())
    }

    /// Refuses, before anything is sent, a write the backend would refuse: too many ops,
    /// a batch over the batch budget, or one op over the single-op limit. One op alone may
    /// exceed the batch budget up to the single-op limit.
    pub fn check(&self, backend: &'static str, ops: &[WriteOp]) -> Result<(), BackendError> {
        let bytes: usize = ops.iter().map(WriteOp::payload_len).sum();
        let max_bytes = match ops.len() {
            1 => self.max_value_bytes,
            _ => self.max_bytes,
        };
        if ops.len() > self.max_ops || bytes > max_bytes {
            return Err(BackendError::TooLarge {
                backend,
                ops: ops.len(),
                bytes,
                max_ops: self.max_ops,
                max_bytes,
            });
        }
        if let Some(op) = ops
            .iter()
            .find(|op| op.payload_len() > self.max_value_bytes)
        {
            return Err(BackendError::TooLarge {
                backend,
                ops: 1,
                bytes: op.payload_len(),
                max_ops: self.max_ops,
                max_bytes: self.max_value_bytes,
            });
        }
        Ok(())
    }
}

/// A KV store as kvgit needs it. Implementations live in `backend-*` crates.
#[async_trait]
pub trait KvBackend: Send + Sync + 'static {
    /// "etcd" or "consul", for messages and status.
    fn kind(&self) -> &'static str;

    /// Transaction limits; `write` refuses anything bigger.
    fn write_limits(&self) -> WriteLimits;

    /// The identity of the cluster answering (etcd cluster id, Consul datacenter + raft id).
    async fn cluster_id(&self) -> Result<ClusterId, BackendError>;

    /// The newest revision of the store.
    async fn current_revision(&self) -> Result<Revision, BackendError>;

    /// Every key under `prefix`, all read at one revision (`at`, or the current one), sorted.
    async fn snapshot(&self, prefix: &[u8], at: Option<Revision>)
        -> Result<Snapshot, BackendError>;

    /// `snapshot` as it is read, page by page, for a caller that goes through a large area
    /// without holding it whole. The first page is read before this returns (its errors
    /// come here); a later page's error ends the stream. Default: `snapshot` as one page.
    async fn snapshot_pages(
        &self,
        prefix: &[u8],
        at: Option<Revision>,
    ) -> Result<SnapshotPages, BackendError> {
        let snap = self.snapshot(prefix, at).await?;
        Ok(Box::pin(futures::stream::once(async move { Ok(snap) })))
    }

    /// The entries of `keys` (sorted, distinct) that exist, in key order; absent keys are
    /// left out. Each is read at a revision no older than the call, not all at one: callers
    /// write back conditional on each entry's `mod_revision`. Default: one `snapshot` per
    /// key (its exact key kept).
    async fn get_many(&self, keys: &[Key]) -> Result<Vec<KvEntry>, BackendError> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let snap = self.snapshot(&key.0, None).await?;
            out.extend(snap.entries.into_iter().filter(|e| e.key == *key));
        }
        Ok(out)
    }

    /// How many keys are under `prefix` now. Default: the snapshot's pages, counted as they
    /// are read (none held).
    async fn count(&self, prefix: &[u8]) -> Result<u64, BackendError> {
        use futures::TryStreamExt;
        let pages = self.snapshot_pages(prefix, None).await?;
        pages
            .try_fold(
                0u64,
                |n, page| async move { Ok(n + page.entries.len() as u64) },
            )
            .await
    }

    /// Changes under `prefix` with revision >= `from`, in revision order. Once every change
    /// up to a revision has been sent, the stream may yield `Progress` with it: soon after
    /// the start and whenever idle where the backend can tell, never before the changes it
    /// covers (etcd before 3.4.25 tells only at its own notification interval).
    /// A compacted `from` yields `ResyncNeeded(Compacted)`, never an `Err` nor a silent gap.
    async fn watch(&self, prefix: &[u8], from: Revision) -> Result<WatchStream, BackendError>;

    /// The value at `upto` of every key under `prefix` changed after `after` (`Put` with the
    /// final value, `Delete` when gone), when the backend can answer exactly without a
    /// watch; `Ok(None)` means "not cheaply: read `watch` instead". A compacted `after` is
    /// `Err(Compacted)`.
    async fn changes_between(
        &self,
        _prefix: &[u8],
        _after: Revision,
        _upto: Revision,
    ) -> Result<Option<Vec<KvChange>>, BackendError> {
        Ok(None)
    }

    /// One atomic transaction: all ops apply, or none (`PreconditionFailed`).
    async fn write(&self, ops: &[WriteOp]) -> Result<TxnOutcome, BackendError>;

    /// Check, WITHOUT changing anything, that the credential may write (put and delete)
    /// every key of `keys`: no value, revision, index or watch event changes, also when it
    /// may. `Err(PermissionDenied)` names a refused key and the credential; `Ok(())` when
    /// every key may be written (a backend without permissions always answers `Ok`). Called
    /// before the first write of an apply, so a refusal leaves nothing half-applied.
    async fn probe_write(&self, keys: &[Key]) -> Result<(), BackendError>;

    /// Refuse a key this backend cannot store or read back unchanged (Consul: keys must be
    /// UTF-8, since its API carries them as JSON strings). Called on every key of an apply
    /// before its first write. The error names the key.
    fn check_key(&self, _key: &Key) -> Result<(), BackendError> {
        Ok(())
    }

    /// Whether older revisions can be read back (`snapshot(at)`, `watch(from)` in the
    /// past, `changes_between`). etcd keeps history until compaction; Consul keeps only the
    /// current state, so for it an older revision behaves as compacted.
    fn keeps_history(&self) -> bool {
        true
    }

    // Ownership: leases (etcd) / sessions (Consul) and the claims that hang on them. kvgit
    // builds area ownership on these, never on a protocol of its own.

    /// A new lease that expires unless renewed within `ttl` (the backend may round the TTL
    /// up: the returned `Lease` says what it applies). `name` labels it for operators.
    async fn grant_lease(&self, name: &str, ttl: Duration) -> Result<Lease, BackendError>;

    /// Renew once. `Renewal::Gone` when it expired or was revoked.
    async fn renew_lease(&self, lease: &LeaseId) -> Result<Renewal, BackendError>;

    /// End the lease now; every claim made with it is released. Unknown leases are fine.
    async fn revoke_lease(&self, lease: &LeaseId) -> Result<(), BackendError>;

    /// Take `key` with `value` for `lease` when no live lease holds it. `Some(epoch)` when
    /// `lease` holds it afterwards (also when it already did: nothing is written then),
    /// `None` when another lease holds it. The key goes away with the lease.
    async fn claim(
        &self,
        key: &Key,
        value: &[u8],
        lease: &LeaseId,
    ) -> Result<Option<Epoch>, BackendError>;

    /// Give `key` up if `lease` holds it (the key is deleted); otherwise do nothing.
    async fn release(&self, key: &Key, lease: &LeaseId) -> Result<(), BackendError>;

    /// Every claim held under `prefix`, sorted by key, read at one revision.
    async fn claims(&self, prefix: &[u8]) -> Result<Vec<Claim>, BackendError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: WriteLimits = WriteLimits {
        max_ops: 4,
        max_bytes: 100,
        max_value_bytes: 250,
    };

    fn put(k: &str, len: usize) -> WriteOp {
        WriteOp::Put {
            key: Key::from(k),
            value: vec![b'x'; len],
            expect: Precondition::ModRevision(Revision(1)),
        }
    }

    fn refused(ops: &[WriteOp]) -> Option<(usize, usize)> {
        match LIMITS.check("test", ops) {
            Ok(()) => None,
            Err(BackendError::TooLarge {
                bytes, max_bytes, ..
            }) => Some((bytes, max_bytes)),
            Err(e) => panic!("expected TooLarge, got {e}"),
        }
    }

    #[test]
    fn one_op_alone_may_exceed_the_batch_budget_up_to_the_single_op_limit() {
        assert_eq!(refused(&[put("k", 249)]), None);
        assert_eq!(refused(&[put("k", 250)]), Some((251, 250)));
        assert_eq!(LIMITS.max_value_len(&Key::from("k")), 249);
    }

    #[test]
    fn a_batch_stays_within_the_batch_budget() {
        assert_eq!(refused(&[put("a", 49), put("b", 49)]), None);
        assert_eq!(refused(&[put("a", 49), put("b", 50)]), Some((101, 100)));
        // Not even the batch budget lets a big op ride along with a small one.
        assert_eq!(refused(&[put("a", 1), put("b", 150)]), Some((153, 100)));
        let five: Vec<WriteOp> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|k| put(k, 1))
            .collect();
        assert!(refused(&five).is_some(), "over max_ops");
        assert_eq!(refused(&[]), None);
    }
}
