//! Leases of the in-memory backend: ids, TTLs and deadlines on the monotonic clock. Nothing
//! runs in the background: the caller asks which leases have expired at the start of a call.

use super::KIND;
use crate::backend::BackendError;
use crate::ownership::{Lease, LeaseId, Renewal};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Shown as hex, as etcd's are (`etcdctl lease list`).
pub(super) fn name(id: u64) -> LeaseId {
    LeaseId(format!("{id:x}"))
}

/// A lease id this backend handed out; anything else is refused by name, as etcd does.
pub(super) fn parse(lease: &LeaseId) -> Result<u64, BackendError> {
    u64::from_str_radix(&lease.0, 16).map_err(|_| BackendError::Refused {
        backend: KIND,
        detail: format!("{lease:?} is not a lease id of the memory backend"),
    })
}

struct Live {
    ttl: Duration,
    deadline: Instant,
}

#[derive(Default)]
pub(super) struct Leases {
    /// Ids are never reused, so a revoked lease's id can never renew a newer lease.
    last_id: u64,
    live: BTreeMap<u64, Live>,
}

impl Leases {
    /// The TTL applies as asked: there is no minimum to round up to here.
    pub(super) fn grant(&mut self, ttl: Duration, now: Instant) -> Lease {
        self.last_id += 1;
        self.live.insert(
            self.last_id,
            Live {
                ttl,
                deadline: now + ttl,
            },
        );
        Lease {
            id: name(self.last_id),
            ttl,
        }
    }

    pub(super) fn renew(&mut self, id: u64, now: Instant) -> Renewal {
        match self.live.get_mut(&id) {
            Some(live) => {
                live.deadline = now + live.ttl;
                Renewal::Alive { ttl: live.ttl }
            }
            None => Renewal::Gone,
        }
    }

    /// Whether the lease was live (its claims must then go).
    pub(super) fn revoke(&mut self, id: u64) -> bool {
        self.live.remove(&id).is_some()
    }

    pub(super) fn is_live(&self, id: u64) -> bool {
        self.live.contains_key(&id)
    }

    /// Ends every lease whose deadline is past and returns their ids.
    pub(super) fn expire(&mut self, now: Instant) -> Vec<u64> {
        let gone: Vec<u64> = self
            .live
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in &gone {
            self.live.remove(id);
        }
        gone
    }
}
