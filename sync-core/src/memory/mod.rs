//! `MemoryBackend`: a `KvBackend` held in process memory with etcd's semantics (revisions,
//! history until compaction, leases, claims whose epoch is their create revision).
//!
//! It exists for unit tests and passes the same conformance suite as etcd and Consul
//! (`tests/tests/conformance_memory.rs`). It is always compiled rather than behind a cargo
//! feature: it needs nothing beyond std and futures, which sync-core already depends on, so
//! a feature would only make every crate that wants it in its tests opt in for no saving.
//!
//! It runs on any executor: no tokio, no thread, no timer. Hence two choices:
//! - lease deadlines (on `std::time::Instant`) are checked at the start of every call; a
//!   lease that runs out while nobody calls is dropped, with its claims, by the next call;
//! - a watch reports `Progress` when its reader has taken everything queued, with the newest
//!   store revision, instead of on a clock.
//!
//! Test knobs: `compact` (etcd's compaction), `set_unavailable` (an outage: every call and
//! every open watch fails with a retryable error). Clones share one store, so a test keeps a
//! clone for the knobs while the code under test holds an `Arc<dyn KvBackend>`.

mod leases;
mod state;
mod store;
mod watch;

#[cfg(test)]
mod tests;

use crate::backend::{BackendError, KvBackend, WatchStream};
use crate::ownership::{Claim, Epoch, Lease, LeaseId, Renewal};
use crate::types::{
    ClusterId, Key, KvChange, Revision, Snapshot, TxnOutcome, WriteLimits, WriteOp,
};
use async_trait::async_trait;
use state::State;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// `kind()`, and the `backend` of every error.
pub const KIND: &str = "memory";

/// etcd's limits (128 ops, 1400 KiB), so that code cutting transactions is tested against
/// the limits it meets in production.
pub const LIMITS: WriteLimits = WriteLimits {
    max_ops: 128,
    max_bytes: 1400 * 1024,
    max_value_bytes: 1400 * 1024,
};

/// An in-memory KV store; see the module docs. Cheap to clone: clones share the store.
#[derive(Clone)]
pub struct MemoryBackend {
    shared: Arc<Shared>,
}

struct Shared {
    /// Unique per store (process, time, counter), so that a checkpoint written against one
    /// store is never taken as a base by another, as between real clusters.
    cluster: ClusterId,
    state: Mutex<State>,
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBackend {
    /// An empty store at revision 1 (as a fresh etcd), with its own cluster id.
    pub fn new() -> Self {
        MemoryBackend {
            shared: Arc::new(Shared {
                cluster: new_cluster_id(),
                state: Mutex::new(State::new()),
            }),
        }
    }

    /// etcd's compaction: revisions below `rev` can no longer be read (`Compacted`) nor
    /// watched from (`ResyncNeeded(Compacted)`); `rev` itself still can. A `rev` above the
    /// current revision compacts up to the current one; an older one does nothing.
    pub fn compact(&self, rev: Revision) {
        self.lock().store.compact(rev);
    }

    /// Simulates an outage (`true`) or its end (`false`). While down, every call fails with
    /// `Unavailable` (retryable) and open watches yield that error and end, as when a real
    /// server goes away; leases keep running out meanwhile.
    pub fn set_unavailable(&self, down: bool) {
        let mut state = self.lock();
        state.available = !down;
        if down {
            state
                .watchers
                .fail_all(|| unavailable("simulated outage (set_unavailable)"));
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Only this module's code runs under the lock, and none of it panics by design.
        self.shared
            .state
            .lock()
            .expect("memory backend lock poisoned by an earlier panic")
    }

    /// The state, once outage and lease deadlines are checked.
    fn ready(&self) -> Result<MutexGuard<'_, State>, BackendError> {
        let mut state = self.lock();
        state.ready(Instant::now())?;
        Ok(state)
    }
}

fn new_cluster_id() -> ClusterId {
    static STORES: AtomicU64 = AtomicU64::new(0);
    let n = STORES.fetch_add(1, Ordering::Relaxed);
    // Before 1970 is not worth an error: the pid and counter still tell stores apart.
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    ClusterId(format!("memory-{:x}-{nanos:x}-{n}", std::process::id()))
}

fn unavailable(detail: &str) -> BackendError {
    BackendError::Unavailable {
        backend: KIND,
        endpoint: "in-process".into(),
        detail: detail.into(),
    }
}

#[async_trait]
impl KvBackend for MemoryBackend {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn write_limits(&self) -> WriteLimits {
        LIMITS
    }

    async fn cluster_id(&self) -> Result<ClusterId, BackendError> {
        // Asked only to fail during an outage, as a real server would.
        drop(self.ready()?);
        Ok(self.shared.cluster.clone())
    }

    async fn current_revision(&self) -> Result<Revision, BackendError> {
        Ok(self.ready()?.store.revision())
    }

    async fn snapshot(
        &self,
        prefix: &[u8],
        at: Option<Revision>,
    ) -> Result<Snapshot, BackendError> {
        self.ready()?.store.snapshot(prefix, at)
    }

    async fn watch(&self, prefix: &[u8], from: Revision) -> Result<WatchStream, BackendError> {
        Ok(self.ready()?.watch(prefix, from))
    }

    async fn changes_between(
        &self,
        prefix: &[u8],
        after: Revision,
        upto: Revision,
    ) -> Result<Option<Vec<KvChange>>, BackendError> {
        self.ready()?
            .store
            .changes_between(prefix, after, upto)
            .map(Some)
    }

    async fn write(&self, ops: &[WriteOp]) -> Result<TxnOutcome, BackendError> {
        // Refused before the store is touched, as etcd's client does before sending.
        LIMITS.check(KIND, ops)?;
        self.ready()?.write(ops)
    }

    async fn probe_write(&self, _keys: &[Key]) -> Result<(), BackendError> {
        // No permissions to check; an outage still fails, as a real server's would.
        drop(self.ready()?);
        Ok(())
    }

    async fn grant_lease(&self, _name: &str, ttl: Duration) -> Result<Lease, BackendError> {
        Ok(self.ready()?.leases.grant(ttl, Instant::now()))
    }

    async fn renew_lease(&self, lease: &LeaseId) -> Result<Renewal, BackendError> {
        let id = leases::parse(lease)?;
        Ok(self.ready()?.leases.renew(id, Instant::now()))
    }

    async fn revoke_lease(&self, lease: &LeaseId) -> Result<(), BackendError> {
        self.ready()?.revoke(lease)
    }

    async fn claim(
        &self,
        key: &Key,
        value: &[u8],
        lease: &LeaseId,
    ) -> Result<Option<Epoch>, BackendError> {
        self.ready()?.claim(key, value, lease)
    }

    async fn release(&self, key: &Key, lease: &LeaseId) -> Result<(), BackendError> {
        self.ready()?.release(key, lease)
    }

    async fn claims(&self, prefix: &[u8]) -> Result<Vec<Claim>, BackendError> {
        Ok(self.ready()?.claims(prefix))
    }
}
