//! Everything behind the in-memory backend's one lock: the key space, the leases and the
//! open watches, and the operations that touch more than one of them (writes, claims).

use super::leases::{self, Leases};
use super::store::{Edit, Store};
use super::watch::Watchers;
use super::KIND;
use crate::backend::{BackendError, WatchStream};
use crate::ownership::{Claim, Epoch, LeaseId};
use crate::types::{Key, Precondition, ResyncReason, Revision, TxnOutcome, WatchEvent, WriteOp};
use futures::StreamExt;
use std::collections::HashSet;
use std::time::Instant;

pub(super) struct State {
    pub(super) store: Store,
    pub(super) leases: Leases,
    pub(super) watchers: Watchers,
    /// Cleared by `MemoryBackend::set_unavailable`: every call fails as an outage would.
    pub(super) available: bool,
}

impl State {
    pub(super) fn new() -> Self {
        State {
            store: Store::new(),
            leases: Leases::default(),
            watchers: Watchers::default(),
            available: true,
        }
    }

    /// Called first by every backend call: refuses during an outage, and ends the leases
    /// whose deadline passed (nothing runs in the background to do it on time).
    pub(super) fn ready(&mut self, now: Instant) -> Result<(), BackendError> {
        if !self.available {
            return Err(super::unavailable("simulated outage (set_unavailable)"));
        }
        for id in self.leases.expire(now) {
            self.drop_claims(id);
        }
        Ok(())
    }

    /// Commits `edits` and tells the watches.
    fn apply(&mut self, edits: Vec<Edit>) {
        if let Some(txn) = self.store.commit(edits) {
            self.watchers.notify(txn);
        }
    }

    /// All ops or none: every precondition is checked against the state before the txn.
    pub(super) fn write(&mut self, ops: &[WriteOp]) -> Result<TxnOutcome, BackendError> {
        let mut keys = HashSet::with_capacity(ops.len());
        if let Some(op) = ops.iter().find(|op| !keys.insert(op.key())) {
            // etcd refuses this too; accepting it here would hide a bug until production.
            return Err(BackendError::Refused {
                backend: KIND,
                detail: format!("key {} appears twice in one transaction", op.key()),
            });
        }
        let holds = |key: &Key, expect: &Precondition| {
            let entry = self.store.get(key);
            match expect {
                Precondition::Any => true,
                Precondition::Absent | Precondition::AbsentInRun => entry.is_none(),
                Precondition::ModRevision(r) => entry.is_some_and(|e| e.modified == *r),
            }
        };
        let all_hold = ops.iter().all(|op| match op {
            WriteOp::Put { key, expect, .. } | WriteOp::Delete { key, expect } => {
                holds(key, expect)
            }
        });
        if !all_hold {
            return Ok(TxnOutcome::PreconditionFailed);
        }
        let edits = ops
            .iter()
            .map(|op| match op {
                WriteOp::Put { key, value, .. } => Edit::Put {
                    key: key.clone(),
                    value: value.clone(),
                    lease: None,
                },
                WriteOp::Delete { key, .. } => Edit::Delete { key: key.clone() },
            })
            .collect();
        self.apply(edits);
        Ok(TxnOutcome::Committed {
            revision: self.store.revision(),
        })
    }

    /// The backlog from `from` and then live changes; `ResyncNeeded` alone when `from` is
    /// compacted.
    pub(super) fn watch(&mut self, prefix: &[u8], from: Revision) -> WatchStream {
        match self.store.replay(prefix, from) {
            Ok(backlog) => self
                .watchers
                .open(prefix, from, backlog, self.store.revision()),
            Err(compact_revision) => {
                futures::stream::iter([Ok(WatchEvent::ResyncNeeded(ResyncReason::Compacted {
                    compact_revision,
                }))])
                .boxed()
            }
        }
    }

    /// etcd's claim: put with the lease when the key does not exist (its create revision is
    /// the epoch); the holder asking again gets the same epoch and nothing is written.
    pub(super) fn claim(
        &mut self,
        key: &Key,
        value: &[u8],
        lease: &LeaseId,
    ) -> Result<Option<Epoch>, BackendError> {
        let id = leases::parse(lease)?;
        if let Some(e) = self.store.get(key) {
            return Ok((e.lease == Some(id)).then_some(Epoch(e.created.0)));
        }
        if !self.leases.is_live(id) {
            return Err(BackendError::Refused {
                backend: KIND,
                detail: format!("claim of {key}: lease {lease} not found"),
            });
        }
        self.apply(vec![Edit::Put {
            key: key.clone(),
            value: value.to_vec(),
            lease: Some(id),
        }]);
        Ok(Some(Epoch(self.store.revision().0)))
    }

    pub(super) fn release(&mut self, key: &Key, lease: &LeaseId) -> Result<(), BackendError> {
        let id = leases::parse(lease)?;
        if self.store.get(key).is_some_and(|e| e.lease == Some(id)) {
            self.apply(vec![Edit::Delete { key: key.clone() }]);
        }
        Ok(())
    }

    pub(super) fn claims(&self, prefix: &[u8]) -> Vec<Claim> {
        self.store
            .under(prefix)
            .filter_map(|(key, e)| {
                e.lease.map(|id| Claim {
                    key: key.clone(),
                    value: e.value.clone(),
                    lease: leases::name(id),
                    epoch: Epoch(e.created.0),
                })
            })
            .collect()
    }

    pub(super) fn revoke(&mut self, lease: &LeaseId) -> Result<(), BackendError> {
        let id = leases::parse(lease)?;
        if self.leases.revoke(id) {
            self.drop_claims(id);
        }
        Ok(())
    }

    /// Deletes every key of a lease that ended, in one transaction as etcd does. It scans
    /// the whole store: leases end rarely and test stores are small.
    fn drop_claims(&mut self, id: u64) {
        let edits = self
            .store
            .under(b"")
            .filter(|(_, e)| e.lease == Some(id))
            .map(|(key, _)| Edit::Delete { key: key.clone() })
            .collect();
        self.apply(edits);
    }
}
