//! The server's whole state behind one mutex, the Raft index that orders every write, and
//! the watch channel that wakes blocking queries after each write.

use super::acl::Acl;
use super::kv::Kv;
use super::session::Sessions;
use super::Config;
use std::sync::{Mutex, MutexGuard, PoisonError};
use tokio::sync::{watch, Notify};

/// The first index handed out is `START_INDEX + 1`: a real cluster has applied a few Raft
/// entries (configuration, autopilot, CA) before any client write, and starting above 1
/// keeps clients honest about never assuming small or dense indexes.
pub(crate) const START_INDEX: u64 = 10;

/// Everything a write can change; only ever touched under [`Shared::lock`].
pub(crate) struct Store {
    /// The last Raft index handed out. Consul's tables remember the index of their own last
    /// change; this is the log position shared by all of them.
    pub index: u64,
    /// Whether the (single, simulated) server knows a cluster leader; see `/v1/_test/leader`.
    pub leader: bool,
    /// Not Consul's (`/v1/_test/index_skew`): when non-zero, every blocking query answers at
    /// once with an index this much below the one its client passed. 0 is Consul's behaviour.
    pub index_skew: u64,
    pub kv: Kv,
    pub sessions: Sessions,
    /// Policies and tokens; `None` while ACLs are disabled.
    pub acl: Option<Acl>,
}

impl Store {
    /// Takes the next Raft index for a write about to be applied. Like Consul, a write that
    /// reaches the log consumes an index even when it turns out to change nothing (a CAS
    /// that fails, a transaction that rolls back, a PUT of the same value).
    pub fn next_index(&mut self) -> u64 {
        self.index += 1;
        self.index
    }
}

/// State shared by every request handler and the session timer task.
pub(crate) struct Shared {
    store: Mutex<Store>,
    /// Carries the last Raft index; blocking queries only use it as a wake-up signal and
    /// re-evaluate their own index from the store.
    changes: watch::Sender<u64>,
    /// Pinged when session deadlines may have moved earlier (create, leader regained).
    pub session_timers: Notify,
    pub config: Config,
    /// This node's ID, for `/v1/agent/self`.
    pub node_id: String,
    /// Generated per start, so that each fresh server looks like a new cluster.
    pub cluster_id: String,
}

impl Shared {
    pub fn new(config: Config) -> Shared {
        let (changes, _) = watch::channel(START_INDEX);
        Shared {
            store: Mutex::new(Store {
                index: START_INDEX,
                leader: true,
                index_skew: 0,
                kv: Kv::default(),
                sessions: Sessions::default(),
                acl: config
                    .acl_management_token
                    .as_deref()
                    .map(|secret| Acl::new(secret, START_INDEX)),
            }),
            changes,
            session_timers: Notify::new(),
            config,
            node_id: super::ids::uuid(),
            cluster_id: super::ids::uuid(),
        }
    }

    /// The store, for reading. A poisoned lock is used anyway: a panic under it would be a
    /// bug in this test server, and serving on beats failing every later request with it.
    pub fn lock(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` with the store for writing; if it took a Raft index, blocking queries are
    /// woken to re-check theirs.
    pub fn update<R>(&self, f: impl FnOnce(&mut Store) -> R) -> R {
        let mut store = self.lock();
        let before = store.index;
        let result = f(&mut store);
        if store.index != before {
            // Sent under the lock so the channel never goes backwards between two writers.
            self.changes.send_replace(store.index);
        }
        result
    }

    /// Wakes every waiting blocking query to re-check its answer, for a fault switched on
    /// without a write (`/v1/_test/index_skew`).
    pub fn wake_queries(&self) {
        let store = self.lock();
        self.changes.send_replace(store.index);
    }

    /// A receiver that sees every write made after this call.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}
