//! kvgit's `KvBackend` on etcd v3: consistent paged snapshots, conditional transactions and
//! prefix watches with compaction and progress reporting, over etcd-client (gRPC).

pub mod acl;
mod backend;
mod catchup;
mod config;
mod delta;
mod errors;
mod keys;
mod many;
mod ownership;
mod progress;
mod snapshot;
mod txn;
mod watch;

pub use backend::{
    EtcdBackend, CATCH_UP_BY_WATCH_FROM_KEYS, MAX_REQUEST_BYTES, MAX_SINGLE_OP_BYTES,
    MAX_TXN_BYTES, MAX_TXN_OPS,
};
pub use config::{ConnectError, EtcdConfig, Secret};
