//! The `KvBackend` trait: the one seam between kvgit and a KV store (etcd, Consul).
//! Used as `Arc<dyn KvBackend>`; every backend passes the same conformance suite.

use crate::types::*;
use async_trait::async_trait;
use futures::stream::BoxStream;

/// Changes under a prefix, from a revision on. Ends after `ResyncNeeded` or an error.
pub type WatchStream = BoxStream<'static, Result<WatchEvent, BackendError>>;

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

    /// Changes under `prefix` with revision >= `from`, in revision order. Soon after the
    /// start, once every change up to the then-current revision has been sent, the stream
    /// yields `Progress` with that revision, and again whenever it is idle for a while.
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
}
