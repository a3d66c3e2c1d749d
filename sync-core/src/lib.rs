//! kvgit's domain: keys, revisions, events, the `KvBackend` trait (and `MemoryBackend`, an
//! in-memory one for tests), the key <-> path mapper, the batcher and the three-way sync
//! rule. No network, Git, config or metrics crate here.

pub mod backend;
pub mod batch;
pub mod documents;
pub mod mapper;
pub mod memory;
pub mod ownership;
pub mod rule;
pub mod tree;
pub mod types;

pub use backend::{BackendError, KvBackend, SnapshotPages, WatchStream};
pub use memory::MemoryBackend;
pub use ownership::{rendezvous_owner, Claim, Epoch, Lease, LeaseId, Renewal};
pub use types::*;
